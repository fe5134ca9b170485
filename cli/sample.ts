/**
 * @file `deno task sample --ckpt FILE --out FILE.png`: generates images from
 * a training checkpoint's EMA weights with the chosen sampler and guidance
 * scale, one row per class (or `--n` images of one `--class`).
 */
import { loadCheckpoint } from "../train/checkpoint.ts";
import { classCount, objectiveFor, type SamplerName } from "../train/objectives.ts";
import { findModel } from "../models/registry.ts";
import * as random from "../tensor/random.ts";
import { DifflabError } from "../tensor/errors.ts";
import { fromHost } from "../tensor/tensor.ts";
import { parseCli } from "./args.ts";
import { chooseBackend, runMain, writeGrid } from "./common.ts";
import { createProgress } from "../train/progress.ts";

const USAGE = `Usage: deno task sample --ckpt FILE --out FILE.png [options]

Samples from a checkpoint written by \`deno task train\` (EMA weights), as a PNG grid.

Options:
  --ckpt FILE     checkpoint (DIR/ckpt.safetensors of a training run) (required)
  --out FILE      output PNG (required)
  --class K       only class K (default: every class, one row each)
  --n N           images per class (default 8)
  --steps S       sampler steps (default: 50 for ddim/ddpm respacing, 25 dpm-solver, 20 euler/heun)
  --cfg W         classifier-free guidance scale (1 = off; default 2)
  --sampler S     ddpm, ddim, dpm-solver, euler or heun (default: the model's own)
  --seed S        PRNG seed (default 0)
  --backend B     webgpu, wasm or cpu (default: automatic)
  --quiet         no progress output
  --debug         print stack traces on errors
  -h, --help      show this help`;

await runMain(async () => {
  const a = parseCli(USAGE, {
    ckpt: { type: "string" },
    out: { type: "string" },
    class: { type: "string" },
    n: { type: "string" },
    steps: { type: "string" },
    cfg: { type: "string" },
    sampler: { type: "string" },
    seed: { type: "string" },
    backend: { type: "string" },
    quiet: { type: "boolean" },
    debug: { type: "boolean" },
  });
  const ckpt = a.str("ckpt") ?? a.fail("--ckpt FILE is required");
  const out = a.str("out") ?? a.fail("--out FILE.png is required");
  const n = a.int("n", 8, 1);
  const cls = a.str("class") === undefined ? undefined : a.int("class", 0, 0);
  const sampler = a.str("sampler") === undefined
    ? undefined
    : a.choice("sampler", ["ddpm", "ddim", "dpm-solver", "euler", "heun"] as const, "ddim") as SamplerName;
  const steps = a.str("steps") === undefined ? undefined : a.int("steps", 50, 1);
  const cfg = a.num("cfg", 2, 0);
  const backendFlag = a.str("backend");
  if (backendFlag !== undefined && !["webgpu", "wasm", "cpu"].includes(backendFlag)) {
    a.fail(`--backend must be one of webgpu|wasm|cpu, got '${backendFlag}'`);
  }
  await chooseBackend(backendFlag);
  const state = await loadCheckpoint(ckpt);
  const { def } = findModel(state.info.model);
  const K = classCount(def, state.info.config);
  if (cls !== undefined && cls >= K) {
    throw new DifflabError(`sample: --class ${cls} is out of range: the model has ${K} classes`);
  }
  const classes = cls === undefined ? [...Array(K).keys()] : [cls];
  const labels = Int32Array.from({ length: classes.length * n }, (_, i) => classes[Math.floor(i / n)]);
  const obj = objectiveFor(def, state.info.config, { objective: state.info.objective });
  const progress = createProgress({ quiet: a.bool("quiet"), label: "sample", every: 5 });
  const t0 = performance.now();
  const images = await obj.sample(
    state.ema,
    fromHost(labels, [labels.length], "i32"),
    random.randomKey(a.int("seed", 0, 0)),
    {
      sampler,
      steps,
      cfg,
      onStep: (s, total) =>
        progress.update({ step: s + 1, total, imagesPerSec: labels.length / ((performance.now() - t0) / 1000) }),
    },
  );
  progress.done();
  await writeGrid(out, images, classes.length);
  console.log(
    JSON.stringify({
      ckpt,
      out,
      model: state.info.model,
      step: state.info.step,
      images: labels.length,
      sampler: sampler ?? obj.defaultSampler,
      cfg,
    }),
  );
});
