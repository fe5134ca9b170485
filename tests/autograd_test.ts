/**
 * @file Autodiff transformations through the public API: grad/valueAndGrad
 * over pytrees, vjp, jvp, higher-order derivatives, stopGradient, customVjp
 * and checkpoint. Reference values come from analytic derivatives or central
 * finite differences in f64.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import * as d from "../mod.ts";
import type { Tensor } from "../mod.ts";

// These are oracle tests in f64: pin the reference backend whatever the default becomes.
await d.setBackend("cpu");

// ---------------------------------------------------------------- helpers

/** Deterministic uniform values in [lo, hi) (mulberry32), so failures replay from the fast-check seed. */
function rand(seed: number, n: number, lo = -1, hi = 1): Float64Array {
  let s = seed >>> 0;
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = lo + (hi - lo) * (((t ^ (t >>> 14)) >>> 0) / 4294967296);
  }
  return out;
}

const size = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);

/** An f64 tensor of `shape` with deterministic values in [lo, hi). */
function f64(shape: number[], seed: number, lo = -1, hi = 1): Tensor {
  return d.tensor(rand(seed, size(shape), lo, hi), { dtype: "f64", shape });
}

/** Host values of a tensor (cpu reads synchronously). */
function vals(t: unknown): number[] {
  assert.ok(t instanceof d.Tensor, `expected a Tensor, got ${String(t)}`);
  return Array.from((t as Tensor).dataSync());
}

/** Asserts elementwise |a - b| <= atol + rtol*|b|. */
function assertClose(actual: ArrayLike<number>, expected: ArrayLike<number>, atol = 1e-6, rtol = 1e-6, what = "") {
  assert.equal(actual.length, expected.length, `${what}: length ${actual.length} vs ${expected.length}`);
  for (let i = 0; i < actual.length; i++) {
    const err = Math.abs(actual[i] - expected[i]);
    if (!(err <= atol + rtol * Math.abs(expected[i]))) {
      assert.fail(`${what}: element ${i}: got ${actual[i]}, expected ${expected[i]} (err ${err})`);
    }
  }
}

/** Central finite-difference gradient of a scalar function of one f64 tensor. */
function numGrad(f: (x: Tensor) => Tensor, x: Tensor, h = 1e-5): Float64Array {
  const base = Float64Array.from(x.dataSync());
  const g = new Float64Array(base.length);
  for (let i = 0; i < base.length; i++) {
    const eval1 = (delta: number) =>
      d.tidy(() => {
        const p = base.slice();
        p[i] += delta;
        return vals(f(d.tensor(p, { dtype: "f64", shape: [...x.shape] })))[0];
      });
    g[i] = (eval1(h) - eval1(-h)) / (2 * h);
  }
  return g;
}

const shapeArb = fc.array(fc.integer({ min: 1, max: 3 }), { minLength: 0, maxLength: 3 });
const seedArb = fc.integer({ min: 0, max: 2 ** 31 - 1 });
const RUNS = { numRuns: 50 };

// ---------------------------------------------------------------- grad / valueAndGrad

Deno.test("grad of sum(x^2) is 2x, in the shape and dtype of x", () => {
  const x = d.tensor([[1, -2, 3], [0.5, 0, -4]], { dtype: "f64" });
  const g = d.grad((x: Tensor) => d.sum(d.mul(x, x)))(x) as Tensor;
  assert.deepEqual(g.shape, [2, 3]);
  assert.equal(g.dtype, "f64");
  assert.deepEqual(vals(g), [2, -4, 6, 1, 0, -8]);
  const g32 = d.grad((x: Tensor) => d.sum(d.mul(x, x)))(d.tensor([1, 2])) as Tensor;
  assert.equal(g32.dtype, "f32");
  assert.deepEqual(vals(g32), [2, 4]);
});

Deno.test("grad matches finite differences on random shapes (f64, 1e-6)", () => {
  const f = (x: Tensor) => d.sum(d.mul(d.tanh(d.mul(x, 1.3)), d.exp(d.sin(x))));
  fc.assert(
    fc.property(shapeArb, seedArb, (shape, seed) => {
      const x = f64(shape, seed, -2, 2);
      assertClose(vals(d.grad(f)(x)), numGrad(f, x), 1e-6, 1e-6, `shape ${JSON.stringify(shape)}`);
    }),
    RUNS,
  );
});

Deno.test("grad argnums: a number picks one argument, an array returns gradients in argnums order", () => {
  const a = d.tensor([1, 2, 3], { dtype: "f64" });
  const b = d.tensor([4, 5, 6], { dtype: "f64" });
  const f = (a: Tensor, b: Tensor) => d.sum(d.mul(a, d.mul(b, b)));
  // d/da = b^2, d/db = 2ab
  assert.deepEqual(vals(d.grad(f)(a, b)), [16, 25, 36]);
  assert.deepEqual(vals(d.grad(f, { argnums: 1 })(a, b)), [8, 20, 36]);
  const both = d.grad(f, { argnums: [0, 1] })(a, b) as Tensor[];
  assert.ok(Array.isArray(both) && both.length === 2);
  assert.deepEqual(vals(both[0]), [16, 25, 36]);
  assert.deepEqual(vals(both[1]), [8, 20, 36]);
  const rev = d.grad(f, { argnums: [1, 0] })(a, b) as Tensor[];
  assert.deepEqual(vals(rev[0]), [8, 20, 36]);
  assert.deepEqual(vals(rev[1]), [16, 25, 36]);
  // A one-element array still returns an array.
  const one = d.grad(f, { argnums: [1] })(a, b) as Tensor[];
  assert.ok(Array.isArray(one) && one.length === 1);
  assert.deepEqual(vals(one[0]), [8, 20, 36]);
  assert.throws(() => d.grad(f, { argnums: 2 })(a, b), d.DifflabError);
});

Deno.test("valueAndGrad returns the value and the gradient; hasAux passes aux through untouched", () => {
  const x = d.tensor([0.5, -1, 2], { dtype: "f64" });
  const [v, g] = d.valueAndGrad((x: Tensor) => d.sum(d.exp(x)))(x);
  assertClose(vals(v), [Math.exp(0.5) + Math.exp(-1) + Math.exp(2)], 1e-12);
  assertClose(vals(g), [Math.exp(0.5), Math.exp(-1), Math.exp(2)], 1e-12);

  const note = { tag: "stats", count: 3 };
  const f = (x: Tensor): [Tensor, unknown] => {
    const y = d.mul(x, x);
    return [d.sum(y), { y, note }];
  };
  const [[v2, aux], g2] = d.valueAndGrad(f, { hasAux: true })(x) as [[Tensor, { y: Tensor; note: unknown }], Tensor];
  assertClose(vals(v2), [0.25 + 1 + 4], 1e-12);
  assert.deepEqual(vals(aux.y), [0.25, 1, 4]);
  assert.equal(aux.note, note);
  assert.deepEqual(vals(g2), [1, -2, 4]);

  const [g3, aux3] = d.grad(f, { hasAux: true })(x) as [Tensor, { y: Tensor }];
  assert.deepEqual(vals(g3), [1, -2, 4]);
  assert.deepEqual(vals(aux3.y), [0.25, 1, 4]);
  assert.throws(() => d.grad((x: Tensor) => d.sum(x), { hasAux: true })(x), d.DifflabError);
});

Deno.test("grad requires a one-element float output", () => {
  const x = d.tensor([1, 2], { dtype: "f64" });
  assert.throws(
    () => d.grad((x: Tensor) => d.mul(x, 2))(x),
    (e: unknown) => e instanceof d.DifflabError && /\[2\]/.test((e as Error).message),
  );
  assert.throws(() => d.grad((_x: Tensor) => 3)(x), d.DifflabError);
});

Deno.test("grad over nested records/arrays keeps the tree structure; non-float leaves get no gradient", () => {
  const params = {
    enc: { w: f64([3, 2], 1), b: f64([2], 2) },
    layers: [f64([2], 3), { scale: f64([], 4) }],
    steps: d.tensor([1, 2], { dtype: "i32" }),
    name: "mlp",
    depth: 2,
  };
  const x = f64([4, 3], 5);
  type P = typeof params;
  const loss = (p: P, x: Tensor) => {
    let h = d.tanh(d.add(d.matmul(x, p.enc.w), p.enc.b));
    h = d.mul(d.add(h, p.layers[0] as Tensor), (p.layers[1] as { scale: Tensor }).scale);
    assert.equal(p.name, "mlp");
    assert.equal(p.depth, 2);
    return d.add(d.sum(d.sin(h)), d.sum(d.cast(p.steps, "f64")));
  };
  const g = d.grad(loss)(params, x) as {
    enc: { w: Tensor; b: Tensor };
    layers: [Tensor, { scale: Tensor }];
    steps: unknown;
    name: unknown;
    depth: unknown;
  };
  assert.deepEqual(Object.keys(g).sort(), ["depth", "enc", "layers", "name", "steps"]);
  assert.equal(g.steps, null);
  assert.equal(g.name, "mlp");
  assert.equal(g.depth, 2);
  // Finite differences leaf by leaf, with the other leaves fixed.
  const check = (leaf: Tensor, rebuild: (t: Tensor) => P, got: Tensor, what: string) => {
    assert.deepEqual(got.shape, leaf.shape, what);
    assertClose(vals(got), numGrad((t) => loss(rebuild(t), x), leaf), 1e-6, 1e-6, what);
  };
  check(params.enc.w, (t) => ({ ...params, enc: { ...params.enc, w: t } }), g.enc.w, "enc.w");
  check(params.enc.b, (t) => ({ ...params, enc: { ...params.enc, b: t } }), g.enc.b, "enc.b");
  check(params.layers[0] as Tensor, (t) => ({ ...params, layers: [t, params.layers[1]] }), g.layers[0], "layers[0]");
  check(
    (params.layers[1] as { scale: Tensor }).scale,
    (t) => ({ ...params, layers: [params.layers[0], { scale: t }] }),
    g.layers[1].scale,
    "layers[1].scale",
  );
});

Deno.test("f independent of its input has zero gradients of the right shape", () => {
  const x = d.tensor([[1, 2, 3]], { dtype: "f64" });
  const c = d.tensor([5, 6], { dtype: "f64" });
  const g = d.grad((_x: Tensor) => d.sum(d.mul(c, c)))(x) as Tensor;
  assert.deepEqual(g.shape, [1, 3]);
  assert.equal(g.dtype, "f64");
  assert.deepEqual(vals(g), [0, 0, 0]);
  // One argument used, the other ignored.
  const [ga, gb] = d.grad((a: Tensor, _b: Tensor) => d.sum(d.exp(a)), { argnums: [0, 1] })(c, x) as Tensor[];
  assertClose(vals(ga), [Math.exp(5), Math.exp(6)], 1e-9);
  assert.deepEqual(gb.shape, [1, 3]);
  assert.deepEqual(vals(gb), [0, 0, 0]);
  // Dependence cut by a comparison: bool outputs carry no gradient.
  const gz = d.grad((x: Tensor) => d.sum(d.cast(d.greater(x, 1.5), "f64")))(x) as Tensor;
  assert.deepEqual(vals(gz), [0, 0, 0]);
});

Deno.test("closures over constants: no gradient flows to them and they stay usable", () => {
  const c = d.tensor([2, -3, 0.5], { dtype: "f64" });
  const x = d.tensor([1, 1, 1], { dtype: "f64" });
  const g = d.grad((x: Tensor) => d.sum(d.mul(d.mul(x, x), c)))(x) as Tensor;
  assert.deepEqual(vals(g), [4, -6, 1]);
  // The constant is not consumed or changed by the transformation.
  assert.ok(!c.isDisposed);
  assert.deepEqual(vals(c), [2, -3, 0.5]);
  // Differentiating the same closure w.r.t. the constant, as an outer transformation, sees x as the constant.
  const gc = d.grad((cc: Tensor) => d.sum(d.mul(d.grad((x: Tensor) => d.sum(d.mul(d.mul(x, x), cc)))(x) as Tensor, 1)))(
    c,
  ) as Tensor;
  // d/dc sum(2 x c) = 2x
  assert.deepEqual(vals(gc), [2, 2, 2]);
});

Deno.test("grad edge cases: identity, an input passed twice, a leaf shared in a tree, nested closures", () => {
  const s = d.tensor(3, { dtype: "f64" });
  // f returns its input: the gradient is the seed itself and must survive.
  const gi = d.grad((x: Tensor) => x)(s) as Tensor;
  assert.ok(!gi.isDisposed);
  assert.deepEqual(vals(gi), [1]);
  const [vi, gi2] = d.valueAndGrad((x: Tensor) => x)(s) as [Tensor, Tensor];
  assert.deepEqual([vals(vi), vals(gi2)], [[3], [1]]);
  // The same tensor as two arguments: each argument gets its own partial derivative.
  const x = d.tensor([1, 2], { dtype: "f64" });
  const [ga, gb] = d.grad((a: Tensor, b: Tensor) => d.sum(d.mul(a, d.mul(b, b))), { argnums: [0, 1] })(
    x,
    x,
  ) as Tensor[];
  assert.deepEqual(vals(ga), [1, 4]);
  assert.deepEqual(vals(gb), [2, 8]);
  // The same tensor at two leaves of a tree.
  const gt = d.grad((p: { a: Tensor; b: Tensor }) => d.sum(d.mul(p.a, d.mul(p.b, p.b))))({ a: x, b: x }) as {
    a: Tensor;
    b: Tensor;
  };
  assert.deepEqual([vals(gt.a), vals(gt.b)], [[1, 4], [2, 8]]);
  // An inner grad whose function closes over the outer variable: d/dx sum(x * 2x*x) = 6x^2.
  const nested = d.grad((x: Tensor) =>
    d.sum(d.mul(x, d.grad((y: Tensor) => d.sum(d.mul(x, d.mul(y, y))))(x) as Tensor))
  )(x) as Tensor;
  assertClose(vals(nested), [6, 24], 1e-12);
});

// ---------------------------------------------------------------- vjp

Deno.test("vjp over tree outputs: pullback maps a cotangent tree to one gradient per argument", () => {
  const x = f64([2, 3], 11);
  const y = f64([2, 3], 12);
  const f = (x: Tensor, y: Tensor) => ({ a: d.mul(x, y), b: [d.sin(x)], s: d.sum(y) });
  const [out, pull] = d.vjp(f, x, y);
  assertClose(vals(out.a), vals(x).map((v, i) => v * vals(y)[i]), 1e-15);
  const ca = f64([2, 3], 13);
  const cb = f64([2, 3], 14);
  const cs = d.tensor(0.5, { dtype: "f64" });
  const [gx, gy] = pull({ a: ca, b: [cb], s: cs }) as Tensor[];
  const [xv, yv, cav, cbv] = [vals(x), vals(y), vals(ca), vals(cb)];
  assertClose(vals(gx), xv.map((v, i) => cav[i] * yv[i] + cbv[i] * Math.cos(v)), 1e-12);
  assertClose(vals(gy), xv.map((v, i) => cav[i] * v + 0.5), 1e-12);
  // The pullback is reusable and linear.
  const [gx2] = pull({ a: d.mul(ca, 2), b: [d.mul(cb, 2)], s: d.mul(cs, 2) }) as Tensor[];
  assertClose(vals(gx2), vals(gx).map((v) => 2 * v), 1e-12);
});

Deno.test("vjp rejects cotangents of the wrong shape, dtype or structure with a clear error", () => {
  const x = f64([2, 3], 21);
  const [, pull] = d.vjp((x: Tensor) => d.exp(x), x);
  assert.throws(
    () => pull(d.zeros([3, 2], "f64")),
    (e: unknown) =>
      e instanceof d.DifflabError && /\[3,2\]/.test((e as Error).message) && /\[2,3\]/.test((e as Error).message),
  );
  assert.throws(
    () => pull(d.zeros([2, 3], "f32")),
    (e: unknown) => e instanceof d.DifflabError && /f32/.test((e as Error).message),
  );
  const [, pull2] = d.vjp((x: Tensor) => [d.exp(x), d.sin(x)], x);
  assert.throws(() => pull2([d.zeros([2, 3], "f64")]), d.DifflabError);
  assert.throws(() => pull2([d.zeros([2, 3], "f64"), "nope" as unknown as Tensor]), d.DifflabError);
});

// ---------------------------------------------------------------- jvp

const jvpFn = (x: Tensor) => {
  const h = d.tanh(d.matmul(d.reshape(x, [2, 3]), d.tensor(rand(7, 12), { dtype: "f64", shape: [3, 4] })));
  return d.mul(d.sin(h), d.exp(d.mul(h, 0.5)));
};

Deno.test("jvp matches central finite differences (f64)", () => {
  fc.assert(
    fc.property(seedArb, (seed) => {
      const x = f64([6], seed);
      const v = f64([6], seed + 1);
      const [out, tOut] = d.jvp(jvpFn, [x], [v]);
      const h = 1e-6;
      const xs = vals(x), vs = vals(v);
      const at = (s: number) => vals(jvpFn(d.tensor(xs.map((a, i) => a + s * vs[i]), { dtype: "f64" })));
      const fp = at(h), fm = at(-h);
      assert.deepEqual(out.shape, [2, 4]);
      assert.deepEqual(tOut.shape, [2, 4]);
      assertClose(vals(out), at(0), 1e-15);
      assertClose(vals(tOut), fp.map((p, i) => (p - fm[i]) / (2 * h)), 1e-6, 1e-6);
    }),
    RUNS,
  );
});

Deno.test("jvp and vjp are adjoint: <J v, u> = <v, J^T u>", () => {
  fc.assert(
    fc.property(seedArb, (seed) => {
      const x = f64([6], seed);
      const v = f64([6], seed + 1);
      const u = f64([2, 4], seed + 2);
      const [, jv] = d.jvp(jvpFn, [x], [v]);
      const [, pull] = d.vjp(jvpFn, x);
      const [jtu] = pull(u) as Tensor[];
      const dot = (a: number[], b: number[]) => a.reduce((s, ai, i) => s + ai * b[i], 0);
      const lhs = dot(vals(jv), vals(u));
      const rhs = dot(vals(v), vals(jtu));
      assert.ok(Math.abs(lhs - rhs) <= 1e-12 * (1 + Math.abs(lhs)), `${lhs} vs ${rhs}`);
    }),
    RUNS,
  );
});

Deno.test("jvp with several arguments sums their contributions", () => {
  const a = f64([3], 31), b = f64([3], 32), ta = f64([3], 33), tb = f64([3], 34);
  const [out, t] = d.jvp((a: Tensor, b: Tensor) => d.mul(d.sin(a), b), [a, b], [ta, tb]);
  const [av, bv, tav, tbv] = [vals(a), vals(b), vals(ta), vals(tb)];
  assertClose(vals(out), av.map((x, i) => Math.sin(x) * bv[i]), 1e-15);
  assertClose(vals(t), av.map((x, i) => Math.cos(x) * bv[i] * tav[i] + Math.sin(x) * tbv[i]), 1e-12);
});

// ---------------------------------------------------------------- higher order

/** d²/dx² of sum(g(x)) evaluated elementwise, via grad(grad). */
function second(g: (x: Tensor) => Tensor, x: Tensor): number[] {
  const first = d.grad((x: Tensor) => d.sum(g(x)));
  return vals(d.grad((x: Tensor) => d.sum(first(x) as Tensor))(x));
}

const sig = (v: number) => 1 / (1 + Math.exp(-v));
const SECOND_DERIVATIVES: [string, (x: Tensor) => Tensor, (v: number) => number, number, number][] = [
  ["sin", d.sin, (v) => -Math.sin(v), -3, 3],
  ["exp", d.exp, (v) => Math.exp(v), -2, 2],
  ["tanh", d.tanh, (v) => -2 * Math.tanh(v) * (1 - Math.tanh(v) ** 2), -2, 2],
  ["mul x*x*x", (x) => d.mul(d.mul(x, x), x), (v) => 6 * v, -2, 2],
  ["pow(x, 3)", (x) => d.pow(x, 3), (v) => 6 * v, 0.2, 2],
  ["pow(x, 2.5)", (x) => d.pow(x, 2.5), (v) => 2.5 * 1.5 * Math.sqrt(v), 0.2, 2],
  ["pow(2, x)", (x) => d.pow(2, x), (v) => Math.LN2 ** 2 * 2 ** v, -2, 2],
  ["sigmoid", d.sigmoid, (v) => sig(v) * (1 - sig(v)) * (1 - 2 * sig(v)), -3, 3],
  ["log", d.log, (v) => -1 / (v * v), 0.3, 3],
  ["exp(sin x)", (x) => d.exp(d.sin(x)), (v) => (Math.cos(v) ** 2 - Math.sin(v)) * Math.exp(Math.sin(v)), -3, 3],
  [
    "sin(x)*tanh(x)",
    (x) => d.mul(d.sin(x), d.tanh(x)),
    (v) => {
      const t = Math.tanh(v), s2 = 1 - t * t;
      return -Math.sin(v) * t + 2 * Math.cos(v) * s2 + Math.sin(v) * (-2 * t * s2);
    },
    -2,
    2,
  ],
  ["x / (1 + x^2)", (x) => d.div(x, d.add(d.mul(x, x), 1)), (v) => (2 * v * (v * v - 3)) / (1 + v * v) ** 3, -2, 2],
];

for (const [name, g, g2, lo, hi] of SECOND_DERIVATIVES) {
  Deno.test(`grad(grad(f)) of ${name} matches the analytic second derivative`, () => {
    fc.assert(
      fc.property(shapeArb, seedArb, (shape, seed) => {
        const x = f64(shape, seed, lo, hi);
        assertClose(second(g, x), vals(x).map(g2), 1e-9, 1e-9, `${name} at ${vals(x)}`);
      }),
      { numRuns: 25 },
    );
  });
}

Deno.test("third derivative: grad(grad(grad(f))) for sin and x^4", () => {
  const x = f64([5], 41, -2, 2);
  const third = (g: (x: Tensor) => Tensor) => {
    const g1 = d.grad((x: Tensor) => d.sum(g(x)));
    const g2 = d.grad((x: Tensor) => d.sum(g1(x) as Tensor));
    return vals(d.grad((x: Tensor) => d.sum(g2(x) as Tensor))(x));
  };
  assertClose(third(d.sin), vals(x).map((v) => -Math.cos(v)), 1e-9);
  assertClose(third((x) => d.mul(d.mul(x, x), d.mul(x, x))), vals(x).map((v) => 24 * v), 1e-9);
});

Deno.test("grad(grad(f)) for a function with a cross term gives the Hessian-vector row sums", () => {
  // f(x) = (sum x)^3: Hessian is 6 sum(x) everywhere, so grad of sum(grad f) is 6 n sum(x).
  const x = f64([4], 43);
  const f = (x: Tensor) => d.pow(d.sum(x), 3);
  const h = d.grad((x: Tensor) => d.sum(d.grad(f)(x) as Tensor))(x) as Tensor;
  const s = vals(x).reduce((a, b) => a + b, 0);
  assertClose(vals(h), [1, 1, 1, 1].map(() => 24 * s), 1e-9);
});

// ---------------------------------------------------------------- stopGradient

Deno.test("stopGradient blocks the gradient but keeps the value", () => {
  const x = d.tensor([1, -2, 3], { dtype: "f64" });
  const g = d.grad((x: Tensor) => d.sum(d.mul(x, d.stopGradient(x))))(x) as Tensor;
  assert.deepEqual(vals(g), [1, -2, 3]); // not 2x
  const [v, g0] = d.valueAndGrad((x: Tensor) => d.sum(d.stopGradient(d.exp(x))))(x);
  assertClose(vals(v), [Math.exp(1) + Math.exp(-2) + Math.exp(3)], 1e-12);
  assert.deepEqual(vals(g0), [0, 0, 0]);
  // Trees: every leaf is stopped.
  const tree = d.stopGradient({ a: x, b: [x] });
  const g2 = d.grad((x: Tensor) => {
    const t = d.stopGradient({ a: x, b: [x] });
    return d.sum(d.add(d.mul(t.a, t.b[0]), x));
  })(x) as Tensor;
  assert.deepEqual(vals(g2), [1, 1, 1]);
  assert.deepEqual(vals(tree.b[0]), [1, -2, 3]);
});

// ---------------------------------------------------------------- customVjp

Deno.test("customVjp with the true derivative gives the plain function's gradients", () => {
  let bwdCalls = 0;
  const plain = (x: Tensor, y: Tensor) => d.mul(d.sin(x), y);
  const custom = d.customVjp(
    plain,
    (x: Tensor, y: Tensor) => [plain(x, y), { x, y }],
    (res: { x: Tensor; y: Tensor }, ct: Tensor) => {
      bwdCalls++;
      return [d.mul(ct, d.mul(d.cos(res.x), res.y)), d.mul(ct, d.sin(res.x))];
    },
  );
  fc.assert(
    fc.property(seedArb, (seed) => {
      const x = f64([2, 3], seed), y = f64([2, 3], seed + 1);
      const loss = (fn: typeof plain) => (x: Tensor, y: Tensor) => d.sum(d.tanh(fn(x, y)));
      const [v1, g1] = d.valueAndGrad(loss(plain), { argnums: [0, 1] })(x, y) as [Tensor, Tensor[]];
      const before = bwdCalls;
      const [v2, g2] = d.valueAndGrad(loss(custom), { argnums: [0, 1] })(x, y) as [Tensor, Tensor[]];
      assert.equal(bwdCalls, before + 1, "bwd must be called exactly once");
      assertClose(vals(v2), vals(v1), 1e-15);
      assertClose(vals(g2[0]), vals(g1[0]), 1e-12);
      assertClose(vals(g2[1]), vals(g1[1]), 1e-12);
    }),
    { numRuns: 15 },
  );
  // Outside any trace the plain function runs and bwd is not used.
  const before = bwdCalls;
  assertClose(vals(custom(d.tensor([1], { dtype: "f64" }), d.tensor([2], { dtype: "f64" }))), [2 * Math.sin(1)], 1e-15);
  assert.equal(bwdCalls, before);
});

Deno.test("customVjp: a clipped-gradient bwd is really used", () => {
  const clipGrad = d.customVjp(
    (x: Tensor) => x,
    (x: Tensor) => [x, null],
    (_res: null, ct: Tensor) => [d.maximum(d.minimum(ct, 1), -1)],
  );
  const x = d.tensor([0.1, -0.2, 3], { dtype: "f64" });
  const [v, g] = d.valueAndGrad((x: Tensor) => d.sum(d.mul(clipGrad(x), d.tensor([10, -10, 0.5], { dtype: "f64" }))))(
    x,
  );
  assertClose(vals(v), [1 + 2 + 1.5], 1e-12);
  assert.deepEqual(vals(g), [1, -1, 0.5]);
});

Deno.test("customVjp: bwd may return null for an argument (zero gradient)", () => {
  const f = d.customVjp(
    (x: Tensor, y: Tensor) => d.mul(x, y),
    (x: Tensor, y: Tensor) => [d.mul(x, y), y],
    (y: Tensor, ct: Tensor) => [d.mul(ct, y), null],
  );
  const x = d.tensor([1, 2], { dtype: "f64" }), y = d.tensor([3, 4], { dtype: "f64" });
  const [gx, gy] = d.grad((x: Tensor, y: Tensor) => d.sum(f(x, y)), { argnums: [0, 1] })(x, y) as Tensor[];
  assert.deepEqual(vals(gx), [3, 4]);
  assert.deepEqual(gy.shape, [2]);
  assert.deepEqual(vals(gy), [0, 0]);
  const allNull = d.customVjp((x: Tensor) => d.exp(x), (x: Tensor) => [d.exp(x), null], () => [null]);
  assert.deepEqual(vals(d.grad((x: Tensor) => d.sum(allNull(x)))(x)), [0, 0]);
  const bad = d.customVjp((x: Tensor) => d.exp(x), (x: Tensor) => [d.exp(x), null], () => []);
  assert.throws(() => d.grad((x: Tensor) => d.sum(bad(x)))(x), d.DifflabError);
});

// ---------------------------------------------------------------- checkpoint

interface Layer {
  w: Tensor;
  b: Tensor;
}
const layer = (p: Layer, h: Tensor) => d.tanh(d.add(d.matmul(h, p.w), p.b));
function mlpParams(seed: number, dims: number[]): { layers: Layer[] } {
  return {
    layers: dims.slice(1).map((n, i) => ({
      w: f64([dims[i], n], seed + 2 * i, -0.8, 0.8),
      b: f64([n], seed + 2 * i + 1, -0.2, 0.2),
    })),
  };
}
function mlpLoss(apply: (p: Layer, h: Tensor) => Tensor) {
  return (params: { layers: Layer[] }, x: Tensor, target: Tensor) => {
    let h = x;
    for (const p of params.layers) h = apply(p, h);
    const probs = d.softmax(h, -1);
    return d.neg(d.mean(d.sum(d.mul(target, d.log(probs)), { axis: -1 })));
  };
}

function assertTreesClose(a: unknown, b: unknown, tol: number, path = "") {
  if (a instanceof d.Tensor) {
    assert.ok(b instanceof d.Tensor, path);
    assert.deepEqual(a.shape, b.shape, path);
    assertClose(vals(a), vals(b), tol, tol, path);
  } else if (Array.isArray(a)) {
    assert.ok(Array.isArray(b) && a.length === b.length, path);
    a.forEach((v, i) => assertTreesClose(v, (b as unknown[])[i], tol, `${path}[${i}]`));
  } else {
    assert.deepEqual(Object.keys(a as object).sort(), Object.keys(b as object).sort(), path);
    for (const k of Object.keys(a as object)) {
      assertTreesClose((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k], tol, `${path}.${k}`);
    }
  }
}

Deno.test("checkpoint: same loss and gradients as the plain MLP (matmul/tanh/softmax), recomputed in backward", () => {
  const params = mlpParams(100, [5, 8, 6, 4]);
  const x = f64([3, 5], 200, -2, 2);
  const target = d.oneHot(d.tensor([0, 3, 1], { dtype: "i32" }), 4, "f64");
  let calls = 0;
  const counted = (p: Layer, h: Tensor) => (calls++, layer(p, h));
  const [v1, g1] = d.valueAndGrad(mlpLoss(layer), { argnums: [0, 1] })(params, x, target);
  const [v2, g2] = d.valueAndGrad(mlpLoss(d.checkpoint(counted)), { argnums: [0, 1] })(params, x, target);
  assert.equal(calls, 6, "each of the 3 layers runs once forward and once more in backward");
  assertClose(vals(v2), vals(v1), 1e-14);
  assertTreesClose(g2, g1, 1e-12);
  // And both agree with finite differences on one weight.
  const w0 = params.layers[1].w;
  const fd = numGrad(
    (w) => mlpLoss(layer)({ layers: [params.layers[0], { ...params.layers[1], w }, params.layers[2]] }, x, target),
    w0,
  );
  assertClose(vals((g2 as [{ layers: Layer[] }, Tensor])[0].layers[1].w), fd, 1e-6);
});

Deno.test("nested checkpoint gives the plain gradients", () => {
  const params = mlpParams(300, [4, 6, 6, 3]);
  const x = f64([2, 4], 400, -2, 2);
  const target = d.oneHot(d.tensor([2, 0], { dtype: "i32" }), 3, "f64");
  const inner = d.checkpoint(layer);
  const twoLayers = d.checkpoint((a: Layer, b: Layer, h: Tensor) => inner(b, inner(a, h)));
  const nestedLoss = (params: { layers: Layer[] }, x: Tensor, target: Tensor) => {
    const [l0, l1, l2] = params.layers;
    const h = layer(l2, twoLayers(l0, l1, x));
    return d.neg(d.mean(d.sum(d.mul(target, d.log(d.softmax(h, -1))), { axis: -1 })));
  };
  const [v1, g1] = d.valueAndGrad(mlpLoss(layer), { argnums: [0, 1] })(params, x, target);
  const [v2, g2] = d.valueAndGrad(nestedLoss, { argnums: [0, 1] })(params, x, target);
  assertClose(vals(v2), vals(v1), 1e-14);
  assertTreesClose(g2, g1, 1e-12);
});

Deno.test("checkpoint composes with grad(grad(f))", () => {
  const g = (x: Tensor) => d.mul(d.sin(x), x); // g'' = 2 cos x - x sin x
  const x = f64([6], 500, -3, 3);
  const expected = vals(x).map((v) => 2 * Math.cos(v) - v * Math.sin(v));
  assertClose(second(d.checkpoint(g), x), expected, 1e-9);
  assertClose(second(g, x), expected, 1e-9);
  // Checkpoint inside the inner grad only.
  const inner = d.grad((x: Tensor) => d.sum(d.checkpoint(g)(x)));
  assertClose(vals(d.grad((x: Tensor) => d.sum(inner(x) as Tensor))(x)), expected, 1e-9);
});

Deno.test("checkpoint with tree outputs and an unused output", () => {
  const f = d.checkpoint((x: Tensor) => ({ s: d.sin(x), c: [d.cos(x)] }));
  const x = f64([4], 600);
  const g = d.grad((x: Tensor) => d.sum(f(x).s))(x) as Tensor;
  assertClose(vals(g), vals(x).map(Math.cos), 1e-12);
  const g2 = d.grad((x: Tensor) => {
    const o = f(x);
    return d.sum(d.mul(o.s, o.c[0]));
  })(x) as Tensor;
  assertClose(vals(g2), vals(x).map((v) => Math.cos(2 * v)), 1e-12);
});

Deno.test("a trace keeps only what VJP rules read: other intermediates die with the model's own tidy", () => {
  const x = d.tensor(Array.from({ length: 64 }, (_, i) => Math.sin(i)), { dtype: "f32" });
  const L = 20;
  const base = d.liveBuffers();
  let during = 0;
  const f = (t: Tensor) => {
    let h = t;
    // tanh reads its output, mul by a constant reads the constant, add reads nothing:
    // two buffers per layer survive each layer's tidy (five did when traces pinned everything).
    for (let i = 0; i < L; i++) h = d.tidy(() => d.tanh(d.add(d.mul(h, 1.5), 0.1)));
    during = d.liveBuffers() - base;
    return d.sum(h);
  };
  const g = d.grad(f)(x) as Tensor;
  assert.ok(during <= 2 * L + 4, `${during} buffers live after a ${L}-layer traced forward`);
  // The gradient is still exact: compare with the same chain on a fresh trace-free finite difference.
  const gv = g.arraySync() as number[];
  const xv = x.arraySync() as number[];
  const h0 = (v: number) => {
    for (let i = 0; i < L; i++) v = Math.tanh(v * 1.5 + 0.1);
    return v;
  };
  xv.forEach((v, i) => {
    const fd = (h0(v + 1e-3) - h0(v - 1e-3)) / 2e-3;
    assert.ok(Math.abs(fd - gv[i]) < 1e-3 * (1 + Math.abs(fd)), `grad[${i}] ${gv[i]} vs ${fd}`);
  });
  g.dispose();
  x.dispose();
  assert.equal(d.liveBuffers(), base - 1, "nothing of the trace outlives grad (x was disposed)");
});
