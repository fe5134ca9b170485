/**
 * @file DiMR's own diffusion formulation (train.py `Schedule` + `LSimple`, sde.py targets, the
 * DPM-Solver wrapper of train.py/eval.py): a discrete DDPM with Stable-Diffusion "scaled linear"
 * betas, epsilon prediction supervised at every branch resolution against pooled noise, and the
 * network fed `log_snr = n/1000*8 - 4` (a linear time code, not a true log-SNR).
 */
import { DifflabError, fmtShape, ShapeError } from "../tensor/errors.ts";
import { add, cast, conv2d, div, full, mean, mul, reshape, sub, take } from "../tensor/ops.ts";
import * as random from "../tensor/random.ts";
import type { Key } from "../tensor/random.ts";
import { type Tensor, tensor } from "../tensor/tensor.ts";
import { checkSame, checkX, f32, scheduleTensor } from "./common.ts";
import {
  type ContinuousModelFn,
  type DpmSolver,
  dpmSolver,
  type NoiseScheduleVP,
  noiseScheduleVP,
} from "./dpm_solver.ts";

/** DiMR's model: `(x, logSnr, y?) -> outputs`, one epsilon map per branch, lowest resolution first. */
export type MultiScaleModelFn = (x: Tensor, logSnr: Tensor, y?: Tensor) => Tensor[];

/** DiMR's discrete schedule; index n = 0..N with n = 0 the clean data. */
export interface DimrSchedule {
  /** Number of noising steps (1000). */
  readonly N: number;
  /** betas[0..N-1] = beta_1..beta_N (float64). */
  readonly betas: Float64Array;
  /** cum_alphas[n] = prod_{i<=n} (1 - beta_i), cum_alphas[0] = 1 (length N+1). */
  readonly cumAlphas: Float64Array;
  /** cum_betas[n] = 1 - cum_alphas[n], accumulated as the official skip_betas (length N+1). */
  readonly cumBetas: Float64Array;
  /** sqrt(cum_alphas). */
  readonly sqrtCumAlphas: Float64Array;
  /** sqrt(cum_betas). */
  readonly sqrtCumBetas: Float64Array;
}

/** Stable Diffusion's "scaled linear" betas: linspace(sqrt(start), sqrt(end), n)^2 in float64. */
export function stableDiffusionBetas(linearStart = 0.00085, linearEnd = 0.012, n = 1000): Float64Array {
  if (!Number.isInteger(n) || n < 2) {
    throw new DifflabError(`stableDiffusionBetas: n must be an integer >= 2, got ${n}`);
  }
  const a = Math.sqrt(linearStart), b = Math.sqrt(linearEnd);
  // torch.linspace(float64) fills the first half from the start and the second from the end.
  const step = (b - a) / (n - 1), half = Math.floor(n / 2);
  return Float64Array.from({ length: n }, (_, i) => {
    const v = i < half ? a + step * i : b - step * (n - i - 1);
    return v * v;
  });
}

/** DiMR's `Schedule(betas)` (default: the Stable Diffusion betas). */
export function dimrSchedule(betas: ArrayLike<number> = stableDiffusionBetas()): DimrSchedule {
  const b = Float64Array.from(betas);
  if (b.length === 0 || b.some((v) => !(v > 0 && v < 1))) {
    throw new DifflabError("dimrSchedule: betas must be a non-empty list of values in (0, 1)");
  }
  const N = b.length;
  const cumAlphas = new Float64Array(N + 1), cumBetas = new Float64Array(N + 1);
  cumAlphas[0] = 1;
  for (let n = 1; n <= N; n++) {
    cumAlphas[n] = cumAlphas[n - 1] * (1 - b[n - 1]);
    // skip_betas[0, n] = sum_s beta_s prod_{k>s} alpha_k, i.e. this recursion.
    cumBetas[n] = cumBetas[n - 1] * (1 - b[n - 1]) + b[n - 1];
  }
  return {
    N,
    betas: b,
    cumAlphas,
    cumBetas,
    sqrtCumAlphas: cumAlphas.map(Math.sqrt),
    sqrtCumBetas: cumBetas.map(Math.sqrt),
  };
}

function indices(op: string, n: Tensor | readonly number[], len: number, N: number): Tensor {
  const t = Array.isArray(n) ? tensor(Int32Array.from(n as number[]), { dtype: "i32" }) : (n as Tensor);
  if (t.ndim !== 1 || t.shape[0] !== len) {
    throw new ShapeError(`${op}: n must have shape [${len}], got ${fmtShape(t.shape)}`);
  }
  if (t.dtype !== "i32") throw new DifflabError(`${op}: n must be an i32 tensor of steps in 1..${N}, got ${t.dtype}`);
  return t;
}

/** The network's time input for steps n (i32 [B]): (n / 1000) * 8 - 4 in the input's float dtype. */
export function dimrLogSnr(n: Tensor, dtype: "f32" | "f64" = "f32"): Tensor {
  return sub(mul(div(cast(n, dtype), 1000), 8), 4);
}

/** The network's time input for a continuous sampler time: t = t_cont * N, log_snr = t/1000*8 - 4. */
export function dimrLogSnrFromContinuous(tCont: number, N = 1000, round: (v: number) => number = f32): number {
  const t = round(round(tCont) * N);
  return round(round(round(t / 1000) * 8) - 4);
}

/** x_n = sqrt(cum_alphas[n]) x0 + sqrt(cum_betas[n]) eps, coefficients picked in float64. */
export function dimrQSample(s: DimrSchedule, x0: Tensor, n: Tensor | readonly number[], eps: Tensor): Tensor {
  const op = "dimrQSample";
  checkX(op, "x0", x0);
  checkSame(op, "x0", x0, "eps", eps);
  const ni = indices(op, n, x0.shape[0], s.N);
  const shape = [x0.shape[0], ...x0.shape.slice(1).map(() => 1)];
  const dtype = x0.dtype as "f32" | "f64";
  const ca = reshape(take(scheduleTensor(s.sqrtCumAlphas, dtype), ni, 0), shape);
  const cb = reshape(take(scheduleTensor(s.sqrtCumBetas, dtype), ni, 0), shape);
  return add(mul(ca, x0), mul(cb, eps));
}

/**
 * sde.py `multi_scale_targets`: eps pooled to each of `levels` resolutions (ratio 2^l), returned
 * lowest resolution first. Even sizes use an r x r depthwise box filter with stride r; odd sizes
 * an (r+1) x (r+1) filter with padding. With scale correction the box sums are divided by its
 * side (keeping unit variance for white noise), otherwise by its area.
 */
export function multiScaleTargets(eps: Tensor, levels: number, scaleCorrection = true): Tensor[] {
  const op = "multiScaleTargets";
  checkX(op, "eps", eps);
  if (eps.ndim !== 4) throw new ShapeError(`${op}: eps must be [B,C,H,W], got ${fmtShape(eps.shape)}`);
  if (!Number.isInteger(levels) || levels < 1) {
    throw new DifflabError(`${op}: levels must be a positive integer, got ${levels}`);
  }
  const [, C, H, W] = eps.shape;
  const odd = H % 2 !== 0;
  const out: Tensor[] = [];
  for (let l = levels - 1; l >= 0; l--) {
    const r = 2 ** l;
    if (r === 1) {
      out.push(eps);
      continue;
    }
    const ks = odd ? r + 1 : r;
    const ok = odd ? (H - 1) % r === 0 && (W - 1) % r === 0 : H % r === 0 && W % r === 0;
    if (!ok) throw new ShapeError(`${op}: a ${H}x${W} map cannot be pooled by ${r} (${levels} levels)`);
    const kernel = full([C, 1, ks, ks], 1 / (scaleCorrection ? ks : ks * ks), eps.dtype, eps);
    out.push(conv2d(eps, kernel, { stride: r, padding: odd ? Math.floor(ks / 2) : 0, groups: C }));
  }
  return out;
}

/** The result of {@link dimrLossFromNoise}. */
export interface DimrLossTerms {
  /** Per-sample loss sum_k coeff_k mean_CHW((pred_k - target_k)^2), shape [B]. */
  perSample: Tensor;
  /** Batch mean (what is back-propagated). */
  mean: Tensor;
  /** Pooled targets, lowest resolution first. */
  targets: Tensor[];
}

/** The multi-scale epsilon loss of given predictions (lowest resolution first) against noise `eps`. */
export function multiScaleLoss(preds: readonly Tensor[], eps: Tensor, coeffs: readonly number[]): DimrLossTerms {
  const op = "multiScaleLoss";
  if (!Array.isArray(preds) || preds.length === 0) {
    throw new DifflabError(`${op}: preds must be a non-empty list of tensors`);
  }
  if (coeffs.length !== preds.length) {
    throw new DifflabError(`${op}: ${coeffs.length} coefficients for ${preds.length} predictions`);
  }
  const targets = multiScaleTargets(eps, preds.length, true);
  const byWidth = new Map(targets.map((t) => [t.shape[3], t]));
  let total: Tensor | undefined;
  preds.forEach((p, k) => {
    const target = byWidth.get(p.shape[p.ndim - 1]);
    if (!target) {
      throw new ShapeError(
        `${op}: prediction ${k} ${fmtShape(p.shape)} matches no target size (${
          targets.map((t) => fmtShape(t.shape)).join(", ")
        })`,
      );
    }
    checkSame(op, `preds[${k}]`, p, "target", target);
    const d = sub(p, target);
    const term = mul(coeffs[k], mean(mul(d, d), { axis: [1, 2, 3] }));
    total = total ? add(total, term) : term;
  });
  return { perSample: total!, mean: mean(total!), targets };
}

/** DiMR's `LSimple` with given steps n (1..N) and noise: x_n, the network call, and the loss. */
export function dimrLossFromNoise(
  s: DimrSchedule,
  model: MultiScaleModelFn,
  x0: Tensor,
  n: Tensor | readonly number[],
  eps: Tensor,
  opts: { coeffs: readonly number[]; y?: Tensor },
): DimrLossTerms & { xn: Tensor; logSnr: Tensor } {
  const xn = dimrQSample(s, x0, n, eps);
  const ni = indices("dimrLoss", n, x0.shape[0], s.N);
  const logSnr = dimrLogSnr(ni, x0.dtype === "f64" ? "f64" : "f32");
  const preds = model(xn, logSnr, opts.y);
  if (!Array.isArray(preds)) {
    throw new DifflabError("dimrLoss: the model must return a list of outputs (lowest resolution first)");
  }
  return { ...multiScaleLoss(preds, eps, opts.coeffs), xn, logSnr };
}

/** One DiMR training objective: n uniform in 1..N and eps ~ N(0, I) drawn from `key`; returns the batch mean. */
export function dimrLoss(
  s: DimrSchedule,
  model: MultiScaleModelFn,
  x0: Tensor,
  key: Key,
  opts: { coeffs: readonly number[]; y?: Tensor },
): Tensor {
  checkX("dimrLoss", "x0", x0);
  const [kn, ke] = random.split(key, 2);
  const n = random.randint(kn, [x0.shape[0]], 1, s.N + 1);
  const eps = random.normal(ke, x0.shape, { dtype: x0.dtype as "f32" });
  return dimrLossFromNoise(s, model, x0, n, eps, opts).mean;
}

/** DiMR's sampler noise schedule: NoiseScheduleVP('discrete') over the float32 betas. */
export function dimrNoiseSchedule(s: DimrSchedule = dimrSchedule()): NoiseScheduleVP {
  return noiseScheduleVP("discrete", { betas: s.betas });
}

/**
 * DiMR's sampler model function: continuous t -> log_snr input, the network's last (full
 * resolution) output as epsilon. `guided` may replace the plain call (see cfg.ts).
 */
export function dimrModelFn(model: MultiScaleModelFn, opts: { y?: Tensor; N?: number } = {}): ContinuousModelFn {
  const N = opts.N ?? 1000;
  return (x, t) => {
    const outs = model(x, full([x.shape[0]], dimrLogSnrFromContinuous(t, N), x.dtype, x), opts.y);
    if (!Array.isArray(outs) || outs.length === 0) {
      throw new DifflabError("dimrModelFn: the model must return a list of outputs");
    }
    return outs[outs.length - 1];
  };
}

/** DiMR's solver: DPM-Solver in data-prediction mode over `dimrNoiseSchedule`. */
export function dimrSolver(model: ContinuousModelFn, s: DimrSchedule = dimrSchedule()): DpmSolver {
  return dpmSolver(model, dimrNoiseSchedule(s), { predictX0: true });
}
