/**
 * @file Default backend selection: WebGPU only on a hardware adapter,
 * otherwise the wasm backend (a software adapter such as llvmpipe is an order
 * of magnitude slower than the CPU itself).
 */

/** Minimal shape of the WebGPU objects this module reads (no dependency on WebGPU types). */
interface AdapterLike {
  info?: { isFallbackAdapter?: boolean };
  isFallbackAdapter?: boolean;
}

/**
 * Picks `"webgpu"` when `navigator.gpu` yields an adapter whose `info.isFallbackAdapter` is `false`
 * (a hardware GPU), else `"wasm"`. Never throws: any WebGPU failure means `"wasm"`.
 */
export async function autoSelectBackend(): Promise<"webgpu" | "wasm"> {
  const gpu = (globalThis as { navigator?: { gpu?: { requestAdapter(): Promise<AdapterLike | null> } } }).navigator
    ?.gpu;
  if (!gpu) return "wasm";
  try {
    const adapter = await gpu.requestAdapter();
    if (!adapter) return "wasm";
    const fallback = adapter.info?.isFallbackAdapter ?? adapter.isFallbackAdapter;
    return fallback === false ? "webgpu" : "wasm";
  } catch {
    return "wasm";
  }
}
