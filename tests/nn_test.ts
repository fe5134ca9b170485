/**
 * @file nn layers: outputs against hand-derived values or independent plain-JS
 * references, gradients against central finite differences (f64, cpu), and
 * properties (norm invariances, attention permutation equivariance, RoPE's
 * relative-position property, shuffle/patchify round trips).
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import * as d from "../mod.ts";
import type { Tensor } from "../mod.ts";
import { assertClose, checkGrad, randT, Rng, vals } from "./util.ts";

const { nn } = d;
await d.setBackend("cpu");

const f64 = (data: number[], shape: number[]) => d.tensor(data, { dtype: "f64", shape });
const key = (s: number) => d.randomKey(s);
const prod = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);
/** Row-major strides. */
const strides = (s: readonly number[]) => s.map((_, i) => prod(s.slice(i + 1)));
const at = (v: ArrayLike<number>, s: readonly number[], idx: number[]) =>
  v[idx.reduce((o, x, i) => o + x * strides(s)[i], 0)];

// ------------------------------------------------------------------ linear / embedding / mlp

Deno.test("linear: y = x·Wᵀ + b by hand, with and without bias, any leading shape", () => {
  const weight = f64([1, 2, 3, 4, 5, 6], [3, 2]);
  const bias = f64([1, 0, -1], [3]);
  const x = f64([1, 1, 2, -1], [2, 2]);
  assert.deepEqual(vals(nn.linear.apply({ weight, bias }, x)), [4, 7, 10, 1, 2, 3]);
  assert.deepEqual(vals(nn.linear.apply({ weight }, x)), [3, 7, 11, 0, 2, 4]);
  const x3 = d.reshape(d.concat([x, x], 0), [2, 2, 2]);
  const y3 = nn.linear.apply({ weight, bias }, x3);
  assert.deepEqual(y3.shape, [2, 2, 3]);
  assert.deepEqual(vals(y3), [4, 7, 10, 1, 2, 3, 4, 7, 10, 1, 2, 3]);
  assert.throws(
    () => nn.linear.apply({ weight }, f64([1, 2, 3], [1, 3])),
    /linear: x \[1,3\] has 3 features.*\[3,2\] expects 2/,
  );
});

Deno.test("linear: gradients wrt weight, bias and x match finite differences", () => {
  const rng = new Rng(1);
  const [w, b, x] = [randT(rng, [3, 4]), randT(rng, [3]), randT(rng, [2, 2, 4])];
  checkGrad((w, b, x) => nn.linear.apply({ weight: w, bias: b }, x), [w, b, x]);
});

Deno.test("linear.init: PyTorch default U(±1/√in) for weight and bias; xavier, zeros and normal schemes", () => {
  const p = nn.linear.init(key(0), { inFeatures: 16, outFeatures: 64, dtype: "f64" });
  assert.deepEqual(p.weight.shape, [64, 16]);
  assert.deepEqual(p.bias!.shape, [64]);
  const wv = vals(p.weight), bv = vals(p.bias!);
  assert.ok(wv.every((v) => Math.abs(v) <= 0.25) && Math.max(...wv.map(Math.abs)) > 0.24);
  assert.ok(bv.every((v) => Math.abs(v) <= 0.25) && Math.max(...bv.map(Math.abs)) > 0.2);
  const xb = Math.sqrt(6 / (16 + 64));
  const px = nn.linear.init(key(0), { inFeatures: 16, outFeatures: 64, init: "xavier" });
  assert.ok(vals(px.weight).every((v) => Math.abs(v) <= xb) && Math.max(...vals(px.weight).map(Math.abs)) > 0.95 * xb);
  assert.ok(vals(px.bias!).every((v) => v === 0));
  const pz = nn.linear.init(key(0), { inFeatures: 3, outFeatures: 2, init: "zeros", bias: false });
  assert.deepEqual(vals(pz.weight), [0, 0, 0, 0, 0, 0]);
  assert.equal(pz.bias, undefined);
  const pn = nn.linear.init(key(0), { inFeatures: 100, outFeatures: 100, init: { normal: 0.02 } });
  const nv = vals(pn.weight);
  const std = Math.sqrt(nv.reduce((a, v) => a + v * v, 0) / nv.length);
  assert.ok(Math.abs(std - 0.02) < 0.001, `std ${std}`);
  // Keyed: same key, same values; different key, different values.
  assert.deepEqual(
    vals(nn.linear.init(key(5), { inFeatures: 4, outFeatures: 4 }).weight),
    vals(nn.linear.init(key(5), { inFeatures: 4, outFeatures: 4 }).weight),
  );
  assert.notDeepEqual(
    vals(nn.linear.init(key(5), { inFeatures: 4, outFeatures: 4 }).weight),
    vals(nn.linear.init(key(6), { inFeatures: 4, outFeatures: 4 }).weight),
  );
});

Deno.test("embedding: rows by index; init N(0, std²)", () => {
  const weight = f64([0, 1, 10, 11, 20, 21], [3, 2]);
  const y = nn.embedding.apply({ weight }, d.tensor([2, 0, 2], { dtype: "i32" }));
  assert.deepEqual(vals(y), [20, 21, 0, 1, 20, 21]);
  const p = nn.embedding.init(key(1), { numEmbeddings: 50, dim: 40, std: 0.5 });
  const v = vals(p.weight);
  const std = Math.sqrt(v.reduce((a, x) => a + x * x, 0) / v.length);
  assert.ok(Math.abs(std - 0.5) < 0.03, `std ${std}`);
});

Deno.test("mlp: fc2(act(fc1 x)) and DiMR's gated w2(gelu(w0 x)·w1 x), with gradients", () => {
  const rng = new Rng(2);
  const p = nn.mlp.init(key(2), { inFeatures: 3, hiddenFeatures: 5, dtype: "f64" }) as {
    fc1: d.nn.LinearParams;
    fc2: d.nn.LinearParams;
  };
  const x = randT(rng, [2, 3]);
  const manual = nn.linear.apply(p.fc2, nn.geluTanh(nn.linear.apply(p.fc1, x)));
  assertClose(vals(nn.mlp.apply(p, x, { act: "gelu_tanh" })), vals(manual), 0, 0, "plain");
  assert.deepEqual(nn.mlp.apply(p, x).shape, [2, 3]);
  const g = nn.mlp.init(key(3), { inFeatures: 3, hiddenFeatures: 4, outFeatures: 2, gated: true, dtype: "f64" }) as {
    w0: d.nn.LinearParams;
    w1: d.nn.LinearParams;
    w2: d.nn.LinearParams;
  };
  const gm = nn.linear.apply(g.w2, d.mul(nn.gelu(nn.linear.apply(g.w0, x)), nn.linear.apply(g.w1, x)));
  assertClose(vals(nn.mlp.apply(g, x)), vals(gm), 0, 0, "gated");
  checkGrad(
    (w0, w1, w2, x) =>
      nn.mlp.apply({ w0: { ...g.w0, weight: w0 }, w1: { ...g.w1, weight: w1 }, w2: { ...g.w2, weight: w2 } }, x),
    [
      g.w0.weight,
      g.w1.weight,
      g.w2.weight,
      x,
    ],
  );
});

// ------------------------------------------------------------------ activations / dropout

Deno.test("activations: exact and tanh GELU, SiLU, sigmoid, ReLU by hand; gradients", () => {
  const x = f64([-2, -1, 0, 0.5, 1, 3], [6]);
  const erf3s2 = 0.9973002039367398, erf1s2 = 0.6826894921370859, erf05s2 = 0.3829249225480262;
  const gelu = [
    -2 * 0.5 * (1 - 0.9544997361036416),
    -0.5 * (1 - erf1s2),
    0,
    0.25 * (1 + erf05s2),
    0.5 * (1 + erf1s2),
    1.5 * (1 + erf3s2),
  ];
  assertClose(vals(nn.gelu(x)), gelu, 1e-14, 1e-15, "gelu");
  const k = Math.sqrt(2 / Math.PI);
  const gt = [-2, -1, 0, 0.5, 1, 3].map((v) => 0.5 * v * (1 + Math.tanh(k * (v + 0.044715 * v ** 3))));
  assertClose(vals(nn.geluTanh(x)), gt, 1e-14, 1e-15, "geluTanh");
  assertClose(vals(nn.silu(x)), [-2, -1, 0, 0.5, 1, 3].map((v) => v / (1 + Math.exp(-v))), 1e-14, 1e-15, "silu");
  assertClose(vals(nn.sigmoid(x)), [-2, -1, 0, 0.5, 1, 3].map((v) => 1 / (1 + Math.exp(-v))), 1e-14, 1e-15, "sigmoid");
  assert.deepEqual(vals(nn.relu(x)), [0, 0, 0, 0.5, 1, 3]);
  const y = f64([-1.7, -0.3, 0.4, 1.1, 2.2], [5]);
  for (const f of [nn.gelu, nn.geluTanh, nn.silu, nn.sigmoid]) checkGrad(f, [y]);
  assert.throws(() => nn.activate(y, "nope" as d.nn.Activation), /unknown activation "nope"/);
});

Deno.test("dropout: keyed inverted dropout, identity without a key, gradient is the scaled mask", () => {
  const x = d.add(d.zeros([100, 100], "f64"), 1);
  assert.equal(nn.dropout(x, 0.3), x);
  const y = vals(nn.dropout(x, 0.25, key(3)));
  assert.ok(y.every((v) => v === 0 || Math.abs(v - 1 / 0.75) < 1e-15));
  const kept = y.filter((v) => v !== 0).length / y.length;
  assert.ok(Math.abs(kept - 0.75) < 0.02, `kept ${kept}`);
  assert.deepEqual(vals(nn.dropout(x, 0.25, key(3))), y);
  assert.notDeepEqual(vals(nn.dropout(x, 0.25, key(4))), y);
  const g = vals(d.grad((x: Tensor) => d.sum(nn.dropout(x, 0.25, key(3))))(x) as Tensor);
  assert.deepEqual(g, y);
  assert.throws(() => nn.dropout(x, 1.5, key(1)), /dropout: probability p must be in \[0, 1\], got 1.5/);
});

// ------------------------------------------------------------------ convolution

type Geo = { s: [number, number]; p: [number, number]; dl: [number, number]; g: number };

function refConv(x: number[], xs: number[], w: number[], ws: number[], { s, p, dl, g }: Geo) {
  const [N, , H, W] = xs, [O, Cg, KH, KW] = ws;
  const OH = Math.floor((H + 2 * p[0] - dl[0] * (KH - 1) - 1) / s[0]) + 1;
  const OW = Math.floor((W + 2 * p[1] - dl[1] * (KW - 1) - 1) / s[1]) + 1;
  const out = new Array(N * O * OH * OW).fill(0);
  for (let n = 0; n < N; n++) {
    for (let o = 0; o < O; o++) {
      const grp = Math.floor(o / (O / g));
      for (let oy = 0; oy < OH; oy++) {
        for (let ox = 0; ox < OW; ox++) {
          let acc = 0;
          for (let ci = 0; ci < Cg; ci++) {
            for (let ky = 0; ky < KH; ky++) {
              for (let kx = 0; kx < KW; kx++) {
                const iy = oy * s[0] - p[0] + ky * dl[0], ix = ox * s[1] - p[1] + kx * dl[1];
                if (iy < 0 || ix < 0 || iy >= H || ix >= W) continue;
                acc += at(x, xs, [n, grp * Cg + ci, iy, ix]) * at(w, ws, [o, ci, ky, kx]);
              }
            }
          }
          out[((n * O + o) * OH + oy) * OW + ox] = acc;
        }
      }
    }
  }
  return { out, shape: [N, O, OH, OW] };
}

function refConvT(x: number[], xs: number[], w: number[], ws: number[], geo: Geo & { op: [number, number] }) {
  const [N, Cin, H, W] = xs, [, Cog, KH, KW] = ws;
  const { s, p, dl, g, op } = geo;
  const OH = (H - 1) * s[0] - 2 * p[0] + dl[0] * (KH - 1) + op[0] + 1;
  const OW = (W - 1) * s[1] - 2 * p[1] + dl[1] * (KW - 1) + op[1] + 1;
  const O = Cog * g;
  const out = new Array(N * O * OH * OW).fill(0);
  for (let n = 0; n < N; n++) {
    for (let ci = 0; ci < Cin; ci++) {
      const grp = Math.floor(ci / (Cin / g));
      for (let iy = 0; iy < H; iy++) {
        for (let ix = 0; ix < W; ix++) {
          for (let co = 0; co < Cog; co++) {
            for (let ky = 0; ky < KH; ky++) {
              for (let kx = 0; kx < KW; kx++) {
                const oy = iy * s[0] - p[0] + ky * dl[0], ox = ix * s[1] - p[1] + kx * dl[1];
                if (oy < 0 || ox < 0 || oy >= OH || ox >= OW) continue;
                out[((n * O + grp * Cog + co) * OH + oy) * OW + ox] += at(x, xs, [n, ci, iy, ix]) *
                  at(w, ws, [ci, co, ky, kx]);
              }
            }
          }
        }
      }
    }
  }
  return { out, shape: [N, O, OH, OW] };
}

Deno.test("conv2d: hand example (cross-correlation + bias)", () => {
  const x = f64([1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 1, 3, 3]);
  const weight = f64([1, 0, 0, -1], [1, 1, 2, 2]);
  const y = nn.conv2d.apply({ weight, bias: f64([0.5], [1]) }, x);
  assert.deepEqual(y.shape, [1, 1, 2, 2]);
  assert.deepEqual(vals(y), [-3.5, -3.5, -3.5, -3.5]);
});

Deno.test("conv2d: stride, padding, dilation, groups (incl. depthwise) match a naive reference; gradients", () => {
  const rng = new Rng(4);
  const cases: (Geo & { C: number; O: number; k: [number, number]; HW: [number, number] })[] = [
    { C: 2, O: 3, k: [3, 3], HW: [5, 5], s: [1, 1], p: [1, 1], dl: [1, 1], g: 1 },
    { C: 4, O: 2, k: [3, 2], HW: [6, 5], s: [2, 1], p: [1, 0], dl: [1, 2], g: 2 },
    { C: 3, O: 3, k: [5, 5], HW: [5, 5], s: [1, 1], p: [2, 2], dl: [1, 1], g: 3 },
    { C: 2, O: 4, k: [2, 2], HW: [4, 4], s: [2, 2], p: [0, 0], dl: [1, 1], g: 1 },
  ];
  for (const c of cases) {
    const xs = [2, c.C, ...c.HW], ws = [c.O, c.C / c.g, ...c.k];
    const x = randT(rng, xs), w = randT(rng, ws), b = randT(rng, [c.O]);
    const y = nn.conv2d.apply({ weight: w, bias: b }, x, { stride: c.s, padding: c.p, dilation: c.dl });
    const ref = refConv(vals(x), xs, vals(w), ws, c);
    assert.deepEqual(y.shape, ref.shape);
    const bv = vals(b), plane = ref.shape[2] * ref.shape[3];
    assertClose(vals(y), ref.out.map((v, i) => v + bv[Math.floor(i / plane) % c.O]), 1e-12, 1e-12, JSON.stringify(c));
  }
  const c = cases[1];
  checkGrad((x, w, b) => nn.conv2d.apply({ weight: w, bias: b }, x, { stride: c.s, padding: c.p, dilation: c.dl }), [
    randT(rng, [1, 4, 5, 4]),
    randT(rng, [2, 2, 3, 2]),
    randT(rng, [2]),
  ]);
});

Deno.test("conv2d.init: bound 1/√fan_in with fan_in = in/groups·kh·kw; OIHW shape; bias off", () => {
  const p = nn.conv2d.init(key(1), { inChannels: 8, outChannels: 4, kernelSize: 3, groups: 2, dtype: "f64" });
  assert.deepEqual(p.weight.shape, [4, 4, 3, 3]);
  const bound = 1 / Math.sqrt(4 * 9);
  assert.ok(vals(p.weight).every((v) => Math.abs(v) <= bound) && vals(p.bias!).every((v) => Math.abs(v) <= bound));
  assert.ok(Math.max(...vals(p.weight).map(Math.abs)) > 0.9 * bound);
  assert.equal(nn.conv2d.init(key(1), { inChannels: 2, outChannels: 2, kernelSize: 1, bias: false }).bias, undefined);
  assert.throws(
    () => nn.conv2d.init(key(1), { inChannels: 3, outChannels: 4, kernelSize: 1, groups: 2 }),
    /divide by groups 2/,
  );
});

Deno.test("convTranspose2d: hand example, naive reference (groups, output padding, cropping), adjoint of conv2d; gradients", () => {
  const x = f64([1, 2, 3, 4], [1, 1, 2, 2]);
  const ones = f64([1, 1, 1, 1], [1, 1, 2, 2]);
  const y = nn.convTranspose2d.apply({ weight: ones }, x, { stride: 2 });
  assert.deepEqual(y.shape, [1, 1, 4, 4]);
  assert.deepEqual(vals(y), [1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4]);
  const rng = new Rng(5);
  const cases: (Geo & { op: [number, number]; C: number; Cog: number; k: [number, number]; HW: [number, number] })[] = [
    { C: 2, Cog: 3, k: [3, 3], HW: [3, 4], s: [2, 2], p: [1, 1], dl: [1, 1], g: 1, op: [1, 0] },
    { C: 4, Cog: 1, k: [3, 2], HW: [4, 3], s: [1, 2], p: [0, 1], dl: [2, 1], g: 2, op: [0, 1] },
    // padding larger than d·(k-1): the lowering must crop.
    { C: 1, Cog: 2, k: [2, 2], HW: [5, 5], s: [3, 3], p: [2, 2], dl: [1, 1], g: 1, op: [2, 0] },
  ];
  for (const c of cases) {
    const xs = [2, c.C, ...c.HW], ws = [c.C, c.Cog, ...c.k];
    const x = randT(rng, xs), w = randT(rng, ws);
    const opts = { stride: c.s, padding: c.p, dilation: c.dl, groups: c.g, outputPadding: c.op };
    const y = nn.convTranspose2dFn(x, w, opts);
    const ref = refConvT(vals(x), xs, vals(w), ws, c);
    assert.deepEqual(y.shape, ref.shape, JSON.stringify(c));
    assertClose(vals(y), ref.out, 1e-12, 1e-12, JSON.stringify(c));
    // <conv(u, w), x> = <u, convT(x, w)>: convT is the adjoint of conv2d with the same weight tensor.
    const u = randT(rng, y.shape);
    const lhs = vals(d.sum(d.mul(d.conv2d(u, w, { stride: c.s, padding: c.p, dilation: c.dl, groups: c.g }), x)))[0];
    const rhs = vals(d.sum(d.mul(u, y)))[0];
    assert.ok(Math.abs(lhs - rhs) < 1e-10 * Math.max(1, Math.abs(lhs)), `${lhs} vs ${rhs}`);
  }
  const c = cases[0];
  checkGrad(
    (x, w, b) =>
      nn.convTranspose2d.apply({ weight: w, bias: b }, x, { stride: c.s, padding: c.p, outputPadding: c.op }),
    [
      randT(rng, [1, 2, 2, 3]),
      randT(rng, [2, 3, 3, 3]),
      randT(rng, [3]),
    ],
  );
  const p = nn.convTranspose2d.init(key(2), { inChannels: 4, outChannels: 6, kernelSize: 2, groups: 2 });
  assert.deepEqual(p.weight.shape, [4, 3, 2, 2]);
  const bound = 1 / Math.sqrt(3 * 4);
  assert.ok([...vals(p.weight), ...vals(p.bias!)].every((v) => Math.abs(v) <= bound));
  assert.throws(
    () => nn.convTranspose2dFn(x, ones, { stride: 2, outputPadding: 2 }),
    /outputPadding 2 must be smaller/,
  );
});

Deno.test("pooling: avg/max by hand, padding semantics vs naive reference, global average; gradients", () => {
  const x = d.reshape(d.arange(0, 16, 1, "f64"), [1, 1, 4, 4]);
  assert.deepEqual(vals(nn.avgPool2d(x, 2)), [2.5, 4.5, 10.5, 12.5]);
  assert.deepEqual(vals(nn.maxPool2d(x, 2)), [5, 7, 13, 15]);
  assert.deepEqual(vals(nn.globalAvgPool2d(x)), [7.5]);
  assert.deepEqual(nn.globalAvgPool2d(x).shape, [1, 1, 1, 1]);
  // 3x3, stride 1, padding 1 on a 3x3 input: corners see 4 real pixels.
  const y = d.reshape(d.arange(1, 10, 1, "f64"), [1, 1, 3, 3]);
  assert.equal(vals(nn.avgPool2d(y, 3, { stride: 1, padding: 1 }))[0], (1 + 2 + 4 + 5) / 9);
  assert.equal(vals(nn.avgPool2d(y, 3, { stride: 1, padding: 1, countIncludePad: false }))[0], (1 + 2 + 4 + 5) / 4);
  assert.deepEqual(vals(nn.maxPool2d(d.neg(y), 3, { stride: 1, padding: 1 })), [-1, -1, -2, -1, -1, -2, -4, -4, -5]);
  const rng = new Rng(6);
  const z = randT(rng, [2, 2, 5, 4]);
  checkGrad((z) => nn.avgPool2d(z, [2, 3], { stride: [2, 1], padding: [1, 1] }), [z]);
  checkGrad((z) => nn.maxPool2d(z, 2, { stride: 1 }), [z]);
  checkGrad((z) => nn.globalAvgPool2d(z), [z]);
});

// ------------------------------------------------------------------ norms

Deno.test("layerNorm: hand values, affine, channel axis of NCHW; gradients", () => {
  const x = f64([1, 2, 3, 4, 2, 2, 2, 6], [2, 4]);
  const y = vals(nn.layerNorm.apply({}, x, { eps: 1e-5 }));
  const s1 = Math.sqrt(1.25 + 1e-5), s2 = Math.sqrt(3 + 1e-5);
  assertClose(y, [-1.5 / s1, -0.5 / s1, 0.5 / s1, 1.5 / s1, -1 / s2, -1 / s2, -1 / s2, 3 / s2], 1e-14, 1e-15, "ln");
  const p = { weight: f64([1, 2, 3, 4], [4]), bias: f64([0, 1, 0, -1], [4]) };
  const ya = vals(nn.layerNorm.apply(p, x, { eps: 1e-5 }));
  assertClose(ya, y.map((v, i) => v * [1, 2, 3, 4][i % 4] + [0, 1, 0, -1][i % 4]), 1e-14, 1e-15, "affine");
  const rng = new Rng(7);
  const m = randT(rng, [2, 3, 2, 2]);
  const a = nn.layerNorm.apply({ weight: f64([1, 2, 3], [3]) }, m, { axis: 1, eps: 1e-6 });
  const b = d.transpose(
    nn.layerNorm.apply({ weight: f64([1, 2, 3], [3]) }, d.transpose(m, [0, 2, 3, 1]), { eps: 1e-6 }),
    [0, 3, 1, 2],
  );
  assertClose(vals(a), vals(b), 1e-13, 1e-14, "axis 1");
  const init = nn.layerNorm.init(undefined, { dim: 3 });
  assert.deepEqual(vals(init.weight!), [1, 1, 1]);
  assert.deepEqual(vals(init.bias!), [0, 0, 0]);
  assert.deepEqual(nn.layerNorm.init(undefined, { dim: 3, affine: false }), {});
  checkGrad((x, w, b) => nn.layerNorm.apply({ weight: w, bias: b }, x, { eps: 1e-5 }), [
    randT(rng, [3, 5]),
    randT(rng, [5]),
    randT(rng, [5]),
  ]);
  checkGrad((x) => nn.layerNorm.apply({}, x, { axis: 1, eps: 1e-6 }), [randT(rng, [2, 3, 2, 2])]);
  assert.throws(() => nn.layerNorm.apply({ weight: f64([1, 2], [2]) }, m, { axis: 1 }), /weight must have shape \[3\]/);
});

Deno.test("layerNorm is invariant to shifting and positively scaling its input (property)", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 1e6 }),
      fc.double({ min: 0.1, max: 50, noNaN: true }),
      fc.double({ min: -20, max: 20, noNaN: true }),
      (seed, a, b) => {
        const rng = new Rng(seed);
        const x = randT(rng, [rng.int(1, 3), rng.int(2, 6)]);
        const y0 = vals(nn.layerNorm.apply({}, x, { eps: 1e-12 }));
        // eps scales with the variance (a²), so the invariance is exact even for near-constant rows.
        const y1 = vals(nn.layerNorm.apply({}, d.add(d.mul(x, a), b), { eps: 1e-12 * a * a }));
        assertClose(y1, y0, 1e-7, 1e-7, `a=${a} b=${b}`);
      },
    ),
    { numRuns: 30 },
  );
});

Deno.test("rmsNorm: torch form and DiMR's eps-outside form by hand; scale invariance; gradients", () => {
  const x = f64([3, 4, 1, -1], [2, 2]);
  const y = vals(nn.rmsNorm.apply({ weight: f64([1, 2], [2]) }, x, { eps: 1e-6 }));
  const r1 = 1 / Math.sqrt(12.5 + 1e-6), r2 = 1 / Math.sqrt(1 + 1e-6);
  assertClose(y, [3 * r1, 8 * r1, r2, -2 * r2], 1e-14, 1e-15, "torch");
  const yo = vals(nn.rmsNormalize(x, { epsOutside: true, eps: 0.5 }));
  const o1 = 5 / Math.sqrt(2) + 0.5, o2 = Math.sqrt(2) / Math.sqrt(2) + 0.5;
  assertClose(yo, [3 / o1, 4 / o1, 1 / o2, -1 / o2], 1e-14, 1e-15, "epsOutside");
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 1e6 }), fc.double({ min: 0.1, max: 50, noNaN: true }), (seed, a) => {
      const rng = new Rng(seed);
      const z = randT(rng, [2, rng.int(2, 6)], -2, 2, 0.1);
      for (const epsOutside of [false, true]) {
        const y0 = vals(nn.rmsNormalize(z, { eps: 1e-14, epsOutside }));
        assertClose(vals(nn.rmsNormalize(d.mul(z, a), { eps: 1e-14, epsOutside })), y0, 1e-9, 1e-9, `a=${a}`);
      }
    }),
    { numRuns: 20 },
  );
  const rng = new Rng(8);
  checkGrad((x, w) => nn.rmsNorm.apply({ weight: w }, x, { eps: 1e-6 }), [randT(rng, [3, 4]), randT(rng, [4])]);
  checkGrad((x) => nn.rmsNormalize(x, { epsOutside: true, eps: 1e-3 }), [randT(rng, [3, 4])]);
  assert.deepEqual(Object.keys(nn.rmsNorm.init(undefined, { dim: 4 })), ["weight"]);
});

Deno.test("groupNorm: per-group statistics by hand, per-channel affine; gradients", () => {
  // Two groups of two channels, 1x2 pixels each.
  const x = f64([1, 2, 3, 4, 10, 10, 10, 14], [1, 4, 1, 2]);
  const y = vals(
    nn.groupNorm.apply({ weight: f64([1, 1, 2, 2], [4]), bias: f64([0, 0, 0, 1], [4]) }, x, { numGroups: 2, eps: 0 }),
  );
  const s1 = Math.sqrt(1.25), s2 = Math.sqrt(3);
  assertClose(
    y,
    [-1.5 / s1, -0.5 / s1, 0.5 / s1, 1.5 / s1, -2 / s2, -2 / s2, 1 - 2 / s2, 1 + 6 / s2],
    1e-14,
    1e-15,
    "gn",
  );
  assert.throws(() => nn.groupNormalize(x, 3), /4 channels .* do not divide into 3 groups/);
  const rng = new Rng(9);
  checkGrad((x, w, b) => nn.groupNorm.apply({ weight: w, bias: b }, x, { numGroups: 2 }), [
    randT(rng, [2, 4, 2, 2]),
    randT(rng, [4]),
    randT(rng, [4]),
  ]);
});

Deno.test("modulate: x·(1 + scale) + shift, broadcast over tokens or over H×W; gradients", () => {
  const x = f64([1, 2, 3, 4, 5, 6, 7, 8], [2, 2, 2]);
  const shift = f64([1, 0, 0, 1], [2, 2]), scale = f64([0, 1, -1, 2], [2, 2]);
  assert.deepEqual(vals(nn.modulate(x, shift, scale)), [2, 4, 4, 8, 0, 19, 0, 25]);
  const nchw = vals(nn.modulate(x, shift, scale, { axis: 1 }));
  assert.deepEqual(nchw, [2, 3, 6, 8, 0, 0, 22, 25]);
  assert.throws(() => nn.modulate(x, f64([1, 2], [2]), scale), /shift must have shape \[2,2\]/);
  const rng = new Rng(10);
  checkGrad((x, a, b) => nn.modulate(x, a, b, { axis: 1 }), [
    randT(rng, [2, 3, 2, 2]),
    randT(rng, [2, 3]),
    randT(rng, [2, 3]),
  ]);
});

// ------------------------------------------------------------------ attention

Deno.test("attention: hand example; softmax((q·scale)·kᵀ)·v; mask", () => {
  const q = f64([1, 0], [2, 1]), k = f64([1, 0], [2, 1]), v = f64([1, 2], [2, 1]);
  const e = Math.E;
  assertClose(vals(nn.attention(q, k, v, { scale: 1 })), [(e + 2) / (e + 1), 1.5], 1e-15, 1e-15, "attn");
  const mask = d.tensor([[true, false], [true, true]]);
  assertClose(vals(nn.attention(q, k, v, { scale: 1, mask })), [1, 1.5], 1e-15, 1e-15, "masked");
  const rng = new Rng(11);
  checkGrad((q, k, v) => nn.attention(q, k, v), [randT(rng, [2, 3, 4]), randT(rng, [2, 5, 4]), randT(rng, [2, 5, 2])]);
});

Deno.test("cosineAttention: normalised scores times exp(min(logitScale, 4.6052)); clamped heads get zero gradient", () => {
  const rng = new Rng(12);
  const q = randT(rng, [1, 2, 3, 4]), k = randT(rng, [1, 2, 3, 4]), v = randT(rng, [1, 2, 3, 4]);
  const ls = f64([Math.log(10), 6], [2, 1, 1]);
  const y = nn.cosineAttention(q, k, v, ls);
  // Independent: per head, normalise rows in JS and use plain attention with the clamped scale.
  const nrm = (t: Tensor) => {
    const a = vals(t), D = 4;
    for (let r = 0; r < a.length / D; r++) {
      const n = Math.hypot(...a.slice(r * D, r * D + D));
      for (let j = 0; j < D; j++) a[r * D + j] /= n;
    }
    return f64(a, [...t.shape]);
  };
  const [qn, kn] = [nrm(q), nrm(k)];
  for (const h of [0, 1]) {
    const sl = (t: Tensor) => d.slice(t, [0, h], [1, h + 1]);
    const ref = nn.attention(sl(qn), sl(kn), sl(v), { scale: Math.exp(Math.min([Math.log(10), 6][h], 4.6052)) });
    assertClose(vals(d.slice(y, [0, h], [1, h + 1])), vals(ref), 1e-12, 1e-14, `head ${h}`);
  }
  const g = vals(d.grad((ls: Tensor) => d.sum(d.mul(nn.cosineAttention(q, k, v, ls), v)))(ls) as Tensor);
  assert.notEqual(g[0], 0);
  assert.equal(g[1], 0);
  checkGrad((q, k, v, ls) => nn.cosineAttention(q, k, v, ls), [q, k, v, f64([1.2, 2.5], [2, 1, 1])]);
});

Deno.test("rope2dTable: U-DiT's interleaved (col, row) pairs and frequencies 10000^(-4m/d)", () => {
  const t = nn.rope2dTable(8, 2, 3, { dtype: "f64" });
  assert.deepEqual(t.cos.shape, [6, 4]);
  // token 5 = row 1, col 2; pairs: (col, f0), (row, f0), (col, f1), (row, f1) with f0 = 1, f1 = 10000^(-1/2).
  const f1 = 10000 ** -0.5;
  assertClose(
    vals(d.slice(t.cos, [5], [6])),
    [Math.cos(2), Math.cos(1), Math.cos(2 * f1), Math.cos(f1)],
    1e-15,
    1e-16,
    "cos",
  );
  assertClose(
    vals(d.slice(t.sin, [5], [6])),
    [Math.sin(2), Math.sin(1), Math.sin(2 * f1), Math.sin(f1)],
    1e-15,
    1e-16,
    "sin",
  );
  const t32 = nn.rope2dTable(8, 2, 3);
  assert.equal(t32.cos.dtype, "f32");
  assertClose(vals(t32.cos), vals(t.cos), 1e-6, 1e-7, "f32");
  // applyRope rotates pairs: (a, b) -> (a cos - b sin, a sin + b cos).
  const x = f64([1, 2, 3, 4, 5, 6, 7, 8], [1, 8]);
  const one = { cos: d.slice(t.cos, [5], [6]), sin: d.slice(t.sin, [5], [6]) };
  const c = vals(one.cos), s = vals(one.sin);
  const exp = [0, 1, 2, 3].flatMap((j) => {
    const [a, b] = [2 * j + 1, 2 * j + 2];
    return [a * c[j] - b * s[j], a * s[j] + b * c[j]];
  });
  assertClose(vals(nn.applyRope(x, one)), exp, 1e-14, 1e-15, "rotate");
});

Deno.test("RoPE-2D scores depend only on the 2-D offset between query and key (property)", () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 1e6 }), (seed) => {
      const rng = new Rng(seed);
      const G = 4, D = 8;
      const tab = nn.rope2dTable(D, G, G, { dtype: "f64" });
      const q = rng.values(D), k = rng.values(D);
      const rows = (v: number[]) => f64(Array.from({ length: G * G }, () => v).flat(), [G * G, D]);
      const s = vals(d.matmul(nn.applyRope(rows(q), tab), d.transpose(nn.applyRope(rows(k), tab))));
      const [r1, c1, r2, c2] = [rng.int(0, 2), rng.int(0, 2), rng.int(0, 2), rng.int(0, 2)];
      const S = (ra: number, ca: number, rb: number, cb: number) => s[(ra * G + ca) * G * G + rb * G + cb];
      assert.ok(Math.abs(S(r1, c1, r2, c2) - S(r1 + 1, c1 + 1, r2 + 1, c2 + 1)) < 1e-12);
      assert.ok(Math.abs(S(r1, c1, r2, c2) - S(r1 + 1, c1, r2 + 1, c2)) < 1e-12);
    }),
    { numRuns: 15 },
  );
});

Deno.test("mha: timm qkv layout, permutation equivariance without RoPE (property), rope and cosine variants, gradients", () => {
  const p = nn.mha.init(key(13), { dim: 8, heads: 2, dtype: "f64" });
  assert.deepEqual(p.qkv.weight.shape, [24, 8]);
  assert.equal(p.logit_scale, undefined);
  const rng = new Rng(13);
  const x = randT(rng, [2, 5, 8]);
  // Independent computation of head h with the (q|k|v, head, d) channel layout.
  const y = nn.mha.apply(p, x, { heads: 2 });
  const qkv = nn.linear.apply(p.qkv, x);
  const heads = [0, 1].map((h) => {
    const part = (i: number) => d.slice(qkv, [0, 0, i * 8 + h * 4], [2, 5, i * 8 + h * 4 + 4]);
    return nn.attention(part(0), part(1), part(2));
  });
  const ref = nn.linear.apply(p.proj, d.concat(heads, -1));
  assertClose(vals(y), vals(ref), 1e-12, 1e-14, "layout");
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 1e6 }), (seed) => {
      const r = new Rng(seed);
      const perm = r.perm(5);
      const idx = d.tensor(perm, { dtype: "i32" });
      const a = d.take(nn.mha.apply(p, x, { heads: 2 }), idx, 1);
      const b = nn.mha.apply(p, d.take(x, idx, 1), { heads: 2 });
      assertClose(vals(b), vals(a), 1e-12, 1e-13, `perm ${perm}`);
    }),
    { numRuns: 10 },
  );
  const pc = nn.mha.init(key(14), { dim: 8, heads: 2, qkvBias: false, cosine: true, dtype: "f64" });
  assert.equal(pc.qkv.bias, undefined);
  assertClose(vals(pc.logit_scale!), [Math.log(10), Math.log(10)], 1e-15, 0, "logit init");
  const rope = nn.rope2dTable(4, 2, 2, { dtype: "f64" });
  const x4 = randT(rng, [1, 4, 8]);
  checkGrad((x, w, ls) => nn.mha.apply({ ...pc, qkv: { weight: w }, logit_scale: ls }, x, { heads: 2, rope }), [
    x4,
    pc.qkv.weight,
    f64([1.1, 2.3], [2, 1, 1]),
  ]);
  checkGrad((x, w) => nn.mha.apply({ ...p, qkv: { ...p.qkv, weight: w } }, x, { heads: 2 }), [
    randT(rng, [1, 3, 8]),
    p.qkv.weight,
  ]);
});

// ------------------------------------------------------------------ rearrangements

Deno.test("pixelShuffle/Unshuffle follow torch's channel order; channel-last variant follows DiMR's", () => {
  const x = d.reshape(d.arange(0, 4, 1, "f64"), [1, 4, 1, 1]);
  assert.deepEqual(vals(nn.pixelShuffle(x, 2)), [0, 1, 2, 3]);
  const rng = new Rng(14);
  const [C, r, H, W] = [2, 3, 2, 2];
  const y = randT(rng, [2, C * r * r, H, W]);
  const s = nn.pixelShuffle(y, r), sv = vals(s), yv = vals(y);
  assert.deepEqual(s.shape, [2, C, H * r, W * r]);
  for (let n = 0; n < 2; n++) {
    for (let c = 0; c < C; c++) {
      for (let h = 0; h < H; h++) {
        for (let w = 0; w < W; w++) {
          for (let i = 0; i < r; i++) {
            for (let j = 0; j < r; j++) {
              assert.equal(
                at(sv, s.shape, [n, c, h * r + i, w * r + j]),
                at(yv, y.shape, [n, c * r * r + i * r + j, h, w]),
              );
            }
          }
        }
      }
    }
  }
  const cl = randT(rng, [2, H, W, r * r * C]);
  const o = nn.pixelShuffleChannelLast(cl, r), ov = vals(o), cv = vals(cl);
  assert.deepEqual(o.shape, [2, H * r, W * r, C]);
  for (let h = 0; h < H; h++) {
    for (let w = 0; w < W; w++) {
      for (let i = 0; i < r; i++) {
        for (let j = 0; j < r; j++) {
          for (let c = 0; c < C; c++) {
            assert.equal(
              at(ov, o.shape, [1, h * r + i, w * r + j, c]),
              at(cv, cl.shape, [1, h, w, (i * r + j) * C + c]),
            );
          }
        }
      }
    }
  }
});

Deno.test("pixelShuffle∘pixelUnshuffle = id and patchify∘unpatchify = id, both ways (property)", () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 1e6 }), (seed) => {
      const rng = new Rng(seed);
      const [N, C, r, h, w] = [rng.int(1, 2), rng.int(1, 3), rng.int(1, 3), rng.int(1, 3), rng.int(1, 3)];
      const img = randT(rng, [N, C, h * r, w * r]);
      assert.deepEqual(vals(nn.pixelShuffle(nn.pixelUnshuffle(img, r), r)), vals(img));
      const packed = randT(rng, [N, C * r * r, h, w]);
      assert.deepEqual(vals(nn.pixelUnshuffle(nn.pixelShuffle(packed, r), r)), vals(packed));
      const imgCl = randT(rng, [N, h * r, w * r, C]);
      assert.deepEqual(vals(nn.pixelShuffleChannelLast(nn.pixelUnshuffleChannelLast(imgCl, r), r)), vals(imgCl));
      const tokens = nn.patchify(img, r);
      assert.deepEqual(tokens.shape, [N, h * w, r * r * C]);
      assert.deepEqual(vals(nn.unpatchify(tokens, r, C, [h, w])), vals(img));
      const t2 = randT(rng, [N, h * w, r * r * C]);
      assert.deepEqual(vals(nn.patchify(nn.unpatchify(t2, r, C, [h, w]), r)), vals(t2));
    }),
    { numRuns: 25 },
  );
});

Deno.test("unpatchify follows DiT's einsum('nhwpqc->nchpwq'); gradients flow through the views", () => {
  const rng = new Rng(15);
  const [p, C, h, w] = [2, 3, 2, 2];
  const x = randT(rng, [1, h * w, p * p * C]);
  const y = nn.unpatchify(x, p, C), yv = vals(y), xv = vals(x);
  assert.deepEqual(y.shape, [1, C, h * p, w * p]);
  for (let hh = 0; hh < h; hh++) {
    for (let ww = 0; ww < w; ww++) {
      for (let pr = 0; pr < p; pr++) {
        for (let pc = 0; pc < p; pc++) {
          for (let c = 0; c < C; c++) {
            assert.equal(
              at(yv, y.shape, [0, c, hh * p + pr, ww * p + pc]),
              at(xv, x.shape, [0, hh * w + ww, (pr * p + pc) * C + c]),
            );
          }
        }
      }
    }
  }
  checkGrad((x) => nn.unpatchify(x, p, C), [x]);
  checkGrad((x) => nn.pixelShuffleChannelLast(nn.pixelShuffle(x, 2), 1), [randT(rng, [1, 4, 2, 1])]);
  assert.throws(() => nn.unpatchify(randT(rng, [1, 3, 12]), 2, 3), /3 tokens do not form a/);
});

// ------------------------------------------------------------------ embeddings

function ditTimestep(ts: number[], dim: number): number[] {
  const half = Math.floor(dim / 2), out: number[] = [];
  for (const t of ts) {
    const row = new Array(dim).fill(0);
    for (let i = 0; i < half; i++) {
      const a = t * Math.exp((-Math.log(10000) * i) / half);
      row[i] = Math.cos(a);
      row[half + i] = Math.sin(a);
    }
    out.push(...row);
  }
  return out;
}

Deno.test("timestepEmbedding matches DiT's formula computed independently (cos first, odd dims zero-padded)", () => {
  const ts = [0, 1, 17, 500, 999];
  const t = d.tensor(ts, { dtype: "i32" });
  for (const dim of [8, 7, 256]) {
    const e = nn.timestepEmbedding(t, dim, { dtype: "f64" });
    assert.deepEqual(e.shape, [5, dim]);
    assertClose(vals(e), ditTimestep(ts, dim), 1e-12, 1e-12, `dim ${dim}`);
  }
  const e32 = nn.timestepEmbedding(t, 256);
  assert.equal(e32.dtype, "f32");
  assertClose(vals(e32), ditTimestep(ts, 256), 0, 2e-4, "f32");
  assert.deepEqual(vals(nn.timestepEmbedding(d.tensor([0], { dtype: "f64" }), 4)), [1, 1, 0, 0]);
});

Deno.test("timestepEmbedder: Linear(256, D) -> SiLU -> Linear(D, D) with DiT's mlp.0 / mlp.2 names", () => {
  const p = nn.timestepEmbedder.init(key(16), { hiddenSize: 6, frequencyEmbeddingSize: 8, dtype: "f64" });
  assert.deepEqual(Object.keys(nn.flattenTree(p, "t_embedder")), [
    "t_embedder.mlp.0.weight",
    "t_embedder.mlp.0.bias",
    "t_embedder.mlp.2.weight",
    "t_embedder.mlp.2.bias",
  ]);
  const t = d.tensor([3, 400], { dtype: "f64" });
  const ref = nn.linear.apply(p.mlp["2"], nn.silu(nn.linear.apply(p.mlp["0"], f64(ditTimestep([3, 400], 8), [2, 8]))));
  assertClose(vals(nn.timestepEmbedder.apply(p, t)), vals(ref), 1e-12, 1e-14, "embedder");
  const pd = nn.timestepEmbedder.init(key(16), { hiddenSize: 64, init: { normal: 0.02 } });
  assert.ok(vals(pd.mlp["0"].bias!).every((v) => v === 0));
  checkGrad((w) => nn.timestepEmbedder.apply({ mlp: { "0": { ...p.mlp["0"], weight: w }, "2": p.mlp["2"] } }, t), [
    p.mlp["0"].weight,
  ]);
});

Deno.test("labelEmbedder: null row for CFG, keyed label dropout, forced drop, eval mode", () => {
  const p = nn.labelEmbedder.init(key(17), { numClasses: 4, hiddenSize: 3, dtype: "f64" });
  assert.deepEqual(p.embedding_table.weight.shape, [5, 3]);
  assert.deepEqual(
    nn.labelEmbedder.init(key(17), { numClasses: 4, hiddenSize: 3, dropoutProb: 0 }).embedding_table.weight.shape,
    [4, 3],
  );
  const table = vals(p.embedding_table.weight);
  const row = (i: number) => table.slice(3 * i, 3 * i + 3);
  const y = d.tensor([0, 3, 1, 2], { dtype: "i32" });
  assert.deepEqual(vals(nn.labelEmbedder.apply(p, y)), [0, 3, 1, 2].flatMap(row));
  assert.deepEqual(
    vals(nn.labelEmbedder.apply(p, y, { train: true, dropoutProb: 1, key: key(1) })),
    [4, 4, 4, 4].flatMap(row),
  );
  const forced = d.tensor([false, true, false, true]);
  assert.deepEqual(vals(nn.labelEmbedder.apply(p, y, { forceDrop: forced })), [0, 4, 1, 4].flatMap(row));
  assert.throws(() => nn.labelEmbedder.apply(p, y, { train: true }), /needs a key/);
  const many = d.tensor(Array.from({ length: 4000 }, (_, i) => i % 4), { dtype: "i32" });
  const dropped = vals(nn.labelDrop(many, 4, { p: 0.1, key: key(2) }));
  const frac = dropped.filter((v) => v === 4).length / dropped.length;
  assert.ok(Math.abs(frac - 0.1) < 0.02, `dropped ${frac}`);
  assert.ok(dropped.every((v, i) => v === 4 || v === i % 4));
  assert.deepEqual(vals(nn.labelDrop(many, 4, { p: 0.1, key: key(2) })), dropped);
  const g = d.grad((w: Tensor) => d.sum(nn.labelEmbedder.apply({ embedding_table: { weight: w } }, y)))(
    p.embedding_table.weight,
  ) as Tensor;
  assert.deepEqual(vals(g), [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]);
});

Deno.test("sincosPosEmbed2d: DiT's layout by hand (column half first, sin before cos) and the official table", async () => {
  const e = nn.sincosPosEmbed2d(8, 2, 3, { dtype: "f64" });
  assert.deepEqual(e.shape, [6, 8]);
  // dim 8: each half is 4 wide with ω = [1, 1/100]; token 5 = row 1, col 2.
  const w = [1, 0.01];
  const oneD = (
    pos: number,
  ) => [Math.sin(pos * w[0]), Math.sin(pos * w[1]), Math.cos(pos * w[0]), Math.cos(pos * w[1])];
  assertClose(vals(d.slice(e, [5], [6])), [...oneD(2), ...oneD(1)], 1e-15, 1e-16, "token 5");
  assertClose(vals(d.slice(e, [1], [2])), [...oneD(1), ...oneD(0)], 1e-15, 1e-16, "token 1");
  const cls = nn.sincosPosEmbed2d(8, 2, 2, { extraTokens: 1 });
  assert.deepEqual(vals(d.slice(cls, [0], [1])), new Array(8).fill(0));
  assert.deepEqual(vals(nn.sincosPosEmbed1d(4, [0, 1], { dtype: "f64" })), [
    0,
    0,
    1,
    1,
    Math.sin(1),
    Math.sin(0.01),
    Math.cos(1),
    Math.cos(0.01),
  ]);
  // The official table stored in DiT's golden state_dict (hidden 64, 4x4 grid).
  const { tensors } = await d.io.readSafetensors(new URL("./fixtures/dit_a.safetensors", import.meta.url).pathname);
  const official = tensors["param.pos_embed"];
  assert.deepEqual(official.shape, [1, 16, 64]);
  assertClose(vals(nn.sincosPosEmbed2d(64, 4)), vals(official), 0, 1e-7, "official pos_embed");
});

// ------------------------------------------------------------------ initialisers and trees

Deno.test("initialisers: fans, kaiming/xavier bounds, normal/trunc-normal statistics, constants, keyed", () => {
  assert.deepEqual(nn.fans([8, 4, 3, 3]), [36, 72]);
  assert.throws(() => nn.fans([5]), /at least 2 dimensions/);
  const k = vals(nn.kaimingUniform(key(1), [64, 8, 3, 3], { dtype: "f64" }));
  const kb = 1 / Math.sqrt(72);
  assert.ok(k.every((v) => Math.abs(v) <= kb) && Math.max(...k.map(Math.abs)) > 0.99 * kb);
  const k0 = vals(nn.kaimingUniform(key(1), [64, 8], { a: 0, dtype: "f64" }));
  assert.ok(
    Math.max(...k0.map(Math.abs)) <= Math.sqrt(6 / 8) && Math.max(...k0.map(Math.abs)) > 0.95 * Math.sqrt(6 / 8),
  );
  const xb = Math.sqrt(6 / (4 * 4 + 8));
  const xw = vals(nn.xavierUniform(key(2), [8, 4, 2, 2], { fans: [4 * 4, 8] }));
  assert.ok(xw.every((v) => Math.abs(v) <= xb * (1 + 1e-7)) && Math.max(...xw.map(Math.abs)) > 0.9 * xb);
  const n = vals(nn.normalInit(key(3), [20000], { std: 0.02, mean: 1, dtype: "f64" }));
  const mean = n.reduce((a, b) => a + b) / n.length;
  const std = Math.sqrt(n.reduce((a, b) => a + (b - mean) ** 2, 0) / n.length);
  assert.ok(Math.abs(mean - 1) < 1e-3 && Math.abs(std - 0.02) < 5e-4, `${mean} ${std}`);
  const xn = vals(nn.xavierNormal(key(4), [100, 300], { dtype: "f64" }));
  const xs = Math.sqrt(xn.reduce((a, b) => a + b * b, 0) / xn.length);
  assert.ok(Math.abs(xs - Math.sqrt(2 / 400)) < 0.003, `${xs}`);
  const tn = vals(nn.truncNormalInit(key(5), [20000], { std: 1, a: -0.5, b: 1, dtype: "f64" }));
  assert.ok(tn.every((v) => v >= -0.5 && v <= 1));
  assert.ok(Math.min(...tn) < -0.49 && Math.max(...tn) > 0.99);
  assert.deepEqual(vals(nn.zerosInit([2, 2])), [0, 0, 0, 0]);
  assert.deepEqual(vals(nn.onesInit([3], { dtype: "f64" })), [1, 1, 1]);
  assert.deepEqual(vals(nn.constantInit([2], 2.5)), [2.5, 2.5]);
  assert.deepEqual(vals(nn.uniformInit(key(9), [5], 1)), vals(nn.uniformInit(key(9), [5], 1)));
});

Deno.test("trees: flatten to official dotted names, unflatten back (arrays from 0..n-1 keys), unflattenLike", () => {
  const t = {
    blocks: [{ attn: { qkv: { weight: d.ones([1]) } } }, { attn: { qkv: { weight: d.zeros([2]) } } }],
    adaLN_modulation: { "1": { bias: d.ones([3]) } },
  };
  const flat = nn.flattenTree(t);
  assert.deepEqual(Object.keys(flat), [
    "blocks.0.attn.qkv.weight",
    "blocks.1.attn.qkv.weight",
    "adaLN_modulation.1.bias",
  ]);
  const back = nn.unflattenTree(flat) as typeof t;
  assert.ok(Array.isArray(back.blocks) && back.blocks[1].attn.qkv.weight === t.blocks[1].attn.qkv.weight);
  assert.ok(!Array.isArray(back.adaLN_modulation) && back.adaLN_modulation["1"].bias === t.adaLN_modulation["1"].bias);
  const like = nn.unflattenLike(t, flat);
  assert.equal(like.blocks[0].attn.qkv.weight, t.blocks[0].attn.qkv.weight);
  assert.throws(
    () => nn.unflattenLike(t, { "blocks.0.attn.qkv.weight": d.ones([1]) }),
    /2 tensor\(s\) missing, e.g. "blocks.1.attn.qkv.weight"/,
  );
  assert.throws(() => nn.unflattenTree({ "a.b": d.ones([1]), "a.b.c": d.ones([1]) }), /descends into a leaf|collides/);
});
