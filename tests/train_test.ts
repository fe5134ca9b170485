/**
 * @file The training loop end to end on tiny configs (cpu backend): loss
 * falls, checkpoint + log + PNG grid are written, a resumed run equals an
 * uninterrupted one bit for bit, divergence stops the run naming the step
 * and keeps the last good checkpoint, every family trains through the same
 * function, and the CLIs fail with one clear line on bad input.
 */
import assert from "node:assert/strict";
import * as d from "../mod.ts";
import { makeDataset } from "../data/dataset.ts";
import { decodePng } from "../data/png.ts";
import { loadCheckpoint } from "../train/checkpoint.ts";
import { lrAt, train, type TrainOptions } from "../train/loop.ts";
import { writeGrid } from "../cli/common.ts";
import { currentBackend } from "../tensor/tensor.ts";
import type { WebGPUBackend } from "../tensor/webgpu/backend.ts";

const adapter = await navigator.gpu?.requestAdapter().catch(() => null);

await d.setBackend("cpu");

/** 8x8 "digits": class k is a bright bar at row k (mod 8) on a dark background, plus noise. */
function toyData(n = 40, classes = 4, size = 8) {
  const rng = d.random.uniform(d.randomKey(5), [n * size * size]).dataSync() as Float32Array;
  const images = new Float32Array(n * size * size);
  const labels = Int32Array.from({ length: n }, (_, i) => i % classes);
  for (let i = 0; i < n; i++) {
    for (let p = 0; p < size * size; p++) {
      const row = Math.floor(p / size);
      images[i * size * size + p] = (row === (labels[i] * 2) % size ? 0.9 : -0.9) +
        0.1 * (rng[i * size * size + p] - 0.5);
    }
  }
  return makeDataset({
    name: "toy",
    images,
    labels,
    channels: 1,
    size,
    numClasses: classes,
    classNames: [...Array(classes).keys()].map(String),
    origin: "derived",
  });
}

const tiny: Record<string, Record<string, unknown>> = {
  "DiT-T/2": { inputSize: 8, depth: 1, hiddenSize: 16, numHeads: 2, numClasses: 4, patchSize: 2 },
  "DyDiT-T/2": { inputSize: 8, depth: 1, hiddenSize: 32, numHeads: 2, numClasses: 4, patchSize: 2 },
  "U-DiT-T": { inputSize: 8, hiddenSize: 8, depth: [1, 1, 1, 1, 1], numHeads: 2, numClasses: 4 },
  "DiCo-T": { inputSize: 8, hiddenSize: 8, depth: [1, 1, 1, 1, 1], numClasses: 4 },
};

const base = (model: string, out?: string): TrainOptions => ({
  model,
  configOverrides: tiny[model],
  steps: 6,
  batch: 8,
  lr: 3e-3,
  warmup: 0,
  quiet: true,
  out,
  logEvery: 1,
  ckptEvery: 3,
  sample: { perClass: 1, steps: 2, cfg: 2 },
  writeGrid,
});

/** Named values of a tree, sorted by official name (a loaded tree may nest keys in another order). */
async function leaves(tree: unknown): Promise<[string, number[]][]> {
  const flat = Object.entries(d.nn.flattenTree(tree)).sort(([a], [b]) => (a < b ? -1 : 1));
  return await Promise.all(flat.map(async ([k, t]) => [k, Array.from(await t.data(), Number)] as [string, number[]]));
}

Deno.test("a short run lowers the loss and writes checkpoint, log and a valid PNG grid", async () => {
  const out = await Deno.makeTempDir();
  const data = toyData();
  const { losses } = await train(data, { ...base("DiT-T/2", out), steps: 25 });
  const avg = (v: number[]) => v.reduce((a, b) => a + b, 0) / v.length;
  assert.ok(avg(losses.slice(-5)) < avg(losses.slice(0, 5)), `loss did not fall: ${losses.map((l) => l.toFixed(3))}`);
  const log = (await Deno.readTextFile(`${out}/log.jsonl`)).trim().split("\n").map((l) => JSON.parse(l));
  assert.equal(log.length, 25);
  assert.deepEqual(Object.keys(log[0]).sort(), ["elapsed_s", "grad_norm", "images_per_s", "loss", "lr", "step"]);
  const ck = await loadCheckpoint(`${out}/ckpt.safetensors`);
  assert.equal(ck.info.step, 25);
  assert.equal(ck.opt.step, 25);
  const png = decodePng(await Deno.readFile(`${out}/samples-25.png`));
  assert.ok(png.width > 8 && png.height > 8 * 4, `grid ${png.width}x${png.height}`);
  // No temp files left behind by the atomic writes.
  for await (const e of Deno.readDir(out)) assert.ok(!e.name.includes(".tmp"), e.name);
});

Deno.test("resume reproduces the uninterrupted run exactly (losses, parameters, EMA, optimiser state)", async () => {
  const data = toyData();
  const a = await Deno.makeTempDir(), b = await Deno.makeTempDir();
  const full = await train(data, base("DiT-T/2", a));
  await train(data, { ...base("DiT-T/2", b), steps: 3 });
  const resumed = await train(data, { steps: 6, resume: true, out: b, quiet: true, logEvery: 1, ckptEvery: 3 });
  assert.deepEqual(resumed.losses, full.losses.slice(3));
  assert.deepEqual(await leaves(resumed.state.params), await leaves(full.state.params));
  assert.deepEqual(await leaves(resumed.state.ema), await leaves(full.state.ema));
  assert.deepEqual(
    await leaves({ m: resumed.state.opt.m, v: resumed.state.opt.v }),
    await leaves({ m: full.state.opt.m, v: full.state.opt.v }),
  );
  const la = (await Deno.readTextFile(`${a}/log.jsonl`)).trim().split("\n").map((l) => JSON.parse(l).loss);
  const lb = (await Deno.readTextFile(`${b}/log.jsonl`)).trim().split("\n").map((l) => JSON.parse(l).loss);
  assert.deepEqual(lb, la);
});

Deno.test("a run interrupted mid-way resumes without restating its steps, cosine LR decay included, exactly", async () => {
  const data = toyData();
  const a = await Deno.makeTempDir(), b = await Deno.makeTempDir();
  const opts = { ...base("DiT-T/2"), lrDecay: "cosine" as const, warmup: 2, ckptEvery: 1 };
  const full = await train(data, { ...opts, out: a });
  await assert.rejects(
    () =>
      train(data, {
        ...opts,
        out: b,
        onLog: (r) => {
          if (r.step === 4) throw new Error("interrupted");
        },
      }),
    /interrupted/,
  );
  const resumed = await train(data, { resume: true, out: b, quiet: true, logEvery: 1 });
  assert.equal(resumed.state.info.step, 6);
  assert.deepEqual(resumed.losses, full.losses.slice(3));
  assert.deepEqual(await leaves(resumed.state.params), await leaves(full.state.params));
  const lr = async (dir: string) =>
    (await Deno.readTextFile(`${dir}/log.jsonl`)).trim().split("\n").map((l) => JSON.parse(l).lr);
  assert.deepEqual(await lr(b), await lr(a));
});

Deno.test("divergence stops naming the step and keeps the last good checkpoint", async () => {
  const out = await Deno.makeTempDir();
  const data = toyData();
  await train(data, { ...base("DiT-T/2", out), steps: 3 });
  const before = await Deno.readFile(`${out}/ckpt.safetensors`);
  // A poisoned image makes the loss NaN at the first step that sees it.
  const bad = toyData();
  bad.images.fill(NaN);
  await assert.rejects(
    () => train(bad, { steps: 6, resume: true, out, quiet: true, ckptEvery: 1 }),
    (e: Error) => e instanceof d.DifflabError && /step 4/.test(e.message) && /last good checkpoint/.test(e.message),
  );
  assert.deepEqual(await Deno.readFile(`${out}/ckpt.safetensors`), before);
});

Deno.test("every family trains through the same loop with its own objective", async () => {
  const data = toyData();
  for (const model of Object.keys(tiny)) {
    const { losses, state } = await train(data, { ...base(model), steps: 2 });
    assert.equal(losses.length, 2, model);
    assert.ok(losses.every(Number.isFinite), `${model}: ${losses}`);
    assert.equal(state.info.step, 2);
  }
  // DiMR-T: 2 resolutions at 32x32, its multi-scale loss, 10 classes plus the null row.
  const dimr = await train(toyData(16, 10, 32), { ...base("DiMR-T"), steps: 2, batch: 4 });
  assert.ok(dimr.losses.every(Number.isFinite), `DiMR: ${dimr.losses}`);
  const obj = d.train.objectiveFor(d.models.findModel("DiMR-T").def, dimr.state.info.config);
  const img = await obj.sample(dimr.state.ema, d.tensor([3, 10 - 1], { dtype: "i32" }), d.randomKey(2), {
    steps: 3,
    cfg: 1.4,
  });
  assert.deepEqual(img.shape, [2, 1, 32, 32]);
  assert.ok(Array.from(await img.data()).every(Number.isFinite));
});

Deno.test("flow-matching objective trains and samples with euler and heun", async () => {
  const data = toyData();
  const { state, losses } = await train(data, { ...base("DiT-T/2"), objective: "flow", steps: 3 });
  assert.ok(losses.every(Number.isFinite));
  const obj = d.train.objectiveFor(d.models.findModel("DiT-T/2").def, state.info.config, { objective: "flow" });
  const y = d.tensor([0, 1], { dtype: "i32" });
  for (const sampler of ["euler", "heun"] as const) {
    const img = await obj.sample(state.ema, y, d.randomKey(1), { sampler, steps: 2, cfg: 1.5 });
    assert.deepEqual(img.shape, [2, 1, 8, 8]);
  }
  await assert.rejects(() => obj.sample(state.ema, y, d.randomKey(1), { sampler: "ddpm" }), d.DifflabError);
});

async function cli(args: string[]) {
  const p = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", ...args],
    cwd: new URL("..", import.meta.url).pathname,
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  });
  const r = await p.output();
  return { code: r.code, out: new TextDecoder().decode(r.stdout), err: new TextDecoder().decode(r.stderr) };
}

Deno.test("CLI: unknown flag, bad value, unknown model, unwritable dir, missing ckpt give one clear line", async () => {
  const unk = await cli(["cli/train.ts", "--bogus"]);
  assert.equal(unk.code, 2);
  assert.match(unk.err.split("\n")[0], /^error: .*bogus/);
  const bad = await cli(["cli/train.ts", "--steps", "ten"]);
  assert.equal(bad.code, 2);
  assert.match(bad.err.split("\n")[0], /--steps must be an integer/);
  const model = await cli(["cli/train.ts", "--model", "DiT-Q/7"]);
  assert.equal(model.code, 2);
  assert.match(model.err.split("\n")[0], /unknown model "DiT-Q\/7"/);
  const dir = await Deno.makeTempDir();
  await Deno.writeTextFile(`${dir}/file`, "");
  const unwritable = await cli(["cli/train.ts", "--out", `${dir}/file/sub`, "--backend", "cpu"]);
  assert.equal(unwritable.code, 1);
  assert.match(unwritable.err, /^error: /);
  assert.ok(!/\bat .*\.ts:\d+/.test(unwritable.err), `stack trace printed: ${unwritable.err}`);
  const missing = await cli([
    "cli/sample.ts",
    "--ckpt",
    `${dir}/nope.safetensors`,
    "--out",
    `${dir}/x.png`,
    "--backend",
    "cpu",
  ]);
  assert.equal(missing.code, 1);
  assert.match(missing.err.split("\n")[0], /^error: .*nope\.safetensors/);
  const nodir = await cli(["cli/train.ts", "--dataset", `${dir}/no-such-dir`, "--backend", "cpu", "--out", dir]);
  assert.equal(nodir.code, 1);
  assert.match(nodir.err.split("\n")[0], /^error: .*no-such-dir/);
});

Deno.test("a model whose training state exceeds the backend's memory fails up front, naming the limit", async () => {
  await d.setBackend("wasm");
  try {
    const before = d.liveBuffers();
    const data = makeDataset({
      name: "latents",
      images: new Float32Array(2 * 4 * 32 * 32),
      labels: new Int32Array(2),
      channels: 4,
      size: 32,
      numClasses: 1000,
      classNames: [...Array(1000).keys()].map(String),
      origin: "derived",
    });
    await assert.rejects(
      () => train(data, { model: "DiT-XL/2", steps: 1, quiet: true }),
      /DiT-XL\/2 has 675,129,632 parameters.*12\.58 GiB.*the Wasm heap is limited to 4 GiB/,
    );
    assert.equal(d.liveBuffers(), before, "nothing was allocated before the check");
  } finally {
    await d.setBackend("cpu");
  }
});

Deno.test({
  name: "a WebGPU device lost mid-run stops training with a clear error; the run resumes on wasm",
  ignore: !adapter,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const out = await Deno.makeTempDir();
    const data = toyData();
    await d.setBackend("webgpu");
    try {
      await assert.rejects(
        () =>
          train(data, {
            ...base("DiT-T/2", out),
            ckptEvery: 1,
            onLog: (r) => {
              if (r.step === 3) (currentBackend() as WebGPUBackend).engine.device.destroy();
            },
          }),
        /device was lost/,
      );
      // The lost device's tensors are gone; the checkpoint on disk is intact and loads on another backend.
      await d.setBackend("wasm");
      const st = await loadCheckpoint(`${out}/ckpt.safetensors`);
      assert.ok(st.info.step >= 2 && st.info.step <= 3, `last good checkpoint at step ${st.info.step}`);
      d.dispose([st.params, st.ema, st.opt.m, st.opt.v]);
      const res = await train(data, { steps: 6, resume: true, out, quiet: true, ckptEvery: 1, logEvery: 1 });
      assert.equal(res.state.info.step, 6);
      const log = (await Deno.readTextFile(`${out}/log.jsonl`)).trim().split("\n").map((l) => JSON.parse(l).step);
      assert.deepEqual(log.slice(-3), [4, 5, 6]);
      d.dispose([res.state.params, res.state.ema, res.state.opt.m, res.state.opt.v]);
    } finally {
      await d.setBackend("cpu");
    }
  },
});

Deno.test("lrAt: linear warm-up, then constant or cosine decay that ends near 0 at the last step", () => {
  assert.equal(lrAt(1, 4, 0), 0.25);
  assert.equal(lrAt(1, 4, 3), 1);
  assert.equal(lrAt(1, 4, 500), 1);
  const cos = (s: number) => lrAt(2, 10, s, { kind: "cosine", total: 110 });
  assert.equal(cos(4), 1);
  assert.equal(cos(9), 2);
  assert.ok(Math.abs(cos(10) - (1 + Math.cos(Math.PI / 101))) < 1e-12);
  for (let s = 10; s < 110; s++) assert.ok(cos(s) <= cos(s - 1) + 1e-15, `not decreasing at ${s}`);
  assert.ok(cos(109) > 0 && cos(109) < 2 * 1e-3, `last step lr ${cos(109)}`);
  assert.ok(Math.abs(cos(59) - 1) < 0.02, "half way is half the peak");
});
