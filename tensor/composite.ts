/**
 * @file Fused primitives expressed through a backend's own simpler
 * primitives, for backends (or dtypes) without a dedicated kernel. The
 * composition runs below autograd, so it records nothing and its
 * temporaries are released at once: the primitive's VJP still saves only
 * what its rule names.
 */
import type { Backend, Handle } from "./backend.ts";
import { allocHost, type DType } from "./dtype.ts";
import { type Aval, type ParamsOf, type Prim, shapeRules } from "./prims.ts";

type Val = [Handle, Aval];

/** Runs primitives of `be` on handles, tracking every temporary so `finish` can release them. */
class Builder {
  readonly temps: Handle[] = [];
  constructor(readonly be: Backend) {}

  run<P extends Prim>(prim: P, ins: Val[], params: ParamsOf[P]): Val {
    const avals = ins.map(([, a]) => a);
    const [out] = (shapeRules[prim] as (i: readonly Aval[], p: ParamsOf[P]) => Aval[])(avals, params);
    const [h] = this.be.run(prim, ins.map(([h]) => h), avals, params, [out]);
    this.temps.push(h);
    return [h, out];
  }

  /** `t` broadcast to `shape` (a view). */
  to(t: Val, shape: readonly number[]): Val {
    return this.run("broadcast", [t], { shape });
  }

  /** The constant `v` of `dtype`, broadcast to `shape`. */
  constant(v: number, dtype: DType, shape: readonly number[]): Val {
    const a: Aval = { shape: [], dtype };
    const h = this.be.fromHost(allocHost(dtype, 1).fill(v), a);
    this.temps.push(h);
    return this.to([h, a], shape);
  }

  /** Releases every temporary except the results `keep`. */
  finish(...keep: Val[]): Handle[] {
    const hs = keep.map(([h]) => h);
    for (const t of this.temps) if (!hs.includes(t)) this.be.release(t);
    return hs;
  }
}

/** Softmax over the last axis as max, sub, exp, sum, div on `be` (which may fuse the elementwise steps). */
export function softmaxVia(be: Backend, x: Handle, aval: Aval): Handle {
  const b = new Builder(be);
  const r = aval.shape.length - 1;
  const xa: Val = [x, aval];
  const m = b.run("max", [xa], { axes: [r], keepdims: true });
  const e = b.run("exp", [b.run("sub", [xa, b.to(m, aval.shape)], {})], {});
  const s = b.run("sum", [e], { axes: [r], keepdims: true });
  return b.finish(b.run("div", [e, b.to(s, aval.shape)], {}))[0];
}

/** LayerNorm over the last axis (no affine) as mean, centre, mean of squares, rsqrt, scale on `be`. */
export function layerNormVia(be: Backend, x: Handle, aval: Aval, eps: number): Handle {
  const b = new Builder(be);
  const r = aval.shape.length - 1;
  const rowShape = [...aval.shape.slice(0, r), 1];
  const rowMean = (t: Val) =>
    b.run("mul", [
      b.run("sum", [t], { axes: [r], keepdims: true }),
      b.constant(1 / aval.shape[r], aval.dtype, rowShape),
    ], {});
  const centre = (t: Val) => b.run("sub", [t, b.to(rowMean(t), aval.shape)], {});
  // Centring twice removes the rounding of the first mean (Björck), so near-constant rows stay near 0.
  const xc = centre(centre([x, aval]));
  const v = rowMean(b.run("mul", [xc, xc], {}));
  const rstd = b.run("rsqrt", [b.run("add", [v, b.constant(eps, aval.dtype, rowShape)], {})], {});
  return b.finish(b.run("mul", [xc, b.to(rstd, aval.shape)], {}))[0];
}

/** One AdamW step (the `adamw` primitive) as elementwise primitives on `be`. */
export function adamwVia(be: Backend, hs: Handle[], aval: Aval, q: ParamsOf["adamw"]): Handle[] {
  const b = new Builder(be);
  const [p, g, m, v] = hs.map((h): Val => [h, aval]);
  const c = (x: number) => b.constant(x, aval.dtype, aval.shape);
  const mul = (x: Val, y: Val) => b.run("mul", [x, y], {});
  const add = (x: Val, y: Val) => b.run("add", [x, y], {});
  const m1 = add(mul(m, c(q.b1)), mul(g, c(q.c1)));
  const v1 = add(mul(v, c(q.b2)), mul(mul(g, g), c(q.c2)));
  const den = add(b.run("div", [b.run("sqrt", [v1], {}), c(q.bc2)], {}), c(q.eps));
  const p1 = add(mul(p, c(q.decay)), mul(b.run("div", [m1, den], {}), c(q.negStep)));
  return b.finish(p1, m1, v1);
}
