/**
 * @file Per-primitive property tests on the cpu backend in f64: for every
 * primitive of the registry, its VJP agrees with central finite differences
 * on random shapes (size-1 axes, broadcasting, views as operands) and random
 * values; non-differentiable primitives are checked against direct JS.
 * The case table is typed over `Prim`, so a new primitive without a test
 * does not compile, and a runtime check guards the registry too.
 */
import fc from "fast-check";
import assert from "node:assert/strict";
import * as d from "../mod.ts";
import type { Tensor } from "../mod.ts";
import type { ParamsOf, Prim } from "../tensor/prims.ts";
import { bind } from "../tensor/tensor.ts";
import { threefryBits } from "../tensor/threefry.ts";
import { assertClose, broadcastable, checkGrad, randT, Rng, vals } from "./util.ts";

type Case = (rng: Rng) => void;
const RUNS = 60;

/** Sometimes feeds a transposed or flipped view instead of a fresh tensor. */
function maybeView(rng: Rng, t: Tensor, f: (x: Tensor) => Tensor): (x: Tensor) => Tensor {
  if (t.ndim < 2 || rng.bool(0.5)) return f;
  return rng.bool() ? (x) => f(d.transpose(d.transpose(x))) : (x) => f(d.flip(d.flip(x, 0), 0));
}

function unary(op: (x: Tensor) => Tensor, lo = -2, hi = 2, away = 0): Case {
  return (rng) => {
    const x = randT(rng, rng.shape(0, 3), lo, hi, away);
    checkGrad(maybeView(rng, x, op), [x]);
  };
}

function binary(
  op: (a: Tensor, b: Tensor) => Tensor,
  ra: [number, number, number],
  rb: [number, number, number],
): Case {
  return (rng) => {
    const s = rng.shape(0, 3);
    const sa = rng.bool() ? s : broadcastable(rng, s);
    const a = randT(rng, sa, ...ra), b = randT(rng, rng.bool() ? s : broadcastable(rng, s), ...rb);
    checkGrad(op, rng.bool() ? [a, b] : [a, b]);
    // Scalars mix in as JS numbers.
    const c = rng.real(0.5, 1.5);
    checkGrad((x) => op(x, d.full(x.shape, c, "f64")), [a]);
  };
}

/** `df` is the derivative of `f` (central differences of `f`), and its own VJP checks out. */
function derivativeCase(df: (x: Tensor) => Tensor, f: (x: Tensor) => Tensor): Case {
  return (rng) => {
    unary(df, -4, 4)(rng);
    const x = randT(rng, rng.shape(1, 3), -5, 5);
    const h = 1e-5;
    const fd = d.div(d.sub(f(d.add(x, h)), f(d.sub(x, h))), 2 * h);
    assertClose(vals(df(x)), vals(fd), 1e-7, 1e-8, "derivative");
  };
}

const zeroGrad = (f: (x: Tensor) => Tensor, x: Tensor) => {
  const g = d.grad((y: Tensor) => d.sum(f(y)))(x) as Tensor;
  assert.deepEqual(vals(g), new Array(x.size).fill(0));
};

function reduceCase(prim: "sum" | "max"): Case {
  return (rng) => {
    const x = randT(rng, rng.shape(1, 4));
    const axes = [...Array(x.ndim).keys()].filter(() => rng.bool());
    const keepdims = rng.bool();
    const f = (t: Tensor) => bind(prim, [t], { axes, keepdims })[0];
    checkGrad(maybeView(rng, x, f), [x]);
    const ref = prim === "sum" ? d.sum(x, { axis: axes, keepdims }) : d.neg(d.min(d.neg(x), { axis: axes, keepdims }));
    assertClose(vals(f(x)), vals(ref), 1e-12, 1e-12, prim);
  };
}

function cumCase(prim: "cumsum" | "cumprod"): Case {
  return (rng) => {
    const x = randT(rng, rng.shape(1, 3, 4), 0.5, 1.5);
    const axis = rng.int(0, x.ndim - 1), reverse = rng.bool();
    const f = (t: Tensor) => bind(prim, [t], { axis, reverse })[0];
    checkGrad(f, [x]);
    // Direct check along the axis.
    const xs = x.arraySync() as unknown;
    void xs;
    const y = vals(f(x));
    const st = x.shape.slice(axis + 1).reduce((a, b) => a * b, 1), n = x.shape[axis];
    const xv = vals(x);
    for (let i = 0; i < xv.length; i++) {
      const k = Math.floor(i / st) % n, base = i - k * st;
      let acc = prim === "cumsum" ? 0 : 1;
      const ks = reverse ? [...Array(n - k).keys()].map((j) => k + j) : [...Array(k + 1).keys()];
      for (const j of ks) acc = prim === "cumsum" ? acc + xv[base + j * st] : acc * xv[base + j * st];
      assert.ok(Math.abs(acc - y[i]) < 1e-12, `${prim} element ${i}: ${y[i]} vs ${acc}`);
    }
  };
}

function convCase(rng: Rng) {
  const G = rng.int(1, 2), Ci = rng.int(1, 2), Co = rng.int(1, 2), N = rng.int(1, 2);
  const KH = rng.int(1, 3), KW = rng.int(1, 3);
  const p: ParamsOf["conv"] = {
    stride: [rng.int(1, 2), rng.int(1, 2)],
    lhsDilation: [rng.int(1, 2), rng.int(1, 2)],
    rhsDilation: [rng.int(1, 2), rng.int(1, 2)],
    padding: [[rng.int(-1, 2), rng.int(-1, 2)], [rng.int(-1, 2), rng.int(-1, 2)]],
  };
  const kd = [(KH - 1) * p.rhsDilation[0] + 1, (KW - 1) * p.rhsDilation[1] + 1];
  // Pick an input large enough for at least one output pixel.
  const need = (i: 0 | 1) =>
    Math.max(1, Math.ceil((kd[i] - p.padding[i][0] - p.padding[i][1] - 1) / p.lhsDilation[i]) + 1);
  const H = need(0) + rng.int(0, 2), W = need(1) + rng.int(0, 2);
  const x = randT(rng, [N, G, Ci, H, W]), w = randT(rng, [G, Co, Ci, KH, KW]);
  const f = (a: Tensor, b: Tensor) => bind("conv", [a, b], p)[0];
  checkGrad(f, [x, w]);
}

const cases: { [P in Prim]: Case } = {
  neg: unary(d.neg),
  exp: unary(d.exp),
  log: unary(d.log, 0.2, 3),
  sin: unary(d.sin, -4, 4),
  cos: unary(d.cos, -4, 4),
  tanh: unary(d.tanh),
  sqrt: unary(d.sqrt, 0.2, 3),
  rsqrt: unary(d.rsqrt, 0.2, 3),
  abs: unary(d.abs, -2, 2, 0.1),
  sign: (rng) => {
    const x = randT(rng, rng.shape(0, 3), -2, 2, 0.1);
    assert.deepEqual(vals(d.sign(x)), vals(x).map(Math.sign));
    zeroGrad(d.sign, x);
  },
  erf: unary(d.erf, -3, 3),
  floor: (rng) => {
    const x = randT(rng, rng.shape(0, 3), -3, 3);
    assert.deepEqual(vals(d.floor(x)), vals(x).map(Math.floor));
    zeroGrad(d.floor, x);
  },
  sigmoid: unary(d.sigmoid, -6, 6),
  log1p: unary(d.log1p, -0.8, 2),
  expm1: unary(d.expm1),
  gelu: (rng) => {
    unary(d.gelu, -4, 4)(rng);
    // Against the definition x·Φ(x), Φ from erf (itself checked against a series).
    const x = randT(rng, rng.shape(1, 3), -6, 6);
    const ref = vals(d.mul(x, d.mul(d.add(d.erf(d.mul(x, Math.SQRT1_2)), 1), 0.5)));
    assertClose(vals(d.gelu(x)), ref, 1e-14, 1e-14, "gelu");
  },
  geluTanh: (rng) => {
    unary(d.geluTanh, -4, 4)(rng);
    const x = randT(rng, rng.shape(1, 3), -6, 6);
    const inner = d.mul(d.add(x, d.mul(d.mul(d.mul(x, x), x), 0.044715)), Math.sqrt(2 / Math.PI));
    assertClose(vals(d.geluTanh(x)), vals(d.mul(d.mul(x, 0.5), d.add(d.tanh(inner), 1))), 1e-14, 1e-14, "geluTanh");
  },
  geluGrad: derivativeCase(d.geluGrad, d.gelu),
  geluTanhGrad: derivativeCase(d.geluTanhGrad, d.geluTanh),
  layerNorm: (rng) => {
    const x = randT(rng, rng.shape(1, 4), -3, 3);
    const eps = rng.bool() ? 1e-6 : rng.real(0.01, 1);
    const f = (t: Tensor) => bind("layerNorm", [t], { eps })[0];
    checkGrad(maybeView(rng, x, f), [x]);
    // Against the definition, and through nn.layerNormalize on any axis.
    const mean = (t: Tensor) => d.mean(t, { axis: -1, keepdims: true });
    const xc = d.sub(x, mean(x));
    const ref = d.div(xc, d.sqrt(d.add(mean(d.mul(xc, xc)), eps)));
    assertClose(vals(f(x)), vals(ref), 1e-12, 1e-12, "layerNorm");
    const axis = rng.int(0, x.ndim - 1);
    checkGrad((t) => d.mul(d.nn.layerNormalize(t, { axis, eps }), d.sin(t)), [x]);
  },
  adamw: (rng) => {
    const s = rng.shape(0, 3);
    const [p, g, m] = [randT(rng, s), randT(rng, s), randT(rng, s)], v = randT(rng, s, 0.01, 2);
    const cfg = { lr: rng.real(1e-4, 1e-1), weightDecay: rng.bool() ? 0 : 0.1, beta1: 0.9, beta2: 0.99 };
    const state = { step: rng.int(0, 20), m: { w: m }, v: { w: v } };
    // The fused step equals torch's formula term by term.
    const up = d.nn.adamw.update({ w: p }, { w: g }, state, cfg);
    const t = state.step + 1;
    const m1 = d.add(d.mul(m, 0.9), d.mul(g, 0.1)), v1 = d.add(d.mul(v, 0.99), d.mul(d.mul(g, g), 0.01));
    const den = d.add(d.div(d.sqrt(v1), Math.sqrt(1 - 0.99 ** t)), 1e-8);
    const p1 = d.sub(d.mul(p, 1 - cfg.lr * cfg.weightDecay), d.mul(d.div(m1, den), cfg.lr / (1 - 0.9 ** t)));
    assertClose(vals((up.params as { w: Tensor }).w), vals(p1), 1e-12, 1e-14, "adamw p");
    assertClose(vals((up.state.m as { w: Tensor }).w), vals(m1), 1e-12, 1e-14, "adamw m");
    assertClose(vals((up.state.v as { w: Tensor }).w), vals(v1), 1e-12, 1e-14, "adamw v");
    // Under a trace the update is differentiable (the composite), e.g. a meta-gradient through one step.
    checkGrad((w) => (d.nn.adamw.update({ w }, { w: d.mul(w, w) }, state, cfg).params as { w: Tensor }).w, [p]);
    // The primitive itself has no VJP and says so.
    assert.throws(() =>
      d.grad((w: Tensor) =>
        d.sum(
          bind("adamw", [w, g, m, v], {
            b1: 0.9,
            c1: 0.1,
            b2: 0.99,
            c2: 0.01,
            bc2: 1,
            eps: 1e-8,
            decay: 1,
            negStep: -1e-3,
          })[0],
        )
      )(p), /adamw: the fused optimiser step has no VJP/);
  },
  softmax: (rng) => {
    const x = randT(rng, rng.shape(1, 4), -3, 3);
    const axis = rng.int(-x.ndim, x.ndim - 1);
    checkGrad(maybeView(rng, x, (t) => d.softmax(t, axis)), [x]);
    // exp(x)/Σexp(x) directly (no overflow at this range), and rows sum to one.
    const e = d.exp(x);
    assertClose(vals(d.softmax(x, axis)), vals(d.div(e, d.sum(e, { axis, keepdims: true }))), 1e-14, 1e-14, "softmax");
    // Shift invariance: a large offset per row does not overflow.
    const big = d.add(x, 1000);
    assertClose(vals(d.softmax(big, axis)), vals(d.softmax(x, axis)), 1e-12, 1e-12, "softmax shift");
  },
  add: binary(d.add, [-2, 2, 0], [-2, 2, 0]),
  sub: binary(d.sub, [-2, 2, 0], [-2, 2, 0]),
  mul: binary(d.mul, [-2, 2, 0], [-2, 2, 0]),
  div: binary(d.div, [-2, 2, 0], [-2, 2, 0.3]),
  pow: binary(d.pow, [0.3, 2, 0], [-2, 2, 0]),
  maximum: binary(d.maximum, [-2, 2, 0], [-2, 2, 0]),
  minimum: binary(d.minimum, [-2, 2, 0], [-2, 2, 0]),
  compare: (rng) => {
    const s = rng.shape(0, 3);
    const a = randT(rng, s), b = d.where(d.tensor(rng.bool()), a, randT(rng, s));
    const js = {
      lt: (x: number, y: number) => x < y,
      le: (x: number, y: number) => x <= y,
      gt: (x: number, y: number) => x > y,
      ge: (x: number, y: number) => x >= y,
      eq: (x: number, y: number) => x === y,
      ne: (x: number, y: number) => x !== y,
    };
    for (const op of Object.keys(js) as (keyof typeof js)[]) {
      const got = bind("compare", [a, b], { op })[0];
      assert.equal(got.dtype, "bool");
      const [av, bv] = [vals(a), vals(b)];
      assert.deepEqual(vals(got), av.map((v, i) => (js[op](v, bv[i]) ? 1 : 0)), op);
    }
    // The gradient flows through the selected branch only.
    checkGrad((x, y) => d.where(d.less(x, y), d.mul(x, 2), y), [a, randT(rng, s)]);
  },
  where: (rng) => {
    const s = rng.shape(0, 3);
    const c = d.tensor(rng.values(s.reduce((a, b) => a * b, 1)).map((v) => v > 0), { shape: s, dtype: "bool" });
    const a = randT(rng, broadcastable(rng, s)), b = randT(rng, broadcastable(rng, s));
    checkGrad((x, y) => d.where(c, x, y), [a, b]);
  },
  cast: (rng) => {
    const x = randT(rng, rng.shape(0, 3));
    const w = randT(rng, x.shape, -1, 1, 0, "f32");
    const g = d.grad((y: Tensor) => d.sum(d.mul(d.cast(y, "f32"), w)))(x) as Tensor;
    assert.equal(g.dtype, "f64");
    assert.deepEqual(vals(g), vals(w));
    zeroGrad((y) => d.cast(d.cast(y, "i32"), "f64"), x);
    assert.deepEqual(vals(d.cast(x, "i32")), vals(x).map((v) => Math.trunc(v) + 0));
    assert.deepEqual(vals(d.cast(x, "bool")), vals(x).map((v) => (v !== 0 ? 1 : 0)));
  },
  sum: reduceCase("sum"),
  max: reduceCase("max"),
  argmax: (rng) => {
    const x = randT(rng, rng.shape(1, 3, 4));
    const axis = rng.int(0, x.ndim - 1);
    const got = vals(d.argmax(x, { axis }));
    const st = x.shape.slice(axis + 1).reduce((a, b) => a * b, 1), n = x.shape[axis];
    const xv = vals(x);
    let o = 0;
    for (let outer = 0; outer < xv.length / (n * st); outer++) {
      for (let j = 0; j < st; j++) {
        let best = 0;
        for (let k = 1; k < n; k++) if (xv[outer * n * st + k * st + j] > xv[outer * n * st + best * st + j]) best = k;
        assert.equal(got[o++], best);
      }
    }
  },
  cumsum: cumCase("cumsum"),
  cumprod: cumCase("cumprod"),
  dot: (rng) => {
    const [B, M, K, N] = [rng.int(1, 2), rng.int(1, 3), rng.int(1, 3), rng.int(1, 3)];
    const a = randT(rng, [B, M, K]), b = randT(rng, [B, K, N]);
    checkGrad((x, y) => bind("dot", [x, y], {})[0], [a, b]);
    // Public matmul with broadcasting batch dims and 1-D operands.
    const c = randT(rng, [K]);
    checkGrad((x, y) => d.matmul(x, y), [randT(rng, [2, 1, M, K]), randT(rng, [3, K, N])]);
    checkGrad((x, y) => d.matmul(x, y), [randT(rng, [M, K]), c]);
  },
  conv: convCase,
  gather: (rng) => {
    const x = randT(rng, rng.shape(1, 3));
    const axis = rng.int(0, x.ndim - 1);
    const idx = d.tensor(Array.from({ length: rng.int(1, 4) }, () => rng.int(0, x.shape[axis] - 1)), { dtype: "i32" });
    checkGrad((t) => d.take(t, idx, axis), [x]);
  },
  scatterAdd: (rng) => {
    const n = rng.int(1, 4);
    const idx = d.tensor(Array.from({ length: rng.int(1, 4) }, () => rng.int(0, n - 1)), { dtype: "i32" });
    const u = randT(rng, [rng.int(1, 2), idx.shape[0], rng.int(1, 2)]);
    checkGrad((t) => d.scatterAdd(t, idx, 1, n), [u]);
    // scatterAdd then take along the same indices is the Gram-like sum: check values directly.
    const out = vals(d.scatterAdd(u, idx, 1, n)), uv = vals(u), iv = vals(idx);
    const [A, , C] = u.shape;
    const expect = new Array(A * n * C).fill(0);
    for (let a = 0; a < A; a++) {
      for (let k = 0; k < iv.length; k++) {
        for (let c = 0; c < C; c++) expect[(a * n + iv[k]) * C + c] += uv[(a * iv.length + k) * C + c];
      }
    }
    assertClose(out, expect, 1e-12, 1e-12, "scatterAdd");
  },
  reshape: (rng) => {
    const x = randT(rng, rng.shape(0, 4));
    const dims = x.shape.slice();
    const target = rng.bool() ? [x.size] : [...dims].reverse();
    checkGrad(maybeView(rng, x, (t) => d.reshape(t, target)), [x]);
  },
  transpose: (rng) => {
    const x = randT(rng, rng.shape(1, 4));
    const perm = rng.perm(x.ndim);
    checkGrad((t) => d.transpose(t, perm), [x]);
  },
  broadcast: (rng) => {
    const s = rng.shape(0, 3);
    const x = randT(rng, broadcastable(rng, s));
    checkGrad((t) => d.broadcastTo(t, s), [x]);
  },
  slice: (rng) => {
    const x = randT(rng, rng.shape(1, 3, 5));
    const starts = x.shape.map((n) => rng.int(0, n - 1));
    const ends = x.shape.map((n, i) => rng.int(starts[i] + 1, n));
    const steps = x.shape.map(() => rng.int(1, 3));
    checkGrad(maybeView(rng, x, (t) => bind("slice", [t], { starts, ends, steps })[0]), [x]);
  },
  pad: (rng) => {
    const x = randT(rng, rng.shape(1, 3));
    const widths = x.shape.map((): [number, number, number] => [rng.int(0, 2), rng.int(0, 2), rng.int(0, 2)]);
    checkGrad(maybeView(rng, x, (t) => bind("pad", [t], { widths })[0]), [x]);
    // Public pad with a constant value.
    const v = rng.real(-1, 1);
    checkGrad((t) => d.pad(t, x.shape.map(() => [1, 0] as [number, number]), v), [x]);
  },
  flip: (rng) => {
    const x = randT(rng, rng.shape(1, 3));
    const axes = [...Array(x.ndim).keys()].filter(() => rng.bool());
    checkGrad((t) => d.flip(t, axes), [x]);
  },
  concat: (rng) => {
    const s = rng.shape(1, 3);
    const axis = rng.int(0, s.length - 1);
    const xs = Array.from({ length: rng.int(2, 3) }, () => {
      const t = s.slice();
      t[axis] = rng.int(1, 3);
      return randT(rng, t);
    });
    checkGrad((...ts) => d.concat(ts, axis), xs);
  },
  random: (rng) => {
    const key = new d.Key(rng.int(0, 2 ** 32 - 1), rng.int(0, 2 ** 32 - 1));
    const shape = rng.shape(0, 3, 5);
    const n = shape.reduce((a, b) => a * b, 1);
    assert.deepEqual(vals(d.random.bits(key, shape)), Array.from(threefryBits(key.data[0], key.data[1], n)));
    const u = vals(d.random.uniform(key, shape, { dtype: "f64" }));
    assert.ok(u.every((v) => v >= 0 && v < 1));
    // Draws are constants: no gradient flows into or out of them.
    const x = randT(rng, shape);
    checkGrad((t) => d.mul(t, d.random.uniform(key, shape, { dtype: "f64" })), [x]);
  },
};

Deno.test("every registered primitive has a property test", () => {
  const missing = d.PRIMS.filter((p) => !(p in cases));
  assert.deepEqual(missing, []);
});

for (const [prim, run] of Object.entries(cases)) {
  Deno.test(`primitive ${prim}: VJP matches finite differences (f64, random shapes)`, () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: 2 ** 31 - 1 }), (seed) => run(new Rng(seed))), { numRuns: RUNS });
  });
}

// Second order: the VJP rules are themselves differentiable, so grad(grad(f))
// of every smooth elementwise primitive matches finite differences of grad(f).
const smooth: [string, (x: Tensor) => Tensor, number, number][] = [
  ["neg", d.neg, -2, 2],
  ["exp", d.exp, -2, 2],
  ["log", d.log, 0.3, 3],
  ["sin", d.sin, -3, 3],
  ["cos", d.cos, -3, 3],
  ["tanh", d.tanh, -2, 2],
  ["sqrt", d.sqrt, 0.3, 3],
  ["rsqrt", d.rsqrt, 0.3, 3],
  ["erf", d.erf, -2, 2],
  ["sigmoid", d.sigmoid, -4, 4],
  ["log1p", d.log1p, -0.5, 2],
  ["expm1", d.expm1, -2, 2],
  ["gelu", d.gelu, -3, 3],
  ["geluTanh", d.geluTanh, -3, 3],
  ["geluGrad", d.geluGrad, -3, 3],
  ["geluTanhGrad", d.geluTanhGrad, -3, 3],
  ["softmax", (x) => d.mul(d.softmax(x, -1), d.sin(x)), -2, 2],
  ["layerNorm", (x) => d.mul(d.nn.layerNormalize(x, { eps: 0.1 }), d.sin(x)), -2, 2],
  ["pow", (x) => d.pow(x, d.add(d.mul(x, 0.5), 1)), 0.3, 2],
  ["div", (x) => d.div(d.sin(x), d.add(d.mul(x, x), 1)), -2, 2],
  ["cumprod", (x) => d.cumprod(x, -1), 0.5, 1.5],
];
for (const [name, f, lo, hi] of smooth) {
  Deno.test(`primitive ${name}: grad(grad) matches finite differences of grad`, () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2 ** 31 - 1 }), (seed) => {
        const rng = new Rng(seed);
        const x = randT(rng, rng.shape(1, 2), lo, hi);
        checkGrad((y) => d.grad((z: Tensor) => d.sum(f(z)))(y) as Tensor, [x], { tol: 1e-5 });
      }),
      { numRuns: 15 },
    );
  });
}
