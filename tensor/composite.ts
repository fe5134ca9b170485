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
