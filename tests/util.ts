/**
 * @file Shared test helpers: a seeded RNG for shapes and values, central
 * finite differences in f64, and closeness assertions with readable messages.
 */
import * as d from "../mod.ts";
import type { DType, Tensor } from "../mod.ts";

/** Small deterministic RNG (mulberry32) so one fast-check integer drives a whole case. */
export class Rng {
  #s: number;
  /** Seeds the generator. */
  constructor(seed: number) {
    this.#s = seed >>> 0;
  }
  /** Uniform in [0, 1). */
  next(): number {
    let t = (this.#s = (this.#s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** Integer in [lo, hi]. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  /** Uniform real in [lo, hi). */
  real(lo: number, hi: number): number {
    return lo + (hi - lo) * this.next();
  }
  /** True with probability p. */
  bool(p = 0.5): boolean {
    return this.next() < p;
  }
  /** A random shape of rank in [minRank, maxRank] and dims in [1, maxDim]. */
  shape(minRank = 0, maxRank = 3, maxDim = 3): number[] {
    return Array.from({ length: this.int(minRank, maxRank) }, () => this.int(1, maxDim));
  }
  /** `n` reals in [lo, hi), with |v| >= away when `away` is given. */
  values(n: number, lo = -2, hi = 2, away = 0): number[] {
    return Array.from({ length: n }, () => {
      let v = this.real(lo, hi);
      while (Math.abs(v) < away) v = this.real(lo, hi);
      return v;
    });
  }
  /** A random permutation of 0..n-1. */
  perm(n: number): number[] {
    const p = [...Array(n).keys()];
    for (let i = n - 1; i > 0; i--) {
      const j = this.int(0, i);
      [p[i], p[j]] = [p[j], p[i]];
    }
    return p;
  }
}

/** A shape that broadcasts to `s`: some axes set to 1, some leading axes dropped. */
export function broadcastable(rng: Rng, s: readonly number[]): number[] {
  const drop = rng.int(0, s.length);
  return s.slice(drop).map((v) => (rng.bool(0.3) ? 1 : v));
}

/** Creates an f64 tensor of `shape` with values from `rng`. */
export function randT(rng: Rng, shape: readonly number[], lo = -2, hi = 2, away = 0, dtype: DType = "f64"): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  return d.tensor(rng.values(n, lo, hi, away), { shape, dtype });
}

/** Host copy of a tensor's values as plain numbers. */
export function vals(t: Tensor): number[] {
  return Array.from(t.dataSync(), Number);
}

/**
 * Checks the gradient of `L = sum(f(...xs) * w)` with respect to every float
 * input against central finite differences (f64). Throws with the input,
 * element index and both values on mismatch.
 */
export function checkGrad(
  f: (...xs: Tensor[]) => Tensor,
  xs: Tensor[],
  opts: { eps?: number; tol?: number; seed?: number; wrt?: number[] } = {},
): void {
  const eps = opts.eps ?? 1e-6;
  const tol = opts.tol ?? 1e-6;
  const wrt = opts.wrt ?? xs.flatMap((x, i) => (x.dtype === "f64" ? [i] : []));
  const out0 = f(...xs);
  const rng = new Rng(opts.seed ?? 7);
  const w = d.tensor(rng.values(out0.size, -1, 1), { shape: out0.shape, dtype: out0.dtype });
  const L = (...ys: Tensor[]) => d.sum(d.mul(f(...ys), w));
  const grads = d.grad(L, { argnums: wrt })(...xs) as Tensor[];
  wrt.forEach((argi, gi) => {
    const x = xs[argi];
    const base = vals(x);
    const g = vals(grads[gi]);
    if (grads[gi].shape.join() !== x.shape.join()) {
      throw new Error(`grad of input ${argi} has shape [${grads[gi].shape}] but input has [${x.shape}]`);
    }
    for (let i = 0; i < base.length; i++) {
      const at = (v: number) => {
        const p = base.slice();
        p[i] = v;
        const ys = xs.slice();
        ys[argi] = d.tensor(p, { shape: x.shape, dtype: "f64" });
        return vals(L(...ys))[0];
      };
      const fd = (at(base[i] + eps) - at(base[i] - eps)) / (2 * eps);
      if (!(Math.abs(fd - g[i]) <= tol * Math.max(1, Math.abs(fd)))) {
        throw new Error(`input ${argi} [${x.shape}] element ${i}: autodiff ${g[i]} vs finite difference ${fd}`);
      }
    }
  });
}

/** Asserts elementwise closeness with a message naming the first bad index. */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  rtol = 1e-6,
  atol = 1e-9,
  what = "",
) {
  if (actual.length !== expected.length) {
    throw new Error(`${what}: length ${actual.length} vs expected ${expected.length}`);
  }
  for (let i = 0; i < actual.length; i++) {
    const [a, e] = [Number(actual[i]), Number(expected[i])];
    if (Number.isNaN(e) && Number.isNaN(a)) continue;
    if (a === e) continue;
    if (!(Math.abs(a - e) <= atol + rtol * Math.abs(e))) throw new Error(`${what}: index ${i}: ${a} vs expected ${e}`);
  }
}
