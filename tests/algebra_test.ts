/**
 * @file Algebraic laws of the tensor ops on random shapes (including size-1
 * axes), checked against a small host-side n-d array written here: movement
 * views, broadcasting, concat/slice/pad/flip, matmul associativity, conv2d
 * against direct nested loops, softmax and logsumexp identities.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import * as d from "../mod.ts";
import type { Tensor } from "../mod.ts";

// These are oracle tests in f64: pin the reference backend whatever the default becomes.
await d.setBackend("cpu");

// ---------------------------------------------------------------- host n-d arrays

interface Host {
  shape: number[];
  data: number[];
}

const size = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);

function ravel(idx: readonly number[], shape: readonly number[]): number {
  let f = 0;
  for (let i = 0; i < shape.length; i++) f = f * shape[i] + idx[i];
  return f;
}

function unravel(f: number, shape: readonly number[]): number[] {
  const idx = new Array<number>(shape.length);
  for (let i = shape.length - 1; i >= 0; i--) {
    idx[i] = f % shape[i];
    f = Math.floor(f / shape[i]);
  }
  return idx;
}

function build(shape: number[], at: (idx: number[]) => number): Host {
  return { shape, data: Array.from({ length: size(shape) }, (_, f) => at(unravel(f, shape))) };
}

const get = (h: Host, idx: readonly number[]) => h.data[ravel(idx, h.shape)];

function rand(seed: number, n: number, lo = -1, hi = 1): number[] {
  let s = seed >>> 0;
  return Array.from({ length: n }, () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return lo + (hi - lo) * (((t ^ (t >>> 14)) >>> 0) / 4294967296);
  });
}

function hostRand(shape: number[], seed: number, lo = -1, hi = 1): Host {
  return { shape, data: rand(seed, size(shape), lo, hi) };
}

const toT = (h: Host, dtype: d.DType = "f64") => d.tensor(h.data, { dtype, shape: h.shape });
const vals = (t: Tensor) => Array.from(t.dataSync());

function assertEqualHost(t: Tensor, h: Host, what = "") {
  assert.deepEqual([...t.shape], h.shape, `${what}: shape`);
  assert.deepEqual(vals(t), h.data, `${what}: values`);
}

function assertClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tol: number, what = "") {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < actual.length; i++) {
    const err = Math.abs(actual[i] - expected[i]);
    if (!(err <= tol * (1 + Math.abs(expected[i])))) {
      assert.fail(`${what}: element ${i}: got ${actual[i]}, expected ${expected[i]}`);
    }
  }
}

// ---------------------------------------------------------------- arbitraries

const dim = fc.integer({ min: 1, max: 3 });
const shapeArb = (minLength = 0, maxLength = 4) => fc.array(dim, { minLength, maxLength });
const seed = fc.integer({ min: 0, max: 2 ** 31 - 1 });
const permOf = (n: number) =>
  fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { minLength: n, maxLength: n }).map((keys) =>
    [...keys.keys()].sort((a, b) => keys[a] - keys[b])
  );
const RUNS = { numRuns: 100 };

// ---------------------------------------------------------------- movement views

Deno.test("transpose matches index math, and transpose∘inverse = id (random perms)", () => {
  fc.assert(
    fc.property(shapeArb().chain((s) => fc.tuple(fc.constant(s), permOf(s.length), seed)), ([shape, perm, sd]) => {
      const h = hostRand(shape, sd);
      const x = toT(h);
      const y = d.transpose(x, perm);
      const expected = build(perm.map((p) => shape[p]), (o) => {
        const i = new Array(shape.length);
        perm.forEach((p, k) => (i[p] = o[k]));
        return get(h, i);
      });
      assertEqualHost(y, expected, "transpose");
      const inv = new Array(perm.length);
      perm.forEach((p, k) => (inv[p] = k));
      assertEqualHost(d.transpose(y, inv), h, "transpose back");
      assertEqualHost(d.transpose(d.transpose(x)), h, "default transpose twice");
    }),
    RUNS,
  );
});

Deno.test("reshape round trips, also through non-contiguous views", () => {
  fc.assert(
    fc.property(shapeArb(1).chain((s) => fc.tuple(fc.constant(s), permOf(s.length), permOf(s.length), seed)), ([
      shape,
      perm,
      perm2,
      sd,
    ]) => {
      const h = hostRand(shape, sd);
      const x = toT(h);
      // Reshape to the dims in another order, with one -1, then back: row-major data is unchanged.
      const other = perm2.map((p) => shape[p]);
      const withNeg = other.map((v, i) => (i === 0 ? -1 : v));
      const r = d.reshape(x, withNeg);
      assert.deepEqual([...r.shape], other);
      assert.deepEqual(vals(r), h.data);
      assertEqualHost(d.reshape(r, shape), h, "reshape back");
      assertEqualHost(d.reshape(x, [size(shape)]), { shape: [size(shape)], data: h.data }, "flatten");
      // Reshape a transposed (strided) view: the data is the transposed order.
      const t = d.transpose(x, perm);
      const tHost = vals(t);
      const flat = d.reshape(t, [-1]);
      assert.deepEqual(vals(flat), tHost);
      assert.deepEqual(vals(d.reshape(flat, [...t.shape])), tHost);
    }),
    RUNS,
  );
});

/** One random view op, applied to both a Tensor and the host array. */
type ViewOp = { name: string; t: (x: Tensor) => Tensor; h: (x: Host) => Host };

function viewOpArb(shape: number[]): fc.Arbitrary<ViewOp> {
  const r = shape.length;
  const ops: fc.Arbitrary<ViewOp>[] = [
    permOf(r).map((perm) => ({
      name: `transpose ${perm}`,
      t: (x) => d.transpose(x, perm),
      h: (x) =>
        build(perm.map((p) => x.shape[p]), (o) => {
          const i = new Array(r);
          perm.forEach((p, k) => (i[p] = o[k]));
          return get(x, i);
        }),
    })),
    fc.array(fc.boolean(), { minLength: r, maxLength: r }).map((mask) => {
      const axes = mask.flatMap((m, i) => (m ? [i] : []));
      return {
        name: `flip ${axes}`,
        t: (x) => d.flip(x, axes),
        h: (x) => build(x.shape, (o) => get(x, o.map((v, i) => (mask[i] ? x.shape[i] - 1 - v : v)))),
      };
    }),
    fc.tuple(
      ...shape.map((n) =>
        fc.tuple(fc.integer({ min: 0, max: n - 1 }), fc.integer({ min: 1, max: n }), fc.integer({ min: 1, max: 2 }))
      ),
    ).map((spec) => {
      const b = spec.map(([s]) => s), e = spec.map(([s, e]) => Math.max(s + 1, e)), st = spec.map(([, , k]) => k);
      return {
        name: `slice ${JSON.stringify(spec)}`,
        t: (x) => d.slice(x, b, e, st),
        h: (x) =>
          build(b.map((bi, i) => Math.ceil((e[i] - bi) / st[i])), (o) => get(x, o.map((v, i) => b[i] + v * st[i]))),
      };
    }),
    fc.tuple(...shape.map(() => fc.tuple(fc.integer({ min: 0, max: 2 }), fc.integer({ min: 0, max: 2 })))).map((w) => ({
      name: `pad ${JSON.stringify(w)}`,
      t: (x) => d.pad(x, w as [number, number][]),
      h: (x) =>
        build(x.shape.map((n, i) => n + w[i][0] + w[i][1]), (o) => {
          const i = o.map((v, k) => v - w[k][0]);
          return i.every((v, k) => v >= 0 && v < x.shape[k]) ? get(x, i) : 0;
        }),
    })),
    fc.tuple(fc.integer({ min: 0, max: 1 }), fc.array(fc.integer({ min: 1, max: 3 }), { minLength: r, maxLength: r }))
      .map((
        [lead, grow],
      ) => {
        const target = [...(lead ? [2] : []), ...shape.map((n, i) => (n === 1 ? grow[i] : n))];
        return {
          name: `broadcastTo ${target}`,
          t: (x) => d.broadcastTo(x, target),
          h: (x) => build(target, (o) => get(x, o.slice(lead).map((v, i) => (x.shape[i] === 1 ? 0 : v)))),
        };
      }),
    fc.constant({
      name: "reshape flat",
      t: (x: Tensor) => d.reshape(x, [-1]),
      h: (x: Host) => ({ shape: [size(x.shape)], data: x.data }),
    }),
    fc.constant({
      name: "neg",
      t: (x: Tensor) => d.neg(x),
      h: (x: Host) => ({ shape: x.shape, data: x.data.map((v) => -v) }),
    }),
  ];
  return fc.oneof(...ops);
}

Deno.test("random chains of views (transpose/flip/slice/pad/broadcast/reshape) match host index math", () => {
  // Each step picks an op valid for the current shape, so chains compose views of views.
  const chain = (depth: number, shape: number[]): fc.Arbitrary<ViewOp[]> =>
    depth === 0 ? fc.constant([]) : viewOpArb(shape).chain((op) => {
      const next = op.h({ shape, data: new Array(size(shape)).fill(0) }).shape;
      if (size(next) > 400) return fc.constant([op]);
      return chain(depth - 1, next).map((rest) => [op, ...rest]);
    });
  fc.assert(
    fc.property(shapeArb(1, 3).chain((s) => fc.tuple(fc.constant(s), seed, chain(4, s))), ([shape, sd, ops]) => {
      let h = hostRand(shape, sd);
      let t = toT(h);
      for (const op of ops) {
        h = op.h(h);
        t = op.t(t);
        assertEqualHost(t, h, ops.map((o) => o.name).join(" -> "));
      }
      // Materialising through a compute op gives the same values as the view.
      // (mul by 1 rather than add 0, which would turn -0 into +0)
      assertEqualHost(d.mul(t, 1), h, "materialised");
    }),
    { numRuns: 200 },
  );
});

// ---------------------------------------------------------------- broadcasting

Deno.test("broadcastTo then summing the broadcast axes gives x times the count", () => {
  fc.assert(
    fc.property(
      shapeArb(0, 3).chain((s) =>
        fc.tuple(
          fc.constant(s),
          fc.array(dim, { minLength: 0, maxLength: 2 }),
          fc.array(fc.integer({ min: 1, max: 3 }), { minLength: s.length, maxLength: s.length }),
          seed,
        )
      ),
      ([shape, lead, grow, sd]) => {
        const h = hostRand(shape, sd);
        const x = toT(h);
        const target = [...lead, ...shape.map((n, i) => (n === 1 ? grow[i] : n))];
        const b = d.broadcastTo(x, target);
        const axes = target.flatMap((
          _,
          i,
        ) => (i < lead.length || (shape[i - lead.length] === 1 && grow[i - lead.length] > 1) ? [i] : []));
        const count = axes.reduce((c, a) => c * target[a], 1);
        const back = d.reshape(d.sum(b, { axis: axes, keepdims: true }), shape);
        assertClose(vals(back), h.data.map((v) => v * count), 1e-13, "sum of broadcast");
        assertClose(
          vals(d.mean(b, { axis: axes.length ? axes : undefined })),
          axes.length ? h.data : [h.data.reduce((a, v) => a + v, 0) / h.data.length],
          1e-13,
          "mean",
        );
      },
    ),
    RUNS,
  );
});

/** A shape that broadcasts against `s`: some axes set to 1, some leading axes dropped. */
const compatible = (s: number[]) =>
  fc.tuple(fc.integer({ min: 0, max: s.length }), fc.array(fc.boolean(), { minLength: s.length, maxLength: s.length }))
    .map(([drop, ones]) => s.map((n, i) => (ones[i] ? 1 : n)).slice(drop));

Deno.test("add and mul commute under broadcasting and match the host broadcast", () => {
  fc.assert(
    fc.property(shapeArb().chain((s) => fc.tuple(fc.constant(s), compatible(s), seed)), ([sa, sb, sd]) => {
      const ha = hostRand(sa, sd), hb = hostRand(sb, sd + 1);
      const a = toT(ha), b = toT(hb);
      const at = (idx: number[]) => get(hb, idx.slice(sa.length - sb.length).map((v, i) => (sb[i] === 1 ? 0 : v)));
      const sum = build(sa, (i) => get(ha, i) + at(i));
      const prod = build(sa, (i) => get(ha, i) * at(i));
      assertEqualHost(d.add(a, b), sum, "a+b");
      assertEqualHost(d.add(b, a), sum, "b+a");
      assertEqualHost(d.mul(a, b), prod, "a*b");
      assertEqualHost(d.mul(b, a), prod, "b*a");
      // f32 too.
      assert.deepEqual(vals(d.add(toT(ha, "f32"), toT(hb, "f32"))), vals(d.add(toT(hb, "f32"), toT(ha, "f32"))));
    }),
    RUNS,
  );
});

// ---------------------------------------------------------------- concat / slice / flip / pad

Deno.test("slicing a concat recovers its parts", () => {
  fc.assert(
    fc.property(
      shapeArb(1, 3).chain((s) =>
        fc.tuple(
          fc.constant(s),
          fc.integer({ min: 0, max: s.length - 1 }),
          fc.array(dim, { minLength: 1, maxLength: 4 }),
          seed,
        )
      ),
      ([shape, axis, sizes, sd]) => {
        const parts = sizes.map((n, k) => hostRand(shape.map((v, i) => (i === axis ? n : v)), sd + k));
        const c = d.concat(parts.map((p) => toT(p)), axis);
        assert.deepEqual(c.shape[axis], sizes.reduce((a, b) => a + b, 0));
        let off = 0;
        parts.forEach((p, k) => {
          const starts = shape.map((_, i) => (i === axis ? off : 0));
          const ends = shape.map((v, i) => (i === axis ? off + sizes[k] : v));
          assertEqualHost(d.slice(c, starts, ends), p, `part ${k}`);
          off += sizes[k];
        });
        // Negative axis and split are the same thing.
        const again = d.split(
          d.concat(parts.map((p) => toT(p)), axis - shape.length),
          sizes.slice(0, -1).map((_, k) => sizes.slice(0, k + 1).reduce((a, b) => a + b, 0)),
          axis,
        );
        again.forEach((t, k) => assertEqualHost(t, parts[k], `split ${k}`));
        // stack = concat of expanded parts when sizes agree.
        const st = d.stack([toT(parts[0]), toT(parts[0])], axis);
        assert.deepEqual([...st.shape], [...parts[0].shape.slice(0, axis), 2, ...parts[0].shape.slice(axis)]);
      },
    ),
    RUNS,
  );
});

Deno.test("flip∘flip = id and flip reverses the chosen axes", () => {
  fc.assert(
    fc.property(
      shapeArb().chain((s) =>
        fc.tuple(fc.constant(s), fc.array(fc.boolean(), { minLength: s.length, maxLength: s.length }), seed)
      ),
      ([shape, mask, sd]) => {
        const h = hostRand(shape, sd);
        const axes = mask.flatMap((m, i) => (m ? [i] : []));
        const x = toT(h);
        const f = d.flip(x, axes);
        assertEqualHost(f, build(shape, (o) => get(h, o.map((v, i) => (mask[i] ? shape[i] - 1 - v : v)))), "flip");
        assertEqualHost(d.flip(f, axes), h, "flip twice");
        assertEqualHost(d.flip(d.flip(x)), h, "flip all twice");
      },
    ),
    RUNS,
  );
});

Deno.test("pad then slice recovers x; the border holds the pad value", () => {
  fc.assert(
    fc.property(
      shapeArb(1).chain((s) =>
        fc.tuple(
          fc.constant(s),
          fc.array(fc.tuple(fc.integer({ min: 0, max: 2 }), fc.integer({ min: 0, max: 2 })), {
            minLength: s.length,
            maxLength: s.length,
          }),
          fc.constantFrom(0, 1.5, -7),
          seed,
        )
      ),
      ([shape, widths, value, sd]) => {
        const h = hostRand(shape, sd);
        const p = d.pad(toT(h), widths, value);
        const expected = build(shape.map((n, i) => n + widths[i][0] + widths[i][1]), (o) => {
          const i = o.map((v, k) => v - widths[k][0]);
          return i.every((v, k) => v >= 0 && v < shape[k]) ? get(h, i) : value;
        });
        assertEqualHost(p, expected, "pad");
        const back = d.slice(p, widths.map(([lo]) => lo), widths.map(([lo], i) => lo + shape[i]));
        assertEqualHost(back, h, "slice back");
        // Padding only trailing axes leaves the leading ones alone.
        const tail = d.pad(toT(h), [widths.at(-1)!], value);
        assert.deepEqual([...tail.shape], [
          ...shape.slice(0, -1),
          shape.at(-1)! + widths.at(-1)![0] + widths.at(-1)![1],
        ]);
      },
    ),
    RUNS,
  );
});

// ---------------------------------------------------------------- matmul

function hostMatmul(a: Host, b: Host): Host {
  const [m, k] = a.shape.slice(-2), n = b.shape.at(-1)!;
  const batch = a.shape.length > 2 ? a.shape.slice(0, -2) : b.shape.slice(0, -2);
  return build([...batch, m, n], (o) => {
    const bi = o.slice(0, -2), [i, j] = o.slice(-2);
    let s = 0;
    for (let t = 0; t < k; t++) {
      s += get(a, a.shape.length > 2 ? [...bi, i, t] : [i, t]) * get(b, b.shape.length > 2 ? [...bi, t, j] : [t, j]);
    }
    return s;
  });
}

Deno.test("matmul is associative (f64) and matches the host product, with batch broadcasting", () => {
  fc.assert(
    fc.property(
      fc.tuple(
        fc.integer({ min: 1, max: 5 }),
        fc.integer({ min: 1, max: 5 }),
        fc.integer({ min: 1, max: 5 }),
        fc.integer({ min: 1, max: 5 }),
      ),
      fc.array(dim, { minLength: 0, maxLength: 2 }),
      seed,
      ([m, k, n, p], batch, sd) => {
        const A = hostRand([...batch, m, k], sd), B = hostRand([k, n], sd + 1), C = hostRand([n, p], sd + 2);
        const [a, b, c] = [toT(A), toT(B), toT(C)];
        const ab = d.matmul(a, b);
        assertClose(vals(ab), hostMatmul(A, B).data, 1e-13, "A@B");
        assert.deepEqual([...ab.shape], [...batch, m, n]);
        const left = d.matmul(ab, c), right = d.matmul(a, d.matmul(b, c));
        assert.deepEqual([...left.shape], [...batch, m, p]);
        assertClose(vals(left), vals(right), 1e-12, "(AB)C vs A(BC)");
        // Transposes: (AB)^T = B^T A^T for the unbatched case.
        if (batch.length === 0) {
          assertClose(vals(d.transpose(ab)), vals(d.matmul(d.transpose(b), d.transpose(a))), 1e-13, "transpose law");
        }
        // 1-D operands: vector @ matrix and matrix @ vector.
        const v = d.tensor(rand(sd + 3, k), { dtype: "f64" });
        const vb = d.matmul(v, b);
        assert.deepEqual([...vb.shape], [n]);
        assertClose(vals(vb), hostMatmul({ shape: [1, k], data: vals(v) }, B).data, 1e-13, "v@B");
      },
    ),
    RUNS,
  );
});

// ---------------------------------------------------------------- conv2d

/** Direct nested-loop grouped cross-correlation (PyTorch semantics). */
function naiveConv2d(
  x: Host,
  w: Host,
  stride: [number, number],
  pad: [[number, number], [number, number]],
  dil: [number, number],
  groups: number,
): Host {
  const [N, C, H, W] = x.shape, [O, Cg, KH, KW] = w.shape;
  const OH = Math.floor((H + pad[0][0] + pad[0][1] - dil[0] * (KH - 1) - 1) / stride[0]) + 1;
  const OW = Math.floor((W + pad[1][0] + pad[1][1] - dil[1] * (KW - 1) - 1) / stride[1]) + 1;
  const Og = O / groups;
  const out = new Array(N * O * OH * OW).fill(0);
  for (let n = 0; n < N; n++) {
    for (let o = 0; o < O; o++) {
      const g = Math.floor(o / Og);
      for (let oh = 0; oh < OH; oh++) {
        for (let ow = 0; ow < OW; ow++) {
          let s = 0;
          for (let c = 0; c < Cg; c++) {
            for (let kh = 0; kh < KH; kh++) {
              for (let kw = 0; kw < KW; kw++) {
                const ih = oh * stride[0] - pad[0][0] + kh * dil[0];
                const iw = ow * stride[1] - pad[1][0] + kw * dil[1];
                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                s += x.data[((n * C + g * Cg + c) * H + ih) * W + iw] * w.data[((o * Cg + c) * KH + kh) * KW + kw];
              }
            }
          }
          out[((n * O + o) * OH + oh) * OW + ow] = s;
        }
      }
    }
  }
  return { shape: [N, O, OH, OW], data: out };
}

Deno.test("conv2d matches a direct nested-loop implementation (stride, padding, dilation, groups)", () => {
  const small = (lo: number, hi: number) => fc.integer({ min: lo, max: hi });
  fc.assert(
    fc.property(
      fc.record({
        n: small(1, 2),
        groups: small(1, 3),
        cg: small(1, 2),
        og: small(1, 2),
        h: small(1, 6),
        w: small(1, 6),
        kh: small(1, 3),
        kw: small(1, 3),
        stride: fc.tuple(small(1, 3), small(1, 2)),
        dil: fc.tuple(small(1, 2), small(1, 3)),
        pad: fc.tuple(fc.tuple(small(0, 2), small(0, 2)), fc.tuple(small(0, 2), small(0, 2))),
        form: fc.constantFrom("pairs", "symmetric", "number", "same", "valid"),
        seed,
      }),
      (c) => {
        const C = c.groups * c.cg, O = c.groups * c.og;
        let pad = c.pad as [[number, number], [number, number]];
        let padding: d.Conv2dOptions["padding"] = pad;
        let stride = c.stride as [number, number];
        if (c.form === "symmetric") {
          pad = [[pad[0][0], pad[0][0]], [pad[1][0], pad[1][0]]];
          padding = [pad[0][0], pad[1][0]];
        } else if (c.form === "number") {
          pad = [[pad[0][0], pad[0][0]], [pad[0][0], pad[0][0]]];
          padding = pad[0][0];
        } else if (c.form === "valid") {
          pad = [[0, 0], [0, 0]];
          padding = "valid";
        } else if (c.form === "same") {
          stride = [1, 1];
          const th = c.dil[0] * (c.kh - 1), tw = c.dil[1] * (c.kw - 1);
          pad = [[Math.floor(th / 2), th - Math.floor(th / 2)], [Math.floor(tw / 2), tw - Math.floor(tw / 2)]];
          padding = "same";
        }
        fc.pre(c.h + pad[0][0] + pad[0][1] >= c.dil[0] * (c.kh - 1) + 1);
        fc.pre(c.w + pad[1][0] + pad[1][1] >= c.dil[1] * (c.kw - 1) + 1);
        const X = hostRand([c.n, C, c.h, c.w], c.seed), Wt = hostRand([O, c.cg, c.kh, c.kw], c.seed + 1);
        const y = d.conv2d(toT(X), toT(Wt), { stride, padding, dilation: c.dil as [number, number], groups: c.groups });
        const ref = naiveConv2d(X, Wt, stride, pad, c.dil as [number, number], c.groups);
        assert.deepEqual([...y.shape], ref.shape);
        if (c.form === "same") assert.deepEqual(y.shape.slice(2), [c.h, c.w]);
        assertClose(vals(y), ref.data, 1e-13, `conv2d ${JSON.stringify(c)}`);
      },
    ),
    { numRuns: 150 },
  );
});

Deno.test("depthwise conv2d (groups = channels) matches the direct loop", () => {
  const X = hostRand([2, 4, 5, 5], 1), Wt = hostRand([8, 1, 3, 3], 2);
  const y = d.conv2d(toT(X), toT(Wt), { groups: 4, padding: 1 });
  const ref = naiveConv2d(X, Wt, [1, 1], [[1, 1], [1, 1]], [1, 1], 4);
  assert.deepEqual([...y.shape], [2, 8, 5, 5]);
  assertClose(vals(y), ref.data, 1e-13, "depthwise");
});

// ---------------------------------------------------------------- softmax / logsumexp

const axisCase = shapeArb(1, 3).chain((s) =>
  fc.tuple(fc.constant(s), fc.integer({ min: -s.length, max: s.length - 1 }), seed)
);

Deno.test("softmax sums to 1 along its axis and is invariant to per-row shifts", () => {
  fc.assert(
    fc.property(axisCase, fc.constantFrom(1, 30, 300), ([shape, axis, sd], scale) => {
      const a = axis < 0 ? axis + shape.length : axis;
      const x = toT(hostRand(shape, sd, -scale, scale));
      const s = d.softmax(x, axis);
      const sv = vals(s);
      assert.ok(sv.every((v) => v >= 0 && v <= 1 && Number.isFinite(v)), `softmax values ${sv}`);
      const sums = vals(d.sum(s, { axis }));
      assertClose(sums, sums.map(() => 1), 1e-12, "row sums");
      // A shift that is constant along the axis (and varies along the others).
      const shiftShape = shape.map((n, i) => (i === a ? 1 : n));
      const shift = toT(hostRand(shiftShape, sd + 9, -50, 50));
      assertClose(vals(d.softmax(d.add(x, shift), axis)), sv, 1e-11, "shift invariance");
      // Matches exp(x)/sum(exp(x)) where that does not overflow.
      if (scale <= 30) {
        const e = d.exp(x);
        assertClose(sv, vals(d.div(e, d.sum(e, { axis, keepdims: true }))), 1e-12, "definition");
      }
      // f32 sums to 1 within f32 rounding.
      const s32 = vals(d.sum(d.softmax(toT(hostRand(shape, sd, -scale, scale), "f32"), axis), { axis }));
      assertClose(s32, s32.map(() => 1), 1e-5, "f32 row sums");
    }),
    RUNS,
  );
});

Deno.test("logsumexp equals log(sum(exp)) and is stable for large and -Infinity inputs", () => {
  fc.assert(
    fc.property(axisCase, fc.boolean(), ([shape, axis, sd], keepdims) => {
      const x = toT(hostRand(shape, sd, -5, 5));
      const l = d.logsumexp(x, { axis, keepdims });
      const ref = d.log(d.sum(d.exp(x), { axis, keepdims }));
      assert.deepEqual([...l.shape], [...ref.shape]);
      assertClose(vals(l), vals(ref), 1e-13, "logsumexp");
      // Shifting by 1000 would overflow exp; logsumexp shifts back exactly.
      const big = vals(d.logsumexp(d.add(x, 1000), { axis, keepdims }));
      assertClose(big, vals(ref).map((v) => v + 1000), 1e-13, "large inputs");
      // All axes at once.
      assertClose(vals(d.logsumexp(x)), [Math.log(vals(x).reduce((a, v) => a + Math.exp(v), 0))], 1e-13, "all axes");
    }),
    RUNS,
  );
  const x = d.tensor([[-Infinity, 0, Math.log(3)], [-Infinity, -Infinity, -Infinity]], { dtype: "f64" });
  const l = vals(d.logsumexp(x, { axis: 1 }));
  assertClose([l[0]], [Math.log(4)], 1e-15, "-inf entry");
  assert.equal(l[1], -Infinity);
  assert.deepEqual(vals(d.softmax(d.tensor([-Infinity, 0], { dtype: "f64" }))), [0, 1]);
});
