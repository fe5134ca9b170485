/**
 * @file Normalisation layers and adaLN modulation. Each norm has a
 * parameter-free `...Normalize` function (models with time-dependent or
 * adaLN affine parameters compose it themselves) and an `init`/`apply` pair
 * with the usual elementwise affine. Formulas follow PyTorch: biased variance,
 * eps inside the square root, except DiMR's RMSNorm variant that adds eps to
 * the RMS itself.
 */
import { onesInit, zerosInit } from "./init.ts";
import type { DType } from "../tensor/dtype.ts";
import { DifflabError, fmtShape, ShapeError } from "../tensor/errors.ts";
import * as ops from "../tensor/ops.ts";
import type { Key } from "../tensor/random.ts";
import { normAxis } from "../tensor/shape.ts";
import { bind, Tensor } from "../tensor/tensor.ts";

function checkX(op: string, x: unknown): Tensor {
  if (!(x instanceof Tensor) || x.ndim < 1) throw new ShapeError(`${op}: x must be a Tensor of rank >= 1`);
  return x;
}

/** Reshapes a per-channel vector `[C]` so it broadcasts along `axis` of a rank-`rank` tensor. */
function alongAxis(op: string, name: string, v: Tensor, x: Tensor, axis: number): Tensor {
  const c = x.shape[axis];
  if (!(v instanceof Tensor) || v.ndim !== 1 || v.shape[0] !== c) {
    throw new ShapeError(
      `${op}: ${name} must have shape [${c}] to match axis ${axis} of x ${fmtShape(x.shape)}, got ${
        v instanceof Tensor ? fmtShape(v.shape) : String(v)
      }`,
    );
  }
  const s = new Array(x.ndim).fill(1);
  s[axis] = c;
  return ops.reshape(v, s);
}

function affine(op: string, y: Tensor, p: { weight?: Tensor; bias?: Tensor }, axis: number): Tensor {
  let out = y;
  if (p.weight !== undefined) out = ops.mul(out, alongAxis(op, "weight", p.weight, y, axis));
  if (p.bias !== undefined) out = ops.add(out, alongAxis(op, "bias", p.bias, y, axis));
  return out;
}

/** Options of the normalisers. */
export interface NormOptions {
  /** Added for numerical stability (layerNorm default 1e-5; DiT uses 1e-6). */
  eps?: number;
  /** The normalised (channel) axis: -1 for tokens, 1 for NCHW maps ("LayerNorm2d"). Default -1. */
  axis?: number;
}

/** `(x - mean) / sqrt(var + eps)` over one axis, with the biased variance like torch. */
export function layerNormalize(x: Tensor, opts: NormOptions = {}): Tensor {
  checkX("layerNorm", x);
  const axis = normAxis("layerNorm", opts.axis ?? -1, x.ndim);
  const eps = opts.eps ?? 1e-5;
  if (!(typeof eps === "number" && eps >= 0)) {
    throw new DifflabError(`layerNorm: eps must be a number >= 0, got ${eps}`);
  }
  // One fused row primitive over the last axis. For another axis (LayerNorm2d on NCHW) moving it
  // last costs strided copies forward and back that outweigh the fusion (DiCo-S step 3.95 s vs
  // 3.39 s measured), so that case stays a chain of contiguous primitives.
  if (axis === x.ndim - 1) return bind("layerNorm", [x], { eps })[0];
  const xc = ops.sub(x, ops.mean(x, { axis, keepdims: true }));
  const v = ops.mean(ops.mul(xc, xc), { axis, keepdims: true });
  return ops.mul(xc, ops.rsqrt(ops.add(v, eps)));
}

/** Configuration of {@link layerNorm}. */
export interface LayerNormConfig {
  /** Size of the normalised axis. */
  dim: number;
  /** Learn a weight (and bias) (default true; DiT's block norms use false). */
  affine?: boolean;
  /** Learn a bias when affine (default true). */
  bias?: boolean;
  /** Parameter dtype (default f32). */
  dtype?: DType;
}

/** Parameters of {@link layerNorm}, `{}` without affine. */
export interface NormParams {
  /** Elementwise scale `[dim]` (init 1); absent without affine. */
  weight?: Tensor;
  /** Elementwise shift `[dim]` (init 0); absent without affine or with `bias: false`. */
  bias?: Tensor;
}

function normInit(op: string, cfg: { dim: number; affine?: boolean; bias?: boolean; dtype?: DType }, bias: boolean) {
  if (!Number.isInteger(cfg.dim) || cfg.dim < 1) {
    throw new DifflabError(`${op}: dim must be a positive integer, got ${cfg.dim}`);
  }
  if (!(cfg.affine ?? true)) return {};
  const p: NormParams = { weight: onesInit([cfg.dim], { dtype: cfg.dtype }) };
  if (bias) p.bias = zerosInit([cfg.dim], { dtype: cfg.dtype });
  return p;
}

/** Initialises a LayerNorm: weight ones, bias zeros (the key is unused; norms are deterministic). */
export function layerNormInit(_key: Key | undefined, cfg: LayerNormConfig): NormParams {
  return normInit("layerNorm.init", cfg, cfg.bias ?? true);
}

/** LayerNorm over `opts.axis` with the optional affine of `p`. */
export function layerNormApply(p: NormParams, x: Tensor, opts: NormOptions = {}): Tensor {
  const axis = normAxis("layerNorm", opts.axis ?? -1, checkX("layerNorm", x).ndim);
  return affine("layerNorm", layerNormalize(x, { ...opts, axis }), p ?? {}, axis);
}

/** LayerNorm as an `init`/`apply` pair. */
export const layerNorm: { init: typeof layerNormInit; apply: typeof layerNormApply } = {
  init: layerNormInit,
  apply: layerNormApply,
};

/** Options of the RMS normalisers. */
export interface RmsNormOptions extends NormOptions {
  /**
   * DiMR's TD-RMSNorm form `x / (‖x‖₂·d^-½ + eps)` (eps added to the RMS,
   * outside the square root) instead of torch's `x·rsqrt(mean(x²) + eps)`.
   */
  epsOutside?: boolean;
}

/** RMS normalisation without affine (eps default 1e-6; DiMR's variant uses 1e-8 with `epsOutside`). */
export function rmsNormalize(x: Tensor, opts: RmsNormOptions = {}): Tensor {
  checkX("rmsNorm", x);
  const axis = normAxis("rmsNorm", opts.axis ?? -1, x.ndim);
  const d = x.shape[axis];
  if (opts.epsOutside) {
    const eps = opts.eps ?? 1e-8;
    const rms = ops.mul(ops.sqrt(ops.sum(ops.mul(x, x), { axis, keepdims: true })), d ** -0.5);
    return ops.div(x, ops.add(rms, eps));
  }
  const ms = ops.mean(ops.mul(x, x), { axis, keepdims: true });
  return ops.mul(x, ops.rsqrt(ops.add(ms, opts.eps ?? 1e-6)));
}

/** Configuration of {@link rmsNorm}. */
export interface RmsNormConfig {
  /** Size of the normalised axis. */
  dim: number;
  /** Learn a weight (default true). */
  affine?: boolean;
  /** Learn a bias too (default false; torch's RMSNorm has none). */
  bias?: boolean;
  /** Parameter dtype (default f32). */
  dtype?: DType;
}

/** Initialises an RMSNorm: weight ones (and bias zeros when asked). */
export function rmsNormInit(_key: Key | undefined, cfg: RmsNormConfig): NormParams {
  return normInit("rmsNorm.init", cfg, cfg.bias ?? false);
}

/** RMSNorm over `opts.axis` with the optional affine of `p`. */
export function rmsNormApply(p: NormParams, x: Tensor, opts: RmsNormOptions = {}): Tensor {
  const axis = normAxis("rmsNorm", opts.axis ?? -1, checkX("rmsNorm", x).ndim);
  return affine("rmsNorm", rmsNormalize(x, { ...opts, axis }), p ?? {}, axis);
}

/** RMSNorm as an `init`/`apply` pair. */
export const rmsNorm: { init: typeof rmsNormInit; apply: typeof rmsNormApply } = {
  init: rmsNormInit,
  apply: rmsNormApply,
};

/** GroupNorm statistics over `[C/groups, ...spatial]` of NCHW-like `x` (`F.group_norm`, no affine). */
export function groupNormalize(x: Tensor, numGroups: number, opts: { eps?: number } = {}): Tensor {
  if (!(x instanceof Tensor) || x.ndim < 2) throw new ShapeError(`groupNorm: x must be [N, C, ...]`);
  const [N, C] = x.shape;
  if (!Number.isInteger(numGroups) || numGroups < 1 || C % numGroups !== 0) {
    throw new ShapeError(`groupNorm: ${C} channels of x ${fmtShape(x.shape)} do not divide into ${numGroups} groups`);
  }
  const g = ops.reshape(x, [N, numGroups, -1]);
  return ops.reshape(layerNormalize(g, { axis: -1, eps: opts.eps ?? 1e-5 }), x.shape);
}

/** Configuration of {@link groupNorm}. */
export interface GroupNormConfig {
  /** Number of groups. */
  numGroups: number;
  /** Number of channels (axis 1). */
  numChannels: number;
  /** Learn per-channel weight and bias (default true). */
  affine?: boolean;
  /** Parameter dtype (default f32). */
  dtype?: DType;
}

/** Initialises a GroupNorm. */
export function groupNormInit(_key: Key | undefined, cfg: GroupNormConfig): NormParams {
  if (!Number.isInteger(cfg.numGroups) || cfg.numGroups < 1 || cfg.numChannels % cfg.numGroups !== 0) {
    throw new ShapeError(`groupNorm.init: numChannels ${cfg.numChannels} must divide into numGroups ${cfg.numGroups}`);
  }
  return normInit("groupNorm.init", { dim: cfg.numChannels, affine: cfg.affine, dtype: cfg.dtype }, true);
}

/** GroupNorm over channel groups of `x [N, C, ...]` with per-channel affine. */
export function groupNormApply(p: NormParams, x: Tensor, opts: { numGroups: number; eps?: number }): Tensor {
  return affine("groupNorm", groupNormalize(x, opts.numGroups, opts), p ?? {}, 1);
}

/** GroupNorm as an `init`/`apply` pair. */
export const groupNorm: { init: typeof groupNormInit; apply: typeof groupNormApply } = {
  init: groupNormInit,
  apply: groupNormApply,
};

/**
 * adaLN modulation `x·(1 + scale) + shift`, with `shift`/`scale` of shape
 * `[N, C]` broadcast over every axis of `x` except the batch axis 0 and the
 * channel `axis` (-1 for tokens `[N, T, C]`, as DiT; 1 for NCHW maps, as U-DiT/DiCo).
 */
export function modulate(x: Tensor, shift: Tensor, scale: Tensor, opts: { axis?: number } = {}): Tensor {
  checkX("modulate", x);
  const axis = normAxis("modulate", opts.axis ?? -1, x.ndim);
  if (axis === 0) throw new ShapeError(`modulate: the channel axis cannot be the batch axis 0`);
  const s = new Array(x.ndim).fill(1);
  s[0] = x.shape[0];
  s[axis] = x.shape[axis];
  const fit = (name: string, v: Tensor) => {
    if (!(v instanceof Tensor) || v.ndim !== 2 || v.shape[0] !== s[0] || v.shape[1] !== s[axis]) {
      throw new ShapeError(
        `modulate: ${name} must have shape [${s[0]},${s[axis]}] for x ${
          fmtShape(x.shape)
        } (channel axis ${axis}), got ${v instanceof Tensor ? fmtShape(v.shape) : String(v)}`,
      );
    }
    return ops.reshape(v, s);
  };
  return ops.add(ops.mul(x, ops.add(fit("scale", scale), 1)), fit("shift", shift));
}
