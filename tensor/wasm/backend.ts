/**
 * @file The `wasm` backend: the fast CPU path. Storage lives in one Wasm
 * memory (shared with worker threads when SharedArrayBuffer exists) managed by
 * a coalescing allocator (heap.ts); handles are strided views over
 * reference-counted storage exactly like the cpu backend's, so movement
 * primitives (and reshapes whose strides allow it) never copy. Compute
 * primitives run Wasm SIMD kernels generated at startup (kernels.ts, gemm.ts,
 * math.ts, assembled by emit.ts), split into chunks over all threads
 * (runtime.ts): packed GEMMs for `dot` and `conv` (implicit im2col; a direct
 * kernel for depthwise-like groups), elementwise kernels that keep their
 * operands' memory layout and broadcast without copies, and row/column
 * reductions. Rarely used primitives and dtypes (f64, sin/cos/pow/log1p/expm1,
 * scans, argmax, gathers, PRNG) run as plain loops over typed-array views of
 * the same memory with the cpu backend's exact semantics.
 */
import type { Backend, Handle } from "../backend.ts";
import { adamwVia, layerNormVia, softmaxVia } from "../composite.ts";
import { gelu, geluGrad, geluTanh, geluTanhGrad } from "../cpu.ts";
import type { DType, TypedArray } from "../dtype.ts";
import { DifflabError, DTypeError, fmtShape, ShapeError } from "../errors.ts";
import type { Aval, ConvParams, ParamsOf, Prim } from "../prims.ts";
import { size, stridesOf } from "../shape.ts";
import { bitsToUnitF32, threefryBits } from "../threefry.ts";
import { D, G, gemmKernels, MR, NR } from "./gemm.ts";
import { basicKernels, ewName } from "./kernels.ts";
import { ConstTable } from "./math.ts";
import { Runtime, SCRATCH_BYTES } from "./runtime.ts";

export { autoSelectBackend } from "./select.ts";

interface Storage {
  ptr: number;
  bytes: number;
  refs: number;
  readonly dtype: DType;
}

/** A strided view onto heap storage (offset and strides in elements). */
interface WHandle {
  readonly st: Storage;
  readonly shape: readonly number[];
  readonly strides: readonly number[];
  readonly offset: number;
}

type Kernel<P extends Prim> = (
  ins: WHandle[],
  inAvals: readonly Aval[],
  p: ParamsOf[P],
  out: readonly Aval[],
) => WHandle[];

/** Options of {@link createWasmBackend}. */
export interface WasmOptions {
  /** Threads including the main one (default: navigator.hardwareConcurrency). 1 disables workers. */
  threads?: number;
  /** Use a shared memory and workers when possible (default true). */
  shared?: boolean;
}

/** Tuning: elements per elementwise chunk and the size below which work stays on one thread. */
const EW_CHUNK = 16384;
const PAR_MIN = 32768;
const KC = 256;

function esize(d: DType): number {
  switch (d) {
    case "f64":
      return 8;
    case "bool":
      return 1;
    case "f16":
      throw new DTypeError("wasm backend: f16 is not supported (use f32, or the webgpu backend with shader-f16)");
    default:
      return 4;
  }
}

/** Merges adjacent dims that are contiguous for every stride list and drops size-1 dims. */
function collapse(
  shape: readonly number[],
  strides: readonly (readonly number[])[],
): { shape: number[]; strides: number[][] } {
  const sh: number[] = [];
  const st: number[][] = strides.map(() => []);
  for (let i = 0; i < shape.length; i++) {
    if (shape[i] === 1) continue;
    const last = sh.length - 1;
    if (last >= 0 && strides.every((s, k) => st[k][last] === s[i] * shape[i])) {
      sh[last] *= shape[i];
      for (let k = 0; k < st.length; k++) st[k][last] = strides[k][i];
    } else {
      sh.push(shape[i]);
      for (let k = 0; k < st.length; k++) st[k].push(strides[k][i]);
    }
  }
  return { shape: sh, strides: st };
}

function pad4(shape: number[], strides: number[][]): void {
  while (shape.length < 4) {
    shape.unshift(1);
    for (const s of strides) s.unshift(0);
  }
}

/**
 * Strides that present `shape`/`strides` as `newShape` without copying (NumPy's no-copy reshape), or
 * null when the old dims that merge are not contiguous with each other.
 */
export function reshapeStrides(
  shape: readonly number[],
  strides: readonly number[],
  newShape: readonly number[],
): number[] | null {
  if (size(shape) === 0) return stridesOf(newShape);
  const od: number[] = [], os: number[] = [];
  shape.forEach((d, i) => {
    if (d !== 1) {
      od.push(d);
      os.push(strides[i]);
    }
  });
  const ns = new Array<number>(newShape.length).fill(0);
  const nd = newShape;
  let oi = 0, ni = 0;
  while (ni < nd.length && oi < od.length) {
    if (nd[ni] === 1) {
      ni++;
      continue;
    }
    let oj = oi + 1, nj = ni + 1;
    let np = nd[ni], op = od[oi];
    while (np !== op) {
      if (np < op) np *= nd[nj++];
      else op *= od[oj++];
    }
    for (let k = oi; k < oj - 1; k++) if (os[k] !== od[k + 1] * os[k + 1]) return null;
    ns[nj - 1] = os[oj - 1];
    for (let k = nj - 1; k > ni; k--) ns[k - 1] = ns[k] * nd[k];
    ni = nj;
    oi = oj;
  }
  // Trailing size-1 dims keep stride 0 (any stride is valid for them).
  return ns;
}

/**
 * A permutation (outer to inner) that makes the densest operand contiguous when it is a permuted dense
 * array that is not row-major; null when row-major order is already right.
 */
function layoutPerm(ins: readonly WHandle[], shape: readonly number[]): number[] | null {
  if (shape.length < 2) return null;
  let ref: WHandle | null = null;
  let best = -1;
  for (const h of ins) {
    const nz = h.strides.filter((s, i) => s !== 0 && shape[i] !== 1).length;
    if (nz > best) {
      best = nz;
      ref = h;
    }
  }
  if (!ref || best < 2) return null;
  const r = ref;
  const perm = shape.map((_, i) => i).sort((a, b) => {
    // size-1 dims sort outermost; otherwise by descending stride, stable
    const sa = shape[a] === 1 ? Infinity : r.strides[a], sb = shape[b] === 1 ? Infinity : r.strides[b];
    return sb - sa || a - b;
  });
  if (perm.every((a, i) => a === i)) return null;
  // Only when the reference becomes dense in that order.
  let acc = 1;
  for (let i = perm.length - 1; i >= 0; i--) {
    const a = perm[i];
    if (shape[a] === 1) continue;
    if (r.strides[a] !== acc) return null;
    acc *= shape[a];
  }
  return perm;
}

/** The Wasm cast kernel for a dtype pair ("same" when only the type changes), or null for a host loop. */
function castKernel(from: DType, to: DType): string | null {
  const bits = (d: DType) => (d === "u32" ? "i32" : d);
  if (from === to || (bits(from) === "i32" && bits(to) === "i32")) return "same";
  const k = `${bits(from)}_${bits(to)}`;
  if (from === "u32" && to === "f32") return "u32_f32";
  return ["f32_bool", "i32_bool", "bool_f32", "bool_i32", "i32_f32", "f32_i32"].includes(k) ? k : null;
}

const ceilDiv = (a: number, b: number) => Math.ceil(a / b);
const roundUp = (a: number, b: number) => Math.ceil(a / b) * b;

/** Accurate erf in f64 (the cpu backend's series), for the f64 path. */
function erf64(x: number): number {
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

/** Scalar semantics of every elementwise primitive (the cpu backend's), for host-loop paths. */
const JS_UNARY: Record<string, (x: number) => number> = {
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
  erf: erf64,
  floor: Math.floor,
  sigmoid: (x) => (x >= 0 ? 1 / (1 + Math.exp(-x)) : Math.exp(x) / (1 + Math.exp(x))),
  log1p: Math.log1p,
  expm1: Math.expm1,
  // The f64 path shares the cpu oracle's scalar definitions.
  gelu,
  geluTanh,
  geluGrad,
  geluTanhGrad,
};
const JS_BINARY: Record<string, (a: number, b: number) => number> = {
  add: (a, b) => a + b,
  sub: (a, b) => a - b,
  mul: (a, b) => a * b,
  div: (a, b) => a / b,
  pow: Math.pow,
  maximum: (a, b) => (Number.isNaN(a) || Number.isNaN(b) ? NaN : Math.max(a, b)),
  minimum: (a, b) => (Number.isNaN(a) || Number.isNaN(b) ? NaN : Math.min(a, b)),
};
const JS_INT_BINARY: Record<string, (a: number, b: number) => number> = {
  ...JS_BINARY,
  mul: (a, b) => Math.imul(a, b),
  div: (a, b) => (b === 0 ? 0 : Math.trunc(a / b)),
};
const JS_CMP: Record<string, (a: number, b: number) => boolean> = {
  lt: (a, b) => a < b,
  le: (a, b) => a <= b,
  gt: (a, b) => a > b,
  ge: (a, b) => a >= b,
  eq: (a, b) => a === b,
  ne: (a, b) => a !== b,
};

/** Unary kernels costly per element (polynomial math), which get smaller parallel chunks. */
const HEAVY_UNARY = new Set(["exp", "log", "tanh", "sigmoid", "erf", "gelu", "geluTanh", "geluGrad", "geluTanhGrad"]);

const WASM_UNARY: Record<string, readonly string[]> = {
  f32: [
    "neg",
    "abs",
    "sqrt",
    "rsqrt",
    "floor",
    "sign",
    "exp",
    "log",
    "tanh",
    "sigmoid",
    "erf",
    "gelu",
    "geluTanh",
    "geluGrad",
    "geluTanhGrad",
  ],
  i32: ["neg", "abs", "sign"],
  u32: ["neg", "sign"],
};
const WASM_BINARY: Record<string, readonly string[]> = {
  f32: ["add", "sub", "mul", "div", "maximum", "minimum"],
  i32: ["add", "sub", "mul", "maximum", "minimum"],
  u32: ["add", "sub", "mul", "maximum", "minimum"],
};

/** Creates the wasm backend (compiles the kernels and starts the worker threads). */
export async function createWasmBackend(opts: WasmOptions = {}): Promise<Backend & WasmExtras> {
  const rt = await Runtime.create((relaxed) => {
    const table = new ConstTable();
    return { funcs: [...basicKernels(relaxed, table), ...gemmKernels(relaxed)], consts: table.bytes };
  }, opts);
  return new WasmBackend(rt);
}

/** Extra introspection on the wasm backend object. */
export interface WasmExtras {
  /** Threads in use (1 = no workers). */
  readonly threads: number;
  /** True when the kernels use relaxed-SIMD FMA. */
  readonly relaxedSimd: boolean;
  /** Bytes reserved by the Wasm memory. */
  heapBytes(): number;
  /** Stops the worker threads. */
  shutdown(): void;
}

class WasmBackend implements Backend, WasmExtras {
  readonly name = "wasm" as const;
  #live = 0;
  readonly rt: Runtime;
  readonly kernels: { [P in Prim]: Kernel<P> };

  constructor(rt: Runtime) {
    this.rt = rt;
    this.kernels = this.#makeKernels();
  }

  get threads(): number {
    return this.rt.threads;
  }
  get relaxedSimd(): boolean {
    return this.rt.relaxed;
  }
  memoryLimits(): { totalBytes: number; maxTensorBytes: number; describe: string } {
    return { totalBytes: 4 * 2 ** 30, maxTensorBytes: 4 * 2 ** 30, describe: "the Wasm heap is limited to 4 GiB" };
  }
  heapBytes(): number {
    return this.rt.heapBytes;
  }
  shutdown(): void {
    this.rt.shutdown();
  }

  // ------------------------------------------------------------ storage

  #storage(dtype: DType, n: number): Storage {
    const bytes = n * esize(dtype);
    const ptr = bytes > 0 ? this.rt.alloc(bytes) : 0;
    this.#live++;
    return { ptr, bytes, refs: 1, dtype };
  }

  #fresh(dtype: DType, shape: readonly number[]): WHandle {
    return { st: this.#storage(dtype, size(shape)), shape, strides: stridesOf(shape), offset: 0 };
  }

  #view(h: WHandle, shape: readonly number[], strides: readonly number[], offset: number): WHandle {
    h.st.refs++;
    return { st: h.st, shape, strides, offset };
  }

  #drop(st: Storage) {
    if (st.refs <= 0) return;
    if (--st.refs === 0) {
      this.#live--;
      if (st.bytes > 0) this.rt.free(st.ptr, st.bytes);
      st.ptr = -1;
    }
  }

  /** Typed-array view of `n` elements of dtype `d` at byte address `ptr` (valid until the memory grows). */
  #tv(d: DType, ptr: number, n: number): TypedArray {
    const b = this.rt.memory.buffer;
    switch (d) {
      case "f32":
        return new Float32Array(b, ptr, n) as TypedArray;
      case "f64":
        return new Float64Array(b, ptr, n) as TypedArray;
      case "i32":
        return new Int32Array(b, ptr, n) as TypedArray;
      case "u32":
        return new Uint32Array(b, ptr, n) as TypedArray;
      case "bool":
        return new Uint8Array(b, ptr, n) as TypedArray;
      default:
        throw new DTypeError(`wasm backend: unsupported dtype ${d}`);
    }
  }

  #isContig(h: WHandle): boolean {
    let acc = 1;
    for (let i = h.shape.length - 1; i >= 0; i--) {
      if (h.shape[i] !== 1 && h.strides[i] !== acc) return false;
      acc *= h.shape[i];
    }
    return true;
  }

  /** Byte address of element 0 of a view. */
  #addr(h: WHandle): number {
    return h.st.ptr + h.offset * esize(h.st.dtype);
  }

  /** A contiguous handle with the same values: the view itself (retained) when already row-major. */
  #contig(h: WHandle): WHandle {
    if (this.#isContig(h)) return this.#view(h, h.shape, stridesOf(h.shape), h.offset);
    const out = this.#fresh(h.st.dtype, h.shape);
    this.#copy(out.st.ptr, stridesOf(h.shape), h, h.shape);
    return out;
  }

  /** Copies view `src` (over `shape`) into memory at `dst` laid out with element strides `dstStrides`. */
  #copy(dst: number, dstStrides: readonly number[], src: WHandle, shape: readonly number[]) {
    if (size(shape) === 0) return;
    const es = esize(src.st.dtype) as 1 | 4 | 8;
    const c = collapse(shape, [dstStrides, src.strides]);
    if (c.shape.length === 0) {
      c.shape.push(1);
      c.strides[0].push(1);
      c.strides[1].push(1);
    }
    if (c.shape.length > 4) {
      // Rare: copy the outer dims in a host loop, each inner 4-dim block by the kernel.
      const outer = c.shape.length - 4;
      const oshape = c.shape.slice(0, outer);
      const idx = new Array<number>(outer).fill(0);
      const n = size(oshape);
      for (let i = 0; i < n; i++) {
        let od = 0, os = 0;
        for (let a = 0; a < outer; a++) {
          od += idx[a] * c.strides[0][a];
          os += idx[a] * c.strides[1][a];
        }
        this.#copy4(
          dst + od * es,
          c.strides[0].slice(outer),
          this.#addr(src) + os * es,
          c.strides[1].slice(outer),
          c.shape.slice(outer),
          es,
        );
        for (let a = outer - 1; a >= 0; a--) {
          if (++idx[a] < oshape[a]) break;
          idx[a] = 0;
        }
      }
      return;
    }
    this.#copy4(dst, c.strides[0], this.#addr(src), c.strides[1], c.shape, es);
  }

  #copy4(dst: number, ds: number[], src: number, ss: number[], shape: number[], es: 1 | 4 | 8) {
    const sh = shape.slice(), st = [ds.slice(), ss.slice()];
    pad4(sh, st);
    // A transposition (the source is unit-stride along another axis than the destination): tiled kernel.
    const k = ss.length >= 2 && es === 4 && ds[ds.length - 1] === 1 && ss[ss.length - 1] !== 1 && sh[3] > 1
      ? [2, 1, 0].find((a) => st[1][a] === 1 && sh[a] > 1)
      : undefined;
    if (k !== undefined) {
      const others = [0, 1, 2].filter((a) => a !== k);
      const [o1, o2] = others;
      const A = sh[k], B = sh[3];
      const ntile = ceilDiv(A, 16);
      const nb = sh[o1] * sh[o2];
      const a = this.rt.args([
        dst,
        src,
        sh[o1],
        sh[o2],
        st[0][o1],
        st[0][o2],
        st[1][o1],
        st[1][o2],
        A,
        B,
        st[0][k],
        st[1][3],
        ntile,
      ]);
      this.rt.run("copyT_e4", a, nb * ntile, A * B * nb >= PAR_MIN);
      return;
    }
    const rows = sh[0] * sh[1] * sh[2];
    const total = rows * sh[3];
    const par = total * es >= PAR_MIN * 4 && rows > 1;
    const rowsPer = par ? Math.max(1, Math.floor((EW_CHUNK * 2) / sh[3])) : rows;
    const a = this.rt.args([dst, src, ...sh, ...st[0], ...st[1], rowsPer]);
    this.rt.run(`copy_e${es}`, a, ceilDiv(rows, rowsPer), par);
  }

  // ------------------------------------------------------------ elementwise

  /**
   * Runs an elementwise Wasm kernel: output contiguous, operands as views whose collapsed inner stride
   * is 0 or 1 (others are first copied to contiguous storage).
   */
  #ew(op: string, dt: string, ins: WHandle[], outDtype: DType, shape: readonly number[], heavy = false): WHandle {
    // Keep the operands' memory order (e.g. transposed gradients): compute in that order and return the
    // result as a view with the same layout, instead of copying every operand to row-major first.
    const perm = layoutPerm(ins, shape);
    if (perm) {
      const pshape = perm.map((a) => shape[a]);
      const pins = ins.map((h) => ({
        st: h.st,
        shape: pshape,
        strides: perm.map((a) => h.strides[a]),
        offset: h.offset,
      }));
      const y = this.#ew(op, dt, pins, outDtype, pshape, heavy);
      const ps = stridesOf(pshape);
      const strides = new Array<number>(shape.length);
      perm.forEach((a, i) => (strides[a] = ps[i]));
      return { st: y.st, shape, strides, offset: 0 };
    }
    const out = this.#fresh(outDtype, shape);
    const n = size(shape);
    if (n === 0) return out;
    const temps: WHandle[] = [];
    let ops = ins;
    let c = collapse(shape, [stridesOf(shape), ...ops.map((h) => h.strides)]);
    for (let attempt = 0; attempt < 2; attempt++) {
      const innerBad = ops.map((_, k) => {
        const s = c.strides[k + 1];
        const inner = s.length ? s[s.length - 1] : 0;
        return inner !== 0 && inner !== 1;
      });
      if (!innerBad.some((b) => b) && c.shape.length <= 4) break;
      // First copy operands whose inner stride is not 0/1; if dims still do not fit, copy every
      // non-contiguous operand, after which everything collapses to one dimension.
      const bad = attempt === 0 && innerBad.some((b) => b) ? innerBad : ops.map((h) => !this.#isContig(h));
      ops = ops.map((h, k) => {
        if (!bad[k]) return h;
        const t = this.#contig(h);
        temps.push(t);
        return t;
      });
      c = collapse(shape, [stridesOf(shape), ...ops.map((h) => h.strides)]);
    }
    if (c.shape.length === 0) {
      c.shape.push(1);
      for (const s of c.strides) s.push(1);
      // every operand is a single element: inner kind 1 works for contiguous scalars and broadcasts alike
      ops.forEach((_, k) => (c.strides[k + 1][0] = 1));
    }
    pad4(c.shape, c.strides);
    const kinds = ops.map((_, k) => c.strides[k + 1][3]);
    const [n0, n1, n2, n3] = c.shape;
    const rows = n0 * n1 * n2;
    const chunkElems = heavy ? EW_CHUNK / 4 : EW_CHUNK;
    const par = n >= (heavy ? PAR_MIN / 8 : PAR_MIN);
    let rowsPer = rows, colsPer = n3, ncc = 1;
    if (par) {
      const want = ceilDiv(n, chunkElems);
      if (rows >= want) rowsPer = ceilDiv(rows, want);
      else {
        rowsPer = 1;
        colsPer = roundUp(ceilDiv(n3, ceilDiv(want, rows)), 4);
        ncc = ceilDiv(n3, colsPer);
      }
    }
    const words = [out.st.ptr, n0, n1, n2, n3, rowsPer, colsPer, ncc];
    ops.forEach((h, k) => words.push(this.#addr(h), c.strides[k + 1][0], c.strides[k + 1][1], c.strides[k + 1][2]));
    const a = this.rt.args(words);
    this.rt.run(this.#ewId(op, dt, kinds), a, ceilDiv(rows, rowsPer) * ncc, par);
    for (const t of temps) this.#drop(t.st);
    return out;
  }

  #ewIds = new Map<string, number[]>();
  /** Kernel id of an elementwise variant, cached per (op, dtype) and indexed by the kinds bitmask. */
  #ewId(op: string, dt: string, kinds: readonly number[]): number {
    const key = op + ":" + dt;
    let ids = this.#ewIds.get(key);
    if (!ids) this.#ewIds.set(key, ids = []);
    let m = 0;
    for (let k = 0; k < kinds.length; k++) m |= kinds[k] << k;
    return ids[m] ??= this.rt.id(ewName(op, dt, kinds));
  }

  /** Host-loop elementwise map (exact cpu semantics; used for rare ops and dtypes). Views are copied first. */
  #map(
    ins: WHandle[],
    outDtype: DType,
    shape: readonly number[],
    f: (a: number, b: number, c: number) => number,
  ): WHandle {
    const out = this.#fresh(outDtype, shape);
    const n = size(shape);
    if (n === 0) return out;
    const cs = ins.map((h) => this.#contig(h));
    const y = this.#tv(outDtype, out.st.ptr, n);
    const [a, b, c] = cs.map((h) => this.#tv(h.st.dtype, this.#addr(h), n));
    if (cs.length === 1) { for (let i = 0; i < n; i++) y[i] = f(a[i], 0, 0); }
    else if (cs.length === 2) { for (let i = 0; i < n; i++) y[i] = f(a[i], b[i], 0); }
    else for (let i = 0; i < n; i++) y[i] = f(a[i], b[i], c[i]);
    for (const h of cs) this.#drop(h.st);
    return out;
  }

  #unary(name: string): Kernel<Prim> {
    return (ins, inAvals, _p, out) => {
      const dt = inAvals[0].dtype;
      const x = ins[0];
      if (WASM_UNARY[dt]?.includes(name)) {
        return [this.#ew(name, dt, [x], out[0].dtype, out[0].shape, HEAVY_UNARY.has(name))];
      }
      if ((dt === "i32" || dt === "u32") && (name === "floor" || (name === "abs" && dt === "u32"))) {
        return [this.#contigCopy(x)];
      }
      const f = JS_UNARY[name];
      return [this.#map([x], out[0].dtype, out[0].shape, f)];
    };
  }

  /** A fresh contiguous copy (never a view), for identity ops whose result must not alias. */
  #contigCopy(h: WHandle, dtype: DType = h.st.dtype): WHandle {
    const out = this.#fresh(dtype, h.shape);
    this.#copy(out.st.ptr, stridesOf(h.shape), h, h.shape);
    return out;
  }

  #binary(name: string): Kernel<Prim> {
    return (ins, inAvals, _p, out) => {
      const dt = inAvals[0].dtype;
      if (WASM_BINARY[dt]?.includes(name)) return [this.#ew(name, dt, ins, out[0].dtype, out[0].shape)];
      const f = dt === "f32" || dt === "f64" ? JS_BINARY[name] : JS_INT_BINARY[name];
      return [this.#map(ins, out[0].dtype, out[0].shape, f)];
    };
  }

  // ------------------------------------------------------------ reductions

  /** One AdamW step: one pass reading p, g, m, v and writing p', m', v' (f32); the composite elsewhere. */
  #adamw(ins: WHandle[], aval: Aval, q: ParamsOf["adamw"]): WHandle[] {
    if (aval.dtype !== "f32") return adamwVia(this, ins, aval, q) as WHandle[];
    const outs = [0, 1, 2].map(() => this.#fresh("f32", aval.shape));
    const n = size(aval.shape);
    if (n === 0) return outs;
    const xs = ins.map((h) => this.#contig(h));
    const par = n >= PAR_MIN && this.rt.threads > 1;
    const len = par ? roundUp(Math.min(EW_CHUNK * 4, ceilDiv(n, 4 * this.rt.threads)), 4) : n;
    const a = this.rt.args(
      [...xs.map((h) => this.#addr(h)), ...outs.map((o) => o.st.ptr), n, len],
      [q.b1, q.c1, q.b2, q.c2, q.bc2, q.eps, q.decay, q.negStep],
    );
    this.rt.run("adamw_f32", a, ceilDiv(n, len), par);
    for (const h of xs) this.#drop(h.st);
    return outs;
  }

  /**
   * A fused f32 row kernel over the last axis (args: x, y, K rows, R per row, rows per chunk, then
   * `floats`); rows are split over the threads when the work is large enough.
   */
  #rows(kernel: string, h: WHandle, out: Aval, floats: number[] = []): WHandle {
    const y = this.#fresh("f32", out.shape);
    const n = size(out.shape);
    if (n === 0) return y;
    const R = out.shape[out.shape.length - 1], K = n / R;
    const x = this.#contig(h);
    const T = this.rt.threads;
    const par = n >= PAR_MIN && T > 1 && K > 1;
    const rowsPer = par ? Math.max(1, ceilDiv(K, 8 * T)) : K;
    this.rt.run(kernel, this.rt.args([this.#addr(x), y.st.ptr, K, R, rowsPer], floats), ceilDiv(K, rowsPer), par);
    this.#drop(x.st);
    return y;
  }

  #reduce(op: "sum" | "max"): Kernel<"sum" | "max"> {
    return (ins, inAvals, p, out) => {
      const dt = inAvals[0].dtype;
      const shape = inAvals[0].shape;
      const outShape = out[0].shape;
      if (dt === "f64") return [this.#reduceJs(op, ins[0], p.axes, outShape)];
      const rsize = p.axes.reduce((a, i) => a * shape[i], 1);
      if (size(outShape) === 0) return [this.#fresh(dt, outShape)];
      if (rsize === 0) {
        const o = this.#fresh(dt, outShape);
        this.rt.u8.fill(0, o.st.ptr, o.st.ptr + o.st.bytes);
        return [o];
      }
      let x = this.#contig(ins[0]);
      // Groups of adjacent kept/reduced dims (size-1 dims dropped).
      let groups: { n: number; red: boolean }[] = [];
      shape.forEach((d, i) => {
        if (d === 1) return;
        const red = p.axes.includes(i);
        const g = groups[groups.length - 1];
        if (g && g.red === red) g.n *= d;
        else groups.push({ n: d, red });
      });
      while (groups.some((g) => g.red)) {
        const last = groups.length - 1;
        let y: WHandle;
        if (groups[last].red) {
          const K = groups.slice(0, last).reduce((a, g) => a * g.n, 1);
          y = this.#rowReduce(op, dt, x, K, groups[last].n);
          groups = groups.slice(0, last);
        } else {
          let r = last - 1;
          while (!groups[r].red) r--;
          const K1 = groups.slice(0, r).reduce((a, g) => a * g.n, 1);
          const K2 = groups.slice(r + 1).reduce((a, g) => a * g.n, 1);
          y = this.#colReduce(op, dt, x, K1, groups[r].n, K2);
          groups = [...groups.slice(0, r), ...groups.slice(r + 1)];
          // merge the now-adjacent kept groups
          const merged: { n: number; red: boolean }[] = [];
          for (const g of groups) {
            const m = merged[merged.length - 1];
            if (m && m.red === g.red) m.n *= g.n;
            else merged.push({ ...g });
          }
          groups = merged;
        }
        this.#drop(x.st);
        x = y;
      }
      return [{ st: x.st, shape: outShape, strides: stridesOf(outShape), offset: x.offset }];
    };
  }

  #rowReduce(op: "sum" | "max", dt: DType, x: WHandle, K: number, R: number): WHandle {
    const y = this.#fresh(dt, [K]);
    const total = K * R;
    const xp = this.#addr(x);
    const T = this.rt.threads;
    if (total < PAR_MIN || T === 1) {
      const a = this.rt.args([xp, y.st.ptr, K, R, K, 1, R]);
      this.rt.run(`redrow_${op}_${dt}`, a, 1, false);
    } else if (K >= 4 * T) {
      const rowsPer = Math.max(1, Math.min(ceilDiv(K, 4 * T), Math.floor((EW_CHUNK * 4) / R)));
      const a = this.rt.args([xp, y.st.ptr, K, R, rowsPer, 1, R]);
      this.rt.run(`redrow_${op}_${dt}`, a, ceilDiv(K, rowsPer), true);
    } else {
      const parts = Math.min(256, Math.max(1, ceilDiv(4 * T, K), ceilDiv(R, EW_CHUNK * 4)));
      const partLen = roundUp(ceilDiv(R, parts), 16);
      const np = ceilDiv(R, partLen);
      const f32sum = op === "sum" && dt === "f32";
      const tmpBytes = K * parts * (f32sum ? 8 : 4);
      const tmp = this.rt.alloc(tmpBytes);
      const a = this.rt.args([xp, tmp, K, R, 1, parts, partLen]);
      // chunks (k, q) with q >= np would be empty; run all K*parts for a fixed layout
      this.rt.run(`redrow_${op}_${dt}_part`, a, K * parts, true);
      const part = f32sum ? this.rt.f64.subarray(tmp >> 3, (tmp >> 3) + K * parts) : this.#tv(dt, tmp, K * parts);
      const out = this.#tv(dt, y.st.ptr, K);
      for (let k = 0; k < K; k++) {
        let acc = part[k * parts];
        for (let q = 1; q < np; q++) {
          const v = part[k * parts + q];
          if (op === "sum") acc = dt === "f32" ? acc + v : (acc + v) | 0;
          else acc = Number.isNaN(acc) || Number.isNaN(v) ? NaN : v > acc ? v : acc;
        }
        out[k] = acc;
      }
      this.rt.free(tmp, tmpBytes);
    }
    return y;
  }

  #colReduce(op: "sum" | "max", dt: DType, x: WHandle, K1: number, R: number, K2: number): WHandle {
    const y = this.#fresh(dt, [K1, K2]);
    const total = K1 * R * K2;
    const par = total >= PAR_MIN && this.rt.threads > 1;
    let CB = Math.min(512, roundUp(K2, 4));
    if (par) {
      const want = 4 * this.rt.threads;
      if (K1 * ceilDiv(K2, CB) < want) CB = Math.min(CB, Math.max(16, roundUp(ceilDiv(K2 * K1, want), 4)));
    }
    const ncb = ceilDiv(K2, CB);
    const a = this.rt.args([this.#addr(x), y.st.ptr, K1, R, K2, CB, ncb, this.rt.scratch(0)]);
    this.rt.run(`redcol_${op}_${dt}`, a, K1 * ncb, par);
    return y;
  }

  #reduceJs(op: "sum" | "max", h: WHandle, axes: readonly number[], outShape: readonly number[]): WHandle {
    const x = this.#contig(h);
    const shape = h.shape;
    const n = size(shape);
    const xs = this.#tv(h.st.dtype, this.#addr(x), n);
    const keep = shape.map((d, i) => (axes.includes(i) ? 1 : d));
    const ks = stridesOf(keep);
    const os = shape.map((_, i) => (axes.includes(i) ? 0 : ks[i]));
    const acc = new Float64Array(size(keep)).fill(op === "sum" ? 0 : -Infinity);
    const r = shape.length;
    const idx = new Array<number>(r).fill(0);
    let o = 0;
    for (let i = 0; i < n; i++) {
      const v = xs[i];
      if (op === "sum") acc[o] += v;
      else acc[o] = Number.isNaN(acc[o]) || Number.isNaN(v) ? NaN : acc[o] > v ? acc[o] : v;
      for (let a = r - 1; a >= 0; a--) {
        idx[a]++;
        o += os[a];
        if (idx[a] < shape[a]) break;
        o -= os[a] * shape[a];
        idx[a] = 0;
      }
    }
    this.#drop(x.st);
    const y = this.#fresh(h.st.dtype, outShape);
    this.#tv(h.st.dtype, y.st.ptr, acc.length).set(acc);
    return y;
  }

  // ------------------------------------------------------------ GEMM

  /**
   * Batched f32 GEMM: C[b] = A[b] · B[b] for b < batch, A rows/cols with element strides (ars, acs) and
   * batch stride abs (0 = shared), likewise B. C is written contiguous [batch, M, N] at `c`.
   */
  #gemm(
    batch: number,
    M: number,
    N: number,
    K: number,
    a: number,
    abs: number,
    ars: number,
    acs: number,
    b: number,
    bbs: number,
    brs: number,
    bcs: number,
    c: number,
  ) {
    if (M === 0 || N === 0 || batch === 0) return;
    if (K === 0) {
      this.rt.u8.fill(0, c, c + batch * M * N * 4);
      return;
    }
    // Fold the batch into M when B is shared and A's batches are evenly strided rows.
    if (batch > 1 && (bbs === 0) && abs === M * ars) {
      M *= batch;
      batch = 1;
      abs = 0;
    }
    const nbA = batch > 1 && abs !== 0 ? batch : 1;
    const nbB = batch > 1 && bbs !== 0 ? batch : 1;
    const Mp = roundUp(M, MR), Np = roundUp(N, NR);
    const flops = 2 * batch * M * N * K;
    const par = flops >= 2e6 && this.rt.threads > 1;
    const { MC, NC } = this.#plan(batch, M, N, K, par);
    const nMb = ceilDiv(M, MC), nNb = ceilDiv(N, NC);
    // An operand block used by exactly one chunk is packed inside that chunk (into its cache-resident
    // scratch) instead of through a packed copy in memory: A when there is one N block, B when one M block.
    const fits = MR * NR * 4 + KC * (roundUp(NC, NR) + roundUp(MC, MR)) * 4 <= SCRATCH_BYTES;
    const aIn = fits && nNb === 1;
    const bIn = fits && nMb === 1;
    const aBytes = aIn ? 0 : nbA * Mp * K * 4, bBytes = bIn ? 0 : nbB * Np * K * 4;
    const ap = aIn ? a : this.rt.alloc(aBytes), bp = bIn ? b : this.rt.alloc(bBytes);
    if (!aIn) this.#pack("gemm_packA", a, ars, acs, M, K, ap, Mp, MR, nbA, abs, par);
    if (!bIn) this.#pack("gemm_packB", b, bcs, brs, N, K, bp, Np, NR, nbB, bbs, par);
    const w = new Array<number>(G.COUNT).fill(0);
    w[G.M] = M;
    w[G.N] = N;
    w[G.K] = K;
    w[G.KC] = KC;
    w[G.Mp] = Mp;
    w[G.Np] = Np;
    w[G.Ap] = ap;
    w[G.Bp] = bp;
    w[G.C] = c;
    w[G.ldc] = N;
    w[G.aMod] = nbA;
    w[G.bMod] = nbB;
    w[G.aBatch] = aIn ? abs : Mp * K;
    w[G.bBatch] = bIn ? bbs : Np * K;
    w[G.cBatch] = M * N;
    w[G.MC] = MC;
    w[G.NC] = NC;
    w[G.nMb] = nMb;
    w[G.nNb] = nNb;
    w[G.scr] = this.rt.scratch(0);
    w[G.bMode] = bIn ? 2 : 0;
    w[G.beta] = 0;
    w[G.aMode] = aIn ? 1 : 0;
    w[G.ars] = ars;
    w[G.acs] = acs;
    w[G.brs] = brs;
    w[G.bcs] = bcs;
    this.rt.run("gemm_compute", this.rt.args(w), batch * nMb * nNb, par);
    if (!aIn) this.rt.free(ap, aBytes);
    if (!bIn) this.rt.free(bp, bBytes);
  }

  /** Chooses the M and N block sizes so every thread gets several chunks of useful size. */
  #plan(batch: number, M: number, N: number, K: number, par: boolean, maxNC = 512): { MC: number; NC: number } {
    let MC = roundUp(M, MR), NC = Math.min(roundUp(N, NR), maxNC);
    if (!par) {
      while (MC * Math.min(K, KC) * 4 > 512 * 1024 && MC > 8 * MR) MC = roundUp(MC >> 1, MR);
      return { MC, NC };
    }
    const want = 3 * this.rt.threads;
    const chunks = () => batch * ceilDiv(M, MC) * ceilDiv(N, NC);
    while (chunks() < want && NC > 4 * NR) NC = roundUp(NC >> 1, NR);
    while (chunks() < want && MC > 4 * MR) MC = roundUp(MC >> 1, MR);
    // Keep the A block of a chunk within about half of L2.
    while (MC * Math.min(K, KC) * 4 > 512 * 1024 && MC > 8 * MR) MC = roundUp(MC >> 1, MR);
    return { MC, NC };
  }

  #pack(
    name: string,
    src: number,
    rs: number,
    cs: number,
    M: number,
    K: number,
    dst: number,
    Mp: number,
    R: number,
    nb: number,
    bstride: number,
    par: boolean,
  ) {
    const np = Mp / R;
    const ppc = par ? Math.max(1, Math.floor(16384 / (R * K))) : np;
    const npc = ceilDiv(np, ppc);
    const a = this.rt.args([src, rs, cs, M, K, KC, dst, Mp, np, ppc, npc, bstride, Mp * K]);
    this.rt.run(name, a, nb * npc, par);
  }

  #dot: Kernel<"dot"> = (ins, inAvals, _p, out) => {
    const dt = inAvals[0].dtype;
    const [B, M, K] = inAvals[0].shape;
    const N = inAvals[1].shape[2];
    if (dt !== "f32") return [this.#dotJs(ins, B, M, K, N, out[0].dtype)];
    const y = this.#fresh("f32", out[0].shape);
    const [a, b] = ins;
    this.#gemm(
      B,
      M,
      N,
      K,
      this.#addr(a),
      B > 1 ? a.strides[0] : 0,
      a.strides[1],
      a.strides[2],
      this.#addr(b),
      B > 1 ? b.strides[0] : 0,
      b.strides[1],
      b.strides[2],
      y.st.ptr,
    );
    return [y];
  };

  #dotJs(ins: WHandle[], B: number, M: number, K: number, N: number, dt: DType): WHandle {
    const a = this.#contig(ins[0]), b = this.#contig(ins[1]);
    const y = this.#fresh(dt, [B, M, N]);
    const av = this.#tv(dt, this.#addr(a), B * M * K), bv = this.#tv(dt, this.#addr(b), B * K * N);
    const yv = this.#tv(dt, y.st.ptr, B * M * N);
    const row = new Float64Array(N);
    for (let bb = 0; bb < B; bb++) {
      for (let i = 0; i < M; i++) {
        row.fill(0);
        for (let k = 0; k < K; k++) {
          const x = av[(bb * M + i) * K + k];
          const bo = (bb * K + k) * N;
          for (let j = 0; j < N; j++) row[j] += x * bv[bo + j];
        }
        yv.set(row, (bb * M + i) * N);
      }
    }
    this.#drop(a.st);
    this.#drop(b.st);
    return y;
  }

  // ------------------------------------------------------------ conv

  #conv: Kernel<"conv"> = (ins, inAvals, p, out) => {
    const dt = inAvals[0].dtype;
    if (dt !== "f32") return [this.#convJs(ins, inAvals, p, out)];
    const [N, Gn, Ci, H, W] = inAvals[0].shape;
    const [, Co, , KH, KW] = inAvals[1].shape;
    const [, , , OH, OW] = out[0].shape;
    const y = this.#fresh("f32", out[0].shape);
    const P = OH * OW;
    const K = Ci * KH * KW;
    if (size(out[0].shape) === 0) return [y];
    if (K === 0) {
      this.rt.u8.fill(0, y.st.ptr, y.st.ptr + y.st.bytes);
      return [y];
    }
    if (this.#directConv(ins, p, N, Gn, Ci, Co, H, W, KH, KW, OH, OW, y)) return [y];
    // A = weights [G][Co, Ci*KH*KW]: merge the k dims of the (possibly strided) weight view, else copy it.
    let w = ins[1];
    let wtemp: WHandle | null = null;
    const wk = collapse([Ci, KH, KW], [w.strides.slice(2)]);
    let kStride: number;
    if (wk.shape.length <= 1) kStride = wk.shape.length === 0 ? 1 : wk.strides[0][0];
    else {
      wtemp = this.#contigCopy(w);
      w = wtemp;
      kStride = 1;
    }
    const ap = this.rt.alloc(Gn * roundUp(Co, MR) * K * 4);
    const Mp = roundUp(Co, MR);
    const flops = 2 * N * Gn * Co * P * K;
    const par = flops >= 2e6 && this.rt.threads > 1;
    this.#pack("gemm_packA", this.#addr(w), w.strides[1], kStride, Co, K, ap, Mp, MR, Gn, w.strides[0], par);
    // Fold the images into the columns when each image has few output pixels.
    const fold = P < 128 && N > 1;
    const cols = fold ? N * P : P;
    const batches = fold ? Gn : N * Gn;
    const x = ins[0];
    let c = y.st.ptr;
    let tmp = 0;
    const tmpBytes = fold ? Gn * Co * N * P * 4 : 0;
    if (fold) c = tmp = this.rt.alloc(tmpBytes);
    const maxNC = Math.max(NR, Math.min(512, Math.floor((SCRATCH_BYTES - MR * NR * 4) / (KC * 4)) & ~(NR - 1)));
    const { MC, NC } = this.#plan(batches, Co, cols, K, par, maxNC);
    const wds = new Array<number>(G.COUNT).fill(0);
    wds[G.M] = Co;
    wds[G.N] = cols;
    wds[G.K] = K;
    wds[G.KC] = KC;
    wds[G.Mp] = Mp;
    wds[G.Np] = 0;
    wds[G.Ap] = ap;
    wds[G.Bp] = 0;
    wds[G.C] = c;
    wds[G.ldc] = cols;
    wds[G.aMod] = Gn;
    wds[G.bMod] = 1;
    wds[G.aBatch] = Mp * K;
    wds[G.bBatch] = 0;
    wds[G.cBatch] = Co * cols;
    wds[G.MC] = MC;
    wds[G.NC] = NC;
    wds[G.nMb] = ceilDiv(Co, MC);
    wds[G.nNb] = ceilDiv(cols, NC);
    wds[G.scr] = this.rt.scratch(0);
    wds[G.bMode] = 1;
    wds[G.beta] = 0;
    wds[G.x] = this.#addr(x);
    [wds[G.sn], wds[G.sg], wds[G.sc], wds[G.sh], wds[G.sw]] = x.strides;
    wds[G.H] = H;
    wds[G.W] = W;
    wds[G.KH] = KH;
    wds[G.KW] = KW;
    wds[G.OW] = OW;
    [wds[G.strH], wds[G.strW]] = p.stride;
    wds[G.padT] = p.padding[0][0];
    wds[G.padL] = p.padding[1][0];
    [wds[G.dilH], wds[G.dilW]] = p.lhsDilation;
    [wds[G.rdH], wds[G.rdW]] = p.rhsDilation;
    wds[G.G] = Gn;
    wds[G.P] = P;
    wds[G.fold] = fold ? 1 : 0;
    this.rt.run("gemm_compute", this.rt.args(wds), batches * wds[G.nMb] * wds[G.nNb], par);
    this.rt.free(ap, Gn * Mp * K * 4);
    if (wtemp) this.#drop(wtemp.st);
    if (fold) {
      // temp [G, Co, N, P] -> y [N, G, Co, P]
      const tv: WHandle = {
        st: { ptr: tmp, bytes: tmpBytes, refs: 1, dtype: "f32" },
        shape: [N, Gn, Co, P],
        strides: [P, Co * N * P, N * P, 1],
        offset: 0,
      };
      this.#copy(y.st.ptr, stridesOf([N, Gn, Co, P]), tv, [N, Gn, Co, P]);
      this.rt.free(tmp, tmpBytes);
    }
    return [y];
  };

  /** Depthwise-like convs (few channels per group) run the direct kernel; returns false when not applicable. */
  #directConv(
    ins: WHandle[],
    p: ConvParams,
    N: number,
    Gn: number,
    Ci: number,
    Co: number,
    H: number,
    W: number,
    KH: number,
    KW: number,
    OH: number,
    OW: number,
    y: WHandle,
  ): boolean {
    if (Ci * Co > 8 || p.stride[1] !== 1 || p.lhsDilation[0] !== 1 || p.lhsDilation[1] !== 1) return false;
    // A large kernel over a small output (weight gradients) runs as dot products along the kernel rows.
    const dot = OW <= 8 && KW >= 8 && p.rhsDilation[1] === 1;
    const S = OW >= 12 ? 16 : 4;
    const Hp = (OH - 1) * p.stride[0] + (KH - 1) * p.rhsDilation[0] + 1;
    const Wp = dot ? roundUp(OW, 4) + KW + 8 : roundUp(OW, S) + (KW - 1) * p.rhsDilation[1];
    if ((Ci * Hp * Wp + roundUp(OW, S)) * 4 > SCRATCH_BYTES || KH * KW === 0) return false;
    const w = this.#contig(ins[1]);
    const x = ins[0];
    const a = new Array<number>(D.COUNT).fill(0);
    a[D.x] = this.#addr(x);
    [a[D.sn], a[D.sg], a[D.sc], a[D.sh], a[D.sw]] = x.strides;
    a[D.H] = H;
    a[D.W] = W;
    a[D.w] = this.#addr(w);
    a[D.out] = y.st.ptr;
    a[D.G] = Gn;
    a[D.Ci] = Ci;
    a[D.Co] = Co;
    a[D.KH] = KH;
    a[D.KW] = KW;
    a[D.OH] = OH;
    a[D.OW] = OW;
    a[D.strH] = p.stride[0];
    a[D.padT] = p.padding[0][0];
    a[D.padL] = p.padding[1][0];
    a[D.rdH] = p.rhsDilation[0];
    a[D.rdW] = p.rhsDilation[1];
    a[D.Hp] = Hp;
    a[D.Wp] = Wp;
    a[D.scr] = this.rt.scratch(0);
    const work = 2 * N * Gn * Co * OH * OW * Ci * KH * KW;
    this.rt.run(dot ? "dconvdot" : `dconv${S}`, this.rt.args(a), N * Gn, work >= 1e6 && this.rt.threads > 1);
    this.#drop(w.st);
    return true;
  }

  #convJs(ins: WHandle[], inAvals: readonly Aval[], p: ConvParams, out: readonly Aval[]): WHandle {
    const dt = inAvals[0].dtype;
    const xh = this.#contig(ins[0]), wh = this.#contig(ins[1]);
    const [N, Gn, Ci, H, W] = inAvals[0].shape;
    const [, Co, , KH, KW] = inAvals[1].shape;
    const [, , , OH, OW] = out[0].shape;
    const yh = this.#fresh(dt, out[0].shape);
    // Views only after every allocation: growing a non-shared memory detaches older views.
    const x = this.#tv(dt, this.#addr(xh), size(inAvals[0].shape));
    const w = this.#tv(dt, this.#addr(wh), size(inAvals[1].shape));
    const y = this.#tv(dt, yh.st.ptr, size(out[0].shape));
    const [sh, sw] = p.stride, [dh, dw] = p.lhsDilation, [rh, rw] = p.rhsDilation;
    const [pt, pl] = [p.padding[0][0], p.padding[1][0]];
    let o = 0;
    for (let n = 0; n < N; n++) {
      for (let g = 0; g < Gn; g++) {
        for (let co = 0; co < Co; co++) {
          for (let oy = 0; oy < OH; oy++) {
            for (let ox = 0; ox < OW; ox++) {
              let acc = 0;
              for (let ci = 0; ci < Ci; ci++) {
                const xb = ((n * Gn + g) * Ci + ci) * H;
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
    this.#drop(xh.st);
    this.#drop(wh.st);
    return yh;
  }

  // ------------------------------------------------------------ host-loop primitives

  /** Throws (releasing `ih`) when an index is outside [0, n). */
  #checkIndices(op: string, ih: WHandle, n: number) {
    const idx = this.#vals(ih);
    for (let k = 0; k < idx.length; k++) {
      if (!(idx[k] >= 0 && idx[k] < n)) {
        const v = idx[k];
        this.#drop(ih.st);
        throw new ShapeError(`${op}: index ${v} is out of range for an axis of size ${n}`);
      }
    }
  }

  /** Values of a contiguous handle (create only after the kernel's last allocation). */
  #vals(c: WHandle): TypedArray {
    return this.#tv(c.st.dtype, this.#addr(c), size(c.shape));
  }

  #makeKernels(): { [P in Prim]: Kernel<P> } {
    const around = (shape: readonly number[], axis: number): [number, number, number] => [
      size(shape.slice(0, axis)),
      shape[axis],
      size(shape.slice(axis + 1)),
    ];
    const cmp: Kernel<"compare"> = (ins, inAvals, p, out) => {
      const dt = inAvals[0].dtype;
      if (dt === "f32" || dt === "i32" || dt === "u32") return [this.#ew(p.op, dt, ins, "bool", out[0].shape)];
      const f = JS_CMP[p.op];
      return [this.#map(ins, "bool", out[0].shape, (a, b) => (f(a, b) ? 1 : 0))];
    };
    const cum = (mul: boolean): Kernel<"cumsum" | "cumprod"> => (ins, inAvals, p, out) => {
      const h = this.#contig(ins[0]);
      const [outer, n, inner] = around(inAvals[0].shape, p.axis);
      const yh = this.#fresh(out[0].dtype, out[0].shape);
      const x = this.#vals(h);
      const y = this.#tv(out[0].dtype, yh.st.ptr, x.length);
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
      this.#drop(h.st);
      return [yh];
    };
    return {
      neg: this.#unary("neg"),
      exp: this.#unary("exp"),
      log: this.#unary("log"),
      sin: this.#unary("sin"),
      cos: this.#unary("cos"),
      tanh: this.#unary("tanh"),
      sqrt: this.#unary("sqrt"),
      rsqrt: this.#unary("rsqrt"),
      abs: this.#unary("abs"),
      sign: this.#unary("sign"),
      erf: this.#unary("erf"),
      floor: this.#unary("floor"),
      sigmoid: this.#unary("sigmoid"),
      log1p: this.#unary("log1p"),
      expm1: this.#unary("expm1"),
      gelu: this.#unary("gelu"),
      geluTanh: this.#unary("geluTanh"),
      geluGrad: this.#unary("geluGrad"),
      geluTanhGrad: this.#unary("geluTanhGrad"),
      // One fused row kernel each for f32; other dtypes run the composite of simpler primitives.
      layerNorm: (ins, inAvals, p, out) => [
        inAvals[0].dtype === "f32"
          ? this.#rows("layernorm_f32", ins[0], out[0], [p.eps, 1 / out[0].shape[out[0].shape.length - 1]])
          : layerNormVia(this, ins[0], inAvals[0], p.eps) as WHandle,
      ],
      adamw: (ins, inAvals, p) => this.#adamw(ins, inAvals[0], p),
      softmax: (ins, inAvals, _p, out) => [
        inAvals[0].dtype === "f32"
          ? this.#rows("softmax_f32", ins[0], out[0])
          : softmaxVia(this, ins[0], inAvals[0]) as WHandle,
      ],
      add: this.#binary("add"),
      sub: this.#binary("sub"),
      mul: this.#binary("mul"),
      div: this.#binary("div"),
      pow: this.#binary("pow"),
      maximum: this.#binary("maximum"),
      minimum: this.#binary("minimum"),
      compare: cmp,
      where: (ins, inAvals, _p, out) => {
        const dt = inAvals[1].dtype;
        if (dt === "f32" || dt === "i32" || dt === "u32") return [this.#ew("where", "x32", ins, dt, out[0].shape)];
        return [this.#map(ins, dt, out[0].shape, (c, a, b) => (c ? a : b))];
      },
      cast: (ins, inAvals, p, out) => {
        const from = inAvals[0].dtype;
        const k = castKernel(from, p.dtype);
        if (k === "same") return [this.#contigCopy(ins[0], p.dtype)];
        if (k) return [this.#ew(`cast_${k}`, "x", ins, p.dtype, out[0].shape)];
        if (p.dtype === "bool") return [this.#map(ins, "bool", out[0].shape, (x) => (x !== 0 ? 1 : 0))];
        if ((p.dtype === "i32" || p.dtype === "u32") && (from === "f32" || from === "f64")) {
          // Truncate toward zero as C casts do; NaN and infinities become 0 (the typed-array store wraps).
          return [this.#map(ins, p.dtype, out[0].shape, (x) => (Number.isFinite(x) ? Math.trunc(x) : 0))];
        }
        return [this.#map(ins, p.dtype, out[0].shape, (x) => x)];
      },
      sum: this.#reduce("sum"),
      max: this.#reduce("max"),
      argmax: (ins, inAvals, p, out) => {
        const h = this.#contig(ins[0]);
        const [outer, n, inner] = around(inAvals[0].shape, p.axis);
        const yh = this.#fresh("i32", out[0].shape);
        const x = this.#vals(h);
        const y = this.#tv("i32", yh.st.ptr, outer * inner);
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
        this.#drop(h.st);
        return [yh];
      },
      cumsum: cum(false),
      cumprod: cum(true),
      dot: this.#dot,
      conv: this.#conv,
      gather: (ins, inAvals, p, out) => {
        const ih = this.#contig(ins[1]);
        const [outer, n, inner] = around(inAvals[0].shape, p.axis);
        const m = size(ih.shape);
        this.#checkIndices("gather", ih, n);
        const xh = this.#contig(ins[0]);
        const yh = this.#fresh(out[0].dtype, out[0].shape);
        const idx = this.#vals(ih);
        const es = esize(out[0].dtype);
        const u8 = this.rt.u8;
        const xa = this.#addr(xh), ya = yh.st.ptr, rowB = inner * es;
        for (let o = 0; o < outer; o++) {
          for (let k = 0; k < m; k++) {
            const src = xa + ((o * n + idx[k]) * inner) * es;
            u8.copyWithin(ya + (o * m + k) * rowB, src, src + rowB);
          }
        }
        this.#drop(ih.st);
        this.#drop(xh.st);
        return [yh];
      },
      scatterAdd: (ins, inAvals, p, out) => {
        const ih = this.#contig(ins[1]);
        this.#checkIndices("scatterAdd", ih, p.size);
        const uh = this.#contig(ins[0]);
        const m = size(ih.shape);
        const outer = size(inAvals[0].shape.slice(0, p.axis));
        const inner = size(inAvals[0].shape.slice(p.axis + inAvals[1].shape.length));
        const n = p.size;
        const dt = out[0].dtype;
        const yh = this.#fresh(dt, out[0].shape);
        const u = this.#vals(uh), idx = this.#vals(ih);
        const y = this.#tv(dt, yh.st.ptr, outer * n * inner);
        if (dt === "f32") {
          // Accumulate in f64 like the cpu backend, so repeated indices round once.
          const acc = new Float64Array(outer * n * inner);
          for (let o = 0; o < outer; o++) {
            for (let k = 0; k < m; k++) {
              const src = (o * m + k) * inner, dst = (o * n + idx[k]) * inner;
              for (let j = 0; j < inner; j++) acc[dst + j] += u[src + j];
            }
          }
          y.set(acc);
        } else {
          const acc = new Float64Array(outer * n * inner);
          for (let o = 0; o < outer; o++) {
            for (let k = 0; k < m; k++) {
              const src = (o * m + k) * inner, dst = (o * n + idx[k]) * inner;
              for (let j = 0; j < inner; j++) acc[dst + j] += u[src + j];
            }
          }
          for (let i = 0; i < acc.length; i++) y[i] = acc[i];
        }
        this.#drop(uh.st);
        this.#drop(ih.st);
        return [yh];
      },
      reshape: (ins, _a, p) => {
        const h = ins[0];
        const st = reshapeStrides(h.shape, h.strides, p.shape);
        if (st) return [this.#view(h, p.shape, st, h.offset)];
        const c = this.#contig(h);
        return [{ st: c.st, shape: p.shape, strides: stridesOf(p.shape), offset: 0 }];
      },
      transpose: (ins, _a, p) => {
        const h = ins[0];
        return [this.#view(h, p.perm.map((a) => h.shape[a]), p.perm.map((a) => h.strides[a]), h.offset)];
      },
      broadcast: (ins, _a, p) => {
        const h = ins[0];
        const off = p.shape.length - h.shape.length;
        const strides = p.shape.map((d, i) => {
          const j = i - off;
          return j < 0 || h.shape[j] !== d ? 0 : h.strides[j];
        });
        return [this.#view(h, p.shape, strides, h.offset)];
      },
      slice: (ins, _a, p, out) => {
        const h = ins[0];
        let offset = h.offset;
        h.shape.forEach((_, i) => (offset += p.starts[i] * h.strides[i]));
        return [this.#view(h, out[0].shape, h.strides.map((s, i) => s * p.steps[i]), offset)];
      },
      flip: (ins, _a, p) => {
        const h = ins[0];
        let offset = h.offset;
        const strides = h.strides.map((s, i) => {
          if (!p.axes.includes(i)) return s;
          if (h.shape[i] > 0) offset += (h.shape[i] - 1) * s;
          return -s;
        });
        return [this.#view(h, h.shape, strides, offset)];
      },
      pad: (ins, inAvals, p, out) => {
        const y = this.#fresh(out[0].dtype, out[0].shape);
        this.rt.u8.fill(0, y.st.ptr, y.st.ptr + y.st.bytes);
        const os = stridesOf(out[0].shape);
        let off = 0;
        const ds = os.map((s, a) => {
          off += p.widths[a][0] * s;
          return s * (p.widths[a][2] + 1);
        });
        this.#copy(y.st.ptr + off * esize(out[0].dtype), ds, ins[0], inAvals[0].shape);
        return [y];
      },
      concat: (ins, inAvals, p, out) => {
        const y = this.#fresh(out[0].dtype, out[0].shape);
        const os = stridesOf(out[0].shape);
        const es = esize(out[0].dtype);
        let base = 0;
        ins.forEach((h, t) => {
          this.#copy(y.st.ptr + base * os[p.axis] * es, os, h, inAvals[t].shape);
          base += inAvals[t].shape[p.axis];
        });
        return [y];
      },
      random: (_ins, _a, p, out) => {
        const n = size(p.shape);
        const yh = this.#fresh(out[0].dtype, out[0].shape);
        if (n === 0) return [yh];
        const y = this.#tv(out[0].dtype, yh.st.ptr, n);
        if (p.dist === "bits") threefryBits(p.key[0], p.key[1], n, y as Uint32Array<ArrayBuffer>);
        else if (p.dtype === "f64") {
          const bits = threefryBits(p.key[0], p.key[1], 2 * n);
          for (let i = 0; i < n; i++) y[i] = ((bits[i] >>> 5) * 67108864 + (bits[n + i] >>> 6)) / 9007199254740992;
        } else {
          const bits = threefryBits(p.key[0], p.key[1], n);
          for (let i = 0; i < n; i++) y[i] = bitsToUnitF32(bits[i]);
        }
        return [yh];
      },
    };
  }

  // ------------------------------------------------------------ Backend interface

  fromHost(data: TypedArray, aval: Aval): Handle {
    const n = size(aval.shape);
    if (data.length !== n) {
      throw new DifflabError(`wasm: ${data.length} values do not fill shape ${fmtShape(aval.shape)}`);
    }
    const h = this.#fresh(aval.dtype, aval.shape);
    if (n > 0) this.#tv(aval.dtype, h.st.ptr, n).set(data as ArrayLike<number>);
    return h;
  }

  read(h: Handle, aval: Aval): Promise<TypedArray> {
    return Promise.resolve(this.readSync(h, aval));
  }

  readSync(h: Handle, aval: Aval): TypedArray {
    const w = h as WHandle;
    if (w.st.refs <= 0) throw new DifflabError(`wasm: read of released storage (tensor ${fmtShape(aval.shape)})`);
    const c = this.#contig(w);
    const v = this.#tv(aval.dtype, this.#addr(c), size(aval.shape)).slice() as TypedArray;
    this.#drop(c.st);
    return v;
  }

  run<P extends Prim>(
    prim: P,
    inputs: Handle[],
    inAvals: readonly Aval[],
    params: ParamsOf[P],
    outAvals: readonly Aval[],
  ): Handle[] {
    for (const a of inAvals) esize(a.dtype);
    for (const a of outAvals) esize(a.dtype);
    return this.kernels[prim](inputs as WHandle[], inAvals, params, outAvals);
  }

  retain(h: Handle): Handle {
    const w = h as WHandle;
    return this.#view(w, w.shape, w.strides, w.offset);
  }

  release(h: Handle): void {
    this.#drop((h as WHandle).st);
  }

  liveBuffers(): number {
    return this.#live;
  }
}
