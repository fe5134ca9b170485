/**
 * @file The `cpu` backend: plain TypeScript, f64-capable, written to be
 * obviously correct rather than fast. It is the oracle every other backend is
 * tested against. Movement primitives return strided views over shared,
 * reference-counted storage; compute kernels first gather their operands into
 * row-major arrays so each kernel is a plain loop over contiguous data.
 */
import { allocHost, type DType, isFloat, type TypedArray } from "./dtype.ts";
import { DifflabError, fmtShape, ShapeError } from "./errors.ts";
import type { Backend, Handle } from "./backend.ts";
import type { Aval, ConvParams, ParamsOf, Prim } from "./prims.ts";
import { size, stridesOf } from "./shape.ts";
import { bitsToUnitF32, threefryBits } from "./threefry.ts";

interface Storage {
  data: TypedArray;
  refs: number;
}

/** A strided view onto shared storage. */
interface CpuHandle {
  readonly buf: Storage;
  readonly shape: readonly number[];
  readonly strides: readonly number[];
  readonly offset: number;
}

let live = 0;

function newStorage(data: TypedArray): Storage {
  live++;
  return { data, refs: 1 };
}

function fresh(data: TypedArray, shape: readonly number[]): CpuHandle {
  return { buf: newStorage(data), shape, strides: stridesOf(shape), offset: 0 };
}

function isContiguous(h: CpuHandle): boolean {
  const s = stridesOf(h.shape);
  return h.shape.every((d, i) => d === 1 || s[i] === h.strides[i]);
}

/** Gathers a view into a row-major array (the storage itself when already laid out so). */
function contig(h: CpuHandle): TypedArray {
  const n = size(h.shape);
  if (isContiguous(h)) {
    if (h.offset === 0 && h.buf.data.length === n) return h.buf.data;
    return h.buf.data.subarray(h.offset, h.offset + n) as TypedArray;
  }
  const src = h.buf.data;
  const out = allocHost(dtypeOfArray(src), n);
  const r = h.shape.length;
  const idx = new Array<number>(r).fill(0);
  let p = h.offset;
  for (let i = 0; i < n; i++) {
    out[i] = src[p];
    for (let a = r - 1; a >= 0; a--) {
      idx[a]++;
      p += h.strides[a];
      if (idx[a] < h.shape[a]) break;
      p -= h.strides[a] * h.shape[a];
      idx[a] = 0;
    }
  }
  return out;
}

function dtypeOfArray(a: TypedArray): DType {
  if (a instanceof Float32Array) return "f32";
  if (a instanceof Float64Array) return "f64";
  if (a instanceof Int32Array) return "i32";
  if (a instanceof Uint32Array) return "u32";
  if (a instanceof Uint8Array) return "bool";
  return "f16";
}

function view(h: CpuHandle, shape: readonly number[], strides: readonly number[], offset: number): CpuHandle {
  h.buf.refs++;
  return { buf: h.buf, shape, strides, offset };
}

/** Accurate erf (a few ulp) from the all-positive series; |x| >= 6 saturates. */
export function erf(x: number): number {
  if (Number.isNaN(x)) return NaN;
  const ax = Math.abs(x);
  if (ax >= 6) return Math.sign(x);
  const x2 = ax * ax;
  let term = ax;
  let s = ax;
  for (let n = 1; n < 200; n++) {
    term *= (2 * x2) / (2 * n + 1);
    s += term;
    if (term < 1e-17 * s) break;
  }
  const r = (2 / Math.sqrt(Math.PI)) * Math.exp(-x2) * s;
  return x < 0 ? -r : r;
}

/** Exact GELU x·Φ(x) = 0.5·x·(1 + erf(x/√2)). */
export function gelu(x: number): number {
  return 0.5 * x * (1 + erf(x * Math.SQRT1_2));
}

/** Tanh GELU 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))). */
export function geluTanh(x: number): number {
  return 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)));
}

/** d/dx x·Φ(x) = Φ(x) + x·φ(x). */
export function geluGrad(x: number): number {
  return 0.5 * (1 + erf(x * Math.SQRT1_2)) + x * Math.exp(-0.5 * x * x) / Math.sqrt(2 * Math.PI);
}

/**
 * d/dx of the tanh GELU, 0.5·(1 + t) + 0.5·x·(1 − t²)·u' with t = tanh(u), u = c·(x + a·x³),
 * written as σ + 2x·σ·(1 − σ)·u' with σ = sigmoid(2u) so neither tail cancels (the f32
 * kernels use the same form). Past |x| = 10 it is 0 or 1 to working precision.
 */
export function geluTanhGrad(x0: number): number {
  if (Number.isNaN(x0)) return NaN;
  const c = Math.sqrt(2 / Math.PI), a = 0.044715;
  const x = Math.min(10, Math.max(-10, x0));
  const u = c * (x + a * x * x * x);
  const e = Math.exp(-2 * Math.abs(u)), r = 1 / (1 + e);
  const [sp, sn] = u >= 0 ? [r, e * r] : [e * r, r];
  return sp + 2 * x * sp * sn * c * (1 + 3 * a * x * x);
}

type Unary = (x: number) => number;
const UNARY: Record<string, Unary> = {
  neg: (x) => -x,
  exp: Math.exp,
  log: Math.log,
  sin: Math.sin,
  cos: Math.cos,
  tanh: Math.tanh,
  sqrt: Math.sqrt,
  rsqrt: (x) => 1 / Math.sqrt(x),
  abs: Math.abs,
  sign: (x) => (x > 0 ? 1 : x < 0 ? -1 : x),
  erf,
  floor: Math.floor,
  sigmoid: (x) => (x >= 0 ? 1 / (1 + Math.exp(-x)) : Math.exp(x) / (1 + Math.exp(x))),
  log1p: Math.log1p,
  expm1: Math.expm1,
  gelu,
  geluTanh,
  geluGrad,
  geluTanhGrad,
};

type Binary = (a: number, b: number) => number;
const BINARY: Record<string, Binary> = {
  add: (a, b) => a + b,
  sub: (a, b) => a - b,
  mul: (a, b) => a * b,
  div: (a, b) => a / b,
  pow: Math.pow,
  maximum: (a, b) => (Number.isNaN(a) || Number.isNaN(b) ? NaN : Math.max(a, b)),
  minimum: (a, b) => (Number.isNaN(a) || Number.isNaN(b) ? NaN : Math.min(a, b)),
};

const INT_BINARY: Record<string, Binary> = {
  ...BINARY,
  mul: (a, b) => Math.imul(a, b),
  div: (a, b) => (b === 0 ? 0 : Math.trunc(a / b)),
};

const CMP: Record<ParamsOf["compare"]["op"], (a: number, b: number) => boolean> = {
  lt: (a, b) => a < b,
  le: (a, b) => a <= b,
  gt: (a, b) => a > b,
  ge: (a, b) => a >= b,
  eq: (a, b) => a === b,
  ne: (a, b) => a !== b,
};

type Kernel<P extends Prim> = (
  ins: CpuHandle[],
  inAvals: readonly Aval[],
  p: ParamsOf[P],
  out: readonly Aval[],
) => CpuHandle[];

function unaryK(name: string): Kernel<Prim> {
  const f = UNARY[name];
  return (ins, _a, _p, out) => {
    const x = contig(ins[0]);
    const y = allocHost(out[0].dtype, x.length);
    for (let i = 0; i < x.length; i++) y[i] = f(x[i]);
    return [fresh(y, out[0].shape)];
  };
}

function binaryK(name: string): Kernel<Prim> {
  return (ins, inAvals, _p, out) => {
    const f = isFloat(inAvals[0].dtype) ? BINARY[name] : INT_BINARY[name];
    const a = contig(ins[0]), b = contig(ins[1]);
    const y = allocHost(out[0].dtype, a.length);
    for (let i = 0; i < a.length; i++) y[i] = f(a[i], b[i]);
    return [fresh(y, out[0].shape)];
  };
}

/** Splits a shape around one axis into [outer, n, inner]. */
function around(shape: readonly number[], axis: number): [number, number, number] {
  return [size(shape.slice(0, axis)), shape[axis], size(shape.slice(axis + 1))];
}

function reduceK(init: number, f: (acc: number, v: number) => number): Kernel<"sum" | "max"> {
  return (ins, inAvals, p, out) => {
    const x = contig(ins[0]);
    const shape = inAvals[0].shape;
    const r = shape.length;
    // Output strides in the input's index space; reduced axes get stride 0.
    const keep = shape.map((d, i) => (p.axes.includes(i) ? 1 : d));
    const ks = stridesOf(keep);
    const os = shape.map((_, i) => (p.axes.includes(i) ? 0 : ks[i]));
    const acc = new Float64Array(size(keep)).fill(init);
    const idx = new Array<number>(r).fill(0);
    let o = 0;
    for (let i = 0; i < x.length; i++) {
      acc[o] = f(acc[o], x[i]);
      for (let a = r - 1; a >= 0; a--) {
        idx[a]++;
        o += os[a];
        if (idx[a] < shape[a]) break;
        o -= os[a] * shape[a];
        idx[a] = 0;
      }
    }
    const y = allocHost(out[0].dtype, acc.length);
    for (let i = 0; i < acc.length; i++) y[i] = acc[i];
    return [fresh(y, out[0].shape)];
  };
}

function cumK(mul: boolean): Kernel<"cumsum" | "cumprod"> {
  return (ins, inAvals, p, out) => {
    const x = contig(ins[0]);
    const [outer, n, inner] = around(inAvals[0].shape, p.axis);
    const y = allocHost(out[0].dtype, x.length);
    for (let o = 0; o < outer; o++) {
      for (let j = 0; j < inner; j++) {
        let acc = mul ? 1 : 0;
        for (let k = 0; k < n; k++) {
          const kk = p.reverse ? n - 1 - k : k;
          const i = (o * n + kk) * inner + j;
          acc = mul ? acc * x[i] : acc + x[i];
          y[i] = acc;
        }
      }
    }
    return [fresh(y, out[0].shape)];
  };
}

function convK(ins: CpuHandle[], inAvals: readonly Aval[], p: ConvParams, out: readonly Aval[]): CpuHandle[] {
  const x = contig(ins[0]), w = contig(ins[1]);
  const [N, G, Ci, H, W] = inAvals[0].shape;
  const [, Co, , KH, KW] = inAvals[1].shape;
  const [, , , OH, OW] = out[0].shape;
  const [sh, sw] = p.stride;
  const [dh, dw] = p.lhsDilation;
  const [rh, rw] = p.rhsDilation;
  const [pt, pl] = [p.padding[0][0], p.padding[1][0]];
  const y = allocHost(out[0].dtype, size(out[0].shape));
  let o = 0;
  for (let n = 0; n < N; n++) {
    for (let g = 0; g < G; g++) {
      for (let co = 0; co < Co; co++) {
        for (let oy = 0; oy < OH; oy++) {
          for (let ox = 0; ox < OW; ox++) {
            let acc = 0;
            for (let ci = 0; ci < Ci; ci++) {
              const xb = ((n * G + g) * Ci + ci) * H;
              const wb = ((g * Co + co) * Ci + ci) * KH;
              for (let ky = 0; ky < KH; ky++) {
                const py = oy * sh + ky * rh - pt;
                if (py < 0 || py % dh !== 0) continue;
                const iy = py / dh;
                if (iy >= H) continue;
                for (let kx = 0; kx < KW; kx++) {
                  const px = ox * sw + kx * rw - pl;
                  if (px < 0 || px % dw !== 0) continue;
                  const ix = px / dw;
                  if (ix >= W) continue;
                  acc += x[(xb + iy) * W + ix] * w[(wb + ky) * KW + kx];
                }
              }
            }
            y[o++] = acc;
          }
        }
      }
    }
  }
  return [fresh(y, out[0].shape)];
}

function checkIndex(op: string, v: number, n: number) {
  if (!(v >= 0 && v < n)) throw new ShapeError(`${op}: index ${v} is out of range for an axis of size ${n}`);
}

const kernels: { [P in Prim]: Kernel<P> } = {
  neg: unaryK("neg"),
  exp: unaryK("exp"),
  log: unaryK("log"),
  sin: unaryK("sin"),
  cos: unaryK("cos"),
  tanh: unaryK("tanh"),
  sqrt: unaryK("sqrt"),
  rsqrt: unaryK("rsqrt"),
  abs: unaryK("abs"),
  sign: unaryK("sign"),
  erf: unaryK("erf"),
  floor: unaryK("floor"),
  sigmoid: unaryK("sigmoid"),
  log1p: unaryK("log1p"),
  expm1: unaryK("expm1"),
  gelu: unaryK("gelu"),
  geluTanh: unaryK("geluTanh"),
  geluGrad: unaryK("geluGrad"),
  geluTanhGrad: unaryK("geluTanhGrad"),
  layerNorm: (ins, _a, p, out) => {
    const x = contig(ins[0]);
    const shape = out[0].shape, R = shape[shape.length - 1];
    const y = allocHost(out[0].dtype, x.length);
    for (let o = 0; o < x.length; o += R) {
      let s = 0;
      for (let j = 0; j < R; j++) s += x[o + j];
      const mean = s / R;
      let v = 0;
      for (let j = 0; j < R; j++) v += (x[o + j] - mean) ** 2;
      const r = 1 / Math.sqrt(v / R + p.eps);
      for (let j = 0; j < R; j++) y[o + j] = (x[o + j] - mean) * r;
    }
    return [fresh(y, shape)];
  },
  adamw: (ins, _a, q, out) => {
    const [p, g, m, v] = ins.map(contig);
    const dt = out[0].dtype, n = p.length;
    const po = allocHost(dt, n), mo = allocHost(dt, n), vo = allocHost(dt, n);
    // Each step rounds to the dtype like the composite of primitives it replaces.
    const r = dt === "f32" ? Math.fround : dt === "f16" ? Math.f16round : (x: number) => x;
    for (let i = 0; i < n; i++) {
      const m1 = r(r(m[i] * q.b1) + r(g[i] * q.c1));
      const v1 = r(r(v[i] * q.b2) + r(r(g[i] * g[i]) * q.c2));
      const den = r(r(r(Math.sqrt(v1)) / q.bc2) + q.eps);
      po[i] = r(p[i] * q.decay) + r(r(m1 / den) * q.negStep);
      mo[i] = m1;
      vo[i] = v1;
    }
    const s = out[0].shape;
    return [fresh(po, s), fresh(mo, s), fresh(vo, s)];
  },
  softmax: (ins, _a, _p, out) => {
    const x = contig(ins[0]);
    const shape = out[0].shape, R = shape[shape.length - 1];
    const y = allocHost(out[0].dtype, x.length);
    // A row of -inf (everything masked) gives NaN, as torch does.
    for (let o = 0; o < x.length; o += R) {
      let m = -Infinity;
      for (let j = 0; j < R; j++) m = Number.isNaN(m) || Number.isNaN(x[o + j]) ? NaN : Math.max(m, x[o + j]);
      let s = 0;
      for (let j = 0; j < R; j++) s += Math.exp(x[o + j] - m);
      for (let j = 0; j < R; j++) y[o + j] = Math.exp(x[o + j] - m) / s;
    }
    return [fresh(y, shape)];
  },
  add: binaryK("add"),
  sub: binaryK("sub"),
  mul: binaryK("mul"),
  div: binaryK("div"),
  pow: binaryK("pow"),
  maximum: binaryK("maximum"),
  minimum: binaryK("minimum"),
  compare: (ins, _a, p, out) => {
    const f = CMP[p.op];
    const a = contig(ins[0]), b = contig(ins[1]);
    const y = allocHost("bool", a.length);
    for (let i = 0; i < a.length; i++) y[i] = f(a[i], b[i]) ? 1 : 0;
    return [fresh(y, out[0].shape)];
  },
  where: (ins, _a, _p, out) => {
    const c = contig(ins[0]), a = contig(ins[1]), b = contig(ins[2]);
    const y = allocHost(out[0].dtype, a.length);
    for (let i = 0; i < a.length; i++) y[i] = c[i] ? a[i] : b[i];
    return [fresh(y, out[0].shape)];
  },
  cast: (ins, _a, p, out) => {
    const x = contig(ins[0]);
    const y = allocHost(p.dtype, x.length);
    if (p.dtype === "bool") { for (let i = 0; i < x.length; i++) y[i] = x[i] !== 0 ? 1 : 0; }
    else if (p.dtype === "i32" || p.dtype === "u32") {
      // Truncate toward zero as C casts do; NaN becomes 0.
      for (let i = 0; i < x.length; i++) y[i] = Number.isFinite(x[i]) ? Math.trunc(x[i]) : 0;
    } else for (let i = 0; i < x.length; i++) y[i] = x[i];
    return [fresh(y, out[0].shape)];
  },
  sum: reduceK(0, (a, v) => a + v),
  max: reduceK(-Infinity, (a, v) => (Number.isNaN(a) || Number.isNaN(v) ? NaN : a > v ? a : v)),
  argmax: (ins, inAvals, p, out) => {
    const x = contig(ins[0]);
    const [outer, n, inner] = around(inAvals[0].shape, p.axis);
    const y = new Int32Array(outer * inner);
    for (let o = 0; o < outer; o++) {
      for (let j = 0; j < inner; j++) {
        let best = 0;
        let bv = x[o * n * inner + j];
        for (let k = 1; k < n && !Number.isNaN(bv); k++) {
          const v = x[(o * n + k) * inner + j];
          if (v > bv || Number.isNaN(v)) {
            bv = v;
            best = k;
          }
        }
        y[o * inner + j] = best;
      }
    }
    return [fresh(y, out[0].shape)];
  },
  cumsum: cumK(false),
  cumprod: cumK(true),
  dot: (ins, inAvals, _p, out) => {
    const a = contig(ins[0]), b = contig(ins[1]);
    const [B, M, K] = inAvals[0].shape;
    const N = inAvals[1].shape[2];
    const y = allocHost(out[0].dtype, B * M * N);
    const row = new Float64Array(N);
    for (let bb = 0; bb < B; bb++) {
      for (let i = 0; i < M; i++) {
        row.fill(0);
        for (let k = 0; k < K; k++) {
          const av = a[(bb * M + i) * K + k];
          const bo = (bb * K + k) * N;
          for (let j = 0; j < N; j++) row[j] += av * b[bo + j];
        }
        y.set(row, (bb * M + i) * N);
      }
    }
    return [fresh(y, out[0].shape)];
  },
  conv: convK,
  gather: (ins, inAvals, p, out) => {
    const x = contig(ins[0]), idx = contig(ins[1]);
    const [outer, n, inner] = around(inAvals[0].shape, p.axis);
    const m = idx.length;
    const y = allocHost(out[0].dtype, outer * m * inner);
    for (let k = 0; k < m; k++) checkIndex("gather", idx[k], n);
    for (let o = 0; o < outer; o++) {
      for (let k = 0; k < m; k++) {
        const src = (o * n + idx[k]) * inner, dst = (o * m + k) * inner;
        for (let j = 0; j < inner; j++) y[dst + j] = x[src + j];
      }
    }
    return [fresh(y, out[0].shape)];
  },
  scatterAdd: (ins, inAvals, p, out) => {
    const u = contig(ins[0]), idx = contig(ins[1]);
    const m = idx.length;
    const outer = size(inAvals[0].shape.slice(0, p.axis));
    const inner = size(inAvals[0].shape.slice(p.axis + inAvals[1].shape.length));
    const n = p.size;
    const acc = new Float64Array(outer * n * inner);
    for (let k = 0; k < m; k++) checkIndex("scatterAdd", idx[k], n);
    for (let o = 0; o < outer; o++) {
      for (let k = 0; k < m; k++) {
        const src = (o * m + k) * inner, dst = (o * n + idx[k]) * inner;
        for (let j = 0; j < inner; j++) acc[dst + j] += u[src + j];
      }
    }
    const y = allocHost(out[0].dtype, acc.length);
    for (let i = 0; i < acc.length; i++) y[i] = acc[i];
    return [fresh(y, out[0].shape)];
  },
  reshape: (ins, _a, p) => {
    const h = ins[0];
    if (isContiguous(h)) return [view(h, p.shape, stridesOf(p.shape), h.offset)];
    const data = contig(h);
    return [fresh(data, p.shape)];
  },
  transpose: (ins, _a, p) => {
    const h = ins[0];
    return [view(h, p.perm.map((a) => h.shape[a]), p.perm.map((a) => h.strides[a]), h.offset)];
  },
  broadcast: (ins, _a, p) => {
    const h = ins[0];
    const off = p.shape.length - h.shape.length;
    const strides = p.shape.map((d, i) => {
      const j = i - off;
      return j < 0 || h.shape[j] !== d ? 0 : h.strides[j];
    });
    return [view(h, p.shape, strides, h.offset)];
  },
  slice: (ins, _a, p, out) => {
    const h = ins[0];
    let offset = h.offset;
    h.shape.forEach((_, i) => (offset += p.starts[i] * h.strides[i]));
    return [view(h, out[0].shape, h.strides.map((s, i) => s * p.steps[i]), offset)];
  },
  flip: (ins, _a, p) => {
    const h = ins[0];
    let offset = h.offset;
    const strides = h.strides.map((s, i) => {
      if (!p.axes.includes(i)) return s;
      if (h.shape[i] > 0) offset += (h.shape[i] - 1) * s;
      return -s;
    });
    return [view(h, h.shape, strides, offset)];
  },
  pad: (ins, inAvals, p, out) => {
    const x = contig(ins[0]);
    const y = allocHost(out[0].dtype, size(out[0].shape));
    const ish = inAvals[0].shape;
    const os = stridesOf(out[0].shape);
    const r = ish.length;
    const idx = new Array<number>(r).fill(0);
    for (let i = 0; i < x.length; i++) {
      let o = 0;
      for (let a = 0; a < r; a++) o += (p.widths[a][0] + idx[a] * (p.widths[a][2] + 1)) * os[a];
      y[o] = x[i];
      for (let a = r - 1; a >= 0; a--) {
        if (++idx[a] < ish[a]) break;
        idx[a] = 0;
      }
    }
    return [fresh(y, out[0].shape)];
  },
  concat: (ins, inAvals, p, out) => {
    const y = allocHost(out[0].dtype, size(out[0].shape));
    const [outer, total, inner] = around(out[0].shape, p.axis);
    let base = 0;
    ins.forEach((h, t) => {
      const x = contig(h);
      const n = inAvals[t].shape[p.axis];
      for (let o = 0; o < outer; o++) {
        y.set(x.subarray(o * n * inner, (o + 1) * n * inner), (o * total + base) * inner);
      }
      base += n;
    });
    return [fresh(y, out[0].shape)];
  },
  random: (_ins, _a, p, out) => {
    const n = size(p.shape);
    const y = allocHost(out[0].dtype, n);
    if (p.dist === "bits") threefryBits(p.key[0], p.key[1], n, y as Uint32Array<ArrayBuffer>);
    else if (p.dtype === "f64") {
      const bits = threefryBits(p.key[0], p.key[1], 2 * n);
      for (let i = 0; i < n; i++) y[i] = ((bits[i] >>> 5) * 67108864 + (bits[n + i] >>> 6)) / 9007199254740992;
    } else if (p.dtype === "f16") {
      const bits = threefryBits(p.key[0], p.key[1], n);
      for (let i = 0; i < n; i++) y[i] = (bits[i] >>> 22) / 1024;
    } else {
      const bits = threefryBits(p.key[0], p.key[1], n);
      for (let i = 0; i < n; i++) y[i] = bitsToUnitF32(bits[i]);
    }
    return [fresh(y, out[0].shape)];
  },
};

/** Creates the cpu backend. */
export function createCpuBackend(): Backend {
  return {
    name: "cpu",
    fromHost(data, aval) {
      if (data.length !== size(aval.shape)) {
        throw new DifflabError(`cpu: ${data.length} values do not fill shape ${fmtShape(aval.shape)}`);
      }
      return fresh(data, aval.shape);
    },
    read(h, aval) {
      return Promise.resolve(this.readSync!(h, aval));
    },
    readSync(h) {
      const c = contig(h as CpuHandle);
      return c.slice() as TypedArray;
    },
    run(prim, inputs, inAvals, params, outAvals) {
      return kernels[prim](inputs as CpuHandle[], inAvals, params, outAvals);
    },
    retain(h: Handle) {
      const c = h as CpuHandle;
      return view(c, c.shape, c.strides, c.offset);
    },
    release(h: Handle) {
      const c = h as CpuHandle;
      if (c.buf.refs <= 0) return;
      if (--c.buf.refs === 0) {
        live--;
        // Drop the array so a stale handle cannot be read by mistake.
        c.buf.data = EMPTY;
      }
    },
    liveBuffers() {
      return live;
    },
  };
}

const EMPTY = new Float32Array(0);
