/**
 * @file DiCo (Diffusion ConvNet, arXiv 2505.11196), ported from the official
 * PyTorch `dico_models.py` (shallowdream204/DiCo). A three-level conv U-Net
 * on the full-resolution latent: channels C, 2C, 4C, and a **2C**-wide last
 * decoder level; each block is adaLN-modulated (1×1 conv → 3×3 depthwise →
 * GELU → Compact Channel Attention → 1×1 conv) plus a 1×1-conv FFN. Three
 * timestep MLPs and three label tables give conditioning vectors of width C,
 * 2C and 4C; decoder level 1 and the final layer use the 2C one.
 *
 * Parameter records mirror the official module tree, so `toStateDict(params)`
 * yields exactly the official `state_dict` names.
 */
import { gelu, silu } from "../nn/activations.ts";
import { conv2dApply, type Conv2dParams } from "../nn/conv.ts";
import { labelDrop, timestepEmbedderApply, type TimestepEmbedderParams } from "../nn/embed.ts";
import { normalInit, xavierUniform, zerosInit } from "../nn/init.ts";
import { linearApply, type LinearParams } from "../nn/linear.ts";
import { layerNormalize, modulate } from "../nn/norm.ts";
import { pixelShuffle, pixelUnshuffle } from "../nn/spatial.ts";
import { unflattenTree } from "../nn/tree.ts";
import { DifflabError, fmtShape, ShapeError } from "../tensor/errors.ts";
import * as ops from "../tensor/ops.ts";
import * as random from "../tensor/random.ts";
import type { Key } from "../tensor/random.ts";
import { Tensor, tidy } from "../tensor/tensor.ts";
import { type ApplyOptions, kw, type ModelDef } from "./common.ts";

/** A DiCo configuration (the official constructor's arguments plus the input size used for FLOPs). */
export interface DiCoConfig {
  /** Latent channels (4 for the SD-VAE latent). */
  inChannels: number;
  /** C, the width of the first level. */
  hiddenSize: number;
  /** Blocks per stage: [encoder_level_1, encoder_level_2, latent, decoder_level_2, decoder_level_1]. */
  depth: readonly [number, number, number, number, number];
  /** FFN width factor (`int(mlp_ratio·D)`). */
  mlpRatio: number;
  /** Label-dropout probability; > 0 adds the CFG null row K to the label tables. */
  classDropoutProb: number;
  /** Number of real classes K. */
  numClasses: number;
  /** Output 2·inChannels (epsilon + variance interpolation) instead of inChannels. */
  learnSigma: boolean;
  /** Spatial size of the input (only used by `flops`; the net itself is fully convolutional). */
  inputSize: number;
}

type Stage = "encoder_level_1" | "encoder_level_2" | "latent" | "decoder_level_2" | "decoder_level_1";

/** The five block stages in forward order. */
export const STAGES: readonly Stage[] = [
  "encoder_level_1",
  "encoder_level_2",
  "latent",
  "decoder_level_2",
  "decoder_level_1",
];

/** Parameters of one `DiCoBlock` (official names). */
export interface DiCoBlockParams {
  /** Conv module input: pointwise 1×1 conv `[D, D, 1, 1]`. */
  conv1: Conv2dParams;
  /** Conv module spatial mixing: 3×3 depthwise conv `[D, 1, 3, 3]` (followed by GELU). */
  conv2: Conv2dParams;
  /** Conv module output: 1×1 conv `[D, D, 1, 1]` after Compact Channel Attention, gated into the residual. */
  conv3: Conv2dParams;
  /** Compact Channel Attention: 1×1 conv `[D, D, 1, 1]` on the pooled features, then sigmoid gate. */
  ca: { "1": Conv2dParams };
  /** FFN expansion: 1×1 conv `[F, D, 1, 1]`, F = ⌊mlpRatio·D⌋ (followed by GELU). */
  conv4: Conv2dParams;
  /** FFN projection back: 1×1 conv `[D, F, 1, 1]`. */
  conv5: Conv2dParams;
  /** adaLN: `Linear(D, 6D)` after SiLU on the condition, giving shift/scale/gate for both sub-blocks (zero-init). */
  adaLN_modulation: { "1": LinearParams };
}

/** Parameters of a whole DiCo model (official names; `flattenTree` gives the state_dict). */
export interface DiCoParams {
  /** Stem: 3×3 conv `[C, inChannels, 3, 3]` at full resolution. */
  x_embedder: { proj: Conv2dParams };
  /** Timestep MLP giving the width-C condition (encoder level 1). */
  t_embedder_1: TimestepEmbedderParams;
  /** Timestep MLP giving the width-2C condition (encoder level 2, both decoder levels, final layer). */
  t_embedder_2: TimestepEmbedderParams;
  /** Timestep MLP giving the width-4C condition (latent level). */
  t_embedder_3: TimestepEmbedderParams;
  /** Label tables `[numClasses (+1 null), C | 2C | 4C]`, one per condition width, added to the timestep embeddings. */
  y_embedder: {
    embedding_table_0: { weight: Tensor };
    embedding_table_1: { weight: Tensor };
    embedding_table_2: { weight: Tensor };
  };
  /** Blocks at full resolution, width C. */
  encoder_level_1: DiCoBlockParams[];
  /** Downsample 1→2: 3×3 conv `[C/2, C]` (no bias) then pixel-unshuffle ×2, giving 2C channels. */
  down1_2: { body: [Conv2dParams] };
  /** Blocks at 1/2 resolution, width 2C. */
  encoder_level_2: DiCoBlockParams[];
  /** Downsample 2→3: 3×3 conv `[C, 2C]` (no bias) then pixel-unshuffle ×2, giving 4C channels. */
  down2_3: { body: [Conv2dParams] };
  /** Bottleneck blocks at 1/4 resolution, width 4C. */
  latent: DiCoBlockParams[];
  /** Upsample 3→2: 3×3 conv `[8C, 4C]` (no bias) then pixel-shuffle ×2, giving 2C channels. */
  up3_2: { body: [Conv2dParams] };
  /** 1×1 conv `[2C, 4C]` fusing the upsampled features with the encoder-level-2 skip. */
  reduce_chan_level2: Conv2dParams;
  /** Decoder blocks at 1/2 resolution, width 2C. */
  decoder_level_2: DiCoBlockParams[];
  /** Upsample 2→1: 3×3 conv `[4C, 2C]` (no bias) then pixel-shuffle ×2, giving C channels. */
  up2_1: { body: [Conv2dParams] };
  /** 1×1 conv `[2C, 2C]` fusing the upsampled features with the encoder-level-1 skip. */
  reduce_chan_level1: Conv2dParams;
  /** Decoder blocks at full resolution, width 2C. */
  decoder_level_1: DiCoBlockParams[];
  /** Output head: adaLN shift/scale `Linear(2C, 4C)` then 3×3 conv `[outChannels, 2C]` (both zero-init). */
  final_layer: { out_proj: Conv2dParams; adaLN_modulation: { "1": LinearParams } };
}

function named(
  hiddenSize: number,
  depth: DiCoConfig["depth"],
  mlpRatio: number,
): DiCoConfig {
  return {
    inChannels: 4,
    hiddenSize,
    depth,
    mlpRatio,
    classDropoutProb: 0.1,
    numClasses: 1000,
    learnSigma: true,
    inputSize: 32,
  };
}

/**
 * The official sizes (`DiCo_S` … `DiCo_H`, which ignore their kwargs: 4 latent
 * channels, 1000 classes, learn_sigma, 32×32 latents of 256² images), plus
 * `DiCo-T`, **this project's own** tiny config for 32×32 single-channel data
 * with 10 classes (MNIST-like); it is not from the paper.
 */
export const configs: Readonly<Record<string, DiCoConfig>> = {
  "DiCo-S": named(128, [5, 4, 4, 4, 4], 2),
  "DiCo-B": named(256, [5, 4, 4, 4, 4], 2),
  "DiCo-L": named(352, [9, 8, 9, 8, 9], 2),
  "DiCo-XL": named(416, [9, 9, 10, 9, 9], 2),
  "DiCo-H": named(416, [14, 12, 10, 12, 14], 4),
  "DiCo-T": {
    inChannels: 1,
    hiddenSize: 32,
    depth: [1, 1, 2, 1, 1],
    mlpRatio: 2,
    classDropoutProb: 0.1,
    numClasses: 10,
    learnSigma: true,
    inputSize: 32,
  },
};

function checkConfig(c: DiCoConfig): DiCoConfig {
  const bad = (m: string) => {
    throw new DifflabError(`DiCo config: ${m}`);
  };
  const posInt = (v: number) => Number.isInteger(v) && v >= 1;
  if (!posInt(c.inChannels)) bad(`inChannels must be a positive integer, got ${c.inChannels}`);
  if (!posInt(c.hiddenSize) || c.hiddenSize % 2) bad(`hiddenSize must be a positive even integer, got ${c.hiddenSize}`);
  if (!Array.isArray(c.depth) || c.depth.length !== 5 || !c.depth.every((d) => Number.isInteger(d) && d >= 0)) {
    bad(`depth must be 5 non-negative integers, got ${JSON.stringify(c.depth)}`);
  }
  if (!(c.mlpRatio > 0) || Math.floor(c.mlpRatio * c.hiddenSize) < 1) {
    bad(`mlpRatio must be positive, got ${c.mlpRatio}`);
  }
  if (!posInt(c.numClasses)) bad(`numClasses must be a positive integer, got ${c.numClasses}`);
  if (!(c.classDropoutProb >= 0 && c.classDropoutProb <= 1)) {
    bad(`classDropoutProb must be in [0, 1], got ${c.classDropoutProb}`);
  }
  return c;
}

/** Block width of each stage: C, 2C, 4C, 2C, **2C**. */
function stageWidths(c: DiCoConfig): number[] {
  const C = c.hiddenSize;
  return [C, 2 * C, 4 * C, 2 * C, 2 * C];
}

function outChannels(c: DiCoConfig): number {
  return c.learnSigma ? 2 * c.inChannels : c.inChannels;
}

type InitKind =
  | { kind: "xavier"; fans?: [number, number] }
  | { kind: "normal"; std: number }
  | { kind: "zeros" };

interface Spec {
  name: string;
  shape: number[];
  init: InitKind;
}

/** Every parameter in official registration order, with the official initialiser. */
function specs(config: DiCoConfig): Spec[] {
  const c = checkConfig(config);
  const C = c.hiddenSize, out: Spec[] = [];
  const X: InitKind = { kind: "xavier" },
    Z: InitKind = { kind: "zeros" },
    N02: InitKind = { kind: "normal", std: 0.02 };
  const add = (name: string, shape: number[], init: InitKind) => out.push({ name, shape, init });
  const conv = (name: string, o: number, i: number, k: number, bias = true, init: InitKind = X) => {
    add(`${name}.weight`, [o, i, k, k], init);
    if (bias) add(`${name}.bias`, [o], Z);
  };
  // The stem is xavier-initialised on its [out, in·9] view (like a patch-embedding linear).
  add("x_embedder.proj.weight", [C, c.inChannels, 3, 3], { kind: "xavier", fans: [c.inChannels * 9, C] });
  add("x_embedder.proj.bias", [C], Z);
  const temb = (name: string, D: number) => {
    add(`${name}.mlp.0.weight`, [D, 256], N02);
    add(`${name}.mlp.0.bias`, [D], Z);
    add(`${name}.mlp.2.weight`, [D, D], N02);
    add(`${name}.mlp.2.bias`, [D], Z);
  };
  temb("t_embedder_1", C);
  const rows = c.numClasses + (c.classDropoutProb > 0 ? 1 : 0);
  [C, 2 * C, 4 * C].forEach((D, i) => add(`y_embedder.embedding_table_${i}.weight`, [rows, D], N02));
  temb("t_embedder_2", 2 * C);
  temb("t_embedder_3", 4 * C);
  const F = (D: number) => Math.floor(c.mlpRatio * D);
  const blocks = (stage: Stage, n: number, D: number) => {
    for (let b = 0; b < n; b++) {
      const p = `${stage}.${b}`;
      conv(`${p}.conv1`, D, D, 1);
      add(`${p}.conv2.weight`, [D, 1, 3, 3], X);
      add(`${p}.conv2.bias`, [D], Z);
      conv(`${p}.conv3`, D, D, 1);
      conv(`${p}.ca.1`, D, D, 1);
      conv(`${p}.conv4`, F(D), D, 1);
      conv(`${p}.conv5`, D, F(D), 1);
      add(`${p}.adaLN_modulation.1.weight`, [6 * D, D], Z);
      add(`${p}.adaLN_modulation.1.bias`, [6 * D], Z);
    }
  };
  const [d0, d1, d2, d3, d4] = c.depth;
  blocks("encoder_level_1", d0, C);
  conv("down1_2.body.0", C / 2, C, 3, false);
  blocks("encoder_level_2", d1, 2 * C);
  conv("down2_3.body.0", C, 2 * C, 3, false);
  blocks("latent", d2, 4 * C);
  conv("up3_2.body.0", 8 * C, 4 * C, 3, false);
  conv("reduce_chan_level2", 2 * C, 4 * C, 1);
  blocks("decoder_level_2", d3, 2 * C);
  conv("up2_1.body.0", 4 * C, 2 * C, 3, false);
  conv("reduce_chan_level1", 2 * C, 2 * C, 1);
  blocks("decoder_level_1", d4, 2 * C);
  conv("final_layer.out_proj", outChannels(c), 2 * C, 3, true, Z);
  add("final_layer.adaLN_modulation.1.weight", [4 * C, 2 * C], Z);
  add("final_layer.adaLN_modulation.1.bias", [4 * C], Z);
  return out;
}

/** Official parameter names and shapes (no allocation). */
export function paramShapes(config: DiCoConfig): Record<string, number[]> {
  return Object.fromEntries(specs(config).map((s) => [s.name, s.shape]));
}

/**
 * Fresh parameters with the official `initialize_weights`: xavier_uniform on
 * every conv/linear weight (the stem on its [out, in·9] view) with zero
 * biases, N(0, 0.02) label tables and timestep-MLP weights, and zeros for
 * every adaLN modulation and the output conv, so the model starts at exactly 0.
 */
export function init(key: Key, config: DiCoConfig): DiCoParams {
  const sp = specs(config);
  const keys = random.split(key, sp.length);
  const flat: Record<string, Tensor> = {};
  sp.forEach((s, i) => {
    const k = keys[i];
    flat[s.name] = s.init.kind === "xavier"
      ? xavierUniform(k, s.shape, { fans: s.init.fans })
      : s.init.kind === "normal"
      ? normalInit(k, s.shape, { std: s.init.std })
      : zerosInit(s.shape);
  });
  return unflattenTree(flat) as DiCoParams;
}

/** What the analysis hooks see inside each block (see {@link DiCoApplyOptions.tap}). */
export type TapPoint = "conv" | "gate" | "cca";

/** Options of {@link apply}. */
export interface DiCoApplyOptions extends ApplyOptions {
  /** Force the CFG null label where true (bool [N]), shared by all three label tables. */
  forceDrop?: Tensor;
  /**
   * Replace Compact Channel Attention's sigmoid gate by 1: `true` for every
   * block, or a list of block names such as `"latent.0"` (ablation/analysis).
   */
  disableCca?: boolean | readonly string[];
  /**
   * Called inside every block with the post-GELU conv-module features
   * (`"conv"`, before CCA, NCHW), the CCA gate (`"gate"`, `[N, D, 1, 1]`,
   * only when CCA is on) and the CCA output (`"cca"`, before conv3, NCHW);
   * `block` is e.g. `"encoder_level_1.0"`.
   */
  tap?: (block: string, point: TapPoint, h: Tensor) => void;
}

function conv(p: Conv2dParams, x: Tensor, padding = 0, groups = 1): Tensor {
  return conv2dApply(p, x, { padding, groups });
}

function col(v: Tensor): Tensor {
  return ops.reshape(v, [v.shape[0], v.shape[1], 1, 1]);
}

/** Per-pixel LayerNorm over channels (DiCo's LayerNorm2d, eps 1e-6, no affine). */
function ln2d(x: Tensor): Tensor {
  return layerNormalize(x, { axis: 1, eps: 1e-6 });
}

/** One `DiCoBlock.forward(inp, c)`. */
export function blockApply(
  p: DiCoBlockParams,
  x: Tensor,
  c: Tensor,
  opts: { cca?: boolean; name?: string; tap?: DiCoApplyOptions["tap"] } = {},
): Tensor {
  const D = x.shape[1];
  const [sh1, sc1, g1, sh2, sc2, g2] = ops.split(linearApply(p.adaLN_modulation["1"], silu(c)), 6, 1);
  let h = modulate(ln2d(x), sh1, sc1, { axis: 1 });
  h = gelu(conv(p.conv2, conv(p.conv1, h), 1, D));
  opts.tap?.(opts.name ?? "", "conv", h);
  if (opts.cca ?? true) {
    const gate = ops.sigmoid(conv(p.ca["1"], ops.mean(h, { axis: [2, 3], keepdims: true })));
    opts.tap?.(opts.name ?? "", "gate", gate);
    h = ops.mul(h, gate);
  }
  opts.tap?.(opts.name ?? "", "cca", h);
  const x1 = ops.add(x, ops.mul(col(g1), conv(p.conv3, h)));
  const f = conv(p.conv5, gelu(conv(p.conv4, modulate(ln2d(x1), sh2, sc2, { axis: 1 }))));
  return ops.add(x1, ops.mul(col(g2), f));
}

/**
 * DiCo forward: `x [N, inChannels, H, W]` (H, W divisible by 4), `t [N]`
 * integer diffusion steps, `y [N]` labels (K = null class) to
 * `[N, outChannels, H, W]`. In training mode labels drop to the null class
 * with `classDropoutProb` (needs `opts.key`).
 */
export function apply(
  params: DiCoParams,
  x: Tensor,
  t: Tensor,
  y: Tensor,
  config: DiCoConfig,
  opts: DiCoApplyOptions = {},
): Tensor {
  const c = checkConfig(config);
  if (!(x instanceof Tensor) || x.ndim !== 4 || x.shape[1] !== c.inChannels || x.shape[2] % 4 || x.shape[3] % 4) {
    throw new ShapeError(
      `DiCo.apply: x must be [N, ${c.inChannels}, H, W] with H and W divisible by 4, got ${
        x instanceof Tensor ? fmtShape(x.shape) : typeof x
      }`,
    );
  }
  const N = x.shape[0];
  for (const [n, v] of [["t", t], ["y", y]] as const) {
    if (!(v instanceof Tensor) || v.ndim !== 1 || v.shape[0] !== N) {
      throw new ShapeError(
        `DiCo.apply: ${n} must be [${N}], got ${v instanceof Tensor ? fmtShape(v.shape) : typeof v}`,
      );
    }
  }
  let ids = y.dtype === "i32" ? y : ops.cast(y, "i32");
  const pDrop = c.classDropoutProb;
  if ((opts.train && pDrop > 0) || opts.forceDrop !== undefined) {
    if (opts.train && pDrop > 0 && opts.forceDrop === undefined && opts.key === undefined) {
      throw new DifflabError(`DiCo.apply: training with classDropoutProb ${pDrop} needs opts.key`);
    }
    if (pDrop <= 0) throw new DifflabError(`DiCo.apply: forceDrop needs a null row (classDropoutProb > 0)`);
    ids = labelDrop(ids, c.numClasses, { p: pDrop, key: opts.key, forceDrop: opts.forceDrop });
  }
  const ye = params.y_embedder;
  const cond = [
    ops.add(timestepEmbedderApply(params.t_embedder_1, t), ops.take(ye.embedding_table_0.weight, ids, 0)),
    ops.add(timestepEmbedderApply(params.t_embedder_2, t), ops.take(ye.embedding_table_1.weight, ids, 0)),
    ops.add(timestepEmbedderApply(params.t_embedder_3, t), ops.take(ye.embedding_table_2.weight, ids, 0)),
  ];
  const off = opts.disableCca;
  const run = (stage: Stage, h: Tensor, cv: Tensor) => {
    // A stage of depth 0 has no entries in the state_dict, hence no key in the record.
    (params[stage] ?? []).forEach((bp, i) => {
      const name = `${stage}.${i}`;
      const cca = !(off === true || (Array.isArray(off) && off.includes(name)));
      const hin = h;
      // A tap may hold on to tensors from inside the block, so only untapped runs get a scope per block.
      h = opts.tap
        ? blockApply(bp, hin, cv, { cca, name, tap: opts.tap })
        : tidy(() => blockApply(bp, hin, cv, { cca, name }));
    });
    return h;
  };
  const e1 = run("encoder_level_1", conv(params.x_embedder.proj, x, 1), cond[0]);
  const e2 = run("encoder_level_2", pixelUnshuffle(conv(params.down1_2.body[0], e1, 1), 2), cond[1]);
  const lat = run("latent", pixelUnshuffle(conv(params.down2_3.body[0], e2, 1), 2), cond[2]);
  const u2 = ops.concat([pixelShuffle(conv(params.up3_2.body[0], lat, 1), 2), e2], 1);
  const d2 = run("decoder_level_2", conv(params.reduce_chan_level2, u2), cond[1]);
  const u1 = ops.concat([pixelShuffle(conv(params.up2_1.body[0], d2, 1), 2), e1], 1);
  const d1 = run("decoder_level_1", conv(params.reduce_chan_level1, u1), cond[1]);
  const fl = params.final_layer;
  const [shift, scale] = ops.split(linearApply(fl.adaLN_modulation["1"], silu(cond[1])), 2, 1);
  return conv(fl.out_proj, modulate(ln2d(d1), shift, scale, { axis: 1 }), 1);
}

/**
 * Multiply-accumulates of one forward at batch 1 on `inputSize²` inputs,
 * counting every conv and linear (the official `profile_macs` figures).
 */
export function flops(config: DiCoConfig): number {
  const c = checkConfig(config);
  const C = c.hiddenSize, S = c.inputSize;
  const A = [S * S, (S / 2) ** 2, (S / 4) ** 2];
  const convM = (o: number, i: number, k: number, area: number, g = 1) => o * (i / g) * k * k * area;
  const block = (D: number, area: number) => {
    const F = Math.floor(c.mlpRatio * D);
    return D * 6 * D + convM(D, D, 1, area) * 2 + convM(D, D, 3, area, D) + D * D + 2 * D * F * area;
  };
  const temb = (D: number) => 256 * D + D * D;
  const [w, d] = [stageWidths(c), c.depth];
  const areas = [A[0], A[1], A[2], A[1], A[0]];
  let m = convM(C, c.inChannels, 3, A[0]) + temb(C) + temb(2 * C) + temb(4 * C);
  for (let s = 0; s < 5; s++) m += d[s] * block(w[s], areas[s]);
  m += convM(C / 2, C, 3, A[0]) + convM(C, 2 * C, 3, A[1]); // downsamples
  m += convM(8 * C, 4 * C, 3, A[2]) + convM(2 * C, 4 * C, 1, A[1]); // up3_2 + reduce 2
  m += convM(4 * C, 2 * C, 3, A[1]) + convM(2 * C, 2 * C, 1, A[0]); // up2_1 + reduce 1
  m += 2 * C * 4 * C + convM(outChannels(c), 2 * C, 3, A[0]);
  return m;
}

/** Builds a config from the official `DiCo(**kwargs)` constructor arguments (its defaults included). */
export function configFromOfficial(kwargs: Record<string, unknown>): DiCoConfig {
  const depth = kw<number[]>(kwargs, "depth", [2, 5, 8, 5, 2]);
  if (!Array.isArray(depth) || depth.length !== 5) {
    throw new DifflabError(`DiCo.configFromOfficial: depth must be a list of 5 integers, got ${JSON.stringify(depth)}`);
  }
  return checkConfig({
    inChannels: kw(kwargs, "in_channels", 4),
    hiddenSize: kw(kwargs, "hidden_size", 1152),
    depth: depth as unknown as DiCoConfig["depth"],
    mlpRatio: kw(kwargs, "mlp_ratio", 4),
    classDropoutProb: kw(kwargs, "class_dropout_prob", 0.1),
    numClasses: kw(kwargs, "num_classes", 1000),
    learnSigma: kw(kwargs, "learn_sigma", true),
    inputSize: kw(kwargs, "input_size", 32),
  });
}

/** DiCo as a {@link ModelDef}. */
export const def: ModelDef<DiCoConfig, DiCoParams> = {
  family: "DiCo",
  configs,
  init,
  apply: (p, x, t, y, c, o) => apply(p, x, t, y, c, o),
  flops,
  paramShapes,
  configFromOfficial,
};
