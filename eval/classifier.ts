/**
 * @file The small conv classifier behind the quality score: three 3×3 stride-2
 * convolutions with ReLU (8, 24, 48 channels; 32 -> 16 -> 8 -> 4 pixels), a 64-d
 * ReLU feature layer and a linear head, trained with this library (AdamW,
 * cross-entropy, cosine learning rate). Its features feed the Fréchet distance and
 * its predictions the conditional accuracy of generated samples. Strided
 * convolutions instead of conv + pooling, and narrow layers, keep it cheap enough to
 * train in a few minutes on the plain cpu backend (about 97% held-out on MNIST).
 *
 * Parameters are a plain record (`conv1..3`, `fc1`, `fc2` in PyTorch layout), so
 * the architecture is read back from their shapes and a saved classifier needs no
 * separate config.
 */
import { valueAndGrad } from "../autograd/autograd.ts";
import { batches, batchTensors, type Dataset, splitDataset } from "../data/dataset.ts";
import { conv2d, type Conv2dParams } from "../nn/conv.ts";
import { relu } from "../nn/activations.ts";
import { readSafetensors, writeSafetensors } from "../nn/io.ts";
import { linear, type LinearParams } from "../nn/linear.ts";
import { adamw, type AdamWState, cosineSchedule } from "../nn/optim.ts";
import { flattenTree, unflattenLike } from "../nn/tree.ts";
import { DifflabError, fmtShape, ShapeError } from "../tensor/errors.ts";
import * as ops from "../tensor/ops.ts";
import * as random from "../tensor/random.ts";
import { dispose, fromHost, keep, Tensor, tidy } from "../tensor/tensor.ts";

/** Classifier parameters (PyTorch layouts: conv OIHW, linear [out, in]). */
export interface ClassifierParams {
  /** 3×3 stride-2 conv, input channels -> widths[0]. */
  conv1: Conv2dParams;
  /** 3×3 stride-2 conv, widths[0] -> widths[1]. */
  conv2: Conv2dParams;
  /** 3×3 stride-2 conv, widths[1] -> widths[2]. */
  conv3: Conv2dParams;
  /** Flattened conv output -> features (the Fréchet features, after ReLU). */
  fc1: LinearParams;
  /** Features -> class logits. */
  fc2: LinearParams;
}

/** Architecture of the classifier. */
export interface ClassifierConfig {
  /** Input channels. */
  channels: number;
  /** Input side. */
  size: number;
  /** Output classes. */
  numClasses: number;
  /** Channels of the three convolutions (default [8, 24, 48]). */
  widths?: readonly [number, number, number];
  /** Feature (penultimate) width (default 64). */
  features?: number;
}

const down = (s: number) => Math.ceil(s / 2);

/** Fresh parameters (PyTorch default init). */
export function initClassifier(key: random.Key, cfg: ClassifierConfig): ClassifierParams {
  const [c1, c2, c3] = cfg.widths ?? [8, 24, 48];
  const f = cfg.features ?? 64;
  const s3 = down(down(down(cfg.size)));
  const k = random.split(key, 5);
  return {
    conv1: conv2d.init(k[0], { inChannels: cfg.channels, outChannels: c1, kernelSize: 3 }),
    conv2: conv2d.init(k[1], { inChannels: c1, outChannels: c2, kernelSize: 3 }),
    conv3: conv2d.init(k[2], { inChannels: c2, outChannels: c3, kernelSize: 3 }),
    fc1: linear.init(k[3], { inFeatures: c3 * s3 * s3, outFeatures: f }),
    fc2: linear.init(k[4], { inFeatures: f, outFeatures: cfg.numClasses }),
  };
}

/** The architecture a parameter record encodes (input channels, classes, widths, expected input side). */
export function classifierShape(p: ClassifierParams): { channels: number; numClasses: number; features: number } {
  for (const k of ["conv1", "conv2", "conv3", "fc1", "fc2"] as const) {
    if (!(p?.[k]?.weight instanceof Tensor)) throw new DifflabError(`classifier: params.${k}.weight is missing`);
  }
  return { channels: p.conv1.weight.shape[1], numClasses: p.fc2.weight.shape[0], features: p.fc1.weight.shape[0] };
}

const im2colCache = new Map<string, Int32Array>();

// Flat indices into the zero-padded input [B, C, H+2, W+2] for each (b, oy, ox) row and
// (c, ky, kx) column: the OIHW weight's flattening order, so one matmul does the conv.
function im2colIndex(B: number, C: number, H: number, W: number): Int32Array {
  const key = `${B},${C},${H},${W}`;
  let idx = im2colCache.get(key);
  if (idx) return idx;
  const OH = down(H), OW = down(W), Hp = H + 2, Wp = W + 2;
  idx = new Int32Array(B * OH * OW * C * 9);
  let o = 0;
  for (let b = 0; b < B; b++) {
    for (let oy = 0; oy < OH; oy++) {
      for (let ox = 0; ox < OW; ox++) {
        for (let c = 0; c < C; c++) {
          for (let ky = 0; ky < 3; ky++) {
            for (let kx = 0; kx < 3; kx++) idx[o++] = ((b * C + c) * Hp + 2 * oy + ky) * Wp + 2 * ox + kx;
          }
        }
      }
    }
  }
  if (im2colCache.size >= 32) im2colCache.clear();
  im2colCache.set(key, idx);
  return idx;
}

/**
 * `conv2d(x, w, {stride: 2, padding: 1}) + b` for 3×3 kernels, lowered to a gather of the
 * nine taps (im2col) and one matmul. Same numbers as `nn.conv2d`, but 3-4× faster to train
 * on the cpu backend, whose direct convolution is the slow reference loop; the gather's
 * gradient is a single scatter-add instead of nine padded slices.
 */
export function convS2(p: Conv2dParams, x: Tensor): Tensor {
  const [B, C, H, W] = x.shape;
  const [O, Cw, KH, KW] = p.weight.shape;
  if (Cw !== C || KH !== 3 || KW !== 3) {
    throw new ShapeError(`classify: conv weight ${fmtShape(p.weight.shape)} does not fit input ${fmtShape(x.shape)}`);
  }
  const OH = down(H), OW = down(W);
  const xp = ops.reshape(ops.pad(x, [[0, 0], [0, 0], [1, 1], [1, 1]]), [B * C * (H + 2) * (W + 2)]);
  // fromHost takes ownership of its array, so each call gets a copy of the cached indices.
  const idx = fromHost(im2colIndex(B, C, H, W).slice(), [B * OH * OW, C * 9], "i32");
  const cols = ops.take(xp, idx, 0);
  let y = ops.matmul(cols, ops.transpose(ops.reshape(p.weight, [O, C * 9])));
  if (p.bias) y = ops.add(y, p.bias);
  return ops.transpose(ops.reshape(y, [B, OH, OW, O]), [0, 3, 1, 2]);
}

/** Logits `[B, classes]` and penultimate features `[B, features]` (after ReLU) of images `x [B, C, S, S]` in [-1, 1]. */
export function classify(p: ClassifierParams, x: Tensor): { logits: Tensor; features: Tensor } {
  const { channels } = classifierShape(p);
  if (!(x instanceof Tensor) || x.ndim !== 4 || x.shape[1] !== channels) {
    throw new ShapeError(
      `classify: x must be [B, ${channels}, S, S], got ${x instanceof Tensor ? fmtShape(x.shape) : String(x)}`,
    );
  }
  let h = x;
  for (const c of [p.conv1, p.conv2, p.conv3]) h = relu(convS2(c, h));
  const flat = ops.reshape(h, [h.shape[0], h.shape[1] * h.shape[2] * h.shape[3]]);
  if (flat.shape[1] !== p.fc1.weight.shape[1]) {
    throw new ShapeError(
      `classify: images of side ${x.shape[2]} give ${flat.shape[1]} conv features, but fc1 expects ${
        p.fc1.weight.shape[1]
      } (the classifier was trained on another image size)`,
    );
  }
  const features = relu(linear.apply(p.fc1, flat));
  return { logits: linear.apply(p.fc2, features), features };
}

/** Mean cross-entropy of the classifier on a batch. */
export function classifierLoss(p: ClassifierParams, x: Tensor, y: Tensor): Tensor {
  const { logits } = classify(p, x);
  const logp = ops.logSoftmax(logits, -1);
  return ops.neg(ops.mean(ops.sum(ops.mul(logp, ops.oneHot(y, logits.shape[1])), { axis: -1 })));
}

/** Options of {@link trainClassifier}. */
export interface TrainClassifierOptions {
  /** Optimisation steps (default 800: about 3 epochs of MNIST's 9000 training images). */
  steps?: number;
  /** Batch size (default 32). */
  batch?: number;
  /** PRNG key for init, data order and the held-out split (default randomKey(0)). */
  key?: random.Key;
  /** Peak learning rate of the cosine schedule (default 1e-2). */
  lr?: number;
  /** Held-out images; default: `testSize` images split off `ds` (never trained on). */
  test?: Dataset;
  /** Size of the held-out split when `test` is not given (default min(1000, n/10)). */
  testSize?: number;
  /** Architecture overrides. */
  widths?: readonly [number, number, number];
  /** Feature width. */
  features?: number;
  /** Called every `logEvery` steps with the running loss. */
  onLog?: (step: number, loss: number) => void;
  /** Default 50. */
  logEvery?: number;
}

/** Result of {@link trainClassifier}. */
export interface TrainedClassifier {
  /** Trained parameters. */
  params: ClassifierParams;
  /** Accuracy on the held-out images. */
  accuracy: number;
  /** Number of held-out images. */
  testSize: number;
  /** Wall-clock training time (excluding the held-out evaluation). */
  seconds: number;
}

/**
 * Trains the classifier on `ds` (minus a held-out split unless `opts.test` is given)
 * with AdamW and a cosine learning rate, then measures held-out accuracy.
 */
export async function trainClassifier(ds: Dataset, opts: TrainClassifierOptions = {}): Promise<TrainedClassifier> {
  const steps = opts.steps ?? 800, batch = opts.batch ?? 32;
  const key = opts.key ?? random.randomKey(0);
  if (!Number.isInteger(steps) || steps < 1) {
    throw new DifflabError(`trainClassifier: steps must be >= 1, got ${steps}`);
  }
  if (!Number.isInteger(batch) || batch < 1) {
    throw new DifflabError(`trainClassifier: batch must be >= 1, got ${batch}`);
  }
  const [kInit, kSplit, kData] = random.split(key, 3);
  let train = ds, test = opts.test;
  if (!test) {
    ({ train, test } = splitDataset(ds, kSplit, { testSize: opts.testSize ?? Math.min(1000, Math.floor(ds.n / 10)) }));
  } else if (test.channels !== ds.channels || test.size !== ds.size || test.numClasses !== ds.numClasses) {
    throw new DifflabError(`trainClassifier: test set ${test.name} does not match the training set's image format`);
  }
  const lr = cosineSchedule(opts.lr ?? 1e-2, steps, { warmupSteps: Math.min(50, Math.floor(steps / 10)) });
  let params = tidy(() =>
    initClassifier(kInit, {
      channels: ds.channels,
      size: ds.size,
      numClasses: ds.numClasses,
      widths: opts.widths,
      features: opts.features,
    })
  );
  let state: AdamWState = adamw.init(params);
  const lossAndGrad = valueAndGrad(classifierLoss);
  const logEvery = opts.logEvery ?? 50;
  const t0 = performance.now();
  let running = 0, count = 0;
  for (const { step, indices: idx } of batches(train, kData, batch, { steps })) {
    const next = tidy(() => {
      const { x, y } = batchTensors(train, idx);
      const [loss, grads] = lossAndGrad(params, x, y);
      const upd = adamw.update(params, grads, state, { lr, weightDecay: 0 });
      return { loss, params: upd.params as ClassifierParams, state: upd.state };
    });
    const lossValue = await next.loss.item();
    next.loss.dispose();
    if (!Number.isFinite(lossValue)) {
      throw new DifflabError(`trainClassifier: loss became ${lossValue} at step ${step}`);
    }
    // The update returns fresh tensors; drop the previous step's params and moments.
    dispose([params, state.m, state.v]);
    [params, state] = [next.params, next.state];
    running += lossValue;
    count++;
    if (opts.onLog && ((step + 1) % logEvery === 0 || step === steps - 1)) {
      opts.onLog(step + 1, running / count);
      running = count = 0;
    }
  }
  const seconds = (performance.now() - t0) / 1000;
  const preds = await predict(params, test.images, test);
  let right = 0;
  for (let i = 0; i < test.n; i++) if (preds[i] === test.labels[i]) right++;
  return { params, accuracy: right / test.n, testSize: test.n, seconds };
}

/** Image format of a flat pixel array: `channels` planes of `size`×`size`. */
export interface ImageFormat {
  /** Channels per image. */
  channels: number;
  /** Image side. */
  size: number;
}

/** Runs the classifier over many images in chunks; calls `each(logits, features, offset)` with host arrays. */
export async function forEachChunk(
  p: ClassifierParams,
  images: Float32Array,
  fmt: ImageFormat,
  each: (logits: Float32Array, features: Float32Array, offset: number, count: number) => void,
  chunk = 256,
): Promise<void> {
  const per = fmt.channels * fmt.size * fmt.size;
  if (images.length % per !== 0) {
    throw new ShapeError(
      `classifier: ${images.length} floats is not a whole number of ${fmt.channels}×${fmt.size}² images`,
    );
  }
  const n = images.length / per;
  for (let off = 0; off < n; off += chunk) {
    const b = Math.min(chunk, n - off);
    const out = tidy(() => {
      const x = fromHost(images.slice(off * per, (off + b) * per), [b, fmt.channels, fmt.size, fmt.size], "f32");
      const r = classify(p, x);
      return { logits: keep(r.logits), features: keep(r.features) };
    });
    const [l, f] = [await out.logits.data(), await out.features.data()];
    dispose(out);
    each(l as Float32Array, f as Float32Array, off, b);
  }
}

/** Predicted class of each image. */
export async function predict(p: ClassifierParams, images: Float32Array, fmt: ImageFormat): Promise<Int32Array> {
  const { numClasses: k } = classifierShape(p);
  const out = new Int32Array(images.length / (fmt.channels * fmt.size * fmt.size));
  await forEachChunk(p, images, fmt, (logits, _f, off, b) => {
    for (let i = 0; i < b; i++) {
      let best = 0;
      for (let j = 1; j < k; j++) if (logits[i * k + j] > logits[i * k + best]) best = j;
      out[off + i] = best;
    }
  });
  return out;
}

/** Penultimate-layer features of each image as rows of an `[n, features]` f64 matrix. */
export async function extractFeatures(
  p: ClassifierParams,
  images: Float32Array,
  fmt: ImageFormat,
): Promise<{ data: Float64Array; n: number; d: number }> {
  const { features: d } = classifierShape(p);
  const n = images.length / (fmt.channels * fmt.size * fmt.size);
  const data = new Float64Array(n * d);
  await forEachChunk(p, images, fmt, (_l, f, off) => data.set(f, off * d));
  return { data, n, d };
}

/** Metadata stored next to the weights so a cached classifier is only reused for the same data format. */
export interface ClassifierMeta {
  /** Dataset name the classifier was trained on. */
  dataset: string;
  /** Input channels. */
  channels: number;
  /** Input side. */
  size: number;
  /** Number of classes. */
  numClasses: number;
  /** Held-out accuracy measured after training. */
  accuracy: number;
  /** Number of held-out images behind `accuracy`. */
  testSize: number;
}

/** Saves a classifier atomically as safetensors with its metadata. */
export async function saveClassifier(path: string, params: ClassifierParams, meta: ClassifierMeta): Promise<void> {
  await writeSafetensors(path, flattenTree(params), { format: "difflab-classifier-v1", meta: JSON.stringify(meta) });
}

/** Loads a classifier saved by {@link saveClassifier}; rejects files of another format with a DifflabError. */
export async function loadClassifier(path: string): Promise<{ params: ClassifierParams; meta: ClassifierMeta }> {
  const { tensors, metadata } = await readSafetensors(path);
  if (metadata.format !== "difflab-classifier-v1" || !metadata.meta) {
    dispose(tensors);
    throw new DifflabError(`loadClassifier: ${path} is not a difflab classifier (metadata.format missing)`);
  }
  const meta = JSON.parse(metadata.meta) as ClassifierMeta;
  const template = { conv1: {}, conv2: {}, conv3: {}, fc1: {}, fc2: {} } as Record<string, Record<string, Tensor>>;
  for (const k of Object.keys(template)) {
    for (const w of ["weight", "bias"]) {
      const t = tensors[`${k}.${w}`];
      if (!(t instanceof Tensor)) {
        dispose(tensors);
        throw new DifflabError(`loadClassifier: ${path} has no tensor "${k}.${w}"`);
      }
      template[k][w] = t;
    }
  }
  const params = unflattenLike(template, tensors) as unknown as ClassifierParams;
  classifierShape(params);
  return { params, meta };
}

/** Options of {@link getClassifier}. */
export interface GetClassifierOptions extends TrainClassifierOptions {
  /** Progress callback for the (one-off) training. */
  onTrainStart?: () => void;
}

/**
 * The classifier for `ds`, cached in `dir` as `classifier-<dataset>.safetensors`:
 * loaded when a valid file for the same dataset and image format exists, otherwise
 * trained (see {@link trainClassifier}) and saved.
 */
export async function getClassifier(
  ds: Dataset,
  dir: string,
  opts: GetClassifierOptions = {},
): Promise<{ params: ClassifierParams; meta: ClassifierMeta; cached: boolean }> {
  const file = `${dir.replace(/\/$/, "")}/classifier-${ds.name.replace(/[^A-Za-z0-9_.-]/g, "_")}.safetensors`;
  try {
    const got = await loadClassifier(file);
    const m = got.meta;
    if (m.dataset === ds.name && m.channels === ds.channels && m.size === ds.size && m.numClasses === ds.numClasses) {
      return { ...got, cached: true };
    }
    dispose(got.params);
  } catch (e) {
    // A missing file is the normal first run; anything else (corrupt, other format) is retrained over.
    if (!(e instanceof Deno.errors.NotFound) && !(e instanceof DifflabError)) throw e;
  }
  opts.onTrainStart?.();
  const t = await trainClassifier(ds, opts);
  const meta: ClassifierMeta = {
    dataset: ds.name,
    channels: ds.channels,
    size: ds.size,
    numClasses: ds.numClasses,
    accuracy: t.accuracy,
    testSize: t.testSize,
  };
  await Deno.mkdir(dir, { recursive: true });
  await saveClassifier(file, t.params, meta);
  return { params: t.params, meta, cached: false };
}
