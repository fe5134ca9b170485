/**
 * @file The `wasm` backend (in progress).
 */
import type { Backend } from "../backend.ts";
import { DifflabError } from "../errors.ts";

/** Creates the wasm backend. */
export function createWasmBackend(): Promise<Backend> {
  return Promise.reject(new DifflabError("wasm backend is not built yet"));
}
