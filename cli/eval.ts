/**
 * @file `deno task eval --ckpt FILE`: the quality score of a training
 * checkpoint. Generates `--n` samples per class with the EMA weights, has a
 * small classifier (trained once with this library on the checkpoint's
 * dataset, then cached next to the checkpoint) name their class, and prints
 * the conditional accuracy and the Fréchet distance between classifier
 * features of samples and real images, as one JSON object.
 */
import { loadCheckpoint } from "../train/checkpoint.ts";
import { classCount, objectiveFor, type SamplerName } from "../train/objectives.ts";
import { findModel } from "../models/registry.ts";
import * as random from "../tensor/random.ts";
import { DifflabError } from "../tensor/errors.ts";
import { fromHost, liveBuffers } from "../tensor/tensor.ts";
import { conditionalAccuracy, datasetStats, getClassifier, sampleFrechet } from "../eval/mod.ts";
import { parseCli } from "./args.ts";
import { chooseBackend, openDataset, runMain, writeGrid } from "./common.ts";
import { createProgress } from "../train/progress.ts";
import { dirname } from "node:path";

const USAGE = `Usage: deno task eval --ckpt FILE [options]

Scores a checkpoint written by \`deno task train\`: samples N images per class (EMA weights,
classifier-free guidance), classifies them with a small classifier trained on the dataset
(once; cached as classifier-<dataset>.safetensors in the checkpoint's directory), and prints
JSON with the conditional accuracy (per class too) and the Fréchet distance between the
classifier's features of the samples and of real images.

Options:
  --ckpt FILE       checkpoint (DIR/ckpt.safetensors of a training run) (required)
  --n N             samples per class (default 100)
  --steps S         sampler steps (default: the sampler's own, as in deno task sample)
  --cfg W           classifier-free guidance scale (1 = off; default 2)
  --sampler S       ddpm, ddim, dpm-solver, euler or heun (default: the model's own)
  --chunk N         images sampled at once (default 50; lower it to save memory)
  --dataset D       dataset of the classifier (default: the checkpoint's)
  --cache DIR       where the classifier is cached (default: the checkpoint's directory)
  --grid FILE       also write the first 10 samples of every class as a PNG grid
  --seed S          PRNG seed of the samples (default 0)
  --backend B       webgpu, wasm or cpu (default: automatic)
  --quiet           no progress output
  --debug           print stack traces on errors
  -h, --help        show this help`;

await runMain(async () => {
  const a = parseCli(USAGE, {
    ckpt: { type: "string" },
    n: { type: "string" },
    steps: { type: "string" },
    cfg: { type: "string" },
    sampler: { type: "string" },
    chunk: { type: "string" },
    dataset: { type: "string" },
    cache: { type: "string" },
    grid: { type: "string" },
    seed: { type: "string" },
    backend: { type: "string" },
    quiet: { type: "boolean" },
    debug: { type: "boolean" },
  });
  const ckpt = a.str("ckpt") ?? a.fail("--ckpt FILE is required");
  const perClass = a.int("n", 100, 1);
  const chunk = a.int("chunk", 50, 1);
  const sampler = a.str("sampler") === undefined
    ? undefined
    : a.choice("sampler", ["ddpm", "ddim", "dpm-solver", "euler", "heun"] as const, "ddim") as SamplerName;
  const steps = a.str("steps") === undefined ? undefined : a.int("steps", 50, 1);
  const cfg = a.num("cfg", 2, 0);
  const seed = a.int("seed", 0, 0);
  const quiet = a.bool("quiet");
  const backendFlag = a.str("backend");
  if (backendFlag !== undefined && !["webgpu", "wasm", "cpu"].includes(backendFlag)) {
    a.fail(`--backend must be one of webgpu|wasm|cpu, got '${backendFlag}'`);
  }
  const backend = await chooseBackend(backendFlag);
  const state = await loadCheckpoint(ckpt);
  const { def } = findModel(state.info.model);
  const K = classCount(def, state.info.config);
  const data = await openDataset(a.str("dataset") ?? state.info.dataset);
  if (data.numClasses !== K) {
    throw new DifflabError(`eval: the model has ${K} classes but dataset ${data.name} has ${data.numClasses}`);
  }
  const log = (s: string) => quiet || console.error(s);
  const t0 = performance.now();
  const clf = await getClassifier(data, a.str("cache") ?? dirname(ckpt), {
    onTrainStart: () => log(`eval: training the ${data.name} classifier once (cached afterwards)`),
  });
  log(`eval: classifier held-out accuracy ${(clf.meta.accuracy * 100).toFixed(1)}%${clf.cached ? " (cached)" : ""}`);
  const tClassifier = (performance.now() - t0) / 1000;

  // Class-major labels, sampled in chunks so memory stays bounded whatever --n is.
  const total = perClass * K;
  const labels = Int32Array.from({ length: total }, (_, i) => Math.floor(i / perClass));
  const [C, S] = [data.channels, data.size];
  const per = C * S * S;
  const pixels = new Float32Array(total * per);
  const obj = objectiveFor(def, state.info.config, { objective: state.info.objective });
  const progress = createProgress({ quiet, label: "eval sample", every: 1 });
  const t1 = performance.now();
  const keys = random.split(random.randomKey(seed), Math.ceil(total / chunk));
  for (let c = 0, start = 0; start < total; c++, start += chunk) {
    const ys = labels.subarray(start, Math.min(total, start + chunk));
    const y = fromHost(Int32Array.from(ys), [ys.length], "i32");
    const x = await obj.sample(state.ema, y, keys[c], { sampler, steps, cfg });
    y.dispose();
    if (x.shape[1] !== C || x.shape[2] !== S) {
      x.dispose();
      throw new DifflabError(`eval: samples are [${x.shape}] but dataset ${data.name} images are [${C}, ${S}, ${S}]`);
    }
    pixels.set(await x.data() as Float32Array, start * per);
    x.dispose();
    const done = Math.min(total, start + chunk);
    progress.update({ step: done, total, imagesPerSec: done / ((performance.now() - t1) / 1000) });
  }
  progress.done();
  const tSample = (performance.now() - t1) / 1000;
  const acc = await conditionalAccuracy(clf.params, pixels, labels, { size: S });
  const ref = await datasetStats(clf.params, data, Math.min(data.n, 5000));
  const fd = await sampleFrechet(clf.params, pixels, ref, { size: S });
  const gridFile = a.str("grid");
  if (gridFile) {
    const shown = Math.min(10, perClass);
    const grid = new Float32Array(K * shown * per);
    for (let k = 0; k < K; k++) {
      grid.set(pixels.subarray(k * perClass * per, (k * perClass + shown) * per), k * shown * per);
    }
    const g = fromHost(grid, [K * shown, C, S, S], "f32");
    await writeGrid(gridFile, g, K);
    g.dispose();
  }
  console.log(JSON.stringify({
    ckpt,
    model: state.info.model,
    step: state.info.step,
    dataset: data.name,
    backend,
    samples: total,
    sampler: sampler ?? obj.defaultSampler,
    steps: steps ?? null,
    cfg,
    conditional_accuracy: round(acc.accuracy),
    per_class_accuracy: acc.perClass.map(round),
    frechet_distance: round(fd),
    classifier_accuracy: round(clf.meta.accuracy),
    classifier_cached: clf.cached,
    seconds: { classifier: round(tClassifier, 1), sampling: round(tSample, 1) },
    live_buffers: liveBuffers(),
  }));
});

function round(x: number, digits = 4): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}
