/**
 * @file Keyed parameter initialisers with PyTorch's formulas: the defaults of
 * `nn.Linear`/`nn.Conv2d` (kaiming_uniform with a=√5, bias U(±1/√fan_in)) and
 * the ones DiT-family models use (xavier_uniform, normal(0.02), zeros).
 * Draws come from the library's threefry keys, so values are reproducible
 * here but naturally differ from torch's generator.
 */
import type { DType } from "../tensor/dtype.ts";
import { DifflabError, fmtShape, ShapeError } from "../tensor/errors.ts";
import * as ops from "../tensor/ops.ts";
import * as random from "../tensor/random.ts";
import type { Key } from "../tensor/random.ts";
import type { Tensor } from "../tensor/tensor.ts";

/** Options shared by the initialisers. */
export interface InitOptions {
  /** Element type of the result (default f32). */
  dtype?: DType;
}

/** PyTorch's `_calculate_fan_in_and_fan_out`: `[size(1)·receptive, size(0)·receptive]`. */
export function fans(shape: readonly number[]): [number, number] {
  if (shape.length < 2) {
    throw new ShapeError(`fans: fan in and fan out need a tensor with at least 2 dimensions, got ${fmtShape(shape)}`);
  }
  const receptive = shape.slice(2).reduce((a, b) => a * b, 1);
  return [shape[1] * receptive, shape[0] * receptive];
}

/** Uniform draws in [-bound, bound). */
export function uniformInit(key: Key, shape: readonly number[], bound: number, opts: InitOptions = {}): Tensor {
  if (!(bound >= 0) || !Number.isFinite(bound)) {
    throw new DifflabError(`uniformInit: bound must be finite and >= 0, got ${bound}`);
  }
  return random.uniform(key, shape, { dtype: opts.dtype ?? "f32", min: -bound, max: bound });
}

/** Normal draws with the given mean and standard deviation (DiT uses std 0.02). */
export function normalInit(
  key: Key,
  shape: readonly number[],
  opts: InitOptions & { std?: number; mean?: number } = {},
): Tensor {
  const std = opts.std ?? 1, mean = opts.mean ?? 0;
  const z = random.normal(key, shape, { dtype: opts.dtype ?? "f32" });
  const s = std === 1 ? z : ops.mul(z, std);
  return mean === 0 ? s : ops.add(s, mean);
}

/**
 * Truncated normal as timm's `trunc_normal_` (inverse-CDF method): N(mean, std²)
 * restricted to the absolute interval [a, b].
 */
export function truncNormalInit(
  key: Key,
  shape: readonly number[],
  opts: InitOptions & { std?: number; mean?: number; a?: number; b?: number } = {},
): Tensor {
  const std = opts.std ?? 1, mean = opts.mean ?? 0, a = opts.a ?? -2, b = opts.b ?? 2;
  if (!(a < b)) throw new DifflabError(`truncNormalInit: need a < b, got [${a}, ${b}]`);
  const cdf = (x: number) => (1 + erfScalar(x / Math.SQRT2)) / 2;
  const lo = 2 * cdf((a - mean) / std) - 1, hi = 2 * cdf((b - mean) / std) - 1;
  const u = random.uniform(key, shape, { dtype: opts.dtype ?? "f32", min: lo, max: hi });
  const z = ops.add(ops.mul(random.erfinv(u), std * Math.SQRT2), mean);
  return ops.minimum(ops.maximum(z, a), b);
}

// Abramowitz-Stegun 7.1.26 is too coarse for the bounds; this series/continued
// fraction pair is accurate to ~1e-15 on the whole line.
function erfScalar(x: number): number {
  const s = Math.sign(x), ax = Math.abs(x);
  if (ax < 2.5) {
    let term = ax, sum = ax;
    for (let n = 1; n < 80; n++) {
      term *= (-ax * ax) / n;
      const add = term / (2 * n + 1);
      sum += add;
      if (Math.abs(add) < 1e-17 * Math.abs(sum)) break;
    }
    return (s * 2 * sum) / Math.sqrt(Math.PI);
  }
  // erfc continued fraction (Lentz), converges fast for |x| >= 2.5.
  let f = ax, c = ax, d = 0;
  for (let n = 1; n < 200; n++) {
    const an = n / 2;
    d = ax + an * d;
    d = d === 0 ? 1e-300 : 1 / d;
    c = ax + an / c;
    const delta = c * d;
    f *= delta;
    if (Math.abs(delta - 1) < 1e-16) break;
  }
  const erfc = Math.exp(-ax * ax) / (f * Math.sqrt(Math.PI));
  return s * (1 - erfc);
}

/** Options of the kaiming initialisers. */
export interface KaimingOptions extends InitOptions {
  /** Negative slope of the leaky ReLU the gain is computed for (PyTorch's layer default: √5). */
  a?: number;
  /** Which fan normalises the variance (default "fan_in"). */
  mode?: "fan_in" | "fan_out";
}

/**
 * `torch.nn.init.kaiming_uniform_` with the leaky-ReLU gain √(2/(1+a²)):
 * bound = gain·√(3/fan). With a = √5 this is PyTorch's Linear/Conv default, U(±1/√fan_in).
 */
export function kaimingUniform(key: Key, shape: readonly number[], opts: KaimingOptions = {}): Tensor {
  const a = opts.a ?? Math.sqrt(5);
  const [fi, fo] = fans(shape);
  const fan = (opts.mode ?? "fan_in") === "fan_in" ? fi : fo;
  const gain = Math.sqrt(2 / (1 + a * a));
  return uniformInit(key, shape, fan === 0 ? 0 : gain * Math.sqrt(3 / fan), opts);
}

/** Options of the xavier initialisers. */
export interface XavierOptions extends InitOptions {
  /** Scale factor (default 1). */
  gain?: number;
  /** Override `[fanIn, fanOut]` (e.g. DiT's patch-embed xavier on the `[D, C·p·p]` view). */
  fans?: readonly [number, number];
}

/** `torch.nn.init.xavier_uniform_`: U(±gain·√(6/(fan_in+fan_out))). */
export function xavierUniform(key: Key, shape: readonly number[], opts: XavierOptions = {}): Tensor {
  const [fi, fo] = opts.fans ?? fans(shape);
  return uniformInit(key, shape, (opts.gain ?? 1) * Math.sqrt(6 / (fi + fo)), opts);
}

/** `torch.nn.init.xavier_normal_`: N(0, gain²·2/(fan_in+fan_out)). */
export function xavierNormal(key: Key, shape: readonly number[], opts: XavierOptions = {}): Tensor {
  const [fi, fo] = opts.fans ?? fans(shape);
  return normalInit(key, shape, { dtype: opts.dtype, std: (opts.gain ?? 1) * Math.sqrt(2 / (fi + fo)) });
}

/** A dense tensor of zeros (a real buffer, not a broadcast view, so it can be saved or updated). */
export function zerosInit(shape: readonly number[], opts: InitOptions = {}): Tensor {
  return constantInit(shape, 0, opts);
}

/** A dense tensor of ones. */
export function onesInit(shape: readonly number[], opts: InitOptions = {}): Tensor {
  return constantInit(shape, 1, opts);
}

/** A dense tensor filled with `value`. */
export function constantInit(shape: readonly number[], value: number, opts: InitOptions = {}): Tensor {
  // full() is a broadcast view of one scalar; adding 0 materialises a real buffer.
  return ops.add(ops.full(shape, value, opts.dtype ?? "f32"), 0);
}

/** How a layer's weight is initialised: PyTorch's default, DiT's xavier, zeros, or normal(std). */
export type WeightInit = "torch" | "xavier" | "zeros" | { normal: number };

/**
 * Initialises a `[out, in, ...]` weight and its optional bias by `scheme`:
 * "torch" gives kaiming_uniform(a=√5) and bias U(±1/√fan_in); every other
 * scheme gives a zero bias, as DiT's `initialize_weights` does.
 */
export function initWeightBias(
  key: Key,
  shape: readonly number[],
  bias: boolean,
  scheme: WeightInit = "torch",
  opts: InitOptions & { fans?: readonly [number, number] } = {},
): { weight: Tensor; bias?: Tensor } {
  const [kw, kb] = random.split(key, 2);
  const outDim = shape[0];
  let weight: Tensor, b: Tensor | undefined;
  if (scheme === "torch") {
    weight = kaimingUniform(kw, shape, { dtype: opts.dtype });
    const fanIn = opts.fans?.[0] ?? fans(shape)[0];
    if (bias) b = uniformInit(kb, [outDim], fanIn > 0 ? 1 / Math.sqrt(fanIn) : 0, opts);
  } else {
    if (scheme === "xavier") weight = xavierUniform(kw, shape, { dtype: opts.dtype, fans: opts.fans });
    else if (scheme === "zeros") weight = zerosInit(shape, opts);
    else if (typeof scheme === "object" && typeof scheme.normal === "number") {
      weight = normalInit(kw, shape, { dtype: opts.dtype, std: scheme.normal });
    } else throw new DifflabError(`initWeightBias: unknown init scheme ${JSON.stringify(scheme)}`);
    if (bias) b = zerosInit([outDim], opts);
  }
  return bias ? { weight, bias: b } : { weight };
}
