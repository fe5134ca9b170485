/**
 * @file Sample-quality scores over the classifier: the conditional accuracy of
 * class-conditional samples (does the classifier see the class that was asked
 * for?) and the Fréchet distance between the classifier features of samples and
 * of real images.
 */
import { type ClassifierParams, classifierShape, extractFeatures, type ImageFormat, predict } from "./classifier.ts";
import { frechetDistanceStats, type GaussianStats, gaussianStats } from "./frechet.ts";
import type { Dataset } from "../data/dataset.ts";
import { DifflabError, fmtShape, ShapeError } from "../tensor/errors.ts";
import { Tensor } from "../tensor/tensor.ts";

/** Values clipped to [-1, 1], NaN to -1: what the saved PNG shows is what gets scored. */
function clipped(x: ArrayLike<number>): Float32Array {
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const v = x[i];
    out[i] = v >= 1 ? 1 : v > -1 ? v : -1;
  }
  return out;
}

/** Images as clipped host pixels plus their format, from a Tensor `[n, C, S, S]` or a planar Float32Array. */
async function hostImages(
  op: string,
  p: ClassifierParams,
  images: Tensor | Float32Array,
  size?: number,
): Promise<{ pixels: Float32Array; fmt: ImageFormat; n: number }> {
  const { channels } = classifierShape(p);
  if (images instanceof Tensor) {
    if (images.ndim !== 4 || images.shape[1] !== channels || images.shape[2] !== images.shape[3]) {
      throw new ShapeError(`${op}: samples must be [n, ${channels}, S, S], got ${fmtShape(images.shape)}`);
    }
    const pixels = clipped(await images.data());
    return { pixels, fmt: { channels, size: images.shape[2] }, n: images.shape[0] };
  }
  const s = size ?? 32;
  const per = channels * s * s;
  if (!(images instanceof Float32Array) || images.length === 0 || images.length % per !== 0) {
    throw new ShapeError(`${op}: samples must be a Tensor or a Float32Array of whole ${channels}×${s}×${s} images`);
  }
  return { pixels: clipped(images), fmt: { channels, size: s }, n: images.length / per };
}

/** Result of {@link conditionalAccuracy}. */
export interface ConditionalAccuracy {
  /** Fraction of samples classified as their intended class. */
  accuracy: number;
  /** Accuracy per intended class (NaN for classes with no samples). */
  perClass: number[];
  /** The classifier's prediction for each sample. */
  predictions: Int32Array;
}

/**
 * Fraction of generated samples that the classifier assigns to the class they were
 * generated for. `samples` is `[n, C, S, S]` (a Float32Array needs `size`, default 32), clipped to
 * [-1, 1] with NaN as -1 before classification, exactly as the PNG grids show them.
 */
export async function conditionalAccuracy(
  params: ClassifierParams,
  samples: Tensor | Float32Array,
  intendedLabels: ArrayLike<number>,
  opts: { size?: number } = {},
): Promise<ConditionalAccuracy> {
  const { pixels, fmt, n } = await hostImages("conditionalAccuracy", params, samples, opts.size);
  const { numClasses } = classifierShape(params);
  if (intendedLabels.length !== n) {
    throw new ShapeError(`conditionalAccuracy: ${n} samples but ${intendedLabels.length} intended labels`);
  }
  for (let i = 0; i < n; i++) {
    const y = intendedLabels[i];
    if (!Number.isInteger(y) || y < 0 || y >= numClasses) {
      throw new DifflabError(`conditionalAccuracy: intended label ${y} of sample ${i} is outside [0, ${numClasses})`);
    }
  }
  const predictions = await predict(params, pixels, fmt);
  const right = new Array<number>(numClasses).fill(0), total = new Array<number>(numClasses).fill(0);
  let ok = 0;
  for (let i = 0; i < n; i++) {
    const y = intendedLabels[i];
    total[y]++;
    if (predictions[i] === y) {
      right[y]++;
      ok++;
    }
  }
  return { accuracy: ok / n, perClass: right.map((r, k) => (total[k] ? r / total[k] : NaN)), predictions };
}

/**
 * Feature statistics of a dataset's images, the reference for {@link sampleFrechet}. With
 * `limit` < n, evenly spaced images are used, which keeps class proportions for class-sorted data.
 */
export async function datasetStats(params: ClassifierParams, ds: Dataset, limit = ds.n): Promise<GaussianStats> {
  const n = Math.min(limit, ds.n);
  const per = ds.channels * ds.size * ds.size;
  let pixels = ds.images;
  if (n < ds.n) {
    pixels = new Float32Array(n * per);
    for (let i = 0; i < n; i++) {
      const j = Math.floor((i * ds.n) / n);
      pixels.set(ds.images.subarray(j * per, (j + 1) * per), i * per);
    }
  }
  return gaussianStats(await extractFeatures(params, pixels, ds));
}

/** Fréchet distance between the classifier features of `samples` (clipped like {@link conditionalAccuracy}) and reference statistics. */
export async function sampleFrechet(
  params: ClassifierParams,
  samples: Tensor | Float32Array,
  reference: GaussianStats,
  opts: { size?: number } = {},
): Promise<number> {
  const { pixels, fmt } = await hostImages("sampleFrechet", params, samples, opts.size);
  return frechetDistanceStats(gaussianStats(await extractFeatures(params, pixels, fmt)), reference);
}
