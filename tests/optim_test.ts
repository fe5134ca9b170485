/**
 * @file Optimisers, clipping, EMA and schedules against reference sequences
 * written out by hand in plain JS (f64, cpu), plus state save/restore through
 * safetensors that resumes bit-identically.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import * as d from "../mod.ts";
import type { Tensor } from "../mod.ts";
import { assertClose, vals } from "./util.ts";

const { nn } = d;
await d.setBackend("cpu");

const f64 = (data: number[], shape?: number[]) => d.tensor(data, { dtype: "f64", shape: shape ?? [data.length] });

// L(p) = Σ c·p² + Σ a·p over two leaves, so ∂L/∂p = 2c·p + a; the i32 leaf gets no gradient.
const C = [0.5, 2, 1, 3, 0.25], A = [1, -2, 0.5, 0.1, -1];
type P = { w: Tensor; layer: { b: Tensor }; ids: Tensor };
const params0 = (): P => ({
  w: f64([1, -1, 2]),
  layer: { b: f64([0.5, -3]) },
  ids: d.tensor([1, 2], { dtype: "i32" }),
});
const flatP = (p: P) => [...vals(p.w), ...vals(p.layer.b)];
function loss(p: P): Tensor {
  const x = d.concat([p.w, p.layer.b]);
  return d.sum(d.add(d.mul(d.mul(x, x), f64(C)), d.mul(x, f64(A))));
}
const gradRef = (x: number[]) => x.map((v, i) => 2 * C[i] * v + A[i]);
const vg = d.valueAndGrad(loss);

Deno.test("adamw matches the textbook AdamW sequence for 5 steps (decoupled decay, bias correction, eps outside sqrt)", () => {
  const cfg = { lr: 0.05, beta1: 0.8, beta2: 0.95, eps: 1e-3, weightDecay: 0.1 };
  let p = params0();
  let st = nn.adamw.init(p);
  assert.equal(st.step, 0);
  // Reference, written independently from the update rule in the AdamW paper / torch docs.
  let x = flatP(p), m = x.map(() => 0), v = x.map(() => 0);
  for (let t = 1; t <= 5; t++) {
    const [, g] = vg(p);
    const r = nn.adamw.update(p, g, st, cfg);
    [p, st] = [r.params as P, r.state];
    const gr = gradRef(x);
    x = x.map((xi) => xi * (1 - cfg.lr * cfg.weightDecay));
    m = m.map((mi, i) => cfg.beta1 * mi + (1 - cfg.beta1) * gr[i]);
    v = v.map((vi, i) => cfg.beta2 * vi + (1 - cfg.beta2) * gr[i] ** 2);
    const mh = m.map((mi) => mi / (1 - cfg.beta1 ** t)), vh = v.map((vi) => vi / (1 - cfg.beta2 ** t));
    x = x.map((xi, i) => xi - (cfg.lr * mh[i]) / (Math.sqrt(vh[i]) + cfg.eps));
    assertClose(flatP(p), x, 1e-13, 1e-14, `step ${t} params`);
    assertClose([...vals((st.m as P).w), ...vals((st.m as P).layer.b)], m, 1e-13, 1e-15, `step ${t} m`);
    assertClose([...vals((st.v as P).w), ...vals((st.v as P).layer.b)], v, 1e-13, 1e-15, `step ${t} v`);
    assert.equal(st.step, t);
    assert.deepEqual(vals(p.ids), [1, 2]);
  }
});

Deno.test("adamw: schedules are read at the completed-step count, decayMask excludes parameters from decay", () => {
  const lrs = nn.linearWarmupSchedule(0.1, 2);
  const cfg = { lr: lrs, weightDecay: 0.5, decayMask: (path: string) => path !== "layer.b" };
  let p = params0();
  let st = nn.adamw.init(p);
  let x = flatP(p), m = x.map(() => 0), v = x.map(() => 0);
  for (let t = 1; t <= 4; t++) {
    const [, g] = vg(p);
    const r = nn.adamw.update(p, g, st, cfg);
    [p, st] = [r.params as P, r.state];
    const lr = [0, 0.05, 0.1, 0.1][t - 1];
    const gr = gradRef(x);
    x = x.map((xi, i) => (i < 3 ? xi * (1 - lr * 0.5) : xi));
    m = m.map((mi, i) => 0.9 * mi + 0.1 * gr[i]);
    v = v.map((vi, i) => 0.999 * vi + 0.001 * gr[i] ** 2);
    x = x.map((xi, i) => xi - (lr * m[i] / (1 - 0.9 ** t)) / (Math.sqrt(v[i] / (1 - 0.999 ** t)) + 1e-8));
    assertClose(flatP(p), x, 1e-12, 1e-14, `step ${t}`);
  }
  assert.throws(
    () => nn.adamw.update(p, { w: f64([1, 2]), layer: { b: f64([1, 2]) }, ids: null }, st, {}),
    /adamw.update: gradient of "w" has shape \[2\], parameter has \[3\]/,
  );
  assert.throws(() => nn.adamw.update(p, {}, st, { lr: -1 }), /learning rate must be a finite number >= 0, got -1/);
});

Deno.test("sgd matches torch.optim.SGD by hand: momentum with dampening and weight decay, and Nesterov", () => {
  for (
    const cfg of [{ lr: 0.1, momentum: 0.9, dampening: 0.1, weightDecay: 0.05 }, {
      lr: 0.05,
      momentum: 0.8,
      nesterov: true,
    }]
  ) {
    let p = params0();
    let st = nn.sgd.init(p);
    let x = flatP(p), buf: number[] | null = null;
    for (let t = 1; t <= 4; t++) {
      const [, g] = vg(p);
      const r = nn.sgd.update(p, g, st, cfg);
      [p, st] = [r.params as P, r.state];
      const wd = cfg.weightDecay ?? 0, damp = cfg.dampening ?? 0;
      let dp = gradRef(x).map((gi, i) => gi + wd * x[i]);
      const b: number[] = buf === null ? dp.slice() : buf.map((bi, i) => cfg.momentum * bi + (1 - damp) * dp[i]);
      buf = b;
      dp = cfg.nesterov ? dp.map((di, i) => di + cfg.momentum * b[i]) : b;
      x = x.map((xi, i) => xi - cfg.lr * dp[i]);
      assertClose(flatP(p), x, 1e-13, 1e-14, `${JSON.stringify(cfg)} step ${t}`);
    }
    assert.equal(st.step, 4);
  }
  // Plain SGD without momentum keeps no buffers.
  const p = params0();
  const [, g] = vg(p);
  const r = nn.sgd.update(p, g, nn.sgd.init(p), { lr: 0.5 });
  assert.equal((r.state.momentum as P).w, null);
  assertClose(vals((r.params as P).w), vals(p.w).map((v, i) => v - 0.5 * gradRef(flatP(p))[i]), 1e-15, 0, "plain");
  assert.throws(() => nn.sgd.update(p, g, nn.sgd.init(p), { nesterov: true }), /Nesterov momentum needs momentum > 0/);
});

Deno.test("clipByGlobalNorm: norm over every leaf, scaled by maxNorm/(norm+1e-6) only when above", () => {
  const g = { a: f64([3, 4]), b: [f64([12], [1, 1])], n: null };
  const big = nn.clipByGlobalNorm(g, 20);
  assert.equal(vals(big.norm)[0], 13);
  assert.deepEqual(vals((big.grads as typeof g).a), [3, 4]);
  const small = nn.clipByGlobalNorm(g, 6.5);
  const k = 6.5 / (13 + 1e-6);
  assertClose(vals((small.grads as typeof g).a), [3 * k, 4 * k], 1e-15, 0, "a");
  assertClose(vals((small.grads as typeof g).b[0]), [12 * k], 1e-15, 0, "b");
  assert.equal((small.grads as typeof g).n, null);
  assertClose(vals(nn.globalNorm(small.grads)), [13 * k], 1e-15, 0, "norm after");
  assert.throws(() => nn.clipByGlobalNorm(g, 0), /maxNorm must be finite and > 0/);
});

Deno.test("ema: starts as a copy, then ema ← decay·ema + (1-decay)·param, as DiT's update_ema", () => {
  const p0 = { w: f64([1, 2]), k: d.tensor([7], { dtype: "i32" }) };
  let e = nn.ema.init(p0);
  assert.notEqual(e.w, p0.w);
  p0.w.dispose();
  assert.deepEqual(vals(e.w), [1, 2]);
  let ref = [1, 2];
  for (const [i, pv] of [[3, 1], [0, 0], [10, -4]].entries()) {
    e = nn.ema.update(e, { w: f64(pv), k: d.tensor([7], { dtype: "i32" }) }, 0.9);
    ref = ref.map((r, j) => 0.9 * r + 0.1 * pv[j]);
    assertClose(vals(e.w), ref, 1e-15, 1e-15, `step ${i}`);
  }
  assert.deepEqual(vals(e.k), [7]);
  assert.throws(() => nn.ema.update(e, e, 1.5), /decay must be in \[0, 1\]/);
});

Deno.test("schedules: constant, linear warm-up, cosine with warm-up and floor", () => {
  assert.equal(nn.constantSchedule(3e-4)(1234), 3e-4);
  const w = nn.linearWarmupSchedule(1, 4);
  assert.deepEqual([0, 1, 2, 4, 100].map(w), [0, 0.25, 0.5, 1, 1]);
  assert.deepEqual([0, 2, 5].map(nn.linearWarmupSchedule(2, 4, { init: 1 })), [1, 1.5, 2]);
  const c = nn.cosineSchedule(1, 10, { warmupSteps: 2, minLr: 0.1 });
  assertClose([0, 1, 2, 6, 10, 20].map(c), [0, 0.5, 1, 0.55, 0.1, 0.1], 1e-15, 1e-15, "cosine");
  assertClose([0, 5, 10].map(nn.cosineSchedule(2, 10)), [2, 1, 0], 1e-15, 1e-15, "no warm-up");
  assert.throws(() => nn.cosineSchedule(1, 5, { warmupSteps: 5 }), /totalSteps 5 must exceed warmupSteps 5/);
});

Deno.test("optimiser state saves to safetensors and restores; training resumes bit-identically", async () => {
  const cfg = { lr: nn.cosineSchedule(0.05, 8, { warmupSteps: 1 }), weightDecay: 0.01 };
  const step = (p: P, st: d.nn.AdamWState) => {
    const [, g] = vg(p);
    return nn.adamw.update(p, g, st, cfg) as { params: P; state: d.nn.AdamWState };
  };
  let a = { params: params0(), state: nn.adamw.init(params0()) };
  for (let i = 0; i < 4; i++) a = step(a.params, a.state);
  let b = { params: params0(), state: nn.adamw.init(params0()) };
  for (let i = 0; i < 2; i++) b = step(b.params, b.state);
  const dir = await Deno.makeTempDir();
  try {
    const rec = nn.stateToRecord({ params: b.params, opt: b.state });
    await d.io.writeSafetensors(`${dir}/ckpt.safetensors`, rec.tensors, rec.metadata);
    const back = await d.io.readSafetensors(`${dir}/ckpt.safetensors`);
    const restored = nn.stateFromRecord(back) as { params: P; opt: d.nn.AdamWState };
    assert.equal(restored.opt.step, 2);
    assert.equal((restored.opt.m as P).ids, null);
    b = { params: restored.params, state: restored.opt };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  for (let i = 0; i < 2; i++) b = step(b.params, b.state);
  assert.deepEqual(flatP(b.params), flatP(a.params));
  assert.deepEqual(vals((b.state.v as P).w), vals((a.state.v as P).w));
  assert.deepEqual(vals(b.params.ids), [1, 2]);
});

Deno.test("adamw + clipping + ema train a small f32 regression: loss falls, no buffers leak per step", () => {
  const key = d.randomKey(0);
  const [k1, k2, k3] = d.random.split(key, 3);
  const X = d.random.normal(k1, [64, 4]);
  const trueW = d.tensor([[1, -2, 0.5, 3]]);
  const Y = d.add(d.matmul(X, d.transpose(trueW)), d.mul(d.random.normal(k2, [64, 1]), 0.01));
  let params: unknown = nn.linear.init(k3, { inFeatures: 4, outFeatures: 1 });
  let st = nn.adamw.init(params);
  let ema = nn.ema.init(params);
  const lossFn = (p: d.nn.LinearParams) => d.mean(d.square(d.sub(nn.linear.apply(p, X), Y)));
  const first = vals(lossFn(params as d.nn.LinearParams))[0];
  let live = 0;
  for (let i = 0; i < 60; i++) {
    const next = d.tidy(() => {
      const [, g] = d.valueAndGrad(lossFn)(params as d.nn.LinearParams);
      const { grads } = nn.clipByGlobalNorm(g, 1);
      const r = nn.adamw.update(params, grads, st, { lr: 0.1, weightDecay: 0 });
      return { ...r, ema: nn.ema.update(ema, r.params, 0.9) };
    });
    d.dispose([params, st, ema]);
    ({ params, state: st, ema } = next);
    if (i === 10) live = d.liveBuffers();
    if (i > 10) assert.equal(d.liveBuffers(), live, `live buffers grew at step ${i}`);
  }
  const last = vals(lossFn(params as d.nn.LinearParams))[0];
  assert.ok(last < first * 0.01, `loss ${first} -> ${last}`);
  assert.ok(vals(lossFn(ema as d.nn.LinearParams))[0] < first * 0.05);
});

Deno.test("globalNorm does not depend on the key order of the tree (a reloaded checkpoint resumes bit for bit)", async () => {
  await fc.assert(
    fc.asyncProperty(fc.integer({ min: 0, max: 1e6 }), fc.integer({ min: 2, max: 12 }), async (seed, n) => {
      const keys = d.random.split(d.randomKey(seed), n);
      const entries = keys.map((k, i) => [`p${i}`, d.random.normal(k, [1 + (i % 5), 7], { dtype: "f32" })] as const);
      const a = nn.globalNorm(Object.fromEntries(entries));
      const b = nn.globalNorm(Object.fromEntries([...entries].reverse()));
      assert.equal(await a.item(), await b.item());
    }),
    { numRuns: 20 },
  );
});

Deno.test("lossScale: f16 gradients that underflow unscaled survive scaling; Inf skips and backs off; growth as GradScaler", async () => {
  const { lossScale } = d.nn;
  // f16 activations, loss reduced in f32 (as autocast does): d loss/dx = c/64 ≈ 1.6e-8, below half of f16's
  // smallest subnormal (6e-8), so the unscaled gradient flushes to zero.
  const x = d.tensor(Array.from({ length: 64 }, (_, i) => i / 8), { dtype: "f16" });
  const c = d.cast(d.scalar(1e-6, "f32"), "f16");
  const f = (p: Tensor) => d.mean(d.cast(d.mul(p, c), "f32"));
  assert.deepEqual(vals(d.grad(f)(x) as Tensor), new Array(64).fill(0));
  const st = lossScale.init();
  assert.deepEqual(st, { scale: 65536, growthTracker: 0 });
  const g = d.grad((p: Tensor) => lossScale.scale(f(p), st))(x) as Tensor;
  const { grads, finite } = lossScale.unscale({ w: g }, st);
  const w = (grads as { w: Tensor }).w;
  assert.equal(w.dtype, "f32");
  assert.equal(await finite.item(), 1);
  const want = (await c.item()) / 64;
  assertClose(vals(w), new Array(64).fill(want), 0, want * 2e-3, "unscaled");
  // An overflowing step: not finite, the scale halves and the tracker resets.
  const big = lossScale.unscale({ a: d.tensor([1, Infinity], { dtype: "f16" }), b: d.tensor([2]) }, st);
  assert.equal(await big.finite.item(), 0);
  assert.deepEqual(lossScale.update(st, false), { scale: 32768, growthTracker: 0 });
  const nan = lossScale.unscale([d.tensor([NaN])], st);
  assert.equal(await nan.finite.item(), 0);
  // Growth after growthInterval finite steps in a row.
  let s = lossScale.init({ initScale: 8, growthInterval: 3 });
  for (let i = 0; i < 3; i++) s = lossScale.update(s, true, { growthInterval: 3 });
  assert.deepEqual(s, { scale: 16, growthTracker: 0 });
  assert.throws(() => lossScale.init({ backoffFactor: 2 }), /backoffFactor must be in \(0, 1\), got 2/);
  assert.throws(() => lossScale.init({ growthInterval: 0 }), /growthInterval must be an integer >= 1, got 0/);
});
