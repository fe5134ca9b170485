/**
 * @file Memory reclamation through the public API: `tidy` scopes, `keep`,
 * `dispose`, clear errors on disposed tensors, and a 200-step training loop
 * whose live-buffer count stays exactly flat.
 */
import assert from "node:assert/strict";
import * as d from "../mod.ts";
import type { Tensor } from "../mod.ts";

// These are oracle tests in f64: pin the reference backend whatever the default becomes.
await d.setBackend("cpu");

const vals = (t: Tensor) => Array.from(t.dataSync());

Deno.test("tidy releases intermediates and keeps the result", () => {
  const x = d.tensor([1, 2, 3, 4], { shape: [2, 2] });
  const before = d.liveBuffers();
  let inner: Tensor[] = [];
  const y = d.tidy(() => {
    const a = d.exp(x);
    const b = d.mul(a, 2);
    const c = d.sum(d.add(b, x), { axis: 0 });
    inner = [a, b];
    assert.ok(d.liveBuffers() > before + 2, "intermediates are alive inside the scope");
    return c;
  });
  assert.equal(d.liveBuffers(), before + 1, "only the result's buffer survives");
  assert.ok(inner.every((t) => t.isDisposed));
  assert.ok(!y.isDisposed && !x.isDisposed);
  // Column sums of 2 e^x + x over [[1, 2], [3, 4]].
  const e = [1, 2].map((v) => 2 * Math.exp(v) + v + 2 * Math.exp(v + 2) + v + 2);
  vals(y).forEach((v, i) => assert.ok(Math.abs(v - e[i]) < 1e-3 * e[i], `${v} vs ${e[i]}`));
  y.dispose();
  assert.equal(d.liveBuffers(), before);
  x.dispose();
});

Deno.test("tidy keeps every tensor of a tree result and releases a thrown scope", () => {
  const before = d.liveBuffers();
  const out = d.tidy(() => {
    const a = d.tensor([1, 2]);
    d.exp(a);
    return { a: d.neg(a), list: [d.sin(a), "label", 3], n: 7 };
  });
  assert.equal(d.liveBuffers(), before + 2);
  assert.deepEqual(vals(out.a), [-1, -2]);
  assert.equal(out.list[1], "label");
  d.dispose(out);
  assert.equal(d.liveBuffers(), before);
  assert.throws(() =>
    d.tidy(() => {
      d.exp(d.tensor([1, 2, 3]));
      throw new Error("boom");
    }), /boom/);
  assert.equal(d.liveBuffers(), before, "a throwing scope still releases its tensors");
});

Deno.test("nested tidy: an inner result moves to the outer scope and is released there", () => {
  const before = d.liveBuffers();
  let innerResult: Tensor | undefined;
  let innerTemp: Tensor | undefined;
  const y = d.tidy(() => {
    innerResult = d.tidy(() => {
      innerTemp = d.exp(d.tensor([1, 2, 3]));
      return d.mul(innerTemp, 3);
    });
    assert.ok(innerTemp!.isDisposed, "inner temporaries die with the inner scope");
    assert.ok(!innerResult.isDisposed, "the inner result survives into the outer scope");
    return d.sum(innerResult);
  });
  assert.ok(innerResult!.isDisposed, "the inner result dies with the outer scope");
  assert.equal(d.liveBuffers(), before + 1);
  y.dispose();
  assert.equal(d.liveBuffers(), before);
});

Deno.test("keep makes a tensor survive every enclosing tidy", () => {
  const before = d.liveBuffers();
  let kept: Tensor | undefined;
  let dropped: Tensor | undefined;
  d.tidy(() => {
    d.tidy(() => {
      kept = d.keep(d.exp(d.tensor([0, 1])));
      dropped = d.exp(d.tensor([0, 1]));
    });
  });
  assert.ok(!kept!.isDisposed);
  assert.ok(dropped!.isDisposed);
  assert.deepEqual(vals(kept!).map((v) => Math.round(v * 1e4) / 1e4), [1, 2.7183]);
  assert.equal(d.liveBuffers(), before + 1);
  kept!.dispose();
  assert.equal(d.liveBuffers(), before);
});

Deno.test("tidy with an async function ends the scope when the promise settles", async () => {
  const before = d.liveBuffers();
  let temp: Tensor | undefined;
  const y = await d.tidy(async () => {
    temp = d.exp(d.tensor([1, 2]));
    const host = await temp.data();
    assert.ok(!temp.isDisposed, "alive while the async body runs");
    return d.mul(temp, host[0]);
  });
  assert.ok(temp!.isDisposed);
  assert.equal(d.liveBuffers(), before + 1);
  assert.ok(Math.abs(vals(y)[0] - Math.E * Math.E) < 1e-4);
  y.dispose();
  await assert.rejects(
    d.tidy(async () => {
      d.exp(d.tensor([1]));
      await Promise.resolve();
      throw new Error("async boom");
    }),
    /async boom/,
  );
  assert.equal(d.liveBuffers(), before);
});

Deno.test("a disposed tensor gives a clear DifflabError naming its shape", async () => {
  const t = d.tensor([[1, 2, 3], [4, 5, 6]]);
  t.dispose();
  t.dispose(); // idempotent
  assert.ok(t.isDisposed);
  const isClear = (e: unknown) =>
    e instanceof d.DifflabError && /\[2,3\]/.test((e as Error).message) && /dispos/.test((e as Error).message);
  assert.throws(() => t.dataSync(), isClear);
  await assert.rejects(async () => await t.data(), isClear);
  await assert.rejects(async () => await t.array(), isClear);
  assert.throws(() => d.add(t, 1), isClear);
  assert.throws(() => d.exp(t), isClear);
  // Tensors that escaped a tidy scope by closure are disposed too.
  let leaked: Tensor | undefined;
  d.tidy(() => {
    leaked = d.zeros([4, 1]);
    d.exp(leaked);
  });
  assert.throws(
    () => d.sum(leaked!),
    (e: unknown) => e instanceof d.DifflabError && /\[4,1\]/.test((e as Error).message),
  );
});

Deno.test("grad and valueAndGrad inside tidy do not leak", () => {
  const x = d.tensor([[0.5, -1], [2, 0.1]], { dtype: "f64" });
  const w = { a: d.tensor([1, 2], { dtype: "f64" }), b: [d.tensor(0.5, { dtype: "f64" })] };
  const f = (w: { a: Tensor; b: Tensor[] }, x: Tensor) => d.mean(d.square(d.tanh(d.add(d.matmul(x, w.a), w.b[0]))));
  const before = d.liveBuffers();
  for (let i = 0; i < 3; i++) {
    d.tidy(() => {
      d.grad(f)(w, x);
      d.valueAndGrad(f, { argnums: [0, 1] })(w, x);
      d.grad((x: Tensor) => d.sum(d.grad((x: Tensor) => d.sum(d.sin(x)))(x) as Tensor))(x);
      d.grad((x: Tensor) => d.sum(d.checkpoint((x: Tensor) => d.sin(d.mul(x, x)))(x)))(x);
      const sinC = d.customVjp(
        (x: Tensor) => d.sin(x),
        (x: Tensor) => [d.sin(x), x],
        (r: Tensor, ct: Tensor) => [d.mul(ct, d.cos(r))],
      );
      d.valueAndGrad((x: Tensor) => d.sum(sinC(x)))(x);
      d.grad((x: Tensor) => x)(d.sum(x));
    });
    assert.equal(d.liveBuffers(), before, `iteration ${i}`);
  }
  // A result returned from tidy survives with the right values, everything else is released.
  const g = d.tidy(() => d.grad(f)(w, x)) as { a: Tensor; b: Tensor[] };
  assert.equal(d.liveBuffers(), before + 2);
  assert.ok(!x.isDisposed && !w.a.isDisposed && !w.b[0].isDisposed);
  const [ga] = [vals(g.a)];
  // Finite-difference check of one component so the kept values are real gradients.
  const h = 1e-6;
  const at = (v: number) => d.tidy(() => vals(f({ a: d.tensor([1 + v, 2], { dtype: "f64" }), b: w.b }, x))[0]);
  assert.ok(Math.abs(ga[0] - (at(h) - at(-h)) / (2 * h)) < 1e-6);
  d.dispose(g);
  assert.equal(d.liveBuffers(), before);
  d.dispose([x, w]);
});

Deno.test("a vjp pullback called later in the same scope still works", () => {
  const before = d.liveBuffers();
  const x = d.tensor([0.3, -0.7, 1.1], { dtype: "f64" });
  const g = d.tidy(() => {
    const [y, pull] = d.vjp((x: Tensor) => d.mul(d.sin(x), d.exp(x)), x);
    // Unrelated work (and a nested scope) between forward and backward.
    d.tidy(() => d.sum(d.mul(y, y)));
    const z = d.add(y, 1);
    const [g1] = pull(d.onesLike(y)) as Tensor[];
    const [g2] = pull(d.mul(d.onesLike(y), 2)) as Tensor[];
    vals(g2).forEach((v, i) => assert.ok(Math.abs(v - 2 * vals(g1)[i]) < 1e-12));
    void z;
    return g1;
  });
  const xv = vals(x);
  vals(g).forEach((v, i) => {
    const e = (Math.cos(xv[i]) + Math.sin(xv[i])) * Math.exp(xv[i]);
    assert.ok(Math.abs(v - e) < 1e-12, `${v} vs ${e}`);
  });
  d.dispose([g, x]);
  assert.equal(d.liveBuffers(), before);
});

Deno.test("training loop: 200 SGD steps in tidy keep liveBuffers exactly flat and the loss falls", () => {
  // Data: y = sin(x . v) for fixed v, a small 2-layer MLP fits it.
  // Everything is created in tidy or disposed explicitly: no garbage is left for the finalizer to
  // release at an unpredictable time (the loop itself is synchronous, so finalizers cannot interleave).
  const n = 32;
  const xs = Array.from({ length: n * 3 }, (_, i) => Math.sin(i * 1.7) * 1.5);
  const x = d.tensor(xs, { shape: [n, 3] });
  const y = d.tidy(() => d.sin(d.matmul(x, d.tensor([[0.8], [-0.5], [0.3]]))));
  const [k1, k2] = d.random.split(d.randomKey(0));
  type Params = { l1: { w: Tensor; b: Tensor }; l2: { w: Tensor; b: Tensor } };
  let params: Params = d.tidy(() => ({
    l1: { w: d.mul(d.random.normal(k1, [3, 16]), 0.5), b: d.zeros([16]) },
    l2: { w: d.mul(d.random.normal(k2, [16, 1]), 0.25), b: d.zeros([1]) },
  }));
  const lossFn = (p: Params, x: Tensor, y: Tensor) => {
    const h = d.tanh(d.add(d.matmul(x, p.l1.w), p.l1.b));
    return d.mean(d.square(d.sub(d.add(d.matmul(h, p.l2.w), p.l2.b), y)));
  };
  const step = (p: Params) =>
    d.tidy(() => {
      const [loss, g] = d.valueAndGrad(lossFn)(p, x, y) as [Tensor, Params];
      const next = d.treeMap((w: Tensor, gw: Tensor) => d.sub(w, d.mul(gw, 0.1)), p, g) as Params;
      return { loss, params: next };
    });
  const losses: number[] = [];
  const run = () => {
    const { loss, params: next } = step(params);
    d.dispose(params);
    params = next;
    losses.push(vals(loss)[0]);
    loss.dispose();
  };
  run(); // warm-up
  const flat = d.liveBuffers();
  for (let i = 0; i < 200; i++) {
    run();
    assert.equal(d.liveBuffers(), flat, `step ${i + 1}: live buffers ${d.liveBuffers()} != ${flat}`);
  }
  assert.ok(losses.every(Number.isFinite));
  assert.ok(losses.at(-1)! < 0.5 * losses[0], `loss should fall: ${losses[0]} -> ${losses.at(-1)}`);
  d.dispose([params, x, y]);
});
