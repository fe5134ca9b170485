/**
 * @file DPM-Solver (Lu et al. 2022) as DiMR's `dpm_solver.py` runs it: the VP noise schedules
 * (`NoiseScheduleVP`, with the piecewise-linear 'discrete' schedule), singlestep updates of
 * orders 1-3 in noise- or data-prediction (x0) mode, multistep updates, and `sample` with the
 * 'fast', 'singlestep' and 'multistep' methods.
 *
 * All times are host numbers: the official sampler gives every sample the same time, so the
 * schedule quantities (alpha, sigma, lambda, phi) are scalars. They are computed on the host
 * with float32 rounding after every operation, exactly where the official float32 tensors round,
 * and then scale whole tensors; nothing is read back from the device while sampling.
 */
import { DifflabError, ShapeError } from "../tensor/errors.ts";
import { add, div, mul, sub } from "../tensor/ops.ts";
import { type Tensor, tidy, tracers } from "../tensor/tensor.ts";
import { checkX, f32, f64, torchLinspaceF32 } from "./common.ts";

/** The VP schedule kinds of NoiseScheduleVP. */
export type VpScheduleKind = "discrete" | "linear" | "cosine";

/** A VP-SDE noise schedule: q(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I) for continuous t in [0, T]. */
export interface NoiseScheduleVP {
  /** Schedule kind. */
  readonly kind: VpScheduleKind;
  /** Last time of the forward process (1, or 0.9946 for cosine). */
  readonly T: number;
  /** Number of discrete steps ('discrete': the number of betas). */
  readonly totalN: number;
  /** 'discrete' knots: t_k = k/N, k = 1..N (float32 linspace). */
  readonly tDiscrete: Float64Array;
  /** 'discrete' knot values: 0.5 cumsum(log(1 - beta)). */
  readonly logAlphaDiscrete: Float64Array;
  /** The 'discrete' knots reversed (increasing log alpha), for inverseLambda. */
  readonly logAlphaDiscreteRev: Float64Array;
  /** The 'discrete' times reversed, matching logAlphaDiscreteRev. */
  readonly tDiscreteRev: Float64Array;
  /** Continuous-time linear-schedule betas (x1000 of the DDPM ones). */
  readonly beta0: number;
  /** Upper bound of the continuous-time linear schedule. */
  readonly beta1: number;
  /** Rounding of every scalar operation: float32 (as the official code) or none (f64). */
  readonly round: (v: number) => number;
}

/** Options of {@link noiseScheduleVP}. */
export interface NoiseScheduleOptions {
  /** 'discrete' betas (one per DDPM step); they are rounded to float32 first unless dtype is f64. */
  betas?: ArrayLike<number>;
  /** 'discrete' alternative to betas: the cumulative alphas. */
  alphasCumprod?: ArrayLike<number>;
  /** 'linear' schedule bounds in DDPM units (default 1e-4 and 0.02). */
  beta0?: number;
  /** Upper bound of the linear schedule (DDPM units). */
  beta1?: number;
  /** Scalar precision: "f32" (default, as the official float32 tensors) or "f64". */
  dtype?: "f32" | "f64";
}

/** NoiseScheduleVP('discrete' | 'linear' | 'cosine'), with the official float32 numerics by default. */
export function noiseScheduleVP(kind: VpScheduleKind, opts: NoiseScheduleOptions = {}): NoiseScheduleVP {
  const op = "noiseScheduleVP";
  const R = opts.dtype === "f64" ? f64 : f32;
  let tDiscrete = new Float64Array(0), logAlphaDiscrete = new Float64Array(0);
  let totalN = 1000;
  if (kind === "discrete") {
    let la: Float64Array<ArrayBuffer>;
    if (opts.betas) {
      const b = Array.from(opts.betas, R);
      if (b.length === 0 || b.some((v) => !(v > 0 && v < 1))) {
        throw new DifflabError(`${op}: 'discrete' betas must be a non-empty list of values in (0, 1)`);
      }
      // torch.cumsum on the CPU accumulates float32 in double and rounds each output.
      let acc = 0;
      la = Float64Array.from(b, (v) => R(0.5 * R(acc += R(Math.log(R(1 - v))))));
    } else if (opts.alphasCumprod) {
      la = Float64Array.from(opts.alphasCumprod, (v) => R(0.5 * R(Math.log(R(v)))));
    } else throw new DifflabError(`${op}: the 'discrete' schedule needs opts.betas or opts.alphasCumprod`);
    totalN = la.length;
    tDiscrete = Float64Array.from(
      opts.dtype === "f64" ? linspace64(1 / totalN, 1, totalN) : torchLinspaceF32(1 / totalN, 1, totalN),
    );
    logAlphaDiscrete = la;
  } else if (kind !== "linear" && kind !== "cosine") {
    throw new DifflabError(`${op}: unsupported noise schedule "${kind}" (expected discrete, linear or cosine)`);
  }
  return {
    kind,
    T: kind === "cosine" ? 0.9946 : 1,
    totalN,
    tDiscrete,
    logAlphaDiscrete,
    logAlphaDiscreteRev: logAlphaDiscrete.slice().reverse(),
    tDiscreteRev: tDiscrete.slice().reverse(),
    beta0: (opts.beta0 ?? 1e-4) * 1000,
    beta1: (opts.beta1 ?? 2e-2) * 1000,
    round: R,
  };
}

function linspace64(a: number, b: number, n: number): number[] {
  return Array.from({ length: n }, (_, i) => (n === 1 ? a : a + ((b - a) * i) / (n - 1)));
}

/**
 * The official `interpolate_fn` for one point: piecewise-linear through the knots (xp increasing),
 * extended linearly beyond the first and last segments, with the same operation order.
 */
export function interpolate(
  x: number,
  xp: ArrayLike<number>,
  yp: ArrayLike<number>,
  round: (v: number) => number = f32,
): number {
  const K = xp.length;
  if (K < 2) throw new DifflabError(`interpolate: needs at least 2 knots, got ${K}`);
  // Position of x among the knots: x sorts before knots equal to it.
  let lo = 0, hi = K;
  while (lo < hi) {
    const m = (lo + hi) >> 1;
    if (xp[m] < x) lo = m + 1;
    else hi = m;
  }
  const j = lo;
  const R = round;
  let sx: number, ex: number, sy: number, ey: number;
  if (j === 0) [sx, ex, sy, ey] = [xp[0], xp[1], yp[0], yp[1]];
  else if (j === K) [sx, ex, sy, ey] = [xp[K - 2], xp[K - 1], yp[K - 2], yp[K - 1]];
  else [sx, ex, sy, ey] = [xp[j - 1], xp[j], yp[j - 1], yp[j]];
  return R(sy + R(R(R(x - sx) * R(ey - sy)) / R(ex - sx)));
}

const COS_S = 0.008;

/** log(alpha_t) at continuous time t. */
export function marginalLogMeanCoeff(ns: NoiseScheduleVP, t: number): number {
  const R = ns.round;
  const x = R(t);
  if (ns.kind === "discrete") return interpolate(x, ns.tDiscrete, ns.logAlphaDiscrete, R);
  if (ns.kind === "linear") {
    return R(R(R(-0.25 * R(x * x)) * R(ns.beta1 - ns.beta0)) - R(R(0.5 * x) * R(ns.beta0)));
  }
  const la0 = Math.log(Math.cos((COS_S / (1 + COS_S)) * Math.PI / 2));
  const arg = R(R(R(R(x + R(COS_S)) / R(1 + COS_S)) * R(Math.PI)) / 2);
  return R(R(Math.log(R(Math.cos(arg)))) - R(la0));
}

/** alpha_t. */
export function marginalAlpha(ns: NoiseScheduleVP, t: number): number {
  return ns.round(Math.exp(marginalLogMeanCoeff(ns, t)));
}

/** sigma_t = sqrt(1 - alpha_t^2). */
export function marginalStd(ns: NoiseScheduleVP, t: number): number {
  const R = ns.round;
  return R(Math.sqrt(R(1 - R(Math.exp(R(2 * marginalLogMeanCoeff(ns, t)))))));
}

/** lambda_t = log(alpha_t) - log(sigma_t), the half log-SNR. */
export function marginalLambda(ns: NoiseScheduleVP, t: number): number {
  const R = ns.round;
  const la = marginalLogMeanCoeff(ns, t);
  const logStd = R(0.5 * R(Math.log(R(1 - R(Math.exp(R(2 * la)))))));
  return R(la - logStd);
}

// torch.logaddexp's formula: max + log1p(exp(-|a - b|)).
function logaddexp(a: number, b: number, R: (v: number) => number): number {
  if (!Number.isFinite(a) && a === b) return a;
  const m = Math.max(a, b);
  return R(m + R(Math.log1p(R(Math.exp(R(-Math.abs(R(a - b))))))));
}

/** The continuous time t whose half log-SNR is `lambda`. */
export function inverseLambda(ns: NoiseScheduleVP, lambda: number): number {
  const R = ns.round;
  const l = R(lambda);
  if (ns.kind === "linear") {
    const db = R(ns.beta1 - ns.beta0);
    const tmp = R(R(2 * db) * logaddexp(R(-2 * l), 0, R));
    const delta = R(R(ns.beta0 * ns.beta0) + tmp);
    return R(R(tmp / R(R(Math.sqrt(delta)) + R(ns.beta0))) / db);
  }
  const logAlpha = R(-0.5 * logaddexp(0, R(-2 * l), R));
  if (ns.kind === "discrete") {
    return interpolate(logAlpha, ns.logAlphaDiscreteRev, ns.tDiscreteRev, R);
  }
  const la0 = Math.log(Math.cos((COS_S / (1 + COS_S)) * Math.PI / 2));
  const ac = R(Math.acos(R(Math.exp(R(logAlpha + R(la0))))));
  return R(R(R(R(ac * 2) * R(1 + COS_S)) / R(Math.PI)) - R(COS_S));
}

// ------------------------------------------------------------------ the solver

/** A noise-prediction model in continuous time: `(x, t) -> eps`, t in [eps, T] (same t for the batch). */
export type ContinuousModelFn = (x: Tensor, t: number) => Tensor;

/** A DPM-Solver: the wrapped model, its schedule, and whether updates run on x0 predictions. */
export interface DpmSolver {
  /** The continuous-time noise-prediction model. */
  readonly model: ContinuousModelFn;
  /** Its noise schedule. */
  readonly ns: NoiseScheduleVP;
  /** Data-prediction updates (DPM-Solver++ style), as DiMR samples; default false. */
  readonly predictX0: boolean;
}

/** Builds a solver (DPM_Solver(model_fn, noise_schedule, predict_x0)). */
export function dpmSolver(
  model: ContinuousModelFn,
  ns: NoiseScheduleVP,
  opts: { predictX0?: boolean } = {},
): DpmSolver {
  if (typeof model !== "function") throw new DifflabError("dpmSolver: model must be a function (x, t) -> eps");
  if (!ns || !ns.round) throw new DifflabError("dpmSolver: ns must come from noiseScheduleVP()");
  return { model, ns, predictX0: opts.predictX0 ?? false };
}

/** The solver's model output at (x, t): eps, or x0 = (x - sigma_t eps) / alpha_t in predict-x0 mode. */
export function solverModelFn(solver: DpmSolver, x: Tensor, t: number): Tensor {
  const out = solver.model(x, t);
  if (!solver.predictX0) return out;
  const alpha = marginalAlpha(solver.ns, t), sigma = marginalStd(solver.ns, t);
  return div(sub(x, mul(out, sigma)), alpha);
}

/** Solver flavour of the higher-order updates. */
export type SolverType = "dpm_solver" | "taylor";

/** Intermediate-point ratios of a singlestep update. */
export interface UpdateOptions {
  /** Ratio of the first intermediate point in lambda (default 1/2 for order 2, 1/3 for order 3). */
  r1?: number;
  /** Ratio of the second intermediate point (order 3; default 2/3). */
  r2?: number;
  /** Update flavour (default dpm_solver). */
  solverType?: SolverType;
}

const sc = (x: Tensor, c: number) => mul(x, c);

/** One DPM-Solver-1 step (DDIM) from time s to t. */
export function dpmSolverFirstUpdate(solver: DpmSolver, x: Tensor, s: number, t: number, noiseS?: Tensor): Tensor {
  const { ns } = solver;
  const R = ns.round;
  const [ls, lt] = [marginalLambda(ns, s), marginalLambda(ns, t)];
  const h = R(lt - ls);
  const [las, lat] = [marginalLogMeanCoeff(ns, s), marginalLogMeanCoeff(ns, t)];
  const [ss, st] = [marginalStd(ns, s), marginalStd(ns, t)];
  const at = R(Math.exp(lat));
  const n0 = noiseS ?? solverModelFn(solver, x, s);
  if (solver.predictX0) {
    const phi1 = -R(R(Math.exp(-h)) - 1);
    return add(sc(x, R(st / ss)), sc(n0, R(at * phi1)));
  }
  const phi1 = R(Math.expm1(h));
  return sub(sc(x, R(Math.exp(R(lat - las)))), sc(n0, R(st * phi1)));
}

// Every scalar-only expression of r1/r2 in the official updates is a single operation whose
// result meets a float32 tensor, so it rounds once whether r came as a tensor or a Python float.
function ratios(order: 2 | 3, opts: UpdateOptions) {
  return { r1: opts.r1 ?? (order === 2 ? 0.5 : 1 / 3), r2: opts.r2 ?? 2 / 3 };
}

/** One DPM-Solver-2 step from s to t through the intermediate point at ratio r1 of the lambda step. */
export function dpmSolverSecondUpdate(
  solver: DpmSolver,
  x: Tensor,
  s: number,
  t: number,
  opts: UpdateOptions = {},
): Tensor {
  const { ns } = solver;
  const R = ns.round;
  const { r1 } = ratios(2, opts);
  const type = opts.solverType ?? "dpm_solver";
  const [ls, lt] = [marginalLambda(ns, s), marginalLambda(ns, t)];
  const h = R(lt - ls);
  const s1 = inverseLambda(ns, R(ls + R(R(r1) * h)));
  const [las, las1, lat] = [marginalLogMeanCoeff(ns, s), marginalLogMeanCoeff(ns, s1), marginalLogMeanCoeff(ns, t)];
  const [ss, ss1, st] = [marginalStd(ns, s), marginalStd(ns, s1), marginalStd(ns, t)];
  const [as1, at] = [R(Math.exp(las1)), R(Math.exp(lat))];
  const n0 = solverModelFn(solver, x, s);
  if (solver.predictX0) {
    const phi11 = R(Math.expm1(R(R(-r1) * h)));
    const phi1 = R(Math.expm1(-h));
    const xs1 = sub(sc(x, R(ss1 / ss)), sc(n0, R(as1 * phi11)));
    const n1 = solverModelFn(solver, xs1, s1);
    const base = sub(sc(x, R(st / ss)), sc(n0, R(at * phi1)));
    if (type === "dpm_solver") return sub(base, sc(sub(n1, n0), R(R(0.5 / r1) * R(at * phi1))));
    const c = R(at * R(R(R(R(Math.exp(-h)) - 1) / h) + 1));
    return add(base, sc(sub(n1, n0), R(R(1 / r1) * c)));
  }
  const phi11 = R(Math.expm1(R(R(r1) * h)));
  const phi1 = R(Math.expm1(h));
  const xs1 = sub(sc(x, R(Math.exp(R(las1 - las)))), sc(n0, R(ss1 * phi11)));
  const n1 = solverModelFn(solver, xs1, s1);
  const base = sub(sc(x, R(Math.exp(R(lat - las)))), sc(n0, R(st * phi1)));
  if (type === "dpm_solver") return sub(base, sc(sub(n1, n0), R(R(0.5 / r1) * R(st * phi1))));
  const c = R(st * R(R(R(R(Math.exp(h)) - 1) / h) - 1));
  return sub(base, sc(sub(n1, n0), R(R(1 / r1) * c)));
}

/** One DPM-Solver-3 step from s to t through intermediate points at ratios r1 and r2. */
export function dpmSolverThirdUpdate(
  solver: DpmSolver,
  x: Tensor,
  s: number,
  t: number,
  opts: UpdateOptions = {},
): Tensor {
  const { ns } = solver;
  const R = ns.round;
  const { r1, r2 } = ratios(3, opts);
  const type = opts.solverType ?? "dpm_solver";
  const [ls, lt] = [marginalLambda(ns, s), marginalLambda(ns, t)];
  const h = R(lt - ls);
  const s1 = inverseLambda(ns, R(ls + R(R(r1) * h)));
  const s2 = inverseLambda(ns, R(ls + R(R(r2) * h)));
  const las = marginalLogMeanCoeff(ns, s), las1 = marginalLogMeanCoeff(ns, s1);
  const las2 = marginalLogMeanCoeff(ns, s2), lat = marginalLogMeanCoeff(ns, t);
  const ss = marginalStd(ns, s), ss1 = marginalStd(ns, s1), ss2 = marginalStd(ns, s2), st = marginalStd(ns, t);
  const as1 = R(Math.exp(las1)), as2 = R(Math.exp(las2)), at = R(Math.exp(lat));
  const r2h = R(R(r2) * h);
  const n0 = solverModelFn(solver, x, s);
  if (solver.predictX0) {
    const phi11 = R(Math.expm1(R(R(-r1) * h)));
    const phi12 = R(Math.expm1(R(R(-r2) * h)));
    const phi1 = R(Math.expm1(-h));
    const phi22 = R(R(R(Math.expm1(R(R(-r2) * h))) / r2h) + 1);
    const phi2 = R(R(phi1 / h) + 1);
    const phi3 = R(R(phi2 / h) - 0.5);
    const xs1 = sub(sc(x, R(ss1 / ss)), sc(n0, R(as1 * phi11)));
    const n1 = solverModelFn(solver, xs1, s1);
    const xs2 = add(sub(sc(x, R(ss2 / ss)), sc(n0, R(as2 * phi12))), sc(sub(n1, n0), R(R(r2 / r1) * R(as2 * phi22))));
    const n2 = solverModelFn(solver, xs2, s2);
    const base = sub(sc(x, R(st / ss)), sc(n0, R(at * phi1)));
    if (type === "dpm_solver") return add(base, sc(sub(n2, n0), R(R(1 / r2) * R(at * phi2))));
    const { D1, D2 } = taylorDs(n0, n1, n2, r1, r2, R);
    return sub(add(base, sc(D1, R(at * phi2))), sc(D2, R(at * phi3)));
  }
  const phi11 = R(Math.expm1(R(R(r1) * h)));
  const phi12 = R(Math.expm1(r2h));
  const phi1 = R(Math.expm1(h));
  const phi22 = R(R(R(Math.expm1(r2h)) / r2h) - 1);
  const phi2 = R(R(phi1 / h) - 1);
  const phi3 = R(R(phi2 / h) - 0.5);
  const xs1 = sub(sc(x, R(Math.exp(R(las1 - las)))), sc(n0, R(ss1 * phi11)));
  const n1 = solverModelFn(solver, xs1, s1);
  const xs2 = sub(
    sub(sc(x, R(Math.exp(R(las2 - las)))), sc(n0, R(ss2 * phi12))),
    sc(sub(n1, n0), R(R(r2 / r1) * R(ss2 * phi22))),
  );
  const n2 = solverModelFn(solver, xs2, s2);
  const base = sub(sc(x, R(Math.exp(R(lat - las)))), sc(n0, R(st * phi1)));
  if (type === "dpm_solver") return sub(base, sc(sub(n2, n0), R(R(1 / r2) * R(st * phi2))));
  const { D1, D2 } = taylorDs(n0, n1, n2, r1, r2, R);
  return sub(sub(base, sc(D1, R(st * phi2))), sc(D2, R(st * phi3)));
}

function taylorDs(n0: Tensor, n1: Tensor, n2: Tensor, r1: number, r2: number, S: (v: number) => number) {
  const D10 = sc(sub(n1, n0), S(1 / r1));
  const D11 = sc(sub(n2, n0), S(1 / r2));
  const D1 = div(sub(sc(D10, r2), sc(D11, r1)), S(r2 - r1));
  const D2 = div(sc(sub(D11, D10), 2), S(r2 - r1));
  return { D1, D2 };
}

/** One singlestep update of order 1, 2 or 3 (dpm_solver_update). */
export function dpmSolverUpdate(
  solver: DpmSolver,
  x: Tensor,
  s: number,
  t: number,
  order: number,
  opts: UpdateOptions = {},
): Tensor {
  checkX("dpmSolverUpdate", "x", x);
  if (order === 1) return dpmSolverFirstUpdate(solver, x, s, t);
  if (order === 2) return dpmSolverSecondUpdate(solver, x, s, t, opts);
  if (order === 3) return dpmSolverThirdUpdate(solver, x, s, t, opts);
  throw new DifflabError(`dpmSolverUpdate: solver order must be 1, 2 or 3, got ${order}`);
}

/** One multistep update of order 1-3 from the previous model outputs (oldest first) at `tPrev`. */
export function dpmMultistepUpdate(
  solver: DpmSolver,
  x: Tensor,
  noisePrev: readonly Tensor[],
  tPrev: readonly number[],
  t: number,
  order: number,
  solverType: SolverType = "dpm_solver",
): Tensor {
  const op = "dpmMultistepUpdate";
  if (noisePrev.length < order || tPrev.length < order) {
    throw new DifflabError(`${op}: order ${order} needs ${order} previous outputs, got ${noisePrev.length}`);
  }
  const { ns, predictX0 } = solver;
  const R = ns.round;
  if (order === 1) return dpmSolverFirstUpdate(solver, x, tPrev[tPrev.length - 1], t, noisePrev[noisePrev.length - 1]);
  if (order !== 2 && order !== 3) throw new DifflabError(`${op}: solver order must be 1, 2 or 3, got ${order}`);
  const np = noisePrev.slice(-order), tp = tPrev.slice(-order);
  const n0 = np[order - 1], n1 = np[order - 2];
  const t0 = tp[order - 1], t1 = tp[order - 2];
  const l0 = marginalLambda(ns, t0), l1 = marginalLambda(ns, t1), lt = marginalLambda(ns, t);
  const la0 = marginalLogMeanCoeff(ns, t0), lat = marginalLogMeanCoeff(ns, t);
  const s0 = marginalStd(ns, t0), st = marginalStd(ns, t);
  const at = R(Math.exp(lat));
  const h0 = R(l0 - l1), h = R(lt - l0);
  const r0 = R(h0 / h);
  const D10 = sc(sub(n0, n1), R(1 / r0));
  if (order === 2) {
    if (predictX0) {
      const e = R(R(Math.exp(-h)) - 1);
      const base = sub(sc(x, R(st / s0)), sc(n0, R(at * e)));
      if (solverType === "taylor") return add(base, sc(D10, R(at * R(R(e / h) + 1))));
      return sub(base, sc(D10, R(0.5 * R(at * e))));
    }
    const e = R(R(Math.exp(h)) - 1);
    const base = sub(sc(x, R(Math.exp(R(lat - la0)))), sc(n0, R(st * e)));
    if (solverType === "taylor") return sub(base, sc(D10, R(st * R(R(e / h) - 1))));
    return sub(base, sc(D10, R(0.5 * R(st * e))));
  }
  const n2 = np[0], t2 = tp[0];
  const l2 = marginalLambda(ns, t2);
  const h1 = R(l1 - l2);
  const r1 = R(h1 / h);
  const D11 = sc(sub(n1, n2), R(1 / r1));
  const D1 = add(D10, sc(sub(D10, D11), R(r0 / R(r0 + r1))));
  const D2 = sc(sub(D10, D11), R(1 / R(r0 + r1)));
  if (predictX0) {
    const e = R(R(Math.exp(-h)) - 1);
    return sub(
      add(sub(sc(x, R(st / s0)), sc(n0, R(at * e))), sc(D1, R(at * R(R(e / h) + 1)))),
      sc(D2, R(at * R(R(R(e + h) / R(h * h)) - 0.5))),
    );
  }
  const e = R(R(Math.exp(h)) - 1);
  return sub(
    sub(sub(sc(x, R(Math.exp(R(lat - la0)))), sc(n0, R(st * e))), sc(D1, R(st * R(R(e / h) - 1)))),
    sc(D2, R(st * R(R(R(e - h) / R(h * h)) - 0.5))),
  );
}

// ------------------------------------------------------------------ time grids and sampling

/** Time-step spacings of get_time_steps. */
export type SkipType = "time_uniform" | "logSNR" | "t2";

/** The N+1 sampling times from tT down to t0 (float32 grids, as torch.linspace makes them). */
export function getTimeSteps(ns: NoiseScheduleVP, skipType: SkipType, tT: number, t0: number, N: number): number[] {
  const lin = (a: number, b: number, n: number) =>
    ns.round === f32 ? Array.from(torchLinspaceF32(a, b, n)) : linspace64(a, b, n);
  if (!Number.isInteger(N) || N < 1) throw new DifflabError(`getTimeSteps: N must be a positive integer, got ${N}`);
  if (skipType === "time_uniform") return lin(tT, t0, N + 1);
  if (skipType === "logSNR") {
    const grid = lin(marginalLambda(ns, tT), marginalLambda(ns, t0), N + 1);
    return grid.map((l) => inverseLambda(ns, l));
  }
  if (skipType === "t2") return lin(Math.sqrt(tT), Math.sqrt(t0), N + 1).map((v) => ns.round(v * v));
  throw new DifflabError(`getTimeSteps: unsupported skipType "${skipType}" (expected time_uniform, logSNR or t2)`);
}

/** The per-step orders of DPM-Solver-fast for `steps` model evaluations (order 2 or 3). */
export function fastOrders(steps: number, order: number): number[] {
  if (!Number.isInteger(steps) || steps < 1) {
    throw new DifflabError(`fastOrders: steps must be a positive integer, got ${steps}`);
  }
  if (order === 3) {
    const K = Math.floor(steps / 3) + 1;
    const m = steps % 3;
    return m === 0 ? [...Array(K - 2).fill(3), 2, 1] : [...Array(K - 1).fill(3), m === 1 ? 1 : 2];
  }
  if (order === 2) {
    const K = Math.floor(steps / 2);
    return steps % 2 === 0 ? Array(K).fill(2) : [...Array(K).fill(2), 1];
  }
  throw new DifflabError(`fastOrders: order must be 2 or 3, got ${order}`);
}

/** What {@link dpmSolverSample} reports after each update. Its tensor is valid only during the callback. */
export interface DpmStepInfo {
  /** 0-based update number. */
  step: number;
  /** Number of updates. */
  total: number;
  /** Time reached by this update. */
  t: number;
  /** Order of this update. */
  order: number;
  /** The sample after this update. */
  x: Tensor;
}

/** Options of {@link dpmSolverSample}; the defaults are the official `sample()` defaults. */
export interface DpmSampleOptions {
  /** Number of model evaluations (default 10; DiMR uses 250). */
  steps?: number;
  /** End time (default 1e-4; DiMR uses 1/1000). */
  eps?: number;
  /** Start time (default: the schedule's T). */
  T?: number;
  /** Solver order (default 3). */
  order?: number;
  /** Time-grid spacing (default time_uniform). */
  skipType?: SkipType;
  /** "fast" (default), "singlestep" or "multistep". */
  method?: "fast" | "singlestep" | "multistep";
  /** Update flavour (default dpm_solver). */
  solverType?: SolverType;
  /** Finish with one denoising step x0(x, eps). */
  denoise?: boolean;
  /** Called after every update (awaited if it returns a promise). */
  onStep?: (info: DpmStepInfo) => void | Promise<void>;
}

/**
 * DPM_Solver.sample: integrates from T down to eps. With method 'fast' the orders come from the
 * steps//3+1 recipe while the time grid has steps+1 uniform points, which the orders then walk
 * through consecutively (the official behaviour DiMR samples with).
 */
export async function dpmSolverSample(solver: DpmSolver, x: Tensor, opts: DpmSampleOptions = {}): Promise<Tensor> {
  const op = "dpmSolverSample";
  checkX(op, "x", x);
  const steps = opts.steps ?? 10;
  const t0 = opts.eps ?? 1e-4;
  const tT = opts.T ?? solver.ns.T;
  const order = opts.order ?? 3;
  const skip = opts.skipType ?? "time_uniform";
  const method = opts.method ?? "fast";
  const solverType = opts.solverType ?? "dpm_solver";
  const lam = (t: number) => marginalLambda(solver.ns, t);
  const R = solver.ns.round;
  let cur = x;
  const advance = async (next: Tensor, step: number, total: number, t: number, ord: number) => {
    if (cur !== x && tracers.length === 0) cur.dispose();
    cur = next;
    if (opts.onStep) await opts.onStep({ step, total, t, order: ord, x: cur });
  };
  if (method === "fast") {
    const orders = fastOrders(steps, order);
    const ts = getTimeSteps(solver.ns, skip, tT, t0, steps);
    let i = 0;
    for (let k = 0; k < orders.length; k++) {
      const o = orders[k];
      const h = R(lam(ts[i + o]) - lam(ts[i]));
      const r1 = o <= 1 ? undefined : R(R(lam(ts[i + 1]) - lam(ts[i])) / h);
      const r2 = o <= 2 ? undefined : R(R(lam(ts[i + 2]) - lam(ts[i])) / h);
      const s = ts[i], t = ts[i + o];
      const next = tidy(() => dpmSolverUpdate(solver, cur, s, t, o, { r1, r2, solverType }));
      await advance(next, k, orders.length, t, o);
      i += o;
    }
  } else if (method === "singlestep") {
    if (![1, 2, 3].includes(order)) throw new DifflabError(`${op}: order must be 1, 2 or 3, got ${order}`);
    const n = Math.floor(steps / order);
    if (n < 1) throw new DifflabError(`${op}: steps (${steps}) must be at least the order (${order})`);
    const ts = getTimeSteps(solver.ns, skip, tT, t0, n);
    for (let k = 0; k < n; k++) {
      const next = tidy(() => dpmSolverUpdate(solver, cur, ts[k], ts[k + 1], order, { solverType }));
      await advance(next, k, n, ts[k + 1], order);
    }
  } else if (method === "multistep") {
    // The released file's multistep branch reads an undefined `timesteps`; this is the intended
    // algorithm of the DPM-Solver reference: lower orders to warm up, then `order` every step.
    if (![1, 2, 3].includes(order) || steps < order) {
      throw new DifflabError(`${op}: multistep needs order 1-3 and steps >= order, got order ${order}, steps ${steps}`);
    }
    const ts = getTimeSteps(solver.ns, skip, tT, t0, steps);
    const prev: Tensor[] = [tidy(() => solverModelFn(solver, x, ts[0]))];
    const tPrev = [ts[0]];
    for (let step = 1; step <= steps; step++) {
      const o = Math.min(order, step);
      const next = tidy(() => dpmMultistepUpdate(solver, cur, prev, tPrev, ts[step], o, solverType));
      await advance(next, step - 1, steps, ts[step], o);
      const at = cur;
      if (step < steps) prev.push(tidy(() => solverModelFn(solver, at, ts[step])));
      tPrev.push(ts[step]);
      while (prev.length > order) prev.shift()!.dispose();
      while (tPrev.length > order) tPrev.shift();
    }
    for (const p of prev) p.dispose();
  } else {
    throw new DifflabError(`${op}: unsupported method "${method}" (expected fast, singlestep or multistep)`);
  }
  if (opts.denoise) {
    const xs = cur;
    const out = tidy(() => {
      const la = marginalLogMeanCoeff(solver.ns, t0), sig = marginalStd(solver.ns, t0);
      return div(sub(xs, mul(solverModelFn(solver, xs, t0), sig)), R(Math.exp(la)));
    });
    if (xs !== x && tracers.length === 0) xs.dispose();
    cur = out;
  }
  if (!(cur.shape.length === x.shape.length)) throw new ShapeError(`${op}: the model changed the sample's rank`);
  return cur;
}
