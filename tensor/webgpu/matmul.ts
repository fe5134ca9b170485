/**
 * @file Batched matmul `[B,M,K] x [B,K,N] -> [B,M,N]` with register blocking:
 * each thread accumulates an R x 4V block of C in registers and no workgroup
 * memory is used (on llvmpipe this is ~3x faster than shared-memory tiles;
 * see research/perf-baselines.md). Operands are strided views: each operand
 * is loaded in the widest mode its strides allow, so transposed operands
 * (the backward pass of a linear layer) stay vectorized without a copy:
 *
 * - A: `k4` (contiguous along K: vec4 over k), `m4` (contiguous along M,
 *   i.e. a transposed operand: vec4 over rows), or `s` (any strides).
 * - B: `n4` (contiguous along N), `k4` (contiguous along K, transposed), or `s`.
 *
 * Shapes and strides are uniforms, so one pipeline serves every size.
 */
import type { DType } from "../dtype.ts";
import { DifflabError, fmtShape } from "../errors.ts";
import { elemBytes, enables, fromStore, regType, storeType, toStore, Uniforms } from "./codegen.ts";
import type { Binding, Engine } from "./engine.ts";
import { spanOf } from "./launch.ts";
import type { View } from "./reduce.ts";

type AMode = "k4" | "m4" | "s";
type BMode = "n4" | "k4" | "s";

interface Config {
  a: AMode;
  b: BMode;
  c: "v4" | "s";
  R: number;
  V: number;
  WX: number;
  WY: number;
  dtype: DType;
  /** Add into C instead of overwriting it (split-K chunks after the first). */
  accumulate: boolean;
  /** Interleave a thread's column vec4s WX apart (neighbouring threads read neighbouring vec4s). */
  inter: boolean;
}

const U_FIELDS = [
  "M",
  "N",
  "K",
  "nb",
  "tilesN",
  "tilesM",
  "gridX",
  "oa",
  "sab",
  "sam",
  "sak",
  "ob",
  "sbb",
  "sbk",
  "sbn",
  "oc",
  "scb",
  "ldc",
] as const;

function source(cfg: Config): string {
  const { a, b, c, R, V, WX, WY, dtype, accumulate, inter } = cfg;
  // Column of vec4 v of this thread: c0 + v * CS (+ q for its lanes).
  const CS = inter ? 4 * WX : 4;
  const C = 4 * V;
  const rows = [...Array(R).keys()], vs = [...Array(V).keys()], js = [0, 1, 2, 3], cols = [...Array(C).keys()];
  const T = regType(dtype);
  const isF = T === "f32";
  const VT = `vec4<${T}>`;
  const ST = storeType(dtype);
  const aT = a === "s" ? ST : `vec4<f32>`, bT = b === "s" ? ST : `vec4<f32>`;
  const cT = c === "s" ? ST : `vec4<f32>`;
  const u = new Uniforms();
  for (const f of U_FIELDS) u.field(f);
  const ld = (
    arr: string,
    idx: string,
    mode: string,
  ) => (mode === "s" ? fromStore(dtype, `${arr}[${idx}]`) : `${arr}[${idx}]`);
  let s = `${enables([dtype])}${u.decl()}
@group(0) @binding(1) var<storage, read_write> Cm: array<${cT}>;
@group(0) @binding(2) var<storage, read> A: array<${aT}>;
@group(0) @binding(3) var<storage, read> B: array<${bT}>;
@compute @workgroup_size(${WX}, ${WY})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
  let wid = wg.x + wg.y * p.gridX;
  let per = p.tilesN * p.tilesM;
  let bt = wid / per;
  if (bt >= p.nb) { return; }
  let rem = wid - bt * per;
  let tm = rem / p.tilesN;
  let tn = rem - tm * p.tilesN;
  let r0 = tm * ${R * WY}u + l.y * ${R}u;
  let c0 = tn * ${C * WX}u + l.x * ${inter ? 4 : C}u;
  if (r0 >= p.M || c0 >= p.N) { return; }
  let abase = p.oa + bt * p.sab;
  let bbase = p.ob + bt * p.sbb;
  ${rows.flatMap((i) => vs.map((v) => `var acc${i}_${v} = ${VT}();`)).join(" ")}
`;
  // Per-row / per-column bases.
  if (a !== "m4") s += rows.map((i) => `  let ar${i} = abase + min(r0 + ${i}u, p.M - 1u) * p.sam;`).join("\n") + "\n";
  else s += `  let am0 = abase + r0 / 4u;\n`;
  const colOf = (j: number) => (j >> 2) * CS + (j & 3);
  if (b === "n4") s += `  let bc = bbase + c0 / 4u;\n`;
  else s += cols.map((j) => `  let bc${j} = bbase + min(c0 + ${colOf(j)}u, p.N - 1u) * p.sbn;`).join("\n") + "\n";
  // Loaders for one k: \`pre\` declares temporaries suffixed by \`tag\`; \`val\` gives a(i) (scalar) or b(v) (vec4).
  const aAt = (k: string, tag: string): { pre: string; val: (i: number) => string } => {
    if (a === "m4") {
      const pre = [...Array(R / 4).keys()].map((q) => `let am${q}${tag} = A[am0 + (${k}) * p.sak + ${q}u];`).join(" ");
      return { pre, val: (i) => `am${i >> 2}${tag}[${i & 3}]` };
    }
    return { pre: "", val: (i) => ld("A", `ar${i} + (${k}) * p.sak`, "s") };
  };
  const bAt = (k: string, tag: string): { pre: string; val: (v: number) => string } => {
    if (b === "n4") {
      return {
        pre: vs.map((v) => `let bn${v}${tag} = B[bc + (${k}) * p.sbk + ${(v * CS) / 4}u];`).join(" "),
        val: (v) => `bn${v}${tag}`,
      };
    }
    return {
      pre: "",
      val: (v) => `${VT}(${[0, 1, 2, 3].map((q) => ld("B", `bc${4 * v + q} + (${k}) * p.sbk`, "s")).join(", ")})`,
    };
  };
  const fma = (
    acc: string,
    x: string,
    y: string,
  ) => (isF ? `${acc} = fma(${VT}(${x}), ${y}, ${acc});` : `${acc} = ${acc} + ${VT}(${x}) * ${y};`);
  const vecK = a === "k4" || b === "k4";
  s += `  let k4end = ${vecK ? "p.K" : "p.K & ~3u"};\n`;
  s += `  for (var k = 0u; k < k4end; k = k + 4u) {\n`;
  // B values for k..k+3: bj_v.
  if (b === "k4") {
    s += `    ${cols.map((j) => `let bk${j} = B[bc${j} + k / 4u];`).join(" ")}\n`;
    for (const v of vs) {
      s += `    ${
        js.map((j) =>
          `let b${j}_${v} = ${VT}(bk${4 * v}[${j}], bk${4 * v + 1}[${j}], bk${4 * v + 2}[${j}], bk${4 * v + 3}[${j}]);`
        ).join(" ")
      }\n`;
    }
  } else {
    for (const j of js) {
      const bl = bAt(`k + ${j}u`, `_${j}`);
      s += `    ${bl.pre} ${vs.map((v) => `let b${j}_${v} = ${bl.val(v)};`).join(" ")}\n`;
    }
  }
  // A values and FMAs.
  if (a === "k4") {
    s += `    ${rows.map((i) => `let a${i} = A[ar${i} + k / 4u];`).join(" ")}\n`;
    for (const i of rows) {
      s += `    ${
        vs.map((v) => js.map((j) => fma(`acc${i}_${v}`, `a${i}[${j}]`, `b${j}_${v}`)).join(" ")).join(" ")
      }\n`;
    }
  } else {
    for (const j of js) {
      const al = aAt(`k + ${j}u`, `_${j}`);
      s += `    ${al.pre} ${rows.map((i) => `let a${i}_${j} = ${al.val(i)};`).join(" ")}\n`;
    }
    for (const i of rows) {
      s += `    ${vs.map((v) => js.map((j) => fma(`acc${i}_${v}`, `a${i}_${j}`, `b${j}_${v}`)).join(" ")).join(" ")}\n`;
    }
  }
  s += `  }\n`;
  if (!vecK) {
    // K tail, one k at a time.
    const al = aAt("k", "_t"), bl = bAt("k", "_t");
    s += `  for (var k = k4end; k < p.K; k = k + 1u) {
    ${al.pre} ${bl.pre}
    ${rows.map((i) => vs.map((v) => fma(`acc${i}_${v}`, al.val(i), bl.val(v))).join(" ")).join("\n    ")}
  }\n`;
  }
  // Stores.
  for (const i of rows) {
    s += `  if (r0 + ${i}u < p.M) {\n`;
    for (const v of vs) {
      if (c === "v4") {
        const at = `Cm[p.oc + bt * p.scb + (r0 + ${i}u) * p.ldc + c0 / 4u + ${(v * CS) / 4}u]`;
        s += `    if (c0 + ${v * CS}u < p.N) { ${at} = ${accumulate ? `${at} + ` : ""}acc${i}_${v}; }\n`;
      } else {
        for (const q of js) {
          const at = `Cm[p.oc + bt * p.scb + (r0 + ${i}u) * p.ldc + c0 + ${v * CS + q}u]`;
          const val = accumulate ? `${fromStore(dtype, at)} + acc${i}_${v}[${q}]` : `acc${i}_${v}[${q}]`;
          s += `    if (c0 + ${v * CS + q}u < p.N) { ${at} = ${toStore(dtype, val)}; }\n`;
        }
      }
    }
    s += `  }\n`;
  }
  return s + "}\n";
}

/** One matmul problem over views (element units) writing C rows with stride `ldc`. */
interface Problem {
  a: View;
  b: View;
  c: { buf: GPUBuffer; offset: number; scb: number; ldc: number };
  nb: number;
  M: number;
  N: number;
  K: number;
}

const aligned4 = (...xs: number[]) => xs.every((x) => x % 4 === 0);

function chooseConfig(p: Problem, dtype: DType, accumulate: boolean): Config {
  const [, sam, sak] = p.a.strides, [, sbk, sbn] = p.b.strides;
  const sab = p.nb > 1 ? p.a.strides[0] : 0, sbb = p.nb > 1 ? p.b.strides[0] : 0;
  const vec = dtype === "f32";
  let a: AMode = "s", b: BMode = "s";
  if (vec && (sak === 1 || p.K === 1) && aligned4(p.K, sam, sab, p.a.offset)) a = "k4";
  else if (vec && (sam === 1 || p.M === 1) && aligned4(sak, sab, p.a.offset)) a = "m4";
  if (vec && (sbn === 1 || p.N === 1) && aligned4(sbk, sbb, p.b.offset)) b = "n4";
  else if (vec && (sbk === 1 || p.K === 1) && aligned4(p.K, sbn, sbb, p.b.offset)) b = "k4";
  const c = vec && aligned4(p.N, p.c.ldc, p.c.scb, p.c.offset) ? "v4" : "s";
  // 16x16 blocks per thread measured fastest on llvmpipe (~30% less CPU than 8x8, transposed operands
  // included). Small problems get smaller blocks (fewer clamped duplicate rows/columns), and the scalar
  // load modes (odd sizes, unaligned views) at most 8x8, whose kernels compile several times faster.
  // Two sizes per axis only: every variant is a pipeline to compile (~0.2 s each on llvmpipe).
  const full = a !== "s" && b !== "s";
  const R = p.M < 8 ? 4 : full ? 16 : 8;
  const V = p.N < 8 ? 1 : full ? 4 : 2;
  // llvmpipe runs 8 invocations per SIMD step, x fastest: for narrow outputs use fewer
  // threads along x (more along y) so no lane idles past column N.
  let WX = 8;
  while (WX > 1 && (WX / 2) * 4 * V >= p.N) WX /= 2;
  const WY = 32 / WX;
  return { a, b, c, R, V, WX, WY, dtype, accumulate, inter: false, ...tuning };
}

let tuning: Partial<Config> = {};
/** Overrides the tile configuration (tuning scripts only). */
export function setMatmulTuning(t: Partial<Config>): void {
  tuning = t;
}

function vecUnits(cfg: Config, p: Problem) {
  const [sab0, sam, sak] = p.a.strides, [sbb0, sbk, sbn] = p.b.strides;
  const sab = p.nb > 1 ? sab0 : 0, sbb = p.nb > 1 ? sbb0 : 0;
  const a = cfg.a === "k4"
    ? [p.a.offset / 4, sab / 4, sam / 4, 1]
    : cfg.a === "m4"
    ? [p.a.offset / 4, sab / 4, 1, sak / 4]
    : [
      p.a.offset,
      sab,
      sam,
      sak,
    ];
  const b = cfg.b === "n4"
    ? [p.b.offset / 4, sbb / 4, sbk / 4, 1]
    : cfg.b === "k4"
    ? [p.b.offset / 4, sbb / 4, 1, sbn / 4]
    : [
      p.b.offset,
      sbb,
      sbk,
      sbn,
    ];
  const c = cfg.c === "v4" ? [p.c.offset / 4, p.c.scb / 4, p.c.ldc / 4] : [p.c.offset, p.c.scb, p.c.ldc];
  return { a, b, c };
}

function dispatchProblem(
  engine: Engine,
  p: Problem,
  bindings: Binding[],
  shapeForErr: readonly number[],
  accumulate = false,
) {
  const dtype = p.a.dtype;
  const cfg = chooseConfig(p, dtype, accumulate);
  const key = `mm|${cfg.a}|${cfg.b}|${cfg.c}|${cfg.R}|${cfg.V}|${cfg.WX}|${cfg.WY}|${dtype}|${accumulate}|${cfg.inter}`;
  const pipe = engine.pipe(key, 1, 2, false, () => source(cfg));
  const tilesM = Math.ceil(p.M / (cfg.R * cfg.WY)), tilesN = Math.ceil(p.N / (4 * cfg.V * cfg.WX));
  const groups = engine.grid(p.nb * tilesM * tilesN, "matmul", shapeForErr);
  const { a, b, c } = vecUnits(cfg, p);
  const u = [p.M, p.N, p.K, p.nb, tilesN, tilesM, groups[0], ...a, ...b, ...c];
  engine.dispatch(pipe, u, bindings, groups, `${p.nb}x${p.M}x${p.K}x${p.N}`);
}

/**
 * C = A @ B for views A [B,M,K] and B [B,K,N] into `out` (row-major [B,M,N] unless `cl`
 * gives C's element offset, batch stride and row stride).
 * Splits the problem by batch, rows and columns when operands exceed the
 * binding limit.
 */
export function matmul(
  engine: Engine,
  A: View,
  B: View,
  out: GPUBuffer,
  cl: { offset: number; scb: number; ldc: number } = { offset: 0, scb: A.shape[1] * B.shape[2], ldc: B.shape[2] },
): void {
  const [nb, M, K] = A.shape;
  const N = B.shape[2];
  if (nb * M * N === 0) return;
  const dtype = A.dtype;
  const eb = elemBytes(dtype);
  if (K === 0) throw new DifflabError(`webgpu: dot with K = 0 must be handled by the caller`);
  const whole: Problem = { a: A, b: B, c: { buf: out, offset: cl.offset, scb: cl.scb, ldc: cl.ldc }, nb, M, N, K };
  const limit = engine.maxBinding;
  if (A.buf.size <= limit && B.buf.size <= limit && out.size <= limit) {
    dispatchProblem(engine, whole, [
      { buf: out, offset: 0, size: out.size },
      { buf: A.buf, offset: 0, size: A.buf.size },
      { buf: B.buf, offset: 0, size: B.buf.size },
    ], A.shape);
    return;
  }
  // Windowed: one batch at a time, rows and columns halved until every window fits.
  const align = engine.storageAlign;
  const win = (buf: GPUBuffer, lo: number, hi: number): [Binding, number] | null => {
    const start = Math.floor((lo * eb) / align) * align;
    const end = Math.min(Math.ceil(((hi + 1) * eb) / 4) * 4, buf.size);
    if (end - start > limit) return null;
    return [{ buf, offset: start, size: Math.max(4, end - start) }, start / eb];
  };
  // Halve rows, then columns, then K (later K chunks add into C) until every window fits.
  const sub = (bi: number, m0: number, m1: number, n0: number, n1: number, k0: number, k1: number, acc: boolean) => {
    const aOff = A.offset + bi * A.strides[0] + m0 * A.strides[1] + k0 * A.strides[2];
    const bOff = B.offset + bi * B.strides[0] + k0 * B.strides[1] + n0 * B.strides[2];
    const cOff = cl.offset + bi * cl.scb + m0 * cl.ldc + n0;
    const kk = k1 - k0;
    const aSpan = spanOf([m1 - m0, kk], [A.strides[1], A.strides[2]], aOff, 0, (m1 - m0) * kk);
    const bSpan = spanOf([kk, n1 - n0], [B.strides[1], B.strides[2]], bOff, 0, kk * (n1 - n0));
    const cSpan: [number, number] = [cOff, cOff + (m1 - m0 - 1) * cl.ldc + (n1 - n0 - 1)];
    const wa = win(A.buf, ...aSpan), wb = win(B.buf, ...bSpan), wc = win(out, ...cSpan);
    if (!wa || !wb || !wc) {
      if (m1 - m0 > 1 && (!wa || !wc)) {
        const mid = m0 + Math.ceil((m1 - m0) / 2);
        sub(bi, m0, mid, n0, n1, k0, k1, acc);
        sub(bi, mid, m1, n0, n1, k0, k1, acc);
      } else if (n1 - n0 > 1 && (!wb || !wc)) {
        const mid = n0 + Math.ceil((n1 - n0) / 2);
        sub(bi, m0, m1, n0, mid, k0, k1, acc);
        sub(bi, m0, m1, mid, n1, k0, k1, acc);
      } else if (kk > 1 && wc) {
        const half = Math.ceil(kk / 2);
        const mid = k0 + (half > 4 ? Math.ceil(half / 4) * 4 : half);
        sub(bi, m0, m1, n0, n1, k0, mid, acc);
        sub(bi, m0, m1, n0, n1, mid, k1, true);
      } else {
        throw new DifflabError(
          `webgpu: dot ${fmtShape(A.shape)} x ${
            fmtShape(B.shape)
          }: a single output element's operands need more than maxStorageBufferBindingSize (${limit} bytes)`,
        );
      }
      return;
    }
    const p: Problem = {
      a: { ...A, offset: aOff - wa[1], strides: [0, A.strides[1], A.strides[2]] },
      b: { ...B, offset: bOff - wb[1], strides: [0, B.strides[1], B.strides[2]] },
      c: { buf: out, offset: cOff - wc[1], scb: 0, ldc: cl.ldc },
      nb: 1,
      M: m1 - m0,
      N: n1 - n0,
      K: kk,
    };
    dispatchProblem(engine, p, [wc[0], wa[0], wb[0]], A.shape, acc);
  };
  for (let bi = 0; bi < nb; bi++) sub(bi, 0, M, 0, N, 0, K, false);
}
