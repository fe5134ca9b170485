/**
 * @file Registers the optional backends lazily, so importing the library
 * never touches WebGPU or compiles Wasm until a backend is selected.
 */
import { registerBackend } from "./tensor.ts";

registerBackend("wasm", async () => (await import("./wasm/backend.ts")).createWasmBackend());
registerBackend("webgpu", async () => (await import("./webgpu/backend.ts")).createWebGPUBackend());
