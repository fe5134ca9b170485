/**
 * @file U-DiT tests: the official-code golden (train form, merged inference
 * form, CFG, rep-FFN merge tensors, every gradient), exact parameter counts
 * of every named config in both forms, GFLOPs against the paper, the
 * functional merge (no mutation, idempotent, equal to the train form), the
 * official initialisation, label dropout wiring and bad-input errors.
 */
import assert from "node:assert/strict";
import { valueAndGrad } from "../autograd/autograd.ts";
import { paramCount } from "../models/common.ts";
import { fromStateDict } from "../models/common.ts";
import * as udit from "../models/udit.ts";
import { readSafetensors } from "../nn/io.ts";
import { flattenTree } from "../nn/tree.ts";
import { DifflabError, ShapeError } from "../tensor/errors.ts";
import * as ops from "../tensor/ops.ts";
import { randomKey } from "../tensor/random.ts";
import * as random from "../tensor/random.ts";
import { type Tensor, tensor } from "../tensor/tensor.ts";

const FIX = new URL("./fixtures/", import.meta.url).pathname;
const golden = await readSafetensors(FIX + "udit_a.safetensors");
const G = golden.tensors;
const goldenConfig = udit.configFromOfficial(JSON.parse(golden.metadata.config));

/** Golden params in the requested dtype, loaded by official names. */
function goldenParams(dtype: "f32" | "f64" = "f32"): udit.UDiTParams {
  const sd: Record<string, Tensor> = {};
  for (const [k, v] of Object.entries(G)) {
    if (k.startsWith("param.")) {
      sd[k.slice(6)] = dtype === "f64" ? ops.cast(v, "f64") : v;
    }
  }
  return fromStateDict(udit.def, sd, goldenConfig);
}

function relDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / den);
}

for (const dtype of ["f32", "f64"] as const) {
  Deno.test(`U-DiT golden udit_a on cpu (${dtype}): out, out_unmerged, cfg.out, rep.*, every grad <= 1e-4`, async () => {
    const r = await udit.checkGolden(G, golden.metadata, { dtype });
    const keys = new Set(r.entries.map((e) => e.key));
    for (const k of ["out", "out_unmerged", "cfg.out", "grad.x"]) assert.ok(keys.has(k), `missing check ${k}`);
    const nGrad = Object.keys(G).filter((k) => k.startsWith("grad.")).length;
    const nRep = Object.keys(G).filter((k) => k.startsWith("rep.")).length;
    assert.equal(nGrad, 262); // 261 params + x
    assert.equal(nRep, 60);
    assert.equal(r.entries.filter((e) => e.key.startsWith("grad.")).length, nGrad);
    assert.equal(r.entries.filter((e) => e.key.startsWith("rep.")).length, nRep);
    const bad = r.entries.filter((e) => !(e.relErr <= 1e-4));
    assert.deepEqual(bad, [], `worst ${r.worst} ${r.maxRelErr}`);
  });
}

Deno.test("U-DiT configFromOfficial reads the golden kwargs and applies the class defaults", () => {
  assert.deepEqual(goldenConfig, {
    inputSize: 16,
    downFactor: 2,
    inChannels: 4,
    hiddenSize: 8,
    depth: [1, 1, 1, 1, 1],
    numHeads: 2,
    mlpRatio: 2,
    classDropoutProb: 0.1,
    numClasses: 10,
    learnSigma: true,
    rep: true,
    ffnType: "rep",
    attnType: "v2",
    posembType: "rope2d",
    downsampler: "dwconv5",
    downShortcut: true,
  });
  const d = udit.configFromOfficial({ downsampler: "dwconv3" });
  assert.equal(d.hiddenSize, 1152);
  assert.equal(d.numHeads, 16);
  assert.equal(d.mlpRatio, 4);
  assert.equal(d.numClasses, 1000);
  assert.equal(d.attnType, null);
  assert.equal(d.posembType, null);
  assert.equal(d.downShortcut, false);
  assert.throws(() => udit.configFromOfficial({}), /downsampler/);
  assert.throws(() => udit.configFromOfficial({ downsampler: "dwconv5", attn_type: "v3" }), /attn_type/);
  assert.throws(() => udit.configFromOfficial({ downsampler: "dwconv5", hidden_size: 30, num_heads: 4 }), /heads/);
});

// Closed-form count written from the module tree, independent of the spec builder in udit.ts.
function countByFormula(c: udit.UDiTConfig, merged: boolean): number {
  const h = c.hiddenSize, k = Number(c.downsampler.slice(-1));
  const sub = (w: number) => {
    const hf = Math.trunc(w * c.mlpRatio), h2 = Math.trunc(hf / 2);
    const attn = c.numHeads + (3 * w * w + 3 * w) + (w * w + w) + (w * k * k + w);
    const ffn = merged
      ? (hf * w + hf) + (hf * 25 + hf) + (w * hf + w)
      : (h2 * w + h2) + (hf * h2 + hf) + hf * (25 + 9 + 1) + 3 * hf + (h2 * hf + h2) + (w * h2 + w);
    return attn + ffn + (6 * w * w + 6 * w);
  };
  const block = (w: number) => 2 * sub(w);
  const emb = (w: number) => (256 * w + w) + (w * w + w) + (c.numClasses + 1) * w;
  const out = 2 * c.inChannels;
  return (c.inChannels * 9 * h + h) + emb(h) + emb(2 * h) + emb(4 * h) +
    c.depth[0] * block(h) + c.depth[1] * block(2 * h) + c.depth[2] * block(4 * h) +
    c.depth[3] * block(2 * h) + c.depth[4] * block(2 * h) +
    (h / 2) * h * 9 + h * 2 * h * 9 + 8 * h * 4 * h * 9 + (2 * h * 4 * h + 2 * h) + 4 * h * 2 * h * 9 +
    (2 * h * 2 * h + 2 * h) + (2 * h * 2 * h * 9 + 2 * h) + (out * 2 * h * 9 + out) + (4 * h * 2 * h + 4 * h);
}

Deno.test("U-DiT parameter counts are exact for every named config (train and merged form)", () => {
  const official: Record<string, [number, number]> = {
    "U-DiT-S": [58_896_568, 52_045_240],
    "U-DiT-B": [231_251_304, 204_425_064],
    "U-DiT-L": [916_335_304, 810_188_488],
  };
  assert.deepEqual(Object.keys(udit.configs).sort(), ["U-DiT-B", "U-DiT-L", "U-DiT-S", "U-DiT-T"]);
  for (const [name, c] of Object.entries(udit.configs)) {
    const train = paramCount(udit.def, c), merged = udit.mergedParamCount(c);
    assert.equal(train, countByFormula(c, false), `${name} train form`);
    assert.equal(merged, countByFormula(c, true), `${name} merged form`);
    if (official[name]) assert.deepEqual([train, merged], official[name], name);
  }
  // The golden file holds exactly the official state_dict: same names, same shapes.
  const want = udit.paramShapes(goldenConfig);
  const have = Object.fromEntries(
    Object.entries(G).filter(([k]) => k.startsWith("param.")).map(([k, v]) => [k.slice(6), v.shape]),
  );
  assert.deepEqual(new Set(Object.keys(want)), new Set(Object.keys(have)));
  for (const [k, s] of Object.entries(want)) assert.deepEqual(s, have[k], k);
  // The merged names are the official add_buffer() names of the golden's rep.* tensors.
  const mergedShapes = udit.mergedParamShapes(goldenConfig);
  for (const [k, v] of Object.entries(G)) {
    if (k.startsWith("rep.")) assert.deepEqual(mergedShapes[k.slice(4)], v.shape, k);
  }
});

Deno.test("U-DiT GMACs: eval form within 2% of the paper and equal to the measured profile", () => {
  const g = (n: string, form?: "train" | "eval") => udit.flops(udit.configs[n], { form }) / 1e9;
  const paper: Record<string, number> = { "U-DiT-S": 6.04, "U-DiT-B": 22.22, "U-DiT-L": 85.0 };
  for (const [n, v] of Object.entries(paper)) assert.ok(Math.abs(g(n) / v - 1) < 0.02, `${n}: ${g(n)} vs paper ${v}`);
  // Measured with an aten-level MAC counter on the official eval model, 1×4×32×32.
  assert.ok(Math.abs(g("U-DiT-S") - 6.021) < 0.0005, `S ${g("U-DiT-S")}`);
  assert.ok(Math.abs(g("U-DiT-B") - 22.179) < 0.0005, `B ${g("U-DiT-B")}`);
  assert.equal(udit.def.flops(udit.configs["U-DiT-S"]), udit.flops(udit.configs["U-DiT-S"]));
  for (const n of Object.keys(udit.configs)) assert.ok(g(n, "train") > g(n), `${n}: the un-merged FFN costs more`);
});

Deno.test("U-DiT merge returns a new record, never mutates params, is idempotent and equals the train form", async () => {
  const p = goldenParams("f64");
  const before = Object.fromEntries(
    Object.entries(flattenTree(p)).map(([k, v]) => [k, Array.from(v.dataSync() as Float64Array)]),
  );
  const m = udit.merge(p, goldenConfig);
  assert.notEqual(m, p);
  assert.ok(Array.isArray((p.encoder_level_1[0].mlp1 as udit.RepFfnParams).project_in), "params keep the train form");
  assert.ok("project_in_weight" in m.encoder_level_1[0].mlp1, "merged record holds the add_buffer tensors");
  const x = ops.cast(G["x"], "f64");
  const yTrain = udit.apply(p, x, G["t"], G["y"], goldenConfig);
  const yMerged = udit.apply(m, x, G["t"], G["y"], goldenConfig);
  const yFlag = udit.apply(p, x, G["t"], G["y"], goldenConfig, { merged: true });
  const [a, b, c] = [await yTrain.data(), await yMerged.data(), await yFlag.data()] as Float64Array[];
  assert.ok(relDiff(b, a) < 1e-12, `merged vs train ${relDiff(b, a)}`);
  assert.deepEqual(Array.from(c), Array.from(b));
  for (const [k, v] of Object.entries(flattenTree(p))) {
    assert.deepEqual(Array.from(v.dataSync() as Float64Array), before[k], k);
  }
  // A second merge (the official .eval() twice) changes nothing.
  const mm = udit.merge(m, goldenConfig);
  const f1 = flattenTree(m), f2 = flattenTree(mm);
  assert.deepEqual(Object.keys(f2), Object.keys(f1));
  for (const k of Object.keys(f1)) assert.equal(f2[k], f1[k], k);
  assert.equal(
    paramCount({ ...udit.def, paramShapes: udit.mergedParamShapes }, goldenConfig),
    Object.values(f1).reduce((s, t) => s + t.size, 0),
  );
});

Deno.test("U-DiT merged dwconv kernel: K5 + K3 in the centre 3×3 + (K1 + 1) at the centre tap", async () => {
  const p = goldenParams("f64");
  const ffn = p.latent[0].mlp2 as udit.RepFfnParams;
  const m = udit.mergeFfn(ffn);
  const [k5, k3, k1, km] = await Promise.all([
    ...ffn.dwconv.map((d) => d.weight.data()),
    m.dwconv_weight.data(),
  ]) as Float64Array[];
  const hf = ffn.dwconv[0].weight.shape[0];
  for (let c = 0; c < hf; c++) {
    for (let i = 0; i < 5; i++) {
      for (let j = 0; j < 5; j++) {
        let want = k5[c * 25 + i * 5 + j];
        if (i >= 1 && i <= 3 && j >= 1 && j <= 3) want += k3[c * 9 + (i - 1) * 3 + (j - 1)];
        if (i === 2 && j === 2) want += k1[c] + 1;
        assert.ok(Math.abs(km[c * 25 + i * 5 + j] - want) < 1e-15, `channel ${c} tap ${i},${j}`);
      }
    }
  }
});

Deno.test("U-DiT init: official scheme, official names, zero output, trainable output layer", async () => {
  const c = udit.configs["U-DiT-T"];
  const p = udit.init(randomKey(7), c);
  const flat = flattenTree(p);
  const shapes = udit.paramShapes(c);
  assert.deepEqual(Object.keys(flat), Object.keys(shapes));
  for (const [k, s] of Object.entries(shapes)) assert.deepEqual(flat[k].shape, s, k);
  const vals = (k: string) => Array.from(flat[k].dataSync() as Float32Array);
  const std = (v: number[]) => Math.sqrt(v.reduce((a, b) => a + b * b, 0) / v.length);
  for (const k of Object.keys(flat)) {
    const v = vals(k);
    if (/adaLN_modulation\d?\.1\.|final_layer\.out_proj\.|\.bias$/.test(k)) {
      assert.ok(v.every((e) => e === 0), `${k} must be zero`);
    } else if (k.endsWith("logit_scale")) {
      assert.ok(v.every((e) => e === Math.fround(Math.log(10))), k);
    } else if (/embedding_table|t_embedder_\d\.mlp/.test(k)) {
      assert.ok(Math.abs(std(v) / 0.02 - 1) < 0.25, `${k} std ${std(v)}`);
    } else {
      const s = flat[k].shape;
      const rf = s.slice(2).reduce((a, b) => a * b, 1);
      const [fi, fo] = k === "x_embedder.proj.weight" ? [s[1] * rf, s[0]] : [s[1] * rf, s[0] * rf];
      const bound = Math.sqrt(6 / (fi + fo));
      // The f32 draw may round one ulp past the f64 bound.
      assert.ok(v.every((e) => Math.abs(e) <= bound * (1 + 1e-6)), `${k} exceeds the xavier bound ${bound}`);
      if (v.length >= 1000) assert.ok(Math.abs(std(v) / (bound / Math.sqrt(3)) - 1) < 0.1, `${k} std ${std(v)}`);
    }
  }
  // The project config runs end to end on single-channel input and starts at exactly 0 (16×16
  // rather than its 32×32 keeps the cpu reference backend fast; the grid comes from x).
  const x = random.normal(randomKey(1), [1, 1, 16, 16]);
  const out = udit.apply(p, x, tensor([500], { dtype: "i32" }), tensor([3], { dtype: "i32" }), c);
  assert.deepEqual(out.shape, [1, 2, 16, 16]);
  assert.ok((await out.data()).every((e) => e === 0), "zero-init output");
});

Deno.test("U-DiT init on a tiny config: zero output, non-zero gradient into the output conv", async () => {
  const c = { ...goldenConfig, inputSize: 8 };
  const p = udit.init(randomKey(3), c);
  const x = random.normal(randomKey(4), [2, 4, 8, 8]);
  const t = tensor([999, 17], { dtype: "i32" }), y = tensor([1, 10], { dtype: "i32" });
  const [loss, g] = valueAndGrad((q: udit.UDiTParams) => ops.sum(ops.mul(udit.apply(q, x, t, y, c), 1)))(p) as [
    Tensor,
    udit.UDiTParams,
  ];
  assert.equal((await loss.data())[0], 0);
  const gw = await g.final_layer.out_proj.weight.data();
  assert.ok(gw.some((e) => e !== 0), "out_proj weight gradient must be non-zero at init");
});

Deno.test("U-DiT label dropout: train mode needs a key and drops to the null class per embedder", async () => {
  const p = goldenParams("f64");
  const x = ops.cast(G["x"], "f64");
  assert.throws(() => udit.apply(p, x, G["t"], G["y"], goldenConfig, { train: true }), DifflabError);
  const all = { ...goldenConfig, classDropoutProb: 1 };
  const dropped = udit.apply(p, x, G["t"], G["y"], all, { train: true, key: randomKey(0) });
  const nullY = tensor([10, 10], { dtype: "i32" });
  const ref = udit.apply(p, x, G["t"], nullY, goldenConfig);
  const kept = udit.apply(p, x, G["t"], G["y"], goldenConfig);
  const [a, b, k] = [await dropped.data(), await ref.data(), await kept.data()] as Float64Array[];
  assert.ok(relDiff(a, b) < 1e-13, "p=1 dropout equals the null label");
  assert.ok(relDiff(k, b) > 1e-3, "labels matter");
});

Deno.test("U-DiT other official options (basic FFN, v1 attention, no RoPE, rep=0) build and run", async () => {
  for (
    const kw of [
      { ffn_type: "basic", attn_type: null, posemb_type: null, downsampler: "dwconv3", down_shortcut: 0 },
      { ffn_type: "rep", rep: 0, attn_type: "v2", posemb_type: "rope2d", downsampler: "dwconv5", down_shortcut: 1 },
    ]
  ) {
    const c = udit.configFromOfficial({
      ...kw,
      hidden_size: 8,
      num_heads: 2,
      depth: [1, 0, 1, 0, 1],
      num_classes: 3,
      input_size: 8,
    });
    const shapes = udit.paramShapes(c);
    const names = Object.keys(shapes);
    if (kw.ffn_type === "basic") {
      assert.ok(names.includes("encoder_level_1.0.mlp1.fc1.weight"));
      assert.ok(!names.some((n) => n.endsWith("logit_scale")));
      assert.deepEqual(shapes["latent.0.attn1.downsampler.layer.weight"], [32, 1, 3, 3]);
    } else {
      // Class default mlp_ratio 4: the latent (width 32) FFN is 128 wide.
      assert.deepEqual(shapes["latent.0.mlp2.dwconv.weight"], [128, 1, 5, 5]);
      assert.equal(udit.mergedParamCount(c), paramCount(udit.def, c), "rep=0 has nothing to merge");
    }
    const p = udit.init(randomKey(5), c);
    const out = udit.apply(
      p,
      random.normal(randomKey(6), [1, 4, 8, 8]),
      tensor([5], { dtype: "i32" }),
      tensor([2], { dtype: "i32" }),
      c,
    );
    assert.deepEqual(out.shape, [1, 8, 8, 8]);
    assert.ok((await out.data()).every((e) => Number.isFinite(e)));
  }
});

Deno.test("U-DiT bad inputs raise errors naming the argument and shapes", () => {
  const p = goldenParams();
  const t = G["t"], y = G["y"];
  assert.throws(
    () => udit.apply(p, ops.zeros([2, 3, 16, 16]), t, y, goldenConfig),
    (e: Error) =>
      e instanceof ShapeError && /x must be \[N, 4, H, W\]/.test(e.message) && /\[2,\s?3,\s?16,\s?16\]/.test(e.message),
  );
  assert.throws(() => udit.apply(p, ops.zeros([2, 4, 18, 18]), t, y, goldenConfig), /divide by 4/);
  assert.throws(
    () => udit.apply(p, ops.zeros([2, 4, 16, 16]), tensor([1], { dtype: "i32" }), y, goldenConfig),
    /t must be \[2\]/,
  );
});
