/**
 * @file DiT (Peebles & Xie, facebookresearch/DiT): a ViT over latent patches
 * with adaLN-Zero conditioning on timestep + class. Parameters mirror the
 * official module tree, so `flattenTree(params)` is the official state_dict.
 * Shared pieces (embedders, blocks, final layer) are exported for DyDiT.
 */
import { stopGradient } from "../autograd/autograd.ts";
import { geluTanh, silu } from "../nn/activations.ts";
import { attention, mergeHeads } from "../nn/attention.ts";
import { labelEmbedderApply, sincosPosEmbed2d, timestepEmbedderApply } from "../nn/embed.ts";
import { initWeightBias, xavierUniform, zerosInit } from "../nn/init.ts";
import { linearApply, type LinearParams } from "../nn/linear.ts";
import { layerNormalize, modulate } from "../nn/norm.ts";
import { unpatchify } from "../nn/spatial.ts";
import { DifflabError, fmtShape, ShapeError } from "../tensor/errors.ts";
import * as ops from "../tensor/ops.ts";
import * as random from "../tensor/random.ts";
import type { Key } from "../tensor/random.ts";
import { type Tensor, tidy } from "../tensor/tensor.ts";
import { type ApplyOptions, kw, type ModelDef } from "./common.ts";

/** Constructor arguments of the official `DiT` class, in camelCase. */
export interface DiTConfig {
  /** Side length of the square input (latent) image, in pixels (`input_size`). */
  inputSize: number;
  /** Side of each square patch; the model sees `(inputSize / patchSize)²` tokens. */
  patchSize: number;
  /** Channels of the input image / latent (4 for SD-VAE latents, 1 for MNIST). */
  inChannels: number;
  /** Token width D of every transformer block. */
  hiddenSize: number;
  /** Number of DiT blocks. */
  depth: number;
  /** Attention heads per block; must divide `hiddenSize`. */
  numHeads: number;
  /** MLP hidden width as a multiple of `hiddenSize` (floored). */
  mlpRatio: number;
  /** Probability of replacing the label by the null class during training (enables CFG); 0 drops the null row. */
  classDropoutProb: number;
  /** Number of class labels (excluding the null class). */
  numClasses: number;
  /** Also predict the variance: output has `2·inChannels` channels instead of `inChannels`. */
  learnSigma: boolean;
}

const BASE = { inputSize: 32, inChannels: 4, mlpRatio: 4, classDropoutProb: 0.1, numClasses: 1000, learnSigma: true };
const TINY = { ...BASE, inChannels: 1, numClasses: 10, depth: 6, hiddenSize: 128, numHeads: 4 };
/** Narrower and shallower than TINY: about 4x cheaper per image, for CPU-budget training. */
const NANO = { ...TINY, depth: 4, hiddenSize: 64 };
const SIZES: Record<string, [number, number, number]> = {
  S: [12, 384, 6],
  B: [12, 768, 12],
  L: [24, 1024, 16],
  XL: [28, 1152, 16],
};

/**
 * Every named DiT config (256px latents, 1000 classes) plus this project's small configs for 32x32
 * single-channel data with 10 classes: `DiT-T/2`, `DiT-T/4` (D 128, depth 6) and `DiT-N/2`, `DiT-N/4`
 * (D 64, depth 4).
 */
export const configs: Readonly<Record<string, DiTConfig>> = Object.freeze({
  ...Object.fromEntries(
    Object.entries(SIZES).flatMap(([s, [depth, hiddenSize, numHeads]]) =>
      [2, 4, 8].map((p) => [`DiT-${s}/${p}`, { ...BASE, depth, hiddenSize, numHeads, patchSize: p }])
    ),
  ),
  // Project-own: 32x32 single-channel digits, 10 classes; small enough to train on 2 CPU cores.
  "DiT-T/2": { ...TINY, patchSize: 2 },
  "DiT-T/4": { ...TINY, patchSize: 4 },
  "DiT-N/2": { ...NANO, patchSize: 2 },
  "DiT-N/4": { ...NANO, patchSize: 4 },
});

/** Output channels: 2C with learned sigma. */
export function outChannels(c: DiTConfig): number {
  return c.learnSigma ? 2 * c.inChannels : c.inChannels;
}

function tokens(c: DiTConfig): number {
  return (c.inputSize / c.patchSize) ** 2;
}

/** Official parameter names and shapes. */
export function paramShapes(c: DiTConfig): Record<string, number[]> {
  const D = c.hiddenSize, p = c.patchSize, H = Math.floor(D * c.mlpRatio);
  const s: Record<string, number[]> = {
    pos_embed: [1, tokens(c), D],
    "x_embedder.proj.weight": [D, c.inChannels, p, p],
    "x_embedder.proj.bias": [D],
    "t_embedder.mlp.0.weight": [D, 256],
    "t_embedder.mlp.0.bias": [D],
    "t_embedder.mlp.2.weight": [D, D],
    "t_embedder.mlp.2.bias": [D],
    "y_embedder.embedding_table.weight": [c.numClasses + (c.classDropoutProb > 0 ? 1 : 0), D],
  };
  for (let i = 0; i < c.depth; i++) {
    const b = `blocks.${i}.`;
    Object.assign(s, {
      [b + "attn.qkv.weight"]: [3 * D, D],
      [b + "attn.qkv.bias"]: [3 * D],
      [b + "attn.proj.weight"]: [D, D],
      [b + "attn.proj.bias"]: [D],
      [b + "mlp.fc1.weight"]: [H, D],
      [b + "mlp.fc1.bias"]: [H],
      [b + "mlp.fc2.weight"]: [D, H],
      [b + "mlp.fc2.bias"]: [D],
      [b + "adaLN_modulation.1.weight"]: [6 * D, D],
      [b + "adaLN_modulation.1.bias"]: [6 * D],
    });
  }
  Object.assign(s, {
    "final_layer.linear.weight": [p * p * outChannels(c), D],
    "final_layer.linear.bias": [p * p * outChannels(c)],
    "final_layer.adaLN_modulation.1.weight": [2 * D, D],
    "final_layer.adaLN_modulation.1.bias": [2 * D],
  });
  return s;
}

/** Parameters of one DiT block. */
export interface DiTBlockParams {
  /** Self-attention: fused `qkv [3D, D]` and output `proj [D, D]`. */
  attn: { qkv: LinearParams; proj: LinearParams };
  /** Pointwise MLP: `fc1 [H, D]` then GELU(tanh) then `fc2 [D, H]`, H = D·mlpRatio. */
  mlp: { fc1: LinearParams; fc2: LinearParams };
  /** adaLN-Zero: `Linear(D, 6D)` after SiLU giving shift/scale/gate for attention and MLP (zero-initialised). */
  adaLN_modulation: { "1": LinearParams };
}

/** Parameters of a DiT (official names). */
export interface DiTParams {
  /** Fixed 2-D sin-cos position embedding `[1, T, D]` (not trained). */
  pos_embed: Tensor;
  /** Patch embedding: a p×p stride-p conv stored as `proj.weight [D, C, p, p]`, `proj.bias [D]`. */
  x_embedder: { proj: LinearParams };
  /** Timestep MLP on 256 sinusoidal features: `mlp.0 [D, 256]`, `mlp.2 [D, D]`. */
  t_embedder: { mlp: { "0": LinearParams; "2": LinearParams } };
  /** Class table `[numClasses (+1 null class), D]`. */
  y_embedder: { embedding_table: { weight: Tensor } };
  /** The `depth` transformer blocks, in order. */
  blocks: DiTBlockParams[];
  /** adaLN-modulated output head: `linear [p²·outChannels, D]`, `adaLN_modulation.1 [2D, D]`. */
  final_layer: { linear: LinearParams; adaLN_modulation: { "1": LinearParams } };
}

const xavierLinear = (key: Key, out: number, inn: number): LinearParams =>
  initWeightBias(key, [out, inn], true, "xavier") as LinearParams;
const zeroLinear = (out: number, inn: number): LinearParams => ({
  weight: zerosInit([out, inn]),
  bias: zerosInit([out]),
});

/** Fresh parameters initialised as DiT's `initialize_weights` (adaLN-Zero: a new model outputs exactly 0). */
export function init(key: Key, c: DiTConfig): DiTParams {
  validate(c);
  const D = c.hiddenSize, p = c.patchSize, H = Math.floor(D * c.mlpRatio);
  const [kx, kt0, kt2, ky, kb] = random.split(key, 5);
  const grid = c.inputSize / p;
  const blockKeys = random.split(kb, c.depth);
  return {
    pos_embed: ops.reshape(sincosPosEmbed2d(D, grid), [1, grid * grid, D]),
    x_embedder: {
      proj: {
        // xavier on the conv weight seen as [D, C·p·p], as the official code does.
        weight: ops.reshape(xavierUniform(kx, [D, c.inChannels * p * p]), [D, c.inChannels, p, p]),
        bias: zerosInit([D]),
      },
    },
    t_embedder: {
      mlp: {
        "0": initWeightBias(kt0, [D, 256], true, { normal: 0.02 }) as LinearParams,
        "2": initWeightBias(kt2, [D, D], true, { normal: 0.02 }) as LinearParams,
      },
    },
    y_embedder: {
      embedding_table: {
        weight: ops.mul(random.normal(ky, [c.numClasses + (c.classDropoutProb > 0 ? 1 : 0), D]), 0.02),
      },
    },
    blocks: blockKeys.map((k) => {
      const [k1, k2, k3, k4] = random.split(k, 4);
      return {
        attn: { qkv: xavierLinear(k1, 3 * D, D), proj: xavierLinear(k2, D, D) },
        mlp: { fc1: xavierLinear(k3, H, D), fc2: xavierLinear(k4, D, H) },
        adaLN_modulation: { "1": zeroLinear(6 * D, D) },
      };
    }),
    final_layer: {
      linear: zeroLinear(p * p * outChannels(c), D),
      adaLN_modulation: { "1": zeroLinear(2 * D, D) },
    },
  };
}

function validate(c: DiTConfig) {
  if (c.inputSize % c.patchSize) {
    throw new DifflabError(`DiT: input size ${c.inputSize} does not divide by patch size ${c.patchSize}`);
  }
  if (c.hiddenSize % c.numHeads) {
    throw new DifflabError(`DiT: hidden size ${c.hiddenSize} does not divide into ${c.numHeads} heads`);
  }
}

/** Checks the NCHW input against the config. */
export function checkInput(
  family: string,
  x: Tensor,
  t: Tensor,
  y: Tensor,
  c: { inputSize: number; inChannels: number },
) {
  const [N, C, H, W] = x.shape;
  if (x.ndim !== 4 || C !== c.inChannels || H !== c.inputSize || W !== c.inputSize) {
    throw new ShapeError(
      `${family}: x must be [N, ${c.inChannels}, ${c.inputSize}, ${c.inputSize}], got ${fmtShape(x.shape)}`,
    );
  }
  if (t.ndim !== 1 || t.shape[0] !== N) throw new ShapeError(`${family}: t must be [${N}], got ${fmtShape(t.shape)}`);
  if (y.ndim !== 1 || y.shape[0] !== N) throw new ShapeError(`${family}: y must be [${N}], got ${fmtShape(y.shape)}`);
}

/** Patch embedding + fixed positional table: `[N, C, H, W]` to tokens `[N, T, D]`. */
export function embedPatches(p: DiTParams, x: Tensor, c: DiTConfig): Tensor {
  const w = p.x_embedder.proj;
  const h = ops.add(ops.conv2d(x, w.weight, { stride: c.patchSize }), ops.reshape(w.bias!, [1, -1, 1, 1]));
  const [N, D] = h.shape;
  const tok = ops.transpose(ops.reshape(h, [N, D, -1]), [0, 2, 1]);
  // pos_embed is a frozen buffer in the official code (requires_grad=False).
  return ops.add(tok, stopGradient(p.pos_embed));
}

/** Timestep embedding and class embedding (with train-time label dropout). */
export function embedConditions(
  p: DiTParams,
  t: Tensor,
  y: Tensor,
  c: DiTConfig,
  opts: ApplyOptions,
): { tEmb: Tensor; c: Tensor } {
  const tEmb = timestepEmbedderApply(p.t_embedder, t);
  const yEmb = labelEmbedderApply(p.y_embedder, y, {
    numClasses: c.numClasses,
    dropoutProb: c.classDropoutProb,
    train: opts.train,
    key: opts.key,
  });
  return { tEmb, c: ops.add(tEmb, yEmb) };
}

/** The six adaLN chunks of a block (shift/scale/gate for attention, then for the MLP), each `[N, D]`. */
export function adaLN(p: { "1": LinearParams }, c: Tensor, n: number): Tensor[] {
  return ops.split(linearApply(p["1"], silu(c)), n, 1);
}

/** LayerNorm without affine, eps 1e-6 (DiT's norm1/norm2/norm_final). */
export function norm(x: Tensor): Tensor {
  return layerNormalize(x, { eps: 1e-6 });
}

/** Multi-head self-attention output per head, before the projection: `[N, heads, T, hd]`. */
export function attnHeads(p: { qkv: LinearParams }, x: Tensor, heads: number, hd = x.shape[2] / heads): Tensor {
  const [B, T] = x.shape;
  const qkv = ops.transpose(ops.reshape(linearApply(p.qkv, x), [B, T, 3, heads, hd]), [2, 0, 3, 1, 4]);
  const [q, k, v] = ops.split(qkv, 3, 0).map((t) => ops.reshape(t, [B, heads, T, hd]));
  return attention(q, k, v);
}

/** One DiT block: two gated residual branches (attention, MLP). */
export function block(p: DiTBlockParams, x: Tensor, cond: Tensor, heads: number): Tensor {
  const [shiftMsa, scaleMsa, gateMsa, shiftMlp, scaleMlp, gateMlp] = adaLN(p.adaLN_modulation, cond, 6);
  const a = linearApply(p.attn.proj, mergeHeads(attnHeads(p.attn, modulate(norm(x), shiftMsa, scaleMsa), heads)));
  x = ops.add(x, ops.mul(ops.expandDims(gateMsa, 1), a));
  const h = modulate(norm(x), shiftMlp, scaleMlp);
  const m = linearApply(p.mlp.fc2, geluTanh(linearApply(p.mlp.fc1, h)));
  return ops.add(x, ops.mul(ops.expandDims(gateMlp, 1), m));
}

/** Final adaLN layer and unpatchify: tokens to `[N, outChannels, H, W]`. */
export function finalLayer(p: DiTParams, x: Tensor, cond: Tensor, c: DiTConfig): Tensor {
  const [shift, scale] = adaLN(p.final_layer.adaLN_modulation, cond, 2);
  const o = linearApply(p.final_layer.linear, modulate(norm(x), shift, scale));
  return unpatchify(o, c.patchSize, outChannels(c));
}

/** Forward pass: `x [N, C, H, W]`, `t [N]` diffusion steps, `y [N]` labels -> `[N, outChannels, H, W]`. */
export function apply(p: DiTParams, x: Tensor, t: Tensor, y: Tensor, c: DiTConfig, opts: ApplyOptions = {}): Tensor {
  checkInput("DiT", x, t, y, c);
  let h = embedPatches(p, x, c);
  const { c: cond } = embedConditions(p, t, y, c, opts);
  // A scope per block frees its intermediates at inference (traced ones survive for backward).
  for (const b of p.blocks) h = tidy(() => block(b, h, cond, c.numHeads));
  return finalLayer(p, h, cond, c);
}

/** Multiply-accumulates of one forward pass at batch 1 (linear, conv and attention matmuls). */
export function flops(c: DiTConfig): number {
  const D = c.hiddenSize, T = tokens(c), p = c.patchSize, H = Math.floor(D * c.mlpRatio);
  const embed = T * D * c.inChannels * p * p + 256 * D + D * D;
  const blockMacs = 6 * D * D + T * D * 3 * D + 2 * T * T * D + T * D * D + 2 * T * D * H;
  const final = 2 * D * D + T * D * p * p * outChannels(c);
  return embed + c.depth * blockMacs + final;
}

/** Config from the official constructor kwargs. */
export function configFromOfficial(k: Record<string, unknown>): DiTConfig {
  return {
    inputSize: kw(k, "input_size", 32),
    patchSize: kw(k, "patch_size", 2),
    inChannels: kw(k, "in_channels", 4),
    hiddenSize: kw(k, "hidden_size", 1152),
    depth: kw(k, "depth", 28),
    numHeads: kw(k, "num_heads", 16),
    mlpRatio: kw(k, "mlp_ratio", 4),
    classDropoutProb: kw(k, "class_dropout_prob", 0.1),
    numClasses: kw(k, "num_classes", 1000),
    learnSigma: kw(k, "learn_sigma", true),
  };
}

/** DiT as a registry entry. */
export const def: ModelDef<DiTConfig, DiTParams> = {
  family: "DiT",
  configs,
  init,
  apply,
  flops,
  paramShapes,
  frozen: ["pos_embed"],
  configFromOfficial,
};
