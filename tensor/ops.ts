/**
 * @file The public, jax.numpy-like operations. Everything here is library
 * code over the primitives of `prims.ts`: it validates arguments (naming the
 * op, the argument and the shapes/dtypes), broadcasts operands NumPy-style
 * through the `broadcast` view and then binds primitives.
 */
import { allocHost, checkDType, type DType, isFloat } from "./dtype.ts";
import { describe, DifflabError, DTypeError, fmtShape, ShapeError } from "./errors.ts";
import { type CmpOp, convOutSize } from "./prims.ts";
import { broadcastShapes, checkShape, checkSize, MAX_SIZE, normAxes, normAxis, shapeEq, size } from "./shape.ts";
import { alias, bind, currentBackend, Tensor } from "./tensor.ts";
import {
  checkFlag,
  checkFloatTensor,
  checkInt,
  checkNumber,
  checkNumericTensor,
  checkOptions,
  checkTensor,
} from "./validate.ts";

/** A Tensor or a JS number (which adopts the other operand's dtype). */
export type TensorLike = Tensor | number;

/** A scalar of `dtype` on the same backend as `like` (or the current backend). */
export function scalar(v: number, dtype: DType = "f32", like?: Tensor): Tensor {
  return scalarOf("scalar", v, dtype, like);
}

function scalarOf(op: string, v: number, dtype: DType, like: Tensor | undefined): Tensor {
  checkNumber(op, "v", v);
  checkDType(op, dtype);
  if (like !== undefined) checkTensor(op, "like", like);
  const b = like ? like.backend : currentBackend();
  const host = allocHost(dtype, 1);
  host[0] = dtype === "bool" ? (v ? 1 : 0) : v;
  return new Tensor(b, b.fromHost(host, { shape: [], dtype }), { shape: [], dtype });
}

/** A tensor of `shape` filled with `v` (a broadcast view of one scalar). */
export function full(shape: readonly number[], v: number, dtype: DType = "f32", like?: Tensor): Tensor {
  return fullOf("full", shape, v, dtype, like);
}

function fullOf(op: string, shape: readonly number[], v: number, dtype: DType, like: Tensor | undefined): Tensor {
  const s = checkShape(op, shape);
  return broadcastTo(scalarOf(op, v, dtype, like), s);
}

/** Zeros of `shape`. */
export function zeros(shape: readonly number[], dtype: DType = "f32"): Tensor {
  return fullOf("zeros", shape, 0, dtype, undefined);
}

/** Ones of `shape`. */
export function ones(shape: readonly number[], dtype: DType = "f32"): Tensor {
  return fullOf("ones", shape, 1, dtype, undefined);
}

/** Zeros with the shape, dtype and backend of `x`. */
export function zerosLike(x: Tensor): Tensor {
  checkTensor("zerosLike", "x", x);
  return full(x.shape, 0, x.dtype, x);
}

/** Ones with the shape, dtype and backend of `x`. */
export function onesLike(x: Tensor): Tensor {
  checkTensor("onesLike", "x", x);
  return full(x.shape, 1, x.dtype, x);
}

/** `[start, stop)` in steps of `step`, like numpy.arange (`arange(n)` = 0..n-1). */
export function arange(start: number, stop?: number, step = 1, dtype: DType = "f32"): Tensor {
  checkDType("arange", dtype);
  checkNumber("arange", "start", start, true);
  if (stop !== undefined) checkNumber("arange", "stop", stop, true);
  checkNumber("arange", "step", step, true);
  if (stop === undefined) [start, stop] = [0, start];
  if (step === 0) throw new DifflabError(`arange: argument step must be non-zero, got ${step}`);
  const n = Math.max(0, Math.ceil((stop - start) / step));
  if (!Number.isFinite(n) || n > MAX_SIZE) {
    throw new ShapeError(
      `arange: [${start}, ${stop}) with step ${step} has ${n} elements, more than the ${MAX_SIZE} a tensor can hold`,
    );
  }
  const host = allocHost(dtype, n);
  for (let i = 0; i < n; i++) host[i] = start + i * step;
  const b = currentBackend();
  return new Tensor(b, b.fromHost(host, { shape: [n], dtype }), { shape: [n], dtype });
}

/** `n` evenly spaced values from `start` to `stop` inclusive. */
export function linspace(start: number, stop: number, n: number, dtype: DType = "f32"): Tensor {
  checkDType("linspace", dtype);
  checkNumber("linspace", "start", start, true);
  checkNumber("linspace", "stop", stop, true);
  checkInt("linspace", "n", n, 0, MAX_SIZE);
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
  xs.forEach((x, i) => checkTensor("broadcastArrays", `xs[${i}]`, x));
  if (xs.length === 0) return [];
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
  | "expm1"
  | "gelu"
  | "geluTanh"
  | "geluGrad"
  | "geluTanhGrad";
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
/** Elementwise exact GELU 0.5·x·(1 + erf(x/√2)), one fused primitive (torch's `F.gelu`). */
export const gelu: (x: Tensor) => Tensor = unary("gelu");
/** Elementwise tanh GELU 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), one fused primitive. */
export const geluTanh: (x: Tensor) => Tensor = unary("geluTanh");
/** Elementwise derivative of {@link gelu}, Φ(x) + x·φ(x): gelu's backward pass as one kernel. */
export const geluGrad: (x: Tensor) => Tensor = unary("geluGrad");
/** Elementwise derivative of {@link geluTanh}. */
export const geluTanhGrad: (x: Tensor) => Tensor = unary("geluTanhGrad");

/** Elementwise x². */
export function square(x: Tensor): Tensor {
  checkNumericTensor("square", "x", x);
  return mul(x, x);
}

/** Elementwise 1/x. */
export function reciprocal(x: Tensor): Tensor {
  checkNumericTensor("reciprocal", "x", x);
  return div(1, x);
}

function compare(op: CmpOp, name: string) {
  return (a: TensorLike, b: TensorLike): Tensor => {
    const [x, y] = bcast(name, ...lift(name, a, b));
    return bind("compare", [x, y], { op })[0];
  };
}

/** Elementwise a < b (bool). */
export const less: (a: TensorLike, b: TensorLike) => Tensor = compare("lt", "less");
/** Elementwise a <= b (bool). */
export const lessEqual: (a: TensorLike, b: TensorLike) => Tensor = compare("le", "lessEqual");
/** Elementwise a > b (bool). */
export const greater: (a: TensorLike, b: TensorLike) => Tensor = compare("gt", "greater");
/** Elementwise a >= b (bool). */
export const greaterEqual: (a: TensorLike, b: TensorLike) => Tensor = compare("ge", "greaterEqual");
/** Elementwise a == b (bool). */
export const equal: (a: TensorLike, b: TensorLike) => Tensor = compare("eq", "equal");
/** Elementwise a != b (bool). */
export const notEqual: (a: TensorLike, b: TensorLike) => Tensor = compare("ne", "notEqual");

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
  return equal(checkBool("logicalNot", "x", x), scalar(0, "bool", x));
}

/** Logical and of bool tensors. */
export function logicalAnd(a: Tensor, b: Tensor): Tensor {
  checkBools("logicalAnd", a, b);
  return where(a, b, scalar(0, "bool", a));
}

/** Logical or of bool tensors. */
export function logicalOr(a: Tensor, b: Tensor): Tensor {
  checkBools("logicalOr", a, b);
  return where(a, scalar(1, "bool", a), b);
}

function checkBool(op: string, arg: string, x: Tensor): Tensor {
  checkTensor(op, arg, x);
  if (x.dtype !== "bool") throw new DTypeError(`${op}: needs bool operands, got ${x.dtype}`);
  return x;
}

function checkBools(op: string, a: Tensor, b: Tensor) {
  checkBool(op, "a", a);
  checkBool(op, "b", b);
  broadcastShapes(op, a.shape, b.shape);
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

/** Validated reduction arguments: the tensor (of `kind`), sorted axes and keepdims. */
function reduceArgs(
  op: string,
  x: Tensor,
  opts: ReduceOptions,
  kind: "any" | "numeric" | "float",
  nonEmpty = false,
): { axes: number[]; keepdims: boolean } {
  if (kind === "float") checkFloatTensor(op, "x", x);
  else if (kind === "numeric") checkNumericTensor(op, "x", x);
  else checkTensor(op, "x", x);
  const o = checkOptions<ReduceOptions>(op, opts, ["axis", "keepdims"]);
  const axes = normAxes(op, o.axis, x.ndim);
  if (nonEmpty) {
    for (const a of axes) if (x.shape[a] === 0) throw new ShapeError(`${op}: cannot reduce over axis ${a} of size 0`);
  }
  return { axes, keepdims: checkFlag(op, "keepdims", o.keepdims) };
}

/** Sum over axes. */
export function sum(x: Tensor, opts: ReduceOptions = {}): Tensor {
  const { axes, keepdims } = reduceArgs("sum", x, opts, "numeric");
  return bind("sum", [x], { axes, keepdims })[0];
}

/** Mean over axes. */
export function mean(x: Tensor, opts: ReduceOptions = {}): Tensor {
  checkTensor("mean", "x", x);
  if (!isFloat(x.dtype)) throw new DTypeError(`mean: needs a floating-point tensor, got ${x.dtype}`);
  const { axes, keepdims } = reduceArgs("mean", x, opts, "float");
  const n = axes.reduce((a, i) => a * x.shape[i], 1);
  return div(bind("sum", [x], { axes, keepdims })[0], n);
}

/** Maximum over axes. */
export function max(x: Tensor, opts: ReduceOptions = {}): Tensor {
  const { axes, keepdims } = reduceArgs("max", x, opts, "numeric", true);
  return bind("max", [x], { axes, keepdims })[0];
}

/** Minimum over axes. */
export function min(x: Tensor, opts: ReduceOptions = {}): Tensor {
  reduceArgs("min", x, opts, "numeric", true);
  return neg(max(neg(x), opts));
}

/** Variance over axes (population, like torch's unbiased=False). */
export function variance(x: Tensor, opts: ReduceOptions = {}): Tensor {
  reduceArgs("variance", x, opts, "float");
  const m = mean(x, { axis: opts?.axis, keepdims: true });
  return mean(square(sub(x, m)), opts);
}

/** Index of the maximum along one axis (first on ties), as i32. */
export function argmax(x: Tensor, opts: { axis?: number; keepdims?: boolean } = {}): Tensor {
  return argOf("argmax", x, opts, false);
}

/** Index of the minimum along one axis, as i32. */
export function argmin(x: Tensor, opts: { axis?: number; keepdims?: boolean } = {}): Tensor {
  return argOf("argmin", x, opts, true);
}

function argOf(op: string, x: Tensor, opts: { axis?: number; keepdims?: boolean }, negate: boolean): Tensor {
  if (negate) checkNumericTensor(op, "x", x);
  else checkTensor(op, "x", x);
  const o = checkOptions<{ axis?: number; keepdims?: boolean }>(op, opts, ["axis", "keepdims"]);
  const keepdims = checkFlag(op, "keepdims", o.keepdims);
  const flat = o.axis === undefined;
  const xx = flat ? reshape(x, [x.size]) : x;
  const axis = flat ? 0 : normAxis(op, o.axis, x.ndim);
  if (xx.shape[axis] === 0) throw new ShapeError(`${op}: cannot reduce over axis ${axis} of size 0`);
  // Without an axis the result is a scalar index into the flattened tensor (keepdims does not apply).
  return bind("argmax", [negate ? neg(xx) : xx], { axis, keepdims: flat ? false : keepdims })[0];
}

/** Cumulative sum along an axis (`reverse` sums from the end). */
export function cumsum(x: Tensor, axis = -1, reverse = false): Tensor {
  checkNumericTensor("cumsum", "x", x);
  const r = checkFlag("cumsum", "reverse", reverse);
  return bind("cumsum", [x], { axis: normAxis("cumsum", axis, x.ndim), reverse: r })[0];
}

/** Cumulative product along an axis. */
export function cumprod(x: Tensor, axis = -1, reverse = false): Tensor {
  checkNumericTensor("cumprod", "x", x);
  const r = checkFlag("cumprod", "reverse", reverse);
  return bind("cumprod", [x], { axis: normAxis("cumprod", axis, x.ndim), reverse: r })[0];
}

/** log(sum(exp(x))) over axes, stabilised by the maximum. */
export function logsumexp(x: Tensor, opts: ReduceOptions = {}): Tensor {
  reduceArgs("logsumexp", x, opts, "float", true);
  const m = stopGradientValue(max(x, { axis: opts.axis, keepdims: true }));
  const safe = where(isfinite(m), m, 0);
  const r = add(log(sum(exp(sub(x, safe)), { axis: opts.axis, keepdims: true })), safe);
  return opts.keepdims ? r : squeeze(r, normAxes("logsumexp", opts.axis, x.ndim));
}

/** Softmax along an axis (default last). */
export function softmax(x: Tensor, axis = -1): Tensor {
  const [a] = reduceArgs("softmax", x, { axis }, "float", true).axes;
  // One fused row primitive over the last axis; other axes are moved there and back (views).
  if (a === x.ndim - 1) return bind("softmax", [x], {})[0];
  return swapaxes(bind("softmax", [swapaxes(x, a, -1)], {})[0], a, -1);
}

/** Log-softmax along an axis. */
export function logSoftmax(x: Tensor, axis = -1): Tensor {
  reduceArgs("logSoftmax", x, { axis }, "float", true);
  return sub(x, logsumexp(x, { axis, keepdims: true }));
}

/** True where finite (not NaN/Inf). */
export function isfinite(x: Tensor): Tensor {
  checkNumericTensor("isfinite", "x", x);
  // x - x is 0 for finite values and NaN for NaN/Inf.
  return equal(sub(x, x), 0);
}

/** True where NaN. */
export function isnan(x: Tensor): Tensor {
  checkTensor("isnan", "x", x);
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
  if (a.dtype === "bool") throw new DTypeError("matmul: does not accept bool operands; cast first");
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
  checkSize("matmul", [...batch, m, n], "result shape");
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
  if (!Array.isArray(shape) || !shape.every((d) => d === -1 || (Number.isSafeInteger(d) && d >= 0))) {
    throw new ShapeError(
      `reshape: argument shape must be an array of non-negative integers (one may be -1), got ${describe(shape)}`,
    );
  }
  const s = [...shape];
  const neg1 = s.indexOf(-1);
  if (s.lastIndexOf(-1) !== neg1) {
    throw new ShapeError(`reshape: cannot reshape ${fmtShape(x.shape)} into ${fmtShape(shape)} (more than one -1)`);
  }
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
  if (perm !== undefined && !Array.isArray(perm)) {
    throw new ShapeError(`transpose: argument perm must be an array of axes or undefined, got ${describe(perm)}`);
  }
  const p = perm
    ? perm.map((a, i) => normAxis("transpose", a, x.ndim, `perm[${i}]`))
    : [...Array(x.ndim).keys()].reverse();
  if (p.every((v, i) => v === i) && p.length === x.ndim) return x;
  return bind("transpose", [x], { perm: p })[0];
}

/** Swaps two axes. */
export function swapaxes(x: Tensor, a: number, b: number): Tensor {
  checkTensor("swapaxes", "x", x);
  const p = [...Array(x.ndim).keys()];
  const [i, j] = [normAxis("swapaxes", a, x.ndim, "a"), normAxis("swapaxes", b, x.ndim, "b")];
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
  checkTensor("expandDims", "x", x);
  const a = normAxis("expandDims", axis, x.ndim + 1);
  const s = [...x.shape];
  s.splice(a, 0, 1);
  return reshape(x, s);
}

/** Removes size-1 axes (all of them, or the given ones). */
export function squeeze(x: Tensor, axes?: readonly number[]): Tensor {
  checkTensor("squeeze", "x", x);
  const ax = axes !== undefined
    ? normAxes("squeeze", axes, x.ndim, "axes")
    : x.shape.flatMap((d, i) => (d === 1 ? [i] : []));
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
  for (const [name, v] of [["starts", starts], ["ends", ends], ["steps", steps]] as const) {
    if ((v !== undefined || name === "starts") && !Array.isArray(v)) {
      throw new ShapeError(`slice: argument ${name} must be an array of integers, got ${describe(v)}`);
    }
  }
  if (starts.length > x.ndim || (ends && ends.length > x.ndim) || (steps && steps.length > x.ndim)) {
    throw new ShapeError(`slice: more indices than axes for a tensor of shape ${fmtShape(x.shape)}`);
  }
  const st: number[] = [], en: number[] = [], sp: number[] = [];
  x.shape.forEach((d, i) => {
    const step = steps?.[i] ?? 1;
    if (typeof step !== "number" || !Number.isInteger(step) || step < 1) {
      throw new ShapeError(`slice: step ${describe(step)} on axis ${i} must be a positive integer`);
    }
    const norm = (v: number) => {
      // Infinite bounds mean "to the end", as in Python; NaN and fractions are bugs in the caller.
      if (typeof v !== "number" || (!Number.isInteger(v) && Math.abs(v) !== Infinity)) {
        throw new ShapeError(`slice: index ${describe(v)} on axis ${i} of ${fmtShape(x.shape)} must be an integer`);
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
  xs.forEach((x, i) => checkTensor("stack", `xs[${i}]`, x));
  const a = normAxis("stack", axis, xs[0].ndim + 1);
  xs.forEach((x) => {
    if (x.dtype !== xs[0].dtype) throw new DTypeError(`stack: dtypes ${xs[0].dtype} and ${x.dtype} differ`);
    if (!shapeEq(x.shape, xs[0].shape)) {
      throw new ShapeError(`stack: shapes ${fmtShape(xs[0].shape)} and ${fmtShape(x.shape)} differ`);
    }
  });
  return concat(xs.map((x) => expandDims(x, a)), a);
}

/** Splits into `sections` equal parts (or at the given indices) along an axis. */
export function split(x: Tensor, sections: number | readonly number[], axis = 0): Tensor[] {
  checkTensor("split", "x", x);
  const a = normAxis("split", axis, x.ndim);
  const d = x.shape[a];
  let cuts: number[];
  if (typeof sections === "number") {
    // An empty axis splits into any number of empty parts; cap that so a huge count cannot hang.
    if (!Number.isInteger(sections) || sections < 1 || d % sections !== 0 || sections > Math.max(d, 65536)) {
      throw new ShapeError(`split: axis ${a} of ${fmtShape(x.shape)} cannot be split into ${sections} equal parts`);
    }
    cuts = [...Array(sections + 1).keys()].map((i) => (i * d) / sections);
  } else {
    if (!Array.isArray(sections) || !sections.every((v) => Number.isSafeInteger(v))) {
      throw new ShapeError(
        `split: argument sections must be a positive integer or an array of integer indices, got ${describe(sections)}`,
      );
    }
    cuts = [0, ...sections, d];
  }
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
  checkNumber("pad", "value", value);
  if (
    !Array.isArray(widths) ||
    !widths.every((w) => Array.isArray(w) && w.length === 2 && w.every((v) => Number.isSafeInteger(v) && v >= 0))
  ) {
    throw new ShapeError(
      `pad: widths must be an array of [lo, hi] pairs of non-negative integers, got ${describe(widths)}`,
    );
  }
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
  const ax = normAxis("take", axis, x.ndim);
  // Index values are only checked by the kernel (they are data): name the public op in its error.
  try {
    return bind("gather", [x, indices], { axis: ax })[0];
  } catch (e) {
    if (e instanceof DifflabError && e.message.startsWith("gather: ")) e.message = `take: ${e.message.slice(8)}`;
    throw e;
  }
}

/** Adds `updates` into zeros of `size` along `axis` at `indices` (the transpose of take). */
export function scatterAdd(updates: Tensor, indices: Tensor, axis: number, size: number): Tensor {
  checkNumericTensor("scatterAdd", "updates", updates);
  checkTensor("scatterAdd", "indices", indices);
  checkInt("scatterAdd", "axis", axis, 0);
  checkInt("scatterAdd", "size", size, 0, MAX_SIZE);
  return bind("scatterAdd", [updates, indices], { axis, size })[0];
}

/** One-hot encoding of integer labels into `n` classes (new last axis). */
export function oneHot(labels: Tensor, n: number, dtype: DType = "f32"): Tensor {
  checkTensor("oneHot", "labels", labels);
  if (labels.dtype !== "i32") throw new DTypeError(`oneHot: labels must be i32, got ${labels.dtype}`);
  if (typeof n !== "number" || !Number.isInteger(n) || n < 0 || n > MAX_SIZE) {
    throw new DifflabError(`oneHot: number of classes n must be a non-negative integer, got ${describe(n)}`);
  }
  checkDType("oneHot", dtype);
  checkSize("oneHot", [...labels.shape, n], "result shape");
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
  const p: [number, number] = v === undefined
    ? [dflt, dflt]
    : typeof v === "number"
    ? [v, v]
    : Array.isArray(v) && v.length === 2
    ? [v[0], v[1]]
    : [NaN, NaN];
  if (!p.every((q) => Number.isSafeInteger(q) && q >= (name === "padding" ? 0 : 1))) {
    throw new ShapeError(`${op}: invalid ${name} ${describe(v)}`);
  }
  return p;
}

/** 2-D convolution, NCHW input and OIHW weights (PyTorch layout, cross-correlation). */
export function conv2d(x: Tensor, w: Tensor, opts: Conv2dOptions = {}): Tensor {
  checkTensor("conv2d", "x", x);
  checkTensor("conv2d", "w", w);
  opts = checkOptions<Conv2dOptions>("conv2d", opts, ["stride", "padding", "dilation", "groups"]);
  if (x.ndim !== 4 || w.ndim !== 4) {
    throw new ShapeError(
      `conv2d: expected x [N,C,H,W] and w [O,C/groups,KH,KW], got ${fmtShape(x.shape)} and ${fmtShape(w.shape)}`,
    );
  }
  if (x.dtype !== w.dtype) throw new DTypeError(`conv2d: x dtype ${x.dtype} and w dtype ${w.dtype} differ`);
  if (!isFloat(x.dtype)) throw new DTypeError(`conv2d: needs floating-point operands, got ${x.dtype}`);
  const g = opts.groups ?? 1;
  const [N, C, H, W] = x.shape;
  const [O, Cg, KH, KW] = w.shape;
  if (!Number.isInteger(g) || g < 1 || C % g !== 0 || O % g !== 0 || Cg * g !== C) {
    throw new ShapeError(
      `conv2d: x ${fmtShape(x.shape)} and w ${fmtShape(w.shape)} do not match groups=${
        describe(g)
      } (need C = groups*w.shape[1] and O divisible by groups)`,
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
  } else if (typeof p === "number" || (Array.isArray(p) && typeof p[0] === "number")) {
    const [ph, pw] = pair("conv2d", "padding", p as number | [number, number], 0);
    padding = [[ph, ph], [pw, pw]];
  } else {
    const q = p as readonly (readonly [number, number])[];
    if (
      !Array.isArray(q) || q.length !== 2 ||
      !q.every((r) => Array.isArray(r) && r.length === 2 && r.every((v) => Number.isSafeInteger(v) && v >= 0))
    ) {
      throw new ShapeError(
        `conv2d: invalid padding ${describe(p)} (expected [[top, bottom], [left, right]] of non-negative integers)`,
      );
    }
    padding = [[q[0][0], q[0][1]], [q[1][0], q[1][1]]];
  }
  const oh = convOutSize(H, KH, stride[0], padding[0][0], padding[0][1], 1, dil[0]);
  const ow = convOutSize(W, KW, stride[1], padding[1][0], padding[1][1], 1, dil[1]);
  if (oh < 0 || ow < 0 || !Number.isFinite(oh) || !Number.isFinite(ow)) {
    throw new ShapeError(
      `conv2d: kernel ${fmtShape([KH, KW])} (dilation ${fmtShape(dil)}) does not fit input ${
        fmtShape([H, W])
      } with padding ${describe(padding)}`,
    );
  }
  checkSize("conv2d", [N, O, Math.max(oh, 0), Math.max(ow, 0)], "result shape");
  const xg = reshape(x, [N, g, C / g, H, W]);
  const wg = reshape(w, [g, O / g, Cg, KH, KW]);
  const y = bind("conv", [xg, wg], { stride, padding, lhsDilation: [1, 1], rhsDilation: dil })[0];
  return reshape(y, [N, O, y.shape[3], y.shape[4]]);
}
