/**
 * @file Each family's own training objective and sampler, behind one
 * interface: DiT / U-DiT / DiCo train with DiT's Gaussian diffusion
 * (learned sigma, MSE + VLB) and sample with DDPM/DDIM; DyDiT adds its
 * FLOPs-ratio target and the complete-model term; DiMR trains with its
 * multi-scale epsilon loss and samples with DPM-Solver. `objective: "flow"`
 * swaps in linear-path flow matching for any family (an experiment beyond
 * the papers) and enables the Euler/Heun samplers.
 */
import { cfgModel, dimrCfgModelFn } from "../diffusion/cfg.ts";
import { dimrLoss, dimrSchedule, dimrSolver } from "../diffusion/dimr.ts";
import { dpmSolverSample } from "../diffusion/dpm_solver.ts";
import { flowEulerSample, flowHeunSample, flowLoss } from "../diffusion/flow.ts";
import { createDiffusion, ddimSampleLoop, loss as gaussianLoss, pSampleLoop } from "../diffusion/gaussian.ts";
import type { ModelFn } from "../diffusion/common.ts";
import { labelDrop } from "../nn/embed.ts";
import { DifflabError } from "../tensor/errors.ts";
import * as ops from "../tensor/ops.ts";
import * as random from "../tensor/random.ts";
import type { Key } from "../tensor/random.ts";
import type { Tensor } from "../tensor/tensor.ts";
import type { ModelDef } from "../models/common.ts";
import * as dydit from "../models/dydit.ts";

/** Samplers the CLI offers. */
export type SamplerName = "ddpm" | "ddim" | "dpm-solver" | "euler" | "heun";

/** Options of one sampling run. */
export interface SampleOptions {
  /** Sampler to use (default: the objective's `defaultSampler`); Euler/Heun need the flow objective. */
  sampler?: SamplerName;
  /** Number of sampler steps (model evaluations for DPM-Solver/Euler; 2x for Heun). */
  steps?: number;
  /** Guidance scale in DiT's convention (1 = none); DiMR's `s` is `cfg - 1`. */
  cfg?: number;
  /** Called after each step. */
  onStep?: (step: number, total: number) => void;
}

/** A family's objective and sampler. */
export interface Objective {
  /** Training loss of one batch (scalar). */
  loss(params: unknown, x0: Tensor, y: Tensor, key: Key): Tensor;
  /** Generates images `[n, C, H, W]` for labels `y [n]`. */
  sample(params: unknown, y: Tensor, key: Key, opts?: SampleOptions): Promise<Tensor>;
  /** The sampler used when none is named. */
  defaultSampler: SamplerName;
}

/** Options of {@link objectiveFor}. */
export interface ObjectiveOptions {
  /** "paper" (default): the family's own objective; "flow": linear-path flow matching. */
  objective?: "paper" | "flow";
  /** DyDiT's target FLOPs ratio λ (default 0.7, the released checkpoint). */
  flopsTarget?: number;
}

/** The CFG null label of a config: DiMR counts it in num_classes, the DiT family does not. */
export function nullLabel(def: ModelDef<unknown, unknown>, config: unknown): number {
  const c = config as { numClasses: number };
  return def.family === "DiMR" ? c.numClasses - 1 : c.numClasses;
}

/** Image channels and side length a config generates (DiMR: its full-resolution branch). */
export function imageShape(def: ModelDef<unknown, unknown>, config: unknown): [number, number] {
  if (def.family === "DiMR") {
    const c = config as {
      channels: number;
      stages: { maxHeight: number; inputFeatureRatio: number; imageInputRatio: number }[];
    };
    const s = c.stages[c.stages.length - 1];
    return [c.channels, s.maxHeight * s.inputFeatureRatio * s.imageInputRatio];
  }
  const c = config as { inChannels: number; inputSize?: number };
  return [c.inChannels, c.inputSize ?? 32];
}

/** Number of real classes of a config. */
export function classCount(def: ModelDef<unknown, unknown>, config: unknown): number {
  return nullLabel(def, config);
}

function last(o: Tensor | Tensor[]): Tensor {
  return Array.isArray(o) ? o[o.length - 1] : o;
}

/** Builds the objective of a model family. */
export function objectiveFor(def: ModelDef<unknown, unknown>, config: unknown, opts: ObjectiveOptions = {}): Objective {
  const nl = nullLabel(def, config);
  const [C, S] = imageShape(def, config);
  const firstC = (o: Tensor) => (o.shape[1] === C ? o : ops.slice(o, [0, 0], [o.shape[0], C]));
  const evalFn = (params: unknown): ModelFn => (x, t, y) => last(def.apply(params, x, t, y!, config));
  if (opts.objective === "flow") return flowObjective(def, config, nl, C, firstC, evalFn);
  if (def.family === "DiMR") return dimrObjective(def, config, nl);
  const diffusion = createDiffusion("");
  return {
    defaultSampler: "ddim",
    loss(params, x0, y, key) {
      const [kd, kl] = random.split(key, 2);
      const train = (x: Tensor, t: Tensor, yy?: Tensor) =>
        last(def.apply(params, x, t, yy!, config, { train: true, key: kl }));
      if (def.family !== "DyDiT") return gaussianLoss(diffusion, train, x0, kd, { y });
      // DyDiT: the dynamic model's diffusion loss, the complete (static) model's loss,
      // and (mean FLOPs ratio - target)^2 from the straight-through masks.
      let masks: dydit.DyDiTOutputs | undefined;
      const dyn: ModelFn = (x, t, yy) => {
        masks = dydit.applyWithMasks(params as dydit.DyDiTParams, x, t, yy!, config as dydit.DyDiTConfig, {
          train: true,
          key: kl,
        });
        return masks.out;
      };
      const complete: ModelFn = (x, t, yy) =>
        dydit.apply(params as dydit.DyDiTParams, x, t, yy!, config as dydit.DyDiTConfig, {
          train: true,
          key: kl,
          complete: true,
        });
      const lDyn = gaussianLoss(diffusion, dyn, x0, kd, { y });
      const lFull = gaussianLoss(diffusion, complete, x0, kd, { y });
      const lFlops = dydit.flopsLoss(masks!, config as dydit.DyDiTConfig, opts.flopsTarget ?? 0.7);
      return ops.add(ops.add(lDyn, lFull), lFlops);
    },
    sample(params, y, key, so = {}) {
      const sampler = so.sampler ?? "ddim";
      const steps = so.steps ?? (sampler === "ddpm" ? 250 : 50);
      const scale = so.cfg ?? 1;
      const base = evalFn(params);
      const model = scale === 1 ? base : cfgModel(base, { scale, nullLabel: nl, channels: C });
      const n = y.shape[0];
      const shape = [n, C, S, S];
      const fn: ModelFn = (x, t) => model(x, t, y);
      const onStep = so.onStep ? (i: { step: number; total: number }) => so.onStep!(i.step, i.total) : undefined;
      if (sampler === "ddpm") return pSampleLoop(createDiffusion(String(steps)), fn, shape, { key, onStep });
      if (sampler === "ddim") return ddimSampleLoop(createDiffusion(`ddim${steps}`), fn, shape, { key, onStep });
      return Promise.reject(
        new DifflabError(
          `sample: sampler "${sampler}" does not apply to a Gaussian-diffusion ${def.family} (use ddpm or ddim; euler/heun need --objective flow, dpm-solver is DiMR's)`,
        ),
      );
    },
  };
}

function dimrObjective(def: ModelDef<unknown, unknown>, config: unknown, nl: number): Objective {
  const schedule = dimrSchedule();
  const multi = (params: unknown, train: boolean, key?: Key) => (x: Tensor, logSnr: Tensor, y?: Tensor) =>
    def.apply(params, x, logSnr, y!, config, { train, key }) as Tensor[];
  return {
    defaultSampler: "dpm-solver",
    loss(params, x0, y, key) {
      const [kd, kl] = random.split(key, 2);
      // DiMR drops labels to the null class with p = 0.1 in its training loop.
      const yd = labelDrop(y, nl, { p: 0.1, key: kl });
      const K =
        (def.apply(params, ops.slice(x0, [0], [1]), ops.zeros([1]), ops.slice(yd, [0], [1]), config) as Tensor[])
          .length;
      const coeffs = Array.from({ length: K }, (_, k) => 4 ** -(K - 1 - k));
      return dimrLoss(schedule, multi(params, true), x0, kd, { coeffs, y: yd });
    },
    sample(params, y, key, so = {}) {
      const sampler = so.sampler ?? "dpm-solver";
      if (sampler !== "dpm-solver") {
        return Promise.reject(
          new DifflabError(`sample: DiMR samples with dpm-solver (its official sampler), not "${sampler}"`),
        );
      }
      const steps = so.steps ?? 25;
      const [C, S] = imageShape(def, config);
      const x = random.normal(key, [y.shape[0], C, S, S]);
      const model = dimrCfgModelFn(multi(params, false), { scale: (so.cfg ?? 1) - 1, nullLabel: nl, y });
      const onStep = so.onStep ? (i: { step: number; total: number }) => so.onStep!(i.step, i.total) : undefined;
      return dpmSolverSample(dimrSolver(model, schedule), x, { steps, eps: 1e-3, T: 1, onStep });
    },
  };
}

function flowObjective(
  def: ModelDef<unknown, unknown>,
  config: unknown,
  nl: number,
  C: number,
  firstC: (o: Tensor) => Tensor,
  evalFn: (params: unknown) => ModelFn,
): Objective {
  // Flow time t in [0, 1] reaches the model as t*1000, so the DDPM-style timestep embedders apply unchanged.
  const timeScale = 1000;
  return {
    defaultSampler: "heun",
    loss(params, x0, y, key) {
      const [kf, kl] = random.split(key, 2);
      const model: ModelFn = (x, t, yy) => firstC(last(def.apply(params, x, t, yy!, config, { train: true, key: kl })));
      return flowLoss(model, x0, kf, { y, timeScale });
    },
    sample(params, y, key, so = {}) {
      const sampler = so.sampler ?? "heun";
      if (sampler !== "euler" && sampler !== "heun") {
        return Promise.reject(
          new DifflabError(`sample: a flow-matching model samples with euler or heun, not "${sampler}"`),
        );
      }
      const base = evalFn(params);
      const scale = so.cfg ?? 1;
      const guided = scale === 1 ? base : cfgModel(base, { scale, nullLabel: nl, channels: C });
      const v: ModelFn = (x, t, yy) => firstC(guided(x, t, yy));
      const S = imageShape(def, config)[1];
      const noise = random.normal(key, [y.shape[0], C, S, S]);
      const onStep = so.onStep ? (i: { step: number; total: number }) => so.onStep!(i.step, i.total) : undefined;
      const run = sampler === "euler" ? flowEulerSample : flowHeunSample;
      return run(v, noise, { steps: so.steps ?? 20, y, timeScale, onStep });
    },
  };
}
