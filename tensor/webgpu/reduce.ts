/**
 * @file Reductions (sum, max, argmax) and scans (cumsum, cumprod).
 *
 * A reduction views its input as [kept..., reduced...] and gives each thread
 * one (part, output) pair: the reduced range is cut into `parts` chunks when
 * there are few outputs, so a full reduction of a large tensor runs on many
 * threads and then folds the partials in a second pass. Walking the reduced
 * range uses an incremental multi-index, so strided (transposed, broadcast)
 * inputs are read in place. The same chunking keeps each part's input window
 * inside the binding limit.
 */
import type { DType } from "../dtype.ts";
import { isFloat } from "../dtype.ts";
import { size, stridesOf } from "../shape.ts";
import {
  DIV_SRC,
  elemBytes,
  enables,
  fdiv,
  fromStore,
  Helpers,
  magic,
  magics,
  offsetExpr,
  regType,
  storeType,
  THREAD_INDEX,
  toStore,
  Uniforms,
  unravel,
  WG,
} from "./codegen.ts";
import { coalesce, emitExpr, type Expr, exprKey } from "./elementwise.ts";
import type { Engine } from "./engine.ts";
import { launch, type Operand, spanOf } from "./launch.ts";
import type { View } from "./storage.ts";

export type { View } from "./storage.ts";

/** Reduction kinds. */
export type RedKind = "sum" | "max" | "argmax";

function identity(kind: RedKind, d: DType): string {
  if (kind === "sum") return d === "i32" ? "0i" : d === "u32" ? "0u" : "0.0";
  if (d === "i32") return "(-2147483647i - 1i)";
  if (d === "u32") return "0u";
  return "-inf_f32()";
}

/**
 * What a reduction reads: an elementwise expression over leaf views of one shape. A plain
 * input is `in0` over one leaf; a pending elementwise result is reduced through its
 * expression (prologue fusion), so it is never written out.
 */
export interface RedSrc {
  readonly expr: Expr;
  readonly leaves: readonly View[];
  readonly shape: readonly number[];
  readonly dtype: DType;
}

/** The source reading one view as is. */
export function plainSrc(x: View): RedSrc {
  return { expr: { k: "in", i: 0, dtype: x.dtype }, leaves: [x], shape: x.shape, dtype: x.dtype };
}

/**
 * Reduces `src` over `axes` into the contiguous buffer `out` (`nOut * parts` elements).
 * For argmax, `idx.out` receives i32 indices and `idx.in` (optional) holds the
 * indices of partials being folded.
 */
function reduceOnce(
  engine: Engine,
  kind: RedKind,
  src: RedSrc,
  axes: readonly number[],
  parts: number,
  chunk: number,
  out: { buf: GPUBuffer; dtype: DType },
  idx: { out: GPUBuffer; in?: View } | null,
): void {
  const shape = src.shape;
  const keptAx = shape.map((_, i) => i).filter((i) => !axes.includes(i));
  const redAx = [...axes];
  const keptShape = keptAx.map((a) => shape[a]);
  const redShape = redAx.map((a) => shape[a]);
  const nOut = size(keptShape), nR = size(redShape);
  const views = [...src.leaves, ...(idx?.in ? [idx.in] : [])];
  const kc = coalesce(keptShape, views.map((v) => keptAx.map((a) => v.strides[a])));
  const rc = coalesce(redShape, views.map((v) => redAx.map((a) => v.strides[a])));
  const kr = kc.shape.length, rr = rc.shape.length;
  const d = src.dtype;
  const L = src.leaves.length;
  const hasIdxIn = !!idx?.in;
  const leafTypes = src.leaves.map((v) => v.dtype);
  const key = `red|${kind}|${d}|${out.dtype}|${kr}|${rr}|${hasIdxIn}|${leafTypes.join(",")}|${exprKey(src.expr)}`;
  const nOutBufs = kind === "argmax" ? 2 : 1;
  const pipe = engine.pipe(key, nOutBufs, views.length, false, () => {
    const u = new Uniforms();
    const nU = u.field("n"), base = u.field("base");
    u.field("gx");
    const NO = u.divisor("nout"), CH = u.field("chunk"), NR = u.field("nr");
    const ksh = u.divisors("ksh", kr), rsh = u.divisors("rsh", rr);
    const vs = views.map((_, k) => ({ o: u.field(`o${k}`), ks: u.fields(`ks${k}_`, kr), rs: u.fields(`rs${k}_`, rr) }));
    const oo = u.field("oo"), ioo = u.field("ioo");
    const h = new Helpers();
    h.use("inf", "f32");
    h.use("isnan", "f32");
    const fl = isFloat(d);
    const T = regType(d);
    const value = (prefix: string) => emitExpr(src.expr, (i) => fromStore(leafTypes[i], `x${i}[off${i}]`), h, prefix);
    // Step the reduced multi-index by one, carrying into outer reduced axes.
    const step = () => {
      if (rr === 0) return "";
      let s = `    r${rr - 1} = r${rr - 1} + 1u;\n`;
      vs.forEach((v, k) => (s += `    off${k} = off${k} + ${v.rs[rr - 1]};\n`));
      for (let a = rr - 1; a >= 1; a--) {
        s += `    if (r${a} == ${rsh[a].d}) { r${a} = 0u; r${a - 1} = r${a - 1} + 1u;`;
        vs.forEach((v, k) => (s += ` off${k} = off${k} - ${v.rs[a]} * ${rsh[a].d} + ${v.rs[a - 1]};`));
        s += ` }\n`;
      }
      return s;
    };
    const ix = `off${L}`;
    const inLoop = value("e");
    let body = "";
    if (kind === "sum") {
      body = `  var acc: ${T} = ${identity("sum", d)};
  for (var j = j0; j < j1; j = j + 1u) {
${inLoop.code}    acc = acc + ${inLoop.result};
${step()}  }
  out[${oo} + item] = ${toStore(out.dtype, "acc")};\n`;
    } else if (kind === "max") {
      const upd = fl ? `if (isnan_f32(v) || v > acc) { acc = v; }` : `acc = max(acc, v);`;
      body = `  var acc: ${T} = ${identity("max", d)};
  for (var j = j0; j < j1; j = j + 1u) {
${inLoop.code}    let v: ${T} = ${inLoop.result};
    if (!${fl ? "isnan_f32(acc)" : "false"}) { ${upd} }
${step()}  }
  out[${oo} + item] = ${toStore(out.dtype, "acc")};\n`;
    } else {
      const better = fl ? `(!isnan_f32(best) && (v > best || isnan_f32(v)))` : `(v > best)`;
      const idxOf = hasIdxIn ? `xi[${ix}]` : `i32(j)`;
      const first = value("f");
      body = `${first.code}  var best: ${T} = ${first.result};
  var bi: i32 = ${hasIdxIn ? `xi[${ix}]` : "i32(j0)"};
  for (var j = j0; j < j1; j = j + 1u) {
${inLoop.code}    let v: ${T} = ${inLoop.result};
    if (${better}) { best = v; bi = ${idxOf}; }
${step()}  }
  out[${oo} + item] = ${toStore(out.dtype, "best")};
  outi[${ioo} + item] = bi;\n`;
    }
    const initR = rr === 0 ? "" : unravel("j0", rsh, "r").replace(/let r/g, "var r");
    const startOff = (v: { o: string; ks: string[]; rs: string[] }) =>
      [v.o, ...v.ks.map((s, a) => `k${a} * ${s}`), ...v.rs.map((s, a) => `r${a} * ${s}`)].join(" + ");
    return `${enables([d, out.dtype, ...leafTypes])}${u.decl()}
@group(0) @binding(1) var<storage, read_write> out: array<${storeType(out.dtype)}>;
${kind === "argmax" ? `@group(0) @binding(2) var<storage, read_write> outi: array<i32>;` : ""}
${
      leafTypes.map((t, k) =>
        `@group(0) @binding(${nOutBufs + 1 + k}) var<storage, read> x${k}: array<${storeType(t)}>;`
      ).join("\n")
    }
${hasIdxIn ? `@group(0) @binding(${nOutBufs + 1 + L}) var<storage, read> xi: array<i32>;` : ""}
${h.source()}${DIV_SRC}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  ${THREAD_INDEX}
  if (t >= ${nU}) { return; }
  let item = ${base} + t;
  // Items are (part, output) with outputs fastest, so neighbouring lanes read neighbouring columns.
  let q = ${fdiv("item", NO)};
  let o = item - q * ${NO.d};
  let j0 = q * ${CH};
  let j1 = min(${NR}, j0 + ${CH});
${unravel("o", ksh, "k")}${initR}${vs.map((v, k) => `  var off${k} = ${startOff(v)};\n`).join("")}${body}}
`;
  });
  const combinedShape = [...kc.shape, ...rc.shape];
  // Items [s, e) read at most the outputs they cover times the chunks of their parts (a superset).
  const itemSpan = (v: View, strides: number[]) => (s: number, e: number): [number, number] => {
    const q0 = Math.floor(s / nOut), q1 = Math.floor((e - 1) / nOut);
    const oa = q0 === q1 ? s - q0 * nOut : 0, ob = q0 === q1 ? e - 1 - q0 * nOut : nOut - 1;
    const f0 = oa * nR + q0 * chunk, f1 = ob * nR + Math.min(nR, (q1 + 1) * chunk);
    if (f1 <= f0) return [v.offset, v.offset];
    return spanOf(combinedShape, strides, v.offset, f0, f1);
  };
  const eb = elemBytes(out.dtype);
  const operands: Operand[] = [
    { buf: out.buf, eb, offset: 0, span: (s, e) => [s, e - 1], shape: keptShape },
    ...(idx
      ? [{
        buf: idx.out,
        eb: 4,
        offset: 0,
        span: (s: number, e: number): [number, number] => [s, e - 1],
        shape: keptShape,
      }]
      : []),
    ...views.map((v, k): Operand => ({
      buf: v.buf,
      eb: elemBytes(v.dtype),
      offset: v.offset,
      span: itemSpan(v, [...kc.strides[k], ...rc.strides[k]]),
      shape: v.shape,
    })),
  ];
  launch(engine, pipe, kind, nOut * parts, operands, (s, e, offs, gx) => {
    const first = idx ? 2 : 1;
    const v = [e - s, s, gx, ...magic(nOut), chunk, nR, ...magics(kc.shape), ...magics(rc.shape)];
    views.forEach((_, k) => v.push(offs[first + k], ...kc.strides[k], ...rc.strides[k]));
    v.push(offs[0], idx ? offs[1] : 0);
    return v;
  });
}

/** How many parts to split each output's reduction into. */
function choosePartsFor(engine: Engine, nOut: number, nR: number, src: RedSrc, axes: readonly number[]): number {
  let parts = 1;
  if (nR > 256 && nOut < 2048) parts = Math.min(Math.ceil(nR / 64), Math.ceil(4096 / nOut));
  // Keep one part's input window well inside the binding limit.
  let bytes = 0;
  for (const x of src.leaves) {
    let span = 1;
    for (const a of axes) span += (x.shape[a] - 1) * Math.abs(x.strides[a]);
    bytes = Math.max(bytes, span * elemBytes(x.dtype));
  }
  if (bytes > engine.maxBinding / 2) parts = Math.max(parts, Math.ceil(bytes / (engine.maxBinding / 4)));
  return Math.max(1, Math.min(parts, nR));
}

/**
 * Full reduction of `x` over `axes` into a fresh contiguous buffer; returns
 * the output buffer (caller owns it). `alloc(bytes)` provides buffers and
 * `free` returns temporaries.
 */
export function reduce(
  engine: Engine,
  kind: RedKind,
  src: RedSrc,
  axes: readonly number[],
  outDtype: DType,
  alloc: (bytes: number) => GPUBuffer,
  free: (b: GPUBuffer) => void,
): GPUBuffer {
  const x = { shape: src.shape, dtype: src.dtype };
  const keptShape = x.shape.filter((_, i) => !axes.includes(i));
  const nOut = size(keptShape);
  const nR = axes.reduce((a, i) => a * x.shape[i], 1);
  const outBytes = Math.max(4, nOut * elemBytes(outDtype));
  if (nOut === 0) return alloc(4);
  if (nR === 0) {
    // Sum over an empty axis is zero (max/argmax reject empty axes in the shape rule).
    const buf = alloc(outBytes);
    fillZero(engine, buf, nOut, outDtype);
    return buf;
  }
  const chunk = Math.ceil(nR / choosePartsFor(engine, nOut, nR, src, axes));
  // Every part must be non-empty (argmax starts from its part's first element).
  const parts = Math.ceil(nR / chunk);
  if (parts === 1) {
    if (kind === "argmax") {
      const vals = alloc(Math.max(4, nOut * elemBytes(x.dtype)));
      const idxBuf = alloc(Math.max(4, nOut * 4));
      reduceOnce(engine, kind, src, axes, 1, nR, { buf: vals, dtype: x.dtype }, { out: idxBuf });
      free(vals);
      return idxBuf;
    }
    const buf = alloc(outBytes);
    reduceOnce(engine, kind, src, axes, 1, nR, { buf, dtype: outDtype }, null);
    return buf;
  }
  // Two passes: partials [parts, nOut] then a fold over parts.
  // f16 sums keep f32 partials.
  const partDtype = kind === "argmax" ? x.dtype : outDtype === "f16" && kind === "sum" ? "f32" : outDtype;
  const partBuf = alloc(Math.max(4, nOut * parts * elemBytes(partDtype)));
  const partView: View = {
    buf: partBuf,
    dtype: partDtype,
    shape: [parts, nOut],
    strides: [nOut, 1],
    offset: 0,
  };
  if (kind === "argmax") {
    const partIdx = alloc(Math.max(4, nOut * parts * 4));
    reduceOnce(engine, kind, src, axes, parts, chunk, { buf: partBuf, dtype: partDtype }, { out: partIdx });
    const vals = alloc(Math.max(4, nOut * elemBytes(x.dtype)));
    const idxBuf = alloc(Math.max(4, nOut * 4));
    const idxView: View = { buf: partIdx, dtype: "i32", shape: [parts, nOut], strides: [nOut, 1], offset: 0 };
    reduceOnce(engine, kind, plainSrc(partView), [0], 1, parts, { buf: vals, dtype: x.dtype }, {
      out: idxBuf,
      in: idxView,
    });
    free(partBuf);
    free(partIdx);
    free(vals);
    return idxBuf;
  }
  reduceOnce(engine, kind, src, axes, parts, chunk, { buf: partBuf, dtype: partDtype }, null);
  const buf = reduce(engine, kind, plainSrc(partView), [0], outDtype, alloc, free);
  free(partBuf);
  return buf;
}

/** Writes zeros into the first `n` elements of `buf` (vec4 stores where the size allows). */
export function fillZero(engine: Engine, buf: GPUBuffer, n: number, dtype: DType): void {
  const bytes = Math.ceil((n * elemBytes(dtype)) / 4) * 4;
  const V = bytes % 16 === 0 && engine.storageAlign % 16 === 0 ? 4 : 1;
  const pipe = engine.pipe(`zero|${V}`, 1, 0, false, () => {
    const u = new Uniforms();
    const nU = u.field("n"), base = u.field("base");
    u.field("gx");
    return `${u.decl()}
@group(0) @binding(1) var<storage, read_write> out: array<${V === 4 ? "vec4<u32>" : "u32"}>;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  ${THREAD_INDEX}
  if (t >= ${nU}) { return; }
  out[${base} + t] = ${V === 4 ? "vec4<u32>()" : "0u"};
}
`;
  });
  const words = bytes / 4 / V;
  launch(
    engine,
    pipe,
    "zero fill",
    words,
    [{ buf, eb: 4, offset: 0, span: (s, e) => [s * V, e * V - 1], shape: [n] }],
    (s, e, offs, gx) => [e - s, s + offs[0] / V, gx],
  );
}

/** Cumulative sum/product of `x` along `axis` into a fresh contiguous buffer of x's shape. */
export function scan(engine: Engine, mul: boolean, x: View, axis: number, reverse: boolean, out: GPUBuffer): void {
  const n = x.shape[axis];
  const laneAx = x.shape.map((_, i) => i).filter((i) => i !== axis);
  const laneShape = laneAx.map((a) => x.shape[a]);
  const outStr = stridesOf(x.shape);
  const lc = coalesce(laneShape, [laneAx.map((a) => x.strides[a]), laneAx.map((a) => outStr[a])]);
  const r = lc.shape.length;
  const d = x.dtype;
  const key = `scan|${mul}|${d}|${r}`;
  const pipe = engine.pipe(key, 1, 1, false, () => {
    const u = new Uniforms();
    const nU = u.field("n"), base = u.field("base");
    u.field("gx");
    const N = u.field("len"), rev = u.field("rev");
    const sh = u.divisors("sh", r);
    const xo = u.field("xo"), xs = u.fields("xs", r), xa = u.field("xa");
    const oo = u.field("oo"), os = u.fields("os", r), oa = u.field("oa");
    const T = regType(d);
    const one = d === "i32" ? "1i" : d === "u32" ? "1u" : "1.0";
    const zero = d === "i32" ? "0i" : d === "u32" ? "0u" : "0.0";
    return `${enables([d])}${u.decl()}
@group(0) @binding(1) var<storage, read_write> out: array<${storeType(d)}>;
@group(0) @binding(2) var<storage, read> x: array<${storeType(d)}>;
${DIV_SRC}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  ${THREAD_INDEX}
  if (t >= ${nU}) { return; }
  let lane = ${base} + t;
${unravel("lane", sh, "i")}  let xb = ${offsetExpr(xo, xs, "i")};
  let ob = ${offsetExpr(oo, os, "i")};
  var acc: ${T} = ${mul ? one : zero};
  for (var k = 0u; k < ${N}; k = k + 1u) {
    let kk = select(k, ${N} - 1u - k, ${rev} == 1u);
    acc = acc ${mul ? "*" : "+"} ${fromStore(d, `x[xb + kk * ${xa}]`)};
    out[ob + kk * ${oa}] = ${toStore(d, "acc")};
  }
}
`;
  });
  const lanes = size(laneShape);
  const eb = elemBytes(d);
  const span = (shape: number[], strides: number[], off: number) => (s: number, e: number): [number, number] =>
    spanOf([...shape, n], strides, off, s * n, e * n);
  launch(engine, pipe, mul ? "cumprod" : "cumsum", lanes, [
    { buf: out, eb, offset: 0, span: span(lc.shape, [...lc.strides[1], outStr[axis]], 0), shape: x.shape },
    {
      buf: x.buf,
      eb,
      offset: x.offset,
      span: span(lc.shape, [...lc.strides[0], x.strides[axis]], x.offset),
      shape: x.shape,
    },
  ], (s, e, offs, gx) => [
    e - s,
    s,
    gx,
    n,
    reverse ? 1 : 0,
    ...magics(lc.shape),
    offs[1],
    ...lc.strides[0],
    x.strides[axis],
    offs[0],
    ...lc.strides[1],
    outStr[axis],
  ]);
}
