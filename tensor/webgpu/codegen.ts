/**
 * @file WGSL code generation shared by every kernel: dtype mapping (bool is
 * stored as u32), scalar math helpers written so that NaN, infinities and
 * integer wrap-around match the cpu oracle bit for bit where it is integer
 * arithmetic, a uniform-struct builder (shapes and strides are uniforms, so a
 * pipeline serves every shape of a given rank), and strided index math.
 *
 * Index arithmetic is u32 with wrap-around: a negative stride (a flipped
 * view) is passed as its two's-complement u32 and the sum still lands on the
 * right element as long as the final index is in range.
 */
import type { DType } from "../dtype.ts";
import { DTypeError } from "../errors.ts";

/** WGSL scalar type used in registers for a dtype. */
export function regType(d: DType): string {
  switch (d) {
    case "f32":
      return "f32";
    case "f16":
      return "f32";
    case "i32":
      return "i32";
    case "u32":
      return "u32";
    case "bool":
      return "bool";
    default:
      throw new DTypeError(`webgpu: dtype ${d} is not supported on the webgpu backend (f64 is cpu-only)`);
  }
}

/** WGSL element type of the storage array for a dtype. */
export function storeType(d: DType): string {
  return d === "bool" ? "u32" : d === "f16" ? "f16" : regType(d);
}

/** Bytes per stored element. */
export function elemBytes(d: DType): number {
  return d === "f16" ? 2 : 4;
}

/** Expression converting a stored element to its register value. */
export function fromStore(d: DType, e: string): string {
  return d === "bool" ? `(${e} != 0u)` : d === "f16" ? `f32(${e})` : e;
}

/** Expression converting a register value to its stored form. */
export function toStore(d: DType, e: string): string {
  return d === "bool" ? `select(0u, 1u, ${e})` : d === "f16" ? `f16(${e})` : e;
}

/** `enable f16;` when a kernel touches f16. */
export function enables(dtypes: readonly DType[]): string {
  return dtypes.includes("f16") ? "enable f16;\n" : "";
}

// ------------------------------------------------------------------ helpers

/**
 * Helper functions by name; `T` is the float register type (always f32: f16
 * tensors are stored as f16 but computed in f32). Each is
 * written to give the cpu backend's special-value behaviour regardless of
 * how the driver treats NaN in comparisons and builtins.
 */
const FLOAT_HELPERS: Record<string, (T: string) => string> = {
  isnan: (T) => `fn isnan_${T}(x: ${T}) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u; }`,
  nan: (T) => `fn nan_${T}() -> ${T} { return bitcast<f32>(0x7fc00000u); }`,
  inf: (T) => `fn inf_${T}() -> ${T} { return bitcast<f32>(0x7f800000u); }`,
  // 2 atanh(s) = log((1 + s) / (1 - s)) for |s| <= 0.2 (log1p and log build on it).
  atanh2: (T) =>
    `fn atanh2_${T}(s: ${T}) -> ${T} {
  let z = s * s;
  return 2.0 * s * (1.0 + z * (0.3333333333333333 + z * (0.2 + z * (0.14285714285714285 + z * (0.1111111111111111
    + z * (0.09090909090909091 + z * (0.07692307692307693 + z * 0.06666666666666667)))))));
}`,
  // Natural log to ~1 ulp: x = m 2^e with m in [0.707, 1.414), log x = e ln2 + 2 atanh((m-1)/(m+1)).
  // (The driver's log loses relative accuracy near 1.) Negative inputs give NaN, 0 gives -inf.
  log: (T) =>
    `fn log_${T}(x: ${T}) -> ${T} {
  if (isnan_${T}(x) || x < 0.0) { return nan_${T}(); }
  if (x == 0.0) { return -inf_${T}(); }
  if (x > 3.0e38) { return x; }
  let fe = frexp(x);
  var m = fe.fract;
  var e = f32(fe.exp);
  if (m < 0.70710678118654752) { m = m * 2.0; e = e - 1.0; }
  let f = m - 1.0;
  return e * 0.693145751953125 + (e * 1.4286068203094172e-06 + atanh2_${T}(f / (2.0 + f)));
}`,
  sqrt: (T) =>
    `fn sqrt_${T}(x: ${T}) -> ${T} {
  if (isnan_${T}(x) || x < 0.0) { return nan_${T}(); }
  if (x > 3.0e38) { return x; }
  return sqrt(x);
}`,
  rsqrt: (T) =>
    `fn rsqrt_${T}(x: ${T}) -> ${T} {
  if (isnan_${T}(x) || x < 0.0) { return nan_${T}(); }
  if (x == 0.0) { return select(inf_${T}(), -inf_${T}(), bitcast<u32>(x) != 0u); }
  if (x > 3.0e38) { return 0.0; }
  return 1.0 / sqrt(x);
}`,
  // e^x to ~1 ulp: x = n ln2 + r (Cody-Waite, |r| <= ln2/2), e^r by its Taylor polynomial, scaled by 2^n.
  // (exp2(x log2 e) loses |x| ulps in the product.)
  exp: (T) =>
    `fn exp_${T}(x: ${T}) -> ${T} {
  if (isnan_${T}(x)) { return x; }
  if (x > 88.72283935546875) { return inf_${T}(); }
  if (x < -104.0) { return 0.0; }
  let n = round(x * 1.4426950408889634);
  let r = (x - n * 0.693145751953125) - n * 1.4286068203094172e-06;
  let q = 1.0 + r * (1.0 + r * (0.5 + r * (0.16666666666666666 + r * (0.041666666666666664 + r * (0.008333333333333333
    + r * (0.001388888888888889 + r * 0.0001984126984126984))))));
  return ldexp(q, i32(n));
}`,
  // exp(x) - 1, by a Taylor polynomial near 0 so small arguments keep full relative accuracy.
  expm1: (T) =>
    `fn expm1_${T}(x: ${T}) -> ${T} {
  if (abs(x) < 0.5) {
    return x * (1.0 + x * (0.5 + x * (0.16666666666666666 + x * (0.041666666666666664 + x * (0.008333333333333333
      + x * (0.001388888888888889 + x * (0.0001984126984126984 + x * (2.48015873015873e-05 + x * 2.755731922398589e-06))))))));
  }
  return exp_${T}(x) - 1.0;
}`,
  // log(1 + x) via 2 atanh(x / (2 + x)) near 0.
  log1p: (T) =>
    `fn log1p_${T}(x: ${T}) -> ${T} {
  if (abs(x) < 0.5) { return atanh2_${T}(x / (2.0 + x)); }
  return log_${T}(1.0 + x);
}`,
  tanh: (T) =>
    `fn tanh_${T}(x: ${T}) -> ${T} {
  if (isnan_${T}(x)) { return x; }
  let e = expm1_${T}(-2.0 * abs(x));
  let t = -e / (e + 2.0);
  return select(t, -t, x < 0.0);
}`,
  sigmoid: (T) =>
    `fn sigmoid_${T}(x: ${T}) -> ${T} {
  if (isnan_${T}(x)) { return x; }
  if (x >= 0.0) { return 1.0 / (1.0 + exp_${T}(-x)); }
  let e = exp_${T}(x);
  return e / (1.0 + e);
}`,
  // Taylor series below 0.5, Numerical Recipes' erfc (fractional error < 1.2e-7) above.
  erf: (T) =>
    `fn erf_${T}(x: ${T}) -> ${T} {
  if (isnan_${T}(x)) { return x; }
  let z = abs(x);
  if (z >= 6.0) { return select(1.0, -1.0, x < 0.0); }
  if (z < 0.5) {
    let q = x * x;
    return 1.1283791670955126 * x * (1.0 + q * (-0.3333333333333333 + q * (0.1 + q * (-0.023809523809523808
      + q * (0.004629629629629629 + q * (-0.0007575757575757576 + q * (0.00010683760683760684 + q * -1.3227513227513228e-05)))))));
  }
  let t = 1.0 / (1.0 + 0.5 * z);
  let r = t * exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806
    + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))));
  return select(1.0 - r, r - 1.0, x < 0.0);
}`,
  gelu: (T) =>
    `fn gelu_${T}(x: ${T}) -> ${T} {
  return 0.5 * x * (1.0 + erf_${T}(x * 0.7071067811865476));
}`,
  geluTanh: (T) =>
    `fn geluTanh_${T}(x: ${T}) -> ${T} {
  return 0.5 * x * (1.0 + tanh_${T}(0.7978845608028654 * (x + 0.044715 * x * x * x)));
}`,
  geluGrad: (T) =>
    `fn geluGrad_${T}(x: ${T}) -> ${T} {
  return 0.5 * (1.0 + erf_${T}(x * 0.7071067811865476)) + x * exp_${T}(-0.5 * x * x) * 0.3989422804014327;
}`,
  // σ + 2x·σ·(1 − σ)·u' with σ = sigmoid(2u): 0.5·(1 + tanh u) without cancellation in either tail.
  geluTanhGrad: (T) =>
    `fn geluTanhGrad_${T}(x0: ${T}) -> ${T} {
  if (isnan_${T}(x0)) { return x0; }
  let x = clamp(x0, -10.0, 10.0);
  let x2 = x * x;
  let u = 0.7978845608028654 * x * (1.0 + 0.044715 * x2);
  let e = exp_${T}(-2.0 * abs(u));
  let r = 1.0 / (1.0 + e);
  let sp = select(e * r, r, u >= 0.0);
  let sn = select(r, e * r, u >= 0.0);
  return sp + 2.0 * x * sp * sn * 0.7978845608028654 * (1.0 + 0.134145 * x2);
}`,
  sin: (T) =>
    `fn sin_${T}(x: ${T}) -> ${T} {
  if (isnan_${T}(x) || abs(x) > 3.0e38) { return nan_${T}(); }
  return sin(x);
}`,
  cos: (T) =>
    `fn cos_${T}(x: ${T}) -> ${T} {
  if (isnan_${T}(x) || abs(x) > 3.0e38) { return nan_${T}(); }
  return cos(x);
}`,
  // Math.pow semantics: pow(x, 0) = 1, NaN otherwise propagates, negative bases need integer exponents.
  pow: (T) =>
    `fn pow_${T}(a: ${T}, b: ${T}) -> ${T} {
  if (b == 0.0) { return 1.0; }
  if (isnan_${T}(a) || isnan_${T}(b)) { return nan_${T}(); }
  let ab = abs(a);
  var r: ${T};
  if (ab == 0.0) { r = select(0.0, inf_${T}(), b < 0.0); }
  else if (ab > 3.0e38) { r = select(inf_${T}(), 0.0, b < 0.0); }
  else {
    let y = b * log2(ab);
    r = select(select(exp2(y), inf_${T}(), y > 128.0), 0.0, y < -150.0);
    if (ab == 1.0) { r = select(1.0, nan_${T}(), abs(b) > 3.0e38); }
  }
  let neg = (bitcast<u32>(a) >> 31u) == 1u;
  if (neg) {
    let isInt = floor(b) == b;
    if (!isInt && ab != 0.0 && ab <= 3.0e38) { return nan_${T}(); }
    let odd = isInt && abs(b) < 16777216.0 && (i32(b) & 1) == 1;
    if (odd) { r = -r; }
  }
  return r;
}`,
  maximum: (T) =>
    `fn maximum_${T}(a: ${T}, b: ${T}) -> ${T} {
  if (isnan_${T}(a) || isnan_${T}(b)) { return nan_${T}(); }
  return max(a, b);
}`,
  minimum: (T) =>
    `fn minimum_${T}(a: ${T}, b: ${T}) -> ${T} {
  if (isnan_${T}(a) || isnan_${T}(b)) { return nan_${T}(); }
  return min(a, b);
}`,
  sign: (T) =>
    `fn sign_${T}(x: ${T}) -> ${T} {
  return select(select(x, -1.0, x < 0.0), 1.0, x > 0.0);
}`,
  // Float to 32-bit integer bits, truncating; out-of-range values wrap modulo 2^32 like a JS typed-array store.
  f2bits: (T) =>
    `fn f2bits_${T}(xin: ${T}) -> u32 {
  let x = xin;
  if (isnan_f32(x) || abs(x) > 3.0e38) { return 0u; }
  let t = trunc(x);
  if (abs(t) < 2147483648.0) { return bitcast<u32>(i32(t)); }
  let bits = bitcast<u32>(t);
  let e = (bits >> 23u) & 0xffu;
  let m = (bits & 0x7fffffu) | 0x800000u;
  let sh = e - 150u;
  var v = select(m << min(sh, 31u), 0u, sh >= 32u);
  if (t < 0.0) { v = 0u - v; }
  return v;
}`,
};

/** Dependencies between helpers. */
const HELPER_DEPS: Record<string, string[]> = {
  isnan: [],
  nan: [],
  inf: [],
  atanh2: [],
  log: ["isnan", "nan", "inf", "atanh2"],
  sqrt: ["isnan", "nan"],
  rsqrt: ["isnan", "nan", "inf"],
  exp: ["isnan", "inf"],
  expm1: ["exp"],
  log1p: ["log", "atanh2"],
  tanh: ["isnan", "expm1"],
  sigmoid: ["isnan", "exp"],
  erf: ["isnan"],
  gelu: ["erf"],
  geluTanh: ["tanh"],
  geluGrad: ["erf", "exp"],
  geluTanhGrad: ["isnan", "exp"],
  sin: ["isnan", "nan"],
  cos: ["isnan", "nan"],
  pow: ["isnan", "nan", "inf"],
  maximum: ["isnan", "nan"],
  minimum: ["isnan", "nan"],
  sign: [],
  f2bits: ["isnan"],
};

/** Collects helper functions (with dependencies) for one kernel. */
export class Helpers {
  #done = new Set<string>();
  #out: string[] = [];
  /** Requests helper `name` for float type `T`; returns the function name. */
  use(name: string, T: string): string {
    const key = `${name}_${T}`;
    if (this.#done.has(key)) return key;
    for (const d of HELPER_DEPS[name]) this.use(d, T);
    this.#done.add(key);
    this.#out.push(FLOAT_HELPERS[name](T));
    return key;
  }
  /** The WGSL source of every helper requested so far. */
  source(): string {
    return this.#out.join("\n") + "\n";
  }
}

// ------------------------------------------------------------------ uniforms

/**
 * A uniform divisor: the value and its "magic" multiplier and shifts, so kernels divide by
 * multiply-high and shifts. llvmpipe has no vector integer division (x86 has none): every
 * `/` or `%` becomes one scalar division per lane, which made index math dominate kernels.
 */
export interface Div {
  readonly d: string;
  readonly m: string;
  readonly s: string;
}

/** Host side of a `Div`: `[d, m, s]` for the uniform struct (Granlund-Montgomery, round-up variant). */
export function magic(d: number): [number, number, number] {
  const dd = Math.max(1, d >>> 0);
  let l = 0;
  while (2 ** l < dd) l++;
  const m = Number((((1n << 32n) * ((1n << BigInt(l)) - BigInt(dd))) / BigInt(dd)) + 1n);
  return [dd, m >>> 0, Math.min(l, 1) | (Math.max(l - 1, 0) << 8)];
}

/** Flattens divisors' host values, in declaration order. */
export function magics(ds: readonly number[]): number[] {
  return ds.flatMap(magic);
}

/** WGSL for u32 division by a `Div` (`n / d`, exact for every u32 n). */
export function fdiv(n: string, D: Div): string {
  return `fdiv(${n}, ${D.m}, ${D.s})`;
}

/** The functions `fdiv` needs (include in kernels that divide). */
export const DIV_SRC = `fn mulhi(a: u32, b: u32) -> u32 {
  let a0 = a & 0xffffu; let a1 = a >> 16u; let b0 = b & 0xffffu; let b1 = b >> 16u;
  let p00 = a0 * b0; let p01 = a0 * b1; let p10 = a1 * b0;
  let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
  return a1 * b1 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u);
}
fn fdiv(n: u32, m: u32, s: u32) -> u32 {
  let t = mulhi(m, n);
  return (t + ((n - t) >> (s & 0xffu))) >> (s >> 8u);
}
`;

/** Builds a uniform struct of u32 fields and packs values in the same order. */
export class Uniforms {
  #names: string[] = [];
  /** Declares a field (returns its WGSL access `p.name`). */
  field(name: string): string {
    this.#names.push(name);
    return `p.${name}`;
  }
  /** Declares `n` fields `name0..name{n-1}`. */
  fields(name: string, n: number): string[] {
    return Array.from({ length: n }, (_, i) => this.field(`${name}${i}`));
  }
  /** Declares a divisor (three fields; pack its value with `magic`). */
  divisor(name: string): Div {
    return { d: this.field(name), m: this.field(`${name}_m`), s: this.field(`${name}_s`) };
  }
  /** Declares `n` divisors `name0..`. */
  divisors(name: string, n: number): Div[] {
    return Array.from({ length: n }, (_, i) => this.divisor(`${name}${i}`));
  }
  /** WGSL declaration of the struct and its binding 0. */
  decl(): string {
    const names = this.#names.length ? this.#names : ["unused"];
    const pad = (4 - (names.length % 4)) % 4;
    const all = [...names, ...Array.from({ length: pad }, (_, i) => `pad${i}`)];
    return `struct P { ${all.map((n) => `${n}: u32`).join(", ")} }\n@group(0) @binding(0) var<uniform> p: P;\n`;
  }
}

/** Packs numbers (negative values become their u32 two's complement) into a uniform array. */
export function pack(vals: readonly number[]): Uint32Array {
  const n = Math.max(4, Math.ceil(vals.length / 4) * 4);
  const out = new Uint32Array(n);
  for (let i = 0; i < vals.length; i++) out[i] = vals[i] >>> 0;
  return out;
}

// ------------------------------------------------------------------ index math

/**
 * WGSL statements that unravel flat index `flat` (u32 expression) over a
 * shape given by divisors `sh` into variables `${v}0..`, innermost last.
 */
export function unravel(flat: string, sh: readonly Div[], v: string): string {
  const r = sh.length;
  if (r === 0) return "";
  if (r === 1) return `let ${v}0 = ${flat};\n`;
  let s = `var ${v}rem = ${flat};\n`;
  for (let a = r - 1; a >= 1; a--) {
    s += `let ${v}q${a} = ${fdiv(`${v}rem`, sh[a])}; let ${v}${a} = ${v}rem - ${v}q${a} * ${
      sh[a].d
    }; ${v}rem = ${v}q${a};\n`;
  }
  s += `let ${v}0 = ${v}rem;\n`;
  return s;
}

/** Offset expression `off + i0*s0 + ...` for index variables `${v}0..`. */
export function offsetExpr(off: string, strides: readonly string[], v: string): string {
  return [off, ...strides.map((s, a) => `${v}${a} * ${s}`)].join(" + ");
}

/** Workgroup size of the one-thread-per-item kernels. */
export const WG = 256;

/** The thread's item index for a 2-D grid (`p.gx` = threads per grid row). */
export const THREAD_INDEX = `let t = gid.x + gid.y * p.gx;`;
