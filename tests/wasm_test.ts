/**
 * @file The wasm backend against the cpu oracle: for every primitive, a
 * fast-check property runs it on both backends with random shapes (odd sizes,
 * size-1 axes, sizes that are not multiples of the SIMD width or the GEMM
 * tiles) and with view operands (transposed, sliced, strided, flipped,
 * broadcast), single-threaded and multi-threaded, and compares the results.
 * Float results must agree within rel 1e-5 / abs 1e-6 (sums, GEMMs and convs
 * within 1e-5 of the sum of absolute terms); integer, bool and PRNG results
 * must be identical. Also: registry completeness, large parallel cases, and
 * the 200-step leak test.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import * as d from "../mod.ts";
import type { Tensor } from "../mod.ts";
import type { Backend, Handle } from "../tensor/backend.ts";
import { createCpuBackend } from "../tensor/cpu.ts";
import { allocHost, type DType, isFloat, type TypedArray } from "../tensor/dtype.ts";
import { type Aval, type ParamsOf, type Prim, PRIMS, shapeRules } from "../tensor/prims.ts";
import { size } from "../tensor/shape.ts";
import { autoSelectBackend, createWasmBackend } from "../tensor/wasm/backend.ts";
import { Heap } from "../tensor/wasm/heap.ts";
import { Rng } from "./util.ts";

const cpu = createCpuBackend();
const single = await createWasmBackend({ threads: 1 });
const multi = await createWasmBackend({ threads: 2 });
// What a page without cross-origin isolation gets: an unshared memory and no workers.
const unshared = await createWasmBackend({ shared: false });
const WASMS: [string, Backend][] = [["1 thread", single], ["2 threads", multi], ["no SharedArrayBuffer", unshared]];
const RUNS = Number(Deno.env.get("WASM_TEST_RUNS") ?? 80);

/** Primitives run by the properties below (checked against the registry at the end). */
const exercised = new Set<Prim>();

// ---------------------------------------------------------------- inputs

/** How an operand is presented to the primitive: a fresh array or a view produced by movement primitives. */
type View =
  | { kind: "plain" }
  | { kind: "transpose"; perm: number[] }
  | { kind: "slice"; starts: number[]; steps: number[]; extra: number[] }
  | { kind: "broadcast"; base: number[] }
  | { kind: "flip"; axes: number[] };

interface Operand {
  dtype: DType;
  shape: number[];
  view: View;
  /** Values of the base array (before the view). */
  data: TypedArray;
}

function baseShape(o: { shape: number[]; view: View }): number[] {
  const v = o.view;
  switch (v.kind) {
    case "transpose": {
      const b = new Array<number>(o.shape.length);
      v.perm.forEach((p, i) => (b[p] = o.shape[i]));
      return b;
    }
    case "slice":
      return o.shape.map((n, i) => (n === 0 ? 0 : (n - 1) * v.steps[i] + 1) + v.extra[i] + v.starts[i]);
    case "broadcast":
      return v.base;
    default:
      return o.shape;
  }
}

function randomView(rng: Rng, shape: number[], allow = true): View {
  if (!allow || shape.length === 0) return { kind: "plain" };
  switch (rng.int(0, 4)) {
    case 1:
      return { kind: "transpose", perm: rng.perm(shape.length) };
    case 2:
      return {
        kind: "slice",
        starts: shape.map(() => rng.int(0, 2)),
        steps: shape.map(() => rng.int(1, 2)),
        extra: shape.map(() => rng.int(0, 1)),
      };
    case 3: {
      const drop = rng.int(0, Math.min(1, shape.length));
      return { kind: "broadcast", base: shape.slice(drop).map((n) => (rng.bool(0.4) ? 1 : n)) };
    }
    case 4:
      return { kind: "flip", axes: shape.map((_, i) => i).filter(() => rng.bool()) };
    default:
      return { kind: "plain" };
  }
}

/** Values for a dtype in [lo, hi) (floats), small integers, or bits. */
function values(rng: Rng, dtype: DType, n: number, lo = -2, hi = 2): TypedArray {
  const a = allocHost(dtype, n);
  for (let i = 0; i < n; i++) {
    if (isFloat(dtype)) a[i] = rng.real(lo, hi);
    else if (dtype === "bool") a[i] = rng.bool() ? 1 : 0;
    else if (dtype === "u32") a[i] = rng.bool(0.2) ? rng.int(0, 0xffffffff) : rng.int(0, 9);
    else a[i] = rng.bool(0.1) ? rng.int(-(2 ** 31), 2 ** 31 - 1) : rng.int(-9, 9);
  }
  return a;
}

function operand(
  rng: Rng,
  dtype: DType,
  shape: number[],
  opts: { lo?: number; hi?: number; views?: boolean } = {},
): Operand {
  const view = randomView(rng, shape, opts.views ?? true);
  const o = { dtype, shape, view, data: allocHost(dtype, 0) };
  o.data = values(rng, dtype, size(baseShape(o)), opts.lo, opts.hi);
  return o;
}

/** Runs a primitive through a backend's `run`, checking the outputs with the shape rule. */
function bindOn<P extends Prim>(b: Backend, prim: P, hs: Handle[], avals: Aval[], params: ParamsOf[P]): [Handle, Aval] {
  const outs = shapeRules[prim](avals, params);
  return [b.run(prim, hs, avals, params, outs)[0], outs[0]];
}

/** Creates the operand on a backend through its movement primitives (so views are real views). */
function materialise(b: Backend, o: Operand): [Handle, Aval] {
  const base: Aval = { shape: baseShape(o), dtype: o.dtype };
  const h = b.fromHost(o.data.slice() as TypedArray, base);
  const v = o.view;
  let r: [Handle, Aval];
  switch (v.kind) {
    case "transpose":
      r = bindOn(b, "transpose", [h], [base], { perm: v.perm });
      break;
    case "slice":
      r = bindOn(b, "slice", [h], [base], {
        starts: v.starts,
        ends: o.shape.map((n, i) => (n === 0 ? v.starts[i] : v.starts[i] + (n - 1) * v.steps[i] + 1)),
        steps: v.steps,
      });
      break;
    case "broadcast":
      r = bindOn(b, "broadcast", [h], [base], { shape: o.shape });
      break;
    case "flip":
      r = bindOn(b, "flip", [h], [base], { axes: v.axes });
      break;
    default:
      return [h, base];
  }
  b.release(h);
  return r;
}

/** Runs `prim` on `b` with the operands; returns every output's values (`v` is the first's) and the first aval. */
function runOn<P extends Prim>(
  b: Backend,
  prim: P,
  ops: Operand[],
  params: ParamsOf[P],
): { v: TypedArray; vs: TypedArray[]; aval: Aval } {
  const ins = ops.map((o) => materialise(b, o));
  const avals = ins.map((x) => x[1]);
  const outs = shapeRules[prim](avals, params);
  const hs = b.run(prim, ins.map((x) => x[0]), avals, params, outs);
  const vs = hs.map((h, k) => b.readSync!(h, outs[k]));
  hs.forEach((h) => b.release(h));
  for (const [x] of ins) b.release(x);
  return { v: vs[0], vs, aval: outs[0] };
}

/** A copy of the operands with absolute values (for the error scale of sums). */
function absOps(ops: Operand[]): Operand[] {
  return ops.map((o) => ({
    ...o,
    data: (isFloat(o.dtype) ? o.data.map((x: number) => Math.abs(x)) : o.data) as TypedArray,
  }));
}

function fmt(x: number) {
  return Number.isNaN(x) ? "NaN" : String(x);
}

/**
 * Compares every wasm backend with the cpu oracle. `sumScale` makes the tolerance relative to the
 * sum of absolute terms (computed by running the primitive on |operands|).
 */
function check<P extends Prim>(
  prim: P,
  ops: Operand[],
  params: ParamsOf[P],
  tol: { sumScale?: boolean; exact?: boolean; scale?: ArrayLike<number> } = {},
) {
  exercised.add(prim);
  const ref = runOn(cpu, prim, ops, params);
  const scale = tol.scale ?? (tol.sumScale ? runOn(cpu, prim, absOps(ops), params).v : null);
  const exact = tol.exact || !isFloat(ref.aval.dtype);
  for (const [name, b] of WASMS) {
    const before = b.liveBuffers();
    const got = runOn(b, prim, ops, params);
    assert.equal(b.liveBuffers(), before, `${prim} on wasm (${name}) leaked storage`);
    assert.deepEqual(got.aval.shape, ref.aval.shape);
    assert.equal(got.vs.length, ref.vs.length);
    ref.vs.forEach((rv, k) => compare(k, rv, got.vs[k], name));
  }
  function compare(k: number, rv: TypedArray, gv: TypedArray, name: string) {
    assert.equal(gv.length, rv.length);
    const at = ref.vs.length > 1 ? ` output ${k}` : "";
    for (let i = 0; i < rv.length; i++) {
      const r = Number(rv[i]), g = Number(gv[i]);
      if (Number.isNaN(r) || Number.isNaN(g)) {
        assert.ok(Number.isNaN(r) && Number.isNaN(g), `${prim}${at} (${name}) [${i}]: wasm ${fmt(g)} vs cpu ${fmt(r)}`);
        continue;
      }
      if (exact) {
        assert.ok(
          Object.is(r, g) || r === g,
          `${prim}${at} (${name}) [${i}]: wasm ${g} vs cpu ${r} (must be identical)`,
        );
        continue;
      }
      const s = scale ? Number(scale[i]) : Math.abs(r);
      const ok = r === g || Math.abs(r - g) <= 1e-6 + 1e-5 * s;
      assert.ok(
        ok,
        `${prim}${at} ${JSON.stringify(params)} (${name}) [${i}] of ${rv.length}: wasm ${g} vs cpu ${r}; shapes ${
          JSON.stringify(ops.map((o) => [o.shape, o.view.kind]))
        }`,
      );
    }
  }
}

const seed = fc.integer({ min: 0, max: 2 ** 31 - 1 });
const prop = (f: (rng: Rng) => void, runs = RUNS) =>
  fc.assert(fc.property(seed, (s) => f(new Rng(s))), { numRuns: runs });

/** A random shape of rank 0..4 whose dims mix 1, small odd sizes and sizes past a SIMD/tile boundary. */
function shapeOf(rng: Rng, maxRank = 4): number[] {
  return Array.from({ length: rng.int(0, maxRank) }, () => {
    const r = rng.next();
    return r < 0.2 ? 1 : r < 0.8 ? rng.int(2, 7) : rng.int(8, 21);
  });
}

// ---------------------------------------------------------------- elementwise

const UNARY_RANGE: Record<string, [number, number]> = {
  log: [0.01, 50],
  sqrt: [0, 50],
  rsqrt: [0.01, 50],
  log1p: [-0.9, 20],
  exp: [-20, 20],
  expm1: [-5, 5],
  sin: [-10, 10],
  cos: [-10, 10],
  tanh: [-8, 8],
  sigmoid: [-30, 30],
  erf: [-5, 5],
  floor: [-5, 5],
  gelu: [-8, 8],
  geluTanh: [-8, 8],
  geluGrad: [-8, 8],
  geluTanhGrad: [-8, 8],
};

const FLOAT_UNARY = [
  "neg",
  "exp",
  "log",
  "sin",
  "cos",
  "tanh",
  "sqrt",
  "rsqrt",
  "abs",
  "sign",
  "erf",
  "floor",
  "sigmoid",
  "log1p",
  "expm1",
  "gelu",
  "geluTanh",
  "geluGrad",
  "geluTanhGrad",
] as const;

for (const op of FLOAT_UNARY) {
  Deno.test(`wasm ${op} matches cpu (f32, views, odd sizes)`, () => {
    prop((rng) => {
      const [lo, hi] = UNARY_RANGE[op] ?? [-3, 3];
      check(op, [operand(rng, "f32", shapeOf(rng), { lo, hi })], {});
    });
  });
}

Deno.test("wasm unary integer ops (neg, abs, sign, floor) match cpu exactly", () => {
  prop((rng) => {
    const dt = rng.bool() ? "i32" : "u32";
    const op = (["neg", "abs", "sign", "floor"] as const)[rng.int(0, 3)];
    check(op, [operand(rng, dt, shapeOf(rng))], {});
  });
});

Deno.test("wasm unary ops on f64 match cpu", () => {
  prop((rng) => {
    const op = FLOAT_UNARY[rng.int(0, FLOAT_UNARY.length - 1)];
    const [lo, hi] = UNARY_RANGE[op] ?? [-3, 3];
    check(op, [operand(rng, "f64", shapeOf(rng, 3), { lo, hi })], {});
  }, 20);
});

Deno.test("transcendentals handle special values like cpu (NaN, ±inf, 0, -0, huge, subnormal)", () => {
  const special = [
    NaN,
    Infinity,
    -Infinity,
    0,
    -0,
    1e-40,
    -1e-40,
    88.5,
    89,
    -87.5,
    -104,
    1e30,
    -1e30,
    3.9,
    -3.9,
    0.625,
    -0.625,
    1,
    -1,
  ];
  for (
    const op of [
      "exp",
      "log",
      "tanh",
      "sigmoid",
      "erf",
      "sqrt",
      "rsqrt",
      "sign",
      "abs",
      "neg",
      "floor",
      "gelu",
      "geluTanh",
      "geluGrad",
      "geluTanhGrad",
    ] as const
  ) {
    const data = new Float32Array(special);
    check(op, [{ dtype: "f32", shape: [special.length], view: { kind: "plain" }, data }], {});
  }
});

for (const op of ["add", "sub", "mul", "div", "pow", "maximum", "minimum"] as const) {
  Deno.test(`wasm ${op} matches cpu (f32/i32/u32, broadcast and strided operands)`, () => {
    prop((rng) => {
      const dt: DType = op === "pow" ? "f32" : (["f32", "f32", "i32", "u32"] as const)[rng.int(0, 3)];
      const shape = shapeOf(rng);
      const lo = op === "pow" ? 0.1 : -3, hi = op === "pow" ? 3 : 3;
      const a = operand(rng, dt, shape, { lo, hi }), b = operand(rng, dt, shape, { lo, hi });
      if ((op === "maximum" || op === "minimum") && dt === "f32" && a.data.length > 2 && rng.bool(0.3)) {
        a.data[rng.int(0, a.data.length - 1)] = NaN;
        b.data[rng.int(0, b.data.length - 1)] = NaN;
      }
      check(op, [a, b], {});
    });
  });
}

Deno.test("wasm integer division wraps and maps division by zero to 0 like cpu", () => {
  const a = new Int32Array([7, -7, 7, -7, -(2 ** 31), 5, 0, 123456789]);
  const b = new Int32Array([2, 2, -2, -2, -1, 0, 0, -10]);
  check("div", [{ dtype: "i32", shape: [8], view: { kind: "plain" }, data: a }, {
    dtype: "i32",
    shape: [8],
    view: { kind: "plain" },
    data: b,
  }], {});
  const ua = new Uint32Array([7, 0xffffffff, 10, 3]), ub = new Uint32Array([2, 2, 0, 0xffffffff]);
  check("div", [{ dtype: "u32", shape: [4], view: { kind: "plain" }, data: ua }, {
    dtype: "u32",
    shape: [4],
    view: { kind: "plain" },
    data: ub,
  }], {});
});

Deno.test("wasm compare matches cpu for every op and dtype", () => {
  prop((rng) => {
    const dt = (["f32", "i32", "u32", "bool", "f64"] as const)[rng.int(0, 4)];
    const op = (["lt", "le", "gt", "ge", "eq", "ne"] as const)[rng.int(0, 5)];
    const shape = shapeOf(rng);
    const a = operand(rng, dt, shape, { lo: -2, hi: 2 });
    // Equal values must occur: copy some of a's values into b.
    const b = { ...operand(rng, dt, shape, { lo: -2, hi: 2 }), view: a.view, data: a.data.slice() as TypedArray };
    for (let i = 0; i < b.data.length; i++) if (rng.bool()) b.data[i] = values(rng, dt, 1)[0];
    if (dt === "f32" && b.data.length) b.data[0] = NaN;
    check("compare", [a, b], { op });
  });
});

Deno.test("wasm where matches cpu (f32, i32, u32, bool, f64; broadcast condition)", () => {
  prop((rng) => {
    const dt = (["f32", "i32", "u32", "bool", "f64"] as const)[rng.int(0, 4)];
    const shape = shapeOf(rng);
    check("where", [operand(rng, "bool", shape), operand(rng, dt, shape), operand(rng, dt, shape)], {});
  });
});

Deno.test("wasm cast matches cpu between every pair of dtypes (truncation, wrap, NaN)", () => {
  prop((rng) => {
    const dts = ["f32", "i32", "u32", "bool", "f64"] as const;
    const from = dts[rng.int(0, 4)], to = dts[rng.int(0, 4)];
    const o = operand(rng, from, shapeOf(rng, 3), { lo: -1e10, hi: 1e10 });
    if (isFloat(from) && o.data.length > 3) {
      o.data[0] = NaN;
      o.data[1] = -2.7;
      o.data[2] = 3e9;
      o.data[3] = -Infinity;
    }
    check("cast", [o], { dtype: to });
  });
});

// ---------------------------------------------------------------- reductions and scans

for (const op of ["sum", "max"] as const) {
  Deno.test(`wasm ${op} matches cpu over random axes (f32/i32/u32, keepdims, views)`, () => {
    prop((rng) => {
      const dt = (["f32", "f32", "i32", "u32", "f64"] as const)[rng.int(0, 4)];
      let shape = shapeOf(rng);
      if (op === "max") shape = shape.map((n) => Math.max(n, 1));
      const axes = shape.map((_, i) => i).filter(() => rng.bool());
      const o = operand(rng, dt, shape);
      if (op === "max" && dt === "f32" && o.data.length > 4 && rng.bool(0.2)) {
        o.data[rng.int(0, o.data.length - 1)] = NaN;
      }
      check(op, [o], { axes, keepdims: rng.bool() }, { sumScale: op === "sum" });
    });
  });
}

Deno.test("wasm argmax matches cpu (first maximum, NaN wins)", () => {
  prop((rng) => {
    const dt = (["f32", "i32", "u32"] as const)[rng.int(0, 2)];
    const shape = shapeOf(rng, 3).map((n) => n);
    if (shape.length === 0) shape.push(3);
    const o = operand(rng, dt, shape, { lo: -2, hi: 2 });
    // ties: quantise floats so equal maxima occur
    if (dt === "f32") { for (let i = 0; i < o.data.length; i++) o.data[i] = Math.round(o.data[i] * 2); }
    if (dt === "f32" && o.data.length > 2 && rng.bool(0.2)) o.data[1] = NaN;
    check("argmax", [o], { axis: rng.int(0, shape.length - 1), keepdims: rng.bool() });
  });
});

for (const op of ["cumsum", "cumprod"] as const) {
  Deno.test(`wasm ${op} matches cpu (both directions)`, () => {
    prop((rng) => {
      const dt = (["f32", "i32", "f64"] as const)[rng.int(0, 2)];
      const shape = shapeOf(rng, 3);
      if (shape.length === 0) shape.push(5);
      const o = operand(rng, dt, shape, { lo: op === "cumprod" ? 0.5 : -2, hi: op === "cumprod" ? 1.5 : 2 });
      check(op, [o], { axis: rng.int(0, shape.length - 1), reverse: rng.bool() }, { sumScale: op === "cumsum" });
    });
  });
}

// ---------------------------------------------------------------- dot and conv

/** A [B,R,C] operand possibly given as a transposed view of [B,C,R] or a broadcast over the batch. */
function matOperand(rng: Rng, dt: DType, B: number, R: number, C: number): Operand {
  const shape = [B, R, C];
  const k = rng.int(0, 3);
  const view: View = k === 1
    ? { kind: "transpose", perm: [0, 2, 1] }
    : k === 2
    ? { kind: "broadcast", base: [1, R, C] }
    : k === 3
    ? { kind: "slice", starts: [0, rng.int(0, 1), rng.int(0, 2)], steps: [1, 1, rng.int(1, 2)], extra: [0, 1, 1] }
    : { kind: "plain" };
  const o = { dtype: dt, shape, view, data: allocHost(dt, 0) };
  o.data = values(rng, dt, size(baseShape(o)), -1, 1);
  return o;
}

Deno.test("wasm dot matches cpu (batched, transposed/broadcast/strided operands, edge tiles)", () => {
  prop((rng) => {
    const dim = () => (rng.bool(0.3) ? rng.int(1, 3) : rng.int(4, 40));
    const B = rng.int(1, 3), M = dim(), K = rng.bool(0.1) ? 0 : dim(), N = dim();
    const dt = rng.bool(0.85) ? "f32" : (rng.bool() ? "f64" : "i32");
    check("dot", [matOperand(rng, dt, B, M, K), matOperand(rng, dt, B, K, N)], {}, { sumScale: true });
  });
});

Deno.test("wasm dot: large and K-blocked cases, batch folding, on both thread counts", () => {
  const rng = new Rng(7);
  // Shapes that pack A and/or B through memory (several M or N blocks) or inside each chunk (one block).
  for (
    const [B, M, K, N] of [[1, 130, 300, 77], [3, 67, 513, 45], [2, 200, 64, 130], [4, 1, 260, 9], [1, 200, 70, 530]]
  ) {
    check("dot", [matOperand(rng, "f32", B, M, K), matOperand(rng, "f32", B, K, N)], {}, { sumScale: true });
  }
  // A shared right operand with contiguous batches: the batch folds into the rows.
  const a: Operand = {
    dtype: "f32",
    shape: [5, 33, 70],
    view: { kind: "plain" },
    data: values(rng, "f32", 5 * 33 * 70),
  };
  const b: Operand = {
    dtype: "f32",
    shape: [5, 70, 41],
    view: { kind: "broadcast", base: [1, 70, 41] },
    data: values(rng, "f32", 70 * 41),
  };
  check("dot", [a, b], {}, { sumScale: true });
});

function convCase(rng: Rng, big = false) {
  const N = rng.int(1, big ? 4 : 3), G = rng.int(1, 3), Ci = rng.int(1, big ? 9 : 4), Co = rng.int(1, big ? 13 : 7);
  // Sometimes a kernel larger than the output (the shape of weight gradients).
  const wide = rng.bool(0.2);
  const KH = rng.int(1, 3), KW = wide ? rng.int(4, 9) : rng.int(1, 3);
  const H = rng.int(KH, big ? 24 : 9), W = rng.int(KW, big ? 24 : wide ? 14 : 10);
  const p: ParamsOf["conv"] = {
    stride: [rng.int(1, 2), rng.int(1, 2)],
    padding: [[rng.int(-1, 2), rng.int(-1, 2)], [rng.int(-1, 2), rng.int(-1, 2)]],
    lhsDilation: [rng.bool(0.25) ? 2 : 1, rng.bool(0.25) ? 2 : 1],
    rhsDilation: [rng.bool(0.25) ? 2 : 1, rng.bool(0.25) ? 2 : 1],
  };
  try {
    const out = shapeRules.conv([{ shape: [N, G, Ci, H, W], dtype: "f32" }, {
      shape: [G, Co, Ci, KH, KW],
      dtype: "f32",
    }], p);
    if (out[0].shape.some((s) => s <= 0)) return null;
  } catch {
    return null;
  }
  // x may be a transposed view (as in the weight gradient) or a flipped/sliced one; w as in the input gradient.
  const xv: View = rng.bool(0.3)
    ? { kind: "transpose", perm: [0, 1, 2, 4, 3] }
    : rng.bool(0.2)
    ? { kind: "flip", axes: [3] }
    : { kind: "plain" };
  const x: Operand = { dtype: "f32", shape: [N, G, Ci, H, W], view: xv, data: allocHost("f32", 0) };
  x.data = values(rng, "f32", size(baseShape(x)), -1, 1);
  const wv: View = rng.bool(0.3)
    ? { kind: "flip", axes: [3, 4] }
    : rng.bool(0.2)
    ? { kind: "transpose", perm: [0, 2, 1, 3, 4] }
    : { kind: "plain" };
  const w: Operand = { dtype: "f32", shape: [G, Co, Ci, KH, KW], view: wv, data: allocHost("f32", 0) };
  w.data = values(rng, "f32", size(baseShape(w)), -1, 1);
  return { x, w, p };
}

Deno.test("wasm conv matches cpu (groups, stride, signed padding, lhs/rhs dilation, view operands)", () => {
  prop((rng) => {
    const c = convCase(rng);
    if (c) check("conv", [c.x, c.w], c.p, { sumScale: true });
  }, Math.round(RUNS * 1.5));
});

Deno.test("wasm conv: larger cases, depthwise, and the shapes of both gradients of a 3x3 conv", () => {
  const rng = new Rng(11);
  for (let i = 0; i < 6; i++) {
    const c = convCase(rng, true);
    if (c) check("conv", [c.x, c.w], c.p, { sumScale: true });
  }
  const same = { stride: [1, 1], padding: [[1, 1], [1, 1]], lhsDilation: [1, 1], rhsDilation: [1, 1] } as const;
  const plain = (shape: number[]): Operand => ({
    dtype: "f32",
    shape,
    view: { kind: "plain" },
    data: values(rng, "f32", size(shape)),
  });
  // forward 3x3 same, a depthwise one and a strided one (per-image columns and folded columns)
  check("conv", [plain([2, 1, 16, 12, 12]), plain([1, 24, 16, 3, 3])], same, { sumScale: true });
  check("conv", [plain([3, 16, 1, 9, 11]), plain([16, 1, 1, 3, 3])], same, { sumScale: true });
  check("conv", [plain([2, 1, 5, 17, 15]), plain([1, 7, 5, 3, 3])], { ...same, stride: [2, 2] }, { sumScale: true });
  // weight gradient of a 3x3 same conv: x^T [Ci,G,N,H,W] with the cotangent [G,Co,N,OH,OW] as the kernel
  const x = plain([2, 1, 6, 10, 10]);
  const xt: Operand = { ...x, shape: [6, 1, 2, 10, 10], view: { kind: "transpose", perm: [2, 1, 0, 3, 4] } };
  const ct: Operand = {
    dtype: "f32",
    shape: [1, 8, 2, 10, 10],
    view: { kind: "transpose", perm: [1, 2, 0, 3, 4] },
    data: values(rng, "f32", 2 * 8 * 100),
  };
  check("conv", [xt, ct], same, { sumScale: true });
  // ... and of a depthwise one (kernel 10x9 over 3x3 outputs: the dot-product kernel), with a tail of KW % 4
  const xd = plain([2, 5, 1, 10, 9]);
  const xdt: Operand = { ...xd, shape: [1, 5, 2, 10, 9], view: { kind: "transpose", perm: [2, 1, 0, 3, 4] } };
  const cd: Operand = {
    dtype: "f32",
    shape: [5, 1, 2, 10, 9],
    view: { kind: "transpose", perm: [1, 2, 0, 3, 4] },
    data: values(rng, "f32", 2 * 5 * 90),
  };
  check("conv", [xdt, cd], same, { sumScale: true });
});

// ---------------------------------------------------------------- indexing

Deno.test("wasm gather and scatterAdd match cpu", () => {
  prop((rng) => {
    const dt = (["f32", "i32", "bool", "f64"] as const)[rng.int(0, 3)];
    const shape = shapeOf(rng, 3);
    if (shape.length === 0) shape.push(4);
    const axis = rng.int(0, shape.length - 1);
    const idxShape = shapeOf(rng, 2);
    const idx = new Int32Array(size(idxShape)).map(() => rng.int(0, shape[axis] - 1));
    const io: Operand = { dtype: "i32", shape: idxShape, view: { kind: "plain" }, data: idx };
    check("gather", [operand(rng, dt, shape), io], { axis });
    if (dt === "f32" || dt === "i32" || dt === "f64") {
      const ushape = [...shape.slice(0, axis), ...idxShape, ...shape.slice(axis + 1)];
      check("scatterAdd", [operand(rng, dt, ushape), io], { axis, size: shape[axis] }, { sumScale: true });
    }
  });
});

// ---------------------------------------------------------------- movement

Deno.test("wasm movement primitives (reshape, transpose, broadcast, slice, flip, pad, concat) match cpu", () => {
  prop((rng) => {
    const dt = (["f32", "i32", "bool", "f64", "u32"] as const)[rng.int(0, 4)];
    const shape = shapeOf(rng);
    const x = operand(rng, dt, shape);
    const r = shape.length;
    const perm = rng.perm(r);
    check("transpose", [x], { perm });
    check("reshape", [x], { shape: rng.bool() ? [size(shape)] : [...shape].reverse() });
    // A random regrouping (split dims into factors, merge neighbours, insert 1s): a view when strides allow.
    const factors = shape.flatMap((n) => {
      const f = [2, 3, 5, 7].find((q) => n % q === 0 && n > q && rng.bool());
      return f ? [f, n / f] : [n];
    });
    const regroup: number[] = [];
    for (const f of factors) {
      if (regroup.length && rng.bool(0.3)) regroup[regroup.length - 1] *= f;
      else regroup.push(f);
      if (rng.bool(0.15)) regroup.push(1);
    }
    check("reshape", [x], { shape: regroup });
    check("broadcast", [x], { shape: [rng.int(1, 3), ...shape] });
    check("flip", [x], { axes: shape.map((_, i) => i).filter(() => rng.bool()) });
    const starts = shape.map((n) => rng.int(0, n - 1));
    const ends = shape.map((n, i) => rng.int(starts[i], n));
    check("slice", [x], { starts, ends, steps: shape.map(() => rng.int(1, 3)) });
    check("pad", [x], {
      widths: shape.map(() => [rng.int(0, 2), rng.int(0, 2), rng.int(0, 2)] as [number, number, number]),
    });
    if (r > 0) {
      const axis = rng.int(0, r - 1);
      const parts = Array.from({ length: rng.int(1, 3) }, () => {
        const s = [...shape];
        s[axis] = rng.int(0, 3);
        return operand(rng, dt, s);
      });
      check("concat", [x, ...parts], { axis });
    }
  });
});

// ---------------------------------------------------------------- softmax

Deno.test("wasm softmax matches cpu (rows of every length, views, f32 and f64, masked rows)", () => {
  prop((rng) => {
    const shape = shapeOf(rng, 3);
    if (shape.length === 0) shape.push(rng.int(1, 40));
    const dt: DType = rng.bool(0.8) ? "f32" : "f64";
    const o = operand(rng, dt, shape, { lo: -10, hi: 10 });
    // Masked scores: some -inf entries, sometimes a whole row (which gives NaN, as torch).
    if (rng.bool(0.3)) {
      for (let i = 0; i < o.data.length; i++) if (rng.bool(0.2)) o.data[i] = -Infinity;
    }
    check("softmax", [o], {});
  });
  // Long rows and many rows (the parallel path), a huge offset and a NaN row.
  const rng = new Rng(11);
  const big = operand(rng, "f32", [97, 1029], { lo: -30, hi: 30, views: false });
  check("softmax", [big], {});
  const shifted = operand(rng, "f32", [5, 7], { lo: 1e4, hi: 1e4 + 5, views: false });
  shifted.data[9] = NaN;
  check("softmax", [shifted], {});
});

Deno.test("wasm layerNorm matches cpu (rows of every length, views, f32 and f64, constant rows)", () => {
  prop((rng) => {
    const shape = shapeOf(rng, 3);
    if (shape.length === 0) shape.push(rng.int(1, 40));
    const dt: DType = rng.bool(0.8) ? "f32" : "f64";
    const o = operand(rng, dt, shape, { lo: -10, hi: 10 });
    // A constant row has zero variance: the output is 0 (x − mean is exactly 0).
    if (rng.bool(0.2)) o.data.fill(3.5);
    const eps = rng.bool() ? 1e-6 : 0.1;
    check("layerNorm", [o], { eps }, { scale: lnScale(o, eps) });
  });
  const rng = new Rng(12);
  const big = operand(rng, "f32", [211, 1029], { lo: 100, hi: 102, views: false });
  check("layerNorm", [big], { eps: 1e-5 }, { scale: lnScale(big, 1e-5) });
});

/** f32 rounds x − mean to ulps of max|x|: LayerNorm's error scale is |y| + max|x|/σ per row. */
function lnScale(o: Operand, eps: number): Float64Array {
  const x = runOn(cpu, "neg", [o], {}).v, R = o.shape[o.shape.length - 1];
  const scale = new Float64Array(x.length);
  for (let r0 = 0; r0 < x.length; r0 += R) {
    const row = Array.from(x.subarray(r0, r0 + R), Number);
    const m = row.reduce((a, b) => a + b, 0) / R;
    const sd = Math.sqrt(row.reduce((a, b) => a + (b - m) ** 2, 0) / R + eps);
    const big = row.reduce((a, b) => Math.max(a, Math.abs(b)), 0) / sd;
    row.forEach((v, j) => (scale[r0 + j] = Math.abs((v - m) / sd) + big));
  }
  return scale;
}

Deno.test("wasm adamw matches cpu on all three outputs (f32 fused pass, f64 composite, views, parallel sizes)", () => {
  prop((rng) => {
    const big = rng.bool(0.1);
    const shape = big ? [rng.int(100, 300), 257] : shapeOf(rng);
    const dt: DType = rng.bool(0.8) ? "f32" : "f64";
    const ops = [0, 1, 2, 3].map((k) => operand(rng, dt, shape, { lo: k === 3 ? 0 : -2, hi: 2, views: !big }));
    const b1 = rng.real(0.5, 0.99), b2 = rng.real(0.9, 0.9999), t = rng.int(1, 1000);
    check("adamw", ops, {
      b1,
      c1: 1 - b1,
      b2,
      c2: 1 - b2,
      bc2: Math.sqrt(1 - b2 ** t),
      eps: rng.bool() ? 1e-8 : 1e-3,
      decay: rng.bool() ? 1 : 1 - 1e-4,
      negStep: -rng.real(1e-5, 1e-2) / (1 - b1 ** t),
    });
  }, 30);
});

// ---------------------------------------------------------------- PRNG

Deno.test("wasm random bits and uniforms are bit-identical to cpu", () => {
  prop((rng) => {
    const key: [number, number] = [rng.int(0, 0xffffffff), rng.int(0, 0xffffffff)];
    const shape = shapeOf(rng);
    check("random", [], { key, shape, dtype: "u32", dist: "bits" }, { exact: true });
    check("random", [], { key, shape, dtype: "f32", dist: "uniform" }, { exact: true });
    check("random", [], { key, shape, dtype: "f64", dist: "uniform" }, { exact: true });
  }, 20);
});

// ---------------------------------------------------------------- parallel paths

Deno.test("wasm large operands (parallel chunks) match cpu", () => {
  const rng = new Rng(3);
  const big = (shape: number[], view: View = { kind: "plain" }, lo = -3, hi = 3): Operand => {
    const o = { dtype: "f32" as DType, shape, view, data: allocHost("f32", 0) };
    o.data = values(rng, "f32", size(baseShape(o)), lo, hi);
    return o;
  };
  const s = [67, 1031];
  for (const op of ["exp", "tanh", "sigmoid", "erf", "neg"] as const) check(op, [big(s)], {});
  check("log", [big(s, { kind: "plain" }, 0.01, 9)], {});
  check("add", [big(s), big(s, { kind: "broadcast", base: [1031] })], {});
  check("mul", [big(s), big(s, { kind: "transpose", perm: [1, 0] })], {});
  check("compare", [big(s), big(s, { kind: "broadcast", base: [67, 1] })], { op: "lt" });
  check("sum", [big([300, 517])], { axes: [1], keepdims: false }, { sumScale: true });
  check("sum", [big([300, 517])], { axes: [0], keepdims: false }, { sumScale: true });
  check("sum", [big([70001])], { axes: [0], keepdims: false }, { sumScale: true });
  check("max", [big([3, 301, 77])], { axes: [0, 2], keepdims: true });
  check("max", [big([2, 40001])], { axes: [1], keepdims: false });
  check("transpose", [big([300, 301])], { perm: [1, 0] });
  check("pad", [big([200, 201])], { widths: [[1, 2, 0], [3, 0, 1]] });
});

Deno.test("wasm GEMM results do not depend on the number of threads", () => {
  const rng = new Rng(5);
  const a = matOperand(rng, "f32", 2, 150, 300), b = matOperand(rng, "f32", 2, 300, 90);
  const one = runOn(single, "dot", [a, b], {}).v, two = runOn(multi, "dot", [a, b], {}).v;
  assert.deepEqual(Array.from(one), Array.from(two));
});

/** Runs `steps` (each a primitive over earlier results; 0 = the input) on a backend; returns the last result. */
function chainOn(b: Backend, input: Operand, steps: [Prim, number[], unknown][]): TypedArray {
  const hs: [Handle, Aval][] = [materialise(b, input)];
  for (const [prim, args, params] of steps) {
    hs.push(bindOn(b, prim, args.map((i) => hs[i][0]), args.map((i) => hs[i][1]), params as ParamsOf[typeof prim]));
  }
  const [h, aval] = hs[hs.length - 1];
  const v = b.readSync!(h, aval);
  for (const [x] of hs) b.release(x);
  return v;
}

Deno.test("chains: a result's layout, dtype and views feed the next primitive correctly", () => {
  const rng = new Rng(21);
  const cases: [Operand, [Prim, number[], unknown][]][] = [
    // i32 -> u32 cast (a bit copy) then host-loop u32 division must read the values as unsigned
    [{ dtype: "i32", shape: [7], view: { kind: "plain" }, data: new Int32Array([-1, -7, 5, -2147483648, 0, 9, -3]) }, [
      ["cast", [0], { dtype: "u32" }],
      ["argmax", [1], { axis: 0, keepdims: false }],
    ]],
    [{ dtype: "i32", shape: [4], view: { kind: "plain" }, data: new Int32Array([-1, 7, 5, -9]) }, [
      ["cast", [0], { dtype: "u32" }],
      ["neg", [1], {}],
      ["div", [1, 2], {}],
    ]],
    // an elementwise op on a transposed view returns that layout; reshape, reduce and GEMM consume it
    [operand(rng, "f32", [13, 9], { views: false }), [
      ["transpose", [0], { perm: [1, 0] }],
      ["exp", [1], {}],
      ["mul", [2, 1], {}],
      ["reshape", [3], { shape: [3, 3, 13] }],
      ["sum", [4], { axes: [1], keepdims: false }],
      ["reshape", [3], { shape: [1, 9, 13] }],
      ["transpose", [6], { perm: [0, 2, 1] }],
      ["dot", [6, 7], {}],
    ]],
    // bool casts and where
    [operand(rng, "f32", [5, 6], { views: false }), [
      ["cast", [0], { dtype: "bool" }],
      ["cast", [1], { dtype: "f32" }],
      ["cast", [0], { dtype: "i32" }],
      ["cast", [3], { dtype: "f32" }],
      ["compare", [0, 4], { op: "gt" }],
      ["where", [5, 2, 4], {}],
    ]],
  ];
  for (const [input, steps] of cases) {
    const ref = chainOn(cpu, input, steps);
    for (const [name, b] of WASMS) {
      const got = chainOn(b, input, steps);
      for (let i = 0; i < ref.length; i++) {
        const r = Number(ref[i]), g = Number(got[i]);
        assert.ok(
          Math.abs(r - g) <= 1e-5 * Math.abs(r) + 1e-6,
          `chain ${steps.map((s) => s[0]).join(">")} (${name}) [${i}]: ${g} vs ${r}`,
        );
      }
    }
  }
});

// ---------------------------------------------------------------- registry, errors, selection

/** One entry per primitive (a primitive missing here fails to compile). */
const COVERED: { [P in Prim]: true } = Object.fromEntries(PRIMS.map((p) => [p, true])) as { [P in Prim]: true };

Deno.test("every primitive of the registry was exercised against the cpu oracle", () => {
  const missing = (Object.keys(COVERED) as Prim[]).filter((p) => !exercised.has(p));
  assert.deepEqual(missing, [], `primitives never checked on wasm: ${missing.join(", ")}`);
  assert.equal(PRIMS.length, Object.keys(COVERED).length);
});

Deno.test("wasm rejects f16 with a DTypeError naming the dtype", () => {
  assert.throws(
    () => single.fromHost(new Float32Array(2) as unknown as TypedArray, { shape: [2], dtype: "f16" }),
    /f16/,
  );
});

Deno.test("wasm reports its configuration; without SharedArrayBuffer it runs on one thread", () => {
  const m = multi as unknown as { threads: number; relaxedSimd: boolean };
  assert.ok(m.threads >= 1);
  assert.equal((single as unknown as { threads: number }).threads, 1);
  assert.equal((unshared as unknown as { threads: number }).threads, 1);
  assert.equal(typeof m.relaxedSimd, "boolean");
});

Deno.test("a kernel that traps on any thread raises an error and leaves the pool usable", () => {
  for (const [, b] of WASMS) {
    const rt = (b as unknown as {
      rt: { args(w: number[]): number; run(name: string, a: number, n: number, par: boolean): void };
    }).rt;
    // A copy whose source lies past the end of the memory: every chunk traps.
    const a = rt.args([64, 0x7ffffff0, 1, 1, 64, 1024, 0, 0, 0, 1, 0, 0, 0, 1, 1]);
    assert.throws(() => rt.run("copy_e4", a, 64, true));
    const rng = new Rng(1);
    check("dot", [matOperand(rng, "f32", 2, 40, 50), matOperand(rng, "f32", 2, 50, 30)], {}, { sumScale: true });
  }
});

Deno.test("wasm out-of-range gather/scatterAdd indices throw a ShapeError naming the index, without leaking", () => {
  for (const [, b] of WASMS) {
    const before = b.liveBuffers();
    const x = b.fromHost(new Float32Array(6), { shape: [2, 3], dtype: "f32" });
    const idx = b.fromHost(new Int32Array([0, 3]), { shape: [2], dtype: "i32" });
    const ins: Aval[] = [{ shape: [2, 3], dtype: "f32" }, { shape: [2], dtype: "i32" }];
    assert.throws(
      () => bindOn(b, "gather", [x, idx], ins, { axis: 1 }),
      /gather: index 3 is out of range for an axis of size 3/,
    );
    assert.throws(
      () =>
        bindOn(b, "scatterAdd", [x, idx], [{ shape: [2, 3], dtype: "f32" }, { shape: [3], dtype: "i32" }], {
          axis: 1,
          size: 3,
        }),
      /scatterAdd/,
    );
    b.release(x);
    b.release(idx);
    assert.equal(b.liveBuffers(), before);
  }
});

Deno.test("host-loop kernels stay correct when their output allocation grows an unshared heap", async () => {
  const rng = new Rng(13);
  const big = 1 << 20;
  const cases: [Prim, Operand[], unknown][] = [
    ["gather", [operand(rng, "f32", [4, 3], { views: false }), {
      dtype: "i32",
      shape: [big],
      view: { kind: "plain" },
      data: new Int32Array(big).map(() => rng.int(0, 3)),
    }], { axis: 0 }],
    ["cumsum", [operand(rng, "f32", [big], { views: false })], { axis: 0, reverse: false }],
    ["argmax", [operand(rng, "f32", [big, 2], { views: false })], { axis: 1, keepdims: false }],
    ["scatterAdd", [operand(rng, "f32", [64], { views: false }), {
      dtype: "i32",
      shape: [64],
      view: { kind: "plain" },
      data: new Int32Array(64).map(() => rng.int(0, big - 1)),
    }], { axis: 0, size: big }],
  ];
  for (const [prim, ops, params] of cases) {
    const fresh = await createWasmBackend({ shared: false });
    const before = (fresh as unknown as { heapBytes(): number }).heapBytes();
    const got = runOn(fresh, prim, ops, params as ParamsOf[typeof prim]);
    assert.ok((fresh as unknown as { heapBytes(): number }).heapBytes() > before, `${prim} grew the heap`);
    const ref = runOn(cpu, prim, ops, params as ParamsOf[typeof prim]);
    for (let i = 0; i < ref.v.length; i++) {
      const r = Number(ref.v[i]), g = Number(got.v[i]);
      assert.ok(Math.abs(r - g) <= 1e-5 * Math.abs(r) + 1e-4, `${prim} [${i}]: wasm ${g} vs cpu ${r}`);
    }
    exercised.add(prim);
  }
});

Deno.test("autoSelectBackend picks wasm unless a hardware WebGPU adapter exists", async () => {
  const choice = await autoSelectBackend();
  assert.ok(choice === "wasm" || choice === "webgpu");
  const nav = (globalThis as {
    navigator?: { gpu?: { requestAdapter(): Promise<{ info?: { isFallbackAdapter?: boolean } } | null> } };
  })
    .navigator;
  const adapter = nav?.gpu ? await nav.gpu.requestAdapter() : null;
  assert.equal(choice, adapter?.info?.isFallbackAdapter === false ? "webgpu" : "wasm");
});

Deno.test("the wasm heap splits and coalesces blocks: no overlap, freed memory reused, footprint back to zero", () => {
  prop((rng) => {
    let limit = 1 << 16;
    const heap = new Heap(4096, (end) => {
      if (end > 1 << 26) return false;
      limit = Math.max(limit, end);
      return true;
    });
    const live = new Map<number, number>();
    for (let step = 0; step < 300; step++) {
      if (live.size && rng.bool(0.45)) {
        const keys = [...live.keys()];
        const p = keys[rng.int(0, keys.length - 1)];
        heap.free(p);
        live.delete(p);
      } else {
        const bytes = rng.bool(0.2) ? rng.int(1, 100) : rng.int(1, 200000);
        const p = heap.alloc(bytes);
        assert.ok(p >= 4096 && p % 64 === 0 && heap.sizeOf(p) >= bytes);
        for (const [q, n] of live) assert.ok(p + bytes <= q || q + n <= p, `block ${p}+${bytes} overlaps ${q}+${n}`);
        live.set(p, bytes);
      }
      heap.check(4096);
    }
    // Freed memory is reused before the footprint grows.
    const a = heap.alloc(5000);
    const top = heap.top;
    heap.free(a);
    const b = heap.alloc(5000);
    assert.ok(heap.top <= top, "a freed block of the right size is reused");
    live.set(b, 5000);
    for (const p of live.keys()) heap.free(p);
    heap.check(4096);
    assert.equal(heap.top, 4096, "everything freed: the footprint is back to the base");
    assert.equal(heap.live, 0);
    assert.equal(heap.alloc(1 << 27), -1, "an allocation the memory cannot hold returns -1");
  }, 20);
});

// ---------------------------------------------------------------- leak test

Deno.test("a 200-step training loop on wasm keeps live buffers flat", async () => {
  await d.setBackend("wasm");
  try {
    const key = d.randomKey(0);
    const [k1, k2, k3] = d.random.split(key, 3);
    let params: Record<string, Tensor> = {
      w1: d.keep(d.tidy(() => d.mul(d.random.normal(k1, [16, 32]), 0.2))),
      b1: d.keep(d.zeros([32])),
      w2: d.keep(d.tidy(() => d.mul(d.random.normal(k2, [32, 4]), 0.2))),
    };
    const x = d.keep(d.random.normal(k3, [64, 16]));
    const y = d.keep(d.tidy(() => d.sin(d.sum(x, { axis: 1, keepdims: true }))));
    const loss = (p: Record<string, Tensor>) => {
      const h = d.tanh(d.add(d.matmul(x, p.w1), p.b1));
      return d.mean(d.square(d.sub(d.matmul(h, p.w2), y)));
    };
    const step = d.valueAndGrad(loss);
    let first = 0, firstLoss = 0, lastLoss = 0;
    for (let i = 0; i < 200; i++) {
      const [next, l] = d.tidy(() => {
        const [v, g] = step(params) as [Tensor, Record<string, Tensor>];
        return [
          Object.fromEntries(Object.entries(params).map(([k, p]) => [k, d.sub(p, d.mul(g[k], 0.1))])),
          v,
        ] as const;
      });
      d.dispose(params);
      params = next as Record<string, Tensor>;
      const lv = (await (l as Tensor).data())[0];
      (l as Tensor).dispose();
      if (i === 0) firstLoss = lv;
      lastLoss = lv;
      if (i === 9) first = d.liveBuffers();
      if (i > 9) assert.equal(d.liveBuffers(), first, `live buffers grew at step ${i}`);
    }
    assert.ok(lastLoss < firstLoss, `loss fell (${firstLoss} -> ${lastLoss})`);
    d.dispose([params, x, y]);
  } finally {
    await d.setBackend("cpu");
  }
});
