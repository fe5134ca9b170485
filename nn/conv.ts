/**
 * @file Convolution layers (NCHW, PyTorch weight layouts) and pooling.
 * `conv2d` uses OIHW weights; `convTranspose2d` uses PyTorch's
 * `[in, out/groups, kh, kw]` and is lowered onto the general `conv` primitive
 * with input dilation (the transpose of stride) and a flipped kernel.
 */
import { fans, initWeightBias, uniformInit, type WeightInit, zerosInit } from "./init.ts";
import type { DType } from "../tensor/dtype.ts";
import { DifflabError, DTypeError, fmtShape, ShapeError } from "../tensor/errors.ts";
import * as ops from "../tensor/ops.ts";
import * as random from "../tensor/random.ts";
import type { Key } from "../tensor/random.ts";
import { bind, Tensor } from "../tensor/tensor.ts";

type Pair = number | readonly [number, number];

function pair(op: string, name: string, v: Pair | undefined, dflt: number, min: number): [number, number] {
  const p: [number, number] = v === undefined ? [dflt, dflt] : typeof v === "number" ? [v, v] : [v[0], v[1]];
  if (!p.every((q) => Number.isInteger(q) && q >= min)) {
    throw new ShapeError(`${op}: ${name} must be integer(s) >= ${min}, got ${JSON.stringify(v)}`);
  }
  return p;
}

function channelBias(op: string, y: Tensor, bias: Tensor | undefined): Tensor {
  if (bias === undefined) return y;
  if (!(bias instanceof Tensor) || bias.ndim !== 1 || bias.shape[0] !== y.shape[1]) {
    throw new ShapeError(
      `${op}: bias must have shape [${y.shape[1]}], got ${
        bias instanceof Tensor ? fmtShape(bias.shape) : String(bias)
      }`,
    );
  }
  return ops.add(y, ops.reshape(bias, [1, y.shape[1], 1, 1]));
}

/** Configuration of {@link conv2d}. */
export interface Conv2dConfig {
  /** Input channels. */
  inChannels: number;
  /** Output channels. */
  outChannels: number;
  /** Kernel size (number or [kh, kw]). */
  kernelSize: Pair;
  /** Stride (default 1). */
  stride?: Pair;
  /** Zero padding: number, [ph, pw], [[top, bottom], [left, right]], "same" or "valid" (default 0). */
  padding?: ops.Conv2dOptions["padding"];
  /** Kernel dilation (default 1). */
  dilation?: Pair;
  /** Channel groups; `groups = inChannels` is depthwise (default 1). */
  groups?: number;
  /** Learn a bias (default true). */
  bias?: boolean;
  /** Weight initialiser (default "torch"). */
  init?: WeightInit;
  /** Parameter dtype (default f32). */
  dtype?: DType;
}

/** Parameters of {@link conv2d}: weight `[out, in/groups, kh, kw]`, bias `[out]`. */
export interface Conv2dParams {
  /** Convolution kernel, `[out, in/groups, kh, kw]`. */
  weight: Tensor;
  /** Per-output-channel bias `[out]`; absent when the layer has no bias. */
  bias?: Tensor;
}

/** Initialises a conv2d layer (PyTorch's default: kaiming_uniform a=√5, bias U(±1/√fan_in)). */
export function conv2dInit(key: Key, cfg: Conv2dConfig): Conv2dParams {
  const g = cfg.groups ?? 1;
  const [kh, kw] = pair("conv2d.init", "kernelSize", cfg.kernelSize, 1, 1);
  if (!Number.isInteger(g) || g < 1 || cfg.inChannels % g !== 0 || cfg.outChannels % g !== 0) {
    throw new ShapeError(
      `conv2d.init: inChannels ${cfg.inChannels} and outChannels ${cfg.outChannels} must both divide by groups ${g}`,
    );
  }
  return initWeightBias(key, [cfg.outChannels, cfg.inChannels / g, kh, kw], cfg.bias ?? true, cfg.init ?? "torch", {
    dtype: cfg.dtype,
  }) as Conv2dParams;
}

/** Options of {@link conv2dApply} (the geometric half of {@link Conv2dConfig}). */
export type Conv2dApplyOptions = Pick<Conv2dConfig, "stride" | "padding" | "dilation" | "groups">;

/** Applies conv2d to NCHW `x`; groups default to `x.shape[1] / weight.shape[1]`. */
export function conv2dApply(p: Conv2dParams, x: Tensor, cfg: Conv2dApplyOptions = {}): Tensor {
  if (!(x instanceof Tensor) || x.ndim !== 4) throw new ShapeError(`conv2d: x must be [N,C,H,W]`);
  if (!(p?.weight instanceof Tensor) || p.weight.ndim !== 4) {
    throw new ShapeError(`conv2d: params.weight must be [O,C/groups,KH,KW]`);
  }
  const groups = cfg.groups ?? x.shape[1] / p.weight.shape[1];
  const y = ops.conv2d(x, p.weight, { stride: cfg.stride, padding: cfg.padding, dilation: cfg.dilation, groups });
  return channelBias("conv2d", y, p.bias);
}

/** The conv2d layer as an `init`/`apply` pair. */
export const conv2d: { init: typeof conv2dInit; apply: typeof conv2dApply } = { init: conv2dInit, apply: conv2dApply };

/** Options of {@link convTranspose2dFn}. */
export interface ConvTranspose2dOptions {
  /** Stride (default 1). */
  stride?: Pair;
  /** Implicit zero padding removed from each side, as PyTorch (default 0). */
  padding?: Pair;
  /** Extra size added to one side of the output (must be < stride or dilation). */
  outputPadding?: Pair;
  /** Kernel dilation (default 1). */
  dilation?: Pair;
  /** Channel groups (default 1). */
  groups?: number;
}

/**
 * Transposed 2-D convolution (`F.conv_transpose2d`): x `[N, Cin, H, W]`, w
 * `[Cin, Cout/groups, KH, KW]`, output side `(H-1)·s - 2p + d·(K-1) + op + 1`.
 */
export function convTranspose2dFn(x: Tensor, w: Tensor, opts: ConvTranspose2dOptions = {}): Tensor {
  const op = "convTranspose2d";
  if (!(x instanceof Tensor) || !(w instanceof Tensor) || x.ndim !== 4 || w.ndim !== 4) {
    throw new ShapeError(`${op}: expected x [N,Cin,H,W] and w [Cin,Cout/groups,KH,KW]`);
  }
  if (x.dtype !== w.dtype) throw new DTypeError(`${op}: x dtype ${x.dtype} and w dtype ${w.dtype} differ`);
  const g = opts.groups ?? 1;
  const [N, C, H, W] = x.shape;
  const [Cw, Cog, KH, KW] = w.shape;
  if (!Number.isInteger(g) || g < 1 || C !== Cw || C % g !== 0) {
    throw new ShapeError(
      `${op}: x ${fmtShape(x.shape)} and w ${fmtShape(w.shape)} do not match groups=${g} (need w.shape[0] = C)`,
    );
  }
  const s = pair(op, "stride", opts.stride, 1, 1);
  const pd = pair(op, "padding", opts.padding, 0, 0);
  const d = pair(op, "dilation", opts.dilation, 1, 1);
  const opad = pair(op, "outputPadding", opts.outputPadding, 0, 0);
  for (const i of [0, 1]) {
    if (opad[i] >= Math.max(s[i], d[i])) {
      throw new ShapeError(`${op}: outputPadding ${opad[i]} must be smaller than stride ${s[i]} or dilation ${d[i]}`);
    }
  }
  const K = [KH, KW];
  const lo = [0, 1].map((i) => d[i] * (K[i] - 1) - pd[i]);
  const hi = [0, 1].map((i) => lo[i] + opad[i]);
  // [Cin, Cout/g, KH, KW] -> [G, Cout/g, Cin/g, KH, KW], spatially flipped.
  const wg = ops.flip(ops.transpose(ops.reshape(w, [g, C / g, Cog, KH, KW]), [0, 2, 1, 3, 4]), [3, 4]);
  const xg = ops.reshape(x, [N, g, C / g, H, W]);
  // Negative padding means cropping; crop with a slice so every backend sees padding >= 0.
  const y5 = bind("conv", [xg, wg], {
    stride: [1, 1],
    padding: [[Math.max(lo[0], 0), Math.max(hi[0], 0)], [Math.max(lo[1], 0), Math.max(hi[1], 0)]],
    lhsDilation: s,
    rhsDilation: d,
  })[0];
  const y = ops.reshape(y5, [N, g * Cog, y5.shape[3], y5.shape[4]]);
  const crop0 = [Math.max(-lo[0], 0), Math.max(-lo[1], 0)];
  const crop1 = [Math.max(-hi[0], 0), Math.max(-hi[1], 0)];
  if (crop0.every((c) => c === 0) && crop1.every((c) => c === 0)) return y;
  return ops.slice(y, [0, 0, crop0[0], crop0[1]], [N, g * Cog, y.shape[2] - crop1[0], y.shape[3] - crop1[1]]);
}

/** Configuration of {@link convTranspose2d}. */
export interface ConvTranspose2dConfig extends ConvTranspose2dOptions {
  /** Input channels. */
  inChannels: number;
  /** Output channels. */
  outChannels: number;
  /** Kernel size. */
  kernelSize: Pair;
  /** Learn a bias (default true). */
  bias?: boolean;
  /** Weight initialiser (default "torch"). */
  init?: WeightInit;
  /** Parameter dtype (default f32). */
  dtype?: DType;
}

/** Parameters of {@link convTranspose2d}: weight `[in, out/groups, kh, kw]`, bias `[out]`. */
export interface ConvTranspose2dParams {
  /** Transposed-convolution kernel, `[in, out/groups, kh, kw]` (PyTorch layout). */
  weight: Tensor;
  /** Per-output-channel bias `[out]`; absent when the layer has no bias. */
  bias?: Tensor;
}

/**
 * Initialises a transposed conv like PyTorch: its fan_in is computed from the
 * stored weight `[in, out/g, kh, kw]`, i.e. `(out/g)·kh·kw`.
 */
export function convTranspose2dInit(key: Key, cfg: ConvTranspose2dConfig): ConvTranspose2dParams {
  const g = cfg.groups ?? 1;
  const [kh, kw] = pair("convTranspose2d.init", "kernelSize", cfg.kernelSize, 1, 1);
  if (!Number.isInteger(g) || g < 1 || cfg.inChannels % g !== 0 || cfg.outChannels % g !== 0) {
    throw new ShapeError(
      `convTranspose2d.init: inChannels ${cfg.inChannels} and outChannels ${cfg.outChannels} must both divide by groups ${g}`,
    );
  }
  const shape = [cfg.inChannels, cfg.outChannels / g, kh, kw];
  const scheme = cfg.init ?? "torch";
  const [kw_, kb] = random.split(key, 2);
  const { weight } = initWeightBias(kw_, shape, false, scheme, { dtype: cfg.dtype });
  if (!(cfg.bias ?? true)) return { weight };
  const fanIn = fans(shape)[0];
  const bias = scheme === "torch"
    ? uniformInit(kb, [cfg.outChannels], 1 / Math.sqrt(fanIn), { dtype: cfg.dtype })
    : zerosInit([cfg.outChannels], { dtype: cfg.dtype });
  return { weight, bias };
}

/** Applies a transposed conv (with bias) to NCHW `x`. */
export function convTranspose2dApply(p: ConvTranspose2dParams, x: Tensor, cfg: ConvTranspose2dOptions = {}): Tensor {
  return channelBias("convTranspose2d", convTranspose2dFn(x, p.weight, cfg), p.bias);
}

/** The transposed conv layer as an `init`/`apply` pair. */
export const convTranspose2d: { init: typeof convTranspose2dInit; apply: typeof convTranspose2dApply } = {
  init: convTranspose2dInit,
  apply: convTranspose2dApply,
};

/** Options of the 2-D pooling functions. */
export interface Pool2dOptions {
  /** Stride (default: the kernel size, as PyTorch). */
  stride?: Pair;
  /** Implicit padding on each side (default 0). */
  padding?: Pair;
}

function poolGeometry(op: string, x: Tensor, kernel: Pair, opts: Pool2dOptions) {
  if (!(x instanceof Tensor) || x.ndim !== 4) throw new ShapeError(`${op}: x must be [N,C,H,W]`);
  const k = pair(op, "kernel", kernel, 1, 1);
  const s = opts.stride === undefined ? k : pair(op, "stride", opts.stride, 1, 1);
  const pd = pair(op, "padding", opts.padding, 0, 0);
  if (pd[0] * 2 > k[0] || pd[1] * 2 > k[1]) {
    throw new ShapeError(`${op}: padding ${JSON.stringify(pd)} must be at most half the kernel ${JSON.stringify(k)}`);
  }
  const [H, W] = [x.shape[2], x.shape[3]];
  const oh = Math.floor((H + 2 * pd[0] - k[0]) / s[0]) + 1;
  const ow = Math.floor((W + 2 * pd[1] - k[1]) / s[1]) + 1;
  if (oh < 1 || ow < 1) {
    throw new ShapeError(`${op}: kernel ${JSON.stringify(k)} does not fit input ${fmtShape(x.shape)}`);
  }
  return { k, s, pd, oh, ow };
}

/**
 * Average pooling (`F.avg_pool2d`, count_include_pad by default), computed as
 * a 1-channel convolution with a constant kernel over `[N·C, 1, H, W]`.
 */
export function avgPool2d(x: Tensor, kernel: Pair, opts: Pool2dOptions & { countIncludePad?: boolean } = {}): Tensor {
  const { k, s, pd } = poolGeometry("avgPool2d", x, kernel, opts);
  const [N, C, H, W] = x.shape;
  const ones = ops.full([1, 1, k[0], k[1]], 1, x.dtype, x);
  const sum = ops.conv2d(ops.reshape(x, [N * C, 1, H, W]), ones, { stride: s, padding: pd });
  const out = ops.reshape(sum, [N, C, sum.shape[2], sum.shape[3]]);
  if (opts.countIncludePad ?? true) return ops.div(out, k[0] * k[1]);
  const count = ops.conv2d(ops.full([1, 1, H, W], 1, x.dtype, x), ones, { stride: s, padding: pd });
  return ops.div(out, ops.reshape(count, [1, 1, count.shape[2], count.shape[3]]));
}

/** Max pooling (`F.max_pool2d`); padded positions never win. */
export function maxPool2d(x: Tensor, kernel: Pair, opts: Pool2dOptions = {}): Tensor {
  const { k, s, pd, oh, ow } = poolGeometry("maxPool2d", x, kernel, opts);
  const [N, C] = x.shape;
  const xp = pd[0] || pd[1] ? ops.pad(x, [[pd[0], pd[0]], [pd[1], pd[1]]], -Infinity) : x;
  const taps: Tensor[] = [];
  for (let i = 0; i < k[0]; i++) {
    for (let j = 0; j < k[1]; j++) {
      taps.push(
        ops.slice(xp, [0, 0, i, j], [N, C, i + (oh - 1) * s[0] + 1, j + (ow - 1) * s[1] + 1], [1, 1, s[0], s[1]]),
      );
    }
  }
  if (taps.length === 1) return taps[0];
  return ops.max(ops.stack(taps, -1), { axis: -1 });
}

/** Mean over the spatial axes, keeping them as size 1 (`AdaptiveAvgPool2d(1)`). */
export function globalAvgPool2d(x: Tensor): Tensor {
  if (!(x instanceof Tensor) || x.ndim !== 4) throw new DifflabError(`globalAvgPool2d: x must be [N,C,H,W]`);
  return ops.mean(x, { axis: [2, 3], keepdims: true });
}
