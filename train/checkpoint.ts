/**
 * @file Training checkpoints: one safetensors file holding the parameters,
 * their EMA and the AdamW moments under official names (`params.*`,
 * `ema.*`, `opt.m.*`, `opt.v.*`), with the step, PRNG key and run
 * configuration as JSON metadata. Writes are atomic (temp file + rename),
 * so a crash at any moment leaves the previous checkpoint intact, and every
 * read validates names and shapes against the model config.
 */
import { readSafetensors, writeSafetensors } from "../nn/io.ts";
import type { AdamWState } from "../nn/optim.ts";
import { flattenTree, unflattenLike } from "../nn/tree.ts";
import { DifflabError } from "../tensor/errors.ts";
import type { Tensor } from "../tensor/tensor.ts";
import { fromStateDict } from "../models/common.ts";
import { findModel } from "../models/registry.ts";

/** Everything needed to continue a run exactly. */
export interface RunInfo {
  /** Format version of this metadata. */
  version: 1;
  /** Named model config, e.g. "DiT-T/2". */
  model: string;
  /** The config record itself (so custom configs round-trip). */
  config: unknown;
  /** Completed optimiser steps. */
  step: number;
  /** Run seed; per-step keys are derived from it and the step. */
  seed: number;
  /** Name of the dataset trained on (e.g. "mnist"). */
  dataset: string;
  /** Images per optimiser step. */
  batch: number;
  /** Peak AdamW learning rate after warm-up. */
  lr: number;
  /** Linear learning-rate warm-up length, in steps. */
  warmup: number;
  /** AdamW decoupled weight decay. */
  weightDecay: number;
  /** Target EMA decay (ramped in as `min(decay, (1+step)/(10+step))`). */
  emaDecay: number;
  /** Max global gradient norm (gradients are clipped to it). */
  clip: number;
  /** "paper": the family's own objective; "flow": linear-path flow matching. */
  objective: "paper" | "flow";
  /** Steps the run was asked for (resuming continues to it unless overridden). */
  totalSteps: number;
  /** Learning-rate decay after warm-up over `totalSteps`: none (constant) or cosine to 0 (absent: none). */
  lrDecay?: "none" | "cosine";
}

/** A full training state. */
export interface TrainState {
  /** Run configuration and progress (stored as checkpoint metadata). */
  info: RunInfo;
  /** The model's parameter tree (official names), as trained. */
  params: unknown;
  /** Exponential moving average of `params`, same tree shape; what sampling uses. */
  ema: unknown;
  /** AdamW step count and moment trees. */
  opt: AdamWState;
}

const META = "difflab.train";

/** Writes a checkpoint atomically. */
export async function saveCheckpoint(path: string, s: TrainState): Promise<void> {
  const tensors: Record<string, Tensor> = {};
  const put = (prefix: string, tree: unknown) => {
    for (const [k, v] of Object.entries(flattenTree(tree))) tensors[`${prefix}.${k}`] = v;
  };
  put("params", s.params);
  put("ema", s.ema);
  put("opt.m", s.opt.m);
  put("opt.v", s.opt.v);
  await writeSafetensors(path, tensors, { [META]: JSON.stringify({ ...s.info, optStep: s.opt.step }) });
}

/** Reads and validates a checkpoint; errors name the file and what is wrong. */
export async function loadCheckpoint(path: string): Promise<TrainState> {
  const { tensors, metadata } = await readSafetensors(path);
  const raw = metadata[META];
  if (!raw) throw new DifflabError(`${path}: not a difflab training checkpoint (no "${META}" metadata)`);
  let info: RunInfo & { optStep: number };
  try {
    info = JSON.parse(raw);
  } catch (e) {
    throw new DifflabError(`${path}: checkpoint metadata is not valid JSON (${(e as Error).message})`);
  }
  if (info.version !== 1 || typeof info.step !== "number" || typeof info.model !== "string") {
    throw new DifflabError(`${path}: unsupported checkpoint metadata (version ${info.version})`);
  }
  const { def } = findModel(info.model);
  const part = (prefix: string) => {
    const out: Record<string, Tensor> = {};
    for (const [k, v] of Object.entries(tensors)) if (k.startsWith(prefix + ".")) out[k.slice(prefix.length + 1)] = v;
    return out;
  };
  const wrap = <T>(what: string, f: () => T): T => {
    try {
      return f();
    } catch (e) {
      throw new DifflabError(`${path}: ${what}: ${(e as Error).message}`);
    }
  };
  const params = wrap("params", () => fromStateDict(def, part("params"), info.config));
  const ema = wrap("ema", () => fromStateDict(def, part("ema"), info.config));
  const m = wrap("optimiser moments", () => unflattenLike(params, part("opt.m")));
  const v = wrap("optimiser moments", () => unflattenLike(params, part("opt.v")));
  const { optStep, ...rest } = info;
  return { info: rest, params, ema, opt: { step: optStep, m, v } };
}
