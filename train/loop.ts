/**
 * @file The training loop as a library function (the CLI and notebooks call
 * it): one step is `batch -> objective loss -> valueAndGrad -> clip ->
 * AdamW -> EMA`, each in a `tidy` scope so memory stays flat. Everything
 * random is a pure function of (seed, step) - the data order, noise and
 * timesteps - so a run resumed from a checkpoint reproduces the
 * uninterrupted run exactly on the same backend.
 */
import { valueAndGrad } from "../autograd/autograd.ts";
import { mapLeaves } from "../autograd/tree.ts";
import { adamw, clipByGlobalNorm, ema as emaOps } from "../nn/optim.ts";
import { namedLeaves } from "../nn/tree.ts";
import { DifflabError } from "../tensor/errors.ts";
import * as random from "../tensor/random.ts";
import { currentBackend, dispose, fromHost, keep, type Tensor, tidy } from "../tensor/tensor.ts";
import { findModel } from "../models/registry.ts";
import { batchIndices, batchTensors, type Dataset } from "../data/dataset.ts";
import { loadCheckpoint, type RunInfo, saveCheckpoint, type TrainState } from "./checkpoint.ts";
import { classCount, imageShape, objectiveFor, type SampleOptions } from "./objectives.ts";
import { createProgress } from "./progress.ts";

/** The images a run trains on (see data/: `loadDataset`). */
export type TrainData = Dataset;

/** Options of {@link train}. */
export interface TrainOptions {
  /** Named model config (see `deno task params`); optional when resuming (the checkpoint names it). */
  model?: string;
  /** Fields that override the named config (e.g. a smaller `inputSize`/`depth` for experiments and tests). */
  configOverrides?: Record<string, unknown>;
  /** Total optimiser steps of the run (when resuming: the new total, not the steps still to do; default: the checkpoint's). */
  steps?: number;
  /** Images per step (default 64; a resumed run keeps its checkpoint's value). */
  batch?: number;
  /** Peak AdamW learning rate after warm-up (default 1e-3). */
  lr?: number;
  /** Linear warm-up steps. */
  warmup?: number;
  /** After warm-up: constant ("none", default) or cosine decay to 0 at `steps`. */
  lrDecay?: "none" | "cosine";
  /** AdamW decoupled weight decay (default 0). */
  weightDecay?: number;
  /** Target EMA decay of the averaged weights, ramped in as `min(decay, (1+step)/(10+step))` (default 0.999). */
  emaDecay?: number;
  /** Max global gradient norm. */
  clip?: number;
  /** Seed of the init, data order, noise and timesteps (default 0); the run is a pure function of it. */
  seed?: number;
  /** "paper" (default): the family's own objective; "flow": linear-path flow matching. */
  objective?: "paper" | "flow";
  /** Output directory for ckpt.safetensors, log.jsonl and sample grids (none: nothing is written). */
  out?: string;
  /**
   * Continue from `out/ckpt.safetensors`. When there is none yet (a run killed before its first
   * checkpoint) and `model` is given, a new run starts.
   */
  resume?: boolean;
  /** Receives one-line notices (e.g. that a resume found no checkpoint and started anew). */
  onNotice?: (message: string) => void;
  /** Write a log record (and progress line) every N steps and at the end (default 10). */
  logEvery?: number;
  /** Checkpoint every N steps (and at the end). */
  ckptEvery?: number;
  /** Sample grid every N steps (0: only at the end). */
  sampleEvery?: number;
  /** Sampling of the grids; `perClass` samples per class (default 8, 0: no grids). */
  sample?: SampleOptions & { perClass?: number };
  /** No progress output. */
  quiet?: boolean;
  /** Called for each logged step. */
  onLog?: (rec: LogRecord) => void;
  /** Writes a PNG grid of `images [n, C, H, W]` with `rows` rows (wired by the CLI to data/png.ts). */
  writeGrid?: (path: string, images: Tensor, rows: number) => Promise<void>;
}

/** One line of `log.jsonl`. */
export interface LogRecord {
  /** Steps completed so far (1-based: the step just taken). */
  step: number;
  /** Training loss of that step's batch. */
  loss: number;
  /** Learning rate used for that step (after warm-up scaling). */
  lr: number;
  /** Global gradient norm before clipping. */
  grad_norm: number;
  /** Training throughput since the previous log record, in images per second. */
  images_per_s: number;
  /** Wall-clock seconds since this call to {@link train} began (a resumed run restarts from 0). */
  elapsed_s: number;
}

/** Result of a run. */
export interface TrainResult {
  /** Final parameters, EMA weights, optimiser state and run info (what the checkpoint holds). */
  state: TrainState;
  /** Loss of every step this call ran, in order (excludes steps before a resume). */
  losses: number[];
}

/** The learning rate at a (0-based) step: linear warm-up, then constant or cosine-decayed towards 0 at `total`. */
export function lrAt(
  lr: number,
  warmup: number,
  step: number,
  decay?: { kind?: "none" | "cosine"; total: number },
): number {
  if (warmup > 0 && step + 1 < warmup) return lr * (step + 1) / warmup;
  if (!decay || decay.kind !== "cosine" || decay.total <= warmup) return lr;
  const progress = Math.min(1, (step + 1 - warmup) / (decay.total - warmup + 1));
  return lr * 0.5 * (1 + Math.cos(Math.PI * progress));
}

/** EMA decay with DiT-style warm-up so short runs are not dominated by the init. */
export function emaDecayAt(decay: number, step: number): number {
  return Math.min(decay, (1 + step) / (10 + step));
}

/** The key of the data order: independent of the per-step training keys. */
function dataKey(seed: number): random.Key {
  return random.foldIn(random.randomKey(seed), 0x5eed);
}

/** Disposes the leaves of `old` that `next` did not carry over. */
function disposeReplaced(old: unknown, next: unknown) {
  const keepSet = new Set(namedLeaves(next).map(([, t]) => t));
  for (const [, t] of namedLeaves(old)) if (!keepSet.has(t)) t.dispose();
}

async function appendLog(path: string, rec: LogRecord) {
  await Deno.writeTextFile(path, JSON.stringify(rec) + "\n", { append: true });
}

/**
 * Fails before any allocation when the training state cannot fit the backend: params, EMA, AdamW m
 * and v and the gradients (5 copies) against the backend's total limit, the largest tensor against
 * its per-tensor limit.
 */
function checkFits(model: string, shapes: Record<string, number[]>) {
  const limits = currentBackend().memoryLimits?.();
  if (!limits) return;
  let count = 0, largest = 0, largestName = "";
  for (const [n, s] of Object.entries(shapes)) {
    const k = s.reduce((a, b) => a * b, 1);
    count += k;
    if (k > largest) [largest, largestName] = [k, n];
  }
  const gib = (b: number) => `${(b / 2 ** 30).toFixed(2)} GiB`;
  const state = 5 * 4 * count;
  if (limits.totalBytes !== undefined && state > limits.totalBytes) {
    throw new DifflabError(
      `train: ${model} has ${
        count.toLocaleString("en-US")
      } parameters; its training state (params, EMA, AdamW m and v, ` +
        `gradients: ${gib(state)} in f32) does not fit: ${limits.describe}. Use a smaller model or another backend.`,
    );
  }
  if (limits.maxTensorBytes !== undefined && 4 * largest > limits.maxTensorBytes) {
    throw new DifflabError(
      `train: ${model}'s parameter ${largestName} [${shapes[largestName]}] needs ${
        4 * largest
      } bytes: ${limits.describe}`,
    );
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/** Deletes temporary files that a killed run left mid-write (`*.tmp-*`); the real files are untouched. */
async function removeStaleTemps(dir: string) {
  for await (const e of Deno.readDir(dir)) {
    if (e.isFile && /\.tmp-[0-9a-zA-Z-]+$/.test(e.name)) {
      await Deno.remove(`${dir}/${e.name}`).catch(() => {});
    }
  }
}

/** Keeps the log consistent with a resumed checkpoint: drops lines past its step. */
async function truncateLog(path: string, step: number) {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch {
    return;
  }
  const kept = text.split("\n").filter((l) => {
    if (!l.trim()) return false;
    try {
      return JSON.parse(l).step <= step;
    } catch {
      return false;
    }
  });
  const tmp = `${path}.tmp-${crypto.randomUUID()}`;
  await Deno.writeTextFile(tmp, kept.map((l) => l + "\n").join(""));
  await Deno.rename(tmp, path);
}

/** Generates one row of `perClass` samples per class with the EMA weights. */
export async function sampleGrid(
  state: TrainState,
  perClass: number,
  opts: SampleOptions & { seed?: number } = {},
): Promise<{ images: Tensor; rows: number }> {
  const { def } = findModel(state.info.model);
  const obj = objectiveFor(def, state.info.config, { objective: state.info.objective });
  const K = classCount(def, state.info.config);
  const labels = Int32Array.from({ length: K * perClass }, (_, i) => Math.floor(i / perClass));
  const y = fromHost(labels, [labels.length], "i32");
  const images = await obj.sample(state.ema, y, random.foldIn(random.randomKey(opts.seed ?? 0), 0x5a3), opts);
  y.dispose();
  return { images, rows: K };
}

/** Trains a model; see {@link TrainOptions}. Resolves with the final state and the per-step losses. */
export async function train(data: TrainData, o: TrainOptions): Promise<TrainResult> {
  const ckptPath = o.out ? `${o.out}/ckpt.safetensors` : undefined;
  const logPath = o.out ? `${o.out}/log.jsonl` : undefined;
  if (o.out) {
    await Deno.mkdir(o.out, { recursive: true });
    await removeStaleTemps(o.out);
  }
  let state: TrainState;
  if (o.resume && !ckptPath) throw new DifflabError("train: --resume needs an output directory with a checkpoint");
  // A run killed before its first checkpoint left nothing to resume: with a model named, start it anew.
  const fresh = o.resume && o.model !== undefined && !(await exists(ckptPath!));
  if (fresh) o.onNotice?.(`train: no checkpoint in ${o.out} yet; starting a new run`);
  if (o.resume && !fresh) {
    state = await loadCheckpoint(ckptPath!);
    if (o.model !== undefined && state.info.model !== o.model) {
      throw new DifflabError(`train: ${ckptPath} holds a ${state.info.model} run, not ${o.model}`);
    }
    if (logPath) await truncateLog(logPath, state.info.step);
    state.info.totalSteps = o.steps ?? state.info.totalSteps;
  } else {
    if (o.model === undefined) throw new DifflabError("train: name a model (e.g. DiT-T/2)");
    if (o.steps === undefined) throw new DifflabError("train: a new run needs opts.steps");
    const { name, def, config: named } = findModel(o.model);
    const seed = o.seed ?? 0;
    const config = { ...(named as Record<string, unknown>), ...o.configOverrides };
    const K = classCount(def, config);
    if (K !== data.numClasses) {
      throw new DifflabError(
        `train: ${name} is built for ${K} classes but dataset ${data.name} has ${data.numClasses}`,
      );
    }
    checkFits(name, def.paramShapes(config));
    const params = tidy(() => def.init(random.foldIn(random.randomKey(seed), 0x1417), config));
    const info: RunInfo = {
      version: 1,
      model: name,
      config,
      step: 0,
      seed,
      dataset: data.name,
      batch: o.batch ?? 64,
      lr: o.lr ?? 1e-3,
      warmup: o.warmup ?? 100,
      weightDecay: o.weightDecay ?? 0,
      emaDecay: o.emaDecay ?? 0.999,
      clip: o.clip ?? 1,
      objective: o.objective ?? "paper",
      totalSteps: o.steps!,
      lrDecay: o.lrDecay ?? "none",
    };
    state = { info, params, ema: emaOps.init(params), opt: adamw.init(params) };
    if (logPath) await Deno.writeTextFile(logPath, "");
  }
  const info = state.info;
  const total = info.totalSteps;
  const { name, def } = findModel(info.model);
  const cfg = info.config as Record<string, unknown>;
  const shape = imageShape(def, cfg);
  if (shape[0] !== data.channels || shape[1] !== data.size) {
    throw new DifflabError(
      `train: ${name} expects ${shape[0]}x${shape[1]}x${
        shape[1]
      } images, dataset ${data.name} has ${data.channels}x${data.size}x${data.size}`,
    );
  }
  const obj = objectiveFor(def, cfg, { objective: info.objective });
  const frozen = new Set(def.frozen ?? []);
  const progress = createProgress({ quiet: o.quiet, every: o.logEvery ?? 10 });
  const losses: number[] = [];
  const logEvery = o.logEvery ?? 10, ckptEvery = o.ckptEvery ?? 100;
  const t0 = performance.now();
  let window = performance.now(), windowImages = 0;
  const saveGrid = async (step: number) => {
    const perClass = o.sample?.perClass ?? 8;
    if (!o.out || !o.writeGrid || perClass === 0) return;
    const { images, rows } = await sampleGrid(state, perClass, { ...o.sample, seed: info.seed });
    await o.writeGrid(`${o.out}/samples-${step}.png`, images, rows);
    images.dispose();
  };
  while (info.step < total) {
    const step = info.step;
    const lr = lrAt(info.lr, info.warmup, step, { kind: info.lrDecay, total: info.totalSteps });
    const res = tidy(() => {
      const { x, y } = batchTensors(data, batchIndices(dataKey(info.seed), data.n, info.batch, step));
      const key = random.foldIn(random.randomKey(info.seed), step);
      const [loss, grads0] = valueAndGrad((p: unknown) => obj.loss(p, x, y, key))(state.params) as [Tensor, unknown];
      // Frozen buffers (e.g. DiT's pos_embed) get no update at all.
      const named = new Map(namedLeaves(grads0));
      const grads = frozen.size
        ? mapLeaves(grads0, (g) => {
          for (const f of frozen) if (named.get(f) === g) return null;
          return g;
        })
        : grads0;
      const { grads: clipped, norm } = clipByGlobalNorm(grads, info.clip);
      const up = adamw.update(state.params, clipped, state.opt, { lr, weightDecay: info.weightDecay });
      const e = emaOps.update(state.ema, up.params, emaDecayAt(info.emaDecay, step));
      return { loss, norm, params: up.params, opt: up.state, ema: e };
    });
    const [lv, nv] = [await res.loss.item(), await res.norm.item()];
    if (!Number.isFinite(lv) || !Number.isFinite(nv)) {
      dispose(res);
      throw new DifflabError(
        `train: ${Number.isFinite(lv) ? "gradient norm" : "loss"} is ${Number.isFinite(lv) ? nv : lv} at step ${
          step + 1
        }; ` +
          `stopped without updating the parameters` +
          (ckptPath ? `; the last good checkpoint ${ckptPath} is kept` : ""),
      );
    }
    disposeReplaced(state.params, res.params);
    disposeReplaced(state.ema, res.ema);
    disposeReplaced(state.opt, res.opt);
    res.loss.dispose();
    res.norm.dispose();
    state = { info, params: res.params, ema: res.ema, opt: res.opt };
    for (const t of namedLeaves([state.params, state.ema, state.opt]).map(([, t]) => t)) keep(t);
    info.step = step + 1;
    losses.push(lv);
    windowImages += info.batch;
    const now = performance.now();
    const ips = windowImages / ((now - window) / 1000);
    progress.update({ step: info.step, total, loss: lv, imagesPerSec: ips });
    if (info.step % logEvery === 0 || info.step === total) {
      const rec: LogRecord = {
        step: info.step,
        loss: lv,
        lr,
        grad_norm: nv,
        images_per_s: Math.round(ips * 10) / 10,
        elapsed_s: Math.round((now - t0) / 100) / 10,
      };
      if (logPath) await appendLog(logPath, rec);
      o.onLog?.(rec);
      window = now;
      windowImages = 0;
    }
    if (ckptPath && (info.step % ckptEvery === 0 || info.step === total)) await saveCheckpoint(ckptPath, state);
    if (o.sampleEvery && info.step % o.sampleEvery === 0 && info.step !== total) await saveGrid(info.step);
  }
  progress.done();
  if (o.out) await saveGrid(info.step);
  return { state, losses };
}
