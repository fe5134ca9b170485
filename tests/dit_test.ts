/**
 * @file DiT and DyDiT against the official PyTorch goldens (forward, CFG,
 * every gradient; DyDiT's masks and router logits), exact parameter counts,
 * GFLOPs against the papers, adaLN-Zero init, and DyDiT's work-skipping
 * inference path (same output, fewer MACs executed).
 */
import assert from "node:assert/strict";
import * as d from "../mod.ts";
import { readSafetensors } from "../nn/io.ts";
import { fromStateDict, paramCount } from "../models/common.ts";
import * as dit from "../models/dit.ts";
import * as dy from "../models/dydit.ts";
import { relErr } from "../models/golden.ts";
import { checkDiT, checkDyDiT } from "../models/goldens.ts";

await d.setBackend("cpu");
const fixture = (name: string) => new URL(`./fixtures/${name}`, import.meta.url).pathname;

Deno.test("DiT golden (official code): forward, CFG and every gradient within 1e-4 on cpu", async () => {
  const { tensors, metadata } = await readSafetensors(fixture("dit_a.safetensors"));
  for (const dtype of ["f32", "f64"] as const) {
    const r = await checkDiT(tensors, metadata, { dtype });
    assert.ok(r.entries.length >= 34, `compared ${r.entries.length} quantities`);
    assert.ok(r.entries.some((e) => e.key === "cfg.out"));
    assert.ok(r.maxRelErr <= 1e-4, `${dtype}: worst ${r.worst} ${r.maxRelErr}`);
  }
});

Deno.test("DyDiT golden: masked forward, masks, router logits, complete path, CFG, gradients; dynamic path equal", async () => {
  const { tensors, metadata } = await readSafetensors(fixture("dydit_a.safetensors"));
  for (const dtype of ["f32", "f64"] as const) {
    let dyn: dy.DynamicResult | undefined;
    const r = await checkDyDiT(tensors, metadata, { dtype, onDynamic: (x) => (dyn = x) });
    assert.ok(r.maxRelErr <= 1e-4, `${dtype}: worst ${r.worst} ${r.maxRelErr}`);
    for (
      const k of [
        "cfg.out",
        "out (dynamic, skipping)",
        "out_complete",
        "token_select",
        "grad.blocks.1.token_selection.mlp_head.0.weight",
      ]
    ) {
      assert.ok(r.entries.some((e) => e.key === k), `missing ${k}`);
    }
    // The golden routes away about half the heads and a third of the tokens: the skipping path must execute less.
    assert.ok(dyn!.executedMacs < 0.8 * dyn!.staticMacs, `executed ${dyn!.executedMacs} of ${dyn!.staticMacs}`);
  }
});

Deno.test("DiT and DyDiT parameter counts equal the official classes exactly", () => {
  const want: Record<string, number> = {
    "DiT-S/8": 33148160,
    "DiT-S/4": 32945024,
    "DiT-S/2": 32963360,
    "DiT-B/8": 130881536,
    "DiT-B/4": 130475648,
    "DiT-B/2": 130512416,
    "DiT-L/8": 458594816,
    "DiT-L/4": 458053760,
    "DiT-L/2": 458102816,
    "DiT-XL/8": 675683072,
    "DiT-XL/4": 675074432,
    "DiT-XL/2": 675129632,
    "DyDiT-S/2": 33129980,
    "DyDiT-B/2": 131177420,
    "DyDiT-XL/2": 678489212,
  };
  for (const [name, n] of Object.entries(want)) {
    const def = name.startsWith("Dy") ? dy.def : dit.def;
    assert.equal(paramCount(def as never, def.configs[name]), n, name);
  }
});

Deno.test("DiT GFLOPs within 2% of the paper's table", () => {
  const paper: Record<string, number> = {
    "DiT-S/8": 0.36,
    "DiT-S/4": 1.41,
    "DiT-S/2": 6.06,
    "DiT-B/8": 1.42,
    "DiT-B/4": 5.56,
    "DiT-B/2": 23.01,
    "DiT-L/8": 5.01,
    "DiT-L/4": 19.7,
    "DiT-L/2": 80.71,
    "DiT-XL/8": 7.39,
    "DiT-XL/4": 29.05,
    "DiT-XL/2": 118.64,
  };
  for (const [name, g] of Object.entries(paper)) {
    const ours = dit.flops(dit.configs[name]) / 1e9;
    assert.ok(Math.abs(ours - g) / g <= 0.02, `${name}: ${ours} vs ${g}`);
  }
  // DyDiT's static path is DiT plus routers (README: DiT-XL/2 118.69 GFLOPs).
  assert.ok(Math.abs(dy.flops(dy.configs["DyDiT-XL/2"]) / 1e9 - 118.69) / 118.69 <= 0.02);
});

Deno.test("init matches paramShapes, and adaLN-Zero makes a fresh DiT output exactly zero", async () => {
  const c = { ...dit.configs["DiT-T/2"], depth: 2, hiddenSize: 32, numHeads: 2, inputSize: 8 };
  const p = dit.init(d.randomKey(0), c);
  const flat = Object.fromEntries(Object.entries(d.nn.flattenTree(p)).map(([k, v]) => [k, v.shape.slice()]));
  assert.deepEqual(flat, dit.paramShapes(c));
  const x = d.random.normal(d.randomKey(1), [2, 1, 8, 8]);
  const out = dit.apply(p, x, d.tensor([3, 999], { dtype: "i32" }), d.tensor([1, 10], { dtype: "i32" }), c);
  assert.deepEqual(out.shape, [2, 2, 8, 8]);
  assert.ok(Array.from(await out.data()).every((v) => v === 0));
  const pd = dy.init(d.randomKey(0), c);
  const flatD = Object.fromEntries(Object.entries(d.nn.flattenTree(pd)).map(([k, v]) => [k, v.shape.slice()]));
  assert.deepEqual(flatD, dy.paramShapes(c));
  // Router biases of 15/35 keep every head, group and token at init.
  const o = dy.applyWithMasks(pd, x, d.tensor([3, 999], { dtype: "i32" }), d.tensor([1, 2], { dtype: "i32" }), c);
  for (const m of [o.attnMasks, o.mlpMasks, o.tokenMasks]) assert.ok(Array.from(await m.data()).every((v) => v === 1));
});

Deno.test("a state_dict with a wrong shape or missing key is rejected naming the key", () => {
  const c = { ...dit.configs["DiT-T/2"], depth: 1, hiddenSize: 16, numHeads: 2, inputSize: 4 };
  const sd = d.nn.flattenTree(dit.init(d.randomKey(0), c));
  const bad = { ...sd, "blocks.0.attn.qkv.weight": d.zeros([3, 3]) };
  assert.throws(() => fromStateDict(dit.def, bad, c), /blocks\.0\.attn\.qkv\.weight.*\[3,3\]/);
  const missing = { ...sd };
  delete missing["final_layer.linear.bias"];
  assert.throws(() => fromStateDict(dit.def, missing, c), /missing final_layer\.linear\.bias/);
});

Deno.test("DyDiT training mode: Gumbel routing is keyed and the FLOPs loss is differentiable", async () => {
  const c = { ...dy.configs["DyDiT-T/2"], depth: 2, hiddenSize: 32, numHeads: 4, inputSize: 8 };
  const p = dy.init(d.randomKey(3), c);
  const x = d.random.normal(d.randomKey(1), [2, 1, 8, 8]);
  const t = d.tensor([5, 900], { dtype: "i32" }), y = d.tensor([1, 2], { dtype: "i32" });
  const loss = (pp: dy.DyDiTParams) =>
    dy.flopsLoss(dy.applyWithMasks(pp, x, t, y, c, { train: true, key: d.randomKey(9) }), c, 0.5);
  const [v, g] = d.valueAndGrad(loss)(p);
  // All units on at init: ratio 1, loss (1 - 0.5)^2.
  assert.ok(Math.abs((await v.item()) - 0.25) < 1e-6);
  const gr = await (g as dy.DyDiTParams).blocks[0].attn_rate.router.bias!.data();
  assert.ok(Array.from(gr).some((v) => v !== 0), "router gets a straight-through gradient");
  const a = await loss(p).item(), b = await loss(p).item();
  assert.equal(a, b);
  const e = await relErr(dy.apply(p, x, t, y, c), dy.apply(p, x, t, y, c, { complete: true }));
  assert.ok(e < 1e-6);
});
