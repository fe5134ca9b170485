/**
 * @file Dynamic loss scaling for f16 training, with torch.cuda.amp.GradScaler's
 * rules: multiply the loss by `scale` so small f16 gradients do not flush to
 * zero, divide the gradients by it again (in f32), skip the update when any
 * gradient is Inf/NaN and halve the scale, and double it after
 * `growthInterval` finite steps in a row. The state is two numbers, so it
 * saves with the optimiser state.
 */
import { DifflabError } from "../tensor/errors.ts";
import { isFloat } from "../tensor/dtype.ts";
import * as ops from "../tensor/ops.ts";
import { Tensor } from "../tensor/tensor.ts";
import { mapLeavesOf } from "../autograd/tree.ts";

/** Settings of a dynamic loss scaler (defaults: torch's GradScaler). */
export interface LossScaleConfig {
  /** First scale (default 2^16). */
  initScale?: number;
  /** Factor applied after `growthInterval` finite steps (default 2). */
  growthFactor?: number;
  /** Factor applied after a step with non-finite gradients (default 0.5). */
  backoffFactor?: number;
  /** Finite steps in a row before the scale grows (default 2000). */
  growthInterval?: number;
}

/** State of a dynamic loss scaler. */
export interface LossScaleState {
  /** Current scale. */
  scale: number;
  /** Finite steps since the last change of scale. */
  growthTracker: number;
}

function checkConfig(c: LossScaleConfig): Required<LossScaleConfig> {
  const r = {
    initScale: c.initScale ?? 65536,
    growthFactor: c.growthFactor ?? 2,
    backoffFactor: c.backoffFactor ?? 0.5,
    growthInterval: c.growthInterval ?? 2000,
  };
  if (!(r.initScale > 0) || !Number.isFinite(r.initScale)) {
    throw new DifflabError(`lossScale: initScale must be finite and > 0, got ${r.initScale}`);
  }
  if (!(r.growthFactor > 1) || !Number.isFinite(r.growthFactor)) {
    throw new DifflabError(`lossScale: growthFactor must be finite and > 1, got ${r.growthFactor}`);
  }
  if (!(r.backoffFactor > 0 && r.backoffFactor < 1)) {
    throw new DifflabError(`lossScale: backoffFactor must be in (0, 1), got ${r.backoffFactor}`);
  }
  if (!Number.isInteger(r.growthInterval) || r.growthInterval < 1) {
    throw new DifflabError(`lossScale: growthInterval must be an integer >= 1, got ${r.growthInterval}`);
  }
  return r;
}

/** A fresh scaler state. */
export function lossScaleInit(config: LossScaleConfig = {}): LossScaleState {
  return { scale: checkConfig(config).initScale, growthTracker: 0 };
}

/** `loss · scale` (differentiate this one); an f16 loss is widened to f32 first, since 2^16 is not an f16. */
export function lossScaleApply(loss: Tensor, state: LossScaleState): Tensor {
  if (!(loss instanceof Tensor)) throw new DifflabError("lossScale.scale: loss must be a Tensor");
  if (!isFloat(loss.dtype)) throw new DifflabError(`lossScale.scale: loss must be a float tensor, got ${loss.dtype}`);
  const wide = loss.dtype === "f16" ? ops.cast(loss, "f32") : loss;
  return ops.mul(wide, ops.scalar(state.scale, wide.dtype));
}

/**
 * Divides every float gradient by the scale, in f32 (f64 stays f64), and
 * returns whether all of them are finite as a bool scalar tensor (read it
 * with `await finite.item()` before deciding to apply the update).
 */
export function lossScaleUnscale(grads: unknown, state: LossScaleState): { grads: unknown; finite: Tensor } {
  const inv = 1 / state.scale;
  let finite: Tensor | null = null;
  const out = mapLeavesOf("lossScale.unscale", grads, (g) => {
    if (!isFloat(g.dtype)) return g;
    const wide = g.dtype === "f16" ? ops.cast(g, "f32") : g;
    // min over {0, 1} is 1 only when every element is finite (no `all` primitive needed).
    const ok = ops.cast(ops.min(ops.cast(ops.isfinite(wide), "f32")), "bool");
    finite = finite === null ? ok : ops.logicalAnd(finite, ok);
    return ops.mul(wide, ops.cast(ops.scalar(inv, "f64"), wide.dtype));
  });
  return { grads: out, finite: finite ?? ops.scalar(1, "bool") };
}

/** The next state after a step whose gradients were (not) all finite; a non-finite step must be skipped. */
export function lossScaleUpdate(state: LossScaleState, finite: boolean, config: LossScaleConfig = {}): LossScaleState {
  const c = checkConfig(config);
  if (!finite) return { scale: state.scale * c.backoffFactor, growthTracker: 0 };
  const n = state.growthTracker + 1;
  return n >= c.growthInterval
    ? { scale: state.scale * c.growthFactor, growthTracker: 0 }
    : { scale: state.scale, growthTracker: n };
}

/** Dynamic loss scaling: `init`, `scale` (the loss), `unscale` (the gradients), `update` (the state). */
export const lossScale: {
  init: typeof lossScaleInit;
  scale: typeof lossScaleApply;
  unscale: typeof lossScaleUnscale;
  update: typeof lossScaleUpdate;
} = { init: lossScaleInit, scale: lossScaleApply, unscale: lossScaleUnscale, update: lossScaleUpdate };
