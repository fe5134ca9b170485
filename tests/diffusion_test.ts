/**
 * @file diffusion/: every key of the diffusion golden files (one test per key, driven by the
 * files' contents), plus properties of the Gaussian diffusion, respacing, DPM-Solver, flow
 * matching and classifier-free guidance that hold for any schedule, shape or seed.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import * as d from "../mod.ts";
import type { Tensor } from "../mod.ts";
import { readSafetensors } from "../nn/io.ts";
import { assertClose, Rng, vals } from "./util.ts";

const D = d.diffusion;
const FIXTURES = new URL("./fixtures/", import.meta.url);

// ------------------------------------------------------------------ goldens: one test per key

for (const file of ["diffusion_a.safetensors", "dimr_diffusion_a.safetensors"]) {
  const { tensors, metadata } = await readSafetensors(new URL(file, FIXTURES).pathname);
  const { kind, cases } = D.diffusionGoldenCases(tensors, metadata);
  Deno.test(`golden ${file}: recognised as ${kind} with a case for every output`, () => {
    assert.equal(kind, file.startsWith("dimr") ? "dimr-diffusion" : "dit-diffusion");
    assert.ok(cases.length >= (file.startsWith("dimr") ? 38 : 64), `only ${cases.length} cases`);
  });
  for (const c of cases) {
    Deno.test(`golden ${file}: ${c.key}`, async () => {
      const err = await D.goldenError(await c.compute(), tensors[c.key], c.category);
      const tol = D.GOLDEN_TOLERANCE[c.category];
      assert.ok(err <= tol, `${c.key}: relative L2 error ${err} > ${tol} (${c.category})`);
    });
  }
}

Deno.test("golden: a file key with no known reproduction is a failing case, not a skipped one", async () => {
  const { tensors, metadata } = await readSafetensors(new URL("diffusion_a.safetensors", FIXTURES).pathname);
  const extra = { ...tensors, "p_sample.mystery": tensors["p_sample.mean"] };
  const { cases } = D.diffusionGoldenCases(extra, metadata);
  const c = cases.find((c) => c.key === "p_sample.mystery");
  assert.ok(c);
  await assert.rejects(async () => await c.compute(), /no reproduction/);
});

Deno.test("golden: goldenError is relative L2, exact for integers, and rejects size mismatches", async () => {
  const ref = d.tensor([3, 4]);
  assert.equal(await D.goldenError([3, 4], ref, "value"), 0);
  assertClose([await D.goldenError([3, 4.5], ref, "value")], [0.5 / 5], 1e-12);
  assert.equal(await D.goldenError([3, 5], d.tensor([3, 4], { dtype: "i32" }), "index"), 1);
  await assert.rejects(async () => await D.goldenError([1, 2, 3], ref, "value"), /3 values/);
});

// ------------------------------------------------------------------ Gaussian diffusion properties

// The linear schedule scales its betas by 1000/T, so T >= 20 keeps them <= 1 (the official assert).
const schedArb = fc.record({
  name: fc.constantFrom("linear", "squaredcos_cap_v2"),
  T: fc.integer({ min: 20, max: 400 }),
  seed: fc.integer({ min: 0, max: 1 << 30 }),
});

Deno.test("qSample with zero noise scales x0 by sqrt(alphabar_t)", () => {
  fc.assert(
    fc.property(schedArb, ({ name, T, seed }) => {
      const g = D.gaussianDiffusion(D.namedBetaSchedule(name, T));
      const rng = new Rng(seed);
      const n = rng.int(1, 4);
      const shape = [n, rng.int(1, 3), rng.int(1, 3)];
      const x0 = d.tensor(rng.values(shape.reduce((a, b) => a * b)), { shape, dtype: "f64" });
      const ts = Array.from({ length: n }, () => rng.int(0, T - 1));
      const out = vals(D.qSample(g, x0, ts, d.zeros(shape, "f64")));
      const per = out.length / n;
      const want = vals(x0).map((v, i) => v * Math.sqrt(g.alphasCumprod[ts[Math.floor(i / per)]]));
      assertClose(out, want, 1e-14, 0, `${name} T=${T}`);
    }),
    { numRuns: 40 },
  );
});

Deno.test("posterior variance is positive after t = 0 and the clipped log variance is finite", () => {
  fc.assert(
    fc.property(schedArb, fc.integer({ min: 1, max: 50 }), ({ name, T }, k) => {
      const base = D.namedBetaSchedule(name, T);
      for (
        const g of [D.gaussianDiffusion(base), D.spacedDiffusion(base, D.spaceTimesteps(T, String(Math.min(k + 1, T))))]
      ) {
        assert.equal(g.posteriorVariance[0], 0);
        for (let i = 1; i < g.numTimesteps; i++) assert.ok(g.posteriorVariance[i] > 0, `posterior variance[${i}]`);
        assert.ok(g.posteriorLogVarianceClipped.every(Number.isFinite));
        assert.equal(g.posteriorLogVarianceClipped[0], g.posteriorLogVarianceClipped[1]);
      }
    }),
    { numRuns: 40 },
  );
});

Deno.test("respaced schedules keep alphabar at the kept steps and at both endpoints", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 40, max: 1000 }),
      // A section of count 1 keeps only its first step, so the last section needs >= 2 to keep T-1.
      fc.array(fc.integer({ min: 2, max: 8 }), { minLength: 1, maxLength: 4 }),
      fc.constantFrom("linear", "squaredcos_cap_v2"),
      (T, counts, name) => {
        const base = D.gaussianDiffusion(D.namedBetaSchedule(name, T));
        const keep = D.spaceTimesteps(T, counts);
        const g = D.spacedDiffusion(base.betas, keep);
        assert.deepEqual([...g.timestepMap], keep);
        assert.equal(keep[0], 0);
        assert.equal(keep.at(-1), T - 1);
        // Rebuilding alphabar through betas = 1 - ratio loses a few digits when a ratio is tiny
        // (the cosine schedule's last steps), as it does in the official float64 code.
        for (let k = 0; k < g.numTimesteps; k++) {
          assertClose([g.alphasCumprod[k]], [base.alphasCumprod[keep[k]]], 1e-8, 1e-15, `acp[${k}]`);
        }
        assertClose(
          [g.alphasCumprod[0], g.alphasCumprod.at(-1)!],
          [base.alphasCumprod[0], base.alphasCumprod[T - 1]],
          1e-8,
          1e-15,
        );
      },
    ),
    { numRuns: 100 },
  );
});

Deno.test("spaceTimesteps: section counts, ddim strides, Python rounding and errors", () => {
  assert.equal(D.spaceTimesteps(1000, "250")[100], 401);
  assert.deepEqual(D.spaceTimesteps(1000, "ddim50").slice(0, 3), [0, 20, 40]);
  assert.deepEqual(D.spaceTimesteps(300, "10,15,20").length, 45);
  // 3 steps out of 6: stride 2.5 -> round(2.5) = 2 (half to even), round(5.0) = 5.
  assert.deepEqual(D.spaceTimesteps(6, "3"), [0, 2, 5]);
  assert.deepEqual(D.spaceTimesteps(7, ""), [0, 1, 2, 3, 4, 5, 6]);
  assert.deepEqual(D.spaceTimesteps(10, "1,1"), [0, 5]);
  assert.throws(() => D.spaceTimesteps(10, "20"), /cannot divide a section of 10 steps into 20/);
  assert.throws(() => D.spaceTimesteps(1000, "ddim3000"), /cannot create exactly 3000 steps/);
  assert.throws(() => D.spaceTimesteps(1000, "2x"), /not an integer/);
});

/** A deterministic stand-in model: eps = tanh(0.7 x + 1e-3 t), plus a learned-sigma half sin(0.3 x). */
function fakeModel(learnSigma = true) {
  return (x: Tensor, t: Tensor) => {
    const tt = d.reshape(d.cast(t, x.dtype), [x.shape[0], 1, 1, 1]);
    const eps = d.tanh(d.add(d.mul(x, 0.7), d.mul(tt, 1e-3)));
    if (!learnSigma) return eps;
    return d.concat([eps, d.sin(d.mul(x, 0.3))], 1);
  };
}

Deno.test("DDIM with eta = 0 is deterministic: the noise and the key do not matter", async () => {
  const g = D.createDiffusion("ddim10");
  const model = fakeModel();
  const x = d.random.normal(d.randomKey(1), [2, 2, 3, 3]);
  const a = D.ddimSample(g, model, x, [7, 3], { noise: d.random.normal(d.randomKey(2), x.shape) }).sample;
  const b = D.ddimSample(g, model, x, [7, 3], { noise: d.random.normal(d.randomKey(3), x.shape) }).sample;
  assert.deepEqual(vals(a), vals(b));
  const la = await D.ddimSampleLoop(g, model, x.shape, { noise: x, key: d.randomKey(4), clipDenoised: false });
  const lb = await D.ddimSampleLoop(g, model, x.shape, { noise: x, key: d.randomKey(5), clipDenoised: false });
  assert.deepEqual(vals(la), vals(lb));
  // eta = 1 does use the noise.
  const c = D.ddimSample(g, model, x, [7, 3], { eta: 1, noise: d.random.normal(d.randomKey(3), x.shape) }).sample;
  assert.notDeepEqual(vals(a), vals(c));
});

Deno.test("the learned-sigma log variance interpolates between the clipped posterior and log beta", () => {
  const g = D.createDiffusion("50");
  const x = d.random.normal(d.randomKey(0), [3, 2, 2, 2]);
  const t = [0, 10, 49];
  for (const [v, want] of [[-1, g.posteriorLogVarianceClipped], [1, g.logBetas]] as const) {
    const out = d.concat([d.zerosLike(x), d.full(x.shape, v)], 1);
    const lv = vals(D.pMeanVarianceFromOutput(g, out, x, t, { clipDenoised: false }).logVariance);
    const per = lv.length / 3;
    assertClose(lv, lv.map((_, i) => Math.fround(want[t[Math.floor(i / per)]])), 1e-6, 1e-7, `v=${v}`);
  }
});

Deno.test("the hybrid loss: the VLB term reaches only the variance channels, the MSE only the mean", () => {
  const g = D.createDiffusion("");
  const rng = new Rng(3);
  const x0 = d.tensor(rng.values(2 * 2 * 2 * 2, -1, 1), { shape: [2, 2, 2, 2], dtype: "f64" });
  const noise = d.tensor(rng.values(16), { shape: [2, 2, 2, 2], dtype: "f64" });
  const out = d.tensor(rng.values(32, -0.9, 0.9), { shape: [2, 4, 2, 2], dtype: "f64" });
  const part = (name: "mse" | "vb") => (o: Tensor) =>
    d.sum(D.trainingLosses(g, () => o, x0, [0, 500], { noise })[name]!);
  const gv = vals(d.grad(part("vb"))(out) as Tensor);
  const gm = vals(d.grad(part("mse"))(out) as Tensor);
  const isVar = (i: number) => Math.floor(i / 4) % 4 >= 2;
  gv.forEach((v, i) => isVar(i) ? null : assert.equal(v, 0, `vb gradient reached mean element ${i}`));
  gm.forEach((v, i) => isVar(i) ? assert.equal(v, 0, `mse gradient reached variance element ${i}`) : null);
  assert.ok(gv.some((v, i) => isVar(i) && v !== 0) && gm.some((v) => v !== 0));
  // loss = mse + vb, and the t = 0 sample uses the decoder NLL branch (a different value than the KL).
  const terms = D.trainingLosses(g, () => out, x0, [0, 500], { noise });
  assertClose(vals(terms.loss), vals(terms.mse!).map((m, i) => m + vals(terms.vb!)[i]), 1e-12);
});

Deno.test("sampling loops: progress callbacks count down and memory stays flat", async () => {
  const g = D.createDiffusion("8");
  const model = fakeModel();
  const seen: number[] = [];
  const run = () =>
    D.pSampleLoop(g, model, [2, 1, 2, 2], {
      key: d.randomKey(9),
      clipDenoised: false,
      onStep: (s) => {
        seen.push(s.t);
        assert.equal(s.total, 8);
      },
    });
  (await run()).dispose();
  const before = d.liveBuffers();
  const x = await run();
  assert.deepEqual(seen.slice(8), [7, 6, 5, 4, 3, 2, 1, 0]);
  x.dispose();
  assert.equal(d.liveBuffers(), before);
  // Same key, same samples.
  assert.deepEqual(vals(await run()), vals(await run()));
});

Deno.test("reverse-process errors name the op and the problem", () => {
  const g = D.createDiffusion("10");
  const x = d.zeros([2, 3, 2, 2]);
  assert.throws(() => D.pSample(g, fakeModel(), x, [1, 2]), /pSample: pass opts.noise/);
  assert.throws(
    () => D.pSample(g, fakeModel(false), x, [1, 2], { noise: x }),
    /pMeanVariance: .*must have shape \[2,6,2,2\]/,
  );
  assert.throws(() => D.qSample(g, x, [1], x), /1 timesteps for a batch of 2/);
  assert.throws(() => D.ddimSample(g, fakeModel(), x, [1, 1], { eta: 0.5 }), /needs opts.noise/);
  assert.throws(() => D.namedBetaSchedule("quadratic", 10), /unknown beta schedule/);
  assert.throws(() => D.gaussianDiffusion([0.1, 1.5]), /betas\[1\] = 1.5/);
});

Deno.test("loss(): a scalar with gradients for the model's parameters", () => {
  const g = D.createDiffusion("");
  const x0 = d.random.normal(d.randomKey(0), [2, 1, 2, 2]);
  const f = (w: Tensor) => D.loss(g, (x) => d.concat([d.mul(x, w), d.mul(x, 0)], 1), x0, d.randomKey(1));
  const [v, gw] = d.valueAndGrad(f)(d.tensor(0.5)) as [Tensor, Tensor];
  assert.deepEqual(v.shape, []);
  assert.ok(Number.isFinite(vals(v)[0]) && vals(gw)[0] !== 0);
});

// ------------------------------------------------------------------ DiMR and DPM-Solver

Deno.test("DPM-Solver: every method and order maps zero-data noise to x_T * sigma(eps)/sigma(T)", async () => {
  // With data exactly 0 the perfect noise predictor is eps = x / sigma_t; every exponential
  // integrator step is then exact, in noise- and data-prediction mode alike.
  const ns = D.noiseScheduleVP("discrete", { betas: D.stableDiffusionBetas(), dtype: "f64" });
  const xT = d.random.normal(d.randomKey(5), [1, 2, 2, 2], { dtype: "f64" });
  const model = (x: Tensor, t: number) => d.div(x, D.marginalStd(ns, t));
  const ratio = D.marginalStd(ns, 1e-3) / D.marginalStd(ns, 1);
  for (const predictX0 of [false, true]) {
    const solver = D.dpmSolver(model, ns, { predictX0 });
    for (
      const opts of [
        { method: "fast", order: 3, steps: 10 },
        { method: "fast", order: 2, steps: 7 },
        { method: "singlestep", order: 1, steps: 5 },
        { method: "singlestep", order: 2, steps: 6 },
        { method: "multistep", order: 3, steps: 6 },
        { method: "fast", order: 3, steps: 9, skipType: "logSNR" },
      ] as const
    ) {
      const out = await D.dpmSolverSample(solver, xT, { ...opts, eps: 1e-3, T: 1 });
      assertClose(vals(out), vals(xT).map((v) => v * ratio), 1e-9, 1e-12, `${JSON.stringify(opts)} x0=${predictX0}`);
    }
  }
});

Deno.test("DPM-Solver: fast orders sum to the steps; lambda and its inverse agree", () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 300 }), fc.constantFrom(2, 3), (steps, order) => {
      const o = D.fastOrders(steps, order);
      assert.equal(o.reduce((a, b) => a + b, 0), steps);
    }),
  );
  const ns = D.noiseScheduleVP("discrete", { betas: D.stableDiffusionBetas(), dtype: "f64" });
  for (const t of [0.001, 0.0137, 0.25, 0.5004, 0.9, 1]) {
    assertClose([D.inverseLambda(ns, D.marginalLambda(ns, t))], [t], 1e-9);
  }
  for (const kind of ["linear", "cosine"] as const) {
    const s = D.noiseScheduleVP(kind, { dtype: "f64" });
    for (const t of [0.01, 0.3, 0.9]) assertClose([D.inverseLambda(s, D.marginalLambda(s, t))], [t], 1e-7, 0, kind);
  }
  assert.throws(() => D.fastOrders(10, 1), /order must be 2 or 3/);
});

Deno.test("DiMR: multi-scale targets are box sums divided by the side; the loss is the weighted sum", () => {
  const rng = new Rng(11);
  const eps = d.tensor(rng.values(2 * 2 * 4 * 4), { shape: [2, 2, 4, 4], dtype: "f64" });
  const [low, mid, full] = D.multiScaleTargets(eps, 3);
  assert.deepEqual([low.shape, mid.shape, full.shape], [[2, 2, 1, 1], [2, 2, 2, 2], [2, 2, 4, 4]]);
  const e = vals(eps);
  const sumBlock = (b: number, c: number, i0: number, j0: number, r: number) => {
    let s = 0;
    for (let i = 0; i < r; i++) for (let j = 0; j < r; j++) s += e[((b * 2 + c) * 4 + i0 + i) * 4 + j0 + j];
    return s;
  };
  assertClose(vals(low), [0, 1, 2, 3].map((k) => sumBlock(k >> 1, k & 1, 0, 0, 4) / 4), 1e-12);
  assertClose([vals(mid)[3]], [sumBlock(0, 0, 2, 2, 2) / 2], 1e-12);
  const preds = [low, mid, full].map((t) => d.add(t, 0.5));
  const L = D.multiScaleLoss(preds, eps, [0.25, 0.5, 1]);
  assertClose(vals(L.perSample), [1.75 * 0.25, 1.75 * 0.25], 1e-12);
  assert.throws(() => D.multiScaleLoss(preds, eps, [1]), /1 coefficients for 3 predictions/);
});

Deno.test("DiMR: the model function feeds log_snr and guidance follows both official rules", () => {
  const seen: number[] = [];
  const model = (x: Tensor, logSnr: Tensor, y?: Tensor) => {
    seen.push(...vals(logSnr));
    const lab = d.reshape(d.cast(y!, "f32"), [x.shape[0], 1, 1, 1]);
    return [d.zeros([x.shape[0], 1, 1, 1]), d.add(x, lab)];
  };
  const x = d.ones([2, 1, 2, 2]);
  const y = d.tensor([3, 5], { dtype: "i32" });
  const plain = vals(D.dimrModelFn(model, { y })(x, 0.5));
  assert.deepEqual(plain, [4, 4, 4, 4, 6, 6, 6, 6]);
  assert.deepEqual(seen, [0, 0]);
  const guided = vals(D.dimrCfgModelFn(model, { y, nullLabel: 10, scale: 0.4 })(x, 1));
  // cond + 0.4 (cond - uncond): uncond = 1 + 10.
  assertClose(guided.slice(0, 1), [4 + 0.4 * (4 - 11)], 1e-6);
  const s = D.dimrDecayedScale(1.5, 2, 600);
  assertClose([s], [0.5 * (1 - Math.cos(Math.PI * 0.16)) / 2 + 1], 1e-6);
  const decayed = vals(D.dimrCfgModelFn(model, { y, nullLabel: 10, scale: 1.5, scalePow: 2 })(x, 0.6));
  assertClose(decayed.slice(0, 1), [11 + s * (4 - 11)], 1e-5);
});

// ------------------------------------------------------------------ classifier-free guidance

Deno.test("forwardWithCfg guides only the first 3 channels; cfgModel is its first half", () => {
  const rng = new Rng(2);
  const W = d.tensor(rng.values(8), { shape: [1, 8, 1, 1] });
  const model = (x: Tensor, t: Tensor, y?: Tensor) => {
    const yy = d.reshape(d.cast(y!, "f32"), [x.shape[0], 1, 1, 1]);
    const tt = d.reshape(d.cast(t, "f32"), [x.shape[0], 1, 1, 1]);
    return d.add(d.mul(d.concat([x, x], 1), W), d.add(d.mul(yy, 0.1), d.mul(tt, 1e-3)));
  };
  const x = d.tensor(rng.values(2 * 4 * 2 * 2), { shape: [2, 4, 2, 2] });
  const x2 = d.concat([x, d.zerosLike(x)], 0);
  const t2 = d.tensor([5, 9, 5, 9], { dtype: "i32" });
  const y2 = d.tensor([1, 2, 10, 10], { dtype: "i32" });
  const out = D.forwardWithCfg(model, x2, t2, y2, { scale: 4 });
  const raw = model(d.concat([x, x], 0), t2, y2);
  const o = vals(out), r = vals(raw);
  const at = (b: number, c: number, i: number) => (b * 8 + c) * 4 + i;
  for (let b = 0; b < 2; b++) {
    for (let i = 0; i < 4; i++) {
      for (let c = 0; c < 8; c++) {
        const cond = r[at(b, c, i)], unc = r[at(b + 2, c, i)];
        if (c < 3) {
          const g = unc + 4 * (cond - unc);
          assertClose([o[at(b, c, i)], o[at(b + 2, c, i)]], [g, g], 1e-5, 1e-6, `guided c=${c}`);
        } else assert.deepEqual([o[at(b, c, i)], o[at(b + 2, c, i)]], [cond, unc]);
      }
    }
  }
  const half = vals(
    D.cfgModel(model, { scale: 4, nullLabel: 10 })(
      x,
      d.tensor([5, 9], { dtype: "i32" }),
      d.tensor([1, 2], { dtype: "i32" }),
    ),
  );
  assert.deepEqual(half, o.slice(0, half.length));
  // Outside the guidance interval the conditional output passes through unguided.
  const none = vals(D.forwardWithCfg(model, x2, t2, y2, { scale: 4, interval: [100, 200] }));
  assert.deepEqual(none.slice(0, 64), r.slice(0, 64));
  // Guiding all 4 latent channels (the "correct" variant) changes channel 3 too.
  const all = vals(D.forwardWithCfg(model, x2, t2, y2, { scale: 4, channels: 4 }));
  assert.notEqual(all[at(0, 3, 0)], r[at(0, 3, 0)]);
});

// ------------------------------------------------------------------ flow matching

Deno.test("flow matching: exact velocities give zero loss and Euler/Heun follow the straight path", async () => {
  const c = d.tensor([0.5, -1, 2, 0.25], { shape: [1, 1, 2, 2], dtype: "f64" });
  const noise = d.random.normal(d.randomKey(3), [1, 1, 2, 2], { dtype: "f64" });
  // For a point mass at c the ideal velocity is (x_t - c) / t.
  const model = (x: Tensor, t: Tensor) => d.div(d.sub(x, c), d.reshape(t, [1, 1, 1, 1]));
  assertClose(vals(D.flowLosses(model, c, 0.3, noise)), [0], 0, 1e-24);
  const end = 0.02;
  const want = vals(D.flowInterpolate(c, noise, end));
  for (const sampler of [D.flowEulerSample, D.flowHeunSample]) {
    const out = await sampler(model, noise, { steps: 7, tEnd: end });
    assertClose(vals(out), want, 1e-10, 1e-12, sampler.name);
  }
  const key = d.randomKey(0);
  const l = D.flowLoss((x) => d.concat([x, x], 1), d.zeros([2, 1, 2, 2]), key);
  assert.ok(vals(l)[0] > 0);
});

// ------------------------------------------------------------------ sampling loops end to end

Deno.test("sampling loops with the exact denoiser of a one-image-per-class dataset return those images", async () => {
  // For data that is a single image per class, E[x0 | x_t, y] is that image, so the ideal eps is known in
  // closed form; DDPM (respaced) and DDIM must then land on the image, whatever the noise and schedule.
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 0, max: 1e6 }),
      fc.constantFrom("", "25", "ddim10", "ddim25"),
      async (seed, spacing) => {
        const rng = new Rng(seed);
        const K = 3, S = 4, n = 6;
        const images = d.tensor(rng.values(K * S * S, -1, 1), { shape: [K, 1, S, S] });
        const y = d.tensor(Array.from({ length: n }, (_, i) => i % K), { dtype: "i32" });
        const full = D.createDiffusion("");
        const model = (x: Tensor, t: Tensor) => {
          const ts = Array.from(t.dataSync() as Int32Array);
          const a = d.tensor(ts.map((v) => Math.sqrt(full.alphasCumprod[v])), { shape: [n, 1, 1, 1] });
          const s = d.tensor(ts.map((v) => Math.sqrt(1 - full.alphasCumprod[v])), { shape: [n, 1, 1, 1] });
          const eps = d.div(d.sub(x, d.mul(a, d.take(images, y, 0))), s);
          return d.concat([eps, d.zerosLike(eps)], 1); // learned-sigma layout: eps, then variance values
        };
        const diff = D.createDiffusion(spacing);
        const key = d.randomKey(seed);
        const out = spacing.startsWith("ddim")
          ? await D.ddimSampleLoop(diff, model, [n, 1, S, S], { key })
          : await D.pSampleLoop(diff, model, [n, 1, S, S], { key });
        const err = await d.max(d.abs(d.sub(out, d.take(images, y, 0)))).item();
        assert.ok(err < 1e-4, `${spacing || "1000 steps"}: max error ${err}`);
      },
    ),
    { numRuns: 6 },
  );
});
