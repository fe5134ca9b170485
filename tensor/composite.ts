/**
 * @file Fused primitives expressed through a backend's own simpler
 * primitives, for backends (or dtypes) without a dedicated kernel. The
 * composition runs below autograd, so it records nothing and its
 * temporaries are released at once: the primitive's VJP still saves only
 * what its rule names.
 */
import type { Backend, Handle } from "./backend.ts";
import { allocHost } from "./dtype.ts";
import { type Aval, type ParamsOf, type Prim, shapeRules } from "./prims.ts";

/** Runs primitives of `be` on handles, releasing each temporary as soon as it is consumed. */
class Builder {
  readonly temps: Handle[] = [];
  constructor(readonly be: Backend) {}

  run<P extends Prim>(prim: P, ins: [Handle, Aval][], params: ParamsOf[P]): [Handle, Aval] {
    const avals = ins.map(([, a]) => a);
    const [out] = (shapeRules[prim] as (i: readonly Aval[], p: ParamsOf[P]) => Aval[])(avals, params);
    const [h] = this.be.run(prim, ins.map(([h]) => h), avals, params, [out]);
    this.temps.push(h);
    return [h, out];
  }

  /** Releases every temporary except `keep`. */
  finish(keep: Handle): Handle {
    for (const t of this.temps) if (t !== keep) this.be.release(t);
    return keep;
  }
}

/** Softmax over the last axis as max, sub, exp, sum, div on `be` (which may fuse the elementwise steps). */
export function softmaxVia(be: Backend, x: Handle, aval: Aval): Handle {
  const b = new Builder(be);
  const r = aval.shape.length - 1;
  const xa: [Handle, Aval] = [x, aval];
  const bc = (t: [Handle, Aval]) => b.run("broadcast", [t], { shape: aval.shape });
  const m = b.run("max", [xa], { axes: [r], keepdims: true });
  const e = b.run("exp", [b.run("sub", [xa, bc(m)], {})], {});
  const s = b.run("sum", [e], { axes: [r], keepdims: true });
  const [y] = b.run("div", [e, bc(s)], {});
  return b.finish(y);
}

/** LayerNorm over the last axis (no affine) as mean, centre, mean of squares, rsqrt, scale on `be`. */
export function layerNormVia(be: Backend, x: Handle, aval: Aval, eps: number): Handle {
  const b = new Builder(be);
  const r = aval.shape.length - 1;
  const xa: [Handle, Aval] = [x, aval];
  const bc = (t: [Handle, Aval]) => b.run("broadcast", [t], { shape: aval.shape });
  const scalar = (v: number): [Handle, Aval] => {
    const a: Aval = { shape: [], dtype: aval.dtype };
    const h = be.fromHost(allocHost(aval.dtype, 1).fill(v), a);
    b.temps.push(h);
    return [h, a];
  };
  const rowShape = [...aval.shape.slice(0, r), 1];
  const bcTo = (t: [Handle, Aval], shape: number[]) => b.run("broadcast", [t], { shape });
  const rowMean = (t: [Handle, Aval]) =>
    b.run("mul", [b.run("sum", [t], { axes: [r], keepdims: true }), bcTo(scalar(1 / aval.shape[r]), rowShape)], {});
  // Centring twice removes the rounding of the first mean (Björck), so near-constant rows stay near 0.
  const xc1 = b.run("sub", [xa, bc(rowMean(xa))], {});
  const xc = b.run("sub", [xc1, bc(rowMean(xc1))], {});
  const v = rowMean(b.run("mul", [xc, xc], {}));
  const rstd = b.run("rsqrt", [b.run("add", [v, bcTo(scalar(eps), rowShape)], {})], {});
  const [y] = b.run("mul", [xc, bc(rstd)], {});
  return b.finish(y);
}

/** One AdamW step (the `adamw` primitive) as elementwise primitives on `be`. */
export function adamwVia(be: Backend, hs: Handle[], aval: Aval, q: ParamsOf["adamw"]): Handle[] {
  const b = new Builder(be);
  const [p, g, m, v] = hs.map((h): [Handle, Aval] => [h, aval]);
  const c = (x: number): [Handle, Aval] => {
    const a: Aval = { shape: [], dtype: aval.dtype };
    const h = be.fromHost(allocHost(aval.dtype, 1).fill(x), a);
    b.temps.push(h);
    return b.run("broadcast", [[h, a]], { shape: aval.shape });
  };
  const mul = (x: [Handle, Aval], y: [Handle, Aval]) => b.run("mul", [x, y], {});
  const add = (x: [Handle, Aval], y: [Handle, Aval]) => b.run("add", [x, y], {});
  const m1 = add(mul(m, c(q.b1)), mul(g, c(q.c1)));
  const v1 = add(mul(v, c(q.b2)), mul(mul(g, g), c(q.c2)));
  const den = add(b.run("div", [b.run("sqrt", [v1], {}), c(q.bc2)], {}), c(q.eps));
  const p1 = add(mul(p, c(q.decay)), mul(b.run("div", [m1, den], {}), c(q.negStep)));
  const out = [p1[0], m1[0], v1[0]];
  for (const t of b.temps) if (!out.includes(t)) be.release(t);
  return out;
}
