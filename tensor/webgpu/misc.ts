/**
 * @file The remaining kernels: gather (take), scatterAdd (its transpose) and
 * counter-based random bits. (pad is a zero fill plus a strided copy, in backend.ts.)
 *
 * Index errors cannot throw from a GPU kernel, so gather/scatterAdd raise a
 * shared flag that the next read turns into a DifflabError (the cpu backend
 * throws at once; the results of an out-of-range gather are zeros).
 */
import type { DType } from "../dtype.ts";
import { size, stridesOf } from "../shape.ts";
import {
  DIV_SRC,
  elemBytes,
  enables,
  fdiv,
  fromStore,
  magic,
  magics,
  offsetExpr,
  storeType,
  THREAD_INDEX,
  toStore,
  Uniforms,
  unravel,
  WG,
} from "./codegen.ts";
import { coalesce } from "./elementwise.ts";
import type { Engine } from "./engine.ts";
import { launch, spanOf } from "./launch.ts";
import type { View } from "./reduce.ts";

/** Error codes of the shared index-error flag. */
export const FLAG_GATHER = 1, FLAG_SCATTER = 2;

function fullSpan(v: View): (s: number, e: number) => [number, number] {
  const n = size(v.shape);
  return () => (n === 0 ? [v.offset, v.offset] : spanOf(v.shape, v.strides, v.offset, 0, n));
}

/** out = take(x, idx, axis) into contiguous `out` of shape `outShape`. */
export function gather(
  engine: Engine,
  x: View,
  idx: View,
  axis: number,
  outShape: readonly number[],
  out: GPUBuffer,
): void {
  const n = size(outShape);
  if (n === 0) return;
  engine.flagMessage(FLAG_GATHER, `gather: an index is out of range for the gathered axis`);
  const q = idx.shape.length;
  const rx = x.shape.length;
  const outStr = stridesOf(outShape);
  const xStr: number[] = [], iStr: number[] = [];
  for (let a = 0; a < outShape.length; a++) {
    if (a < axis) {
      xStr.push(x.strides[a]);
      iStr.push(0);
    } else if (a < axis + q) {
      xStr.push(0);
      iStr.push(idx.strides[a - axis]);
    } else {
      xStr.push(x.strides[a - q + 1]);
      iStr.push(0);
    }
  }
  void rx;
  const co = coalesce(outShape, [outStr, xStr, iStr]);
  const r = co.shape.length;
  const d = x.dtype;
  const key = `gather|${d}|${r}`;
  const pipe = engine.pipe(key, 1, 2, true, () => {
    const u = new Uniforms();
    const nU = u.field("n"), base = u.field("base");
    u.field("gx");
    const sh = u.divisors("sh", r);
    const xo = u.field("xo"), xs = u.fields("xs", r), xa = u.field("xa"), na = u.field("na");
    const a0 = u.field("a0"), a1 = u.field("a1");
    const io = u.field("io"), is = u.fields("is", r);
    const oo = u.field("oo");
    return `${enables([d])}${u.decl()}
@group(0) @binding(1) var<storage, read_write> out: array<${storeType(d)}>;
@group(0) @binding(2) var<storage, read> X: array<${storeType(d)}>;
@group(0) @binding(3) var<storage, read> I: array<i32>;
@group(0) @binding(4) var<storage, read_write> flag: array<atomic<u32>>;
${DIV_SRC}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  ${THREAD_INDEX}
  if (t >= ${nU}) { return; }
  let f = ${base} + t;
${unravel("f", sh, "i")}  let v = I[${offsetExpr(io, is, "i")}];
  if (v < 0 || u32(v) >= ${na}) {
    atomicMax(&flag[0], ${FLAG_GATHER}u);
    out[${oo} + f] = ${storeType(d)}(0);
    return;
  }
  // Only the slab of the gathered axis bound in this dispatch is written.
  if (u32(v) < ${a0} || u32(v) >= ${a1}) { return; }
  out[${oo} + f] = X[${offsetExpr(xo, xs, "i")} + (u32(v) - ${a0}) * ${xa}];
}
`;
  });
  const eb = elemBytes(d);
  const m = size(idx.shape);
  const inner = size(x.shape.slice(axis + 1));
  const nAxis = x.shape[axis];
  const slabShape = (len: number) => x.shape.map((v, i) => (i === axis ? len : v));
  // The gathered axis is bound in slabs small enough that one output row's slab fits a binding.
  const fits = (len: number) => {
    const [lo, hi] = spanOf(slabShape(len), x.strides, x.offset, 0, len * inner);
    return (hi - lo + 1) * eb + engine.storageAlign + 4 <= engine.maxBinding;
  };
  let slab = Math.max(nAxis, 1);
  if (x.buf.size > engine.maxBinding) { while (slab > 1 && !fits(slab)) slab = Math.ceil(slab / 2); }
  for (let a0 = 0; a0 < Math.max(nAxis, 1); a0 += slab) {
    const len = Math.min(slab, nAxis - a0);
    const base = x.offset + a0 * x.strides[axis];
    const xSpan = (s: number, e: number): [number, number] => {
      // Items [s, e) cover outer rows [s / (m*inner), (e-1) / (m*inner)] and the slab of the gathered axis.
      const rowItems = m * inner, rowX = len * inner;
      const o0 = Math.floor(s / rowItems), o1 = Math.floor((e - 1) / rowItems);
      if (rowX === 0) return [base, base];
      return spanOf(slabShape(len), x.strides, base, o0 * rowX, (o1 + 1) * rowX);
    };
    launch(engine, pipe, "gather", n, [
      { buf: out, eb, offset: 0, span: (s, e) => [s, e - 1], shape: outShape },
      { buf: x.buf, eb, offset: base, span: xSpan, shape: x.shape },
      { buf: idx.buf, eb: 4, offset: idx.offset, span: fullSpan(idx), shape: idx.shape },
    ], (s, e, offs, gx) => [
      e - s,
      s,
      gx,
      ...magics(co.shape),
      offs[1],
      ...co.strides[1],
      x.strides[axis],
      nAxis,
      a0,
      a0 + len,
      offs[2],
      ...co.strides[2],
      offs[0],
    ]);
  }
}

/**
 * out[outer, size, inner] = Σ_k [idx[k] == t] u[outer, k, inner]; `u` and
 * `idx` must be contiguous views (the caller copies otherwise).
 */
export function scatterAdd(
  engine: Engine,
  u: View,
  idx: View,
  outer: number,
  sz: number,
  inner: number,
  out: GPUBuffer,
  outShape: readonly number[],
): void {
  const n = outer * sz * inner;
  if (n === 0) return;
  engine.flagMessage(FLAG_SCATTER, `scatterAdd: an index is out of range for the scattered axis`);
  const m = size(idx.shape);
  const d = u.dtype;
  const key = `scatter|${d}`;
  const pipe = engine.pipe(key, 1, 2, true, () => {
    const U = new Uniforms();
    const nU = U.field("n"), base = U.field("base");
    U.field("gx");
    const M = U.field("m"), S = U.divisor("size"), IN = U.divisor("inner");
    const K0 = U.field("k0"), K1 = U.field("k1"), ACC = U.field("acc");
    const uo = U.field("uo"), io = U.field("io"), oo = U.field("oo");
    const T = d === "f32" || d === "f16" ? "f32" : d === "i32" ? "i32" : "u32";
    return `${enables([d])}${U.decl()}
@group(0) @binding(1) var<storage, read_write> out: array<${storeType(d)}>;
@group(0) @binding(2) var<storage, read> Up: array<${storeType(d)}>;
@group(0) @binding(3) var<storage, read> I: array<i32>;
@group(0) @binding(4) var<storage, read_write> flag: array<atomic<u32>>;
${DIV_SRC}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  ${THREAD_INDEX}
  if (t >= ${nU}) { return; }
  let f = ${base} + t;
  if (f == 0u) {
    for (var k = ${K0}; k < ${K1}; k = k + 1u) {
      let v = I[${io} + k];
      if (v < 0 || u32(v) >= ${S.d}) { atomicMax(&flag[0], ${FLAG_SCATTER}u); }
    }
  }
  let rest = ${fdiv("f", IN)};
  let j = f - rest * ${IN.d};
  let o = ${fdiv("rest", S)};
  let tt = i32(rest - o * ${S.d});
  var acc: ${T} = ${T}(0);
  if (${ACC} == 1u) { acc = ${d === "bool" ? `out[${oo} + f]` : fromStore(d, `out[${oo} + f]`)}; }
  for (var k = ${K0}; k < ${K1}; k = k + 1u) {
    if (I[${io} + k] == tt) { acc = acc + ${
      d === "bool"
        ? `Up[${uo} + (o * ${M} + k) * ${IN.d} + j]`
        : fromStore(d, `Up[${uo} + (o * ${M} + k) * ${IN.d} + j]`)
    }; }
  }
  out[${oo} + f] = ${d === "bool" ? "acc" : toStore(d, "acc")};
}
`;
  });
  const eb = elemBytes(d);
  // Indices are processed in slabs (later slabs add into the output) so one output's updates fit a binding.
  let slab = Math.max(m, 1);
  if (u.buf.size > engine.maxBinding || idx.buf.size > engine.maxBinding) {
    while (slab > 1 && ((slab - 1) * inner + 1) * eb + 2 * engine.storageAlign > engine.maxBinding) {
      slab = Math.ceil(slab / 2);
    }
  }
  for (let k0 = 0; k0 < Math.max(m, 1); k0 += slab) {
    const k1 = Math.min(m, k0 + slab);
    launch(
      engine,
      pipe,
      "scatterAdd",
      n,
      [
        { buf: out, eb, offset: 0, span: (s, e) => [s, e - 1], shape: outShape },
        {
          buf: u.buf,
          eb,
          offset: u.offset,
          span: (s, e) => {
            const o0 = Math.floor(s / (sz * inner)), o1 = Math.floor((e - 1) / (sz * inner));
            const oneRow = Math.floor(s / inner) === Math.floor((e - 1) / inner);
            const j0 = oneRow ? s % inner : 0, j1 = oneRow ? (e - 1) % inner : inner - 1;
            return [u.offset + (o0 * m + k0) * inner + j0, u.offset + (o1 * m + Math.max(k1 - 1, k0)) * inner + j1];
          },
          shape: u.shape,
        },
        {
          buf: idx.buf,
          eb: 4,
          offset: idx.offset,
          span: (): [number, number] => [idx.offset + k0, idx.offset + Math.max(k1 - 1, k0)],
          shape: idx.shape,
        },
      ],
      (
        s,
        e,
        offs,
        gx,
      ) => [e - s, s, gx, m, ...magic(sz), ...magic(inner), k0, k1, k0 > 0 ? 1 : 0, offs[1], offs[2], offs[0]],
    );
  }
}

const ROT0 = [13, 15, 26, 6], ROT1 = [17, 29, 16, 24];

/** WGSL threefry2x32 (20 rounds), the same u32 arithmetic as tensor/threefry.ts. */
function threefrySource(): string {
  let s = `fn rotl(x: u32, r: u32) -> u32 { return (x << r) | (x >> (32u - r)); }
fn threefry(k0: u32, k1: u32, x0: u32, x1: u32) -> vec2<u32> {
  let ks = array<u32, 3>(k0, k1, k0 ^ k1 ^ 0x1bd11bdau);
  var a = x0 + k0;
  var b = x1 + k1;
`;
  for (let i = 0; i < 5; i++) {
    for (const r of i % 2 === 0 ? ROT0 : ROT1) s += `  a = a + b; b = rotl(b, ${r}u); b = b ^ a;\n`;
    s += `  a = a + ks[${(i + 1) % 3}]; b = b + ks[${(i + 2) % 3}] + ${i + 1}u;\n`;
  }
  return s + "  return vec2<u32>(a, b);\n}\n";
}

/** Threefry bits (u32) or uniforms in [0, 1) for `n` elements into contiguous `out`. */
export function random(
  engine: Engine,
  key: readonly [number, number],
  dtype: DType,
  dist: "bits" | "uniform",
  n: number,
  out: GPUBuffer,
  shape: readonly number[],
): void {
  if (n === 0) return;
  const pkey = `random|${dtype}|${dist}`;
  const pipe = engine.pipe(pkey, 1, 0, false, () => {
    const u = new Uniforms();
    const nU = u.field("n"), base = u.field("base");
    u.field("gx");
    const k0 = u.field("k0"), k1 = u.field("k1"), half = u.field("half"), total = u.field("total"), oo = u.field("oo");
    const val = dist === "bits"
      ? "bits"
      : dtype === "f16"
      ? "f32(bits >> 22u) / 1024.0"
      : "f32(bits >> 9u) / 8388608.0";
    return `${enables([dtype])}${u.decl()}
@group(0) @binding(1) var<storage, read_write> out: array<${storeType(dtype)}>;
${threefrySource()}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  ${THREAD_INDEX}
  if (t >= ${nU}) { return; }
  let i = ${base} + t;
  var bits: u32;
  if (i < ${half}) {
    let c1 = i + ${half};
    bits = threefry(${k0}, ${k1}, i, select(0u, c1, c1 < ${total})).x;
  } else {
    bits = threefry(${k0}, ${k1}, i - ${half}, i).y;
  }
  out[${oo} + i] = ${toStore(dtype, val)};
}
`;
  });
  const half = Math.ceil(n / 2);
  launch(
    engine,
    pipe,
    "random",
    n,
    [{ buf: out, eb: elemBytes(dtype), offset: 0, span: (s, e) => [s, e - 1], shape }],
    (
      s,
      e,
      offs,
      gx,
    ) => [e - s, s, gx, key[0], key[1], half, n, offs[0]],
  );
}
