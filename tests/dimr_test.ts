/**
 * @file DiMR against the official PyTorch golden (both resolutions' outputs
 * and every gradient), exact parameter counts of the released configs,
 * GFLOPs against the README, the block-count rule, the channel-last pixel
 * shuffle order, TD-RMSNorm's eps placement, TDP interpolation, the default
 * init, a three-resolution model, and the low-res gradient switch.
 */
import assert from "node:assert/strict";
import * as d from "../mod.ts";
import { readSafetensors } from "../nn/io.ts";
import { fromStateDict, paramCount } from "../models/common.ts";
import * as dimr from "../models/dimr.ts";
import { avgPool2d } from "../nn/conv.ts";
import { checkModelGolden, relErr } from "../models/golden.ts";

await d.setBackend("cpu");
const fixture = (name: string) => new URL(`./fixtures/${name}`, import.meta.url).pathname;
const i32 = (v: number[]) => d.tensor(v, { dtype: "i32" });

/** Random parameters: N(0, 0.1²), or 1 + N(0, 0.1²) for TDP bases that default to ones (like the golden). */
function randomParams(c: dimr.DiMRConfig, seed: number, dtype: "f32" | "f64" = "f32"): dimr.DiMRParams {
  const shapes = dimr.paramShapes(c);
  const keys = d.random.split(d.randomKey(seed), Object.keys(shapes).length);
  const sd = Object.fromEntries(
    Object.entries(shapes).map(([k, s], i) => {
      const z = d.mul(d.random.normal(keys[i], s, { dtype }), 0.1);
      return [k, /(scale|\d\.weight)\.param[01]$/.test(k) ? d.add(z, 1) : z];
    }),
  );
  return fromStateDict(dimr.def, sd, c);
}

/** A three-resolution model: Transformer at 1/4 (area-downsampled input), ConvNeXt at 1/2 and 1/1. */
const threeR: dimr.DiMRConfig = {
  channels: 2,
  numClasses: 5,
  blockGradToLowres: false,
  normType: "TDRMSN",
  stages: [
    {
      blockType: "TransformerBlock",
      dim: 8,
      hiddenDim: 16,
      numHeads: 2,
      numBlocks: 1,
      maxHeight: 2,
      maxWidth: 2,
      imageInputRatio: 2,
      inputFeatureRatio: 2,
      finalKernelSize: 3,
      dropoutProb: 0,
    },
    {
      blockType: "ConvNeXtBlock",
      dim: 6,
      hiddenDim: 12,
      kernelSize: 3,
      numBlocks: 2,
      maxHeight: 4,
      maxWidth: 4,
      imageInputRatio: 1,
      inputFeatureRatio: 2,
      finalKernelSize: 3,
      dropoutProb: 0,
    },
    {
      blockType: "ConvNeXtBlock",
      dim: 4,
      hiddenDim: 8,
      kernelSize: 5,
      numBlocks: 1,
      maxHeight: 8,
      maxWidth: 8,
      imageInputRatio: 1,
      inputFeatureRatio: 1,
      finalKernelSize: 1,
      dropoutProb: 0,
    },
  ],
};

Deno.test("DiMR golden (official code): both outputs and every gradient within 1e-4 on cpu, f32 and f64", async () => {
  const { tensors, metadata } = await readSafetensors(fixture("dimr_a.safetensors"));
  const nGrads = Object.keys(tensors).filter((k) => k.startsWith("grad.")).length;
  for (const dtype of ["f32", "f64"] as const) {
    const r = await checkModelGolden(dimr.def, tensors, metadata, { dtype });
    assert.equal(r.entries.length, 2 + nGrads, `compared ${r.entries.length} quantities`);
    for (const k of ["out.0", "out.1", "grad.stages.1.upsample.1.kernel.weight", "grad.stages.0.class_embeds.weight"]) {
      assert.ok(r.entries.some((e) => e.key === k), `missing ${k}`);
    }
    assert.ok(r.maxRelErr <= 1e-4, `${dtype}: worst ${r.worst} ${r.maxRelErr}`);
  }
});

Deno.test("DiMR parameter counts equal the official MRModel exactly (TDP tensors and branch split too)", () => {
  const want: Record<string, [number, number, number, number]> = {
    // total, TDP tensors, branch 0, branch 1
    "DiMR-XL/2R": [505_046_408, 662_400, 396.25e6, 108.79e6],
    "DiMR-G/2R": [1_056_352_904, 1_145_088, 833.24e6, 223.12e6],
  };
  for (const [name, [n, tdp, b0, b1]] of Object.entries(want)) {
    const c = dimr.configs[name];
    assert.equal(paramCount(dimr.def, c), n, name);
    const shapes = Object.entries(dimr.paramShapes(c));
    const size = (s: number[]) => s.reduce((a, b) => a * b, 1);
    const sum = (f: (k: string) => boolean) => shapes.filter(([k]) => f(k)).reduce((a, [, s]) => a + size(s), 0);
    assert.equal(sum((k) => /\.(param[01]|nodecay_weight|nodecay_bias)$/.test(k)), tdp, `${name} TDP`);
    assert.ok(Math.abs(sum((k) => k.startsWith("stages.0.")) - b0) < 0.01e6, `${name} branch 0`);
    assert.ok(Math.abs(sum((k) => k.startsWith("stages.1.")) - b1) < 0.01e6, `${name} branch 1`);
  }
  // The XL low-res skip Linear: 960·40 = 38,400 inputs to 480·2·2 outputs.
  assert.deepEqual(dimr.paramShapes(dimr.configs["DiMR-XL/2R"])["stages.1.upsample.1.kernel.weight"], [1920, 38400]);
});

Deno.test("DiMR GFLOPs (MACs) within 2% of the README (XL 160, G 331) and of the analytic 160.2 / 331.1", () => {
  for (const [name, readme, analytic] of [["DiMR-XL/2R", 160, 160.2], ["DiMR-G/2R", 331, 331.1]] as const) {
    const g = dimr.flops(dimr.configs[name]) / 1e9;
    assert.ok(Math.abs(g - readme) / readme <= 0.02, `${name}: ${g} vs ${readme}`);
    assert.ok(Math.abs(g - analytic) / analytic <= 0.001, `${name}: ${g} vs ${analytic}`);
  }
});

Deno.test("block count rule: num_blocks // 2 * 2 + 1 (an even count gets one extra), num_blocks // 2 skip denses", () => {
  const shapes = dimr.paramShapes(dimr.configs["DiMR-XL/2R"]);
  const count = (re: RegExp) => new Set(Object.keys(shapes).map((k) => k.match(re)?.[1]).filter(Boolean)).size;
  assert.equal(count(/^stages\.0\.blocks\.(\d+)\./), 39);
  assert.equal(count(/^stages\.1\.blocks\.(\d+)\./), 21); // num_blocks 20
  assert.equal(count(/^stages\.1\.skip_denses\.(\d+)\./), 10);
  assert.equal(count(/^stages\.0\.skip_denses\.(\d+)\./), 19);
  for (const [n, L] of [[0, 1], [1, 1], [2, 3], [3, 3], [20, 21], [29, 29]]) {
    assert.equal(dimr.blockCount({ ...dimr.configs["DiMR-T"].stages[0], numBlocks: n }), L);
  }
  // ConvNeXt blocks have no norm before the depthwise conv and no class table.
  assert.ok(!("stages.1.blocks.0.block1.norm.scale.param0" in shapes));
  assert.ok(!("stages.1.class_embeds.weight" in shapes) && "stages.0.class_embeds.weight" in shapes);
});

Deno.test("channel-last pixel shuffle order: out[h·r+i, w·r+j, c] = in[h, w, (i·r+j)·C + c]", async () => {
  const r = 2, C = 3, H = 2, W = 2;
  const vals = Array.from({ length: H * W * r * r * C }, (_, i) => i);
  const x = d.tensor(vals, { shape: [1, H, W, r * r * C] });
  const y = await d.nn.pixelShuffleChannelLast(x, r).array() as number[][][][];
  for (let h = 0; h < H; h++) {
    for (let w = 0; w < W; w++) {
      for (let i = 0; i < r; i++) {
        for (let j = 0; j < r; j++) {
          for (let c = 0; c < C; c++) {
            assert.equal(y[0][h * r + i][w * r + j][c], vals[((h * W + w) * r * r + i * r + j) * C + c]);
          }
        }
      }
    }
  }
});

Deno.test("TDP interpolation, TD-RMSNorm eps outside the root, TD-LN eps 1e-5", async () => {
  const tdp = {
    param0: d.tensor([2, -1], { dtype: "f64" }),
    param1: d.tensor([0, 3], { dtype: "f64" }),
    nodecay_weight: d.tensor([1, -0.5], { dtype: "f64" }),
    nodecay_bias: d.tensor([0.25, 0], { dtype: "f64" }),
  };
  const tau = d.tensor([0.5, -1], { dtype: "f64" });
  const v = await dimr.tdpValue(tdp, tau).array() as number[][];
  const sig = (a: number) => 1 / (1 + Math.exp(-a));
  const ref = [0.5, -1].map((t) => [0 + sig(t * 2 + 0.25) * 2, 3 + sig(t * 0.5) * -4]);
  for (let n = 0; n < 2; n++) for (let k = 0; k < 2; k++) assert.ok(Math.abs(v[n][k] - ref[n][k]) < 1e-14);
  // A vector of RMS 1e-9: eps outside gives 1e-9 / (1e-9 + 1e-8) = 1/11; inside the root it would be ~1e-5.
  const one = {
    param0: d.ones([4], "f64"),
    param1: d.ones([4], "f64"),
    nodecay_weight: d.zeros([4], "f64"),
    nodecay_bias: d.zeros([4], "f64"),
  };
  const x = d.full([1, 1, 4], 1e-9, "f64");
  const y = await dimr.tdRmsNorm({ scale: one }, x, d.zeros([1], "f64")).data();
  for (const e of y) assert.ok(Math.abs(e - 1 / 11) < 1e-12, `${e}`);
  // TD-LN: (x - mean) / sqrt(var + 1e-5); for [1, -1] the variance is 1.
  const ln = { weight: one, bias: { ...one, param0: d.zeros([4], "f64"), param1: d.zeros([4], "f64") } };
  const z = await dimr.tdLayerNorm(ln, d.tensor([[[1, -1, 1, -1]]], { dtype: "f64" }), d.zeros([1], "f64")).data();
  assert.ok(Math.abs(z[0] - 1 / Math.sqrt(1 + 1e-5)) < 1e-14);
});

Deno.test("DiMR default init: TDP param0 = param1 = base, nodecay = 0, so the output does not depend on log-SNR", async () => {
  const c = dimr.configs["DiMR-T"];
  const p = dimr.init(d.randomKey(0), c);
  const sd = d.nn.flattenTree(p);
  assert.deepEqual(Object.fromEntries(Object.entries(sd).map(([k, v]) => [k, v.shape.slice()])), dimr.paramShapes(c));
  const vals = async (k: string) => Array.from(await sd[k].data());
  assert.ok((await vals("stages.0.blocks.1.block2.norm.scale.param0")).every((v) => v === 1));
  assert.ok((await vals("stages.0.blocks.1.block2.norm.scale.param1")).every((v) => v === 1));
  assert.ok((await vals("stages.1.upsample.0.bias.param1")).every((v) => v === 0));
  assert.ok((await vals("stages.1.output_layer.0.weight.nodecay_weight")).every((v) => v === 0));
  assert.ok(sd["stages.0.blocks.0.block2.norm.scale.param0"] !== sd["stages.0.blocks.0.block2.norm.scale.param1"]);
  const qkv = await vals("stages.0.blocks.0.block1.query_key_value.weight");
  const std = Math.sqrt(qkv.reduce((a, b) => a + b * b, 0) / qkv.length);
  assert.ok(Math.abs(std - 0.02) < 0.003, `qkv std ${std}`);
  assert.ok((await vals("stages.0.skip_denses.0.bias")).every((v) => v === 0));
  // Plain convs keep torch's default: |w| <= 1/sqrt(fan_in) (kaiming a=√5), fan_in 49 for the 7×7 depthwise.
  assert.ok((await vals("stages.1.blocks.0.block1.1.weight")).every((v) => Math.abs(v) <= 1 / 7));
  assert.ok(dimr.decayMask("stages.0.blocks.0.block2.w0.weight"));
  assert.ok(!dimr.decayMask("stages.0.blocks.0.block2.norm.scale.nodecay_weight"));
  assert.ok(!dimr.decayMask("stages.1.upsample.0.bias.nodecay_bias"));
  assert.ok(dimr.decayMask("stages.1.upsample.0.bias.param0"));

  const x = d.random.normal(d.randomKey(1), [2, 1, 32, 32]);
  const y = i32([3, 10]);
  const a = dimr.apply(p, x, d.tensor([-3.9, 2.5]), y, c);
  const b = dimr.apply(p, x, d.tensor([4, 0]), y, c);
  assert.deepEqual(a.map((o) => o.shape), [[2, 1, 16, 16], [2, 1, 32, 32]]);
  for (let i = 0; i < 2; i++) assert.ok((await relErr(a[i], b[i])) < 1e-6);
  d.dispose(p);
});

Deno.test("area downsampling equals avg pooling for divisible sizes and torch's adaptive bins otherwise", async () => {
  const x = d.random.normal(d.randomKey(4), [2, 3, 8, 8], { dtype: "f64" });
  assert.ok((await relErr(dimr.evenDownInterpolate(x, 2), avgPool2d(x, 2))) < 1e-14);
  assert.ok((await relErr(dimr.evenDownInterpolate(x, 4), avgPool2d(x, 4))) < 1e-14);
  // 5 -> 2 (ratio 2): torch's area bins are [0, 3) and [2, 5).
  const v = [1, 2, 3, 4, 5];
  const row = d.tensor([[[v, v]]], { dtype: "f64" }); // [1, 1, 2, 5]
  const out = await dimr.evenDownInterpolate(row, 2).array() as number[][][][];
  assert.deepEqual(out[0][0][0].map((e) => Math.round(e * 1e12) / 1e12), [2, 4]);
});

Deno.test("three-resolution DiMR: outputs per branch lowest first; gradients match finite differences", async () => {
  const c = threeR;
  const p = randomParams(c, 6, "f64");
  const x = d.random.normal(d.randomKey(2), [2, 2, 8, 8], { dtype: "f64" });
  const ls = d.tensor([-2, 3.5], { dtype: "f64" }), y = i32([1, 4]);
  const outs = dimr.apply(p, x, ls, y, c);
  assert.deepEqual(outs.map((o) => o.shape), [[2, 2, 2, 2], [2, 2, 4, 4], [2, 2, 8, 8]]);
  const shapes = dimr.paramShapes(c);
  // Branch 1 gets the branch-0 features (8 · (1 + 1) channels) upsampled by 4/2 = 2.
  assert.deepEqual(shapes["stages.1.upsample.1.kernel.weight"], [6 * 4, 16]);
  assert.deepEqual(shapes["stages.2.upsample.1.kernel.weight"], [4 * 4, 6 * 4]);
  const ws = outs.map((o, i) => d.random.normal(d.randomKey(10 + i), o.shape, { dtype: "f64" }));
  const loss = (pp: dimr.DiMRParams, xx: d.Tensor) =>
    dimr.apply(pp, xx, ls, y, c).map((o, i) => d.sum(d.mul(o, ws[i]))).reduce((a, b) => d.add(a, b));
  const [gp, gx] = d.grad(loss, { argnums: [0, 1] })(p, x) as [dimr.DiMRParams, d.Tensor];
  const gflat = d.nn.flattenTree(gp);
  const sd = d.nn.flattenTree(p);
  const probe = async (name: string, idx: number) => {
    const base = Array.from(await sd[name].data());
    const at = (delta: number) => {
      const b = base.slice();
      b[idx] += delta;
      const q = fromStateDict(dimr.def, { ...sd, [name]: d.tensor(b, { dtype: "f64", shape: sd[name].shape }) }, c);
      return loss(q, x).item();
    };
    const h = 1e-6;
    const fd = ((await at(h)) - (await at(-h))) / (2 * h);
    const an = (await gflat[name].data())[idx];
    assert.ok(Math.abs(fd - an) <= 1e-6 * Math.max(1, Math.abs(fd)), `${name}[${idx}]: fd ${fd} vs grad ${an}`);
  };
  for (
    const [name, idx] of [
      ["stages.0.input_layer.1.weight", 3],
      ["stages.0.blocks.0.block1.norm.scale.nodecay_bias", 1],
      ["stages.1.upsample.0.weight.nodecay_weight", 5],
      ["stages.2.upsample.1.kernel.weight", 7],
      ["stages.1.blocks.2.block1.1.weight", 4],
      ["stages.2.output_layer.0.bias.param0", 2],
    ] as const
  ) await probe(name, idx);
  const gxa = Array.from(await gx.data());
  assert.ok(gxa.every(Number.isFinite) && gxa.some((v) => v !== 0));
});

Deno.test("block_grad_to_lowres detaches the features passed up; otherwise lower branches get the gradient", async () => {
  const c = dimr.configs["DiMR-T"];
  const small: dimr.DiMRConfig = {
    ...c,
    stages: [{ ...c.stages[0], dim: 8, hiddenDim: 8, maxHeight: 4, maxWidth: 4 }, {
      ...c.stages[1],
      dim: 4,
      hiddenDim: 8,
      maxHeight: 8,
      maxWidth: 8,
    }],
  };
  const x = d.random.normal(d.randomKey(2), [1, 1, 8, 8]);
  const ls = d.tensor([0.3]), y = i32([2]);
  for (const detach of [false, true]) {
    const cc = { ...small, blockGradToLowres: detach };
    const p = randomParams(cc, 3);
    const g = d.grad((pp: dimr.DiMRParams) => d.sum(dimr.apply(pp, x, ls, y, cc)[1]))(p) as dimr.DiMRParams;
    const gw = Array.from(await g.stages[0].blocks[0].block2.w0.weight.data());
    assert.equal(gw.some((v) => v !== 0), !detach, `detach=${detach}`);
  }
});

Deno.test("configFromOfficial: the golden's MRModel config, norm variants, and clear rejections", () => {
  const golden = {
    channels: 4,
    num_classes: 11,
    block_grad_to_lowres: false,
    norm_type: "TDRMSN",
    stage_configs: [
      {
        block_type: "TransformerBlock",
        dim: 16,
        hidden_dim: 32,
        num_attention_heads: 2,
        num_blocks: 3,
        max_height: 4,
        max_width: 4,
        image_input_ratio: 1,
        input_feature_ratio: 2,
        final_kernel_size: 3,
        dropout_prob: 0,
      },
      {
        block_type: "ConvNeXtBlock",
        dim: 8,
        hidden_dim: 16,
        kernel_size: 7,
        num_blocks: 2,
        max_height: 8,
        max_width: 8,
        image_input_ratio: 1,
        input_feature_ratio: 1,
        final_kernel_size: 3,
        dropout_prob: 0,
      },
    ],
  };
  const c = dimr.configFromOfficial(golden);
  assert.equal(paramCount(dimr.def, c), 16560);
  assert.equal(c.stages[1].kernelSize, 7);
  // Without norm_type the official default is the TD-LayerNorm; RMSN has a plain scale.
  const ln = dimr.paramShapes(dimr.configFromOfficial({ ...golden, norm_type: undefined }));
  assert.ok("stages.0.blocks.0.block2.norm.weight.param0" in ln);
  const rms = dimr.paramShapes(dimr.configFromOfficial({ ...golden, norm_type: "RMSN" }));
  assert.deepEqual(rms["stages.0.blocks.0.block1.norm.scale"], [16]);
  // Without num_classes there is no class token.
  const { num_classes: _, ...uncond } = golden;
  assert.ok(!("stages.0.class_embeds.weight" in dimr.paramShapes(dimr.configFromOfficial(uncond))));
  assert.throws(() => dimr.configFromOfficial({ ...golden, pe_type: "Axial_RoPE" }), /pe_type "Axial_RoPE"/);
  assert.throws(() => dimr.configFromOfficial({ ...golden, norm_type: "ADARMSN" }), /ADARMSN/);
  assert.throws(
    () =>
      dimr.configFromOfficial({ ...golden, stage_configs: [{ ...golden.stage_configs[0], num_attention_heads: 3 }] }),
    /numHeads 3 must divide dim 16/,
  );
  const p = randomParams(c, 1);
  assert.throws(() => dimr.apply(p, d.zeros([2, 4, 8, 8]), d.zeros([3]), i32([1, 2]), c), /logSnr must be \[2\]/);
  assert.throws(() => dimr.apply(p, d.zeros([1, 4, 16, 16]), d.zeros([1]), i32([1]), c), /exceeds its position table/);
});

Deno.test("RMSN and LN norm variants run forward and backward", async () => {
  for (const normType of ["RMSN", "LN"] as const) {
    const c = { ...threeR, normType };
    const p = randomParams(c, 2);
    const x = d.random.normal(d.randomKey(2), [1, 2, 8, 8]);
    const g = d.grad((pp: dimr.DiMRParams) => d.sum(dimr.apply(pp, x, d.tensor([1]), i32([0]), c)[2]))(p);
    const flat = d.nn.flattenTree(g);
    assert.deepEqual(Object.keys(flat).sort(), Object.keys(dimr.paramShapes(c)).sort());
    for (const v of Object.values(flat)) assert.ok(Array.from(await v.data()).every(Number.isFinite));
  }
});
