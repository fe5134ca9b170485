/**
 * @file Wasm kernels for elementwise primitives, strided copies and
 * reductions, generated as flat WAT text for `emit.ts`.
 *
 * Every kernel has the signature `(args, chunk, tid)`: `args` points at its
 * i32 argument words in memory, `chunk` selects the part of the work, `tid`
 * the calling thread (for per-thread scratch). Elementwise kernels see an
 * output of up to four collapsed dimensions; each operand has arbitrary outer
 * strides and an innermost stride of 1 (variant digit `1`) or 0 (a broadcast
 * scalar per row, digit `0`), so broadcasting costs no copy.
 */
import type { FuncDef, ValType } from "./emit.ts";
import {
  type ConstTable,
  MathCtx,
  verf,
  vexp,
  vgelu,
  vgeluGrad,
  vgeluTanh,
  vgeluTanhGrad,
  vlog,
  vsigmoid,
  vtanh,
} from "./math.ts";

const c4 = (v: number) => `v128.const f32x4 ${v} ${v} ${v} ${v}`;
const i4 = (v: number) => `v128.const i32x4 ${v} ${v} ${v} ${v}`;

/** The parameters every chunked kernel takes. */
export const KPARAMS: [string, ValType][] = [["args", "i32"], ["chunk", "i32"], ["tid", "i32"]];

/** Code loading argument word `i` into local `name`. */
export function arg(name: string, i: number): string {
  return `local.get $args i32.load offset=${4 * i} local.set $${name}\n`;
}

/** An element layout in memory. */
interface Io {
  es: number;
  stype: ValType;
  /** Vector load of 4 elements at local `p`. */
  vload(p: string): string;
  /** Scalar load at local `p`. */
  sload(p: string): string;
  /** Vector of 4 copies of the scalar on the stack. */
  splat: string;
  /** Stores the vector on the stack (after `local.get p`). */
  vstore(m: MathCtx): string;
  /** Stores the scalar on the stack (after `local.get p`). */
  sstore: string;
}

const F32: Io = {
  es: 4,
  stype: "f32",
  vload: (p) => `local.get ${p} v128.load`,
  sload: (p) => `local.get ${p} f32.load`,
  splat: "f32x4.splat",
  vstore: () => "v128.store",
  sstore: "f32.store",
};
const I32: Io = {
  es: 4,
  stype: "i32",
  vload: (p) => `local.get ${p} v128.load`,
  sload: (p) => `local.get ${p} i32.load`,
  splat: "i32x4.splat",
  vstore: () => "v128.store",
  sstore: "i32.store",
};
/** bool (one byte, 0 or 1), widened to i32 lanes in registers. */
const U8: Io = {
  es: 1,
  stype: "i32",
  vload: (p) => `local.get ${p} v128.load32_zero i16x8.extend_low_i8x16_u i32x4.extend_low_i16x8_u`,
  sload: (p) => `local.get ${p} i32.load8_u`,
  splat: "i32x4.splat",
  // i32 lanes holding 0/1 or 0/-1 masks narrow to bytes 0/1.
  vstore: (m) =>
    `local.tee $nt local.get $nt i16x8.narrow_i32x4_s local.tee $nt local.get $nt i8x16.narrow_i16x8_s ${
      m.i(0x01010101)
    } v128.and v128.store32_lane 0`,
  sstore: "i32.store8",
};

/** An elementwise operation: vector and scalar code over input locals, leaving the result on the stack. */
export interface EwOp {
  /** f32x4 (or i32x4) code. */
  v(x: string[], m: MathCtx): string;
  /** Scalar code for the tail. */
  s(x: string[], m: MathCtx): string;
}

/** A vector math function applied inline; the scalar tail runs it on a splat and takes lane 0. */
const vcall = (f: (m: MathCtx, x: string) => string): EwOp => ({
  v: ([a], m) => f(m, a),
  s: ([a], m) => {
    const t = m.tmp();
    return `local.get ${a} f32x4.splat local.set ${t} ${f(m, t)} f32x4.extract_lane 0`;
  },
});
const un = (v: string, s: string): EwOp => ({ v: ([a]) => `local.get ${a} ${v}`, s: ([a]) => `local.get ${a} ${s}` });
const bin = (v: string, s: string): EwOp => ({
  v: ([a, b]) => `local.get ${a} local.get ${b} ${v}`,
  s: ([a, b]) => `local.get ${a} local.get ${b} ${s}`,
});

/** f32 unary ops in Wasm. */
export const F32_UNARY: Record<string, EwOp> = {
  neg: un("f32x4.neg", "f32.neg"),
  abs: un("f32x4.abs", "f32.abs"),
  sqrt: un("f32x4.sqrt", "f32.sqrt"),
  rsqrt: {
    v: ([a], m) => `${m.f(1)} local.get ${a} f32x4.sqrt f32x4.div`,
    s: ([a]) => `f32.const 1 local.get ${a} f32.sqrt f32.div`,
  },
  floor: un("f32x4.floor", "f32.floor"),
  // x > 0 ? 1 : x < 0 ? -1 : x (keeps 0, -0 and NaN)
  sign: {
    v: ([a], m) =>
      `${m.f(-1)} ${m.f(1)} local.get ${a} local.get ${a} ${m.f(0)} f32x4.gt v128.bitselect local.get ${a} ${
        m.f(0)
      } f32x4.lt v128.bitselect`,
    s: ([a]) =>
      `f32.const -1 f32.const 1 local.get ${a} local.get ${a} f32.const 0 f32.gt select local.get ${a} f32.const 0 f32.lt select`,
  },
  exp: vcall(vexp),
  log: vcall(vlog),
  tanh: vcall(vtanh),
  sigmoid: vcall(vsigmoid),
  erf: vcall(verf),
  gelu: vcall(vgelu),
  geluTanh: vcall(vgeluTanh),
  geluGrad: vcall(vgeluGrad),
  geluTanhGrad: vcall(vgeluTanhGrad),
};

/** i32 unary ops. */
export const I32_UNARY: Record<string, EwOp> = {
  neg: { v: ([a]) => `local.get ${a} i32x4.neg`, s: ([a]) => `i32.const 0 local.get ${a} i32.sub` },
  abs: {
    v: ([a]) => `local.get ${a} i32x4.abs`,
    s: ([a]) => `i32.const 0 local.get ${a} i32.sub local.get ${a} local.get ${a} i32.const 0 i32.lt_s select`,
  },
  sign: {
    v: ([a], m) => `local.get ${a} ${m.i(0)} i32x4.gt_s ${m.i(1)} v128.and local.get ${a} ${m.i(0)} i32x4.lt_s v128.or`,
    s: ([a]) => `local.get ${a} i32.const 0 i32.gt_s local.get ${a} i32.const 0 i32.lt_s i32.sub`,
  },
};

/** u32 unary ops (neg wraps like i32). */
export const U32_UNARY: Record<string, EwOp> = {
  neg: I32_UNARY.neg,
  sign: {
    v: ([a], m) => `local.get ${a} ${m.i(0)} i32x4.ne ${m.i(1)} v128.and`,
    s: ([a]) => `local.get ${a} i32.const 0 i32.ne`,
  },
};

/** f32 binary ops. */
export const F32_BINARY: Record<string, EwOp> = {
  add: bin("f32x4.add", "f32.add"),
  sub: bin("f32x4.sub", "f32.sub"),
  mul: bin("f32x4.mul", "f32.mul"),
  div: bin("f32x4.div", "f32.div"),
  maximum: bin("f32x4.max", "f32.max"),
  minimum: bin("f32x4.min", "f32.min"),
};

/** i32 binary ops (wrapping). */
export const I32_BINARY: Record<string, EwOp> = {
  add: bin("i32x4.add", "i32.add"),
  sub: bin("i32x4.sub", "i32.sub"),
  mul: bin("i32x4.mul", "i32.mul"),
  maximum: {
    v: ([a, b]) => `local.get ${a} local.get ${b} i32x4.max_s`,
    s: ([a, b]) => `local.get ${a} local.get ${b} local.get ${a} local.get ${b} i32.gt_s select`,
  },
  minimum: {
    v: ([a, b]) => `local.get ${a} local.get ${b} i32x4.min_s`,
    s: ([a, b]) => `local.get ${a} local.get ${b} local.get ${a} local.get ${b} i32.lt_s select`,
  },
};

/** u32 binary ops. */
export const U32_BINARY: Record<string, EwOp> = {
  add: I32_BINARY.add,
  sub: I32_BINARY.sub,
  mul: I32_BINARY.mul,
  maximum: {
    v: ([a, b]) => `local.get ${a} local.get ${b} i32x4.max_u`,
    s: ([a, b]) => `local.get ${a} local.get ${b} local.get ${a} local.get ${b} i32.gt_u select`,
  },
  minimum: {
    v: ([a, b]) => `local.get ${a} local.get ${b} i32x4.min_u`,
    s: ([a, b]) => `local.get ${a} local.get ${b} local.get ${a} local.get ${b} i32.lt_u select`,
  },
};

const CMP_NAMES = ["lt", "le", "gt", "ge", "eq", "ne"] as const;
function cmpOps(prefix: "f32" | "i32" | "u32"): Record<string, EwOp> {
  const out: Record<string, EwOp> = {};
  for (const c of CMP_NAMES) {
    const vs = prefix === "f32"
      ? `f32x4.${c}`
      : c === "eq" || c === "ne"
      ? `i32x4.${c}`
      : `i32x4.${c}_${prefix === "i32" ? "s" : "u"}`;
    const ss = prefix === "f32"
      ? `f32.${c}`
      : c === "eq" || c === "ne"
      ? `i32.${c}`
      : `i32.${c}_${prefix === "i32" ? "s" : "u"}`;
    out[c] = bin(vs, ss);
  }
  return out;
}

/** f32 on the stack -> i32 with C truncation and ToInt32 wrapping (via i64). */
const F32_TO_INT =
  `local.tee $cv f32.abs f32.const 9.223372036854776e18 f32.lt if (result i32) local.get $cv i64.trunc_sat_f32_s i32.wrap_i64 else i32.const 0 end`
    .replace("if (result i32)", "if :i32");

/** Generates one elementwise kernel over `ins` operand layouts with the given inner-stride kinds. */
function ewKernel(name: string, ins: Io[], kinds: number[], out: Io, op: EwOp, m: MathCtx): FuncDef {
  const n = ins.length;
  const locals: [string, ValType][] = [
    ["out", "i32"],
    ["n0", "i32"],
    ["n1", "i32"],
    ["n2", "i32"],
    ["n3", "i32"],
    ["rowsPer", "i32"],
    ["colsPer", "i32"],
    ["ncc", "i32"],
    ["r", "i32"],
    ["r1", "i32"],
    ["c0", "i32"],
    ["c1", "i32"],
    ["j", "i32"],
    ["t", "i32"],
    ["i0", "i32"],
    ["i1", "i32"],
    ["i2", "i32"],
    ["po", "i32"],
    ["nt", "v128"],
    ["cv", "f32"],
  ];
  let pro = arg("out", 0) + arg("n0", 1) + arg("n1", 2) + arg("n2", 3) + arg("n3", 4) + arg("rowsPer", 5) +
    arg("colsPer", 6) +
    arg("ncc", 7);
  for (let k = 0; k < n; k++) {
    locals.push([`b${k}`, "i32"], [`s0_${k}`, "i32"], [`s1_${k}`, "i32"], [`s2_${k}`, "i32"], [`p${k}`, "i32"]);
    locals.push([`rb${k}`, "i32"], [`d1_${k}`, "i32"], [`d0_${k}`, "i32"]);
    locals.push([`v${k}`, "v128"], [`x${k}`, ins[k].stype]);
    pro += arg(`b${k}`, 8 + 4 * k) + arg(`s0_${k}`, 9 + 4 * k) + arg(`s1_${k}`, 10 + 4 * k) +
      arg(`s2_${k}`, 11 + 4 * k);
  }
  const vnames = ins.map((_, k) => `$v${k}`);
  const snames = ins.map((_, k) => `$x${k}`);
  // Row range and column range of this chunk.
  let body = pro + `
    local.get $chunk local.get $ncc i32.div_u local.get $rowsPer i32.mul local.tee $r
    local.get $rowsPer i32.add local.tee $r1
    local.get $n0 local.get $n1 i32.mul local.get $n2 i32.mul local.tee $t
    local.get $r1 local.get $t i32.lt_u select local.set $r1
    local.get $chunk local.get $ncc i32.rem_u local.get $colsPer i32.mul local.tee $c0
    local.get $colsPer i32.add local.tee $c1 local.get $n3 local.get $c1 local.get $n3 i32.lt_u select local.set $c1
    ;; the row's multi-index and each operand's row offset once per chunk, then carried row by row
    local.get $r local.get $n2 i32.rem_u local.set $i2
    local.get $r local.get $n2 i32.div_u local.tee $t local.get $n1 i32.rem_u local.set $i1
    local.get $t local.get $n1 i32.div_u local.set $i0
    ${
    ins.map((_, k) =>
      `local.get $i0 local.get $s0_${k} i32.mul local.get $i1 local.get $s1_${k} i32.mul i32.add
       local.get $i2 local.get $s2_${k} i32.mul i32.add local.set $rb${k}
       local.get $s1_${k} local.get $n2 local.get $s2_${k} i32.mul i32.sub local.set $d1_${k}
       local.get $s0_${k} local.get $n1 local.get $s1_${k} i32.mul i32.sub local.set $d0_${k}`
    ).join("\n")
  }
    block $rows_done loop $rows
      local.get $r local.get $r1 i32.ge_u br_if $rows_done
      local.get $out local.get $r local.get $n3 i32.mul local.get $c0 i32.add i32.const ${
    Math.log2(out.es)
  } i32.shl i32.add local.set $po
  `;
  for (let k = 0; k < n; k++) {
    const lg = Math.log2(ins[k].es);
    body += `
      local.get $b${k}
      local.get $rb${k} ${kinds[k] ? "local.get $c0 i32.add" : ""}
      i32.const ${lg} i32.shl i32.add local.set $p${k}`;
    if (!kinds[k]) body += ` ${ins[k].sload(`$p${k}`)} local.tee $x${k} ${ins[k].splat} local.set $v${k}`;
  }
  body += `
      local.get $c0 local.set $j
      block $vd loop $vl
        local.get $j i32.const 4 i32.add local.get $c1 i32.gt_u br_if $vd`;
  for (let k = 0; k < n; k++) if (kinds[k]) body += ` ${ins[k].vload(`$p${k}`)} local.set $v${k}`;
  body += ` local.get $po ${op.v(vnames, m)} ${out.vstore(m)}`;
  for (let k = 0; k < n; k++) {
    if (kinds[k]) body += ` local.get $p${k} i32.const ${4 * ins[k].es} i32.add local.set $p${k}`;
  }
  body += ` local.get $po i32.const ${4 * out.es} i32.add local.set $po
        local.get $j i32.const 4 i32.add local.set $j
        br $vl
      end end
      block $sd loop $sl
        local.get $j local.get $c1 i32.ge_u br_if $sd`;
  for (let k = 0; k < n; k++) if (kinds[k]) body += ` ${ins[k].sload(`$p${k}`)} local.set $x${k}`;
  body += ` local.get $po ${op.s(snames, m)} ${out.sstore}`;
  for (let k = 0; k < n; k++) {
    if (kinds[k]) body += ` local.get $p${k} i32.const ${ins[k].es} i32.add local.set $p${k}`;
  }
  body += ` local.get $po i32.const ${out.es} i32.add local.set $po
        local.get $j i32.const 1 i32.add local.set $j
        br $sl
      end end
      local.get $r i32.const 1 i32.add local.set $r
      ;; carry the multi-index to the next row
      ${ins.map((_, k) => `local.get $rb${k} local.get $s2_${k} i32.add local.set $rb${k}`).join(" ")}
      local.get $i2 i32.const 1 i32.add local.tee $i2 local.get $n2 i32.eq
      if
        i32.const 0 local.set $i2
        ${ins.map((_, k) => `local.get $rb${k} local.get $d1_${k} i32.add local.set $rb${k}`).join(" ")}
        local.get $i1 i32.const 1 i32.add local.tee $i1 local.get $n1 i32.eq
        if
          i32.const 0 local.set $i1
          ${ins.map((_, k) => `local.get $rb${k} local.get $d0_${k} i32.add local.set $rb${k}`).join(" ")}
        end
      end
      br $rows
    end end`;
  return { name, params: KPARAMS, locals: [...locals, ...m.locals], body };
}

function kindVariants(n: number): number[][] {
  const out: number[][] = [];
  for (let m = 0; m < 1 << n; m++) out.push([...Array(n).keys()].map((k) => (m >> k) & 1));
  return out;
}

/** Name of an elementwise kernel: `ew_<op>_<dtype>_<kinds>`. */
export function ewName(op: string, dtype: string, kinds: readonly number[]): string {
  return `ew_${op}_${dtype}_${kinds.join("")}`;
}

function elementwise(relaxed: boolean, table: ConstTable): FuncDef[] {
  const ctx = () => new MathCtx(relaxed, table);
  const fs: FuncDef[] = [];
  const ioOf = { f32: F32, i32: I32, u32: I32 } as const;
  const unary = { f32: F32_UNARY, i32: I32_UNARY, u32: U32_UNARY } as const;
  const binary = { f32: F32_BINARY, i32: I32_BINARY, u32: U32_BINARY } as const;
  for (const dt of ["f32", "i32", "u32"] as const) {
    for (const [op, def] of Object.entries(unary[dt])) {
      for (const kinds of kindVariants(1)) {
        fs.push(ewKernel(ewName(op, dt, kinds), [ioOf[dt]], kinds, ioOf[dt], def, ctx()));
      }
    }
    for (const [op, def] of Object.entries(binary[dt])) {
      for (const kinds of kindVariants(2)) {
        fs.push(ewKernel(ewName(op, dt, kinds), [ioOf[dt], ioOf[dt]], kinds, ioOf[dt], def, ctx()));
      }
    }
    for (const [op, def] of Object.entries(cmpOps(dt))) {
      for (const kinds of kindVariants(2)) {
        fs.push(ewKernel(ewName(op, dt, kinds), [ioOf[dt], ioOf[dt]], kinds, U8, def, ctx()));
      }
    }
  }
  // Casts between f32, i32, u32 and bool with the cpu backend's semantics.
  const castOps: [string, Io, Io, EwOp][] = [
    ["f32_bool", F32, U8, {
      v: ([a], m) => `local.get ${a} ${m.f(0)} f32x4.ne`,
      s: ([a]) => `local.get ${a} f32.const 0 f32.ne`,
    }],
    ["i32_bool", I32, U8, {
      v: ([a], m) => `local.get ${a} ${m.i(0)} i32x4.ne`,
      s: ([a]) => `local.get ${a} i32.const 0 i32.ne`,
    }],
    ["bool_f32", U8, F32, un("f32x4.convert_i32x4_s", "f32.convert_i32_s")],
    ["bool_i32", U8, I32, { v: ([a]) => `local.get ${a}`, s: ([a]) => `local.get ${a}` }],
    ["i32_f32", I32, F32, un("f32x4.convert_i32x4_s", "f32.convert_i32_s")],
    ["u32_f32", I32, F32, un("f32x4.convert_i32x4_u", "f32.convert_i32_u")],
    // float -> int truncates toward zero and wraps modulo 2^32 (NaN, ±inf and |x| >= 2^63 give 0)
    ["f32_i32", F32, I32, {
      v: ([a], m) => {
        const t = m.tmp();
        let code = `local.get ${a} local.set ${t} v128.const i32x4 0 0 0 0`;
        for (let l = 0; l < 4; l++) {
          code += ` local.get ${t} f32x4.extract_lane ${l} ${F32_TO_INT} i32x4.replace_lane ${l}`;
        }
        return code;
      },
      s: ([a]) => `local.get ${a} ${F32_TO_INT}`,
    }],
  ];
  for (const [name, from, to, op] of castOps) {
    for (const kinds of kindVariants(1)) {
      fs.push(ewKernel(ewName(`cast_${name}`, "x", kinds), [from], kinds, to, op, ctx()));
    }
  }
  // where(cond: bool, a, b) for every 4-byte dtype (a bit select).
  const sel: EwOp = {
    v: ([c, a, b], m) => `local.get ${a} local.get ${b} local.get ${c} ${m.i(0)} i32x4.ne v128.bitselect`,
    s: ([c, a, b]) => `local.get ${a} local.get ${b} local.get ${c} select`,
  };
  for (const kinds of kindVariants(3)) {
    fs.push(ewKernel(ewName("where", "x32", kinds), [U8, I32, I32], kinds, I32, sel, ctx()));
  }
  return fs;
}

/** Strided copy of up to 4 dims for element sizes 1, 4 and 8 bytes; rows are split over chunks. */
function copyKernel(es: 1 | 4 | 8): FuncDef {
  const locals: [string, ValType][] = [];
  const names = ["dst", "src", "n0", "n1", "n2", "n3", "d0", "d1", "d2", "d3", "s0", "s1", "s2", "s3", "rowsPer"];
  for (const n of names) locals.push([n, "i32"]);
  locals.push(
    ["r", "i32"],
    ["r1", "i32"],
    ["t", "i32"],
    ["i0", "i32"],
    ["i1", "i32"],
    ["i2", "i32"],
    ["pd", "i32"],
    [
      "ps",
      "i32",
    ],
    ["j", "i32"],
    ["bd", "i32"],
    ["bs", "i32"],
    ["vv", "v128"],
    ["rd", "i32"],
    ["rs", "i32"],
  );
  const lg = Math.log2(es);
  const ld = es === 1 ? "i32.load8_u" : es === 4 ? "i32.load" : "i64.load";
  const st = es === 1 ? "i32.store8" : es === 4 ? "i32.store" : "i64.store";
  const splat = es === 1 ? "i8x16.splat" : es === 4 ? "i32x4.splat" : "i64x2.splat";
  let body = names.map((n, i) => arg(n, i)).join("");
  body += `
    local.get $d3 i32.const ${lg} i32.shl local.set $bd
    local.get $s3 i32.const ${lg} i32.shl local.set $bs
    local.get $chunk local.get $rowsPer i32.mul local.tee $r local.get $rowsPer i32.add local.tee $r1
    local.get $n0 local.get $n1 i32.mul local.get $n2 i32.mul local.tee $t
    local.get $r1 local.get $t i32.lt_u select local.set $r1
    local.get $r local.get $n2 i32.rem_u local.set $i2
    local.get $r local.get $n2 i32.div_u local.tee $t local.get $n1 i32.rem_u local.set $i1
    local.get $t local.get $n1 i32.div_u local.set $i0
    local.get $i0 local.get $d0 i32.mul local.get $i1 local.get $d1 i32.mul i32.add local.get $i2 local.get $d2 i32.mul i32.add
    local.set $rd
    local.get $i0 local.get $s0 i32.mul local.get $i1 local.get $s1 i32.mul i32.add local.get $i2 local.get $s2 i32.mul i32.add
    local.set $rs
    block $done loop $rows
      local.get $r local.get $r1 i32.ge_u br_if $done
      local.get $dst local.get $rd i32.const ${lg} i32.shl i32.add local.set $pd
      local.get $src local.get $rs i32.const ${lg} i32.shl i32.add local.set $ps
      local.get $d3 i32.const 1 i32.eq local.get $s3 i32.const 1 i32.eq i32.and
      if
        local.get $pd local.get $ps local.get $n3 i32.const ${lg} i32.shl memory.copy
      else
        local.get $d3 i32.const 1 i32.eq local.get $s3 i32.eqz i32.and
        if
          ;; broadcast fill: vector stores of the splatted value, then the tail
          local.get $ps ${ld} ${splat} local.set $vv
          i32.const 0 local.set $j
          block $fd loop $fl
            local.get $j i32.const ${16 / es} i32.add local.get $n3 i32.gt_u br_if $fd
            local.get $pd local.get $vv v128.store
            local.get $pd i32.const 16 i32.add local.set $pd
            local.get $j i32.const ${16 / es} i32.add local.set $j
            br $fl
          end end
          block $td loop $tl
            local.get $j local.get $n3 i32.ge_u br_if $td
            local.get $pd local.get $ps ${ld} ${st}
            local.get $pd i32.const ${es} i32.add local.set $pd
            local.get $j i32.const 1 i32.add local.set $j
            br $tl
          end end
        else
          i32.const 0 local.set $j
          block $gd loop $gl
            local.get $j local.get $n3 i32.ge_u br_if $gd
            local.get $pd local.get $ps ${ld} ${st}
            local.get $pd local.get $bd i32.add local.set $pd
            local.get $ps local.get $bs i32.add local.set $ps
            local.get $j i32.const 1 i32.add local.set $j
            br $gl
          end end
        end
      end
      local.get $r i32.const 1 i32.add local.set $r
      local.get $rd local.get $d2 i32.add local.set $rd
      local.get $rs local.get $s2 i32.add local.set $rs
      local.get $i2 i32.const 1 i32.add local.tee $i2 local.get $n2 i32.eq
      if
        i32.const 0 local.set $i2
        local.get $rd local.get $d1 i32.add local.get $n2 local.get $d2 i32.mul i32.sub local.set $rd
        local.get $rs local.get $s1 i32.add local.get $n2 local.get $s2 i32.mul i32.sub local.set $rs
        local.get $i1 i32.const 1 i32.add local.tee $i1 local.get $n1 i32.eq
        if
          i32.const 0 local.set $i1
          local.get $rd local.get $d0 i32.add local.get $n1 local.get $d1 i32.mul i32.sub local.set $rd
          local.get $rs local.get $s0 i32.add local.get $n1 local.get $s1 i32.mul i32.sub local.set $rs
        end
      end
      br $rows
    end end`;
  return { name: `copy_e${es}`, params: KPARAMS, locals, body };
}

const SH_LO = "0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23";
const SH_HI = "8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31";
const SH_L64 = "0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23";
const SH_H64 = "8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31";

/**
 * Tiled transposing copy of 4-byte elements: dst[b1, b2, i, j] (dst strides db1, db2, dA, 1) =
 * src[b1, b2, i, j] (src strides sb1, sb2, 1, sB). Chunk = (b1, b2, 16-row tile of i); 16x16 tiles are
 * moved as 4x4 blocks transposed in registers, so both sides are read and written by whole vectors.
 * args: dst, src, nb1, nb2, db1, db2, sb1, sb2, A, B, dA, sB, ntile.
 */
function copyTKernel(): FuncDef {
  const names = ["dst", "src", "nb1", "nb2", "db1", "db2", "sb1", "sb2", "A", "B", "dA", "sB", "ntile"];
  const locals: [string, ValType][] = names.map((n) => [n, "i32"]);
  for (const n of ["b", "i0", "i1", "i4", "j0", "j1", "j4", "i", "j", "bd", "bs", "ps", "pd", "dAb", "sBb"]) {
    locals.push([n, "i32"]);
  }
  for (const n of ["v0", "v1", "v2", "v3", "t0", "t1", "t2", "t3"]) locals.push([n, "v128"]);
  const scalar = (i: string, j: string) =>
    `local.get $bd local.get ${i} local.get $dA i32.mul local.get ${j} i32.add i32.const 2 i32.shl i32.add
     local.get $bs local.get ${j} local.get $sB i32.mul local.get ${i} i32.add i32.const 2 i32.shl i32.add i32.load i32.store`;
  let body = names.map((n, i) => arg(n, i)).join("");
  body += `
    local.get $dA i32.const 2 i32.shl local.set $dAb
    local.get $sB i32.const 2 i32.shl local.set $sBb
    local.get $chunk local.get $ntile i32.div_u local.set $b
    local.get $chunk local.get $ntile i32.rem_u i32.const 16 i32.mul local.tee $i0 i32.const 16 i32.add local.tee $i1
    local.get $A local.get $i1 local.get $A i32.lt_u select local.set $i1
    local.get $i0 local.get $i1 local.get $i0 i32.sub i32.const -4 i32.and i32.add local.set $i4
    local.get $dst local.get $b local.get $nb2 i32.div_u local.get $db1 i32.mul local.get $b local.get $nb2 i32.rem_u local.get $db2 i32.mul i32.add
    i32.const 2 i32.shl i32.add local.set $bd
    local.get $src local.get $b local.get $nb2 i32.div_u local.get $sb1 i32.mul local.get $b local.get $nb2 i32.rem_u local.get $sb2 i32.mul i32.add
    i32.const 2 i32.shl i32.add local.set $bs
    i32.const 0 local.set $j0
    block $jd loop $jl
      local.get $j0 local.get $B i32.ge_u br_if $jd
      local.get $j0 i32.const 16 i32.add local.tee $j1 local.get $B local.get $j1 local.get $B i32.lt_u select local.set $j1
      local.get $j0 local.get $j1 local.get $j0 i32.sub i32.const -4 i32.and i32.add local.set $j4
      ;; full 4x4 blocks
      local.get $j0 local.set $j
      block $bjd loop $bjl
        local.get $j local.get $j4 i32.ge_u br_if $bjd
        local.get $i0 local.set $i
        block $bid loop $bil
          local.get $i local.get $i4 i32.ge_u br_if $bid
          local.get $bs local.get $j local.get $sB i32.mul local.get $i i32.add i32.const 2 i32.shl i32.add local.tee $ps v128.load local.set $v0
          local.get $ps local.get $sBb i32.add local.tee $ps v128.load local.set $v1
          local.get $ps local.get $sBb i32.add local.tee $ps v128.load local.set $v2
          local.get $ps local.get $sBb i32.add v128.load local.set $v3
          local.get $v0 local.get $v1 i8x16.shuffle ${SH_LO} local.set $t0
          local.get $v2 local.get $v3 i8x16.shuffle ${SH_LO} local.set $t1
          local.get $v0 local.get $v1 i8x16.shuffle ${SH_HI} local.set $t2
          local.get $v2 local.get $v3 i8x16.shuffle ${SH_HI} local.set $t3
          local.get $bd local.get $i local.get $dA i32.mul local.get $j i32.add i32.const 2 i32.shl i32.add local.tee $pd
          local.get $t0 local.get $t1 i8x16.shuffle ${SH_L64} v128.store
          local.get $pd local.get $dAb i32.add local.tee $pd local.get $t0 local.get $t1 i8x16.shuffle ${SH_H64} v128.store
          local.get $pd local.get $dAb i32.add local.tee $pd local.get $t2 local.get $t3 i8x16.shuffle ${SH_L64} v128.store
          local.get $pd local.get $dAb i32.add local.get $t2 local.get $t3 i8x16.shuffle ${SH_H64} v128.store
          local.get $i i32.const 4 i32.add local.set $i
          br $bil
        end end
        local.get $j i32.const 4 i32.add local.set $j
        br $bjl
      end end
      ;; leftovers: rows i4..i1 for every column, then columns j4..j1 for rows i0..i4
      local.get $i4 local.set $i
      block $rd loop $rl
        local.get $i local.get $i1 i32.ge_u br_if $rd
        local.get $j0 local.set $j
        block $rjd loop $rjl
          local.get $j local.get $j1 i32.ge_u br_if $rjd
          ${scalar("$i", "$j")}
          local.get $j i32.const 1 i32.add local.set $j
          br $rjl
        end end
        local.get $i i32.const 1 i32.add local.set $i
        br $rl
      end end
      local.get $j4 local.set $j
      block $cd loop $cl
        local.get $j local.get $j1 i32.ge_u br_if $cd
        local.get $i0 local.set $i
        block $cid loop $cil
          local.get $i local.get $i4 i32.ge_u br_if $cid
          ${scalar("$i", "$j")}
          local.get $i i32.const 1 i32.add local.set $i
          br $cil
        end end
        local.get $j i32.const 1 i32.add local.set $j
        br $cl
      end end
      local.get $j1 local.set $j0
      br $jl
    end end`;
  return { name: "copyT_e4", params: KPARAMS, locals, body };
}

type RedOp = "sum" | "max";
type RedDt = "f32" | "i32" | "u32";

/**
 * Row reduction of a contiguous [K, R] array. args: x, out, K, R, rowsPer, parts, partLen.
 * With parts == 1 chunk c reduces whole rows; otherwise chunk c reduces part (c % parts) of row
 * (c / parts) into out[c] (f64 partial sums for f32 sum, same dtype otherwise).
 */
function rowReduce(op: RedOp, dt: RedDt, partial: boolean): FuncDef {
  const names = ["x", "out", "K", "R", "rowsPer", "parts", "partLen"];
  const locals: [string, ValType][] = names.map((n) => [n, "i32"]);
  locals.push(
    ["k", "i32"],
    ["k1", "i32"],
    ["j", "i32"],
    ["j1", "i32"],
    ["jb", "i32"],
    ["p", "i32"],
    ["a0", "v128"],
    ["a1", "v128"],
    ["a2", "v128"],
    ["a3", "v128"],
    ["acc", "f64"],
    ["sf", "f32"],
    ["si", "i32"],
    ["pe", "i32"],
    ["nan", "v128"],
    ["t", "v128"],
  );
  const isF = dt === "f32";
  const fmax = isF && op === "max";
  const vop = op === "sum"
    ? (isF ? "f32x4.add" : "i32x4.add")
    : isF
    ? "f32x4.max"
    : dt === "i32"
    ? "i32x4.max_s"
    : "i32x4.max_u";
  // f32 max in the hot loop: pmax (one instruction) plus a NaN flag, instead of the NaN-exact
  // f32x4.max that V8 expands to ~7 instructions.
  const vstep = (a: string, off: number) =>
    fmax
      ? `local.get ${a} local.get $p v128.load offset=${off} local.tee $t f32x4.pmax local.set ${a}
         local.get $nan local.get $t local.get $t f32x4.ne v128.or local.set $nan`
      : `local.get ${a} local.get $p v128.load offset=${off} ${vop} local.set ${a}`;
  const init = op === "sum" ? (isF ? c4(0) : i4(0)) : isF ? c4(-Infinity) : dt === "i32" ? i4(-2147483648) : i4(0);
  const sinit = op === "sum"
    ? (isF ? "f32.const 0" : "i32.const 0")
    : isF
    ? "f32.const -Infinity"
    : dt === "i32"
    ? "i32.const -2147483648"
    : "i32.const 0";
  const sacc = isF ? "$sf" : "$si";
  // scalar combine of the value on the stack into the scalar accumulator
  const scomb = (val: string) =>
    op === "sum"
      ? isF ? `local.get $sf ${val} f32.add local.set $sf` : `local.get $si ${val} i32.add local.set $si`
      : isF
      ? `local.get $sf ${val} f32.max local.set $sf`
      : `${val} local.set $x_tmp local.get $x_tmp local.get $si local.get $x_tmp local.get $si i32.${
        dt === "i32" ? "gt_s" : "gt_u"
      } select local.set $si`;
  if (!isF && op === "max") locals.push(["x_tmp", "i32"]);
  const lane = isF ? "f32x4.extract_lane" : "i32x4.extract_lane";
  const sload = isF ? "f32.load" : "i32.load";
  // Horizontal combine of a0 into the scalar accumulator.
  let hcomb = `local.get $a0 local.get $a1 ${vop} local.get $a2 local.get $a3 ${vop} ${vop} local.set $a0`;
  for (let l = 0; l < 4; l++) hcomb += ` ${scomb(`local.get $a0 ${lane} ${l}`)}`;
  const f32sum = isF && op === "sum";
  let body = names.map((n, i) => arg(n, i)).join("");
  body += `
    local.get $parts i32.const 1 i32.eq
    if
      local.get $chunk local.get $rowsPer i32.mul local.tee $k local.get $rowsPer i32.add local.tee $k1
      local.get $K local.get $k1 local.get $K i32.lt_u select local.set $k1
      i32.const 0 local.set $j
      local.get $R local.set $j1
    else
      local.get $chunk local.get $parts i32.div_u local.tee $k i32.const 1 i32.add local.set $k1
      local.get $chunk local.get $parts i32.rem_u local.get $partLen i32.mul local.tee $j local.get $partLen i32.add local.tee $j1
      local.get $R local.get $j1 local.get $R i32.lt_u select local.set $j1
    end
    block $kd loop $kl
      local.get $k local.get $k1 i32.ge_u br_if $kd
      local.get $x local.get $k local.get $R i32.mul local.get $j i32.add i32.const 2 i32.shl i32.add local.set $p
      f64.const 0 local.set $acc
      ${sinit} ${sacc === "$sf" ? "local.set $sf" : "local.set $si"}
      v128.const i32x4 0 0 0 0 local.set $nan
      local.get $j local.set $jb
      ;; blocks of up to 1024 elements: 16 lanes of partial results each
      block $bd loop $bl
        local.get $jb local.get $j1 i32.ge_u br_if $bd
        ${init} local.tee $a0 local.tee $a1 local.tee $a2 local.set $a3
        local.get $jb i32.const 1024 i32.add local.tee $jb local.get $j1 local.get $jb local.get $j1 i32.lt_u select local.set $jb
        local.get $x local.get $k local.get $R i32.mul local.get $jb i32.add i32.const 2 i32.shl i32.add local.set $pe
        block $vd loop $vl
          local.get $p i32.const 64 i32.add local.get $pe i32.gt_u br_if $vd
          ${vstep("$a0", 0)}
          ${vstep("$a1", 16)}
          ${vstep("$a2", 32)}
          ${vstep("$a3", 48)}
          local.get $p i32.const 64 i32.add local.set $p
          br $vl
        end end
        ${f32sum ? "f32.const 0 local.set $sf" : ""}
        ${hcomb}
        block $sd loop $sl
          local.get $p local.get $pe i32.ge_u br_if $sd
          ${scomb(`local.get $p ${sload}`)}
          local.get $p i32.const 4 i32.add local.set $p
          br $sl
        end end
        ${f32sum ? "local.get $acc local.get $sf f64.promote_f32 f64.add local.set $acc" : ""}
        br $bl
      end end
      ${fmax ? "local.get $nan v128.any_true if f32.const NaN local.set $sf end" : ""}
      ${
    partial
      ? f32sum
        ? "local.get $out local.get $chunk i32.const 3 i32.shl i32.add local.get $acc f64.store"
        : `local.get $out local.get $chunk i32.const 2 i32.shl i32.add local.get ${sacc} ${
          isF ? "f32.store" : "i32.store"
        }`
      : f32sum
      ? "local.get $out local.get $k i32.const 2 i32.shl i32.add local.get $acc f32.demote_f64 f32.store"
      : `local.get $out local.get $k i32.const 2 i32.shl i32.add local.get ${sacc} ${isF ? "f32.store" : "i32.store"}`
  }
      local.get $k i32.const 1 i32.add local.set $k
      br $kl
    end end`;
  return { name: `redrow_${op}_${dt}${partial ? "_part" : ""}`, params: KPARAMS, locals, body };
}

/**
 * Column reduction of a contiguous [K1, R, K2] array into [K1, K2].
 * args: x, out, K1, R, K2, colBlock, nColBlocks, scratchBase. f32 sums accumulate in f64 (per-thread scratch).
 */
function colReduce(op: RedOp, dt: RedDt): FuncDef {
  const names = ["x", "out", "K1", "R", "K2", "CB", "ncb", "scr"];
  const locals: [string, ValType][] = names.map((n) => [n, "i32"]);
  locals.push(["k1", "i32"], ["c0", "i32"], ["c1", "i32"], ["r", "i32"], ["j", "i32"], ["px", "i32"], ["pa", "i32"], [
    "v",
    "v128",
  ], ["acc", "i32"]);
  const isF = dt === "f32";
  const f32sum = isF && op === "sum";
  const vop = op === "sum"
    ? (isF ? "f32x4.add" : "i32x4.add")
    : isF
    ? "f32x4.max"
    : dt === "i32"
    ? "i32x4.max_s"
    : "i32x4.max_u";
  const sop = op === "sum" ? (isF ? "f32.add" : "i32.add") : isF ? "f32.max" : null;
  if (!sop) locals.push(["xa", "i32"], ["xb", "i32"]);
  const scomb = sop ??
    `local.set $xb local.set $xa local.get $xa local.get $xb local.get $xa local.get $xb i32.${
      dt === "i32" ? "gt_s" : "gt_u"
    } select`;
  let body = names.map((n, i) => arg(n, i)).join("");
  body += `
    local.get $chunk local.get $ncb i32.div_u local.set $k1
    local.get $chunk local.get $ncb i32.rem_u local.get $CB i32.mul local.tee $c0 local.get $CB i32.add local.tee $c1
    local.get $K2 local.get $c1 local.get $K2 i32.lt_u select local.set $c1
    ;; accumulator: f64 scratch for f32 sums, else the output row itself
    ${
    f32sum
      ? `local.get $scr local.get $tid i32.const ${SCRATCH_STRIDE_LOG} i32.shl i32.add local.set $acc
         local.get $acc i32.const 0 local.get $c1 local.get $c0 i32.sub i32.const 3 i32.shl memory.fill`
      : `local.get $out local.get $k1 local.get $K2 i32.mul local.get $c0 i32.add i32.const 2 i32.shl i32.add local.set $acc
         local.get $acc local.get $x local.get $k1 local.get $R i32.mul local.get $K2 i32.mul local.get $c0 i32.add i32.const 2 i32.shl i32.add
         local.get $c1 local.get $c0 i32.sub i32.const 2 i32.shl memory.copy`
  }
    i32.const ${f32sum ? 0 : 1} local.set $r
    block $rd loop $rl
      local.get $r local.get $R i32.ge_u br_if $rd
      local.get $x local.get $k1 local.get $R i32.mul local.get $r i32.add local.get $K2 i32.mul local.get $c0 i32.add i32.const 2 i32.shl i32.add local.set $px
      local.get $acc local.set $pa
      local.get $c0 local.set $j
      block $vd loop $vl
        local.get $j i32.const 4 i32.add local.get $c1 i32.gt_u br_if $vd
        ${
    f32sum
      ? `local.get $px v128.load local.set $v
         local.get $pa local.get $pa v128.load local.get $v f64x2.promote_low_f32x4 f64x2.add v128.store
         local.get $pa local.get $pa v128.load offset=16 local.get $v local.get $v i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7
         f64x2.promote_low_f32x4 f64x2.add v128.store offset=16
         local.get $pa i32.const 32 i32.add local.set $pa`
      : `local.get $pa local.get $pa v128.load local.get $px v128.load ${vop} v128.store
         local.get $pa i32.const 16 i32.add local.set $pa`
  }
        local.get $px i32.const 16 i32.add local.set $px
        local.get $j i32.const 4 i32.add local.set $j
        br $vl
      end end
      block $sd loop $sl
        local.get $j local.get $c1 i32.ge_u br_if $sd
        ${
    f32sum
      ? `local.get $pa local.get $pa f64.load local.get $px f32.load f64.promote_f32 f64.add f64.store
         local.get $pa i32.const 8 i32.add local.set $pa`
      : `local.get $pa local.get $pa ${isF ? "f32.load" : "i32.load"} local.get $px ${
        isF ? "f32.load" : "i32.load"
      } ${scomb} ${isF ? "f32.store" : "i32.store"}
         local.get $pa i32.const 4 i32.add local.set $pa`
  }
        local.get $px i32.const 4 i32.add local.set $px
        local.get $j i32.const 1 i32.add local.set $j
        br $sl
      end end
      local.get $r i32.const 1 i32.add local.set $r
      br $rl
    end end
    ${
    f32sum
      ? `local.get $out local.get $k1 local.get $K2 i32.mul local.get $c0 i32.add i32.const 2 i32.shl i32.add local.set $px
         local.get $acc local.set $pa
         local.get $c0 local.set $j
         block $od loop $ol
           local.get $j local.get $c1 i32.ge_u br_if $od
           local.get $px local.get $pa f64.load f32.demote_f64 f32.store
           local.get $px i32.const 4 i32.add local.set $px
           local.get $pa i32.const 8 i32.add local.set $pa
           local.get $j i32.const 1 i32.add local.set $j
           br $ol
         end end`
      : ""
  }`;
  return { name: `redcol_${op}_${dt}`, params: KPARAMS, locals, body };
}

/**
 * A kernel over the rows of a contiguous f32 [K, R] array. args: x, y, K, R, rowsPer, then the
 * f32 `floats` (loaded into locals of those names). Chunk c runs `row` for rows
 * [c*rowsPer, (c+1)*rowsPer), with $px / $pe at the row's start / end in x and $pv at the end of
 * its whole `vecBytes` blocks (the vector part; the tail is scalar).
 */
function rowKernel(
  name: string,
  m: MathCtx,
  extra: [string, ValType][],
  floats: string[],
  vecBytes: 16 | 32,
  row: string,
): FuncDef {
  const names = ["x", "y", "K", "R", "rowsPer"];
  const locals: [string, ValType][] = [
    ...names.map((n): [string, ValType] => [n, "i32"]),
    ["k", "i32"],
    ["k1", "i32"],
    ["px", "i32"],
    ["pe", "i32"],
    ["pv", "i32"],
    ...floats.map((f): [string, ValType] => [f, "f32"]),
    ...extra,
    ...m.locals,
  ];
  let body = names.map((n, i) => arg(n, i)).join("");
  floats.forEach((f, i) => (body += `local.get $args f32.load offset=${4 * (names.length + i)} local.set $${f}\n`));
  body += `
    local.get $chunk local.get $rowsPer i32.mul local.tee $k local.get $rowsPer i32.add local.tee $k1
    local.get $K local.get $k1 local.get $K i32.lt_u select local.set $k1
    block $kd loop $kl
      local.get $k local.get $k1 i32.ge_u br_if $kd
      local.get $x local.get $k local.get $R i32.mul i32.const 2 i32.shl i32.add local.tee $px
      local.get $R i32.const 2 i32.shl i32.add local.set $pe
      local.get $pe local.get $px i32.sub i32.const ${-vecBytes} i32.and local.get $px i32.add local.set $pv
      ${row}
      local.get $k i32.const 1 i32.add local.set $k
      br $kl
    end end`;
  return { name, params: KPARAMS, locals, body };
}

/** Horizontal sum of the f32x4 in local `v` (left on the stack as f32). */
const hsum = (v: string) =>
  `local.get ${v} f32x4.extract_lane 0 local.get ${v} f32x4.extract_lane 1 f32.add
   local.get ${v} f32x4.extract_lane 2 local.get ${v} f32x4.extract_lane 3 f32.add f32.add`;

/**
 * Softmax of each row of a contiguous f32 [K, R] array: row max (pmax plus a NaN flag),
 * exp(x - max) written out while summing, then one scaling pass; the row stays in L1.
 */
function softmaxRows(relaxed: boolean, table: ConstTable): FuncDef {
  const m = new MathCtx(relaxed, table);
  const locals: [string, ValType][] = [
    ["py", "i32"],
    ["acc", "v128"],
    ["nan", "v128"],
    ["v", "v128"],
    ["e", "v128"],
    ["mx", "f32"],
    ["mx_t", "f32"],
    ["s", "f32"],
    ["inv", "v128"],
  ];
  const expOf = vexp(m, "$v");
  return rowKernel(
    "softmax_f32",
    m,
    locals,
    [],
    16,
    `
      ;; pass 1: the row maximum (NaN anywhere makes it NaN)
      ${c4(-Infinity)} local.set $acc
      v128.const i32x4 0 0 0 0 local.set $nan
      local.get $px local.set $py
      block $md loop $ml
        local.get $py local.get $pv i32.ge_u br_if $md
        local.get $acc local.get $py v128.load local.tee $v f32x4.pmax local.set $acc
        local.get $nan local.get $v local.get $v f32x4.ne v128.or local.set $nan
        local.get $py i32.const 16 i32.add local.set $py
        br $ml
      end end
      local.get $acc f32x4.extract_lane 0 local.get $acc f32x4.extract_lane 1 f32.max
      local.get $acc f32x4.extract_lane 2 local.get $acc f32x4.extract_lane 3 f32.max f32.max local.set $mx
      block $td loop $tl
        local.get $py local.get $pe i32.ge_u br_if $td
        local.get $mx local.get $py f32.load f32.max local.set $mx
        local.get $py i32.const 4 i32.add local.set $py
        br $tl
      end end
      local.get $nan v128.any_true if f32.const NaN local.set $mx end
      ;; pass 2: e = exp(x - max) into y, summed
      local.get $y local.get $px local.get $x i32.sub i32.add local.set $py
      ${c4(0)} local.set $acc
      local.get $mx f32x4.splat local.set $e
      block $ed loop $el
        local.get $px local.get $pv i32.ge_u br_if $ed
        local.get $px v128.load local.get $e f32x4.sub local.set $v
        local.get $py ${expOf} local.tee $v v128.store
        local.get $acc local.get $v f32x4.add local.set $acc
        local.get $px i32.const 16 i32.add local.set $px
        local.get $py i32.const 16 i32.add local.set $py
        br $el
      end end
      ${hsum("$acc")} local.set $s
      block $xd loop $xl
        local.get $px local.get $pe i32.ge_u br_if $xd
        local.get $px f32.load local.get $mx f32.sub f32x4.splat local.set $v
        local.get $py ${expOf} f32x4.extract_lane 0 local.tee $mx_t f32.store
        local.get $s local.get $mx_t f32.add local.set $s
        local.get $px i32.const 4 i32.add local.set $px
        local.get $py i32.const 4 i32.add local.set $py
        br $xl
      end end
      ;; pass 3: scale the row by 1/sum
      f32.const 1 local.get $s f32.div f32x4.splat local.set $inv
      local.get $y local.get $k local.get $R i32.mul i32.const 2 i32.shl i32.add local.set $py
      local.get $y local.get $pv local.get $x i32.sub i32.add local.set $px
      block $sd loop $sl
        local.get $py local.get $px i32.ge_u br_if $sd
        local.get $py local.get $py v128.load local.get $inv f32x4.mul v128.store
        local.get $py i32.const 16 i32.add local.set $py
        br $sl
      end end
      local.get $y local.get $pe local.get $x i32.sub i32.add local.set $px
      block $rd loop $rl
        local.get $py local.get $px i32.ge_u br_if $rd
        local.get $py local.get $py f32.load local.get $inv f32x4.extract_lane 0 f32.mul f32.store
        local.get $py i32.const 4 i32.add local.set $py
        br $rl
      end end
`,
  );
}

/**
 * LayerNorm (no affine) of each row of a contiguous f32 [K, R] array: mean, then the
 * variance of the centred row (two passes, no cancellation), then one scaling pass.
 * Float args: eps, 1/R.
 */
function layerNormRows(relaxed: boolean, table: ConstTable): FuncDef {
  const m = new MathCtx(relaxed, table);
  const locals: [string, ValType][] = [
    ["p", "i32"],
    ["q", "i32"],
    ["a0", "v128"],
    ["a1", "v128"],
    ["a2", "v128"],
    ["a3", "v128"],
    ["mv", "v128"],
    ["rv", "v128"],
    ["d", "f32"],
    ["s", "f32"],
    ["s1", "f32"],
    ["mean", "f32"],
    ["r", "f32"],
  ];
  // Two accumulators per pass: the adds of a row are a dependency chain otherwise.
  return rowKernel(
    "layernorm_f32",
    m,
    locals,
    ["eps", "invR"],
    32,
    `
      ;; pass 1: the mean
      ${c4(0)} local.tee $a0 local.set $a1
      local.get $px local.set $p
      block $d1 loop $l1
        local.get $p local.get $pv i32.ge_u br_if $d1
        local.get $a0 local.get $p v128.load f32x4.add local.set $a0
        local.get $a1 local.get $p v128.load offset=16 f32x4.add local.set $a1
        local.get $p i32.const 32 i32.add local.set $p
        br $l1
      end end
      local.get $a0 local.get $a1 f32x4.add local.set $a0
      ${hsum("$a0")} local.set $s
      block $t1 loop $u1
        local.get $p local.get $pe i32.ge_u br_if $t1
        local.get $s local.get $p f32.load f32.add local.set $s
        local.get $p i32.const 4 i32.add local.set $p
        br $u1
      end end
      local.get $s local.get $invR f32.mul local.tee $mean f32x4.splat local.set $mv
      ;; pass 2: Σd and Σd² of the centred row d = x − mean; Σd corrects the f32 mean (Björck)
      ${c4(0)} local.tee $a0 local.tee $a1 local.tee $a2 local.set $a3
      local.get $px local.set $p
      block $d2 loop $l2
        local.get $p local.get $pv i32.ge_u br_if $d2
        local.get $p v128.load local.get $mv f32x4.sub local.tee $rv local.get $rv
        ${m.relaxed ? "local.get $a0 f32x4.relaxed_madd" : "f32x4.mul local.get $a0 f32x4.add"} local.set $a0
        local.get $a2 local.get $rv f32x4.add local.set $a2
        local.get $p v128.load offset=16 local.get $mv f32x4.sub local.tee $rv local.get $rv
        ${m.relaxed ? "local.get $a1 f32x4.relaxed_madd" : "f32x4.mul local.get $a1 f32x4.add"} local.set $a1
        local.get $a3 local.get $rv f32x4.add local.set $a3
        local.get $p i32.const 32 i32.add local.set $p
        br $l2
      end end
      local.get $a0 local.get $a1 f32x4.add local.set $a0
      local.get $a2 local.get $a3 f32x4.add local.set $a2
      ${hsum("$a0")} local.set $s
      ${hsum("$a2")} local.set $s1
      block $t2 loop $u2
        local.get $p local.get $pe i32.ge_u br_if $t2
        local.get $p f32.load local.get $mean f32.sub local.tee $d local.get $d f32.mul local.get $s f32.add local.set $s
        local.get $s1 local.get $d f32.add local.set $s1
        local.get $p i32.const 4 i32.add local.set $p
        br $u2
      end end
      ;; var = (Σd² − (Σd)²/R)/R, clamped at 0; mean += Σd/R
      local.get $s local.get $s1 local.get $s1 f32.mul local.get $invR f32.mul f32.sub local.get $invR f32.mul
      f32.const 0 f32.max local.get $eps f32.add f32.sqrt local.set $d
      f32.const 1 local.get $d f32.div local.tee $r f32x4.splat local.set $rv
      local.get $mean local.get $s1 local.get $invR f32.mul f32.add local.tee $mean f32x4.splat local.set $mv
      ;; pass 3: (x - mean) * rstd into y
      local.get $px local.set $p
      local.get $y local.get $px local.get $x i32.sub i32.add local.set $q
      block $d3 loop $l3
        local.get $p local.get $pv i32.ge_u br_if $d3
        local.get $q local.get $p v128.load local.get $mv f32x4.sub local.get $rv f32x4.mul v128.store
        local.get $q local.get $p v128.load offset=16 local.get $mv f32x4.sub local.get $rv f32x4.mul v128.store offset=16
        local.get $p i32.const 32 i32.add local.set $p
        local.get $q i32.const 32 i32.add local.set $q
        br $l3
      end end
      block $t3 loop $u3
        local.get $p local.get $pe i32.ge_u br_if $t3
        local.get $q local.get $p f32.load local.get $mean f32.sub local.get $r f32.mul f32.store
        local.get $p i32.const 4 i32.add local.set $p
        local.get $q i32.const 4 i32.add local.set $q
        br $u3
      end end
`,
  );
}

/**
 * One AdamW step over contiguous f32 arrays, in the primitive's operation order (no FMA, so
 * it rounds like the composite). args: p, g, m, v, po, mo, vo, n, chunkLen, then f32
 * b1, c1, b2, c2, bc2, eps, decay, negStep; chunk c handles [c*chunkLen, (c+1)*chunkLen).
 */
function adamwKernel(): FuncDef {
  const names = ["p", "g", "m", "v", "po", "mo", "vo", "n", "len"];
  const fl = ["b1", "c1", "b2", "c2", "bc2", "eps", "decay", "neg"];
  const locals: [string, ValType][] = names.map((n) => [n, "i32"]);
  locals.push(["i", "i32"], ["i1", "i32"], ["iv", "i32"], ["o", "i32"]);
  for (const f of fl) locals.push([f, "f32"], [`${f}V`, "v128"]);
  locals.push(["gv", "v128"], ["m1", "v128"], ["v1", "v128"], ["gs", "f32"], ["ms", "f32"], ["vs", "f32"]);
  let body = names.map((n, i) => arg(n, i)).join("");
  fl.forEach((f, k) => {
    body += `local.get $args f32.load offset=${4 * (names.length + k)} local.tee $${f} f32x4.splat local.set $${f}V
`;
  });
  const at = (base: string) => `local.get $${base} local.get $o i32.add`;
  // step(vec): the same expression in vector (f32x4) or scalar (f32) form
  const step = (T: "f32x4" | "f32", load: string, store: string, sfx: string, g: string, m1: string, v1: string) => `
        ${at("g")} ${load} local.set ${g}
        ${
    at("m")
  } ${load} local.get $b1${sfx} ${T}.mul local.get ${g} local.get $c1${sfx} ${T}.mul ${T}.add local.set ${m1}
        ${
    at("v")
  } ${load} local.get $b2${sfx} ${T}.mul local.get ${g} local.get ${g} ${T}.mul local.get $c2${sfx} ${T}.mul
        ${T}.add local.set ${v1}
        ${at("mo")} local.get ${m1} ${store}
        ${at("vo")} local.get ${v1} ${store}
        ${at("po")}
        ${at("p")} ${load} local.get $decay${sfx} ${T}.mul
        local.get ${m1} local.get ${v1} ${T}.sqrt local.get $bc2${sfx} ${T}.div local.get $eps${sfx} ${T}.add ${T}.div
        local.get $neg${sfx} ${T}.mul ${T}.add ${store}`;
  body += `
    local.get $chunk local.get $len i32.mul local.tee $i local.get $len i32.add local.tee $i1
    local.get $n local.get $i1 local.get $n i32.lt_u select local.tee $i1
    local.get $i i32.sub i32.const -4 i32.and local.get $i i32.add local.set $iv
    block $vd loop $vl
      local.get $i local.get $iv i32.ge_u br_if $vd
      local.get $i i32.const 2 i32.shl local.set $o
      ${step("f32x4", "v128.load", "v128.store", "V", "$gv", "$m1", "$v1")}
      local.get $i i32.const 4 i32.add local.set $i
      br $vl
    end end
    block $sd loop $sl
      local.get $i local.get $i1 i32.ge_u br_if $sd
      local.get $i i32.const 2 i32.shl local.set $o
      ${step("f32", "f32.load", "f32.store", "", "$gs", "$ms", "$vs")}
      local.get $i i32.const 1 i32.add local.set $i
      br $sl
    end end`;
  return { name: "adamw_f32", params: KPARAMS, locals, body };
}

/** log2 of the per-thread scratch size (must match runtime.SCRATCH_BYTES). */
export const SCRATCH_STRIDE_LOG = 20;

/** Every non-GEMM kernel. */
export function basicKernels(relaxed: boolean, table: ConstTable): FuncDef[] {
  const fs: FuncDef[] = [
    ...elementwise(relaxed, table),
    copyKernel(1),
    copyKernel(4),
    copyKernel(8),
    copyTKernel(),
    softmaxRows(relaxed, table),
    layerNormRows(relaxed, table),
    adamwKernel(),
  ];
  for (const op of ["sum", "max"] as const) {
    for (const dt of ["f32", "i32", "u32"] as const) {
      fs.push(rowReduce(op, dt, false), rowReduce(op, dt, true), colReduce(op, dt));
    }
  }
  return fs;
}
