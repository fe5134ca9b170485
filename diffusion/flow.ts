/**
 * @file Linear-path (rectified) flow matching: x_t = (1 - t) x_0 + t eps with t = 0 data and
 * t = 1 noise, the model predicting the velocity dx_t/dt = eps - x_0, and Euler / Heun ODE
 * samplers from t = 1 down to t = 0. None of the paper models trains this way; it is here for
 * experiments with the same denoisers (a model with 2C outputs, e.g. DiT with learned sigma, has
 * its first C channels read as the velocity).
 */
import { DifflabError, fmtShape, ShapeError } from "../tensor/errors.ts";
import { add, full, mean, mul, reshape, slice, sub } from "../tensor/ops.ts";
import * as random from "../tensor/random.ts";
import type { Key } from "../tensor/random.ts";
import { type Tensor, tidy, tracers } from "../tensor/tensor.ts";
import { checkSame, checkX, type ModelFn } from "./common.ts";

/** Options shared by the flow functions. */
export interface FlowOptions {
  /** Class labels passed to the model. */
  y?: Tensor;
  /** The model receives t * timeScale (default 1; 1000 suits DDPM-style timestep embeddings). */
  timeScale?: number;
}

function perSampleT(t: Tensor | number, x: Tensor): Tensor {
  const n = x.shape[0];
  const tt = typeof t === "number" ? full([n], t, x.dtype, x) : t;
  if (tt.ndim !== 1 || tt.shape[0] !== n) {
    throw new ShapeError(`flow: t must have shape [${n}], got ${fmtShape(tt.shape)}`);
  }
  return tt;
}

function bcast(t: Tensor, x: Tensor): Tensor {
  return reshape(t, [x.shape[0], ...x.shape.slice(1).map(() => 1)]);
}

/** x_t = (1 - t) x0 + t noise, with t a number or one value per sample in [0, 1]. */
export function flowInterpolate(x0: Tensor, noise: Tensor, t: Tensor | number): Tensor {
  checkX("flowInterpolate", "x0", x0);
  checkSame("flowInterpolate", "x0", x0, "noise", noise);
  const tb = bcast(perSampleT(t, x0), x0);
  return add(mul(sub(1, tb), x0), mul(tb, noise));
}

/** The velocity target dx_t/dt = noise - x0. */
export function flowTarget(x0: Tensor, noise: Tensor): Tensor {
  checkSame("flowTarget", "x0", x0, "noise", noise);
  return sub(noise, x0);
}

/** The model's velocity at (x, t): its first C channels. */
export function flowVelocity(model: ModelFn, x: Tensor, t: Tensor | number, opts: FlowOptions = {}): Tensor {
  const tt = perSampleT(t, x);
  const out = model(x, opts.timeScale && opts.timeScale !== 1 ? mul(tt, opts.timeScale) : tt, opts.y);
  const C = x.shape[1];
  if (out.ndim !== x.ndim || out.shape[0] !== x.shape[0] || (out.shape[1] !== C && out.shape[1] !== 2 * C)) {
    throw new ShapeError(
      `flow: model output ${fmtShape(out.shape)} must have C or 2C channels for x ${fmtShape(x.shape)}`,
    );
  }
  return out.shape[1] === C ? out : slice(out, [0, 0], [x.shape[0], C]);
}

/** Per-sample flow-matching loss mean_CHW((v(x_t, t) - (noise - x0))^2) for given t and noise. */
export function flowLosses(
  model: ModelFn,
  x0: Tensor,
  t: Tensor | number,
  noise: Tensor,
  opts: FlowOptions = {},
): Tensor {
  const xt = flowInterpolate(x0, noise, t);
  const d = sub(flowVelocity(model, xt, t, opts), flowTarget(x0, noise));
  const sq = mul(d, d);
  return sq.ndim > 1 ? mean(sq, { axis: [...Array(sq.ndim - 1).keys()].map((i) => i + 1) }) : sq;
}

/** The batch flow-matching loss with t ~ U[0, 1) and noise ~ N(0, I) drawn from `key`. */
export function flowLoss(model: ModelFn, x0: Tensor, key: Key, opts: FlowOptions = {}): Tensor {
  checkX("flowLoss", "x0", x0);
  const [kt, kn] = random.split(key, 2);
  const dtype = x0.dtype as "f32";
  const t = random.uniform(kt, [x0.shape[0]], { dtype });
  const noise = random.normal(kn, x0.shape, { dtype });
  return mean(flowLosses(model, x0, t, noise, opts));
}

/** What the flow samplers report after each step. Its tensor is valid only during the callback. */
export interface FlowStepInfo {
  /** 0-based step number. */
  step: number;
  /** Number of steps. */
  total: number;
  /** Time reached by this step. */
  t: number;
  /** The sample after this step. */
  x: Tensor;
}

/** Options of the flow samplers. */
export interface FlowSampleOptions extends FlowOptions {
  /** Number of steps (default 50). */
  steps?: number;
  /** Integrate from tStart (default 1) down to tEnd (default 0). */
  tStart?: number;
  /** End time (default 0). */
  tEnd?: number;
  /** Called after every step (awaited if it returns a promise). */
  onStep?: (info: FlowStepInfo) => void | Promise<void>;
}

async function integrate(
  op: string,
  model: ModelFn,
  noise: Tensor,
  opts: FlowSampleOptions,
  heun: boolean,
): Promise<Tensor> {
  checkX(op, "noise", noise);
  const steps = opts.steps ?? 50;
  if (!Number.isInteger(steps) || steps < 1) {
    throw new DifflabError(`${op}: steps must be a positive integer, got ${steps}`);
  }
  const t0 = opts.tStart ?? 1, t1 = opts.tEnd ?? 0;
  let x = noise;
  for (let k = 0; k < steps; k++) {
    const ta = t0 + ((t1 - t0) * k) / steps, tb = t0 + ((t1 - t0) * (k + 1)) / steps;
    const dt = tb - ta;
    const xa = x;
    const next = tidy(() => {
      const v1 = flowVelocity(model, xa, ta, opts);
      const euler = add(xa, mul(v1, dt));
      if (!heun) return euler;
      const v2 = flowVelocity(model, euler, tb, opts);
      return add(xa, mul(add(v1, v2), dt / 2));
    });
    if (xa !== noise && tracers.length === 0) xa.dispose();
    x = next;
    if (opts.onStep) await opts.onStep({ step: k, total: steps, t: tb, x });
  }
  return x;
}

/** Euler ODE sampling of the velocity field from noise (t = 1) to data (t = 0). */
export function flowEulerSample(model: ModelFn, noise: Tensor, opts: FlowSampleOptions = {}): Promise<Tensor> {
  return integrate("flowEulerSample", model, noise, opts, false);
}

/** Heun (2nd-order, 2 evaluations per step) ODE sampling from noise (t = 1) to data (t = 0). */
export function flowHeunSample(model: ModelFn, noise: Tensor, opts: FlowSampleOptions = {}): Promise<Tensor> {
  return integrate("flowHeunSample", model, noise, opts, true);
}
