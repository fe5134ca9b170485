/**
 * @file Helpers shared by the diffusion modules: model-function types, per-sample coefficient
 * extraction from float64 schedule arrays (DiT's `_extract_into_tensor`), timestep coercion and
 * float32 host arithmetic that rounds like the official PyTorch code.
 */
import { DifflabError, DTypeError, fmtShape, ShapeError } from "../tensor/errors.ts";
import { isFloat } from "../tensor/dtype.ts";
import { cast, reshape, take } from "../tensor/ops.ts";
import { getBackend, keep, Tensor, tensor } from "../tensor/tensor.ts";

/** A denoiser `(x, t, y?) -> out`: `t` holds one timestep (or log-SNR) per sample, `y` the class labels. */
export type ModelFn = (x: Tensor, t: Tensor, y?: Tensor) => Tensor;

/** Timesteps given as an index Tensor, one number for the whole batch, or one number per sample. */
export type Timesteps = Tensor | number | readonly number[];

/** Rounds to float32 (every scalar op of the official float32 code rounds like this). */
export const f32: (v: number) => number = Math.fround;

/** The identity rounding, for float64 runs. */
export const f64 = (v: number): number => v;

/** The host rounding that matches tensors of `dtype` (float32 rounding unless f64). */
export function roundingFor(dtype: string): (v: number) => number {
  return dtype === "f64" ? f64 : f32;
}

/** Checks that `x` is a floating-point Tensor of rank >= 1 and returns it. */
export function checkX(op: string, name: string, x: unknown): Tensor {
  if (!(x instanceof Tensor)) throw new DifflabError(`${op}: ${name} must be a Tensor, got ${typeof x}`);
  if (!isFloat(x.dtype)) throw new DTypeError(`${op}: ${name} must be floating-point, got ${x.dtype}`);
  if (x.ndim < 1) throw new ShapeError(`${op}: ${name} must have a batch axis, got shape ${fmtShape(x.shape)}`);
  return x;
}

/** Checks that two tensors have equal shapes. */
export function checkSame(op: string, a: string, x: Tensor, b: string, y: Tensor): void {
  if (x.shape.length !== y.shape.length || x.shape.some((d, i) => d !== y.shape[i])) {
    throw new ShapeError(`${op}: ${a} ${fmtShape(x.shape)} and ${b} ${fmtShape(y.shape)} must have the same shape`);
  }
}

/**
 * Coerces timesteps to an i32 Tensor of shape [n]; integer dtypes are cast, a number is repeated.
 * Out-of-range values are left to `take`, which names the bad index.
 */
export function toTimesteps(op: string, t: Timesteps, n: number): Tensor {
  if (typeof t === "number") {
    if (!Number.isInteger(t)) throw new DifflabError(`${op}: timestep must be an integer, got ${t}`);
    return tensor(new Int32Array(n).fill(t), { dtype: "i32" });
  }
  if (Array.isArray(t)) {
    if (t.length !== n) throw new ShapeError(`${op}: ${t.length} timesteps for a batch of ${n}`);
    if (!t.every(Number.isInteger)) {
      throw new DifflabError(`${op}: timesteps must be integers, got ${JSON.stringify(t)}`);
    }
    return tensor(Int32Array.from(t), { dtype: "i32" });
  }
  if (!(t instanceof Tensor)) throw new DifflabError(`${op}: t must be a Tensor, a number or an array of numbers`);
  if (t.ndim !== 1 || t.shape[0] !== n) {
    throw new ShapeError(`${op}: t must have shape [${n}] (one timestep per sample), got ${fmtShape(t.shape)}`);
  }
  if (t.dtype === "i32") return t;
  if (t.dtype === "u32") return cast(t, "i32");
  throw new DTypeError(`${op}: t must hold integer timesteps (i32/u32), got ${t.dtype}`);
}

// Schedule arrays live on the host in float64; a device copy per (array, dtype, backend) is
// cached and kept out of every tidy scope so sampling loops do not re-upload them each step.
const deviceCopies = new WeakMap<ArrayLike<number>, Map<string, Tensor>>();

/** A cached 1-D device tensor of a host schedule array, rounded to `dtype`. */
export function scheduleTensor(arr: Float64Array | Int32Array, dtype: "f32" | "f64" | "f16" | "i32"): Tensor {
  let m = deviceCopies.get(arr);
  if (!m) deviceCopies.set(arr, m = new Map());
  const key = `${getBackend()}:${dtype}`;
  let t = m.get(key);
  if (!t || t.isDisposed) {
    t = keep(tensor(arr, { dtype, shape: [arr.length] }));
    m.set(key, t);
  }
  return t;
}

/**
 * DiT's `_extract_into_tensor`: picks `arr[t]` per sample from a float64 host array, converts it
 * to `like`'s float dtype (float64 -> float32 for f32 runs, as `.float()` does) and shapes it
 * [N, 1, ..., 1] so it broadcasts against `like`.
 */
export function extract(op: string, arr: Float64Array, t: Tensor, like: Tensor): Tensor {
  if (arr.length === 0) throw new DifflabError(`${op}: the schedule array is empty (the diffusion has one step)`);
  const dtype = like.dtype as "f32" | "f64" | "f16";
  const v = take(scheduleTensor(arr, dtype), t, 0);
  return reshape(v, [t.shape[0], ...like.shape.slice(1).map(() => 1)]);
}

/**
 * torch.linspace(start, end, n) in float32 exactly as PyTorch's CPU kernel produces it: fused
 * multiply-adds for chunk bases and the scalar tail, plain `base + k*step` inside 8-wide vectors.
 * DPM-Solver's time grids come from it, and their last bits decide the grid lambdas.
 */
export function torchLinspaceF32(start: number, end: number, n: number): Float32Array {
  const out = new Float32Array(n);
  if (n === 1) {
    out[0] = start;
    return out;
  }
  const s = f32(start), e = f32(end);
  const step = f32(f32(e - s) / (n - 1));
  const half = Math.floor(n / 2);
  // The product of two float32 values (or a float32 and a small integer) and a float32 addend
  // fit exactly in a double here, so one final rounding is a true fused multiply-add.
  const fma = (a: number, b: number, c: number) => f32(a * b + c);
  const scalarAt = (i: number) => (i < half ? fma(step, i, s) : fma(-step, n - i - 1, e));
  const V = 8;
  let i = 0;
  // The vectorised loop takes two vectors per iteration while 2*V elements remain.
  for (; i <= n - 2 * V; i += 2 * V) {
    for (let j = i; j < i + 2 * V; j += V) {
      const base = j < half ? fma(step, j, s) : fma(-step, n - j - 1, e);
      for (let k = 0; k < V; k++) out[j + k] = f32(base + f32(k * step));
    }
  }
  for (; i < n; i++) out[i] = scalarAt(i);
  return out;
}

/** numpy.linspace(start, stop, n) in float64, with numpy's formula (i*step + start, exact endpoint). */
export function numpyLinspace(start: number, stop: number, n: number): Float64Array {
  const out = new Float64Array(n);
  if (n === 1) {
    out[0] = start;
    return out;
  }
  const step = (stop - start) / (n - 1);
  for (let i = 0; i < n; i++) out[i] = i * step + start;
  out[n - 1] = stop;
  return out;
}

/** A [N, 1, ..., 1] float tensor of per-sample values shaped to broadcast against `like`. */
export function perSample(values: readonly number[] | Float32Array | Float64Array, like: Tensor): Tensor {
  return tensor(Array.from(values), { dtype: like.dtype, shape: [values.length, ...like.shape.slice(1).map(() => 1)] });
}

/** Checks a positive integer option. */
export function checkPositiveInt(op: string, name: string, v: number): number {
  if (!Number.isInteger(v) || v < 1) throw new DifflabError(`${op}: ${name} must be a positive integer, got ${v}`);
  return v;
}
