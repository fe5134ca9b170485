/**
 * @file Elementwise kernels from a small expression IR. Unary, binary,
 * compare, where and cast primitives all become an `Expr` over input views;
 * a kernel evaluates one output element per thread, reading every input
 * through its own strides (so transposed, broadcast, sliced and flipped views
 * are read in place). Fusion composes expressions of consecutive elementwise
 * primitives into one kernel (see backend.ts).
 */
import type { DType } from "../dtype.ts";
import { isFloat } from "../dtype.ts";
import type { CmpOp } from "../prims.ts";
import { size, stridesOf } from "../shape.ts";
import {
  DIV_SRC,
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
import type { Engine } from "./engine.ts";
import { launch, type Operand, spanOf } from "./launch.ts";
import type { GHandle } from "./storage.ts";

/** Elementwise operations of the IR. */
export type EwOp =
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
  | "geluTanhGrad"
  | "add"
  | "sub"
  | "mul"
  | "div"
  | "pow"
  | "maximum"
  | "minimum"
  | `cmp_${CmpOp}`
  | "where"
  | "cast";

/** An expression node: an input (by index) or an operation. */
export type Expr =
  | { readonly k: "in"; readonly i: number; readonly dtype: DType }
  | { readonly k: "op"; readonly op: EwOp; readonly dtype: DType; readonly args: readonly Expr[] };

/** Canonical text of an expression (the pipeline cache key part); shared nodes are numbered once. */
export function exprKey(e: Expr): string {
  const ids = new Map<Expr, number>();
  const parts: string[] = [];
  const walk = (n: Expr): number => {
    let id = ids.get(n);
    if (id !== undefined) return id;
    const s = n.k === "in" ? `i${n.i}:${n.dtype}` : `${n.op}:${n.dtype}(${n.args.map(walk).join(",")})`;
    id = parts.length;
    parts.push(s);
    ids.set(n, id);
    return id;
  };
  walk(e);
  return parts.join(";");
}

/** Number of distinct nodes of an expression. */
export function exprNodes(e: Expr): number {
  const seen = new Set<Expr>();
  const walk = (n: Expr) => {
    if (seen.has(n)) return;
    seen.add(n);
    if (n.k === "op") n.args.forEach(walk);
  };
  walk(e);
  return seen.size;
}

const FLOAT_UNARY_HELPER: Partial<Record<EwOp, string>> = {
  exp: "exp",
  log: "log",
  sin: "sin",
  cos: "cos",
  tanh: "tanh",
  sqrt: "sqrt",
  rsqrt: "rsqrt",
  erf: "erf",
  sigmoid: "sigmoid",
  log1p: "log1p",
  expm1: "expm1",
  gelu: "gelu",
  geluTanh: "geluTanh",
  geluGrad: "geluGrad",
  geluTanhGrad: "geluTanhGrad",
  sign: "sign",
};

function castExpr(from: DType, to: DType, a: string, h: Helpers): string {
  if (from === to) return a;
  const F = "f32";
  if (to === "bool") {
    if (from === "bool") return a;
    if (isFloat(from)) return `(${a} != 0.0 || ${h.use("isnan", F)}(${a}))`;
    return from === "i32" ? `(${a} != 0i)` : `(${a} != 0u)`;
  }
  if (from === "bool") {
    if (isFloat(to)) return `select(0.0, 1.0, ${a})`;
    return to === "i32" ? `select(0i, 1i, ${a})` : `select(0u, 1u, ${a})`;
  }
  if (isFloat(from) && isFloat(to)) {
    // f16 values are computed in f32; round through f16 so fused consumers see the stored value.
    return to === "f16" ? `f32(f16(${a}))` : a;
  }
  if (isFloat(from)) {
    const bits = `${h.use("f2bits", F)}(${a})`;
    return to === "i32" ? `bitcast<i32>(${bits})` : bits;
  }
  if (isFloat(to)) return to === "f16" ? `f32(f16(f32(${a})))` : `f32(${a})`;
  return to === "i32" ? `bitcast<i32>(${a})` : `bitcast<u32>(${a})`;
}

/** WGSL for one operation given its argument expressions and dtypes. */
export function opExpr(
  op: EwOp,
  outDtype: DType,
  args: readonly string[],
  argDtypes: readonly DType[],
  h: Helpers,
): string {
  const [a, b, c] = args;
  const d = argDtypes[0];
  const F = "f32";
  const fl = isFloat(d);
  const zero = d === "i32" ? "0i" : d === "u32" ? "0u" : "0.0";
  if (op === "cast") return castExpr(d, outDtype, a, h);
  if (op === "where") return `select(${c}, ${b}, ${a})`;
  if (op.startsWith("cmp_")) {
    const cmp = op.slice(4) as CmpOp;
    const sym = { lt: "<", le: "<=", gt: ">", ge: ">=", eq: "==", ne: "!=" }[cmp];
    if (d === "bool") return `(select(0u, 1u, ${a}) ${sym} select(0u, 1u, ${b}))`;
    if (!fl) return `(${a} ${sym} ${b})`;
    const nan = `(${h.use("isnan", F)}(${a}) || ${h.use("isnan", F)}(${b}))`;
    return cmp === "ne" ? `(${nan} || ${a} != ${b})` : `(!${nan} && ${a} ${sym} ${b})`;
  }
  switch (op) {
    case "neg":
      return d === "u32" ? `(0u - ${a})` : `(-${a})`;
    case "abs":
      return d === "u32" ? a : `abs(${a})`;
    case "floor":
      return fl ? `floor(${a})` : a;
    case "sign":
      if (fl) return `${h.use("sign", F)}(${a})`;
      return d === "i32" ? `select(select(0i, -1i, ${a} < 0i), 1i, ${a} > 0i)` : `select(0u, 1u, ${a} > 0u)`;
    case "add":
      return `(${a} + ${b})`;
    case "sub":
      return `(${a} - ${b})`;
    case "mul":
      return `(${a} * ${b})`;
    case "div":
      return fl ? `(${a} / ${b})` : `select(${a} / ${b}, ${zero}, ${b} == ${zero})`;
    case "pow":
      return `${h.use("pow", F)}(${a}, ${b})`;
    case "maximum":
      return fl ? `${h.use("maximum", F)}(${a}, ${b})` : `max(${a}, ${b})`;
    case "minimum":
      return fl ? `${h.use("minimum", F)}(${a}, ${b})` : `min(${a}, ${b})`;
  }
  const helper = FLOAT_UNARY_HELPER[op];
  if (helper) return `${h.use(helper, F)}(${a})`;
  throw new Error(`webgpu: no WGSL lowering for elementwise op ${op}`);
}

/**
 * Emits `let` statements evaluating `e` (inputs via `load(i)`), returning
 * the variable holding the result.
 */
export function emitExpr(
  e: Expr,
  load: (i: number) => string,
  h: Helpers,
  prefix = "e",
): { code: string; result: string } {
  const names = new Map<Expr, string>();
  let code = "";
  let n = 0;
  const walk = (x: Expr): string => {
    const have = names.get(x);
    if (have) return have;
    let rhs: string;
    if (x.k === "in") rhs = load(x.i);
    else {
      const args = x.args.map(walk);
      rhs = opExpr(x.op, x.dtype, args, x.args.map((q) => q.dtype), h);
    }
    const v = `${prefix}${n++}`;
    code += `  let ${v}: ${regType(x.dtype)} = ${rhs};\n`;
    names.set(x, v);
    return v;
  };
  const result = walk(e);
  return { code, result };
}

/** Merges adjacent axes that are contiguous in every stride list and drops size-1 axes. */
export function coalesce(shape: readonly number[], strideLists: readonly (readonly number[])[]): {
  shape: number[];
  strides: number[][];
} {
  const keep = shape.map((d, i) => (d !== 1 ? i : -1)).filter((i) => i >= 0);
  const outShape: number[] = [];
  const outStrides: number[][] = strideLists.map(() => []);
  for (const a of keep) {
    const last = outShape.length - 1;
    if (
      last >= 0 &&
      strideLists.every((st, k) => outStrides[k][last] === st[a] * shape[a])
    ) {
      outShape[last] *= shape[a];
      strideLists.forEach((st, k) => (outStrides[k][last] = st[a]));
    } else {
      outShape.push(shape[a]);
      strideLists.forEach((st, k) => outStrides[k].push(st[a]));
    }
  }
  return { shape: outShape, strides: outStrides };
}

/** Where an elementwise kernel writes: a view of a materialized buffer. */
export interface OutView {
  readonly buf: GPUBuffer;
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly strides: readonly number[];
  readonly offset: number;
}

/**
 * Compiles (once) and dispatches `expr` over `inputs` (materialized views of `out.shape`).
 *
 * Three kernel shapes: `v4` when every operand is contiguous or a broadcast scalar and
 * 16-byte aligned (4 elements per thread through vec4 loads and stores: on llvmpipe about
 * twice the bandwidth of scalar access), `flat` for the same without alignment, and
 * `strided` (any views, indices unravelled per element) otherwise.
 */
export function runExpr(engine: Engine, expr: Expr, inputs: readonly GHandle[], out: OutView): void {
  const n = size(out.shape);
  if (n === 0) return;
  const outContig = out.strides.every((s, i) => out.shape[i] === 1 || s === stridesOf(out.shape)[i]);
  const lists = [outContig ? stridesOf(out.shape) : out.strides, ...inputs.map((h) => h.strides)];
  const co = coalesce(out.shape, lists);
  const r = co.shape.length;
  const inDtypes = inputs.map((h) => h.st.dtype);
  const flat = outContig && r <= 1 && co.strides.every((st) => r === 0 || st[0] === 0 || st[0] === 1);
  // Per input: "c" contiguous, "b" broadcast scalar (flat kernels only).
  const kinds = inputs.map((_, k) => (r === 1 && co.strides[k + 1][0] === 1 ? "c" : "b"));
  const v4 = flat && r === 1 && n % 4 === 0 && engine.storageAlign % 16 === 0 && out.dtype !== "f16" &&
    out.offset % 4 === 0 && inputs.every((h, k) => kinds[k] === "b" || (h.st.dtype !== "f16" && h.offset % 4 === 0));
  // Rank 2 with every inner stride 0 or 1 (bias rows, per-row statistics): vec4 along rows.
  // Rank >= 2 with every innermost stride 0 or 1 (bias rows, per-row statistics, adaLN
  // modulation): vec4 along the innermost axis, outer index unravelled once per 4 elements.
  const ri = r - 1;
  const rowKinds = inputs.map((_, k) => (r >= 2 && co.strides[k + 1][ri] === 1 ? "c" : "b"));
  const rows = !flat && outContig && r >= 2 && co.shape[ri] % 4 === 0 && engine.storageAlign % 16 === 0 &&
    out.dtype !== "f16" && out.offset % 4 === 0 &&
    inputs.every((h, k) =>
      co.strides[k + 1][ri] === 0 ||
      (co.strides[k + 1][ri] === 1 && h.st.dtype !== "f16" && h.offset % 4 === 0 &&
        co.strides[k + 1].slice(0, ri).every((st) => st % 4 === 0))
    );
  const mode = v4 ? "v4" : flat ? "flat" : rows ? "rows" : "strided";
  const kindKey = mode === "strided" ? `${r}` : mode === "rows" ? `${r}${rowKinds.join("")}` : kinds.join("");
  const key = `ew|${mode}|${kindKey}|${out.dtype}|${outContig ? "c" : "s"}|${inDtypes.join(",")}|${exprKey(expr)}`;
  const pipe = engine.pipe(key, 1, inputs.length, false, () => {
    const u = new Uniforms();
    const nU = u.field("n"), base = u.field("base");
    u.field("gx");
    const h = new Helpers();
    const decls = (vecIn: (k: number) => boolean, vecOut: boolean) =>
      `@group(0) @binding(1) var<storage, read_write> out: array<${
        vecOut ? `vec4<${storeType(out.dtype)}>` : storeType(out.dtype)
      }>;
${
        inputs.map((_, k) => {
          const t = storeType(inDtypes[k]);
          return `@group(0) @binding(${k + 2}) var<storage, read> in${k}: array<${vecIn(k) ? `vec4<${t}>` : t}>;`;
        }).join("\n")
      }`;
    const head = (body: string, d: string) =>
      `${enables([out.dtype, ...inDtypes])}${u.decl()}
${d}
${h.source()}${DIV_SRC}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  ${THREAD_INDEX}
  if (t >= ${nU}) { return; }
${body}}
`;
    if (mode === "v4") {
      const oo = u.field("oo");
      const offs = inputs.map((_, k) => u.field(`o${k}`));
      let body = `  let q = ${base} + t;\n`;
      inputs.forEach((_, k) => {
        body += kinds[k] === "c" ? `  let v${k} = in${k}[${offs[k]} + q];\n` : `  let v${k} = in${k}[${offs[k]}];\n`;
      });
      const res: string[] = [];
      for (let j = 0; j < 4; j++) {
        const load = (i: number) => fromStore(inDtypes[i], kinds[i] === "c" ? `v${i}[${j}]` : `v${i}`);
        const { code, result } = emitExpr(expr, load, h, `e${j}_`);
        body += code;
        res.push(toStore(out.dtype, result));
      }
      body += `  out[${oo} + q] = vec4<${storeType(out.dtype)}>(${res.join(", ")});\n`;
      return head(body, decls((k) => kinds[k] === "c", true));
    }
    if (mode === "rows") {
      const inner4 = u.divisor("inner4");
      const osh = u.divisors("osh", ri);
      const oo = u.field("oo");
      const offs = inputs.map((_, k) => ({ o: u.field(`o${k}`), so: u.fields(`so${k}_`, ri) }));
      let body = `  let q = ${base} + t;\n  let row = ${fdiv("q", inner4)};\n  let c4 = q - row * ${inner4.d};\n`;
      body += unravel("row", osh, "i");
      inputs.forEach((_, k) => {
        const at = offsetExpr(offs[k].o, offs[k].so, "i");
        body += rowKinds[k] === "c" ? `  let v${k} = in${k}[${at} + c4];\n` : `  let v${k} = in${k}[${at}];\n`;
      });
      const res: string[] = [];
      for (let j = 0; j < 4; j++) {
        const load = (i: number) => fromStore(inDtypes[i], rowKinds[i] === "c" ? `v${i}[${j}]` : `v${i}`);
        const { code, result } = emitExpr(expr, load, h, `e${j}_`);
        body += code;
        res.push(toStore(out.dtype, result));
      }
      body += `  out[${oo} + q] = vec4<${storeType(out.dtype)}>(${res.join(", ")});\n`;
      return head(body, decls((k) => rowKinds[k] === "c", true));
    }
    if (mode === "flat") {
      const oo = u.field("oo");
      const offs = inputs.map((_, k) => u.field(`o${k}`));
      const load = (i: number) =>
        fromStore(inDtypes[i], kinds[i] === "c" ? `in${i}[${offs[i]} + f]` : `in${i}[${offs[i]}]`);
      const { code, result } = emitExpr(expr, load, h);
      return head(
        `  let f = ${base} + t;\n${code}  out[${oo} + f] = ${toStore(out.dtype, result)};\n`,
        decls(() => false, false),
      );
    }
    const sh = u.divisors("sh", r);
    const oo = u.field("oo");
    const os = outContig ? [] : u.fields("os", r);
    const ins = inputs.map((_, k) => ({ off: u.field(`o${k}`), st: u.fields(`s${k}_`, r) }));
    const load = (i: number) =>
      fromStore(inDtypes[i], `in${i}[${r === 0 ? ins[i].off : offsetExpr(ins[i].off, ins[i].st, "i")}]`);
    const { code, result } = emitExpr(expr, load, h);
    const outIdx = outContig ? `${oo} + f` : r === 0 ? oo : offsetExpr(oo, os, "i");
    return head(
      `  let f = ${base} + t;\n${unravel("f", sh, "i")}${code}  out[${outIdx}] = ${toStore(out.dtype, result)};\n`,
      decls(() => false, false),
    );
  });
  const outStr = co.strides[0];
  const per = v4 || rows ? 4 : 1;
  const operands: Operand[] = [
    {
      buf: out.buf,
      eb: out.dtype === "f16" ? 2 : 4,
      offset: out.offset,
      span: (s, e) => spanOf(co.shape, outStr, out.offset, s * per, e * per),
      shape: out.shape,
    },
    ...inputs.map((hd, k): Operand => ({
      buf: hd.st.buf!,
      eb: hd.st.dtype === "f16" ? 2 : 4,
      offset: hd.offset,
      span: (s, e) => spanOf(co.shape, co.strides[k + 1], hd.offset, s * per, e * per),
      shape: hd.shape,
    })),
  ];
  launch(engine, pipe, `elementwise ${expr.k === "op" ? expr.op : "copy"}`, n / per, operands, (s, e, offs, gx) => {
    if (mode === "v4") {
      return [e - s, s, gx, offs[0] / 4, ...inputs.map((_, k) => (kinds[k] === "c" ? offs[k + 1] / 4 : offs[k + 1]))];
    }
    if (mode === "flat") return [e - s, s, gx, offs[0], ...offs.slice(1)];
    if (mode === "rows") {
      const v = [e - s, s, gx, ...magic(co.shape[ri] / 4), ...magics(co.shape.slice(0, ri)), offs[0] / 4];
      inputs.forEach((_, k) => {
        const so = co.strides[k + 1].slice(0, ri);
        if (rowKinds[k] === "c") v.push(offs[k + 1] / 4, ...so.map((x) => x / 4));
        else v.push(offs[k + 1], ...so);
      });
      return v;
    }
    const v = [e - s, s, gx, ...magics(co.shape), offs[0]];
    if (!outContig) v.push(...outStr);
    inputs.forEach((_, k) => v.push(offs[k + 1], ...co.strides[k + 1]));
    return v;
  });
}
