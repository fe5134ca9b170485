/**
 * @file DiT's Gaussian diffusion (the ADM / IDDPM `GaussianDiffusion` + `SpacedDiffusion`), as
 * pure functions over a plain schedule record and tensors.
 *
 * Numerics follow the official code: every schedule array is computed in float64 on the host,
 * and a per-sample coefficient is picked from the float64 array and only then converted to the
 * tensor's dtype (`_extract_into_tensor` indexes in float64 and calls `.float()`), so all tensor
 * math runs in the input's dtype (float32 in the official runs; f64 works on the cpu backend).
 *
 * Randomness is explicit: steps take their `noise`, loops take a PRNG `key`.
 */
import { stopGradient } from "../autograd/autograd.ts";
import { DifflabError, fmtShape, ShapeError } from "../tensor/errors.ts";
import {
  add,
  cast,
  concat,
  div,
  equal,
  exp,
  full,
  greater,
  less,
  log,
  maximum,
  mean,
  minimum,
  mul,
  neg,
  notEqual,
  reshape,
  scalar,
  slice,
  sqrt,
  sub,
  take,
  tanh,
  where,
} from "../tensor/ops.ts";
import * as random from "../tensor/random.ts";
import type { Key } from "../tensor/random.ts";
import { type Tensor, tidy, tracers } from "../tensor/tensor.ts";
import {
  checkSame,
  checkX,
  extract,
  type ModelFn,
  numpyLinspace,
  scheduleTensor,
  type Timesteps,
  toTimesteps,
} from "./common.ts";
import { respaceBetas, type RespacingSpec, spaceTimesteps } from "./respace.ts";

/** What the model predicts. */
export type MeanType = "epsilon" | "xstart";
/** How the reverse-process variance is obtained ("learned_range" is DiT's learned sigma). */
export type VarType = "learned_range" | "learned" | "fixed_small" | "fixed_large";
/** Training loss: "mse" (plus the VLB term when the variance is learned), or the (rescaled) VLB. */
export type LossType = "mse" | "rescaled_mse" | "kl" | "rescaled_kl";

/** A Gaussian diffusion process: float64 schedule arrays plus the model's parameterisation. */
export interface GaussianDiffusion {
  /** Number of (possibly respaced) steps. */
  readonly numTimesteps: number;
  /** Number of steps of the process it was respaced from. */
  readonly originalNumSteps: number;
  /** Respaced index -> original timestep (the value the model receives). */
  readonly timestepMap: Int32Array;
  /** What the model predicts. */
  readonly meanType: MeanType;
  /** How the reverse variance is obtained. */
  readonly varType: VarType;
  /** Which training loss `trainingLosses` computes. */
  readonly lossType: LossType;
  /** Per-step betas (float64). */
  readonly betas: Float64Array;
  /** log(betas), the upper end of the learned-range log variance. */
  readonly logBetas: Float64Array;
  /** alphabar_t = prod_{s<=t} (1 - beta_s). */
  readonly alphasCumprod: Float64Array;
  /** alphabar_{t-1}, with 1 at t = 0. */
  readonly alphasCumprodPrev: Float64Array;
  /** alphabar_{t+1}, with 0 at the last step. */
  readonly alphasCumprodNext: Float64Array;
  /** sqrt(alphabar_t). */
  readonly sqrtAlphasCumprod: Float64Array;
  /** sqrt(1 - alphabar_t). */
  readonly sqrtOneMinusAlphasCumprod: Float64Array;
  /** 1 - alphas_cumprod (q(x_t|x_0)'s variance). */
  readonly oneMinusAlphasCumprod: Float64Array;
  /** log(1 - alphabar_t). */
  readonly logOneMinusAlphasCumprod: Float64Array;
  /** sqrt(1 / alphabar_t). */
  readonly sqrtRecipAlphasCumprod: Float64Array;
  /** sqrt(1 / alphabar_t - 1). */
  readonly sqrtRecipm1AlphasCumprod: Float64Array;
  /** Variance of q(x_{t-1} | x_t, x_0); 0 at t = 0. */
  readonly posteriorVariance: Float64Array;
  /** log posterior variance with its first entry (0) replaced by the second; empty for one step. */
  readonly posteriorLogVarianceClipped: Float64Array;
  /** Posterior mean coefficient of x_0. */
  readonly posteriorMeanCoef1: Float64Array;
  /** Posterior mean coefficient of x_t. */
  readonly posteriorMeanCoef2: Float64Array;
  /** FIXED_LARGE's variance: [posterior_variance[1], betas[1:]], and its log. */
  readonly fixedLargeVariance: Float64Array;
  /** log of fixedLargeVariance. */
  readonly fixedLargeLogVariance: Float64Array;
}

/** Options of {@link gaussianDiffusion}. */
export interface GaussianDiffusionOptions {
  /** What the model predicts (default epsilon). */
  meanType?: MeanType;
  /** Variance parameterisation (default learned_range). */
  varType?: VarType;
  /** Training loss (default mse). */
  lossType?: LossType;
  /** Respaced index -> original timestep; identity by default. */
  timestepMap?: Int32Array | readonly number[];
  /** Length of the original process (default: the largest mapped step + 1, or betas.length). */
  originalNumSteps?: number;
}

const MEAN_TYPES: readonly MeanType[] = ["epsilon", "xstart"];
const VAR_TYPES: readonly VarType[] = ["learned_range", "learned", "fixed_small", "fixed_large"];
const LOSS_TYPES: readonly LossType[] = ["mse", "rescaled_mse", "kl", "rescaled_kl"];

function oneOf<T extends string>(op: string, name: string, v: T | undefined, all: readonly T[], dflt: T): T {
  if (v === undefined) return dflt;
  if (!all.includes(v)) {
    throw new DifflabError(`${op}: ${name} must be one of ${all.join("|")}, got ${JSON.stringify(v)}`);
  }
  return v;
}

const map64 = (a: Float64Array, f: (v: number, i: number) => number) => Float64Array.from(a, f);

/** Builds every derived schedule array from float64 betas (GaussianDiffusion.__init__). */
export function gaussianDiffusion(
  betas: Float64Array | readonly number[],
  opts: GaussianDiffusionOptions = {},
): GaussianDiffusion {
  const op = "gaussianDiffusion";
  const b = Float64Array.from(betas);
  if (b.length === 0) throw new DifflabError(`${op}: betas must be non-empty`);
  b.forEach((v, i) => {
    if (!(v > 0 && v <= 1)) throw new DifflabError(`${op}: betas must lie in (0, 1], got betas[${i}] = ${v}`);
  });
  const T = b.length;
  const acp = new Float64Array(T);
  let c = 1;
  for (let i = 0; i < T; i++) acp[i] = c *= 1 - b[i];
  const acpPrev = map64(acp, (_, i) => (i === 0 ? 1 : acp[i - 1]));
  const acpNext = map64(acp, (_, i) => (i === T - 1 ? 0 : acp[i + 1]));
  const pv = map64(b, (v, i) => (v * (1 - acpPrev[i])) / (1 - acp[i]));
  const plvc = T > 1 ? map64(pv, (v, i) => Math.log(i === 0 ? pv[1] : v)) : new Float64Array(0);
  const fixedLarge = map64(b, (v, i) => (i === 0 ? (T > 1 ? pv[1] : v) : v));
  const timestepMap = opts.timestepMap
    ? Int32Array.from(opts.timestepMap)
    : Int32Array.from({ length: T }, (_, i) => i);
  if (timestepMap.length !== T) {
    throw new DifflabError(`${op}: timestepMap has ${timestepMap.length} entries for ${T} betas`);
  }
  return {
    numTimesteps: T,
    originalNumSteps: opts.originalNumSteps ?? Math.max(T, timestepMap[T - 1] + 1),
    timestepMap,
    meanType: oneOf(op, "meanType", opts.meanType, MEAN_TYPES, "epsilon"),
    varType: oneOf(op, "varType", opts.varType, VAR_TYPES, "learned_range"),
    lossType: oneOf(op, "lossType", opts.lossType, LOSS_TYPES, "mse"),
    betas: b,
    logBetas: map64(b, Math.log),
    alphasCumprod: acp,
    alphasCumprodPrev: acpPrev,
    alphasCumprodNext: acpNext,
    sqrtAlphasCumprod: map64(acp, Math.sqrt),
    sqrtOneMinusAlphasCumprod: map64(acp, (v) => Math.sqrt(1 - v)),
    oneMinusAlphasCumprod: map64(acp, (v) => 1 - v),
    logOneMinusAlphasCumprod: map64(acp, (v) => Math.log(1 - v)),
    sqrtRecipAlphasCumprod: map64(acp, (v) => Math.sqrt(1 / v)),
    sqrtRecipm1AlphasCumprod: map64(acp, (v) => Math.sqrt(1 / v - 1)),
    posteriorVariance: pv,
    posteriorLogVarianceClipped: plvc,
    posteriorMeanCoef1: map64(b, (v, i) => (v * Math.sqrt(acpPrev[i])) / (1 - acp[i])),
    posteriorMeanCoef2: map64(b, (v, i) => ((1 - acpPrev[i]) * Math.sqrt(1 - v)) / (1 - acp[i])),
    fixedLargeVariance: fixedLarge,
    fixedLargeLogVariance: map64(fixedLarge, Math.log),
  };
}

// ------------------------------------------------------------------ beta schedules

/** Ho et al.'s linear schedule, scaled so any step count matches 1000 steps of 1e-4..0.02 (float64). */
export function linearBetaSchedule(numTimesteps: number): Float64Array {
  const scale = 1000 / numTimesteps;
  return numpyLinspace(scale * 0.0001, scale * 0.02, numTimesteps);
}

/** Betas that discretise a cumulative-alpha function `alphaBar` on [0, 1], each capped at `maxBeta`. */
export function betasForAlphaBar(numTimesteps: number, alphaBar: (t: number) => number, maxBeta = 0.999): Float64Array {
  return Float64Array.from({ length: numTimesteps }, (_, i) => {
    const t1 = i / numTimesteps, t2 = (i + 1) / numTimesteps;
    return Math.min(1 - alphaBar(t2) / alphaBar(t1), maxBeta);
  });
}

/** IDDPM's squared-cosine schedule ("squaredcos_cap_v2"). */
export function squaredCosBetaSchedule(numTimesteps: number): Float64Array {
  return betasForAlphaBar(numTimesteps, (t) => Math.cos(((t + 0.008) / 1.008) * Math.PI / 2) ** 2);
}

/** A named schedule: "linear" or "squaredcos_cap_v2" (get_named_beta_schedule). */
export function namedBetaSchedule(name: string, numTimesteps: number): Float64Array {
  if (!Number.isInteger(numTimesteps) || numTimesteps < 1) {
    throw new DifflabError(`namedBetaSchedule: numTimesteps must be a positive integer, got ${numTimesteps}`);
  }
  if (name === "linear") return linearBetaSchedule(numTimesteps);
  if (name === "squaredcos_cap_v2" || name === "cosine") return squaredCosBetaSchedule(numTimesteps);
  throw new DifflabError(`namedBetaSchedule: unknown beta schedule "${name}" (expected linear or squaredcos_cap_v2)`);
}

/** A process that keeps only `useTimesteps` of the base betas (SpacedDiffusion). */
export function spacedDiffusion(
  betas: Float64Array,
  useTimesteps: Iterable<number>,
  opts: Omit<GaussianDiffusionOptions, "timestepMap" | "originalNumSteps"> = {},
): GaussianDiffusion {
  const r = respaceBetas(betas, useTimesteps);
  return gaussianDiffusion(r.betas, { ...opts, timestepMap: r.timestepMap, originalNumSteps: betas.length });
}

/** Options of {@link createDiffusion}, with DiT's defaults. */
export interface CreateDiffusionOptions {
  /** "linear" (default) or "squaredcos_cap_v2". */
  noiseSchedule?: string;
  /** Train on the rescaled VLB only. */
  useKl?: boolean;
  /** Without learned sigma: the posterior variance instead of beta. */
  sigmaSmall?: boolean;
  /** The model predicts x_0 instead of epsilon. */
  predictXstart?: boolean;
  /** Learned sigma (2C output channels); default true. */
  learnSigma?: boolean;
  /** Scale the VLB term by T/1000 (rescaled_mse). */
  rescaleLearnedSigmas?: boolean;
  /** Steps of the base process; default 1000. */
  diffusionSteps?: number;
}

/**
 * DiT's `create_diffusion(timestep_respacing)`: "" for the 1000-step training process, "250" for
 * ancestral sampling, "ddim50" for DDIM, or a list of section counts.
 */
export function createDiffusion(respacing: RespacingSpec = "", opts: CreateDiffusionOptions = {}): GaussianDiffusion {
  const steps = opts.diffusionSteps ?? 1000;
  const betas = namedBetaSchedule(opts.noiseSchedule ?? "linear", steps);
  const lossType: LossType = opts.useKl ? "rescaled_kl" : opts.rescaleLearnedSigmas ? "rescaled_mse" : "mse";
  const learn = opts.learnSigma ?? true;
  const spec = respacing === "" || (Array.isArray(respacing) && respacing.length === 0) ? [steps] : respacing;
  return spacedDiffusion(betas, spaceTimesteps(steps, spec), {
    meanType: opts.predictXstart ? "xstart" : "epsilon",
    varType: learn ? "learned_range" : opts.sigmaSmall ? "fixed_small" : "fixed_large",
    lossType,
  });
}

// ------------------------------------------------------------------ distributions

/** KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats (broadcasting). */
export function normalKl(
  mean1: Tensor,
  logvar1: Tensor | number,
  mean2: Tensor | number,
  logvar2: Tensor | number,
): Tensor {
  const T = (v: Tensor | number) => (typeof v === "number" ? scalar(v, mean1.dtype, mean1) : v);
  const [lv1, m2, lv2] = [T(logvar1), T(mean2), T(logvar2)];
  const diff = sub(mean1, m2);
  const a = add(sub(add(-1, lv2), lv1), exp(sub(lv1, lv2)));
  return mul(0.5, add(a, mul(mul(diff, diff), exp(neg(lv2)))));
}

/** The tanh approximation of the standard normal CDF used by the official code. */
export function approxStandardNormalCdf(x: Tensor): Tensor {
  // th.pow(x, 3) runs as x*x*x in float32; keep its rounding.
  const cube = mul(mul(x, x), x);
  return mul(0.5, add(1, tanh(mul(Math.sqrt(2 / Math.PI), add(x, mul(0.044715, cube))))));
}

/**
 * Log-likelihood (nats) of `x` (data in [-1, 1] from 8-bit values) under a Gaussian discretised
 * into bins of width 2/255; the edge bins extend to infinity.
 */
export function discretizedGaussianLogLikelihood(x: Tensor, means: Tensor, logScales: Tensor): Tensor {
  const centered = sub(x, means);
  const invStdv = exp(neg(logScales));
  const cdfPlus = approxStandardNormalCdf(mul(invStdv, add(centered, 1 / 255)));
  const cdfMin = approxStandardNormalCdf(mul(invStdv, sub(centered, 1 / 255)));
  const logCdfPlus = log(maximum(cdfPlus, 1e-12));
  const logOneMinusCdfMin = log(maximum(sub(1, cdfMin), 1e-12));
  const logDelta = log(maximum(sub(cdfPlus, cdfMin), 1e-12));
  return where(less(x, -0.999), logCdfPlus, where(greater(x, 0.999), logOneMinusCdfMin, logDelta));
}

/** Mean over all non-batch axes. */
export function meanFlat(x: Tensor): Tensor {
  if (x.ndim <= 1) return x;
  return mean(x, { axis: [...Array(x.ndim - 1).keys()].map((i) => i + 1) });
}

// ------------------------------------------------------------------ forward process

/** Checks a diffusion record and coerces `t` for a batch of `n`. */
function prep(op: string, d: GaussianDiffusion, t: Timesteps, n: number): Tensor {
  if (!d || !(d.betas instanceof Float64Array)) throw new DifflabError(`${op}: d must be a GaussianDiffusion record`);
  return toTimesteps(op, t, n);
}

/** Mean, variance and log variance of q(x_t | x_0). */
export function qMeanVariance(
  d: GaussianDiffusion,
  x0: Tensor,
  t: Timesteps,
): { mean: Tensor; variance: Tensor; logVariance: Tensor } {
  const op = "qMeanVariance";
  checkX(op, "x0", x0);
  const ti = prep(op, d, t, x0.shape[0]);
  return {
    mean: mul(extract(op, d.sqrtAlphasCumprod, ti, x0), x0),
    variance: extract(op, d.oneMinusAlphasCumprod, ti, x0),
    logVariance: extract(op, d.logOneMinusAlphasCumprod, ti, x0),
  };
}

/** Samples q(x_t | x_0) with the given standard-normal `noise`: sqrt(acp_t) x0 + sqrt(1 - acp_t) noise. */
export function qSample(d: GaussianDiffusion, x0: Tensor, t: Timesteps, noise: Tensor): Tensor {
  const op = "qSample";
  checkX(op, "x0", x0);
  checkSame(op, "x0", x0, "noise", noise);
  const ti = prep(op, d, t, x0.shape[0]);
  return add(
    mul(extract(op, d.sqrtAlphasCumprod, ti, x0), x0),
    mul(extract(op, d.sqrtOneMinusAlphasCumprod, ti, x0), noise),
  );
}

/** Mean, variance and clipped log variance of the posterior q(x_{t-1} | x_t, x_0). */
export function qPosteriorMeanVariance(
  d: GaussianDiffusion,
  x0: Tensor,
  xt: Tensor,
  t: Timesteps,
): { mean: Tensor; variance: Tensor; logVarianceClipped: Tensor } {
  const op = "qPosteriorMeanVariance";
  checkX(op, "x0", x0);
  checkSame(op, "x0", x0, "xt", xt);
  const ti = prep(op, d, t, x0.shape[0]);
  return {
    mean: add(mul(extract(op, d.posteriorMeanCoef1, ti, xt), x0), mul(extract(op, d.posteriorMeanCoef2, ti, xt), xt)),
    variance: extract(op, d.posteriorVariance, ti, xt),
    logVarianceClipped: extract(op, d.posteriorLogVarianceClipped, ti, xt),
  };
}

/** x_0 = sqrt(1/acp) x_t - sqrt(1/acp - 1) eps. */
export function predictXstartFromEps(d: GaussianDiffusion, xt: Tensor, t: Timesteps, eps: Tensor): Tensor {
  const op = "predictXstartFromEps";
  checkSame(op, "xt", xt, "eps", eps);
  const ti = prep(op, d, t, xt.shape[0]);
  return sub(
    mul(extract(op, d.sqrtRecipAlphasCumprod, ti, xt), xt),
    mul(extract(op, d.sqrtRecipm1AlphasCumprod, ti, xt), eps),
  );
}

/** eps = (sqrt(1/acp) x_t - x_0) / sqrt(1/acp - 1). */
export function predictEpsFromXstart(d: GaussianDiffusion, xt: Tensor, t: Timesteps, x0: Tensor): Tensor {
  const op = "predictEpsFromXstart";
  checkSame(op, "xt", xt, "x0", x0);
  const ti = prep(op, d, t, xt.shape[0]);
  return div(
    sub(mul(extract(op, d.sqrtRecipAlphasCumprod, ti, xt), xt), x0),
    extract(op, d.sqrtRecipm1AlphasCumprod, ti, xt),
  );
}

// ------------------------------------------------------------------ reverse process

/** Options shared by the reverse-process functions. */
export interface ReverseOptions {
  /** Clamp the x_0 prediction to [-1, 1] (the official default is true; DiT samples with false). */
  clipDenoised?: boolean;
  /** Applied to the x_0 prediction before clipping. */
  denoisedFn?: (x0: Tensor) => Tensor;
  /** Class labels passed to the model. */
  y?: Tensor;
}

/** The result of {@link pMeanVariance}. */
export interface PMeanVariance {
  /** Mean of p(x_{t-1} | x_t). */
  mean: Tensor;
  /** Variance of p(x_{t-1} | x_t). */
  variance: Tensor;
  /** Log variance of p(x_{t-1} | x_t). */
  logVariance: Tensor;
  /** The x_0 prediction. */
  predXstart: Tensor;
  /** The raw model output. */
  modelOutput: Tensor;
}

/** The original timesteps the model sees for respaced indices `t` (SpacedDiffusion's _WrappedModel). */
export function modelTimesteps(d: GaussianDiffusion, t: Timesteps, n: number): Tensor {
  const ti = prep("modelTimesteps", d, t, n);
  return take(scheduleTensor(d.timestepMap, "i32"), ti, 0);
}

/** Calls `model(x, timestepMap[t], y)`, as SpacedDiffusion's wrapped model does. */
export function callModel(d: GaussianDiffusion, model: ModelFn, x: Tensor, t: Timesteps, y?: Tensor): Tensor {
  if (typeof model !== "function") throw new DifflabError(`callModel: model must be a function (x, t, y) -> Tensor`);
  return model(x, modelTimesteps(d, t, x.shape[0]), y);
}

/**
 * p(x_{t-1} | x_t) from a model output already computed for (x, t): splits off the variance
 * channels (learned sigma: log variance interpolated between the clipped posterior log variance
 * and log beta by (v+1)/2), predicts x_0 and the posterior mean.
 */
export function pMeanVarianceFromOutput(
  d: GaussianDiffusion,
  modelOutput: Tensor,
  x: Tensor,
  t: Timesteps,
  opts: ReverseOptions = {},
): PMeanVariance {
  const op = "pMeanVariance";
  checkX(op, "x", x);
  const ti = prep(op, d, t, x.shape[0]);
  const C = x.shape[1] ?? 1;
  let out = modelOutput, variance: Tensor, logVariance: Tensor;
  if (d.varType === "learned" || d.varType === "learned_range") {
    const want = [x.shape[0], 2 * C, ...x.shape.slice(2)];
    if (x.ndim < 2 || modelOutput.shape.length !== want.length || modelOutput.shape.some((v, i) => v !== want[i])) {
      throw new ShapeError(
        `${op}: with a learned variance the model output must have shape ${fmtShape(want)} (2C channels), got ${
          fmtShape(modelOutput.shape)
        }`,
      );
    }
    out = slice(modelOutput, [0, 0], [x.shape[0], C]);
    const v = slice(modelOutput, [0, C], [x.shape[0], 2 * C]);
    if (d.varType === "learned") logVariance = v;
    else {
      if (d.numTimesteps < 2) {
        throw new DifflabError(`${op}: a learned-range variance needs at least 2 diffusion steps`);
      }
      const minLog = extract(op, d.posteriorLogVarianceClipped, ti, x);
      const maxLog = extract(op, d.logBetas, ti, x);
      const frac = div(add(v, 1), 2);
      logVariance = add(mul(frac, maxLog), mul(sub(1, frac), minLog));
    }
    variance = exp(logVariance);
  } else {
    checkSame(op, "model output", modelOutput, "x", x);
    const large = d.varType === "fixed_large";
    variance = extract(op, large ? d.fixedLargeVariance : d.posteriorVariance, ti, x);
    logVariance = extract(op, large ? d.fixedLargeLogVariance : d.posteriorLogVarianceClipped, ti, x);
  }
  const process = (v: Tensor) => {
    const w = opts.denoisedFn ? opts.denoisedFn(v) : v;
    return opts.clipDenoised ?? true ? minimum(maximum(w, -1), 1) : w;
  };
  const predXstart = process(d.meanType === "xstart" ? out : predictXstartFromEps(d, x, ti, out));
  const { mean } = qPosteriorMeanVariance(d, predXstart, x, ti);
  return { mean, variance, logVariance, predXstart, modelOutput };
}

/** Runs the model at (x, t) and returns p(x_{t-1} | x_t) and the x_0 prediction. */
export function pMeanVariance(
  d: GaussianDiffusion,
  model: ModelFn,
  x: Tensor,
  t: Timesteps,
  opts: ReverseOptions = {},
): PMeanVariance {
  checkX("pMeanVariance", "x", x);
  const ti = prep("pMeanVariance", d, t, x.shape[0]);
  return pMeanVarianceFromOutput(d, callModel(d, model, x, ti, opts.y), x, ti, opts);
}

function nonzeroMask(t: Tensor, like: Tensor): Tensor {
  return reshape(cast(notEqual(t, 0), like.dtype), [t.shape[0], ...like.shape.slice(1).map(() => 1)]);
}

/** Options of a stochastic step. */
export interface StepOptions extends ReverseOptions {
  /** Standard-normal noise shaped like x (torch.randn_like inside the official step). */
  noise?: Tensor;
}

/** The result of one reverse step. */
export interface StepResult {
  /** The new sample x_{t-1}. */
  sample: Tensor;
  /** The x_0 prediction. */
  predXstart: Tensor;
}

/** One ancestral DDPM step: mean + 1[t != 0] exp(0.5 log_var) noise. */
export function pSample(
  d: GaussianDiffusion,
  model: ModelFn,
  x: Tensor,
  t: Timesteps,
  opts: StepOptions = {},
): StepResult {
  const op = "pSample";
  checkX(op, "x", x);
  const ti = prep(op, d, t, x.shape[0]);
  return pSampleFromOutput(d, callModel(d, model, x, ti, opts.y), x, ti, opts);
}

/** {@link pSample} from a model output already computed for (x, t). */
export function pSampleFromOutput(
  d: GaussianDiffusion,
  modelOutput: Tensor,
  x: Tensor,
  t: Timesteps,
  opts: StepOptions = {},
): StepResult {
  const op = "pSample";
  if (!opts.noise) {
    throw new DifflabError(`${op}: pass opts.noise (standard-normal, shaped like x ${fmtShape(x.shape)})`);
  }
  checkSame(op, "x", x, "noise", opts.noise);
  const ti = prep(op, d, t, x.shape[0]);
  const out = pMeanVarianceFromOutput(d, modelOutput, x, ti, opts);
  const sample = add(out.mean, mul(mul(nonzeroMask(ti, x), exp(mul(0.5, out.logVariance))), opts.noise));
  return { sample, predXstart: out.predXstart };
}

/** Options of a DDIM step. */
export interface DdimOptions extends StepOptions {
  /** 0 (default) is deterministic DDIM; 1 matches DDPM's posterior variance. */
  eta?: number;
}

/** One DDIM step (Song et al. eq. 12), with eps re-derived from the x_0 prediction. */
export function ddimSample(
  d: GaussianDiffusion,
  model: ModelFn,
  x: Tensor,
  t: Timesteps,
  opts: DdimOptions = {},
): StepResult {
  const op = "ddimSample";
  checkX(op, "x", x);
  const ti = prep(op, d, t, x.shape[0]);
  return ddimSampleFromOutput(d, callModel(d, model, x, ti, opts.y), x, ti, opts);
}

/** {@link ddimSample} from a model output already computed for (x, t). */
export function ddimSampleFromOutput(
  d: GaussianDiffusion,
  modelOutput: Tensor,
  x: Tensor,
  t: Timesteps,
  opts: DdimOptions = {},
): StepResult {
  const op = "ddimSample";
  const eta = opts.eta ?? 0;
  if (!(eta >= 0)) throw new DifflabError(`${op}: eta must be >= 0, got ${eta}`);
  const ti = prep(op, d, t, x.shape[0]);
  const out = pMeanVarianceFromOutput(d, modelOutput, x, ti, opts);
  const eps = predictEpsFromXstart(d, x, ti, out.predXstart);
  const ab = extract(op, d.alphasCumprod, ti, x);
  const abPrev = extract(op, d.alphasCumprodPrev, ti, x);
  const sigma = mul(mul(eta, sqrt(div(sub(1, abPrev), sub(1, ab)))), sqrt(sub(1, div(ab, abPrev))));
  const meanPred = add(mul(out.predXstart, sqrt(abPrev)), mul(sqrt(sub(sub(1, abPrev), mul(sigma, sigma))), eps));
  if (eta === 0) return { sample: meanPred, predXstart: out.predXstart };
  if (!opts.noise) throw new DifflabError(`${op}: eta = ${eta} > 0 needs opts.noise (standard-normal, shaped like x)`);
  checkSame(op, "x", x, "noise", opts.noise);
  return { sample: add(meanPred, mul(mul(nonzeroMask(ti, x), sigma), opts.noise)), predXstart: out.predXstart };
}

/** One deterministic reverse-DDIM step x_t -> x_{t+1} (encoding). */
export function ddimReverseSample(
  d: GaussianDiffusion,
  model: ModelFn,
  x: Tensor,
  t: Timesteps,
  opts: ReverseOptions = {},
): StepResult {
  const op = "ddimReverseSample";
  checkX(op, "x", x);
  const ti = prep(op, d, t, x.shape[0]);
  const out = pMeanVariance(d, model, x, ti, opts);
  const eps = predictEpsFromXstart(d, x, ti, out.predXstart);
  const abNext = extract(op, d.alphasCumprodNext, ti, x);
  return { sample: add(mul(out.predXstart, sqrt(abNext)), mul(sqrt(sub(1, abNext)), eps)), predXstart: out.predXstart };
}

// ------------------------------------------------------------------ sampling loops

/** What a sampling loop reports after each step. Its tensors are valid only during the callback. */
export interface StepInfo {
  /** 0-based step number. */
  step: number;
  /** Total number of steps. */
  total: number;
  /** The respaced timestep index just taken (counting down to 0). */
  t: number;
  /** The new sample x_{t-1}. */
  sample: Tensor;
  /** The x_0 prediction. */
  predXstart: Tensor;
}

/** Options of the sampling loops. */
export interface LoopOptions extends ReverseOptions {
  /** Starting noise x_T; drawn from `key` when absent. */
  noise?: Tensor;
  /** PRNG key for x_T and the per-step noise. */
  key?: Key;
  /** Called after every step (awaited if it returns a promise). */
  onStep?: (info: StepInfo) => void | Promise<void>;
  /** dtype of drawn noise (default f32). */
  dtype?: "f32" | "f64";
}

async function loop(
  op: string,
  d: GaussianDiffusion,
  shape: readonly number[],
  opts: LoopOptions,
  needNoise: boolean,
  step: (x: Tensor, t: number, noise: Tensor | undefined) => StepResult,
): Promise<Tensor> {
  if (!opts.noise && !opts.key) throw new DifflabError(`${op}: pass opts.key (a PRNG key) or opts.noise (x_T)`);
  if (needNoise && !opts.key) {
    throw new DifflabError(`${op}: stochastic sampling needs opts.key for the per-step noise`);
  }
  if (opts.noise && fmtShape(opts.noise.shape) !== fmtShape(shape)) {
    throw new ShapeError(`${op}: noise has shape ${fmtShape(opts.noise.shape)} but shape is ${fmtShape(shape)}`);
  }
  const keys = opts.key ? random.split(opts.key, d.numTimesteps + 1) : [];
  const dtype = opts.noise?.dtype === "f64" ? "f64" : opts.dtype ?? "f32";
  const xT = opts.noise ?? tidy(() => random.normal(keys[d.numTimesteps], shape, { dtype }));
  let img = xT;
  for (let k = 0; k < d.numTimesteps; k++) {
    const i = d.numTimesteps - 1 - k;
    const out = tidy(() =>
      step(img, i, needNoise ? random.normal(keys[k], img.shape, { dtype: img.dtype as "f32" }) : undefined)
    );
    // Free the previous sample unless it is the caller's tensor or an autograd trace needs it.
    if (img !== opts.noise && tracers.length === 0) img.dispose();
    img = out.sample;
    if (opts.onStep) {
      await opts.onStep({ step: k, total: d.numTimesteps, t: i, sample: out.sample, predXstart: out.predXstart });
    }
    if (tracers.length === 0) out.predXstart.dispose();
  }
  return img;
}

/** Ancestral sampling from x_T down to x_0 over every step of `d` (p_sample_loop). */
export function pSampleLoop(
  d: GaussianDiffusion,
  model: ModelFn,
  shape: readonly number[],
  opts: LoopOptions = {},
): Promise<Tensor> {
  return loop("pSampleLoop", d, shape, opts, true, (x, i, noise) => pSample(d, model, x, i, { ...opts, noise }));
}

/** DDIM sampling from x_T down to x_0 (ddim_sample_loop); `eta` > 0 needs a key. */
export function ddimSampleLoop(
  d: GaussianDiffusion,
  model: ModelFn,
  shape: readonly number[],
  opts: LoopOptions & { eta?: number } = {},
): Promise<Tensor> {
  const eta = opts.eta ?? 0;
  return loop(
    "ddimSampleLoop",
    d,
    shape,
    opts,
    eta > 0,
    (x, i, noise) => ddimSample(d, model, x, i, { ...opts, noise, eta }),
  );
}

// ------------------------------------------------------------------ training

/** Per-sample VLB term in bits: KL(q(x_{t-1}|x_t,x_0) || p) for t > 0, the decoder NLL at t = 0. */
export function vbTermsBpd(
  d: GaussianDiffusion,
  modelOutput: Tensor,
  x0: Tensor,
  xt: Tensor,
  t: Timesteps,
  opts: { clipDenoised?: boolean } = {},
): { output: Tensor; predXstart: Tensor } {
  const op = "vbTermsBpd";
  const ti = prep(op, d, t, x0.shape[0]);
  const q = qPosteriorMeanVariance(d, x0, xt, ti);
  const p = pMeanVarianceFromOutput(d, modelOutput, xt, ti, { clipDenoised: opts.clipDenoised ?? true });
  const kl = div(meanFlat(normalKl(q.mean, q.logVarianceClipped, p.mean, p.logVariance)), Math.LN2);
  const logScales = mul(0.5, p.logVariance);
  const decoderNll = div(meanFlat(neg(discretizedGaussianLogLikelihood(x0, p.mean, logScales))), Math.LN2);
  return { output: where(equal(ti, 0), decoderNll, kl), predXstart: p.predXstart };
}

/** Loss terms per sample: `loss`, and `mse` / `vb` when they apply. */
export interface LossTerms {
  /** The training loss per sample. */
  loss: Tensor;
  /** The mean-squared error of the mean prediction. */
  mse?: Tensor;
  /** The VLB term in bits per dimension. */
  vb?: Tensor;
}

/**
 * DiT's `training_losses` for given timesteps and noise. With a learned variance the VLB term
 * sees the mean channels through a stop-gradient, so it trains only the variance.
 */
export function trainingLosses(
  d: GaussianDiffusion,
  model: ModelFn,
  x0: Tensor,
  t: Timesteps,
  opts: { noise: Tensor; y?: Tensor },
): LossTerms {
  const op = "trainingLosses";
  checkX(op, "x0", x0);
  if (!opts || !opts.noise) throw new DifflabError(`${op}: pass opts.noise (standard-normal, shaped like x0)`);
  const ti = prep(op, d, t, x0.shape[0]);
  const xt = qSample(d, x0, ti, opts.noise);
  const out = callModel(d, model, xt, ti, opts.y);
  return trainingLossesFromOutput(d, out, x0, xt, ti, opts.noise);
}

/** {@link trainingLosses} given x_t = qSample(x0, t, noise) and the model output at (x_t, t). */
export function trainingLossesFromOutput(
  d: GaussianDiffusion,
  modelOutput: Tensor,
  x0: Tensor,
  xt: Tensor,
  t: Timesteps,
  noise: Tensor,
): LossTerms {
  const op = "trainingLosses";
  const ti = prep(op, d, t, x0.shape[0]);
  if (d.lossType === "kl" || d.lossType === "rescaled_kl") {
    const vb = vbTermsBpd(d, modelOutput, x0, xt, ti, { clipDenoised: false }).output;
    return { loss: d.lossType === "rescaled_kl" ? mul(vb, d.numTimesteps) : vb };
  }
  let eps = modelOutput;
  let vb: Tensor | undefined;
  if (d.varType === "learned" || d.varType === "learned_range") {
    const C = x0.shape[1];
    const want = [x0.shape[0], 2 * C, ...x0.shape.slice(2)];
    if (modelOutput.shape.length !== want.length || modelOutput.shape.some((v, i) => v !== want[i])) {
      throw new ShapeError(`${op}: model output must have shape ${fmtShape(want)}, got ${fmtShape(modelOutput.shape)}`);
    }
    eps = slice(modelOutput, [0, 0], [x0.shape[0], C]);
    const v = slice(modelOutput, [0, C], [x0.shape[0], 2 * C]);
    const frozen = concat([stopGradient(eps), v], 1);
    vb = vbTermsBpd(d, frozen, x0, xt, ti, { clipDenoised: false }).output;
    if (d.lossType === "rescaled_mse") vb = mul(vb, d.numTimesteps / 1000);
  }
  const target = d.meanType === "xstart" ? x0 : noise;
  checkSame(op, "target", target, "model mean output", eps);
  const diff = sub(target, eps);
  const mse = meanFlat(mul(diff, diff));
  return vb ? { loss: add(mse, vb), mse, vb } : { loss: mse, mse };
}

/**
 * The scalar training objective of one batch: t uniform in [0, T), noise N(0, I), both drawn from
 * `key`; returns the batch mean of `trainingLosses(...).loss`.
 */
export function loss(d: GaussianDiffusion, model: ModelFn, x0: Tensor, key: Key, opts: { y?: Tensor } = {}): Tensor {
  checkX("loss", "x0", x0);
  const [kt, kn] = random.split(key, 2);
  const t = random.randint(kt, [x0.shape[0]], 0, d.numTimesteps);
  const noise = random.normal(kn, x0.shape, { dtype: x0.dtype as "f32" });
  return mean(trainingLosses(d, model, x0, t, { noise, y: opts.y }).loss);
}

/** A batch of `n` copies of timestep `t` as an i32 tensor. */
export function batchTimesteps(t: number, n: number): Tensor {
  return full([n], t, "i32");
}
