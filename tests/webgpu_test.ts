/**
 * @file The webgpu backend against the cpu oracle: one fast-check property
 * per primitive on random shapes (sizes 1 and sizes that are not multiples of
 * the kernels' tiles) and random values (NaN, ±Inf and integer extremes
 * included where the primitive defines them), with inputs that are views
 * (transposed, sliced with steps, broadcast, flipped). Plus: the registry is
 * covered, a 200-step training loop keeps the live-buffer count flat, work
 * larger than the storage-binding limit is split and still correct, and a
 * lost device gives a clear error.
 *
 * Run with DENO_WEBGPU_BACKEND=gl. The tests skip (and say why) only when
 * there is no WebGPU adapter at all.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import * as d from "../tensor/mod.ts";
import type { DType, Tensor } from "../tensor/mod.ts";
import { grad } from "../autograd/mod.ts";
import { backendByName, bind } from "../tensor/tensor.ts";
import { convOutSize, type ConvParams, type Prim, PRIMS } from "../tensor/prims.ts";
import type { WebGPUBackend } from "../tensor/webgpu/backend.ts";
import { createWebGPUBackend } from "../tensor/webgpu/backend.ts";
import { Rng } from "./util.ts";

const adapter = await navigator.gpu?.requestAdapter().catch(() => null);
const skip = !adapter;
if (skip) {
  console.warn(
    `webgpu_test: skipped, no WebGPU adapter (navigator.gpu ${
      navigator.gpu ? "present" : "missing"
    }, DENO_WEBGPU_BACKEND=${JSON.stringify(Deno.env.get("DENO_WEBGPU_BACKEND"))})`,
  );
} else await d.setBackend("webgpu");
const gpu = () => backendByName("webgpu") as WebGPUBackend;

const RUNS = Number(Deno.env.get("WEBGPU_TEST_RUNS") ?? 18);

// ---------------------------------------------------------------- inputs

/** Builds a tensor on the current backend; called once per backend with identical results. */
type Recipe = () => Tensor;

type Gen = (rng: Rng) => number;
const f32 = (v: number) => Math.fround(v);
const genReal = (lo: number, hi: number, special = 0.08): Gen => (rng) => {
  if (rng.bool(special)) return [NaN, Infinity, -Infinity, 0, -0][rng.int(0, 4)];
  return f32(rng.real(lo, hi));
};
const genInt: Gen = (rng) => (rng.bool(0.1) ? [2147483647, -2147483648, -1, 0][rng.int(0, 3)] : rng.int(-50, 50));
const genU32: Gen = (rng) => (rng.bool(0.1) ? [4294967295, 2147483648, 0][rng.int(0, 2)] : rng.int(0, 100));
const genBool: Gen = (rng) => (rng.bool() ? 1 : 0);
const genFor = (dt: DType): Gen =>
  dt === "i32" ? genInt : dt === "u32" ? genU32 : dt === "bool" ? genBool : genReal(-3, 3);

const prod = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);

/** A random shape; dims favour 1 and sizes around the kernels' tile edges. */
function shapeOf(rng: Rng, minRank = 0, maxRank = 4, maxDim = 9): number[] {
  return Array.from({ length: rng.int(minRank, maxRank) }, () => (rng.bool(0.25) ? 1 : rng.int(1, maxDim)));
}

/** A tensor of `shape` reached through a random view of a random base tensor. */
function input(rng: Rng, shape: readonly number[], dtype: DType, gen: Gen = genFor(dtype), kinds = 5): Recipe {
  const r = shape.length;
  const kind = r === 0 ? 0 : shape.includes(0) ? rng.int(0, 1) : rng.int(0, kinds - 1);
  const host = (n: number) => Array.from({ length: n }, () => gen(rng));
  const make = (vals: number[], s: readonly number[]) => d.tensor(vals, { shape: s, dtype });
  if (kind === 1) {
    const perm = rng.perm(r);
    const base = new Array<number>(r);
    perm.forEach((p, i) => (base[p] = shape[i]));
    const v = host(prod(base));
    return () => d.transpose(make(v, base), perm);
  }
  if (kind === 2) {
    const steps = shape.map(() => rng.int(1, 3));
    const starts = shape.map(() => rng.int(0, 2));
    const base = shape.map((n, i) => starts[i] + (n - 1) * steps[i] + 1 + rng.int(0, 2));
    const v = host(prod(base));
    return () => d.slice(make(v, base), starts, shape.map((n, i) => starts[i] + (n - 1) * steps[i] + 1), steps);
  }
  if (kind === 3) {
    const drop = rng.int(0, r);
    const base = shape.slice(drop).map((n) => (rng.bool(0.5) ? 1 : n));
    const v = host(prod(base));
    return () => d.broadcastTo(make(v, base), shape);
  }
  if (kind === 4) {
    const axes = [...Array(r).keys()].filter(() => rng.bool());
    const v = host(prod(shape));
    return () => d.flip(make(v, shape), axes);
  }
  const v = host(prod(shape));
  return () => make(v, shape);
}

// ---------------------------------------------------------------- comparison

interface Tol {
  rtol?: number;
  atol?: number;
}

async function onBoth(f: (...xs: Tensor[]) => Tensor, recipes: Recipe[]): Promise<[Tensor, Tensor]> {
  await d.setBackend("cpu");
  const want = d.tidy(() => f(...recipes.map((r) => r())));
  await d.setBackend("webgpu");
  const got = d.tidy(() => f(...recipes.map((r) => r())));
  return [want, got];
}

/** Runs `f` on both backends over the same inputs and compares (exactly for integers and bools). */
async function same(what: string, f: (...xs: Tensor[]) => Tensor, recipes: Recipe[], tol: Tol = {}) {
  const [want, got] = await onBoth(f, recipes);
  try {
    assert.deepEqual(got.shape, want.shape, `${what}: shape`);
    assert.equal(got.dtype, want.dtype, `${what}: dtype`);
    const w = await want.data(), g = await got.data();
    const exact = want.dtype !== "f32" && want.dtype !== "f16";
    const rtol = tol.rtol ?? 2e-6, atol = tol.atol ?? 1e-6;
    for (let i = 0; i < w.length; i++) {
      const a = Number(g[i]), e = Number(w[i]);
      if (Number.isNaN(e) && Number.isNaN(a)) continue;
      if (a === e) continue;
      if (exact || !(Math.abs(a - e) <= atol + rtol * Math.abs(e))) {
        throw new Error(`${what}: element ${i} of ${JSON.stringify(want.shape)}: webgpu ${a} vs cpu ${e}`);
      }
    }
  } finally {
    want.dispose();
    got.dispose();
  }
}

const covered = new Set<Prim>();
/** Declares a property test of one or more primitives. */
function prop(prims: Prim[], name: string, body: (rng: Rng) => Promise<void>, runs = RUNS) {
  prims.forEach((p) => covered.add(p));
  Deno.test({
    name: `webgpu matches cpu: ${name}`,
    ignore: skip,
    sanitizeResources: false,
    sanitizeOps: false,
    fn: async () => {
      await fc.assert(fc.asyncProperty(fc.integer({ min: 0, max: 2 ** 31 - 1 }), (seed) => body(new Rng(seed))), {
        numRuns: runs,
      });
    },
  });
}

// ---------------------------------------------------------------- elementwise

const FLOAT_UNARY: [Prim, number, number, Tol?][] = [
  ["exp", -10, 10],
  ["log", 0.001, 50],
  ["sin", -10, 10],
  ["cos", -10, 10],
  ["tanh", -6, 6, { atol: 2e-7 }],
  ["sqrt", 0, 50],
  ["rsqrt", 0.01, 50],
  ["erf", -4, 4, { atol: 2e-7 }],
  ["sigmoid", -20, 20, { atol: 1e-7 }],
  ["log1p", -0.99, 5],
  ["expm1", -5, 5],
  ["gelu", -8, 8, { atol: 3e-7 }],
  ["geluTanh", -8, 8, { atol: 3e-7 }],
  ["geluGrad", -8, 8, { atol: 3e-7 }],
  ["geluTanhGrad", -8, 8, { atol: 3e-7 }],
];
for (const [p, lo, hi, tol] of FLOAT_UNARY) {
  prop([p], p, async (rng) => {
    const s = shapeOf(rng);
    // Mostly in-domain values, some anywhere (NaN results), some special values.
    const gen: Gen = (r) => (r.bool(0.1) ? genReal(-100, 100, 0.5)(r) : f32(r.real(lo, hi)));
    await same(p, (x) => bind(p, [x], {})[0], [input(rng, s, "f32", gen)], { rtol: 1e-6, ...tol });
  });
}

for (const p of ["neg", "abs", "sign", "floor"] as Prim[]) {
  prop([p], `${p} (f32, i32, u32)`, async (rng) => {
    const dt = (["f32", "i32", "u32"] as DType[])[rng.int(0, 2)];
    await same(`${p} ${dt}`, (x) => bind(p, [x], {})[0], [input(rng, shapeOf(rng), dt)]);
  });
}

for (const p of ["add", "sub", "mul", "div", "pow", "maximum", "minimum"] as Prim[]) {
  prop([p], `${p} (float and integer, wrap-around)`, async (rng) => {
    const dt = p === "pow" ? "f32" : (["f32", "i32", "u32"] as DType[])[rng.int(0, 2)];
    const s = shapeOf(rng);
    let ga = genFor(dt), gb = genFor(dt);
    if (p === "pow") {
      ga = (r) => (r.bool(0.3) ? f32(r.int(-4, 4)) : genReal(-3, 3, 0.1)(r));
      gb = (r) => (r.bool(0.4) ? r.int(-3, 4) : genReal(-3, 3, 0.1)(r));
    }
    await same(`${p} ${dt}`, (a, b) => bind(p, [a, b], {})[0], [input(rng, s, dt, ga), input(rng, s, dt, gb)], {
      rtol: p === "pow" ? 2e-5 : 2e-6,
    });
  });
}

prop(["compare"], "compare (all ops; NaN, ints, bools)", async (rng) => {
  const dt = (["f32", "i32", "u32", "bool"] as DType[])[rng.int(0, 3)];
  const op = (["lt", "le", "gt", "ge", "eq", "ne"] as const)[rng.int(0, 5)];
  const s = shapeOf(rng);
  // Few distinct values so equality happens.
  const g: Gen = dt === "f32" ? (r) => (r.bool(0.15) ? NaN : r.int(-2, 2)) : genFor(dt);
  await same(`compare ${op} ${dt}`, (a, b) => bind("compare", [a, b], { op })[0], [
    input(rng, s, dt, g),
    input(rng, s, dt, g),
  ]);
});

prop(["where"], "where", async (rng) => {
  const dt = (["f32", "i32", "bool"] as DType[])[rng.int(0, 2)];
  const s = shapeOf(rng);
  await same(`where ${dt}`, (c, a, b) => bind("where", [c, a, b], {})[0], [
    input(rng, s, "bool"),
    input(rng, s, dt),
    input(rng, s, dt),
  ]);
});

prop(["cast"], "cast (truncation, wrap-around, NaN, bool)", async (rng) => {
  const types: DType[] = ["f32", "i32", "u32", "bool"];
  const from = types[rng.int(0, 3)], to = types[rng.int(0, 3)];
  const g: Gen = from === "f32"
    ? (
      r,
    ) => (r.bool(0.2)
      ? [NaN, Infinity, -Infinity, 3e9, -3e9, 2147483648, -2147483649, 1e20, -0.7, 0.7][r.int(0, 9)]
      : f32(r.real(-1000, 1000)))
    : genFor(from);
  await same(`cast ${from}->${to}`, (x) => bind("cast", [x], { dtype: to })[0], [input(rng, shapeOf(rng), from, g)]);
});

// ---------------------------------------------------------------- reductions and scans

/** Tolerance of an f32 sum of n terms of magnitude up to m (cpu sums in f64). */
const sumTol = (n: number, m: number): Tol => ({ rtol: 1e-5, atol: 2e-7 * n * m + 1e-6 });

prop(["sum", "max"], "sum and max over random axes", async (rng) => {
  const s = shapeOf(rng, 1, 4, 12);
  const axes = [...Array(s.length).keys()].filter(() => rng.bool(0.6));
  const keepdims = rng.bool();
  const dt = (["f32", "i32"] as DType[])[rng.int(0, 1)];
  const gen: Gen = dt === "f32" ? genReal(-2, 2, 0.02) : genInt;
  const n = axes.reduce((a, i) => a * s[i], 1);
  const x = input(rng, s, dt, gen);
  await same(
    `sum ${dt} ${JSON.stringify(s)} axes ${axes}`,
    (t) => bind("sum", [t], { axes, keepdims })[0],
    [x],
    sumTol(n, 2),
  );
  await same(`max ${dt} ${JSON.stringify(s)} axes ${axes}`, (t) => bind("max", [t], { axes, keepdims })[0], [x]);
});

prop(["softmax"], "softmax over the last axis (views, masked entries, long rows)", async (rng) => {
  const s = shapeOf(rng, 1, 4, 12);
  if (rng.bool(0.2)) s[s.length - 1] = rng.int(300, 1500);
  const masked = rng.bool(0.3);
  const gen: Gen = (r) => (masked && r.bool(0.2) ? -Infinity : f32(r.real(-20, 20)));
  await same(`softmax ${JSON.stringify(s)}`, (t) => bind("softmax", [t], {})[0], [input(rng, s, "f32", gen)], {
    rtol: 1e-5,
    atol: 1e-7,
  });
});

prop(["layerNorm"], "layerNorm over the last axis (views, eps, long rows)", async (rng) => {
  const s = shapeOf(rng, 1, 4, 12);
  if (rng.bool(0.2)) s[s.length - 1] = rng.int(300, 1500);
  const eps = rng.bool() ? 1e-6 : 0.1;
  await same(`layerNorm ${JSON.stringify(s)}`, (t) => bind("layerNorm", [t], { eps })[0], [
    input(rng, s, "f32", genReal(-5, 5, 0.01)),
  ], { rtol: 1e-4, atol: 2e-5 });
});

prop(["adamw"], "adamw step (all three outputs)", async (rng) => {
  const s = shapeOf(rng, 0, 3);
  const q = { b1: 0.9, c1: 0.1, b2: 0.999, c2: 0.001, bc2: 0.03, eps: 1e-8, decay: 1 - 1e-4, negStep: -1e-3 };
  const gens = [genReal(-2, 2, 0), genReal(-2, 2, 0), genReal(-2, 2, 0), genReal(0, 2, 0)];
  await same(
    `adamw ${JSON.stringify(s)}`,
    (p, g, m, v) => d.stack(bind("adamw", [p, g, m, v], q)),
    gens.map((gen) => input(rng, s, "f32", gen)),
    { rtol: 1e-5, atol: 1e-6 },
  );
});

prop(["sum", "max", "argmax"], "long reductions (two-pass)", async (rng) => {
  const s = [rng.int(1, 3), rng.int(300, 3000)];
  const x = input(rng, s, "f32", genReal(-1, 1, 0.001), 3);
  await same("sum long", (t) => bind("sum", [t], { axes: [1], keepdims: false })[0], [x], sumTol(s[1], 1));
  await same("sum all", (t) => bind("sum", [t], { axes: [0, 1], keepdims: false })[0], [x], sumTol(s[0] * s[1], 1));
  await same("max long", (t) => bind("max", [t], { axes: [1], keepdims: true })[0], [x]);
  await same("argmax long", (t) => bind("argmax", [t], { axis: 1, keepdims: false })[0], [x]);
}, 6);

prop(["argmax"], "argmax (first maximum, NaN wins)", async (rng) => {
  const s = shapeOf(rng, 1, 4, 9);
  const axis = rng.int(0, s.length - 1);
  const dt = (["f32", "i32", "u32"] as DType[])[rng.int(0, 2)];
  const g: Gen = dt === "f32" ? (r) => (r.bool(0.05) ? NaN : r.int(-3, 3)) : (r) => r.int(0, 4);
  const keepdims = rng.bool();
  await same(`argmax ${dt} axis ${axis}`, (t) => bind("argmax", [t], { axis, keepdims })[0], [input(rng, s, dt, g)]);
});

prop(["cumsum", "cumprod"], "cumsum and cumprod (reverse too)", async (rng) => {
  const s = shapeOf(rng, 1, 4, 9);
  const axis = rng.int(0, s.length - 1);
  const reverse = rng.bool();
  const dt = (["f32", "i32"] as DType[])[rng.int(0, 1)];
  const x = input(rng, s, dt, dt === "f32" ? genReal(-2, 2, 0.02) : (r) => r.int(-3, 3));
  await same(`cumsum ${dt}`, (t) => bind("cumsum", [t], { axis, reverse })[0], [x], sumTol(s[axis], 2));
  const y = input(rng, s, dt, dt === "f32" ? genReal(0.5, 1.5, 0.02) : (r) => r.int(-2, 2));
  await same(`cumprod ${dt}`, (t) => bind("cumprod", [t], { axis, reverse })[0], [y], { rtol: 1e-5, atol: 1e-6 });
});

// ---------------------------------------------------------------- matmul and conv

prop(["dot"], "dot: strided, transposed and broadcast operands", async (rng) => {
  const B = rng.int(1, 3), M = rng.int(1, 40), K = rng.int(1, 40), N = rng.int(1, 40);
  const dt = rng.bool(0.85) ? "f32" : "i32";
  const g: Gen = dt === "f32" ? genReal(-1, 1, 0) : (r) => r.int(-20, 20);
  await same(`dot ${dt} ${B}x${M}x${K}x${N}`, (a, b) => bind("dot", [a, b], {})[0], [
    input(rng, [B, M, K], dt, g),
    input(rng, [B, K, N], dt, g),
  ], sumTol(K, 1));
});

prop(["dot"], "dot: vectorized paths (multiples of 4, transposes)", async (rng) => {
  const B = rng.int(1, 2), M = 4 * rng.int(1, 20), K = 4 * rng.int(1, 20), N = 4 * rng.int(1, 40);
  const ta = rng.bool(), tb = rng.bool();
  const av = Array.from({ length: B * M * K }, () => f32(rng.real(-1, 1)));
  const bv = Array.from({ length: B * K * N }, () => f32(rng.real(-1, 1)));
  const A: Recipe = () =>
    ta ? d.transpose(d.tensor(av, { shape: [B, K, M] }), [0, 2, 1]) : d.tensor(av, { shape: [B, M, K] });
  const Bm: Recipe = () =>
    tb ? d.transpose(d.tensor(bv, { shape: [B, N, K] }), [0, 2, 1]) : d.tensor(bv, { shape: [B, K, N] });
  await same(`dot ${B}x${M}x${K}x${N} ta=${ta} tb=${tb}`, (a, b) => bind("dot", [a, b], {})[0], [A, Bm], sumTol(K, 1));
});

/** A random conv problem; `big` sizes take the im2col + matmul path (Co >= 16, K >= 16, OH*OW >= 16). */
function convCase(rng: Rng, big: boolean) {
  for (let attempt = 0;; attempt++) {
    const N = rng.int(1, 2), G = rng.int(1, big ? 2 : 3), Ci = rng.int(big ? 2 : 1, 4);
    const Co = big ? rng.int(16, 24) : rng.int(1, 9);
    const H = rng.int(big ? 5 : 1, big ? 12 : 9), W = rng.int(big ? 5 : 1, big ? 12 : 9);
    const KH = rng.int(big ? 2 : 1, 3), KW = rng.int(big ? 2 : 1, 3);
    const p: ConvParams = {
      stride: [rng.int(1, 2), rng.int(1, big ? 2 : 3)],
      padding: [[rng.int(-1, 2), rng.int(-1, 2)], [rng.int(-1, 2), rng.int(-1, 2)]],
      lhsDilation: [rng.int(1, 2), rng.int(1, 2)],
      rhsDilation: [rng.int(1, 2), rng.int(1, 2)],
    };
    const oh = convOutSize(H, KH, p.stride[0], p.padding[0][0], p.padding[0][1], p.lhsDilation[0], p.rhsDilation[0]);
    const ow = convOutSize(W, KW, p.stride[1], p.padding[1][0], p.padding[1][1], p.lhsDilation[1], p.rhsDilation[1]);
    if ((oh < 1 || ow < 1 || (big && oh * ow < 16)) && attempt < 50) continue;
    return {
      what: `conv x[${N},${G},${Ci},${H},${W}] w[${G},${Co},${Ci},${KH},${KW}] ${JSON.stringify(p)}`,
      p,
      inputs: [
        input(rng, [N, G, Ci, H, W], "f32", genReal(-1, 1, 0)),
        input(rng, [G, Co, Ci, KH, KW], "f32", genReal(-1, 1, 0)),
      ],
      tol: sumTol(Ci * KH * KW, 1),
    };
  }
}

prop(["conv"], "conv: groups, stride, signed padding, lhs and rhs dilation (direct kernel)", async (rng) => {
  const c = convCase(rng, false);
  await same(c.what, (x, w) => bind("conv", [x, w], c.p)[0], c.inputs, c.tol);
});

prop(["conv"], "conv: im2col + matmul path, and both paths agree", async (rng) => {
  const c = convCase(rng, true);
  await same(c.what, (x, w) => bind("conv", [x, w], c.p)[0], c.inputs, c.tol);
  const old = gpu().setConvGemm(false);
  try {
    await same(`${c.what} (direct)`, (x, w) => bind("conv", [x, w], c.p)[0], c.inputs, c.tol);
  } finally {
    gpu().setConvGemm(old);
  }
}, Math.ceil(RUNS / 2));

// ---------------------------------------------------------------- indexing and movement

prop(["gather", "scatterAdd"], "gather and scatterAdd", async (rng) => {
  const s = shapeOf(rng, 1, 3, 7);
  const axis = rng.int(0, s.length - 1);
  const is = shapeOf(rng, 0, 2, 5);
  const n = s[axis];
  const idx = input(rng, is, "i32", (r) => r.int(0, n - 1));
  const dt = (["f32", "i32"] as DType[])[rng.int(0, 1)];
  await same("gather", (x, i) => bind("gather", [x, i], { axis })[0], [input(rng, s, dt), idx]);
  const us = [...s.slice(0, axis), ...is, ...s.slice(axis + 1)];
  await same("scatterAdd", (u, i) => bind("scatterAdd", [u, i], { axis, size: n })[0], [
    input(rng, us, dt, dt === "f32" ? genReal(-2, 2, 0) : genInt),
    idx,
  ], sumTol(prod(is), 2));
});

prop(
  ["reshape", "transpose", "broadcast", "slice", "flip"],
  "views composed, then reshaped (copy when not contiguous)",
  async (rng) => {
    const s = shapeOf(rng, 1, 4, 6);
    const dt = (["f32", "i32", "bool"] as DType[])[rng.int(0, 2)];
    const perm = rng.perm(s.length);
    const starts = s.map((n) => rng.int(0, n - 1));
    const steps = s.map(() => rng.int(1, 2));
    const axes = [...Array(s.length).keys()].filter(() => rng.bool());
    await same("views", (x) => {
      const t = bind("transpose", [x], { perm })[0];
      const ts = t.shape;
      const sl = bind("slice", [t], { starts: starts.map((v, i) => Math.min(v, ts[i] - 1)), ends: [...ts], steps })[0];
      const f = bind("flip", [sl], { axes })[0];
      const b = bind("broadcast", [f], { shape: [2, ...f.shape] })[0];
      return bind("reshape", [b], { shape: [b.shape.reduce((a, c) => a * c, 1)] })[0];
    }, [input(rng, s, dt)]);
  },
);

prop(["pad"], "pad with interior padding", async (rng) => {
  const s = shapeOf(rng, 1, 3, 5);
  const widths = s.map((): [number, number, number] => [rng.int(0, 2), rng.int(0, 2), rng.int(0, 2)]);
  const dt = (["f32", "i32", "bool"] as DType[])[rng.int(0, 2)];
  await same("pad", (x) => bind("pad", [x], { widths })[0], [input(rng, s, dt)]);
});

prop(["concat"], "concat of views", async (rng) => {
  const s = shapeOf(rng, 1, 3, 5);
  const axis = rng.int(0, s.length - 1);
  const k = rng.int(1, 4);
  const dt = (["f32", "i32", "bool"] as DType[])[rng.int(0, 2)];
  const parts = Array.from({ length: k }, () => {
    const t = s.slice();
    t[axis] = rng.int(0, 4);
    return input(rng, t, dt);
  });
  await same("concat", (...xs) => bind("concat", xs, { axis })[0], parts);
});

prop(["random"], "random bits and uniforms (bit-identical)", async (rng) => {
  const key: [number, number] = [rng.int(0, 2 ** 32 - 1), rng.int(0, 2 ** 32 - 1)];
  const shape = shapeOf(rng, 0, 3, 40);
  const dist = rng.bool() ? "bits" : "uniform";
  const dtype = dist === "bits" ? "u32" : "f32";
  await same(`random ${dist}`, () => bind("random", [], { key, shape, dtype, dist })[0], [], { rtol: 0, atol: 0 });
});

prop(["add", "mul", "sub"], "broadcast rows and columns (row-vectorized kernels)", async (rng) => {
  const a = rng.int(1, 9), b = 4 * rng.int(1, 6);
  const dt = (["f32", "i32"] as DType[])[rng.int(0, 1)];
  const shapes = [[a, b], [b], [a, 1], [1, b], [a, b]];
  const xs = shapes.map((s) => input(rng, s, dt, genFor(dt), 1));
  await same("rows", (p, q, r, s, t) => d.sub(d.mul(d.add(p, q), r), d.mul(s, d.transpose(d.transpose(t)))), xs, {
    rtol: 1e-5,
  });
});

// ---------------------------------------------------------------- fusion

prop(["add", "mul", "exp", "where", "compare"], "fused elementwise chains equal unfused ones", async (rng) => {
  const s = shapeOf(rng, 1, 3, 9);
  const xs = [input(rng, s, "f32", genReal(-2, 2, 0)), input(rng, s, "f32", genReal(-2, 2, 0))];
  const f = (a: Tensor, b: Tensor) => {
    const c = d.add(d.mul(a, b), 1);
    const e = d.exp(d.neg(d.abs(c)));
    const m = d.where(d.greater(a, 0), e, d.sub(e, b));
    return d.add(d.sum(d.tanh(m), { axis: 0 }), d.max(c));
  };
  await same("fused chain", f, xs, { rtol: 1e-5, atol: 1e-5 });
  const before = gpu().setFusion(false);
  try {
    await same("unfused chain", f, xs, { rtol: 1e-5, atol: 1e-5 });
  } finally {
    gpu().setFusion(before);
  }
});

// ---------------------------------------------------------------- random programs

/** A random program over the public ops; every intermediate value is compared. */
function program(rng: Rng): { inputs: Recipe[]; f: (...xs: Tensor[]) => Tensor } {
  const R = rng.int(1, 9), C = rng.int(1, 9);
  const inputs = [0, 1, 2].map(() => input(rng, [R, C], "f32", genReal(-2, 2, 0)));
  type Step = (pool: Tensor[]) => Tensor;
  const pick = (pool: Tensor[], shape: readonly number[], k: number) => {
    const same = pool.filter((t) => t.shape.join() === shape.join());
    return same[k % same.length];
  };
  const steps: Step[] = [];
  const n = rng.int(3, 10);
  for (let i = 0; i < n; i++) {
    const a = rng.int(0, 1000), b = rng.int(0, 1000), axis = rng.int(0, 1);
    const kind = rng.int(0, 13);
    steps.push((pool) => {
      const x = pool[a % pool.length];
      const y = pick(pool, x.shape, b);
      switch (kind) {
        case 0:
          return d.tanh(d.add(x, y));
        case 1:
          return d.mul(x, d.sigmoid(y));
        case 2:
          return d.sub(x, d.mean(x, { axis, keepdims: true }));
        case 3:
          return d.softmax(x, axis);
        case 4:
          return d.where(d.greater(x, y), x, d.mul(y, 0.5));
        case 5:
          return d.matmul(x, d.transpose(y));
        case 6:
          return d.maximum(d.neg(x), d.abs(y));
        case 7:
          return d.log(d.add(d.abs(x), 1));
        case 8:
          return d.div(x, d.add(d.sqrt(d.sum(d.square(x), { axis, keepdims: true })), 1));
        case 9:
          return d.cumsum(x, axis);
        case 10:
          return d.transpose(d.exp(d.mul(x, 0.3)));
        case 11: {
          const m = x.shape[axis];
          const cut = Math.max(1, m >> 1);
          return cut === m ? d.flip(x, axis) : d.concat([
            d.slice(x, axis ? [0, cut] : [cut, 0]),
            d.slice(x, [0, 0], axis ? [x.shape[0], cut] : [cut, x.shape[1]]),
          ], axis);
        }
        case 12:
          return d.mul(d.max(x, { axis, keepdims: true }), d.erf(y));
        default:
          return d.minimum(d.cos(x), d.expm1(d.mul(y, 0.5)));
      }
    });
  }
  return {
    inputs,
    f: (...xs) => {
      const pool = [...xs];
      for (const st of steps) pool.push(st(pool));
      return d.concat(pool.map((t) => d.reshape(t, [t.size])), 0);
    },
  };
}

Deno.test({
  name: "webgpu matches cpu: random op compositions (every intermediate)",
  ignore: skip,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 0, max: 2 ** 31 - 1 }), async (seed) => {
        const { inputs, f } = program(new Rng(seed));
        await same(`program ${seed}`, f, inputs, { rtol: 2e-4, atol: 2e-4 });
      }),
      { numRuns: RUNS * 2 },
    );
  },
});

// ---------------------------------------------------------------- registry, memory, limits, errors

Deno.test({
  name: "webgpu: every primitive of the registry is covered by a property above",
  ignore: skip,
  fn() {
    const missing = PRIMS.filter((p) => !covered.has(p));
    assert.deepEqual(missing, [], `primitives without a webgpu property test: ${missing.join(", ")}`);
  },
});

Deno.test({
  name: "webgpu: a 200-step training loop keeps live buffers flat",
  ignore: skip,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const rng = new Rng(3);
    const init = (s: number[]) => d.tensor(rng.values(prod(s), -0.5, 0.5), { shape: s });
    let params = { w1: init([6, 16]), b1: init([16]), w2: init([16, 3]), b2: init([3]) };
    const x = init([8, 6]), y = init([8, 3]);
    const loss = (p: typeof params) => {
      const h = d.maximum(d.add(d.matmul(x, p.w1), p.b1), 0);
      const o = d.add(d.matmul(h, p.w2), p.b2);
      return d.mean(d.square(d.sub(o, y)));
    };
    const counts: number[] = [];
    let first = 0, last = 0;
    for (let step = 0; step < 200; step++) {
      const next = d.tidy(() => {
        const g = grad(loss)(params) as typeof params;
        return {
          w1: d.sub(params.w1, d.mul(g.w1, 0.1)),
          b1: d.sub(params.b1, d.mul(g.b1, 0.1)),
          w2: d.sub(params.w2, d.mul(g.w2, 0.1)),
          b2: d.sub(params.b2, d.mul(g.b2, 0.1)),
        };
      });
      d.dispose(params);
      params = next;
      if (step === 0 || step === 199) {
        const l = d.tidy(() => loss(params));
        const v = await l.item();
        l.dispose();
        if (step === 0) first = v;
        else last = v;
      }
      counts.push(d.liveBuffers());
    }
    assert.ok(last < first, `loss falls: ${first} -> ${last}`);
    const settled = counts.slice(2);
    assert.equal(
      Math.max(...settled),
      Math.min(...settled),
      `live buffers drift: ${counts.slice(0, 10)} ... ${counts.slice(-5)}`,
    );
    d.dispose(params);
    d.dispose([x, y]);
  },
});

Deno.test({
  name: "webgpu: work larger than the storage-binding limit is split and still matches cpu",
  ignore: skip,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const old = gpu().setMaxBindingBytes(4096);
    try {
      const rng = new Rng(11);
      const big = [37, 53]; // 1961 f32 = 7844 bytes > 4096
      const a = input(rng, big, "f32", genReal(-1, 1, 0), 1);
      const at = input(rng, [53, 37], "f32", genReal(-1, 1, 0), 1);
      await same("elementwise over a transposed view", (x, y) => d.add(d.exp(x), d.transpose(y)), [a, at], {
        rtol: 1e-5,
      });
      await same("sum all", (x) => d.sum(x), [a], sumTol(1961, 1));
      await same("sum rows", (x) => d.sum(x, { axis: 1 }), [a], sumTol(53, 1));
      await same("max cols", (x) => d.max(x, { axis: 0 }), [a]);
      await same("argmax rows", (x) => d.argmax(x, { axis: 1 }), [a]);
      await same("cumsum", (x) => d.cumsum(x, 0), [a], sumTol(37, 1));
      await same(
        "matmul",
        (x, y) => d.matmul(x, y),
        [a, input(rng, [53, 40], "f32", genReal(-1, 1, 0), 1)],
        sumTol(53, 1),
      );
      await same("matmul transposed", (x, y) => d.matmul(d.transpose(y), d.transpose(x)), [a, at], sumTol(37, 1));
      const idx = input(rng, [30], "i32", (r) => r.int(0, 36), 1);
      await same("gather", (x, i) => d.take(x, i, 0), [a, idx]);
      await same("scatterAdd", (u, i) => d.scatterAdd(u, i, 0, 37), [
        input(rng, [30, 53], "f32", genReal(-1, 1, 0), 1),
        idx,
      ], sumTol(30, 1));
      await same("pad and concat", (x) => d.concat([d.pad(x, [[1, 2], [0, 0]]), x], 0), [a]);
      await same("conv", (x, w) => d.conv2d(x, w, { padding: 1 }), [
        input(rng, [3, 4, 13, 11], "f32", genReal(-1, 1, 0), 1),
        input(rng, [5, 4, 3, 3], "f32", genReal(-1, 1, 0), 1),
      ], sumTol(36, 1));
      await same(
        "random",
        () => bind("random", [], { key: [1, 2], shape: [3000], dtype: "f32", dist: "uniform" })[0],
        [],
      );
      // Conv weights that cannot fit one binding are an error naming the limit and the tensor's shape.
      gpu().setMaxBindingBytes(256);
      const x = d.tensor(new Float32Array(16), { shape: [1, 1, 4, 4] });
      const w = d.tensor(new Float32Array(72), { shape: [8, 1, 3, 3] });
      assert.throws(() => d.conv2d(x, w), /maxStorageBufferBindingSize \(256 bytes\)/);
      assert.throws(() => d.conv2d(x, w), /shape \[1,8,1,3,3\]/);
      d.dispose([x, w]);
    } finally {
      gpu().setMaxBindingBytes(old);
    }
  },
});

Deno.test({
  name: "webgpu: grids beyond maxComputeWorkgroupsPerDimension are split over two dimensions",
  ignore: skip,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const e = gpu().engine;
    const old = e.maxWorkgroups;
    e.maxWorkgroups = 5;
    try {
      const rng = new Rng(5);
      const x = input(rng, [37, 41], "f32", genReal(-1, 1, 0), 1);
      await same("elementwise", (a) => d.exp(d.transpose(a)), [x]);
      await same("sum", (a) => d.sum(a, { axis: 1 }), [x], sumTol(41, 1));
      await same(
        "matmul",
        (a, b) => d.matmul(a, b),
        [x, input(rng, [41, 150], "f32", genReal(-1, 1, 0), 1)],
        sumTol(41, 1),
      );
      await same("conv", (a, w) => d.conv2d(a, w, { padding: 1 }), [
        input(rng, [2, 3, 20, 19], "f32", genReal(-1, 1, 0), 1),
        input(rng, [17, 3, 3, 3], "f32", genReal(-1, 1, 0), 1),
      ], sumTol(27, 1));
      e.maxWorkgroups = 1;
      const big = d.tensor(new Float32Array(20 * 30 * 40 * 40), { shape: [20, 30, 40, 40] });
      const w = d.tensor(new Float32Array(30 * 30 * 9), { shape: [30, 30, 3, 3] });
      assert.throws(() => d.conv2d(big, w, { padding: 1 }), /maxComputeWorkgroupsPerDimension/);
      d.dispose([big, w]);
    } finally {
      e.maxWorkgroups = old;
    }
  },
});

Deno.test({
  name: "webgpu: few submits and no readback until asked",
  ignore: skip,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const e = gpu().engine;
    const x = d.tensor(Array.from({ length: 64 }, (_, i) => i / 64), { shape: [8, 8] });
    await x.data();
    const s0 = e.submits, k0 = e.dispatches;
    let y = x;
    for (let i = 0; i < 30; i++) {
      const prev = y;
      y = d.tidy(() => d.broadcastTo(d.div(d.sum(d.matmul(prev, x), { axis: 0, keepdims: true }), 8), [8, 8]));
    }
    const recorded = e.dispatches - k0;
    assert.ok(recorded >= 30, "work was recorded");
    assert.ok(
      e.submits - s0 <= Math.ceil(recorded / e.flushEvery),
      `${e.submits - s0} submits for ${recorded} dispatches`,
    );
    const before = e.submits;
    await y.data();
    assert.equal(e.submits - before, 1, "one submit for the read");
  },
});

Deno.test({
  name: "webgpu: results released unused are never computed; used ones are",
  ignore: skip,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const e = gpu().engine;
    const a = d.tensor(Array.from({ length: 64 }, (_, i) => i % 7), { shape: [8, 8] });
    await a.data();
    const k0 = e.dispatches;
    d.tidy(() => {
      d.matmul(a, a);
      d.exp(d.add(a, 1));
      d.conv2d(d.reshape(a, [1, 1, 8, 8]), d.ones([2, 1, 3, 3]));
    });
    assert.equal(e.dispatches - k0, 0, "dead matmul, conv and elementwise work was dropped");
    const used = d.tidy(() => d.sum(d.matmul(a, a)));
    assert.ok(e.dispatches > k0, "a used matmul runs");
    const want = Array.from({ length: 64 }, (_, i) => i % 7);
    let total = 0;
    for (let i = 0; i < 8; i++) {
      for (let j = 0; j < 8; j++) for (let k = 0; k < 8; k++) total += want[i * 8 + k] * want[k * 8 + j];
    }
    assert.equal(await used.item(), total);
    d.dispose([a, used]);
  },
});

Deno.test({
  name: "webgpu: index errors surface at the next read; f64 is rejected clearly",
  ignore: skip,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const x = d.tensor([1, 2, 3]);
    const bad = d.take(x, d.tensor([0, 5], { dtype: "i32" }));
    await assert.rejects(() => bad.data(), /gather: an index is out of range/);
    assert.deepEqual(
      await d.take(x, d.tensor([2], { dtype: "i32" })).array(),
      [3],
      "the flag is cleared after reporting",
    );
    assert.throws(() => d.tensor([1], { dtype: "f64" }), /f64 is not supported on the webgpu backend/);
  },
});

Deno.test({
  name: "webgpu: a lost device gives a clear error",
  ignore: skip,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const b = await createWebGPUBackend();
    const h = b.fromHost(new Float32Array([1, 2]), { shape: [2], dtype: "f32" });
    b.engine.device.destroy();
    await new Promise((r) => setTimeout(r, 50));
    assert.throws(
      () => b.run("exp", [h], [{ shape: [2], dtype: "f32" }], {}, [{ shape: [2], dtype: "f32" }]),
      /device was lost/,
    );
    await assert.rejects(() => b.read(h, { shape: [2], dtype: "f32" }), /device was lost/);
  },
});
