/**
 * Evaluation: the symmetric eigen-solver and Fréchet distance against closed forms,
 * the classifier (learns MNIST, save/load, per-dataset cache), conditional accuracy
 * and the sample Fréchet distance.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { classCounts, type Dataset, loadDataset, splitDataset, subset } from "../data/mod.ts";
import {
  classify,
  conditionalAccuracy,
  convS2,
  datasetStats,
  extractFeatures,
  frechetDistance,
  frechetDistanceStats,
  type GaussianStats,
  gaussianStats,
  getClassifier,
  initClassifier,
  loadClassifier,
  predict,
  sampleFrechet,
  saveClassifier,
  sqrtPsd,
  symmetricEigen,
  trainClassifier,
} from "../eval/mod.ts";
import { conv2d, DifflabError, dispose, randomKey, tensor } from "../mod.ts";
import * as random from "../tensor/random.ts";

/** A small deterministic PRNG for host-side test data (mulberry32). */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Standard normal draws via Box-Muller. */
function gauss(r: () => number): () => number {
  return () => Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
}

/** n samples of N(mu, L Lᵀ) as rows. */
function sampleGaussian(n: number, mu: number[], L: number[][], seed: number): Float64Array[] {
  const g = gauss(rng(seed));
  const d = mu.length;
  return Array.from({ length: n }, () => {
    const z = Array.from({ length: d }, g);
    return Float64Array.from(mu, (m, i) => m + L[i].reduce((s, l, j) => s + l * z[j], 0));
  });
}

function stats(mu: number[], sigma: number[][]): GaussianStats {
  return { d: mu.length, n: 0, mu: Float64Array.from(mu), sigma: Float64Array.from(sigma.flat()) };
}

const relClose = (a: number, b: number, tol: number) => Math.abs(a - b) <= tol * Math.max(1, Math.abs(b));

Deno.test("symmetricEigen: A·V = V·Λ, V orthonormal, ascending eigenvalues (property)", () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 12 }), fc.integer(), (n, seed) => {
      const r = rng(seed);
      const a = new Float64Array(n * n);
      for (let i = 0; i < n; i++) for (let j = i; j < n; j++) a[i * n + j] = a[j * n + i] = r() * 4 - 2;
      // Repeated eigenvalues are the hard case for QL: make some with a rank-deficient block.
      if (n > 3 && seed % 3 === 0) { for (let j = 0; j < n; j++) a[j] = a[j * n] = 0; }
      const { values, vectors: v } = symmetricEigen(a, n);
      for (let k = 1; k < n; k++) assert.ok(values[k] >= values[k - 1]);
      for (let i = 0; i < n; i++) {
        for (let k = 0; k < n; k++) {
          let av = 0, vv = 0;
          for (let j = 0; j < n; j++) {
            av += a[i * n + j] * v[j * n + k];
            vv += v[j * n + i] * v[j * n + k];
          }
          assert.ok(Math.abs(av - values[k] * v[i * n + k]) < 1e-10, `A v = λ v at ${i},${k}`);
          assert.ok(Math.abs(vv - (i === k ? 1 : 0)) < 1e-10, `orthonormal at ${i},${k}`);
        }
      }
    }),
    { numRuns: 60 },
  );
  assert.throws(() => symmetricEigen([1, NaN, NaN, 1], 2), DifflabError);
  assert.throws(() => symmetricEigen([1, 2, 3], 2), /n×n/);
});

Deno.test("sqrtPsd squares back to the matrix", () => {
  const r = rng(3);
  const n = 6;
  const b = Array.from({ length: n * n }, () => r() - 0.5);
  const a = new Float64Array(n * n); // BᵀB is PSD
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) for (let k = 0; k < n; k++) a[i * n + j] += b[k * n + i] * b[k * n + j];
  }
  const s = sqrtPsd(a, n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      let ss = 0;
      for (let k = 0; k < n; k++) ss += s[i * n + k] * s[k * n + j];
      assert.ok(Math.abs(ss - a[i * n + j]) < 1e-10);
    }
  }
});

Deno.test("Fréchet distance: closed forms for diagonal and general 2×2 covariances", () => {
  // Diagonal (commuting) covariances: FD = |Δμ|² + Σ (√a_i - √b_i)².
  const a = [1, 4, 9, 0.25], b = [4, 1, 9, 1];
  const want = 3 ** 2 + 1 + a.reduce((s, ai, i) => s + (Math.sqrt(ai) - Math.sqrt(b[i])) ** 2, 0);
  const diag = (v: number[]) => v.map((x, i) => v.map((_, j) => (i === j ? x : 0)));
  const got = frechetDistanceStats(stats([0, 3, 0, 1], diag(a)), stats([0, 0, 0, 0], diag(b)));
  assert.ok(relClose(got, want, 1e-12), `${got} vs ${want}`);
  // General 2×2: tr √M = √(tr M + 2√det M) with M = S1^½ S2 S1^½, tr M = tr(S1 S2), det M = det S1 · det S2.
  fc.assert(
    fc.property(
      fc.tuple(fc.double({ min: -2, max: 2, noNaN: true }), fc.double({ min: -2, max: 2, noNaN: true })),
      fc.array(fc.double({ min: -2, max: 2, noNaN: true }), { minLength: 6, maxLength: 6 }),
      ([m1, m2], [a1, a2, a3, b1, b2, b3]) => {
        const s1 = [[a1 * a1 + 0.1, a1 * a2], [a1 * a2, a2 * a2 + a3 * a3 + 0.1]];
        const s2 = [[b1 * b1 + 0.1, b1 * b2], [b1 * b2, b2 * b2 + b3 * b3 + 0.1]];
        const trS1S2 = s1[0][0] * s2[0][0] + 2 * s1[0][1] * s2[0][1] + s1[1][1] * s2[1][1];
        const det = (s: number[][]) => s[0][0] * s[1][1] - s[0][1] * s[1][0];
        const tr = (s: number[][]) => s[0][0] + s[1][1];
        const closed = m1 * m1 + m2 * m2 + tr(s1) + tr(s2) - 2 * Math.sqrt(trS1S2 + 2 * Math.sqrt(det(s1) * det(s2)));
        const got = frechetDistanceStats(stats([m1, m2], s1), stats([0, 0], s2));
        assert.ok(Math.abs(got - Math.max(closed, 0)) < 1e-9 * Math.max(1, closed), `${got} vs ${closed}`);
      },
    ),
    { numRuns: 200 },
  );
});

Deno.test("Fréchet distance from samples of known Gaussians approaches the closed form", () => {
  const L1 = [[1, 0, 0], [0.5, 1, 0], [0, -0.3, 0.5]];
  const L2 = [[0.7, 0, 0], [0, 1.2, 0], [0.4, 0, 1]];
  const mu1 = [0, 0, 0], mu2 = [1, -0.5, 0.25];
  const cov = (L: number[][]) => L.map((r) => L.map((_, j) => r.reduce((s, l, k) => s + l * L[j][k], 0)));
  const closed = frechetDistanceStats(stats(mu1, cov(L1)), stats(mu2, cov(L2)));
  const A = sampleGaussian(20_000, mu1, L1, 1), B = sampleGaussian(20_000, mu2, L2, 2);
  const fd = frechetDistance(A, B);
  assert.ok(Math.abs(fd - closed) < 0.05 * closed, `sampled ${fd} vs closed form ${closed}`);
  // The estimated statistics are the sample mean and the unbiased covariance.
  const s = gaussianStats(A);
  assert.ok(s.mu.every((m) => Math.abs(m) < 0.03));
  assert.ok(cov(L1).flat().every((c, i) => Math.abs(s.sigma[i] - c) < 0.05));
});

Deno.test("Fréchet distance: ≈0 for a set with itself, symmetric, invariant to shared shifts and rotations", () => {
  const r = rng(11);
  const d = 8;
  const A = Array.from({ length: 300 }, () => Float64Array.from({ length: d }, () => r() * 2 + (r() > 0.5 ? 1 : 0)));
  const B = Array.from({ length: 200 }, () => Float64Array.from({ length: d }, () => r() * 3 - 0.5));
  assert.ok(frechetDistance(A, A) < 1e-9, `self distance ${frechetDistance(A, A)}`);
  const ab = frechetDistance(A, B), ba = frechetDistance(B, A);
  assert.ok(ab > 0.5, `distinct sets should be far apart: ${ab}`);
  assert.ok(relClose(ab, ba, 1e-9), `${ab} vs ${ba}`);
  // Matrix input equals row input.
  const flat = { data: Float64Array.from(A.flatMap((x) => [...x])), n: A.length, d };
  assert.ok(relClose(frechetDistance(flat, B), ab, 1e-12));
  // Shift both sets by the same vector, and rotate both by the same orthogonal matrix (a Givens rotation).
  const shift = (X: Float64Array[]) => X.map((x) => x.map((v, i) => v + i - 3));
  assert.ok(relClose(frechetDistance(shift(A), shift(B)), ab, 1e-9));
  const [c, s] = [Math.cos(0.7), Math.sin(0.7)];
  const rot = (X: Float64Array[]) =>
    X.map((x) => {
      const y = x.slice();
      [y[1], y[4]] = [c * x[1] - s * x[4], s * x[1] + c * x[4]];
      return y;
    });
  assert.ok(relClose(frechetDistance(rot(A), rot(B)), ab, 1e-9));
  assert.throws(() => frechetDistance(A, [new Float64Array(3), new Float64Array(3)]), /dimensions differ/);
  assert.throws(() => frechetDistance([A[0]], B), /at least 2/);
  assert.throws(() => frechetDistance([A[0], A[1].map(() => NaN)], B), DifflabError);
});

Deno.test("convS2 (im2col) equals conv2d with stride 2, padding 1, including odd sizes", async () => {
  const k = random.split(randomKey(5), 3);
  for (const [C, O, H] of [[1, 4, 8], [3, 5, 7]]) {
    const x = random.normal(k[0], [2, C, H, H]);
    const p = { weight: random.normal(k[1], [O, C, 3, 3]), bias: random.normal(k[2], [O]) };
    const a = await convS2(p, x).data();
    const b = await conv2d(x, p.weight, { stride: 2, padding: 1 }).data();
    const bias = await p.bias.data();
    const per = Math.ceil(H / 2) ** 2;
    for (let i = 0; i < a.length; i++) {
      assert.ok(Math.abs(a[i] - (b[i] + bias[Math.floor(i / per) % O])) < 1e-5, `element ${i}`);
    }
  }
});

let mnist: Dataset | undefined;
async function getMnist(): Promise<Dataset> {
  return mnist ??= await loadDataset("mnist");
}

Deno.test("classifier learns MNIST from 2000 images (≥ 90% held-out) and scores samples", async () => {
  const ds = await getMnist();
  const { train: rest, test } = splitDataset(ds, randomKey(1), { testSize: 500 });
  const small = subset(rest, [...Array(2000).keys()]);
  assert.ok(classCounts(small).every((c) => c > 150), "a balanced subset");
  const t0 = performance.now();
  // Narrower than the default ([8, 24, 48]) to keep this test fast on the cpu backend.
  const r = await trainClassifier(small, { steps: 150, batch: 32, key: randomKey(2), test, widths: [8, 16, 32] });
  const secs = (performance.now() - t0) / 1000;
  console.log(`classifier: ${(r.accuracy * 100).toFixed(1)}% on ${r.testSize} held-out after ${secs.toFixed(1)} s`);
  assert.equal(r.testSize, 500);
  assert.ok(r.accuracy >= 0.9, `held-out accuracy ${r.accuracy}`);

  // Conditional accuracy of "samples" = real held-out images: with their true labels it equals the
  // classifier's accuracy; with every label shifted by one it is near zero.
  const x = tensor(test.images, { shape: [test.n, 1, 32, 32] });
  const right = await conditionalAccuracy(r.params, x, test.labels);
  assert.ok(Math.abs(right.accuracy - r.accuracy) < 1e-12);
  assert.equal(right.perClass.length, 10);
  const wrong = await conditionalAccuracy(r.params, test.images, test.labels.map((y) => (y + 1) % 10));
  assert.ok(wrong.accuracy < 0.1, `shifted labels: ${wrong.accuracy}`);
  // Out-of-range values and NaN are clipped exactly as the PNG grids show them.
  const loud = test.images.map((v, i) => (i % 1024 === 0 ? NaN : 3 * v));
  const shown = loud.map((v) => (Number.isNaN(v) ? -1 : Math.min(1, Math.max(-1, v))));
  const a = await conditionalAccuracy(r.params, loud, test.labels),
    b = await conditionalAccuracy(r.params, shown, test.labels);
  assert.deepEqual(a.predictions, b.predictions);
  await assert.rejects(() => conditionalAccuracy(r.params, x, [1, 2]), /500 samples but 2 intended labels/);
  await assert.rejects(() => conditionalAccuracy(r.params, x, test.labels.map(() => 10)), /outside \[0, 10\)/);

  // Fréchet distance on classifier features: held-out real digits are close to the training
  // digits; noise and a single class are far.
  const ref = await datasetStats(r.params, small);
  const fdReal = await sampleFrechet(r.params, test.images, ref);
  const noise = random.uniform(randomKey(3), [200, 1, 32, 32], { min: -1, max: 1 });
  const fdNoise = await sampleFrechet(r.params, noise, ref);
  const ones = subset(test, [...test.labels.keys()].filter((i) => test.labels[i] === 1));
  const fdOnes = await sampleFrechet(r.params, ones.images, ref);
  console.log(`FD real ${fdReal.toFixed(3)}, one class ${fdOnes.toFixed(3)}, noise ${fdNoise.toFixed(3)}`);
  assert.ok(fdReal * 5 < fdOnes && fdReal * 5 < fdNoise, `${fdReal} vs ${fdOnes} / ${fdNoise}`);
  dispose([r.params, x, noise]);
});

Deno.test("classifier: features/logits shapes, save/load round trip, per-dataset cache", async () => {
  const ds = await getMnist();
  const tiny = subset(ds, Array.from({ length: 300 }, (_, i) => i * 33));
  const dir = await Deno.makeTempDir({ prefix: "difflab_eval_test_" });
  try {
    const params = initClassifier(randomKey(4), { channels: 1, size: 32, numClasses: 10 });
    const x = tensor(tiny.images.slice(0, 4 * 1024), { shape: [4, 1, 32, 32] });
    const { logits, features } = classify(params, x);
    assert.deepEqual(logits.shape, [4, 10]);
    assert.deepEqual(features.shape, [4, 64]);
    assert.ok((await features.data()).every((v) => v >= 0), "features are post-ReLU");
    assert.throws(
      () => classify(params, tensor(new Float32Array(2 * 3 * 32 * 32), { shape: [2, 3, 32, 32] })),
      /x must be \[B, 1, S, S\]/,
    );
    assert.throws(
      () => classify(params, tensor(new Float32Array(16 * 16), { shape: [1, 1, 16, 16] })),
      /another image size/,
    );

    const file = `${dir}/c.safetensors`;
    const meta = { dataset: "mnist", channels: 1, size: 32, numClasses: 10, accuracy: 0.5, testSize: 1 };
    await saveClassifier(file, params, meta);
    const back = await loadClassifier(file);
    assert.deepEqual(back.meta, meta);
    assert.deepEqual(await classify(back.params, x).logits.data(), await logits.data());
    const feats = await extractFeatures(params, tiny.images.subarray(0, 4 * 1024), tiny);
    assert.deepEqual([feats.n, feats.d], [4, 64]);
    assert.deepEqual([...feats.data].map(Math.fround), [...await features.data()]);
    assert.deepEqual(
      await predict(params, tiny.images.subarray(0, 4 * 1024), tiny),
      Int32Array.from(await logits.array() as number[][], (row) => row.indexOf(Math.max(...row))),
    );

    // getClassifier trains once, then loads; a different image format or a corrupt file retrains.
    let trained = 0;
    const opts = { steps: 3, batch: 8, testSize: 30, onTrainStart: () => trained++ };
    const a = await getClassifier(tiny, dir, opts);
    assert.equal(a.cached, false);
    assert.ok(Deno.statSync(`${dir}/classifier-mnist.safetensors`).isFile);
    const b = await getClassifier(tiny, dir, opts);
    assert.equal(b.cached, true);
    assert.equal(trained, 1);
    assert.deepEqual(await b.params.fc2.weight.data(), await a.params.fc2.weight.data());
    const t16 = { ...tiny, size: 16, images: new Float32Array(tiny.n * 256) };
    const c = await getClassifier(t16, dir, opts);
    assert.equal(c.cached, false, "another image size must not reuse the cached classifier");
    await Deno.writeFile(`${dir}/classifier-mnist.safetensors`, new Uint8Array([1, 2, 3]));
    const d = await getClassifier(tiny, dir, opts);
    assert.equal(d.cached, false, "a corrupt cache file is retrained over");
    assert.equal(trained, 3);
    await Deno.writeFile(`${dir}/other.safetensors`, new Uint8Array(0));
    await assert.rejects(() => loadClassifier(`${dir}/other.safetensors`), DifflabError);
    dispose([params, back.params, a.params, b.params, c.params, d.params, x]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
