/**
 * @file Classifier-free guidance as library functions over any model function.
 *
 * - DiT family (DiT, DiCo, U-DiT, DyDiT): `forward_with_cfg` runs one forward on [x, x] with labels
 *   [y, null] and guides only output channels 0..2 (`uncond + s (cond - uncond)`); the remaining
 *   channels (the 4th latent channel and the learned-variance channels) pass through per half.
 * - DiMR: `cond + s (cond - uncond)` (U-ViT convention, default s = 0.4), or with `--cfg_scale_pow`
 *   the power-cosine decayed `uncond + s_eff (cond - uncond)`.
 * An optional guidance interval applies guidance only for timesteps inside [lo, hi].
 */
import { DifflabError, fmtShape, ShapeError } from "../tensor/errors.ts";
import {
  add,
  cast,
  concat,
  full,
  greaterEqual,
  lessEqual,
  logicalAnd,
  mul,
  reshape,
  slice,
  sub,
  where,
} from "../tensor/ops.ts";
import type { Tensor } from "../tensor/tensor.ts";
import { f32 } from "./common.ts";
import type { ContinuousModelFn } from "./dpm_solver.ts";
import { dimrLogSnrFromContinuous, type MultiScaleModelFn } from "./dimr.ts";
import type { ModelFn } from "./common.ts";

/** `uncond + scale * (cond - uncond)`; `scale` may be a per-sample [N,1,...] tensor. */
export function guide(cond: Tensor, uncond: Tensor, scale: number | Tensor): Tensor {
  return add(uncond, mul(scale, sub(cond, uncond)));
}

/** DiMR's default rule `cond + scale * (cond - uncond)` (scale 0.4 is DiT scale 1.4). */
export function guideDimr(cond: Tensor, uncond: Tensor, scale: number): Tensor {
  return add(cond, mul(scale, sub(cond, uncond)));
}

/**
 * DiMR's decayed scale at model time `timestep` (0..1000, 1000 = pure noise):
 * (s - 1) (1 - cos(pi (1 - t/1000)^pow)) / 2 + 1, in float32 like the official tensor code.
 */
export function dimrDecayedScale(scale: number, pow: number, timestep: number, diffusionSteps = 1000): number {
  if (!(pow > 0)) throw new DifflabError(`dimrDecayedScale: pow must be > 0, got ${pow}`);
  const R = f32;
  const base = R(1 - R(R(timestep) / diffusionSteps));
  const powed = R(Math.pow(base, pow));
  const step = R(R(R(1 - R(Math.cos(R(powed * R(Math.PI))))) * 1) / 2);
  return R(R(R(scale - 1) * step) + 1);
}

/** A timestep window [lo, hi] (inclusive, in the model's timestep units) where guidance is applied. */
export type GuidanceInterval = readonly [number, number];

/** Options of the DiT-style guidance. */
export interface CfgOptions {
  /** Guidance scale s (DiT: 4.0 for visuals, 1.5 for FID). */
  scale: number;
  /** How many leading output channels are guided (official: 3). */
  channels?: number;
  /** Apply guidance only where lo <= t <= hi (elsewhere the conditional output is used). */
  interval?: GuidanceInterval;
}

// Per-sample "inside the guidance interval" mask shaped [n, 1, ...] like `like`.
function intervalMask(t: Tensor, interval: GuidanceInterval, like: Tensor): Tensor {
  const [lo, hi] = interval;
  if (!(lo <= hi)) throw new DifflabError(`cfg: guidance interval [${lo}, ${hi}] is empty`);
  const tf = cast(t, like.dtype);
  const inside = logicalAnd(greaterEqual(tf, lo), lessEqual(tf, hi));
  return reshape(inside, [t.shape[0], ...like.shape.slice(1).map(() => 1)]);
}

/**
 * DiT's `forward_with_cfg` over a model function: `x`, `t`, `y` are the doubled batch (2n, with
 * `y = [labels, null...]`); only the first half of x is used. Returns the 2n output where both
 * halves carry the guided channels and each half keeps its own remaining channels.
 */
export function forwardWithCfg(model: ModelFn, x: Tensor, t: Tensor, y: Tensor, opts: CfgOptions): Tensor {
  const op = "forwardWithCfg";
  if (x.shape[0] % 2 !== 0) {
    throw new ShapeError(`${op}: x must hold an even batch [cond; uncond], got ${fmtShape(x.shape)}`);
  }
  const n = x.shape[0] / 2;
  const half = slice(x, [0], [n]);
  const out = model(concat([half, half], 0), t, y);
  const ch = opts.channels ?? 3;
  if (out.ndim < 2 || out.shape[1] < ch) {
    throw new ShapeError(`${op}: model output ${fmtShape(out.shape)} has fewer than ${ch} channels`);
  }
  const eps = slice(out, [0, 0], [2 * n, ch]);
  const rest = slice(out, [0, ch]);
  const cond = slice(eps, [0], [n]), uncond = slice(eps, [n]);
  let guided = guide(cond, uncond, opts.scale);
  // Outside the interval the conditional output passes through exactly.
  if (opts.interval) guided = where(intervalMask(slice(t, [0], [n]), opts.interval, cond), guided, cond);
  const both = concat([guided, guided], 0);
  return rest.shape[1] === 0 ? both : concat([both, rest], 1);
}

/**
 * A guided model function over an n-batch: each call runs `model` once on [x, x] / [t, t] /
 * [y, null] and returns the n-batch the DiT samplers need (guided leading channels, the other
 * channels from the conditional half). Sampling with it equals the official 2n-batch loop's
 * first half, at half the sampler cost.
 */
export function cfgModel(model: ModelFn, opts: CfgOptions & { nullLabel: number }): ModelFn {
  if (!Number.isInteger(opts.nullLabel)) {
    throw new DifflabError(`cfgModel: nullLabel must be an integer, got ${opts.nullLabel}`);
  }
  return (x, t, y) => {
    if (!y) throw new DifflabError("cfgModel: the guided model needs class labels y");
    const n = x.shape[0];
    const out = forwardWithCfg(
      model,
      concat([x, x], 0),
      concat([t, t], 0),
      concat([y, full([n], opts.nullLabel, y.dtype, y)], 0),
      opts,
    );
    return slice(out, [0], [n]);
  };
}

/** Options of DiMR's guidance. */
export interface DimrCfgOptions {
  /** Guidance scale: 0.4 by default with the `cond + s (cond - uncond)` rule. */
  scale?: number;
  /** With pow > 0 use the decayed rule `uncond + s_eff (cond - uncond)` (scale must be >= 1). */
  scalePow?: number;
  /** The CFG null label (1000 for ImageNet, i.e. num_classes - 1). */
  nullLabel: number;
  /** Class labels of the batch. */
  y: Tensor;
  /** Apply guidance only where lo <= t <= hi (model time t_cont*N). */
  interval?: GuidanceInterval;
  /** Number of DDPM steps (1000). */
  N?: number;
}

/** DiMR's guided sampler model (eval.py `cfg_nnet` inside `model_fn`): two passes, last output. */
export function dimrCfgModelFn(model: MultiScaleModelFn, opts: DimrCfgOptions): ContinuousModelFn {
  const N = opts.N ?? 1000;
  const s = opts.scale ?? 0.4;
  const pow = opts.scalePow ?? -1;
  return (x, tc) => {
    const n = x.shape[0];
    const logSnr = full([n], dimrLogSnrFromContinuous(tc, N), x.dtype, x);
    const last = (o: Tensor[]) => o[o.length - 1];
    const cond = last(model(x, logSnr, opts.y));
    const uncond = last(model(x, logSnr, full([n], opts.nullLabel, opts.y.dtype, opts.y)));
    const t = f32(f32(tc) * N);
    if (opts.interval && !(t >= opts.interval[0] && t <= opts.interval[1])) return cond;
    if (pow === -1) return guideDimr(cond, uncond, s);
    return guide(cond, uncond, dimrDecayedScale(s, pow, t, N));
  };
}
