/**
 * @file The public, jax.numpy-like operations. Everything here is library
 * code over the primitives of `prims.ts`: it validates arguments (naming the
 * op, the argument and the shapes/dtypes), broadcasts operands NumPy-style
 * through the `broadcast` view and then binds primitives.
 */
import { allocHost, checkDType, type DType, isFloat } from "./dtype.ts";
import { DifflabError, DTypeError, fmtShape, ShapeError } from "./errors.ts";
import type { CmpOp } from "./prims.ts";
import { broadcastShapes, checkShape, normAxes, normAxis, shapeEq, size } from "./shape.ts";
import { alias, bind, currentBackend, Tensor } from "./tensor.ts";

/** A Tensor or a JS number (which adopts the other operand's dtype). */
export type TensorLike = Tensor | number;

function checkTensor(op: string, arg: string, x: unknown): Tensor {
  if (!(x instanceof Tensor)) {
    throw new DifflabError(`${op}: argument ${arg} must be a Tensor, got ${x === null ? "null" : typeof x}`);
  }
  return x;
}

/** A scalar of `dtype` on the same backend as `like` (or the current backend). */
export function scalar(v: number, dtype: DType = "f32", like?: Tensor): Tensor {
  const b = like ? like.backend : currentBackend();
  const host = allocHost(dtype, 1);
  host[0] = dtype === "bool" ? (v ? 1 : 0) : v;
  return new Tensor(b, b.fromHost(host, { shape: [], dtype }), { shape: [], dtype });
}

/** A tensor of `shape` filled with `v` (a broadcast view of one scalar). */
export function full(shape: readonly number[], v: number, dtype: DType = "f32", like?: Tensor): Tensor {
  const s = checkShape("full", shape);
  return broadcastTo(scalar(v, checkDType("full", dtype), like), s);
}

/** Zeros of `shape`. */
export function zeros(shape: readonly number[], dtype: DType = "f32"): Tensor {
  return full(shape, 0, dtype);
}

/** Ones of `shape`. */
export function ones(shape: readonly number[], dtype: DType = "f32"): Tensor {
  return full(shape, 1, dtype);
}

/** Zeros with the shape, dtype and backend of `x`. */
export function zerosLike(x: Tensor): Tensor {
  return full(x.shape, 0, x.dtype, x);
}

/** Ones with the shape, dtype and backend of `x`. */
export function onesLike(x: Tensor): Tensor {
  return full(x.shape, 1, x.dtype, x);
}

/** `[start, stop)` in steps of `step`, like numpy.arange (`arange(n)` = 0..n-1). */
export function arange(start: number, stop?: number, step = 1, dtype: DType = "f32"): Tensor {
  checkDType("arange", dtype);
  if (stop === undefined) [start, stop] = [0, start];
  if (!(step !== 0 && Number.isFinite(step))) throw new DifflabError(`arange: step must be non-zero, got ${step}`);
  const n = Math.max(0, Math.ceil((stop - start) / step));
  if (!Number.isFinite(start) || !Number.isFinite(stop)) {
    throw new DifflabError(`arange: [${start}, ${stop}) with step ${step} is not a finite range`);
  }
  const host = allocHost(dtype, n);
  for (let i = 0; i < n; i++) host[i] = start + i * step;
  const b = currentBackend();
  return new Tensor(b, b.fromHost(host, { shape: [n], dtype }), { shape: [n], dtype });
}

/** `n` evenly spaced values from `start` to `stop` inclusive. */
export function linspace(start: number, stop: number, n: number, dtype: DType = "f32"): Tensor {
  checkDType("linspace", dtype);
  if (!Number.isInteger(n) || n < 0) throw new DifflabError(`linspace: n must be a non-negative integer, got ${n}`);
  const host = allocHost(dtype, n);
  for (let i = 0; i < n; i++) host[i] = n === 1 ? start : start + ((stop - start) * i) / (n - 1);
  const b = currentBackend();
  return new Tensor(b, b.fromHost(host, { shape: [n], dtype }), { shape: [n], dtype });
}

function lift(op: string, a: TensorLike, b: TensorLike): [Tensor, Tensor] {
  if (typeof a === "number" && typeof b === "number") return [scalar(a), scalar(b)];
  if (typeof a === "number") {
    checkTensor(op, "b", b);
    return [scalar(a, (b as Tensor).dtype, b as Tensor), b as Tensor];
  }
  checkTensor(op, "a", a);
  if (typeof b === "number") return [a, scalar(b, a.dtype, a)];
  checkTensor(op, "b", b);
  if (a.dtype !== b.dtype) throw new DTypeError(`${op}: operand dtypes ${a.dtype} and ${b.dtype} differ`);
  return [a, b];
}

/** Broadcasts operands to a common shape (NumPy rules) without copying. */
export function broadcastArrays(...xs: Tensor[]): Tensor[] {
  return bcast("broadcastArrays", ...xs);
}

function bcast(op: string, ...xs: Tensor[]): Tensor[] {
  const shape = broadcastShapes(op, ...xs.map((x) => x.shape));
  return xs.map((x) => (shapeEq(x.shape, shape) ? x : broadcastTo(x, shape)));
}

function binary(prim: "add" | "sub" | "mul" | "div" | "pow" | "maximum" | "minimum") {
  return (a: TensorLike, b: TensorLike): Tensor => {
    const [x, y] = bcast(prim, ...lift(prim, a, b));
    return bind(prim, [x, y], {})[0];
  };
}

/** Elementwise a + b with broadcasting. */
export const add: (a: TensorLike, b: TensorLike) => Tensor = binary("add");
/** Elementwise a - b with broadcasting. */
export const sub: (a: TensorLike, b: TensorLike) => Tensor = binary("sub");
/** Elementwise a * b with broadcasting. */
export const mul: (a: TensorLike, b: TensorLike) => Tensor = binary("mul");
/** Elementwise a / b with broadcasting (truncating for integers). */
export const div: (a: TensorLike, b: TensorLike) => Tensor = binary("div");
/** Elementwise a ** b with broadcasting. */
export const pow: (a: TensorLike, b: TensorLike) => Tensor = binary("pow");
/** Elementwise maximum (NaN propagates). */
export const maximum: (a: TensorLike, b: TensorLike) => Tensor = binary("maximum");
/** Elementwise minimum (NaN propagates). */
export const minimum: (a: TensorLike, b: TensorLike) => Tensor = binary("minimum");

type UnaryPrim =
  | "neg"
  | "exp"
  | "log"
  | "sin"
  | "cos"
  | "tanh"
  | "sqrt"
  | "rsqrt"
  | "abs"
  | "sign"
  | "erf"
  | "floor"
  | "sigmoid"
  | "log1p"
  | "expm1";
function unary(prim: UnaryPrim) {
  return (x: Tensor): Tensor => bind(prim, [checkTensor(prim, "x", x)], {})[0];
}

/** Elementwise -x. */
export const neg: (x: Tensor) => Tensor = unary("neg");
/** Elementwise e^x. */
export const exp: (x: Tensor) => Tensor = unary("exp");
/** Elementwise natural logarithm. */
export const log: (x: Tensor) => Tensor = unary("log");
/** Elementwise sine. */
export const sin: (x: Tensor) => Tensor = unary("sin");
/** Elementwise cosine. */
export const cos: (x: Tensor) => Tensor = unary("cos");
/** Elementwise hyperbolic tangent. */
export const tanh: (x: Tensor) => Tensor = unary("tanh");
/** Elementwise square root. */
export const sqrt: (x: Tensor) => Tensor = unary("sqrt");
/** Elementwise 1/sqrt(x). */
export const rsqrt: (x: Tensor) => Tensor = unary("rsqrt");
/** Elementwise |x|. */
export const abs: (x: Tensor) => Tensor = unary("abs");
/** Elementwise sign (-1, 0, 1). */
export const sign: (x: Tensor) => Tensor = unary("sign");
/** Elementwise error function. */
export const erf: (x: Tensor) => Tensor = unary("erf");
/** Elementwise floor. */
export const floor: (x: Tensor) => Tensor = unary("floor");
/** Elementwise logistic sigmoid 1/(1+e^-x), computed stably. */
export const sigmoid: (x: Tensor) => Tensor = unary("sigmoid");
/** Elementwise log(1+x), accurate near 0. */
export const log1p: (x: Tensor) => Tensor = unary("log1p");
/** Elementwise e^x - 1, accurate near 0. */
export const expm1: (x: Tensor) => Tensor = unary("expm1");

/** Elementwise x². */
export function square(x: Tensor): Tensor {
  return mul(x, x);
}

/** Elementwise 1/x. */
export function reciprocal(x: Tensor): Tensor {
  return div(1, x);
}

function compare(op: CmpOp) {
  return (a: TensorLike, b: TensorLike): Tensor => {
    const [x, y] = bcast(op, ...lift(op, a, b));
    return bind("compare", [x, y], { op })[0];
  };
}

/** Elementwise a < b (bool). */
export const less: (a: TensorLike, b: TensorLike) => Tensor = compare("lt");
/** Elementwise a <= b (bool). */
export const lessEqual: (a: TensorLike, b: TensorLike) => Tensor = compare("le");
/** Elementwise a > b (bool). */
export const greater: (a: TensorLike, b: TensorLike) => Tensor = compare("gt");
/** Elementwise a >= b (bool). */
export const greaterEqual: (a: TensorLike, b: TensorLike) => Tensor = compare("ge");
/** Elementwise a == b (bool). */
export const equal: (a: TensorLike, b: TensorLike) => Tensor = compare("eq");
/** Elementwise a != b (bool). */
export const notEqual: (a: TensorLike, b: TensorLike) => Tensor = compare("ne");

/** Picks `a` where `cond` is true, else `b`, with broadcasting. */
export function where(cond: Tensor, a: TensorLike, b: TensorLike): Tensor {
  checkTensor("where", "cond", cond);
  if (cond.dtype !== "bool") throw new DTypeError(`where: condition must be bool, got ${cond.dtype}`);
  const [x, y] = lift("where", a, b);
  const [c, xx, yy] = bcast("where", cond, x, y);
  return bind("where", [c, xx, yy], {})[0];
}

/** Logical not of a bool tensor. */
export function logicalNot(x: Tensor): Tensor {
  return equal(checkBool("logicalNot", x), scalar(0, "bool", x));
}

/** Logical and of bool tensors. */
export function logicalAnd(a: Tensor, b: Tensor): Tensor {
  return where(checkBool("logicalAnd", a), checkBool("logicalAnd", b), scalar(0, "bool", a));
}

/** Logical or of bool tensors. */
export function logicalOr(a: Tensor, b: Tensor): Tensor {
  return where(checkBool("logicalOr", a), scalar(1, "bool", a), checkBool("logicalOr", b));
}

function checkBool(op: string, x: Tensor): Tensor {
  checkTensor(op, "x", x);
  if (x.dtype !== "bool") throw new DTypeError(`${op}: needs bool operands, got ${x.dtype}`);
  return x;
}

/** Converts to another dtype (floats truncate toward zero into integers). */
export function cast(x: Tensor, dtype: DType): Tensor {
  checkTensor("cast", "x", x);
  if (x.dtype === checkDType("cast", dtype)) return x;
  return bind("cast", [x], { dtype })[0];
}

/** Options of the reductions. */
export interface ReduceOptions {
  /** Axis or axes to reduce (default: all). */
  axis?: number | readonly number[];
  /** Keep reduced axes as size 1. */
  keepdims?: boolean;
}

/** Sum over axes. */
export function sum(x: Tensor, opts: ReduceOptions = {}): Tensor {
  checkTensor("sum", "x", x);
  const axes = normAxes("sum", opts.axis, x.ndim);
  return bind("sum", [x], { axes, keepdims: !!opts.keepdims })[0];
}

/** Mean over axes. */
export function mean(x: Tensor, opts: ReduceOptions = {}): Tensor {
  checkTensor("mean", "x", x);
  if (!isFloat(x.dtype)) throw new DTypeError(`mean: needs a floating-point tensor, got ${x.dtype}`);
  const axes = normAxes("mean", opts.axis, x.ndim);
  const n = axes.reduce((a, i) => a * x.shape[i], 1);
  return div(sum(x, opts), n);
}

/** Maximum over axes. */
export function max(x: Tensor, opts: ReduceOptions = {}): Tensor {
  checkTensor("max", "x", x);
  const axes = normAxes("max", opts.axis, x.ndim);
  return bind("max", [x], { axes, keepdims: !!opts.keepdims })[0];
}

/** Minimum over axes. */
export function min(x: Tensor, opts: ReduceOptions = {}): Tensor {
  return neg(max(neg(x), opts));
}

/** Variance over axes (population, like torch's unbiased=False). */
export function variance(x: Tensor, opts: ReduceOptions = {}): Tensor {
  const m = mean(x, { axis: opts.axis, keepdims: true });
  return mean(square(sub(x, m)), opts);
}

/** Index of the maximum along one axis (first on ties), as i32. */
export function argmax(x: Tensor, opts: { axis?: number; keepdims?: boolean } = {}): Tensor {
  checkTensor("argmax", "x", x);
  if (opts.axis === undefined) return argmax(reshape(x, [x.size]), { axis: 0 });
  const axis = normAxis("argmax", opts.axis, x.ndim);
  return bind("argmax", [x], { axis, keepdims: !!opts.keepdims })[0];
}

/** Index of the minimum along one axis, as i32. */
export function argmin(x: Tensor, opts: { axis?: number; keepdims?: boolean } = {}): Tensor {
  return argmax(neg(x), opts);
}

/** Cumulative sum along an axis (`reverse` sums from the end). */
export function cumsum(x: Tensor, axis = -1, reverse = false): Tensor {
  checkTensor("cumsum", "x", x);
  return bind("cumsum", [x], { axis: normAxis("cumsum", axis, x.ndim), reverse })[0];
}

/** Cumulative product along an axis. */
export function cumprod(x: Tensor, axis = -1, reverse = false): Tensor {
  checkTensor("cumprod", "x", x);
  return bind("cumprod", [x], { axis: normAxis("cumprod", axis, x.ndim), reverse })[0];
}

/** log(sum(exp(x))) over axes, stabilised by the maximum. */
export function logsumexp(x: Tensor, opts: ReduceOptions = {}): Tensor {
  const m = stopGradientValue(max(x, { axis: opts.axis, keepdims: true }));
  const safe = where(isfinite(m), m, 0);
  const r = add(log(sum(exp(sub(x, safe)), { axis: opts.axis, keepdims: true })), safe);
  return opts.keepdims ? r : squeeze(r, normAxes("logsumexp", opts.axis, x.ndim));
}

/** Softmax along an axis (default last). */
export function softmax(x: Tensor, axis = -1): Tensor {
  const m = stopGradientValue(max(x, { axis, keepdims: true }));
  const e = exp(sub(x, m));
  return div(e, sum(e, { axis, keepdims: true }));
}

/** Log-softmax along an axis. */
export function logSoftmax(x: Tensor, axis = -1): Tensor {
  return sub(x, logsumexp(x, { axis, keepdims: true }));
}

/** True where finite (not NaN/Inf). */
export function isfinite(x: Tensor): Tensor {
  // x - x is 0 for finite values and NaN for NaN/Inf.
  return equal(sub(x, x), 0);
}

/** True where NaN. */
export function isnan(x: Tensor): Tensor {
  return notEqual(x, x);
}

// The stabilising max in softmax/logsumexp needs no gradient (it cancels
// exactly), so it is taken as a constant: an untracked alias.
const stopGradientValue = (x: Tensor): Tensor => alias(x);

/** Matrix product with NumPy semantics (1-D operands, broadcast batch dims). */
export function matmul(a: Tensor, b: Tensor): Tensor {
  checkTensor("matmul", "a", a);
  checkTensor("matmul", "b", b);
  if (a.dtype !== b.dtype) throw new DTypeError(`matmul: operand dtypes ${a.dtype} and ${b.dtype} differ`);
  if (a.ndim === 0 || b.ndim === 0) {
    throw new ShapeError(`matmul: operands must be at least 1-D, got ${fmtShape(a.shape)} and ${fmtShape(b.shape)}`);
  }
  const a2 = a.ndim === 1 ? reshape(a, [1, a.shape[0]]) : a;
  const b2 = b.ndim === 1 ? reshape(b, [b.shape[0], 1]) : b;
  const [m, k] = a2.shape.slice(-2);
  const [k2, n] = b2.shape.slice(-2);
  if (k !== k2) {
    throw new ShapeError(
      `matmul: inner dimensions differ: ${fmtShape(a.shape)} @ ${fmtShape(b.shape)} (${k} vs ${k2})`,
    );
  }
  const batch = broadcastShapes("matmul", a2.shape.slice(0, -2), b2.shape.slice(0, -2));
  const B = size(batch);
  const a3 = reshape(broadcastTo(a2, [...batch, m, k]), [B, m, k]);
  const b3 = reshape(broadcastTo(b2, [...batch, k, n]), [B, k, n]);
  let out = reshape(bind("dot", [a3, b3], {})[0], [...batch, m, n]);
  if (a.ndim === 1) out = squeeze(out, [out.ndim - 2]);
  if (b.ndim === 1) out = squeeze(out, [out.ndim - 1]);
  return out;
}

/** Reshapes (a view when possible); one `-1` is inferred. */
export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  checkTensor("reshape", "x", x);
  const s = [...shape];
  const neg1 = s.indexOf(-1);
  if (neg1 >= 0) {
    const rest = size(s.filter((_, i) => i !== neg1));
    if (rest === 0 || x.size % rest !== 0) {
      throw new ShapeError(`reshape: cannot reshape ${fmtShape(x.shape)} into ${fmtShape(shape)}`);
    }
    s[neg1] = x.size / rest;
  }
  checkShape("reshape", s);
  if (size(s) !== x.size) throw new ShapeError(`reshape: cannot reshape ${fmtShape(x.shape)} into ${fmtShape(shape)}`);
  if (shapeEq(s, x.shape)) return x;
  return bind("reshape", [x], { shape: s })[0];
}

/** Permutes axes (default: reverses them). */
export function transpose(x: Tensor, perm?: readonly number[]): Tensor {
  checkTensor("transpose", "x", x);
  const p = perm ? perm.map((a) => normAxis("transpose", a, x.ndim)) : [...Array(x.ndim).keys()].reverse();
  if (p.every((v, i) => v === i) && p.length === x.ndim) return x;
  return bind("transpose", [x], { perm: p })[0];
}

/** Swaps two axes. */
export function swapaxes(x: Tensor, a: number, b: number): Tensor {
  const p = [...Array(x.ndim).keys()];
  const [i, j] = [normAxis("swapaxes", a, x.ndim), normAxis("swapaxes", b, x.ndim)];
  [p[i], p[j]] = [p[j], p[i]];
  return transpose(x, p);
}

/** Broadcasts to `shape` (a view: no copy). */
export function broadcastTo(x: Tensor, shape: readonly number[]): Tensor {
  checkTensor("broadcastTo", "x", x);
  const s = checkShape("broadcastTo", shape);
  if (shapeEq(s, x.shape)) return x;
  return bind("broadcast", [x], { shape: s })[0];
}

/** Inserts a size-1 axis at `axis`. */
export function expandDims(x: Tensor, axis: number): Tensor {
  const a = normAxis("expandDims", axis, x.ndim + 1);
  const s = [...x.shape];
  s.splice(a, 0, 1);
  return reshape(x, s);
}

/** Removes size-1 axes (all of them, or the given ones). */
export function squeeze(x: Tensor, axes?: readonly number[]): Tensor {
  const ax = axes ? axes.map((a) => normAxis("squeeze", a, x.ndim)) : x.shape.flatMap((d, i) => (d === 1 ? [i] : []));
  for (const a of ax) {
    if (x.shape[a] !== 1) {
      throw new ShapeError(`squeeze: axis ${a} of ${fmtShape(x.shape)} has size ${x.shape[a]}, not 1`);
    }
  }
  return reshape(x, x.shape.filter((_, i) => !ax.includes(i)));
}

/**
 * Strided slice. `starts`/`ends` may be negative (from the end) and are
 * clamped like Python slices; missing entries mean the whole axis.
 */
export function slice(
  x: Tensor,
  starts: readonly number[],
  ends?: readonly (number | undefined)[],
  steps?: readonly number[],
): Tensor {
  checkTensor("slice", "x", x);
  if (starts.length > x.ndim || (ends && ends.length > x.ndim) || (steps && steps.length > x.ndim)) {
    throw new ShapeError(`slice: more indices than axes for a tensor of shape ${fmtShape(x.shape)}`);
  }
  const st: number[] = [], en: number[] = [], sp: number[] = [];
  x.shape.forEach((d, i) => {
    const step = steps?.[i] ?? 1;
    if (!Number.isInteger(step) || step < 1) {
      throw new ShapeError(`slice: step ${step} on axis ${i} must be a positive integer`);
    }
    const norm = (v: number) => {
      // Infinite bounds mean "to the end", as in Python; NaN and fractions are bugs in the caller.
      if (!Number.isInteger(v) && Math.abs(v) !== Infinity) {
        throw new ShapeError(`slice: index ${v} on axis ${i} of ${fmtShape(x.shape)} must be an integer`);
      }
      return Math.min(Math.max(v < 0 ? v + d : v, 0), d);
    };
    const b = norm(starts[i] ?? 0);
    const e = Math.max(b, norm(ends?.[i] ?? d));
    st.push(b);
    en.push(e);
    sp.push(step);
  });
  if (st.every((v) => v === 0) && en.every((v, i) => v === x.shape[i]) && sp.every((v) => v === 1)) return x;
  return bind("slice", [x], { starts: st, ends: en, steps: sp })[0];
}

/** Concatenates along an existing axis. */
export function concat(xs: readonly Tensor[], axis = 0): Tensor {
  if (!Array.isArray(xs) || xs.length === 0) throw new ShapeError("concat: needs a non-empty array of tensors");
  xs.forEach((x, i) => checkTensor("concat", `xs[${i}]`, x));
  if (xs.length === 1) return xs[0];
  return bind("concat", xs, { axis: normAxis("concat", axis, xs[0].ndim) })[0];
}

/** Stacks along a new axis. */
export function stack(xs: readonly Tensor[], axis = 0): Tensor {
  if (!Array.isArray(xs) || xs.length === 0) throw new ShapeError("stack: needs a non-empty array of tensors");
  const a = normAxis("stack", axis, xs[0].ndim + 1);
  xs.forEach((x, i) => {
    checkTensor("stack", `xs[${i}]`, x);
    if (!shapeEq(x.shape, xs[0].shape)) {
      throw new ShapeError(`stack: shapes ${fmtShape(xs[0].shape)} and ${fmtShape(x.shape)} differ`);
    }
  });
  return concat(xs.map((x) => expandDims(x, a)), a);
}

/** Splits into `sections` equal parts (or at the given indices) along an axis. */
export function split(x: Tensor, sections: number | readonly number[], axis = 0): Tensor[] {
  const a = normAxis("split", axis, x.ndim);
  const d = x.shape[a];
  let cuts: number[];
  if (typeof sections === "number") {
    if (!Number.isInteger(sections) || sections < 1 || d % sections !== 0) {
      throw new ShapeError(`split: axis ${a} of ${fmtShape(x.shape)} cannot be split into ${sections} equal parts`);
    }
    cuts = [...Array(sections + 1).keys()].map((i) => (i * d) / sections);
  } else cuts = [0, ...sections, d];
  const out: Tensor[] = [];
  for (let i = 0; i + 1 < cuts.length; i++) {
    const s = new Array(x.ndim).fill(0), e = [...x.shape];
    s[a] = cuts[i];
    e[a] = cuts[i + 1];
    out.push(slice(x, s, e));
  }
  return out;
}

/** Pads with a constant; `widths` is `[lo, hi]` per axis (or per trailing axes). */
export function pad(x: Tensor, widths: readonly (readonly [number, number])[], value = 0): Tensor {
  checkTensor("pad", "x", x);
  if (widths.length > x.ndim) throw new ShapeError(`pad: ${widths.length} widths for a tensor of rank ${x.ndim}`);
  const w: [number, number, number][] = x.shape.map((_, i) => {
    const j = i - (x.ndim - widths.length);
    const [lo, hi] = j >= 0 ? widths[j] : [0, 0];
    if (!Number.isInteger(lo) || !Number.isInteger(hi) || lo < 0 || hi < 0) {
      throw new ShapeError(`pad: widths must be non-negative integers, got ${JSON.stringify(widths)}`);
    }
    return [lo, hi, 0];
  });
  const p = bind("pad", [x], { widths: w })[0];
  if (value === 0) return p;
  const inside = bind("pad", [full(x.shape, 1, "bool", x)], { widths: w })[0];
  return where(inside, p, value);
}

/** Reverses the order of elements along axes. */
export function flip(x: Tensor, axis?: number | readonly number[]): Tensor {
  checkTensor("flip", "x", x);
  return bind("flip", [x], { axes: normAxes("flip", axis, x.ndim) })[0];
}

/** Takes entries along `axis` at integer `indices` (i32). */
export function take(x: Tensor, indices: Tensor, axis = 0): Tensor {
  checkTensor("take", "x", x);
  checkTensor("take", "indices", indices);
  if (indices.dtype !== "i32") throw new DTypeError(`take: indices must be i32, got ${indices.dtype}`);
  return bind("gather", [x, indices], { axis: normAxis("take", axis, x.ndim) })[0];
}

/** Adds `updates` into zeros of `size` along `axis` at `indices` (the transpose of take). */
export function scatterAdd(updates: Tensor, indices: Tensor, axis: number, size: number): Tensor {
  checkTensor("scatterAdd", "updates", updates);
  checkTensor("scatterAdd", "indices", indices);
  return bind("scatterAdd", [updates, indices], { axis, size })[0];
}

/** One-hot encoding of integer labels into `n` classes (new last axis). */
export function oneHot(labels: Tensor, n: number, dtype: DType = "f32"): Tensor {
  checkTensor("oneHot", "labels", labels);
  if (labels.dtype !== "i32") throw new DTypeError(`oneHot: labels must be i32, got ${labels.dtype}`);
  if (!Number.isInteger(n) || n < 0) {
    throw new DifflabError(`oneHot: number of classes must be a non-negative integer, got ${n}`);
  }
  const classes = arangeOn(labels, n);
  return cast(equal(expandDims(labels, -1), classes), dtype);
}

function arangeOn(like: Tensor, n: number): Tensor {
  const host = new Int32Array(n);
  for (let i = 0; i < n; i++) host[i] = i;
  return new Tensor(like.backend, like.backend.fromHost(host, { shape: [n], dtype: "i32" }), {
    shape: [n],
    dtype: "i32",
  });
}

/** Options of conv2d. */
export interface Conv2dOptions {
  /** Stride (number or [sh, sw]). */
  stride?: number | readonly [number, number];
  /** Padding: number, [ph, pw], [[top, bottom], [left, right]], "same" or "valid". */
  padding?:
    | number
    | readonly [number, number]
    | readonly [readonly [number, number], readonly [number, number]]
    | "same"
    | "valid";
  /** Kernel dilation. */
  dilation?: number | readonly [number, number];
  /** Feature groups (in and out channels must both divide by it). */
  groups?: number;
}

function pair(
  op: string,
  name: string,
  v: number | readonly [number, number] | undefined,
  dflt: number,
): [number, number] {
  const p: [number, number] = v === undefined ? [dflt, dflt] : typeof v === "number" ? [v, v] : [v[0], v[1]];
  if (!p.every((q) => Number.isInteger(q) && q >= (name === "padding" ? 0 : 1))) {
    throw new ShapeError(`${op}: invalid ${name} ${JSON.stringify(v)}`);
  }
  return p;
}

/** 2-D convolution, NCHW input and OIHW weights (PyTorch layout, cross-correlation). */
export function conv2d(x: Tensor, w: Tensor, opts: Conv2dOptions = {}): Tensor {
  checkTensor("conv2d", "x", x);
  checkTensor("conv2d", "w", w);
  if (x.ndim !== 4 || w.ndim !== 4) {
    throw new ShapeError(
      `conv2d: expected x [N,C,H,W] and w [O,C/groups,KH,KW], got ${fmtShape(x.shape)} and ${fmtShape(w.shape)}`,
    );
  }
  if (x.dtype !== w.dtype) throw new DTypeError(`conv2d: x dtype ${x.dtype} and w dtype ${w.dtype} differ`);
  const g = opts.groups ?? 1;
  const [N, C, H, W] = x.shape;
  const [O, Cg, KH, KW] = w.shape;
  if (!Number.isInteger(g) || g < 1 || C % g !== 0 || O % g !== 0 || Cg * g !== C) {
    throw new ShapeError(
      `conv2d: x ${fmtShape(x.shape)} and w ${
        fmtShape(w.shape)
      } do not match groups=${g} (need C = groups*w.shape[1] and O divisible by groups)`,
    );
  }
  const stride = pair("conv2d", "stride", opts.stride, 1);
  const dil = pair("conv2d", "dilation", opts.dilation, 1);
  let padding: [[number, number], [number, number]];
  const p = opts.padding ?? 0;
  if (p === "valid") padding = [[0, 0], [0, 0]];
  else if (p === "same") {
    if (stride[0] !== 1 || stride[1] !== 1) throw new ShapeError(`conv2d: padding "same" needs stride 1`);
    const th = dil[0] * (KH - 1), tw = dil[1] * (KW - 1);
    padding = [[Math.floor(th / 2), th - Math.floor(th / 2)], [Math.floor(tw / 2), tw - Math.floor(tw / 2)]];
  } else if (typeof p === "number" || typeof p[0] === "number") {
    const [ph, pw] = pair("conv2d", "padding", p as number | [number, number], 0);
    padding = [[ph, ph], [pw, pw]];
  } else {
    const q = p as readonly (readonly [number, number])[];
    if (
      q.length !== 2 ||
      !q.every((r) => Array.isArray(r) && r.length === 2 && r.every((v) => Number.isInteger(v) && v >= 0))
    ) {
      throw new ShapeError(
        `conv2d: invalid padding ${
          JSON.stringify(p)
        } (expected [[top, bottom], [left, right]] of non-negative integers)`,
      );
    }
    padding = [[q[0][0], q[0][1]], [q[1][0], q[1][1]]];
  }
  const xg = reshape(x, [N, g, C / g, H, W]);
  const wg = reshape(w, [g, O / g, Cg, KH, KW]);
  const y = bind("conv", [xg, wg], { stride, padding, lhsDilation: [1, 1], rhsDilation: dil })[0];
  return reshape(y, [N, O, y.shape[3], y.shape[4]]);
}
