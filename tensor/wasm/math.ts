/**
 * @file SIMD (f32x4) transcendental functions, emitted inline into kernels:
 * exp, log, tanh, sigmoid and erf, each within 2 ulp of the correctly rounded
 * result on the tested ranges (Cephes-style range reduction and polynomials;
 * the erf polynomials were fitted for this file against a series /
 * continued-fraction reference, relative error below 6e-8 before rounding).
 * NaN propagates. Constants are read from a table in linear memory (one load
 * each), which is much cheaper in V8 than materialising `v128.const`.
 */
import type { ValType } from "./emit.ts";

/** Byte address of the constant table in linear memory. */
export const CONST_BASE = 4096;
/** Capacity of the constant table in bytes (256 vectors). */
export const CONST_BYTES = 4096;

/** Collects the constant table and the temporaries of one kernel. */
export class MathCtx {
  /** Emit relaxed-SIMD FMAs. */
  readonly relaxed: boolean;
  /** Temporaries allocated so far (to be declared as locals of the kernel). */
  readonly locals: [string, ValType][] = [];
  #n = 0;
  readonly #table: ConstTable;

  /** A context for one kernel sharing the module's constant table. */
  constructor(relaxed: boolean, table: ConstTable) {
    this.relaxed = relaxed;
    this.#table = table;
  }

  /** A new temporary local (returns its `$name`). */
  tmp(t: ValType = "v128"): string {
    const name = `m${this.#n++}`;
    this.locals.push([name, t]);
    return `$${name}`;
  }

  /** Code pushing the f32x4 splat of `v`. */
  f(v: number): string {
    return `i32.const 0 v128.load offset=${this.#table.addr(v, "f32")}`;
  }

  /** Code pushing the i32x4 splat of `v`. */
  i(v: number): string {
    return `i32.const 0 v128.load offset=${this.#table.addr(v, "i32")}`;
  }

  /** `a*b + c` on f32x4, fused where relaxed SIMD exists (results then differ in the last bit only). */
  madd(a: string, b: string, c: string): string {
    return this.relaxed ? `${a} ${b} ${c} f32x4.relaxed_madd` : `${a} ${b} f32x4.mul ${c} f32x4.add`;
  }
}

/** The module-wide table of vector constants. */
export class ConstTable {
  readonly #map = new Map<string, number>();
  /** The table's bytes, written to memory at {@link CONST_BASE} at startup. */
  readonly bytes: Uint8Array<ArrayBuffer> = new Uint8Array(CONST_BYTES);

  /** Byte address of the splat constant (allocated on first use). */
  addr(v: number, kind: "f32" | "i32"): number {
    const key = `${kind}:${Object.is(v, -0) ? "-0" : v}`;
    let a = this.#map.get(key);
    if (a === undefined) {
      const off = this.#map.size * 16;
      if (off + 16 > CONST_BYTES) throw new Error("wasm math: constant table is full");
      const lanes = kind === "f32" ? new Float32Array([v, v, v, v]) : new Int32Array([v, v, v, v]);
      this.bytes.set(new Uint8Array(lanes.buffer), off);
      a = CONST_BASE + off;
      this.#map.set(key, a);
    }
    return a;
  }
}

/** `a*b + c` on f32x4 without a context (micro-kernels). */
export function vmadd(relaxed: boolean, a: string, b: string, c: string): string {
  return relaxed ? `${a} ${b} ${c} f32x4.relaxed_madd` : `${a} ${b} f32x4.mul ${c} f32x4.add`;
}

function horner(m: MathCtx, x: string, coefs: number[]): string {
  let code = m.f(coefs[0]);
  for (let i = 1; i < coefs.length; i++) code = m.madd(code, `local.get ${x}`, m.f(coefs[i]));
  return code;
}

/** exp(x): x = n ln2 + r, |r| <= ln2/2, Cephes expf polynomial, 2^n as two exact power-of-two factors. */
export function vexp(m: MathCtx, x: string): string {
  const [y, n, r, ni, n1] = [m.tmp(), m.tmp(), m.tmp(), m.tmp(), m.tmp()];
  return `
    ;; pmin/pmax with x first keep NaN (b < a is false for NaN), so NaN flows through to the result
    local.get ${x} ${m.f(89)} f32x4.pmin ${m.f(-104)} f32x4.pmax local.set ${y}
    local.get ${y} ${m.f(1.4426950408889634)} f32x4.mul f32x4.nearest local.set ${n}
    ${m.madd(`local.get ${n}`, m.f(-0.693359375), `local.get ${y}`)} local.set ${r}
    ${m.madd(`local.get ${n}`, m.f(2.12194440e-4), `local.get ${r}`)} local.set ${r}
    ${
    horner(m, r, [1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1])
  }
    local.get ${r} f32x4.mul local.get ${r} f32x4.mul local.get ${r} f32x4.add ${m.f(1)} f32x4.add local.set ${y}
    local.get ${n} ${
    m.relaxed ? "i32x4.relaxed_trunc_f32x4_s" : "i32x4.trunc_sat_f32x4_s"
  } local.tee ${ni} i32.const 1 i32x4.shr_s local.set ${n1}
    local.get ${y}
    local.get ${n1} ${m.i(127)} i32x4.add i32.const 23 i32x4.shl f32x4.mul
    local.get ${ni} local.get ${n1} i32x4.sub ${m.i(127)} i32x4.add i32.const 23 i32x4.shl f32x4.mul`;
}

/** log(x): frexp by bit manipulation (subnormals pre-scaled by 2^23), Cephes logf polynomial. */
export function vlog(m: MathCtx, x: string): string {
  const [a, e, mm, z, y, sub, lt] = [m.tmp(), m.tmp(), m.tmp(), m.tmp(), m.tmp(), m.tmp(), m.tmp()];
  return `
    local.get ${x} ${m.f(1.1754943508222875e-38)} f32x4.lt local.set ${sub}
    local.get ${x} ${m.f(8388608)} f32x4.mul local.get ${x} local.get ${sub} v128.bitselect local.set ${a}
    local.get ${a} i32.const 23 i32x4.shr_u ${m.i(255)} v128.and ${m.i(126)} i32x4.sub
    ${m.i(23)} local.get ${sub} v128.and i32x4.sub f32x4.convert_i32x4_s local.set ${e}
    local.get ${a} ${m.i(0x807fffff)} v128.and ${m.i(0x3f000000)} v128.or local.set ${mm}
    local.get ${mm} ${m.f(0.707106781186547524)} f32x4.lt local.set ${lt}
    local.get ${e} ${m.f(1)} f32x4.sub local.get ${e} local.get ${lt} v128.bitselect local.set ${e}
    local.get ${mm} local.get ${mm} f32x4.add local.get ${mm} local.get ${lt} v128.bitselect ${
    m.f(1)
  } f32x4.sub local.set ${mm}
    local.get ${mm} local.get ${mm} f32x4.mul local.set ${z}
    ${
    horner(m, mm, [
      7.0376836292e-2,
      -1.1514610310e-1,
      1.1676998740e-1,
      -1.2420140846e-1,
      1.4249322787e-1,
      -1.6668057665e-1,
      2.0000714765e-1,
      -2.4999993993e-1,
      3.3333331174e-1,
    ])
  }
    local.get ${mm} f32x4.mul local.get ${z} f32x4.mul local.set ${y}
    ${m.madd(`local.get ${e}`, m.f(-2.12194440e-4), `local.get ${y}`)} local.set ${y}
    ${m.madd(`local.get ${z}`, m.f(-0.5), `local.get ${y}`)} local.set ${y}
    local.get ${mm} local.get ${y} f32x4.add local.set ${y}
    ${m.madd(`local.get ${e}`, m.f(0.693359375), `local.get ${y}`)} local.set ${y}
    ${m.f(-Infinity)} local.get ${y} local.get ${x} ${m.f(0)} f32x4.eq v128.bitselect local.set ${y}
    ${m.f(NaN)} local.get ${y} local.get ${x} ${m.f(0)} f32x4.lt v128.bitselect local.set ${y}
    local.get ${x} local.get ${y} local.get ${x} ${
    m.f(Infinity)
  } f32x4.eq local.get ${x} local.get ${x} f32x4.ne v128.or v128.bitselect`;
}

/** tanh(x): odd polynomial for |x| < 0.625, else 1 - 2/(exp(2|x|)+1) with the sign restored. */
export function vtanh(m: MathCtx, x: string): string {
  const [a, z, p, q, a2] = [m.tmp(), m.tmp(), m.tmp(), m.tmp(), m.tmp()];
  return `
    local.get ${x} f32x4.abs local.tee ${a} local.get ${a} f32x4.add local.set ${a2}
    local.get ${x} local.get ${x} f32x4.mul local.set ${z}
    ${horner(m, z, [-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1, -3.33332819422e-1])}
    local.get ${z} f32x4.mul local.get ${x} f32x4.mul local.get ${x} f32x4.add local.set ${p}
    ${m.f(1)} ${m.f(2)} ${vexp(m, a2)} ${m.f(1)} f32x4.add f32x4.div f32x4.sub
    ${m.i(0x7fffffff)} v128.and local.get ${x} ${m.i(0x80000000)} v128.and v128.or local.set ${q}
    local.get ${p} local.get ${q} local.get ${a} ${m.f(0.625)} f32x4.lt v128.bitselect`;
}

/** sigmoid(x): e = exp(-|x|); x >= 0 ? 1/(1+e) : e/(1+e), stable on both sides. */
export function vsigmoid(m: MathCtx, x: string): string {
  const [na, e, r] = [m.tmp(), m.tmp(), m.tmp()];
  return `
    local.get ${x} f32x4.abs f32x4.neg local.set ${na}
    ${vexp(m, na)} local.set ${e}
    ${m.f(1)} ${m.f(1)} local.get ${e} f32x4.add f32x4.div local.set ${r}
    local.get ${r} local.get ${e} local.get ${r} f32x4.mul local.get ${x} ${m.f(0)} f32x4.ge v128.bitselect`;
}

const ERF_SMALL = [
  7.851581757060258e-5,
  -8.009499633280542e-4,
  5.188248288650695e-3,
  -2.6853769993891056e-2,
  1.1283584148090346e-1,
  -3.7612625738429384e-1,
  1.1283791657172964,
];
const ERF_LARGE = [
  2.131761871661313e-5,
  -4.1419687082457035e-5,
  -3.0920348360844195e-5,
  3.7971632234698634e-4,
  -1.5423467418229796e-3,
  3.7989777903710137e-3,
  -1.821396794805401e-4,
  -6.434437450819656e-2,
  0.4895247891388725,
];

/** erf(x): |x| < 1: x P(x^2); 1 <= |x| < 4: 1 - exp(-x^2) F(1/x) / x; saturates at |x| >= 4. */
export function verf(m: MathCtx, x: string): string {
  const [a, z, p, u, q, nz, ra] = [m.tmp(), m.tmp(), m.tmp(), m.tmp(), m.tmp(), m.tmp(), m.tmp()];
  return `
    local.get ${x} f32x4.abs ${m.f(4)} f32x4.pmin local.set ${a}
    local.get ${a} local.get ${a} f32x4.mul local.tee ${z} f32x4.neg local.set ${nz}
    ${horner(m, z, ERF_SMALL)} local.get ${a} f32x4.mul local.set ${p}
    ${m.f(1)} local.get ${a} f32x4.div local.tee ${ra} ${m.f(0.625)} f32x4.sub ${
    m.f(1 / 0.375)
  } f32x4.mul local.set ${u}
    ${horner(m, u, ERF_LARGE)} local.set ${q}
    ${m.f(1)} ${vexp(m, nz)} local.get ${q} f32x4.mul local.get ${ra} f32x4.mul f32x4.sub local.set ${q}
    local.get ${p} local.get ${q} local.get ${a} ${m.f(1)} f32x4.lt v128.bitselect
    ${m.i(0x7fffffff)} v128.and local.get ${x} ${m.i(0x80000000)} v128.and v128.or`;
}

/** Exact GELU 0.5·x·(1 + erf(x/√2)). */
export function vgelu(m: MathCtx, x: string): string {
  const t = m.tmp();
  return `
    local.get ${x} ${m.f(Math.SQRT1_2)} f32x4.mul local.set ${t}
    ${verf(m, t)} ${m.f(1)} f32x4.add local.get ${x} ${m.f(0.5)} f32x4.mul f32x4.mul`;
}

/** Tanh GELU 0.5·x·(1 + tanh(√(2/π)·x·(1 + 0.044715·x²))). */
export function vgeluTanh(m: MathCtx, x: string): string {
  const u = m.tmp();
  const c = Math.sqrt(2 / Math.PI);
  return `
    ${
    m.madd(`local.get ${x} local.get ${x} f32x4.mul`, m.f(c * 0.044715), m.f(c))
  } local.get ${x} f32x4.mul local.set ${u}
    ${vtanh(m, u)} ${m.f(1)} f32x4.add local.get ${x} ${m.f(0.5)} f32x4.mul f32x4.mul`;
}

/** d/dx of the exact GELU: 0.5·(1 + erf(x/√2)) + x·e^(−x²/2)/√(2π). */
export function vgeluGrad(m: MathCtx, x: string): string {
  const [t, p, z] = [m.tmp(), m.tmp(), m.tmp()];
  return `
    local.get ${x} ${m.f(Math.SQRT1_2)} f32x4.mul local.set ${t}
    ${verf(m, t)} ${m.f(1)} f32x4.add ${m.f(0.5)} f32x4.mul local.set ${p}
    local.get ${x} local.get ${x} f32x4.mul ${m.f(-0.5)} f32x4.mul local.set ${z}
    ${m.madd(`${vexp(m, z)} local.get ${x} f32x4.mul`, m.f(1 / Math.sqrt(2 * Math.PI)), `local.get ${p}`)}`;
}

/** d/dx of the tanh GELU as σ + 2x·σ·(1 − σ)·u', σ = sigmoid(2u), u = c·x·(1 + a·x²) (no cancellation in either tail). */
export function vgeluTanhGrad(m: MathCtx, x: string): string {
  const [xc, x2, u, na, e, r, s, ge, sp] = [
    m.tmp(),
    m.tmp(),
    m.tmp(),
    m.tmp(),
    m.tmp(),
    m.tmp(),
    m.tmp(),
    m.tmp(),
    m.tmp(),
  ];
  const c = Math.sqrt(2 / Math.PI), a = 0.044715;
  // Past |x| = 10 the derivative is 0 or 1 to f32 precision; clamping keeps x² finite (NaN passes).
  return `
    local.get ${x} ${m.f(10)} f32x4.pmin ${m.f(-10)} f32x4.pmax local.set ${xc}
    local.get ${xc} local.get ${xc} f32x4.mul local.set ${x2}
    ${m.madd(`local.get ${x2}`, m.f(c * a), m.f(c))} local.get ${xc} f32x4.mul local.tee ${u}
    f32x4.abs ${m.f(-2)} f32x4.mul local.set ${na}
    ${vexp(m, na)} local.set ${e}
    ${m.f(1)} ${m.f(1)} local.get ${e} f32x4.add f32x4.div local.set ${r}
    local.get ${e} local.get ${r} f32x4.mul local.set ${s}
    local.get ${u} ${m.f(0)} f32x4.ge local.set ${ge}
    local.get ${r} local.get ${s} local.get ${ge} v128.bitselect local.set ${sp}
    local.get ${sp} local.get ${s} local.get ${r} local.get ${ge} v128.bitselect f32x4.mul
    local.get ${xc} f32x4.mul ${m.f(2)} f32x4.mul
    ${m.madd(`local.get ${x2}`, m.f(3 * a * c), m.f(c))} f32x4.mul local.get ${sp} f32x4.add`;
}
