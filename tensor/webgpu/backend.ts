/**
 * @file The `webgpu` backend (in progress).
 */
import type { Backend } from "../backend.ts";
import { DifflabError } from "../errors.ts";

/** Creates the webgpu backend. */
export function createWebGPUBackend(): Promise<Backend> {
  return Promise.reject(new DifflabError("webgpu backend is not built yet"));
}
