/**
 * @file The primitive registry: every primitive's name, its parameter type
 * and its shape/dtype rule. Backends implement `{ [P in Prim]: ... }` tables
 * and autograd a `{ [P in Prim]: VjpRule<P> }` table, so adding a primitive
 * here fails to compile until every backend and the VJP table handle it.
 *
 * Primitives see operands that already agree in shape (broadcasting is
 * library code over the `broadcast` view), which keeps every kernel simple.
 */
import { type DType, isFloat } from "./dtype.ts";
import { DifflabError, DTypeError, fmtShape, ShapeError } from "./errors.ts";
import { type Shape, shapeEq, size } from "./shape.ts";

/** Abstract value: what a shape rule knows about a tensor. */
export interface Aval {
  /** Dimensions; `[]` for a scalar. */
  readonly shape: readonly number[];
  /** Element type. */
  readonly dtype: DType;
}

/** Parameters of a primitive that takes none. */
export type Empty = Record<string, never>;

/** Comparison kinds of the `compare` primitive. */
export type CmpOp = "lt" | "le" | "gt" | "ge" | "eq" | "ne";

/** Parameters of the general grouped convolution primitive (see `conv`). */
export interface ConvParams {
  /** `[sh, sw]`. */
  readonly stride: readonly [number, number];
  /** `[[top, bottom], [left, right]]`; may be negative (crop). */
  readonly padding: readonly [readonly [number, number], readonly [number, number]];
  /** Input dilation (zeros inserted between input pixels): the transpose of stride. */
  readonly lhsDilation: readonly [number, number];
  /** Kernel dilation. */
  readonly rhsDilation: readonly [number, number];
}

/** Parameter record of every primitive. */
export interface ParamsOf {
  /** Elementwise -x. */
  neg: Empty;
  /** Elementwise e^x. */
  exp: Empty;
  /** Elementwise natural log. */
  log: Empty;
  /** Elementwise sine. */
  sin: Empty;
  /** Elementwise cosine. */
  cos: Empty;
  /** Elementwise tanh. */
  tanh: Empty;
  /** Elementwise square root. */
  sqrt: Empty;
  /** Elementwise 1/sqrt(x). */
  rsqrt: Empty;
  /** Elementwise |x|. */
  abs: Empty;
  /** Elementwise sign (-1, 0, 1). */
  sign: Empty;
  /** Elementwise error function. */
  erf: Empty;
  /** Elementwise floor. */
  floor: Empty;
  /** Elementwise logistic sigmoid. */
  sigmoid: Empty;
  /** Elementwise log(1+x). */
  log1p: Empty;
  /** Elementwise e^x - 1. */
  expm1: Empty;
  /** Elementwise exact GELU x·Φ(x) (torch's `F.gelu`): one primitive so backward saves only x. */
  gelu: Empty;
  /** Elementwise tanh-approximate GELU (torch's `approximate="tanh"`). */
  geluTanh: Empty;
  /** Elementwise derivative of `gelu` (its backward pass in one kernel). */
  geluGrad: Empty;
  /** Elementwise derivative of `geluTanh`. */
  geluTanhGrad: Empty;
  /** `(x − mean)/√(var + eps)` along the last axis, biased variance (LayerNorm without affine), one pass per row. */
  layerNorm: { readonly eps: number };
  /**
   * One AdamW step on `[p, g, m, v]` (same shape and float dtype) giving `[p', m', v']`:
   * m' = b1·m + c1·g, v' = b2·v + c2·g², p' = p·decay + (m' / (√v'/bc2 + eps))·negStep.
   * Optimiser state is never differentiated: it has no VJP.
   */
  adamw: {
    readonly b1: number;
    readonly c1: number;
    readonly b2: number;
    readonly c2: number;
    readonly bc2: number;
    readonly eps: number;
    readonly decay: number;
    readonly negStep: number;
  };
  /** Softmax along the last axis, stabilised by the row maximum (one pass per row, saves only y). */
  softmax: Empty;
  /** Elementwise a + b (same shapes). */
  add: Empty;
  /** Elementwise a - b. */
  sub: Empty;
  /** Elementwise a * b. */
  mul: Empty;
  /** Elementwise a / b. */
  div: Empty;
  /** Elementwise a ** b. */
  pow: Empty;
  /** Elementwise maximum. */
  maximum: Empty;
  /** Elementwise minimum. */
  minimum: Empty;
  /** Elementwise comparison `op`, giving bool. */
  compare: { readonly op: CmpOp };
  /** `cond ? a : b` elementwise (cond is bool). */
  where: Empty;
  /** Conversion to `dtype`. */
  cast: { readonly dtype: DType };
  /** Sum over `axes`. */
  sum: { readonly axes: readonly number[]; readonly keepdims: boolean };
  /** Maximum over `axes`. */
  max: { readonly axes: readonly number[]; readonly keepdims: boolean };
  /** Index (i32) of the maximum along `axis`. */
  argmax: { readonly axis: number; readonly keepdims: boolean };
  /** Cumulative sum along `axis`. */
  cumsum: { readonly axis: number; readonly reverse: boolean };
  /** Cumulative product along `axis`. */
  cumprod: { readonly axis: number; readonly reverse: boolean };
  /** Batched matmul `[B,M,K] x [B,K,N] -> [B,M,N]`. */
  dot: Empty;
  /** Grouped conv `x[N,G,Ci,H,W] * w[G,Co,Ci,KH,KW] -> [N,G,Co,OH,OW]`. */
  conv: ConvParams;
  /** `take` along `axis` with i32 indices: shape `x[:axis] + idx + x[axis+1:]`. */
  gather: { readonly axis: number };
  /** Transpose of gather: sums `updates` into a zero tensor whose `axis` has `size`. */
  scatterAdd: { readonly axis: number; readonly size: number };
  /** Reshape to `shape` (a view when strides allow). */
  reshape: { readonly shape: readonly number[] };
  /** Axis permutation `perm` (a view). */
  transpose: { readonly perm: readonly number[] };
  /** Broadcast to `shape` (a view, stride 0 on new axes). */
  broadcast: { readonly shape: readonly number[] };
  /** Strided slice `[starts, ends)` by `steps` (a view). */
  slice: { readonly starts: readonly number[]; readonly ends: readonly number[]; readonly steps: readonly number[] };
  /** Per axis `[lo, hi, interior]`, all >= 0, filled with zeros. */
  pad: { readonly widths: readonly (readonly [number, number, number])[] };
  /** Reverse along `axes` (a view). */
  flip: { readonly axes: readonly number[] };
  /** Concatenation along `axis`. */
  concat: { readonly axis: number };
  /** Counter-based threefry2x32 bits (u32) or uniforms in [0, 1). */
  random: {
    readonly key: readonly [number, number];
    readonly shape: readonly number[];
    readonly dtype: DType;
    readonly dist: "bits" | "uniform";
  };
}

/** Name of a primitive. */
export type Prim = keyof ParamsOf;

/** A shape/dtype rule: checks the operands and returns the outputs' avals. */
export type ShapeRule<P extends Prim> = (inputs: readonly Aval[], params: ParamsOf[P]) => Aval[];

const UNARY_FLOAT = [
  "exp",
  "log",
  "sin",
  "cos",
  "tanh",
  "sqrt",
  "rsqrt",
  "erf",
  "sigmoid",
  "log1p",
  "expm1",
  "gelu",
  "geluTanh",
  "geluGrad",
  "geluTanhGrad",
] as const;
const UNARY_ANY = ["neg", "abs", "sign", "floor"] as const;
const BINARY = ["add", "sub", "mul", "div", "pow", "maximum", "minimum"] as const;

/** Elementwise primitives (unary and binary), used by fusion and tests. */
export const ELEMENTWISE_UNARY: readonly Prim[] = [...UNARY_FLOAT, ...UNARY_ANY];
/** Binary elementwise primitives. */
export const ELEMENTWISE_BINARY: readonly Prim[] = BINARY;

function arity(p: string, inputs: readonly Aval[], n: number) {
  if (inputs.length !== n) throw new ShapeError(`${p}: expected ${n} operand(s), got ${inputs.length}`);
}

function sameShapes(p: string, a: Aval, b: Aval) {
  if (!shapeEq(a.shape, b.shape)) {
    throw new ShapeError(`${p}: operand shapes ${fmtShape(a.shape)} and ${fmtShape(b.shape)} differ`);
  }
}

function sameDtypes(p: string, a: Aval, b: Aval) {
  if (a.dtype !== b.dtype) throw new DTypeError(`${p}: operand dtypes ${a.dtype} and ${b.dtype} differ`);
}

/** A float operand of rank >= 1 whose last axis is processed row by row (softmax, layerNorm). */
function rowFloat(p: string, ins: readonly Aval[]): Aval[] {
  arity(p, ins, 1);
  if (!isFloat(ins[0].dtype)) throw new DTypeError(`${p}: needs a floating-point operand, got ${ins[0].dtype}`);
  if (ins[0].shape.length === 0) throw new ShapeError(`${p}: needs at least one axis, got a scalar`);
  return [{ shape: ins[0].shape, dtype: ins[0].dtype }];
}

function unaryFloat(p: string): ShapeRule<Prim> {
  return (ins) => {
    arity(p, ins, 1);
    if (!isFloat(ins[0].dtype)) {
      throw new DTypeError(`${p}: needs a floating-point operand, got ${ins[0].dtype}`);
    }
    return [{ shape: ins[0].shape, dtype: ins[0].dtype }];
  };
}

function unaryNumeric(p: string): ShapeRule<Prim> {
  return (ins) => {
    arity(p, ins, 1);
    if (ins[0].dtype === "bool") throw new DTypeError(`${p}: does not accept bool operands`);
    return [{ shape: ins[0].shape, dtype: ins[0].dtype }];
  };
}

function binary(p: string): ShapeRule<Prim> {
  return (ins) => {
    arity(p, ins, 2);
    sameShapes(p, ins[0], ins[1]);
    sameDtypes(p, ins[0], ins[1]);
    if (ins[0].dtype === "bool") throw new DTypeError(`${p}: does not accept bool operands`);
    if (p === "pow" && !isFloat(ins[0].dtype)) {
      throw new DTypeError(`pow: needs floating-point operands, got ${ins[0].dtype}`);
    }
    return [{ shape: ins[0].shape, dtype: ins[0].dtype }];
  };
}

function checkAxesList(p: string, axes: readonly number[], rank: number) {
  for (const a of axes) {
    if (!Number.isInteger(a) || a < 0 || a >= rank) {
      throw new ShapeError(`${p}: axis ${a} is out of range for a tensor of rank ${rank}`);
    }
  }
}

function reduceShape(shape: Shape, axes: readonly number[], keepdims: boolean): number[] {
  const out: number[] = [];
  shape.forEach((d, i) => {
    if (axes.includes(i)) {
      if (keepdims) out.push(1);
    } else out.push(d);
  });
  return out;
}

/** Output spatial size of the general conv (dilations, stride, signed padding). */
export function convOutSize(n: number, k: number, stride: number, lo: number, hi: number, ld: number, rd: number) {
  const nd = n === 0 ? 0 : (n - 1) * ld + 1;
  const kd = k === 0 ? 0 : (k - 1) * rd + 1;
  return Math.floor((nd + lo + hi - kd) / stride) + 1;
}

/** The shape/dtype rule of every primitive. */
export const shapeRules: { [P in Prim]: ShapeRule<P> } = {
  neg: unaryNumeric("neg"),
  abs: unaryNumeric("abs"),
  sign: unaryNumeric("sign"),
  floor: unaryNumeric("floor"),
  exp: unaryFloat("exp"),
  log: unaryFloat("log"),
  sin: unaryFloat("sin"),
  cos: unaryFloat("cos"),
  tanh: unaryFloat("tanh"),
  sqrt: unaryFloat("sqrt"),
  rsqrt: unaryFloat("rsqrt"),
  erf: unaryFloat("erf"),
  sigmoid: unaryFloat("sigmoid"),
  log1p: unaryFloat("log1p"),
  expm1: unaryFloat("expm1"),
  gelu: unaryFloat("gelu"),
  geluTanh: unaryFloat("geluTanh"),
  geluGrad: unaryFloat("geluGrad"),
  geluTanhGrad: unaryFloat("geluTanhGrad"),
  layerNorm: (ins, p) => {
    if (!(typeof p.eps === "number" && p.eps >= 0)) {
      throw new DifflabError(`layerNorm: eps must be a number >= 0, got ${p.eps}`);
    }
    return rowFloat("layerNorm", ins);
  },
  adamw: (ins) => {
    arity("adamw", ins, 4);
    if (!isFloat(ins[0].dtype)) throw new DTypeError(`adamw: needs floating-point parameters, got ${ins[0].dtype}`);
    for (let i = 1; i < 4; i++) {
      sameShapes("adamw", ins[0], ins[i]);
      sameDtypes("adamw", ins[0], ins[i]);
    }
    const a = { shape: ins[0].shape, dtype: ins[0].dtype };
    return [a, a, a];
  },
  softmax: (ins) => rowFloat("softmax", ins),
  add: binary("add"),
  sub: binary("sub"),
  mul: binary("mul"),
  div: binary("div"),
  pow: binary("pow"),
  maximum: binary("maximum"),
  minimum: binary("minimum"),
  compare: (ins, p) => {
    arity("compare", ins, 2);
    sameShapes(`compare(${p.op})`, ins[0], ins[1]);
    sameDtypes(`compare(${p.op})`, ins[0], ins[1]);
    return [{ shape: ins[0].shape, dtype: "bool" }];
  },
  where: (ins) => {
    arity("where", ins, 3);
    if (ins[0].dtype !== "bool") throw new DTypeError(`where: condition must be bool, got ${ins[0].dtype}`);
    sameShapes("where", ins[0], ins[1]);
    sameShapes("where", ins[1], ins[2]);
    sameDtypes("where", ins[1], ins[2]);
    return [{ shape: ins[1].shape, dtype: ins[1].dtype }];
  },
  cast: (ins, p) => {
    arity("cast", ins, 1);
    return [{ shape: ins[0].shape, dtype: p.dtype }];
  },
  sum: (ins, p) => {
    arity("sum", ins, 1);
    checkAxesList("sum", p.axes, ins[0].shape.length);
    if (ins[0].dtype === "bool") throw new DTypeError("sum: does not accept bool operands; cast first");
    return [{ shape: reduceShape(ins[0].shape, p.axes, p.keepdims), dtype: ins[0].dtype }];
  },
  max: (ins, p) => {
    arity("max", ins, 1);
    checkAxesList("max", p.axes, ins[0].shape.length);
    if (ins[0].dtype === "bool") throw new DTypeError("max: does not accept bool operands; cast first");
    for (const a of p.axes) {
      if (ins[0].shape[a] === 0) throw new ShapeError(`max: cannot reduce over axis ${a} of size 0`);
    }
    return [{ shape: reduceShape(ins[0].shape, p.axes, p.keepdims), dtype: ins[0].dtype }];
  },
  argmax: (ins, p) => {
    arity("argmax", ins, 1);
    checkAxesList("argmax", [p.axis], ins[0].shape.length);
    if (ins[0].shape[p.axis] === 0) throw new ShapeError(`argmax: cannot reduce over axis ${p.axis} of size 0`);
    return [{ shape: reduceShape(ins[0].shape, [p.axis], p.keepdims), dtype: "i32" }];
  },
  cumsum: (ins, p) => {
    arity("cumsum", ins, 1);
    checkAxesList("cumsum", [p.axis], ins[0].shape.length);
    if (ins[0].dtype === "bool") throw new DTypeError("cumsum: does not accept bool operands");
    return [{ shape: ins[0].shape, dtype: ins[0].dtype }];
  },
  cumprod: (ins, p) => {
    arity("cumprod", ins, 1);
    checkAxesList("cumprod", [p.axis], ins[0].shape.length);
    if (ins[0].dtype === "bool") throw new DTypeError("cumprod: does not accept bool operands");
    return [{ shape: ins[0].shape, dtype: ins[0].dtype }];
  },
  dot: (ins) => {
    arity("dot", ins, 2);
    const [a, b] = ins;
    if (a.shape.length !== 3 || b.shape.length !== 3 || a.shape[0] !== b.shape[0] || a.shape[2] !== b.shape[1]) {
      throw new ShapeError(`dot: expected [B,M,K] x [B,K,N], got ${fmtShape(a.shape)} x ${fmtShape(b.shape)}`);
    }
    sameDtypes("dot", a, b);
    if (a.dtype === "bool") throw new DTypeError("dot: does not accept bool operands");
    return [{ shape: [a.shape[0], a.shape[1], b.shape[2]], dtype: a.dtype }];
  },
  conv: (ins, p) => {
    arity("conv", ins, 2);
    const [x, w] = ins;
    if (x.shape.length !== 5 || w.shape.length !== 5 || x.shape[1] !== w.shape[0] || x.shape[2] !== w.shape[2]) {
      throw new ShapeError(
        `conv: expected x[N,G,Ci,H,W] and w[G,Co,Ci,KH,KW], got ${fmtShape(x.shape)} and ${fmtShape(w.shape)}`,
      );
    }
    sameDtypes("conv", x, w);
    if (!isFloat(x.dtype)) throw new DTypeError(`conv: needs floating-point operands, got ${x.dtype}`);
    for (const v of [...p.stride, ...p.lhsDilation, ...p.rhsDilation]) {
      if (!Number.isInteger(v) || v < 1) {
        throw new ShapeError(`conv: stride and dilations must be positive integers, got ${JSON.stringify(p)}`);
      }
    }
    const oh = convOutSize(
      x.shape[3],
      w.shape[3],
      p.stride[0],
      p.padding[0][0],
      p.padding[0][1],
      p.lhsDilation[0],
      p.rhsDilation[0],
    );
    const ow = convOutSize(
      x.shape[4],
      w.shape[4],
      p.stride[1],
      p.padding[1][0],
      p.padding[1][1],
      p.lhsDilation[1],
      p.rhsDilation[1],
    );
    if (oh < 0 || ow < 0 || !Number.isFinite(oh) || !Number.isFinite(ow)) {
      throw new ShapeError(
        `conv: kernel ${fmtShape(w.shape.slice(3))} does not fit input ${fmtShape(x.shape.slice(3))} with padding ${
          JSON.stringify(p.padding)
        }`,
      );
    }
    return [{ shape: [x.shape[0], x.shape[1], w.shape[1], Math.max(oh, 0), Math.max(ow, 0)], dtype: x.dtype }];
  },
  gather: (ins, p) => {
    arity("gather", ins, 2);
    const [x, idx] = ins;
    checkAxesList("gather", [p.axis], x.shape.length);
    if (idx.dtype !== "i32") throw new DTypeError(`gather: indices must be i32, got ${idx.dtype}`);
    return [{ shape: [...x.shape.slice(0, p.axis), ...idx.shape, ...x.shape.slice(p.axis + 1)], dtype: x.dtype }];
  },
  scatterAdd: (ins, p) => {
    arity("scatterAdd", ins, 2);
    const [u, idx] = ins;
    if (idx.dtype !== "i32") throw new DTypeError(`scatterAdd: indices must be i32, got ${idx.dtype}`);
    const r = u.shape.length - idx.shape.length + 1;
    if (p.axis < 0 || p.axis >= r || !shapeEq(u.shape.slice(p.axis, p.axis + idx.shape.length), idx.shape)) {
      throw new ShapeError(
        `scatterAdd: updates ${fmtShape(u.shape)} do not contain indices ${fmtShape(idx.shape)} at axis ${p.axis}`,
      );
    }
    return [{
      shape: [...u.shape.slice(0, p.axis), p.size, ...u.shape.slice(p.axis + idx.shape.length)],
      dtype: u.dtype,
    }];
  },
  reshape: (ins, p) => {
    arity("reshape", ins, 1);
    if (size(p.shape) !== size(ins[0].shape)) {
      throw new ShapeError(`reshape: cannot reshape ${fmtShape(ins[0].shape)} into ${fmtShape(p.shape)}`);
    }
    return [{ shape: p.shape, dtype: ins[0].dtype }];
  },
  transpose: (ins, p) => {
    arity("transpose", ins, 1);
    const r = ins[0].shape.length;
    const sorted = [...p.perm].sort((a, b) => a - b);
    if (p.perm.length !== r || !sorted.every((v, i) => v === i)) {
      throw new ShapeError(`transpose: ${JSON.stringify(p.perm)} is not a permutation of ${r} axes`);
    }
    return [{ shape: p.perm.map((a) => ins[0].shape[a]), dtype: ins[0].dtype }];
  },
  broadcast: (ins, p) => {
    arity("broadcast", ins, 1);
    const s = ins[0].shape;
    const off = p.shape.length - s.length;
    if (off < 0 || s.some((d, i) => d !== 1 && d !== p.shape[off + i])) {
      throw new ShapeError(`broadcastTo: cannot broadcast ${fmtShape(s)} to ${fmtShape(p.shape)}`);
    }
    return [{ shape: p.shape, dtype: ins[0].dtype }];
  },
  slice: (ins, p) => {
    arity("slice", ins, 1);
    const s = ins[0].shape;
    if (p.starts.length !== s.length || p.ends.length !== s.length || p.steps.length !== s.length) {
      throw new ShapeError(`slice: starts/ends/steps must have one entry per axis of ${fmtShape(s)}`);
    }
    const out = s.map((d, i) => {
      const [b, e, st] = [p.starts[i], p.ends[i], p.steps[i]];
      if (!(st >= 1) || b < 0 || e > d || b > e) {
        throw new ShapeError(`slice: axis ${i} range [${b}:${e}:${st}] is invalid for size ${d}`);
      }
      return Math.ceil((e - b) / st);
    });
    return [{ shape: out, dtype: ins[0].dtype }];
  },
  pad: (ins, p) => {
    arity("pad", ins, 1);
    const s = ins[0].shape;
    if (p.widths.length !== s.length || p.widths.some((w) => w.some((v) => !Number.isInteger(v) || v < 0))) {
      throw new ShapeError(
        `pad: widths ${JSON.stringify(p.widths)} must be non-negative [lo,hi,interior] per axis of ${fmtShape(s)}`,
      );
    }
    return [{
      shape: s.map((d, i) => (d === 0 ? 0 : d + (d - 1) * p.widths[i][2]) + p.widths[i][0] + p.widths[i][1]),
      dtype: ins[0].dtype,
    }];
  },
  flip: (ins, p) => {
    arity("flip", ins, 1);
    checkAxesList("flip", p.axes, ins[0].shape.length);
    return [{ shape: ins[0].shape, dtype: ins[0].dtype }];
  },
  concat: (ins, p) => {
    if (ins.length < 1) throw new ShapeError("concat: needs at least one tensor");
    const r = ins[0].shape.length;
    checkAxesList("concat", [p.axis], r);
    let total = 0;
    for (const a of ins) {
      if (a.dtype !== ins[0].dtype) throw new DTypeError(`concat: dtypes ${ins[0].dtype} and ${a.dtype} differ`);
      if (a.shape.length !== r || a.shape.some((d, i) => i !== p.axis && d !== ins[0].shape[i])) {
        throw new ShapeError(
          `concat: shapes ${ins.map((x) => fmtShape(x.shape)).join(", ")} differ outside axis ${p.axis}`,
        );
      }
      total += a.shape[p.axis];
    }
    const shape = ins[0].shape.slice();
    shape[p.axis] = total;
    return [{ shape, dtype: ins[0].dtype }];
  },
  random: (ins, p) => {
    arity("random", ins, 0);
    if (p.dist === "bits" && p.dtype !== "u32") throw new DTypeError(`random bits must be u32, got ${p.dtype}`);
    if (p.dist === "uniform" && !isFloat(p.dtype)) {
      throw new DTypeError(`random.uniform: needs a floating-point dtype, got ${p.dtype}`);
    }
    return [{ shape: p.shape, dtype: p.dtype }];
  },
};

/** Every primitive name, from the registry itself. */
export const PRIMS = Object.keys(shapeRules) as Prim[];
