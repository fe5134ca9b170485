/**
 * @file The functional PRNG: Threefry-2x32 known-answer vectors from
 * Random123, JAX-compatible keys and splits, determinism, independence and
 * statistical sanity of every distribution (bounds are >= 5 standard errors,
 * so a correct generator essentially never fails and a biased one does).
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import * as d from "../mod.ts";
import { random, randomKey } from "../mod.ts";
import type { Tensor } from "../mod.ts";
import { threefry2x32 } from "../tensor/threefry.ts";

// These are oracle tests in f64: pin the reference backend whatever the default becomes.
await d.setBackend("cpu");

const vals = (t: Tensor) => Array.from(t.dataSync());

function moments(xs: ArrayLike<number>) {
  const n = xs.length;
  let m = 0;
  for (let i = 0; i < n; i++) m += xs[i];
  m /= n;
  let m2 = 0, m4 = 0;
  for (let i = 0; i < n; i++) {
    const c = xs[i] - m;
    m2 += c * c;
    m4 += c * c * c * c;
  }
  m2 /= n;
  m4 /= n;
  return { mean: m, variance: m2, kurtosis: m4 / (m2 * m2) };
}

// ---------------------------------------------------------------- known answers

Deno.test("threefry2x32 matches the Random123 known-answer vectors (20 rounds)", () => {
  const hex = (p: [number, number]) => p.map((v) => v.toString(16).padStart(8, "0"));
  assert.deepEqual(hex(threefry2x32(0, 0, 0, 0)), ["6b200159", "99ba4efe"]);
  assert.deepEqual(hex(threefry2x32(0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff)), ["1cb996fc", "bb002be7"]);
  assert.deepEqual(hex(threefry2x32(0x13198a2e, 0x03707344, 0x243f6a88, 0x85a308d3)), ["c4923a9c", "483df7a0"]);
});

Deno.test("randomKey and split are JAX-compatible", () => {
  assert.deepEqual(randomKey(0).data, [0, 0]);
  assert.deepEqual(randomKey(42).data, [0, 42]);
  assert.deepEqual(randomKey(2 ** 32 + 5).data, [1, 5]);
  assert.deepEqual(randomKey(-1).data, [0xffffffff, 0xffffffff]);
  assert.deepEqual(random.split(randomKey(0)).map((k) => k.data), [[4146024105, 967050713], [2718843009, 1272950319]]);
});

Deno.test("random.bits follows JAX's threefry_2x32(key, iota(n)) layout, consistent with split", () => {
  const key = randomKey(7);
  const [k0, k1] = key.data;
  // n = 5: counters pair (i, i + 3), the second half of the last pair is padding.
  const b = vals(random.bits(key, [5]));
  const pairs = [0, 1, 2].map((i) => threefry2x32(k0, k1, i, i + 3 < 5 ? i + 3 : 0));
  assert.deepEqual(b, [pairs[0][0], pairs[1][0], pairs[2][0], pairs[0][1], pairs[1][1]]);
  // split(key, n) is bits(key, [2n]) viewed as n pairs.
  for (const n of [1, 2, 3, 5]) {
    const flat = vals(random.bits(key, [2 * n]));
    assert.deepEqual(random.split(key, n).flatMap((k) => [...k.data]), flat, `n = ${n}`);
  }
  const t = random.bits(key, [2, 3]);
  assert.equal(t.dtype, "u32");
  assert.deepEqual(t.shape, [2, 3]);
});

// ---------------------------------------------------------------- determinism and independence

Deno.test("same key gives the same draws; the key value alone matters", () => {
  fc.assert(
    fc.property(fc.integer({ min: -(2 ** 40), max: 2 ** 40 }), (seed) => {
      const a = randomKey(seed), b = randomKey(seed);
      assert.deepEqual(vals(random.bits(a, [17])), vals(random.bits(b, [17])));
      assert.deepEqual(vals(random.normal(a, [3, 4])), vals(random.normal(b, [3, 4])));
      assert.deepEqual(vals(random.uniform(a, [9], { dtype: "f64" })), vals(random.uniform(b, [9], { dtype: "f64" })));
      assert.deepEqual(random.split(a, 3).map((k) => k.data), random.split(b, 3).map((k) => k.data));
      assert.deepEqual(vals(random.bits(new d.Key(...a.data), [5])), vals(random.bits(a, [5])));
    }),
    { numRuns: 30 },
  );
});

Deno.test("split keys give different, uncorrelated streams", () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 2 ** 31 - 1 }), (seed) => {
      const key = randomKey(seed);
      const keys = random.split(key, 4);
      const all = [key, ...keys].map((k) => k.data.join(","));
      assert.equal(new Set(all).size, 5, "split keys are distinct from each other and the parent");
      const streams = keys.map((k) => vals(random.bits(k, [64])));
      for (let i = 0; i < streams.length; i++) {
        for (let j = i + 1; j < streams.length; j++) {
          const same = streams[i].filter((v, t) => v === streams[j][t]).length;
          assert.ok(same <= 1, `streams ${i} and ${j} share ${same} of 64 words`);
        }
      }
    }),
    { numRuns: 30 },
  );
  // Correlation of two large split streams is near 0 (std error 1/sqrt(n) = 0.0032).
  const [a, b] = random.split(randomKey(123));
  const ua = random.uniform(a, [100000], { dtype: "f64" }).dataSync();
  const ub = random.uniform(b, [100000], { dtype: "f64" }).dataSync();
  let s = 0;
  for (let i = 0; i < ua.length; i++) s += (ua[i] - 0.5) * (ub[i] - 0.5);
  const r = s / ua.length / (1 / 12);
  assert.ok(Math.abs(r) < 0.02, `correlation ${r}`);
  // foldIn derives distinct keys too.
  const f = [0, 1, 2].map((i) => random.foldIn(a, i).data.join(","));
  assert.equal(new Set([...f, a.data.join(",")]).size, 4);
});

// ---------------------------------------------------------------- distributions

for (const dtype of ["f32", "f64"] as const) {
  Deno.test(`uniform ${dtype}: in [0, 1), never 1, mean 1/2, variance 1/12 on 100k draws`, () => {
    const u = random.uniform(randomKey(1), [100000], { dtype });
    assert.equal(u.dtype, dtype);
    const x = u.dataSync();
    assert.ok(x instanceof (dtype === "f32" ? Float32Array : Float64Array));
    let lo = Infinity, hi = -Infinity;
    for (const v of x) (lo = Math.min(lo, v)), (hi = Math.max(hi, v));
    assert.ok(lo >= 0 && hi < 1, `range [${lo}, ${hi}]`);
    assert.ok(lo < 1e-3 && hi > 1 - 1e-3, "covers the interval");
    const m = moments(x);
    // Standard errors: mean 0.0009, variance 0.0003.
    assert.ok(Math.abs(m.mean - 0.5) < 0.005, `mean ${m.mean}`);
    assert.ok(Math.abs(m.variance - 1 / 12) < 0.002, `variance ${m.variance}`);
    // Flat histogram over 20 bins (expected 5000 each, std 69).
    const bins = new Array(20).fill(0);
    for (const v of x) bins[Math.floor(v * 20)]++;
    assert.ok(bins.every((c) => Math.abs(c - 5000) < 400), `bins ${bins}`);
  });
}

Deno.test("uniform f64 uses more than 32 bits of mantissa; f32 has 23-bit resolution", () => {
  const x64 = vals(random.uniform(randomKey(2), [1000], { dtype: "f64" }));
  const fine = x64.filter((v) => !Number.isInteger(v * 2 ** 32)).length;
  assert.ok(fine > 900, `${fine} of 1000 f64 draws have sub-2^-32 bits`);
  const x32 = vals(random.uniform(randomKey(2), [1000]));
  assert.ok(x32.every((v) => Number.isInteger(v * 2 ** 23)));
});

Deno.test("uniform with min/max stays in range and has the right mean", () => {
  const x = random.uniform(randomKey(3), [50000], { min: -3, max: 5 }).dataSync();
  let lo = Infinity, hi = -Infinity;
  for (const v of x) (lo = Math.min(lo, v)), (hi = Math.max(hi, v));
  assert.ok(lo >= -3 && hi <= 5 && lo < -2.9 && hi > 4.9, `range [${lo}, ${hi}]`);
  const m = moments(x);
  assert.ok(Math.abs(m.mean - 1) < 0.06, `mean ${m.mean}`); // std error 0.01
  assert.ok(Math.abs(m.variance - 64 / 12) < 0.15, `variance ${m.variance}`);
});

for (const dtype of ["f32", "f64"] as const) {
  Deno.test(`normal ${dtype}: finite, mean 0, std 1, kurtosis 3 on 100k draws`, () => {
    const t = random.normal(randomKey(4), [100, 1000], { dtype });
    assert.equal(t.dtype, dtype);
    assert.deepEqual(t.shape, [100, 1000]);
    const x = t.dataSync();
    assert.ok(x.every(Number.isFinite));
    const m = moments(x);
    // Standard errors: mean 0.0032, std 0.0022, kurtosis 0.015.
    assert.ok(Math.abs(m.mean) < 0.02, `mean ${m.mean}`);
    assert.ok(Math.abs(Math.sqrt(m.variance) - 1) < 0.015, `std ${Math.sqrt(m.variance)}`);
    assert.ok(Math.abs(m.kurtosis - 3) < 0.1, `kurtosis ${m.kurtosis}`);
    // Tail mass beyond 2 sigma is 4.55%.
    let tail = 0;
    for (const v of x) if (Math.abs(v) > 2) tail++;
    assert.ok(Math.abs(tail / x.length - 0.0455) < 0.004, `tail ${tail / x.length}`);
    // Symmetry.
    let pos = 0;
    for (const v of x) if (v > 0) pos++;
    assert.ok(Math.abs(pos / x.length - 0.5) < 0.01, `positive fraction ${pos / x.length}`);
  });
}

Deno.test("normal's inverse-CDF stays finite at the extremes of the uniform grid", () => {
  // The smallest uniform each dtype can feed into erfinv, and the largest below 1.
  const cases = [
    { dtype: "f32" as const, lo: -0.99999994, hi: 1 - 2 ** -23 },
    { dtype: "f64" as const, lo: -1 + Number.EPSILON / 2, hi: 1 - Number.EPSILON },
  ];
  for (const { dtype, lo, hi } of cases) {
    const z = vals(d.mul(d.erfinv(d.tensor([lo, -0.5, 0, 0.5, hi], { dtype })), Math.SQRT2));
    assert.ok(z.every(Number.isFinite), `${dtype}: ${z}`);
    assert.ok(z[0] < -5 && z[0] > -9 && z[4] > 5 && z[4] < 9, `${dtype} extremes ${z}`);
    // Phi^-1(0.75) = 0.6745: erfinv is accurate in the body, and odd.
    assert.ok(Math.abs(z[3] - 0.6744897501960817) < 1e-5 && Math.abs(z[1] + z[3]) < 1e-6 && z[2] === 0, `${z}`);
  }
});

Deno.test("randint: in range, i32, roughly uniform across bins", () => {
  const t = random.randint(randomKey(5), [100000], 0, 10);
  assert.equal(t.dtype, "i32");
  const x = t.dataSync();
  const bins = new Array(10).fill(0);
  for (const v of x) {
    assert.ok(Number.isInteger(v) && v >= 0 && v < 10, `out of range ${v}`);
    bins[v]++;
  }
  // Expected 10000 per bin, std 95.
  assert.ok(bins.every((c) => Math.abs(c - 10000) < 500), `bins ${bins}`);
  fc.assert(
    fc.property(fc.integer({ min: -1000, max: 1000 }), fc.integer({ min: 1, max: 50 }), fc.nat(), (min, span, seed) => {
      const y = random.randint(randomKey(seed), [200], min, min + span).dataSync();
      assert.ok(y.every((v) => v >= min && v < min + span));
      if (span <= 5) assert.equal(new Set(y).size, span, "every value of a small range appears in 200 draws");
    }),
    { numRuns: 40 },
  );
  // Negative ranges and a wide range.
  const wide = random.randint(randomKey(6), [20000], -(2 ** 30), 2 ** 30).dataSync();
  const m = moments(wide);
  assert.ok(Math.abs(m.mean) < 0.03 * 2 ** 30, `mean ${m.mean}`);
});

Deno.test("bernoulli: bool draws with the requested rate, scalar or per-element p", () => {
  const t = random.bernoulli(randomKey(8), 0.3, [100000]);
  assert.equal(t.dtype, "bool");
  const x = t.dataSync();
  let ones = 0;
  for (const v of x) {
    assert.ok(v === 0 || v === 1);
    ones += v;
  }
  assert.ok(Math.abs(ones / x.length - 0.3) < 0.007, `rate ${ones / x.length}`); // std error 0.0014
  assert.ok(vals(random.bernoulli(randomKey(9), 0, [1000])).every((v) => v === 0));
  assert.ok(vals(random.bernoulli(randomKey(9), 1, [1000])).every((v) => v === 1));
  // Per-column probabilities broadcast against the shape.
  const p = d.tensor([0.1, 0.9]);
  const y = random.bernoulli(randomKey(10), p, [20000, 2]).dataSync();
  const cols = [0, 0];
  for (let i = 0; i < y.length; i++) cols[i % 2] += y[i];
  assert.ok(Math.abs(cols[0] / 20000 - 0.1) < 0.012 && Math.abs(cols[1] / 20000 - 0.9) < 0.012, `rates ${cols}`);
});

// ---------------------------------------------------------------- errors

Deno.test("bad keys, seeds, dtypes and ranges throw DifflabError", () => {
  const key = randomKey(0);
  const bad = ["abc", null, undefined, [0, 0], { data: [0, 0] }, 3] as unknown as d.Key[];
  for (const k of bad) {
    assert.throws(() => random.normal(k, [2]), d.DifflabError, `normal with key ${JSON.stringify(k)}`);
    assert.throws(() => random.uniform(k, [2]), d.DifflabError);
    assert.throws(() => random.bits(k, [2]), d.DifflabError);
    assert.throws(() => random.split(k), d.DifflabError);
  }
  for (const s of [1.5, NaN, Infinity, 2 ** 60, "7" as unknown as number]) {
    assert.throws(() => randomKey(s), d.DifflabError, `seed ${s}`);
  }
  for (const n of [0, -1, 1.5]) assert.throws(() => random.split(key, n), d.DifflabError);
  assert.throws(() => random.uniform(key, [2], { dtype: "i32" }), d.DTypeError);
  assert.throws(() => random.normal(key, [2], { dtype: "bool" }), d.DTypeError);
  assert.throws(() => random.uniform(key, [2, -1]), d.ShapeError);
  assert.throws(() => random.normal(key, [1.5]), d.ShapeError);
  assert.throws(() => random.randint(key, [2], 5, 5), d.DifflabError);
  assert.throws(() => random.randint(key, [2], 0, 2.5), d.DifflabError);
});
