/**
 * @file The VJP rule of every primitive, as one exhaustively typed table:
 * a primitive without a rule does not compile. Rules are written with the
 * public ops, so they are themselves differentiable and `grad(grad(f))`
 * works wherever the ops used here have rules.
 */
import { isFloat } from "../tensor/dtype.ts";
import { DifflabError } from "../tensor/errors.ts";
import * as ops from "../tensor/ops.ts";
import type { ParamsOf, Prim } from "../tensor/prims.ts";
import { bind, type Tensor } from "../tensor/tensor.ts";

type Ct = Tensor | null;
/**
 * A VJP rule: output cotangents (non-null for at least one output) to input cotangents.
 * `needs[i]` false means input i's cotangent will be discarded, so a rule may return null for it.
 */
export type VjpRule<P extends Prim> = (
  p: ParamsOf[P],
  ins: readonly Tensor[],
  outs: readonly Tensor[],
  cts: Ct[],
  needs: readonly boolean[],
) => Ct[];

/** `f()` when the cotangent is needed, else null (saves the work for constants and data). */
const when = (need: boolean | undefined, f: () => Tensor): Ct => (need === false ? null : f());

/** Sums a cotangent of a broadcast result back to the operand's shape. */
export function sumToShape(ct: Tensor, shape: readonly number[]): Tensor {
  const lead = ct.ndim - shape.length;
  const axes: number[] = [];
  for (let i = 0; i < ct.ndim; i++) {
    if (i < lead || (shape[i - lead] === 1 && ct.shape[i] !== 1)) axes.push(i);
  }
  const s = axes.length ? ops.sum(ct, { axis: axes, keepdims: true }) : ct;
  return ops.reshape(s, shape);
}

const un = (f: (x: Tensor, y: Tensor, ct: Tensor) => Tensor): VjpRule<Prim> => (_p, ins, outs, cts) => [
  f(ins[0], outs[0], cts[0]!),
];

/** 1 where `x` wins the comparison, 0.5 on ties (as JAX splits ties), else 0. */
function share(wins: (a: Tensor, b: Tensor) => Tensor, x: Tensor, y: Tensor): Tensor {
  return ops.add(ops.cast(wins(x, y), x.dtype), ops.mul(ops.cast(ops.equal(x, y), x.dtype), 0.5));
}

const zero: VjpRule<Prim> = (_p, ins) => ins.map(() => null);

/** The table. */
export const vjpRules: { [P in Prim]: VjpRule<P> } = {
  neg: un((_x, _y, ct) => ops.neg(ct)),
  exp: un((_x, y, ct) => ops.mul(ct, y)),
  log: un((x, _y, ct) => ops.div(ct, x)),
  sin: un((x, _y, ct) => ops.mul(ct, ops.cos(x))),
  cos: un((x, _y, ct) => ops.neg(ops.mul(ct, ops.sin(x)))),
  tanh: un((_x, y, ct) => ops.mul(ct, ops.sub(1, ops.mul(y, y)))),
  sqrt: un((_x, y, ct) => ops.div(ops.mul(ct, 0.5), y)),
  rsqrt: un((x, y, ct) => ops.mul(ops.mul(ct, -0.5), ops.div(y, x))),
  abs: un((x, _y, ct) => ops.mul(ct, ops.sign(x))),
  sign: zero,
  floor: zero,
  erf: un((x, _y, ct) => ops.mul(ct, ops.mul(ops.exp(ops.neg(ops.mul(x, x))), 2 / Math.sqrt(Math.PI)))),
  sigmoid: un((_x, y, ct) => ops.mul(ct, ops.mul(y, ops.sub(1, y)))),
  log1p: un((x, _y, ct) => ops.div(ct, ops.add(x, 1))),
  expm1: un((_x, y, ct) => ops.mul(ct, ops.add(y, 1))),
  gelu: un((x, _y, ct) => ops.mul(ct, ops.geluGrad(x))),
  geluTanh: un((x, _y, ct) => ops.mul(ct, ops.geluTanhGrad(x))),
  // Second derivatives (only higher-order gradients reach these): φ(x)·(2 − x²).
  geluGrad: un((x, _y, ct) =>
    ops.mul(
      ct,
      ops.mul(ops.mul(ops.exp(ops.mul(ops.mul(x, x), -0.5)), 1 / Math.sqrt(2 * Math.PI)), ops.sub(2, ops.mul(x, x))),
    )
  ),
  // With t = tanh(u), u = c·(x + a·x³): (1 − t²)·(u' + 0.5·x·(u'' − 2t·u'²)).
  geluTanhGrad: un((x, _y, ct) => {
    const c = Math.sqrt(2 / Math.PI), a = 0.044715;
    const x2 = ops.mul(x, x);
    const t = ops.tanh(ops.mul(ops.mul(x, ops.add(ops.mul(x2, a), 1)), c));
    const du = ops.mul(ops.add(ops.mul(x2, 3 * a), 1), c);
    const ddu = ops.mul(x, 6 * a * c);
    const inner = ops.sub(ddu, ops.mul(ops.mul(t, 2), ops.mul(du, du)));
    return ops.mul(ct, ops.mul(ops.sub(1, ops.mul(t, t)), ops.add(du, ops.mul(ops.mul(x, 0.5), inner))));
  }),
  // rstd·(g − mean(g) − y·mean(g·y)), rstd recomputed from x (cheaper to keep than another tensor).
  layerNorm: (p, [x], [y], [ct]) => {
    const mean = (t: Tensor) => ops.mean(t, { axis: -1, keepdims: true });
    const xc = ops.sub(x, mean(x));
    const rstd = ops.rsqrt(ops.add(mean(ops.mul(xc, xc)), p.eps));
    return [ops.mul(rstd, ops.sub(ops.sub(ct!, mean(ct!)), ops.mul(y, mean(ops.mul(ct!, y)))))];
  },
  adamw: () => {
    throw new DifflabError(
      "adamw: the fused optimiser step has no VJP (nn.adamw.update falls back to differentiable ops under a trace)",
    );
  },
  // y·(g − Σ g·y) along the row
  softmax: (_p, _i, [y], [ct]) => [
    ops.mul(y, ops.sub(ct!, ops.sum(ops.mul(ct!, y), { axis: -1, keepdims: true }))),
  ],
  add: (_p, _i, _o, [ct]) => [ct, ct],
  sub: (_p, _i, _o, [ct], n) => [ct, when(n[1], () => ops.neg(ct!))],
  mul: (_p, [a, b], _o, [ct], n) => [when(n[0], () => ops.mul(ct!, b)), when(n[1], () => ops.mul(ct!, a))],
  div: (_p, [_a, b], [y], [ct], n) => [
    when(n[0], () => ops.div(ct!, b)),
    when(n[1], () => ops.neg(ops.div(ops.mul(ct!, y), b))),
  ],
  pow: (_p, [a, b], [y], [ct], n) => [
    when(n[0], () => ops.mul(ct!, ops.mul(b, ops.pow(a, ops.sub(b, 1))))),
    when(n[1], () => ops.mul(ct!, ops.mul(ops.log(ops.where(ops.equal(a, 0), 1, a)), y))),
  ],
  maximum: (_p, [a, b], _o, [ct], n) => [
    when(n[0], () => ops.mul(ct!, share(ops.greater, a, b))),
    when(n[1], () => ops.mul(ct!, share(ops.greater, b, a))),
  ],
  minimum: (_p, [a, b], _o, [ct], n) => [
    when(n[0], () => ops.mul(ct!, share(ops.less, a, b))),
    when(n[1], () => ops.mul(ct!, share(ops.less, b, a))),
  ],
  compare: zero,
  where: (
    _p,
    [c],
    _o,
    [ct],
    n,
  ) => [null, when(n[1], () => ops.where(c, ct!, 0)), when(n[2], () => ops.where(c, 0, ct!))],
  cast: (_p, [x], _o, [ct]) => [isFloat(x.dtype) && isFloat(ct!.dtype) ? ops.cast(ct!, x.dtype) : null],
  sum: (p, [x], _o, [ct]) => {
    const kept = x.shape.map((d, i) => (p.axes.includes(i) ? 1 : d));
    return [ops.broadcastTo(ops.reshape(ct!, kept), x.shape)];
  },
  max: (p, [x], [y], [ct]) => {
    const kept = x.shape.map((d, i) => (p.axes.includes(i) ? 1 : d));
    const mask = ops.cast(ops.equal(x, ops.broadcastTo(ops.reshape(y, kept), x.shape)), x.dtype);
    const count = ops.sum(mask, { axis: p.axes, keepdims: true });
    return [ops.mul(mask, ops.div(ops.reshape(ct!, kept), count))];
  },
  argmax: zero,
  cumsum: (p, _i, _o, [ct]) => [ops.cumsum(ct!, p.axis, !p.reverse)],
  cumprod: (p, [x], [y], [ct]) => [ops.div(ops.cumsum(ops.mul(ct!, y), p.axis, !p.reverse), x)],
  dot: (_p, [a, b], _o, [ct], n) => [
    when(n[0], () => bind("dot", [ct!, ops.transpose(b, [0, 2, 1])], {})[0]),
    when(n[1], () => bind("dot", [ops.transpose(a, [0, 2, 1]), ct!], {})[0]),
  ],
  conv: (p, [x, w], _o, [ct], need) => {
    const [H, W] = [x.shape[3], x.shape[4]];
    const [KH, KW] = [w.shape[3], w.shape[4]];
    const [OH, OW] = [ct!.shape[3], ct!.shape[4]];
    const dil = (n: number, d: number) => (n === 0 ? 0 : (n - 1) * d + 1);
    // Input gradient: conv of the cotangent with the flipped, in/out-swapped kernel (JAX's transpose_lhs).
    const lhsPad = (i: 0 | 1, n: number, k: number, o: number): [number, number] => {
      const ld = dil(n, p.lhsDilation[i]), kd = dil(k, p.rhsDilation[i]), od = dil(o, p.stride[i]);
      const before = kd - p.padding[i][0] - 1;
      return [before, ld + kd - 1 - od - before];
    };
    const dx = when(need[0], () =>
      bind("conv", [ct!, ops.flip(ops.transpose(w, [0, 2, 1, 3, 4]), [3, 4])], {
        stride: p.lhsDilation,
        padding: [lhsPad(0, H, KH, OH), lhsPad(1, W, KW, OW)],
        lhsDilation: p.stride,
        rhsDilation: p.rhsDilation,
      })[0]);
    if (need[1] === false) return [dx, null];
    // Weight gradient: correlate input (batch<->channel swapped) with the cotangent (JAX's transpose_rhs).
    const rhsPad = (i: 0 | 1, n: number, k: number, o: number): [number, number] => {
      const ld = dil(n, p.lhsDilation[i]), kd = dil(k, p.rhsDilation[i]), od = dil(o, p.stride[i]);
      const lo = p.padding[i][0];
      return [lo, od - ld + (kd - lo - 1)];
    };
    const xt = ops.transpose(x, [2, 1, 0, 3, 4]); // [Ci, G, N, H, W]
    const ctt = ops.transpose(ct!, [1, 2, 0, 3, 4]); // [G, Co, N, OH, OW]
    const dwt = bind("conv", [xt, ctt], {
      stride: p.rhsDilation,
      padding: [rhsPad(0, H, KH, OH), rhsPad(1, W, KW, OW)],
      lhsDilation: p.lhsDilation,
      rhsDilation: p.stride,
    })[0]; // [Ci, G, Co, KH, KW]
    return [dx, ops.transpose(dwt, [1, 2, 0, 3, 4])];
  },
  gather: (p, [x, idx], _o, [ct]) => [ops.scatterAdd(ct!, idx, p.axis, x.shape[p.axis]), null],
  scatterAdd: (p, [_u, idx], _o, [ct]) => [ops.take(ct!, idx, p.axis), null],
  reshape: (_p, [x], _o, [ct]) => [ops.reshape(ct!, x.shape)],
  transpose: (p, _i, _o, [ct]) => {
    const inv = new Array<number>(p.perm.length);
    p.perm.forEach((a, i) => (inv[a] = i));
    return [ops.transpose(ct!, inv)];
  },
  broadcast: (_p, [x], _o, [ct]) => [sumToShape(ct!, x.shape)],
  slice: (p, [x], [y], [ct]) => {
    const widths = x.shape.map((n, i): [number, number, number] => {
      const m = y.shape[i];
      if (m === 0) return [0, n, 0];
      const last = p.starts[i] + (m - 1) * p.steps[i];
      return [p.starts[i], n - last - 1, p.steps[i] - 1];
    });
    if (y.shape.some((m) => m === 0)) return [ops.zerosLike(x)];
    return [bind("pad", [ct!], { widths })[0]];
  },
  pad: (p, [x], _o, [ct]) => {
    const starts = p.widths.map((w) => w[0]);
    const steps = p.widths.map((w) => w[2] + 1);
    const ends = x.shape.map((n, i) => (n === 0 ? starts[i] : starts[i] + (n - 1) * steps[i] + 1));
    return [bind("slice", [ct!], { starts, ends, steps })[0]];
  },
  flip: (p, _i, _o, [ct]) => [ops.flip(ct!, p.axes)],
  concat: (p, ins, _o, [ct]) => {
    let off = 0;
    return ins.map((x) => {
      const s = new Array(x.ndim).fill(0), e = [...ct!.shape];
      s[p.axis] = off;
      e[p.axis] = off + x.shape[p.axis];
      off += x.shape[p.axis];
      return ops.slice(ct!, s, e);
    });
  },
  random: () => [],
};

/** What a rule reads the values of: `ins[i]`/`outs[j]` true means the backward pass needs that tensor's data. */
export type Saved = { ins: readonly boolean[]; outs: readonly boolean[] };
type SaveRule = (tracked: readonly boolean[]) => Saved;

const NONE: Saved = { ins: [false, false, false], outs: [false] };
const none: SaveRule = () => NONE;
const inOnly: SaveRule = () => ({ ins: [true], outs: [false] });
const outOnly: SaveRule = () => ({ ins: [false], outs: [true] });
const inOut: SaveRule = () => ({ ins: [true], outs: [true] });
const both: SaveRule = () => ({ ins: [true, true], outs: [false] });
// For bilinear ops (mul, dot, conv) each operand's cotangent reads the other operand only.
const cross: SaveRule = ([a, b]) => ({ ins: [b, a], outs: [false] });
const index: SaveRule = () => ({ ins: [false, true], outs: [false] });

/**
 * The operands each VJP rule above reads (everything else it touches is shape
 * or dtype): a trace keeps only these alive, as PyTorch's saved tensors do,
 * so activations a rule never reads are freed by the model's own tidy scopes.
 * Kept next to the rules because the two must change together.
 */
export const savedRules: { [P in Prim]: SaveRule } = {
  neg: none,
  exp: outOnly,
  log: inOnly,
  sin: inOnly,
  cos: inOnly,
  tanh: outOnly,
  sqrt: outOnly,
  rsqrt: inOut,
  abs: inOnly,
  sign: none,
  floor: none,
  erf: inOnly,
  sigmoid: outOnly,
  log1p: inOnly,
  expm1: outOnly,
  gelu: inOnly,
  geluTanh: inOnly,
  geluGrad: inOnly,
  geluTanhGrad: inOnly,
  layerNorm: inOut,
  adamw: none,
  softmax: outOnly,
  add: none,
  sub: none,
  mul: cross,
  div: ([a, b]) => ({ ins: [false, a || b], outs: [b] }),
  pow: () => ({ ins: [true, true], outs: [true] }),
  maximum: both,
  minimum: both,
  compare: none,
  where: () => ({ ins: [true, false, false], outs: [false] }),
  cast: none,
  sum: none,
  max: inOut,
  argmax: none,
  cumsum: none,
  cumprod: inOut,
  dot: cross,
  conv: cross,
  gather: index,
  scatterAdd: index,
  reshape: none,
  transpose: none,
  broadcast: none,
  slice: none,
  pad: none,
  flip: none,
  concat: none,
  random: none,
};
