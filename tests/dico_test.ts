/**
 * @file DiCo against the official PyTorch golden (forward and every
 * gradient), exact parameter counts of every named config, GFLOPs against
 * the README, the official init (zero output), label dropout, the CCA
 * switch, and the channel-activation analysis helper.
 */
import assert from "node:assert/strict";
import * as d from "../mod.ts";
import { forwardWithCfg } from "../diffusion/cfg.ts";
import { readSafetensors } from "../nn/io.ts";
import { fromStateDict, paramCount } from "../models/common.ts";
import * as dico from "../models/dico.ts";
import { channelStats, compareCca, dicoChannelStats, summarizeChannels } from "../models/analysis.ts";
import { checkModelGolden, relErr } from "../models/golden.ts";

await d.setBackend("cpu");
const fixture = (name: string) => new URL(`./fixtures/${name}`, import.meta.url).pathname;
const i32 = (v: number[]) => d.tensor(v, { dtype: "i32" });

/** A tiny config for the fast checks below. */
const tiny: dico.DiCoConfig = { ...dico.configs["DiCo-T"], hiddenSize: 8, depth: [1, 1, 1, 1, 1], inputSize: 8 };

/** Random parameters (N(0, 0.1²)), so no zero-initialised layer hides anything. */
function randomParams(c: dico.DiCoConfig, seed: number, dtype: "f32" | "f64" = "f32"): dico.DiCoParams {
  const shapes = dico.paramShapes(c);
  const keys = d.random.split(d.randomKey(seed), Object.keys(shapes).length);
  const sd = Object.fromEntries(
    Object.entries(shapes).map(([k, s], i) => [k, d.mul(d.random.normal(keys[i], s, { dtype }), 0.1)]),
  );
  return fromStateDict(dico.def, sd, c);
}

Deno.test("DiCo golden (official code): forward and every gradient within 1e-4 on cpu, f32 and f64", async () => {
  const { tensors, metadata } = await readSafetensors(fixture("dico_a.safetensors"));
  const nGrads = Object.keys(tensors).filter((k) => k.startsWith("grad.")).length;
  for (const dtype of ["f32", "f64"] as const) {
    const r = await checkModelGolden(dico.def, tensors, metadata, { dtype });
    // out + every grad.<param> + grad.x
    assert.equal(r.entries.length, 1 + nGrads, `compared ${r.entries.length} quantities`);
    assert.ok(r.entries.some((e) => e.key === "grad.reduce_chan_level1.weight"));
    assert.ok(r.maxRelErr <= 1e-4, `${dtype}: worst ${r.worst} ${r.maxRelErr}`);
  }
});

Deno.test("DiCo parameter counts equal the official classes exactly; init allocates exactly paramShapes", () => {
  const want: Record<string, number> = {
    "DiCo-S": 33_137_672,
    "DiCo-B": 129_992_712,
    "DiCo-L": 463_897_992,
    "DiCo-XL": 701_151_368,
    "DiCo-H": 1_037_408_328,
  };
  for (const [name, n] of Object.entries(want)) assert.equal(paramCount(dico.def, dico.configs[name]), n, name);
  const c = dico.configs["DiCo-T"];
  const p = dico.init(d.randomKey(0), c);
  const flat = Object.fromEntries(Object.entries(d.nn.flattenTree(p)).map(([k, v]) => [k, v.shape.slice()]));
  assert.deepEqual(flat, dico.paramShapes(c));
  // The decoder's last level is 2C wide, with a 2C->2C skip reduction.
  assert.deepEqual(flat["reduce_chan_level1.weight"], [64, 64, 1, 1]);
  assert.deepEqual(flat["decoder_level_1.0.conv1.weight"], [64, 64, 1, 1]);
  assert.deepEqual(flat["final_layer.out_proj.weight"], [2, 64, 3, 3]);
  d.dispose(p);
});

Deno.test("DiCo GFLOPs (MACs) within 2% of the README and within 0.2% of the hook-measured counts", () => {
  const readme: Record<string, number> = { "DiCo-S": 4.25, "DiCo-B": 16.88, "DiCo-L": 60.24, "DiCo-XL": 87.30 };
  const measured: Record<string, number> = {
    "DiCo-S": 4.24,
    "DiCo-B": 16.86,
    "DiCo-L": 60.17,
    "DiCo-XL": 87.22,
    "DiCo-H": 194.0,
  };
  for (const [name, g] of Object.entries(readme)) {
    const ours = dico.flops(dico.configs[name]) / 1e9;
    assert.ok(Math.abs(ours - g) / g <= 0.02, `${name}: ${ours} vs README ${g}`);
  }
  for (const [name, g] of Object.entries(measured)) {
    const ours = dico.flops(dico.configs[name]) / 1e9;
    assert.ok(Math.abs(ours - g) / g <= 0.002, `${name}: ${ours} vs measured ${g}`);
  }
});

Deno.test("DiCo official init: adaLN and output zero-initialised, so a fresh model outputs exactly 0", async () => {
  const c = dico.configs["DiCo-T"];
  const p = dico.init(d.randomKey(7), c);
  const sd = d.nn.flattenTree(p);
  const stats = async (k: string) => {
    const v = Array.from(await sd[k].data());
    return { max: Math.max(...v.map(Math.abs)), std: Math.sqrt(v.reduce((a, b) => a + b * b, 0) / v.length) };
  };
  for (const k of ["latent.1.adaLN_modulation.1.weight", "final_layer.out_proj.weight", "final_layer.out_proj.bias"]) {
    assert.equal((await stats(k)).max, 0, k);
  }
  // Stem xavier on its [out, in·9] view: bound √(6 / (9 + 32)).
  const stem = await stats("x_embedder.proj.weight");
  assert.ok(stem.max <= Math.sqrt(6 / 41) && stem.max > 0.8 * Math.sqrt(6 / 41), `stem ${stem.max}`);
  // Depthwise conv xavier on [D, 1, 3, 3]: fans 9 and 9·D.
  const dw = await stats("encoder_level_1.0.conv2.weight");
  assert.ok(dw.max <= Math.sqrt(6 / (9 + 9 * 32)) && dw.max > 0.8 * Math.sqrt(6 / (9 + 9 * 32)));
  assert.ok(Math.abs((await stats("y_embedder.embedding_table_2.weight")).std - 0.02) < 0.002);
  assert.equal((await stats("t_embedder_3.mlp.2.bias")).max, 0);
  const x = d.random.normal(d.randomKey(1), [2, 1, 32, 32]);
  const out = dico.apply(p, x, i32([3, 999]), i32([1, 10]), c);
  assert.deepEqual(out.shape, [2, 2, 32, 32]);
  assert.ok(Array.from(await out.data()).every((v) => v === 0));
  d.dispose(p);
});

Deno.test("DiCo labels: forceDrop uses the shared null row; train mode drops with a key and needs one", async () => {
  const p = randomParams(tiny, 3);
  const x = d.random.normal(d.randomKey(2), [2, 1, 8, 8]);
  const t = i32([10, 500]);
  const dropped = dico.apply(p, x, t, i32([3, 4]), tiny, { forceDrop: d.tensor([true, false]) });
  const ref = dico.apply(p, x, t, i32([10, 4]), tiny);
  assert.ok((await relErr(dropped, ref)) === 0);
  assert.throws(() => dico.apply(p, x, t, i32([3, 4]), tiny, { train: true }), /needs opts\.key/);
  const a = dico.apply(p, x, t, i32([3, 4]), tiny, { train: true, key: d.randomKey(5) });
  const b = dico.apply(p, x, t, i32([3, 4]), tiny, { train: true, key: d.randomKey(5) });
  assert.equal(await relErr(a, b), 0);
  // With p = 1 every label is the null label.
  const all = dico.apply(p, x, t, i32([3, 4]), { ...tiny, classDropoutProb: 1 }, { train: true, key: d.randomKey(5) });
  assert.equal(await relErr(all, dico.apply(p, x, t, i32([10, 10]), tiny)), 0);
});

Deno.test("DiCo CCA switch equals a gate forced to exactly 1, and changes the output otherwise", async () => {
  const c = tiny;
  const p = randomParams(c, 4, "f64");
  const x = d.random.normal(d.randomKey(2), [2, 1, 8, 8], { dtype: "f64" });
  const t = i32([10, 500]), y = i32([1, 2]);
  const off = dico.apply(p, x, t, y, c, { disableCca: true });
  // Zero weight and a +100 bias make sigmoid exactly 1 in f64.
  const sd = d.nn.flattenTree(p);
  for (const k of Object.keys(sd)) {
    if (k.endsWith("ca.1.weight")) sd[k] = d.zerosLike(sd[k]);
    if (k.endsWith("ca.1.bias")) sd[k] = d.add(d.zerosLike(sd[k]), 100);
  }
  const forced = dico.apply(fromStateDict(dico.def, sd, c), x, t, y, c);
  assert.equal(await relErr(off, forced), 0);
  const on = dico.apply(p, x, t, y, c);
  assert.ok((await relErr(on, off)) > 1e-3);
  // Disabling a single named block only changes that block.
  const one = dico.apply(p, x, t, y, c, { disableCca: ["latent.0"] });
  assert.ok((await relErr(one, on)) > 0 && (await relErr(one, off)) > 0);
  const seen: string[] = [];
  dico.apply(p, x, t, y, c, { disableCca: ["latent.0"], tap: (b, pt) => seen.push(`${b}:${pt}`) });
  assert.ok(
    seen.includes("latent.0:conv") && !seen.includes("latent.0:gate") && seen.includes("encoder_level_1.0:gate"),
  );
  assert.equal(seen.length, 5 * 3 - 1);
});

Deno.test("DiCo with DiT-style CFG (library function): leading channels guided, the rest from each half", async () => {
  const p = randomParams(tiny, 5);
  const x = d.random.normal(d.randomKey(2), [4, 1, 8, 8]);
  const t = i32([10, 500, 10, 500]), y = i32([1, 2, 10, 10]);
  const model = (xx: d.Tensor, tt: d.Tensor, yy?: d.Tensor) => dico.apply(p, xx, tt, yy!, tiny);
  const out = forwardWithCfg(model, x, t, y, { scale: 3, channels: 1 });
  const half = d.slice(x, [0], [2]);
  const full = dico.apply(p, d.concat([half, half], 0), t, y, tiny);
  const cond = d.slice(full, [0, 0], [2, 1]), unc = d.slice(full, [2, 0], [4, 1]);
  const g = d.add(unc, d.mul(d.sub(cond, unc), 3));
  assert.ok((await relErr(d.slice(out, [0, 0], [2, 1]), g)) < 1e-6);
  assert.ok((await relErr(d.slice(out, [2, 1]), d.slice(full, [2, 1]))) === 0);
});

Deno.test("configFromOfficial reads the constructor kwargs (and defaults); bad input is rejected clearly", () => {
  const c = dico.configFromOfficial({
    in_channels: 4,
    hidden_size: 8,
    depth: [1, 2, 3, 2, 1],
    mlp_ratio: 2,
    class_dropout_prob: 0,
    num_classes: 7,
    learn_sigma: false,
  });
  assert.deepEqual(c.depth, [1, 2, 3, 2, 1]);
  assert.equal(c.learnSigma, false);
  const shapes = dico.paramShapes(c);
  // No null row without label dropout; out_channels = in_channels without learn_sigma.
  assert.deepEqual(shapes["y_embedder.embedding_table_1.weight"], [7, 16]);
  assert.deepEqual(shapes["final_layer.out_proj.weight"], [4, 16, 3, 3]);
  assert.equal(shapes["latent.2.conv1.weight"][0], 32);
  // Depth-0 stages and no learn_sigma run (the empty ModuleList has no state_dict entries).
  const c0 = { ...c, hiddenSize: 4, depth: [0, 1, 0, 2, 0] as const };
  const p0 = randomParams(c0, 2);
  assert.ok(!("encoder_level_1" in p0));
  const o0 = dico.apply(p0, d.random.normal(d.randomKey(1), [1, 4, 8, 8]), i32([4]), i32([6]), c0);
  assert.deepEqual(o0.shape, [1, 4, 8, 8]);
  const dflt = dico.configFromOfficial({});
  assert.equal(dflt.hiddenSize, 1152);
  assert.deepEqual(dflt.depth, [2, 5, 8, 5, 2]);
  assert.throws(() => dico.configFromOfficial({ depth: [1, 2] }), /depth/);
  assert.throws(() => dico.paramShapes({ ...tiny, hiddenSize: 7 }), /hiddenSize/);
  const p = randomParams(tiny, 1);
  assert.throws(() => dico.apply(p, d.zeros([1, 1, 6, 6]), i32([1]), i32([1]), tiny), /divisible by 4.*\[1,1,6,6\]/);
  assert.throws(() => dico.apply(p, d.zeros([2, 1, 8, 8]), i32([1]), i32([1, 2]), tiny), /t must be \[2\]/);
});

Deno.test("DiCo at the official init: only the output conv receives gradient (adaLN-Zero), in training mode", async () => {
  const c = tiny;
  const p = dico.init(d.randomKey(11), c);
  const x = d.random.normal(d.randomKey(2), [2, 1, 8, 8]);
  const target = d.random.normal(d.randomKey(3), [2, 2, 8, 8]);
  const loss = (pp: dico.DiCoParams) =>
    d.mean(
      d.square(d.sub(dico.apply(pp, x, i32([5, 700]), i32([1, 2]), c, { train: true, key: d.randomKey(1) }), target)),
    );
  const g = d.nn.flattenTree(d.grad(loss)(p));
  assert.deepEqual(Object.keys(g).sort(), Object.keys(dico.paramShapes(c)).sort());
  for (const [k, v] of Object.entries(g)) {
    const a = Array.from(await v.data());
    assert.ok(a.every(Number.isFinite), k);
    const nonzero = a.some((e) => e !== 0);
    assert.equal(nonzero, k.startsWith("final_layer.out_proj."), `${k} nonzero=${nonzero}`);
  }
});

Deno.test("channel statistics: summaries, per-block taps, and the with/without CCA comparison", async () => {
  const s = summarizeChannels([4, 2, 0.1, 0], { threshold: 0.1, bins: 4 });
  assert.deepEqual(s.relative, [1, 0.5, 0.025, 0]);
  assert.equal(s.inactive, 2);
  assert.equal(s.inactiveFraction, 0.5);
  assert.deepEqual(s.histogram.counts, [2, 0, 1, 1]);
  assert.deepEqual(s.histogram.edges, [0, 0.25, 0.5, 0.75, 1]);
  const h = d.tensor([[[[1, -1]], [[0, 0]], [[2, 4]]]]); // [1, 3, 1, 2]
  assert.deepEqual((await channelStats(h)).meanAbs, [1, 0, 3]);
  assert.throws(() => summarizeChannels([1], { threshold: 2 }), /threshold/);

  const c = tiny;
  const p = randomParams(c, 8);
  const x = d.random.normal(d.randomKey(2), [2, 1, 8, 8]);
  const t = i32([10, 500]), y = i32([1, 2]);
  const before = d.liveBuffers();
  const st = await dicoChannelStats(p, x, t, y, c, { threshold: 0.2 });
  assert.equal(d.liveBuffers(), before, "no leaked buffers");
  assert.deepEqual(st.map((b) => b.block), dico.STAGES.map((s) => `${s}.0`));
  assert.deepEqual(st.map((b) => b.conv.channels), [8, 16, 32, 16, 16]);
  for (const b of st) {
    assert.equal(b.gate!.length, b.conv.channels);
    assert.ok(b.gate!.every((g) => g > 0 && g < 1));
    assert.ok(Math.max(...b.cca.relative) === 1 && b.cca.threshold === 0.2);
    // CCA output = conv output × gate per channel (the gate is per sample, so compare with a tolerance).
    for (let i = 0; i < b.conv.channels; i++) {
      const direct = b.conv.meanAbs[i] * b.gate![i];
      assert.ok(Math.abs(direct - b.cca.meanAbs[i]) <= 0.5 * Math.max(direct, b.cca.meanAbs[i]) + 1e-7);
    }
  }
  const cmp = await compareCca(p, x, t, y, c, { threshold: 0.2 });
  assert.equal(cmp.summary.length, 5);
  assert.equal(cmp.withoutCca[0].gate, undefined);
  // The first block sees the same input either way, so its pre-gate statistics agree.
  assert.deepEqual(cmp.withoutCca[0].conv.meanAbs, cmp.withCca[0].conv.meanAbs);
  assert.deepEqual(cmp.withoutCca[0].cca.meanAbs, cmp.withoutCca[0].conv.meanAbs);
  for (const r of cmp.summary) {
    for (const v of [r.inactiveBeforeGate, r.inactiveAfterGate, r.inactiveWithoutCca]) assert.ok(v >= 0 && v <= 1);
  }
});
