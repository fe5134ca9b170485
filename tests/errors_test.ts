/**
 * @file Bad input gets a clear library error: the message names the op and
 * the offending shapes/dtypes/axes, and the error is a DifflabError (never a
 * bare TypeError/RangeError from deep inside a kernel).
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import * as d from "../mod.ts";
import type { Tensor } from "../mod.ts";
import { describe } from "../tensor/errors.ts";

// These are oracle tests in f64: pin the reference backend whatever the default becomes.
await d.setBackend("cpu");

/** Asserts `fn` throws an instance of `cls` whose message contains every `parts` substring. */
function throwsWith(fn: () => unknown, cls: typeof d.DifflabError, ...parts: string[]) {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(caught !== undefined, `expected a ${cls.name}, nothing was thrown`);
  assert.ok(caught instanceof cls, `expected a ${cls.name}, got ${String(caught)}`);
  const msg = (caught as Error).message;
  for (const p of parts) {
    assert.ok(msg.includes(p), `message ${JSON.stringify(msg)} should mention ${JSON.stringify(p)}`);
  }
}

Deno.test("shape mismatch names the op and both shapes", () => {
  const a = d.zeros([2, 3]), b = d.zeros([4]);
  throwsWith(() => d.add(a, b), d.ShapeError, "add", "[2,3]", "[4]");
  throwsWith(() => d.mul(b, a), d.ShapeError, "mul", "[4]", "[2,3]");
  throwsWith(() => d.sub(a, d.zeros([3, 3])), d.ShapeError, "sub", "[2,3]", "[3,3]");
  throwsWith(() => d.where(d.greater(b, 0), a, a), d.ShapeError, "where", "[4]", "[2,3]");
  throwsWith(() => d.less(a, b), d.ShapeError, "[2,3]", "[4]");
});

Deno.test("dtype mismatch names both dtypes", () => {
  throwsWith(() => d.add(d.zeros([2], "f32"), d.zeros([2], "f64")), d.DTypeError, "add", "f32", "f64");
  throwsWith(() => d.mul(d.zeros([2], "i32"), d.zeros([2], "f32")), d.DTypeError, "mul", "i32", "f32");
  throwsWith(() => d.matmul(d.zeros([2, 2], "f64"), d.zeros([2, 2])), d.DTypeError, "matmul", "f64", "f32");
  throwsWith(() => d.concat([d.zeros([2], "f32"), d.zeros([2], "i32")]), d.DTypeError, "concat", "f32", "i32");
  throwsWith(() => d.where(d.zeros([2], "f32"), 1, 2), d.DTypeError, "where", "f32");
  throwsWith(() => d.exp(d.zeros([2], "i32")), d.DTypeError, "exp", "i32");
  throwsWith(() => d.take(d.zeros([3]), d.zeros([2])), d.DTypeError, "take", "f32");
});

Deno.test("out-of-range axis names the axis and the rank", () => {
  const x = d.zeros([2, 3]);
  throwsWith(() => d.sum(x, { axis: 2 }), d.ShapeError, "sum", "axis 2", "rank 2");
  throwsWith(() => d.mean(x, { axis: -3 }), d.ShapeError, "mean", "-3", "rank 2");
  throwsWith(() => d.max(x, { axis: [0, 5] }), d.ShapeError, "max", "5", "rank 2");
  throwsWith(() => d.softmax(x, 2), d.ShapeError, "2", "rank 2");
  throwsWith(() => d.concat([x, x], 2), d.ShapeError, "concat", "rank 2");
  throwsWith(() => d.flip(x, 7), d.ShapeError, "flip", "7", "rank 2");
  throwsWith(() => d.cumsum(x, 2), d.ShapeError, "cumsum", "rank 2");
  throwsWith(() => d.argmax(x, { axis: 9 }), d.ShapeError, "argmax", "rank 2");
  throwsWith(() => d.transpose(x, [0, 2]), d.ShapeError, "transpose", "rank 2");
  throwsWith(() => d.sum(d.zeros([]), { axis: 0 }), d.ShapeError, "sum", "rank 0");
});

Deno.test("matmul inner-dimension mismatch names both shapes", () => {
  throwsWith(() => d.matmul(d.zeros([2, 3]), d.zeros([4, 5])), d.ShapeError, "matmul", "[2,3]", "[4,5]");
  throwsWith(() => d.matmul(d.zeros([3]), d.zeros([4])), d.ShapeError, "matmul", "[3]", "[4]");
  throwsWith(() => d.matmul(d.zeros([2, 2, 3]), d.zeros([3, 3, 4])), d.ShapeError, "matmul", "[2]", "[3]");
  throwsWith(() => d.matmul(d.zeros([]), d.zeros([2])), d.ShapeError, "matmul");
});

Deno.test("reshape size mismatch names both shapes", () => {
  throwsWith(() => d.reshape(d.zeros([2, 3]), [4, 2]), d.ShapeError, "reshape", "[2,3]", "[4,2]");
  throwsWith(() => d.reshape(d.zeros([2, 3]), [4, -1]), d.ShapeError, "reshape", "[2,3]", "[4,-1]");
  throwsWith(() => d.reshape(d.zeros([2, 3]), [-1, -1]), d.ShapeError, "reshape");
  throwsWith(() => d.reshape(d.zeros([2, 3]), [2.5, 2]), d.ShapeError, "reshape");
  throwsWith(() => d.tensor([1, 2, 3], { shape: [2, 2] }), d.ShapeError, "tensor", "[2,2]");
});

Deno.test("conv2d groups/channel mismatch names the shapes and groups", () => {
  const x = d.zeros([1, 4, 5, 5]);
  throwsWith(
    () => d.conv2d(x, d.zeros([6, 3, 3, 3]), { groups: 2 }),
    d.ShapeError,
    "conv2d",
    "[1,4,5,5]",
    "[6,3,3,3]",
    "groups=2",
  );
  throwsWith(() => d.conv2d(x, d.zeros([5, 2, 3, 3]), { groups: 2 }), d.ShapeError, "conv2d", "[5,2,3,3]", "groups=2");
  throwsWith(() => d.conv2d(x, d.zeros([6, 4, 3, 3]), { groups: 0 }), d.ShapeError, "conv2d", "groups=0");
  throwsWith(() => d.conv2d(x, d.zeros([6, 3, 3, 3])), d.ShapeError, "conv2d", "[1,4,5,5]", "[6,3,3,3]");
  throwsWith(() => d.conv2d(d.zeros([4, 5, 5]), d.zeros([6, 4, 3, 3])), d.ShapeError, "conv2d", "[4,5,5]");
  throwsWith(() => d.conv2d(x, d.zeros([2, 4, 7, 7])), d.ShapeError, "[7,7]", "[5,5]");
  throwsWith(() => d.conv2d(x, d.zeros([2, 4, 3, 3]), { stride: 0 }), d.ShapeError, "conv2d", "stride");
});

Deno.test("concat and stack mismatches name the shapes", () => {
  throwsWith(() => d.concat([d.zeros([2, 3]), d.zeros([2, 4])], 0), d.ShapeError, "concat", "[2,3]", "[2,4]");
  throwsWith(() => d.concat([d.zeros([2, 3]), d.zeros([2, 3, 1])], 1), d.ShapeError, "concat", "[2,3]", "[2,3,1]");
  throwsWith(() => d.concat([]), d.ShapeError, "concat");
  throwsWith(() => d.stack([d.zeros([2]), d.zeros([3])]), d.ShapeError, "stack", "[2]", "[3]");
});

Deno.test("tensor(): ragged arrays, bad dtypes and bad values", () => {
  throwsWith(() => d.tensor([[1, 2], [3]]), d.ShapeError, "tensor", "ragged");
  throwsWith(() => d.tensor([[1, 2], 3] as unknown as number[][]), d.DifflabError, "tensor");
  throwsWith(() => d.tensor([[[1], [2]], [[3]]]), d.ShapeError, "tensor", "ragged");
  throwsWith(() => d.tensor([1, "a"] as unknown as number[]), d.DifflabError, "tensor", '"a"');
  throwsWith(() => d.tensor([1, 2], { dtype: "f8" as d.DType }), d.DTypeError, "tensor", '"f8"', "f32");
  throwsWith(() => d.zeros([2], "float" as d.DType), d.DTypeError, '"float"');
  throwsWith(() => d.full([2], 1, "int" as d.DType), d.DTypeError, "full", '"int"');
  throwsWith(() => d.arange(3, undefined, 1, "x" as d.DType), d.DTypeError, "arange", '"x"');
  throwsWith(() => d.cast(d.zeros([2]), "f65" as d.DType), d.DTypeError, "cast", '"f65"');
  throwsWith(() => d.zeros([2, -1]), d.ShapeError, "[2,-1]");
});

Deno.test('setBackend("nope") rejects naming the backend and the available ones', async () => {
  const before = d.getBackend();
  await assert.rejects(
    () => d.setBackend("nope" as d.BackendName),
    (e: unknown) =>
      e instanceof d.DifflabError && /"nope"/.test((e as Error).message) && /cpu/.test((e as Error).message),
  );
  assert.equal(d.getBackend(), before, "a failed setBackend leaves the backend unchanged");
});

Deno.test("non-tensor operands get a DifflabError naming the op", () => {
  throwsWith(() => d.exp(null as unknown as Tensor), d.DifflabError, "exp");
  throwsWith(() => d.add("1" as unknown as Tensor, d.zeros([1])), d.DifflabError, "add");
  throwsWith(() => d.sum([1, 2] as unknown as Tensor), d.DifflabError, "sum");
  throwsWith(() => d.matmul(d.zeros([2, 2]), {} as Tensor), d.DifflabError, "matmul");
});

// ---------------------------------------------------------------- property: random invalid calls

const dimArb = fc.integer({ min: 1, max: 5 });
const shapeArb = fc.array(dimArb, { minLength: 0, maxLength: 4 });

/** True when two shapes broadcast under NumPy rules (independent of the library). */
function broadcasts(a: number[], b: number[]): boolean {
  for (let i = 1; i <= Math.min(a.length, b.length); i++) {
    const x = a[a.length - i], y = b[b.length - i];
    if (x !== y && x !== 1 && y !== 1) return false;
  }
  return true;
}

/** Runs `fn` and checks it throws a DifflabError (not TypeError/RangeError) mentioning `parts`. */
function mustThrowLibraryError(fn: () => unknown, ...parts: string[]) {
  try {
    fn();
  } catch (e) {
    if (!(e instanceof d.DifflabError)) {
      throw new Error(`expected DifflabError, got ${(e as Error)?.name}: ${String(e)}`);
    }
    for (const p of parts) {
      if (!e.message.includes(p)) throw new Error(`message ${JSON.stringify(e.message)} should mention ${p}`);
    }
    return;
  }
  throw new Error("expected a DifflabError, nothing was thrown");
}

const fmt = (s: number[]) => `[${s.join(",")}]`;

Deno.test("property: non-broadcastable shapes always throw a DifflabError naming both shapes", () => {
  const ops: [string, (a: Tensor, b: Tensor) => Tensor][] = [
    ["add", d.add],
    ["sub", d.sub],
    ["mul", d.mul],
    ["div", d.div],
    ["pow", d.pow],
    ["maximum", d.maximum],
    ["minimum", d.minimum],
    ["where", (a, b) => d.where(d.greater(a, 0), a, b)],
    ["equal", d.equal],
  ];
  fc.assert(
    fc.property(
      shapeArb,
      shapeArb,
      fc.constantFrom(...ops),
      (a, b, [name, op]) => {
        fc.pre(!broadcasts(a, b));
        mustThrowLibraryError(() => op(d.zeros(a), d.zeros(b)), fmt(a), fmt(b));
        mustThrowLibraryError(() => d.broadcastTo(d.zeros(a), b), "broadcastTo");
        void name;
      },
    ),
    { numRuns: 100 },
  );
});

Deno.test("property: bad axes always throw a DifflabError naming the rank", () => {
  const badAxis = (rank: number) =>
    fc.oneof(
      fc.integer({ min: rank, max: rank + 5 }),
      fc.integer({ min: -rank - 5, max: -rank - 1 }),
      fc.constantFrom(0.5, 1.5, NaN, Infinity),
    );
  const calls: [string, (x: Tensor, ax: number) => unknown][] = [
    ["sum", (x, ax) => d.sum(x, { axis: ax })],
    ["sum keepdims", (x, ax) => d.sum(x, { axis: [ax], keepdims: true })],
    ["mean", (x, ax) => d.mean(x, { axis: ax })],
    ["max", (x, ax) => d.max(x, { axis: ax })],
    ["min", (x, ax) => d.min(x, { axis: ax })],
    ["argmax", (x, ax) => d.argmax(x, { axis: ax })],
    ["softmax", (x, ax) => d.softmax(x, ax)],
    ["logsumexp", (x, ax) => d.logsumexp(x, { axis: ax })],
    ["cumsum", (x, ax) => d.cumsum(x, ax)],
    ["cumprod", (x, ax) => d.cumprod(x, ax)],
    ["flip", (x, ax) => d.flip(x, ax)],
    ["concat", (x, ax) => d.concat([x, x], ax)],
    ["take", (x, ax) => d.take(x, d.tensor([0], { dtype: "i32" }), ax)],
    ["squeeze", (x, ax) => d.squeeze(x, [ax])],
    ["split", (x, ax) => d.split(x, 1, ax)],
  ];
  fc.assert(
    fc.property(
      shapeArb.chain((s) => fc.tuple(fc.constant(s), badAxis(s.length), fc.constantFrom(...calls))),
      ([shape, axis, [name, call]]) => {
        mustThrowLibraryError(() => call(d.zeros(shape), axis), `rank ${shape.length}`);
        void name;
      },
    ),
    { numRuns: 150 },
  );
});

Deno.test("property: random invalid movement/matmul/conv calls throw DifflabError, never TypeError/RangeError", () => {
  const invalid = fc.oneof(
    // reshape to a size that differs
    fc.tuple(shapeArb, shapeArb).filter(([a, b]) => a.reduce((p, v) => p * v, 1) !== b.reduce((p, v) => p * v, 1)).map(
      ([a, b]) => () => d.reshape(d.zeros(a), b),
    ),
    // matmul with mismatched inner dims
    fc.tuple(dimArb, dimArb, dimArb, dimArb).filter(([, k1, k2]) => k1 !== k2).map(([m, k1, k2, n]) => () =>
      d.matmul(d.zeros([m, k1]), d.zeros([k2, n]))
    ),
    // transpose with a non-permutation
    shapeArb.filter((s) => s.length > 0).chain((s) =>
      fc.array(fc.integer({ min: 0, max: s.length - 1 }), { minLength: 0, maxLength: s.length + 1 })
        .filter((p) => p.length !== s.length || new Set(p).size !== p.length)
        .map((p) => () => d.transpose(d.zeros(s), p))
    ),
    // conv2d whose channels do not divide into the groups
    fc.tuple(dimArb, dimArb, fc.integer({ min: 2, max: 3 })).filter(([c, cg, g]) => c !== cg * g).map(
      ([c, cg, g]) => () => d.conv2d(d.zeros([1, c, 4, 4]), d.zeros([g, cg, 1, 1]), { groups: g }),
    ),
    // slice with a bad step or too many indices
    shapeArb.map((s) => () => d.slice(d.zeros(s), [...s.map(() => 0), 0])),
    shapeArb.filter((s) => s.length > 0).chain((s) =>
      fc.constantFrom(0, -1, 1.5).map((step) => () => d.slice(d.zeros(s), [0], [s[0]], [step]))
    ),
    // slice bounds that are NaN or fractional
    fc.tuple(shapeArb.filter((s) => s.length > 0), fc.constantFrom(NaN, 0.5, -1.5, 2.25), fc.boolean()).map(
      ([s, v, atEnd]) => () => (atEnd ? d.slice(d.zeros(s), [0], [v]) : d.slice(d.zeros(s), [v])),
    ),
    // explicit conv2d padding that is negative or fractional
    fc.tuple(fc.constantFrom(-1, -2, 0.5, NaN), fc.integer({ min: 0, max: 3 })).map(([v, slot]) => () => {
      const q = [[0, 0], [0, 0]] as [[number, number], [number, number]];
      q[slot >> 1][slot & 1] = v;
      return d.conv2d(d.zeros([1, 1, 4, 4]), d.zeros([1, 1, 2, 2]), { padding: q });
    }),
    // counts that are negative, fractional or infinite
    fc.constantFrom(-1, 1.5, NaN, Infinity).chain((n) =>
      fc.constantFrom(
        () => d.oneHot(d.tensor([0, 1], { dtype: "i32" }), n),
        () => d.linspace(0, 1, n),
        () => d.arange(0, n === 1.5 ? Infinity : n === -1 ? -Infinity : n),
        () => d.random.split(d.randomKey(0), n),
        () => d.zeros([2, n]),
      )
    ),
    // pad with negative or too many widths
    shapeArb.map((s) => () => d.pad(d.zeros(s), [...s.map(() => [0, 0] as [number, number]), [1, 1]])),
    shapeArb.filter((s) => s.length > 0).map((s) => () => d.pad(d.zeros(s), [[-1, 0]])),
  );
  fc.assert(fc.property(invalid, (call) => mustThrowLibraryError(call)), { numRuns: 200 });
});

// ---------------------------------------------------------------- property: every public op, random garbage

/** Every function export of mod.ts (top level) and of `d.random`, classes excluded, as [op name, fn]. */
function publicFunctions(): [string, (...a: unknown[]) => unknown][] {
  const isClass = (v: unknown) => /^class\b/.test(Function.prototype.toString.call(v));
  const fns = (ns: object) =>
    Object.entries(ns).filter(([, v]) => typeof v === "function" && !isClass(v)) as [
      string,
      (...a: unknown[]) => unknown,
    ][];
  // Nothing is excluded: `dispose`/`stopGradient`/`leaves`/`isFloat` take any value and return, `setBackend`
  // is async (its rejection is awaited below) and never sees a valid name other than "cpu" here.
  return [...fns(d), ...fns(d.random)];
}

Deno.test("property: every public op given random invalid arguments throws a DifflabError naming the op, never a TypeError/RangeError", async () => {
  const fns = publicFunctions();
  for (const name of ["sum", "grad", "tensor", "tidy", "fromHost", "setBackend", "bernoulli", "randomKey", "treeMap"]) {
    assert.ok(fns.some(([n]) => n === name), `${name} is among the functions under test`);
  }
  const cyclicArray: unknown[] = [];
  cyclicArray.push(cyclicArray);
  const cyclicObject: Record<string, unknown> = {};
  cyclicObject.self = cyclicObject;
  // Tensors are made fresh for every run, since some ops under test (dispose) consume their arguments.
  const tensorArb = fc.constantFrom(
    () => d.zeros([2, 3]),
    () => d.zeros([2, 3], "i32"),
    () => d.zeros([2, 3], "bool"),
    () => d.zeros([3], "f64"),
    () => d.zeros([0, 2]),
    () => d.tensor(1),
    () => d.tensor([0, 1], { dtype: "i32" }),
    () => d.zeros([1, 2, 4, 4]),
    () => d.zeros([2, 1, 3, 3]),
  ).map((make) => make());
  const garbage = fc.oneof(
    fc.constantFrom<unknown>(
      undefined,
      null,
      "x",
      "",
      "f32",
      "i32",
      "cpu",
      true,
      false,
      NaN,
      Infinity,
      -Infinity,
      -1,
      2.5,
      1e12,
      2 ** 31,
      2 ** 53,
      10n,
      Symbol("s"),
      () => 1,
      (x: unknown) => x,
      {},
      [],
      [[1], [2, 3]],
      [1e9, 1e9],
      [[0, 1]],
      [[1, -1]],
      { axis: "a" },
      { axis: 99 },
      { axis: null },
      { keepdims: 1 },
      { dtype: "q" },
      { dtype: "i32" },
      { foo: 1 },
      { shape: [2, -1] },
      { argnums: 5 },
      { hasAux: "yes" },
      { stride: 0 },
      { padding: "x" },
      { padding: [[1, 1], [1]] },
      { groups: 3 },
      { dilation: [1, 2, 3] },
      { argnums: [0, 0] },
      { hasAux: true },
      { axis: [0, "a"] },
      { min: 1, max: 0 },
      new Map(),
      new Float32Array(3),
      new Int32Array(6),
      new BigInt64Array(2),
      new DataView(new ArrayBuffer(4)),
      cyclicArray,
      cyclicObject,
    ),
    fc.constant(d.randomKey(0)),
    fc.integer({ min: -3, max: 5 }),
    fc.array(fc.integer({ min: -2, max: 4 }), { maxLength: 4 }),
    tensorArb,
    fc.array(tensorArb, { minLength: 1, maxLength: 3 }),
  );
  const argsArb = fc.array(garbage, { maxLength: 4 });

  /** Returns a failure description, or null when `run` returned or threw a DifflabError naming `op`. */
  const verdict = async (op: string, run: () => unknown): Promise<string | null> => {
    let err: unknown = null, threw = false;
    try {
      await run();
    } catch (e) {
      [err, threw] = [e, true];
    }
    if (!threw) return null;
    if (!(err instanceof d.DifflabError)) return `threw ${(err as Error)?.name}: ${(err as Error)?.message ?? err}`;
    if (!err.message.includes(op)) return `message ${JSON.stringify(err.message)} does not name ${op}`;
    return null;
  };
  // Transformations return functions: call those with garbage too (their errors must name the transformation).
  const transforms = new Set(["grad", "valueAndGrad", "checkpoint", "customVjp"]);

  await fc.assert(
    fc.asyncProperty(fc.constantFrom(...fns), argsArb, argsArb, async ([name, f], args, more) => {
      let result: unknown;
      const bad = await verdict(name, () => {
        result = d.tidy(() => f(...args));
        return result;
      });
      if (bad) {
        throw new Error(`${name}(${args.map((a) => describe(a)).join(", ")}) ${bad}`);
      }
      if (transforms.has(name) && typeof result === "function") {
        const again = await verdict(name, () => d.tidy(() => (result as (...a: unknown[]) => unknown)(...more)));
        if (again) throw new Error(`${name}(...)(${more.map((a) => describe(a)).join(", ")}) ${again}`);
      }
    }),
    { numRuns: 3000 },
  );
  assert.equal(d.getBackend(), "cpu");
});
