/**
 * @file `deno task train`: pixel-space class-conditional training of any
 * registered model on MNIST (default), Fashion-MNIST or a PNG directory,
 * with a progress bar, `DIR/log.jsonl`, `DIR/samples-STEP.png` grids and an
 * atomically written `DIR/ckpt.safetensors`; `--resume` continues exactly.
 */
import { train } from "../train/loop.ts";
import { findModel } from "../models/registry.ts";
import { parseCli } from "./args.ts";
import { chooseBackend, openDataset, runMain, writeGrid } from "./common.ts";

/** Defaults of a run that names its model: the paper's objective and AdamW settings every family trains with. */
export const DEFAULTS = {
  dataset: "mnist",
  steps: 2000,
  batch: 64,
  lr: 1e-3,
  warmup: 100,
  lrDecay: "none" as "none" | "cosine",
  objective: "paper" as "paper" | "flow",
  out: "runs/default",
  cfg: 2,
};

/**
 * The run without flags: the model and recipe that gave the best digits
 * fastest on a 2-core CPU (measured, see the README): DiT-N/4 with
 * linear-path flow matching, a high peak LR with cosine decay, sized to
 * finish in under 10 minutes with the wasm backend.
 */
export const DEFAULT_RUN = {
  model: "DiT-N/4",
  objective: "flow" as "paper" | "flow",
  lr: 1e-2,
  lrDecay: "cosine" as "none" | "cosine",
  steps: 1900,
  batch: 64,
  warmup: 100,
};

const USAGE = `Usage: deno task train [options]

Trains a class-conditional diffusion model on 32x32 images with its paper's objective
(DiT/U-DiT/DiCo: Gaussian diffusion with learned sigma; DiMR: multi-scale loss; DyDiT:
FLOPs-target objective), AdamW, EMA, gradient clipping and LR warm-up.

Options:
  --model NAME        named config (list them with \`deno task params\`); without it, the default
                      run: ${DEFAULT_RUN.model}, ${DEFAULT_RUN.objective} objective, lr ${DEFAULT_RUN.lr} with ${DEFAULT_RUN.lrDecay} decay,
                      ${DEFAULT_RUN.steps} steps of batch ${DEFAULT_RUN.batch} (the defaults below apply when a model is named)
  --dataset D         mnist (default), fashion-mnist, or a directory of per-class PNG folders
  --steps N           total optimiser steps (default ${DEFAULTS.steps}; with --resume: the checkpoint's total)
  --batch B           batch size (default ${DEFAULTS.batch})
  --lr LR             peak learning rate (default ${DEFAULTS.lr})
  --warmup N          linear warm-up steps (default ${DEFAULTS.warmup}, at most a tenth of the steps)
  --lr-decay D        none or cosine (to 0 at the last step; default ${DEFAULTS.lrDecay})
  --weight-decay W    AdamW weight decay (default 0)
  --ema D             EMA decay (default 0.999)
  --clip C            max global gradient norm (default 1)
  --objective O       paper or flow (linear-path flow matching, any model; default ${DEFAULTS.objective})
  --out DIR           output directory (default ${DEFAULTS.out})
  --resume            continue from DIR/ckpt.safetensors
  --seed S            PRNG seed (default 0)
  --backend B         webgpu, wasm or cpu (default: webgpu on a hardware GPU, else wasm)
  --log-every N       log.jsonl line every N steps (default 10)
  --ckpt-every N      checkpoint every N steps (default 100, and at the end)
  --sample-every N    sample grid every N steps (default 0: only at the end)
  --cfg W             guidance scale of the sample grids (default ${DEFAULTS.cfg})
  --sampler S         ddpm, ddim, dpm-solver, euler or heun (default: the model's own)
  --sample-steps N    sampler steps of the grids (default: the sampler's own: ddim 50, ddpm 250,
                      dpm-solver 25, euler/heun 20)
  --grid-per-class N  samples per class in each grid (default 8; 0: no grids)
  --quiet             no progress output
  --debug             print stack traces on errors
  -h, --help          show this help`;

await runMain(async () => {
  const a = parseCli(USAGE, {
    model: { type: "string" },
    dataset: { type: "string" },
    steps: { type: "string" },
    batch: { type: "string" },
    lr: { type: "string" },
    warmup: { type: "string" },
    "lr-decay": { type: "string" },
    "weight-decay": { type: "string" },
    ema: { type: "string" },
    clip: { type: "string" },
    objective: { type: "string" },
    out: { type: "string" },
    resume: { type: "boolean" },
    seed: { type: "string" },
    backend: { type: "string" },
    "log-every": { type: "string" },
    "ckpt-every": { type: "string" },
    "sample-every": { type: "string" },
    cfg: { type: "string" },
    sampler: { type: "string" },
    "sample-steps": { type: "string" },
    "grid-per-class": { type: "string" },
    quiet: { type: "boolean" },
    debug: { type: "boolean" },
  });
  const resume = a.bool("resume");
  const out = a.str("out", DEFAULTS.out)!;
  // A resumed run takes its model from the checkpoint; if the run died before writing one, it restarts.
  const hasCkpt = await Deno.stat(`${out}/ckpt.safetensors`).then(() => true, () => false);
  const named = a.str("model");
  const D = named === undefined && !(resume && hasCkpt) ? { ...DEFAULTS, ...DEFAULT_RUN } : DEFAULTS;
  const model = named ?? (resume && hasCkpt ? undefined : DEFAULT_RUN.model);
  if (model !== undefined) {
    try {
      findModel(model);
    } catch (e) {
      a.fail((e as Error).message);
    }
  }
  // A resumed run without --steps continues to the total its checkpoint was started with.
  const steps = resume && hasCkpt && a.str("steps") === undefined ? undefined : a.int("steps", D.steps, 1);
  const opts = {
    model,
    steps,
    batch: a.int("batch", D.batch, 1),
    lr: a.num("lr", D.lr, 0),
    // A run shorter than the warm-up would never reach its peak LR: warm up for at most a tenth of it.
    warmup: a.int("warmup", Math.min(D.warmup, Math.ceil((steps ?? D.steps) / 10)), 0),
    lrDecay: a.choice("lr-decay", ["none", "cosine"] as const, D.lrDecay),
    weightDecay: a.num("weight-decay", 0, 0),
    emaDecay: a.num("ema", 0.999, 0),
    clip: a.num("clip", 1, 0),
    objective: a.choice("objective", ["paper", "flow"] as const, D.objective),
    out,
    resume,
    seed: a.int("seed", 0, 0),
    logEvery: a.int("log-every", 10, 1),
    ckptEvery: a.int("ckpt-every", 100, 1),
    sampleEvery: a.int("sample-every", 0, 0),
    quiet: a.bool("quiet"),
    onNotice: (m: string) => console.error(m),
    sample: {
      cfg: a.num("cfg", D.cfg, 0),
      steps: a.str("sample-steps") === undefined ? undefined : a.int("sample-steps", 1, 1),
      perClass: a.int("grid-per-class", 8, 0),
      sampler: a.str("sampler") === undefined
        ? undefined
        : a.choice("sampler", ["ddpm", "ddim", "dpm-solver", "euler", "heun"] as const, "ddim"),
    },
    writeGrid,
  };
  const backendFlag = a.str("backend");
  if (backendFlag !== undefined && !["webgpu", "wasm", "cpu"].includes(backendFlag)) {
    a.fail(`--backend must be one of webgpu|wasm|cpu, got '${backendFlag}'`);
  }
  await checkWritable(opts.out);
  const backend = await chooseBackend(backendFlag);
  const data = await openDataset(a.str("dataset", D.dataset)!);
  if (!opts.quiet) {
    console.error(
      model === undefined
        ? `resuming ${opts.out}/ckpt.safetensors on ${data.name} with backend ${backend} to step ${
          opts.steps ?? "(the checkpoint's total)"
        }`
        : `training ${model} on ${data.name} (${data.n} images) with backend ${backend}: ${opts.steps} steps, batch ${opts.batch} -> ${opts.out}`,
    );
  }
  const t0 = performance.now();
  const { losses, state } = await train(data, opts);
  const first = losses.slice(0, 10), last = losses.slice(-10);
  const avg = (v: number[]) => (v.length ? v.reduce((s, x) => s + x, 0) / v.length : null);
  console.log(
    JSON.stringify({
      model: state.info.model,
      steps: state.info.totalSteps,
      seconds: Math.round((performance.now() - t0) / 100) / 10,
      loss_first: avg(first),
      loss_last: avg(last),
      checkpoint: `${opts.out}/ckpt.safetensors`,
    }),
  );
});

/** Fails early, with one line, when the output directory cannot be written. */
async function checkWritable(dir: string) {
  await Deno.mkdir(dir, { recursive: true });
  const probe = `${dir}/.write-test-${crypto.randomUUID()}`;
  await Deno.writeTextFile(probe, "");
  await Deno.remove(probe);
}
