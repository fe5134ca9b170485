/**
 * @file Optimisers as pure state transitions over parameter trees, with
 * PyTorch's update rules (torch.optim.AdamW and SGD), gradient clipping by
 * global norm, and an exponential moving average of parameters. State is a
 * plain record of tensors and numbers (`nn.stateToRecord` turns it into what
 * `io.writeSafetensors` stores). Parameters and gradients are matched by
 * their dotted path, so gradient trees may hold `null` for leaves without a
 * gradient (integer buffers): those leaves are left untouched, as PyTorch
 * skips parameters whose `.grad` is None.
 */
import { isRecord } from "../autograd/tree.ts";
import { clampMax } from "./attention.ts";
import { isFloat } from "../tensor/dtype.ts";
import { DifflabError, fmtShape, ShapeError } from "../tensor/errors.ts";
import * as ops from "../tensor/ops.ts";
import { shapeEq } from "../tensor/shape.ts";
import { alias, bind, Tensor, tidy, tracers } from "../tensor/tensor.ts";
import { namedLeaves } from "./tree.ts";

/** A learning-rate schedule: optimiser step count (0 for the first update) to learning rate. */
export type Schedule = (step: number) => number;

function join(prefix: string, k: string | number): string {
  return prefix === "" ? String(k) : `${prefix}.${k}`;
}

/** Maps every Tensor leaf with its dotted path; other leaves are returned unchanged. */
function mapNamed(tree: unknown, f: (path: string, t: Tensor) => unknown, path = ""): unknown {
  if (tree instanceof Tensor) return f(path, tree);
  if (Array.isArray(tree)) return tree.map((v, i) => mapNamed(v, f, join(path, i)));
  if (isRecord(tree)) {
    const o: Record<string, unknown> = {};
    for (const k of Object.keys(tree)) o[k] = mapNamed(tree[k], f, join(path, k));
    return o;
  }
  return tree;
}

/** Looks a leaf up by path in a tree that may contain nulls (missing gradients). */
function lookup(tree: unknown, path: string): Tensor | null {
  if (path === "") return tree instanceof Tensor ? tree : null;
  let t: unknown = tree;
  for (const k of path.split(".")) {
    if (Array.isArray(t)) t = t[Number(k)];
    else if (isRecord(t)) t = t[k];
    else return null;
  }
  return t instanceof Tensor ? t : null;
}

function checkGrad(op: string, path: string, p: Tensor, g: Tensor) {
  if (g.shape.length !== p.shape.length || g.shape.some((d, i) => d !== p.shape[i])) {
    throw new ShapeError(
      `${op}: gradient of "${path}" has shape ${fmtShape(g.shape)}, parameter has ${fmtShape(p.shape)}`,
    );
  }
  if (g.dtype !== p.dtype) {
    throw new DifflabError(`${op}: gradient of "${path}" is ${g.dtype}, parameter is ${p.dtype}`);
  }
}

function lrAt(op: string, lr: number | Schedule, step: number): number {
  const v = typeof lr === "function" ? lr(step) : lr;
  if (typeof v !== "number" || !Number.isFinite(v) || v < 0) {
    throw new DifflabError(`${op}: learning rate must be a finite number >= 0, got ${v} at step ${step}`);
  }
  return v;
}

/** A dense zero tensor shaped like `t` (a real buffer, so it can be saved). */
function zerosDense(t: Tensor): Tensor {
  return ops.add(ops.zerosLike(t), 0);
}

function splitResults(tree: unknown, n: number): unknown[] {
  // mapNamed returned arrays [a, b, ...] at each updated leaf; unzip them into n trees.
  const pick = (t: unknown, i: number): unknown => {
    if (isTuple(t)) return t.items[i];
    if (Array.isArray(t)) return t.map((v) => pick(v, i));
    if (isRecord(t)) {
      const o: Record<string, unknown> = {};
      for (const k of Object.keys(t)) o[k] = pick(t[k], i);
      return o;
    }
    return i === 0 ? t : null;
  };
  return Array.from({ length: n }, (_, i) => pick(tree, i));
}

class Tuple {
  constructor(readonly items: unknown[]) {}
}
function isTuple(t: unknown): t is Tuple {
  return t instanceof Tuple;
}

// ------------------------------------------------------------------ AdamW

/** Configuration of {@link adamw} (torch.optim.AdamW's defaults). */
export interface AdamWConfig {
  /** Learning rate, or a schedule of the step count (default 1e-3). */
  lr?: number | Schedule;
  /** First-moment decay (default 0.9). */
  beta1?: number;
  /** Second-moment decay (default 0.999; DiMR uses 0.99). */
  beta2?: number;
  /** Added to √v̂ outside the square root (default 1e-8). */
  eps?: number;
  /** Decoupled weight decay (default 0.01 as torch; DiT trains with 0). */
  weightDecay?: number;
  /** Which parameters decay, by dotted path (default all); e.g. DiMR excludes `nodecay_*`. */
  decayMask?: (path: string) => boolean;
}

/** AdamW state: completed step count and first/second moments shaped like the params (null for non-float leaves). */
export interface AdamWState {
  /** Number of completed optimiser steps (0 for a fresh state); also the schedule's input. */
  step: number;
  /** First-moment (mean) estimates: a tree shaped like the params, null at non-float leaves. */
  m: unknown;
  /** Second-moment (uncentred variance) estimates: a tree shaped like the params, null at non-float leaves. */
  v: unknown;
}

/** Fresh AdamW state for `params` (zero moments, step 0). */
export function adamwInit(params: unknown): AdamWState {
  const zeros = () => mapNamed(params, (_p, t) => (isFloat(t.dtype) ? zerosDense(t) : null));
  return { step: 0, m: zeros(), v: zeros() };
}

/**
 * One AdamW step exactly as torch.optim.AdamW (amsgrad off):
 * `p ← p·(1 - lr·wd)`, `m ← β1·m + (1-β1)·g`, `v ← β2·v + (1-β2)·g²`,
 * `p ← p - lr/(1-β1ᵗ) · m / (√v/√(1-β2ᵗ) + eps)`. Returns new params and state.
 */
export function adamwUpdate(
  params: unknown,
  grads: unknown,
  state: AdamWState,
  cfg: AdamWConfig = {},
): { params: unknown; state: AdamWState } {
  const op = "adamw.update";
  if (!state || typeof state.step !== "number") throw new DifflabError(`${op}: state must come from adamw.init`);
  const b1 = cfg.beta1 ?? 0.9, b2 = cfg.beta2 ?? 0.999, eps = cfg.eps ?? 1e-8, wd = cfg.weightDecay ?? 0.01;
  for (const [n, v] of [["beta1", b1], ["beta2", b2]] as const) {
    if (!(v >= 0 && v < 1)) throw new DifflabError(`${op}: ${n} must be in [0, 1), got ${v}`);
  }
  const lr = lrAt(op, cfg.lr ?? 1e-3, state.step);
  const t = state.step + 1;
  const stepSize = lr / (1 - b1 ** t);
  const bc2Sqrt = Math.sqrt(1 - b2 ** t);
  const out = mapNamed(params, (path, p) => {
    const g = lookup(grads, path);
    const m = lookup(state.m, path), v = lookup(state.v, path);
    if (g === null || !isFloat(p.dtype)) return new Tuple([p, m, v]);
    checkGrad(op, path, p, g);
    if (m === null || v === null) throw new DifflabError(`${op}: state has no moments for "${path}"`);
    const decay = wd !== 0 && (cfg.decayMask?.(path) ?? true);
    // Outside autodiff one fused primitive reads p, g, m, v once and writes p', m', v' once.
    const four = [p, g, m, v] as Tensor[];
    const uniform = four.every((t) => t.dtype === p.dtype && t.backend === p.backend && shapeEq(t.shape, p.shape));
    if (uniform && !tracers.some((tr) => four.some((t) => tr.tracks(t)))) {
      const q = {
        b1,
        c1: 1 - b1,
        b2,
        c2: 1 - b2,
        bc2: bc2Sqrt,
        eps,
        decay: decay ? 1 - lr * wd : 1,
        negStep: -stepSize,
      };
      return new Tuple(bind("adamw", four, q));
    }
    return new Tuple(tidy(() => {
      const p1 = decay ? ops.mul(p, 1 - lr * wd) : p;
      const m1 = ops.add(ops.mul(m, b1), ops.mul(g, 1 - b1));
      const v1 = ops.add(ops.mul(v, b2), ops.mul(ops.mul(g, g), 1 - b2));
      const denom = ops.add(ops.div(ops.sqrt(v1), bc2Sqrt), eps);
      return [ops.add(p1, ops.mul(ops.div(m1, denom), -stepSize)), m1, v1];
    }));
  });
  const [np, nm, nv] = splitResults(out, 3);
  return { params: np, state: { step: t, m: nm, v: nv } };
}

/** AdamW as an `init`/`update` pair. */
export const adamw: { init: typeof adamwInit; update: typeof adamwUpdate } = { init: adamwInit, update: adamwUpdate };

// ------------------------------------------------------------------ SGD

/** Configuration of {@link sgd} (torch.optim.SGD). */
export interface SgdConfig {
  /** Learning rate or schedule (default 1e-3). */
  lr?: number | Schedule;
  /** Momentum factor (default 0). */
  momentum?: number;
  /** Dampening of the momentum update (default 0). */
  dampening?: number;
  /** Nesterov momentum (default false). */
  nesterov?: boolean;
  /** L2 penalty added to the gradient (coupled, as torch's SGD) (default 0). */
  weightDecay?: number;
}

/** SGD state: step count and momentum buffers (null until a leaf's first update, as torch). */
export interface SgdState {
  /** Number of completed optimiser steps (0 for a fresh state); also the schedule's input. */
  step: number;
  /** Momentum buffers: a tree shaped like the params, null at a leaf until its first update. */
  momentum: unknown;
}

/** Fresh SGD state for `params`. */
export function sgdInit(params: unknown): SgdState {
  return { step: 0, momentum: mapNamed(params, () => null) };
}

/**
 * One SGD step as torch.optim.SGD: `d = g + wd·p`; with momentum
 * `buf = d` on the first step else `μ·buf + (1-dampening)·d`, and
 * `d = nesterov ? d + μ·buf : buf`; then `p ← p - lr·d`.
 */
export function sgdUpdate(
  params: unknown,
  grads: unknown,
  state: SgdState,
  cfg: SgdConfig = {},
): { params: unknown; state: SgdState } {
  const op = "sgd.update";
  if (!state || typeof state.step !== "number") throw new DifflabError(`${op}: state must come from sgd.init`);
  const mu = cfg.momentum ?? 0, damp = cfg.dampening ?? 0, wd = cfg.weightDecay ?? 0;
  if (cfg.nesterov && (mu <= 0 || damp !== 0)) {
    throw new DifflabError(`${op}: Nesterov momentum needs momentum > 0 and zero dampening`);
  }
  const lr = lrAt(op, cfg.lr ?? 1e-3, state.step);
  const out = mapNamed(params, (path, p) => {
    const g = lookup(grads, path);
    const buf = lookup(state.momentum, path);
    if (g === null || !isFloat(p.dtype)) return new Tuple([p, buf]);
    checkGrad(op, path, p, g);
    return new Tuple(tidy(() => {
      let d = wd !== 0 ? ops.add(g, ops.mul(p, wd)) : g;
      let b: Tensor | null = null;
      if (mu !== 0) {
        b = buf === null ? ops.add(d, 0) : ops.add(ops.mul(buf, mu), ops.mul(d, 1 - damp));
        d = cfg.nesterov ? ops.add(d, ops.mul(b, mu)) : b;
      }
      return [ops.add(p, ops.mul(d, -lr)), b];
    }));
  });
  const [np, nb] = splitResults(out, 2);
  return { params: np, state: { step: state.step + 1, momentum: nb } };
}

/** SGD as an `init`/`update` pair. */
export const sgd: { init: typeof sgdInit; update: typeof sgdUpdate } = { init: sgdInit, update: sgdUpdate };

// ------------------------------------------------------------------ clipping

/** The L2 norm of all float Tensor leaves of a tree together, as a scalar Tensor (f32 unless all are f64). */
export function globalNorm(tree: unknown): Tensor {
  // Summed in name order, so a tree rebuilt with its keys in another order (a loaded checkpoint) gives the same bits.
  const ls = namedLeaves(tree).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([, t]) => t)
    .filter((t) => isFloat(t.dtype));
  if (ls.length === 0) throw new DifflabError(`globalNorm: the tree has no floating-point tensors`);
  const dtype = ls.every((t) => t.dtype === "f64") ? "f64" : ls[0].dtype === "f16" ? "f32" : ls[0].dtype;
  const sq = ls.map((t) => ops.sum(ops.mul(ops.cast(t, dtype), ops.cast(t, dtype))));
  return ops.sqrt(sq.reduce((a, b) => ops.add(a, b)));
}

/**
 * Scales a gradient tree so its global norm is at most `maxNorm`, as
 * `torch.nn.utils.clip_grad_norm_`: factor `min(1, maxNorm/(norm + 1e-6))`.
 * Returns the clipped grads and the norm before clipping (no host sync).
 */
export function clipByGlobalNorm(grads: unknown, maxNorm: number): { grads: unknown; norm: Tensor } {
  if (!(maxNorm > 0) || !Number.isFinite(maxNorm)) {
    throw new DifflabError(`clipByGlobalNorm: maxNorm must be finite and > 0, got ${maxNorm}`);
  }
  const norm = globalNorm(grads);
  const coef = clampMax(ops.div(maxNorm, ops.add(norm, 1e-6)), 1);
  const clipped = mapNamed(grads, (_p, g) => (isFloat(g.dtype) ? ops.mul(g, ops.cast(coef, g.dtype)) : g));
  return { grads: clipped, norm };
}

// ------------------------------------------------------------------ EMA

/** A copy of `params` to start an EMA from (new tensor objects sharing storage, so disposing one leaves the other). */
export function emaInit<T>(params: T): T {
  return mapNamed(params, (_p, t) => alias(t)) as T;
}

/**
 * One EMA step as DiT's `update_ema`: `ema ← decay·ema + (1 - decay)·param`
 * for every float leaf (other leaves are copied from `params`).
 */
export function emaUpdate<T>(emaParams: T, params: T, decay: number): T {
  if (!(decay >= 0 && decay <= 1)) throw new DifflabError(`ema.update: decay must be in [0, 1], got ${decay}`);
  return mapNamed(params, (path, p) => {
    if (!isFloat(p.dtype)) return p;
    const e = lookup(emaParams, path);
    if (e === null) throw new DifflabError(`ema.update: the EMA tree has no tensor at "${path}"`);
    checkGrad("ema.update", path, p, e);
    return tidy(() => ops.add(ops.mul(e, decay), ops.mul(p, 1 - decay)));
  }) as T;
}

/** Parameter EMA as an `init`/`update` pair. */
export const ema: { init: typeof emaInit; update: typeof emaUpdate } = { init: emaInit, update: emaUpdate };

// ------------------------------------------------------------------ schedules

/** A constant learning rate. */
export function constantSchedule(lr: number): Schedule {
  return () => lr;
}

/**
 * Linear warm-up from `init` (default 0) to `peak` over `warmupSteps`, then
 * constant: `peak·min(step/warmupSteps, 1)` for init 0, as U-ViT/DiMR's LambdaLR.
 */
export function linearWarmupSchedule(peak: number, warmupSteps: number, opts: { init?: number } = {}): Schedule {
  if (!(warmupSteps >= 0)) throw new DifflabError(`linearWarmupSchedule: warmupSteps must be >= 0, got ${warmupSteps}`);
  const init = opts.init ?? 0;
  return (step) => (warmupSteps === 0 || step >= warmupSteps ? peak : init + ((peak - init) * step) / warmupSteps);
}

/**
 * Linear warm-up to `peak` over `warmupSteps`, then half-cosine decay to
 * `minLr` (default 0) at `totalSteps`, constant after.
 */
export function cosineSchedule(
  peak: number,
  totalSteps: number,
  opts: { warmupSteps?: number; minLr?: number; init?: number } = {},
): Schedule {
  const warm = opts.warmupSteps ?? 0, minLr = opts.minLr ?? 0;
  if (!(totalSteps > warm)) {
    throw new DifflabError(`cosineSchedule: totalSteps ${totalSteps} must exceed warmupSteps ${warm}`);
  }
  const w = linearWarmupSchedule(peak, warm, { init: opts.init });
  return (step) => {
    if (step < warm) return w(step);
    const prog = Math.min(1, (step - warm) / (totalSteps - warm));
    return minLr + 0.5 * (peak - minLr) * (1 + Math.cos(Math.PI * prog));
  };
}
