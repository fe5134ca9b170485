/**
 * @file DiMR (multi-resolution diffusion with time-dependent layer norm,
 * arXiv 2406.09416), ported from the official PyTorch `MRModel`
 * (qihao067/DiMR `libs/core/blocks.py`, `sigmoid/module.py`).
 *
 * A chain of branches ("stages"), lowest resolution first. Each branch
 * re-reads the raw noisy input (area-downsampled by `imageInputRatio`),
 * patchifies it with a strided conv, adds learned position embeddings and
 * the previous branch's features (TD-LN → Linear → channel-last pixel
 * shuffle → TD-LN), runs a U-ViT-style stack of Transformer (with a class
 * token) or ConvNeXt blocks with long skips, and emits its own prediction.
 * Time enters only through time-dependent parameters (TDPs) of the norms:
 * `value(τ) = p1 + sigmoid(τ·(w + 1) + b)·(p0 − p1)` with `τ = log_snr / 4`.
 *
 * Parameter records mirror the official module tree (`stages.K.blocks.J.…`,
 * each TDP as `param0/param1/nodecay_weight/nodecay_bias`).
 */
import { dropout, gelu } from "../nn/activations.ts";
import { attention, mergeHeads } from "../nn/attention.ts";
import { conv2dApply, type Conv2dParams } from "../nn/conv.ts";
import { kaimingUniform, onesInit, truncNormalInit, uniformInit, zerosInit } from "../nn/init.ts";
import { linearApply, type LinearParams } from "../nn/linear.ts";
import { layerNormalize, rmsNormalize } from "../nn/norm.ts";
import { pixelShuffleChannelLast } from "../nn/spatial.ts";
import { unflattenTree } from "../nn/tree.ts";
import { stopGradient } from "../autograd/autograd.ts";
import { allocHost } from "../tensor/dtype.ts";
import { DifflabError, fmtShape, ShapeError } from "../tensor/errors.ts";
import * as ops from "../tensor/ops.ts";
import * as random from "../tensor/random.ts";
import type { Key } from "../tensor/random.ts";
import { fromHost, Tensor, tidy } from "../tensor/tensor.ts";
import type { ApplyOptions, ModelDef } from "./common.ts";

/** One branch of an MRModel (the official `stage_configs[k]`). */
export interface DiMRStageConfig {
  /** Transformer branches carry a class token; ConvNeXt branches use a depthwise conv. */
  blockType: "TransformerBlock" | "ConvNeXtBlock";
  /** Token/channel width. */
  dim: number;
  /** Width of the gated MLP. */
  hiddenDim: number;
  /** Attention heads (Transformer branches). */
  numHeads?: number;
  /** Depthwise kernel size (ConvNeXt branches). */
  kernelSize?: number;
  /** `numBlocks // 2 * 2 + 1` blocks are built: an even count gets one extra block. */
  numBlocks: number;
  /** Size of the position table and of the branch's feature grid. */
  maxHeight: number;
  /** Width of the branch's feature grid (position table has `maxHeight·maxWidth` rows). */
  maxWidth: number;
  /** Area downsampling of the raw input before the patch conv. */
  imageInputRatio: number;
  /** Patch conv kernel = stride. */
  inputFeatureRatio: number;
  /** Output conv kernel (padding k // 2). */
  finalKernelSize: number;
  /** Residual dropout (training only). */
  dropoutProb: number;
}

/** Norm used inside the blocks: time-dependent RMSNorm (the released configs), TD-LayerNorm, or plain RMSNorm. */
export type DiMRNormType = "TDRMSN" | "LN" | "RMSN";

/** A DiMR configuration (the official `MRModel` config). */
export interface DiMRConfig {
  /** Image/latent channels. */
  channels: number;
  /** Class-token table size (ImageNet: 1001, row 1000 is the CFG null class); absent = unconditional. */
  numClasses?: number;
  /** Detach the features passed to the next branch. */
  blockGradToLowres: boolean;
  /** Norm inside every block (see {@link DiMRNormType}); released configs use `"TDRMSN"`. */
  normType: DiMRNormType;
  /** Branches, lowest resolution first. */
  stages: readonly DiMRStageConfig[];
}

function transformer(
  dim: number,
  heads: number,
  numBlocks: number,
  maxHeight: number,
  inputFeatureRatio: number,
  imageInputRatio = 1,
): DiMRStageConfig {
  return {
    blockType: "TransformerBlock",
    dim,
    hiddenDim: 2 * dim,
    numHeads: heads,
    numBlocks,
    maxHeight,
    maxWidth: maxHeight,
    imageInputRatio,
    inputFeatureRatio,
    finalKernelSize: 3,
    dropoutProb: 0,
  };
}

function convnext(dim: number, numBlocks: number, maxHeight: number, inputFeatureRatio = 1): DiMRStageConfig {
  return {
    blockType: "ConvNeXtBlock",
    dim,
    hiddenDim: 2 * dim,
    kernelSize: 7,
    numBlocks,
    maxHeight,
    maxWidth: maxHeight,
    imageInputRatio: 1,
    inputFeatureRatio,
    finalKernelSize: 3,
    dropoutProb: 0,
  };
}

/**
 * The released configs (`configs/DiMR-{XL,G}-2R_imagenet256.py`: 4×32×32
 * latents, 1001 classes, TD-RMSNorm), plus `DiMR-T`, **this project's own**
 * tiny two-resolution config for 32×32 single-channel data with 10 classes
 * (row 10 is the null class); it is not from the paper.
 */
export const configs: Readonly<Record<string, DiMRConfig>> = {
  "DiMR-XL/2R": {
    channels: 4,
    numClasses: 1001,
    blockGradToLowres: false,
    normType: "TDRMSN",
    stages: [transformer(960, 16, 39, 16, 2), convnext(480, 20, 32)],
  },
  "DiMR-G/2R": {
    channels: 4,
    numClasses: 1001,
    blockGradToLowres: false,
    normType: "TDRMSN",
    stages: [transformer(1152, 16, 57, 16, 2), convnext(576, 29, 32)],
  },
  "DiMR-T": {
    channels: 1,
    numClasses: 11,
    blockGradToLowres: false,
    normType: "TDRMSN",
    stages: [transformer(32, 2, 3, 16, 2), convnext(16, 2, 32)],
  },
};

/** Blocks actually built for a branch: `numBlocks // 2 * 2 + 1`. */
export function blockCount(s: DiMRStageConfig): number {
  return Math.floor(s.numBlocks / 2) * 2 + 1;
}

/** Channel width of the features a branch passes on: its input plus every block output, concatenated. */
export function lowresDim(s: DiMRStageConfig): number {
  return s.dim * (blockCount(s) + 1);
}

function checkConfig(c: DiMRConfig): DiMRConfig {
  const bad = (m: string): never => {
    throw new DifflabError(`DiMR config: ${m}`);
  };
  const posInt = (v: unknown) => Number.isInteger(v) && (v as number) >= 1;
  if (!posInt(c.channels)) bad(`channels must be a positive integer, got ${c.channels}`);
  if (c.numClasses !== undefined && !posInt(c.numClasses)) {
    bad(`numClasses must be a positive integer, got ${c.numClasses}`);
  }
  if (!["TDRMSN", "LN", "RMSN"].includes(c.normType)) {
    bad(`normType "${c.normType}" is not supported (TDRMSN, LN, RMSN)`);
  }
  if (!Array.isArray(c.stages) || c.stages.length < 1) bad(`needs at least one stage`);
  c.stages.forEach((s, k) => {
    const at = `stage ${k}`;
    if (s.blockType !== "TransformerBlock" && s.blockType !== "ConvNeXtBlock") {
      bad(`${at}: unknown blockType "${s.blockType}"`);
    }
    for (
      const f of [
        "dim",
        "hiddenDim",
        "maxHeight",
        "maxWidth",
        "imageInputRatio",
        "inputFeatureRatio",
        "finalKernelSize",
      ] as const
    ) {
      if (!posInt(s[f])) bad(`${at}: ${f} must be a positive integer, got ${s[f]}`);
    }
    if (!(Number.isInteger(s.numBlocks) && s.numBlocks >= 0)) {
      bad(`${at}: numBlocks must be a non-negative integer, got ${s.numBlocks}`);
    }
    if (s.blockType === "TransformerBlock" && (!posInt(s.numHeads) || s.dim % s.numHeads!)) {
      bad(`${at}: numHeads ${s.numHeads} must divide dim ${s.dim}`);
    }
    if (s.blockType === "ConvNeXtBlock" && !posInt(s.kernelSize)) bad(`${at}: kernelSize must be a positive integer`);
    if (!(s.dropoutProb >= 0 && s.dropoutProb < 1)) bad(`${at}: dropoutProb must be in [0, 1), got ${s.dropoutProb}`);
    if (k > 0) {
      const r = Math.floor(s.maxHeight / c.stages[k - 1].maxHeight);
      if (r < 1) bad(`${at}: maxHeight ${s.maxHeight} is below the previous stage's ${c.stages[k - 1].maxHeight}`);
    }
  });
  return c;
}

type InitKind = "trunc" | "ones" | "zeros" | "torchW" | { torchB: number };

interface Spec {
  name: string;
  shape: number[];
  init: InitKind;
}

const TDP_PARTS = ["param0", "param1", "nodecay_weight", "nodecay_bias"] as const;

/** Every parameter in official registration order, with its default initialiser. */
function specs(config: DiMRConfig): Spec[] {
  const c = checkConfig(config);
  const out: Spec[] = [];
  const add = (name: string, shape: number[], init: InitKind) => out.push({ name, shape, init });
  // A TDP: param0 = param1 = the base init, nodecay_* = 0.
  const tdp = (name: string, d: number, base: "ones" | "zeros") =>
    TDP_PARTS.forEach((p, i) => add(`${name}.${p}`, [d], i < 2 ? base : "zeros"));
  const tdLn = (name: string, d: number) => {
    tdp(`${name}.weight`, d, "ones");
    tdp(`${name}.bias`, d, "zeros");
  };
  const norm = (name: string, d: number) => {
    if (c.normType === "TDRMSN") tdp(`${name}.scale`, d, "ones");
    else if (c.normType === "LN") tdLn(name, d);
    else add(`${name}.scale`, [d], "ones");
  };
  // common_layers.Linear: trunc_normal(0.02) weight, zero bias.
  const lin = (name: string, o: number, i: number, bias = true) => {
    add(`${name}.weight`, [o, i], "trunc");
    if (bias) add(`${name}.bias`, [o], "zeros");
  };
  // Plain nn.Conv2d keeps torch's default init.
  const conv = (name: string, o: number, i: number, k: number) => {
    add(`${name}.weight`, [o, i, k, k], "torchW");
    add(`${name}.bias`, [o], { torchB: i * k * k });
  };
  c.stages.forEach((s, k) => {
    const p = `stages.${k}`, D = s.dim;
    conv(`${p}.input_layer.1`, D, c.channels, s.inputFeatureRatio);
    add(`${p}.input_layer.3.position_embeddings.weight`, [s.maxHeight * s.maxWidth, D], "trunc");
    if (s.blockType === "TransformerBlock" && c.numClasses !== undefined) {
      add(`${p}.class_embeds.weight`, [c.numClasses, D], "trunc");
    }
    if (k > 0) {
      const prev = c.stages[k - 1], L = lowresDim(prev), r = Math.floor(s.maxHeight / prev.maxHeight);
      tdLn(`${p}.upsample.0`, L);
      lin(`${p}.upsample.1.kernel`, D * r * r, L);
      tdLn(`${p}.upsample.2`, D);
    }
    for (let b = 0; b < blockCount(s); b++) {
      const q = `${p}.blocks.${b}`;
      if (s.blockType === "TransformerBlock") {
        norm(`${q}.block1.norm`, D);
        lin(`${q}.block1.query_key_value`, 3 * D, D, false);
        lin(`${q}.block1.dense`, D, D);
      } else {
        const ks = s.kernelSize!;
        add(`${q}.block1.1.weight`, [D, 1, ks, ks], "torchW");
        add(`${q}.block1.1.bias`, [D], { torchB: ks * ks });
      }
      norm(`${q}.block2.norm`, D);
      lin(`${q}.block2.w0`, s.hiddenDim, D);
      lin(`${q}.block2.w1`, s.hiddenDim, D);
      lin(`${q}.block2.w2`, D, s.hiddenDim);
    }
    for (let j = 0; j < Math.floor(s.numBlocks / 2); j++) lin(`${p}.skip_denses.${j}`, D, 2 * D);
    tdLn(`${p}.output_layer.0`, D);
    conv(`${p}.output_layer.2`, c.channels, D, s.finalKernelSize);
  });
  return out;
}

/** Official parameter names and shapes (every TDP as its 4 tensors), without allocating. */
export function paramShapes(config: DiMRConfig): Record<string, number[]> {
  return Object.fromEntries(specs(config).map((s) => [s.name, s.shape]));
}

/** A time-dependent parameter's four tensors. */
export interface Tdp {
  /** Value `[d]` approached as the sigmoid gate → 1. */
  param0: Tensor;
  /** Value `[d]` approached as the sigmoid gate → 0. */
  param1: Tensor;
  /** Gate slope offset `w` `[d]`: the gate is `sigmoid(τ·(w + 1) + b)` (excluded from weight decay). */
  nodecay_weight: Tensor;
  /** Gate bias `b` `[d]` (excluded from weight decay). */
  nodecay_bias: Tensor;
}

/** A time-dependent LayerNorm (`sigmoid.module.LayerNorm`). */
export interface TdLnParams {
  /** Time-dependent elementwise scale (base init 1). */
  weight: Tdp;
  /** Time-dependent elementwise shift (base init 0). */
  bias: Tdp;
}

/** Norm parameters inside a block: `{scale: Tdp}` (TDRMSN), TD-LN, or `{scale: Tensor}` (RMSN). */
export type DiMRNormParams = { scale: Tdp | Tensor } | TdLnParams;

/** Gated MLP block (`MLPBlock`). */
export interface MlpBlockParams {
  /** Pre-norm applied to the block input. */
  norm: DiMRNormParams;
  /** Gate branch `Linear(D, hiddenDim)`, passed through GELU. */
  w0: LinearParams;
  /** Value branch `Linear(D, hiddenDim)`, multiplied by the GELU gate. */
  w1: LinearParams;
  /** Output projection `Linear(hiddenDim, D)`. */
  w2: LinearParams;
}

/** One Transformer or ConvNeXt block. */
export interface DiMRBlockParams {
  /** Token mixer: self-attention (norm, `query_key_value [3D, D]` without bias, `dense [D, D]`) or a depthwise conv `[D, 1, k, k]`. */
  block1: { norm: DiMRNormParams; query_key_value: LinearParams; dense: LinearParams } | { "1": Conv2dParams };
  /** Channel mixer: the gated MLP. */
  block2: MlpBlockParams;
}

/** One branch. */
export interface DiMRStageParams {
  /** Patch conv `[D, channels, r, r]` (stride r = inputFeatureRatio) and learned positions `[maxHeight·maxWidth, D]`. */
  input_layer: { "1": Conv2dParams; "3": { position_embeddings: { weight: Tensor } } };
  /** Class-token table `[numClasses, D]`; only on Transformer branches of a class-conditional model. */
  class_embeds?: { weight: Tensor };
  /** Previous-branch feature path (all but the first branch): TD-LN, `Linear(L, D·r²)` before pixel shuffle, TD-LN. */
  upsample?: [TdLnParams, { kernel: LinearParams }, TdLnParams];
  /** The branch's blocks: the first half feed long skips, then a middle block, then the second half. */
  blocks: DiMRBlockParams[];
  /** Long-skip fusions `Linear(2D, D)`, one per block of the second half. */
  skip_denses: LinearParams[];
  /** Prediction head: TD-LN then a conv `[channels, D, k, k]` (k = finalKernelSize). */
  output_layer: { "0": TdLnParams; "2": Conv2dParams };
}

/** Parameters of an MRModel. */
export interface DiMRParams {
  /** One parameter record per branch, lowest resolution first. */
  stages: DiMRStageParams[];
}

/**
 * Fresh parameters with the official defaults: trunc_normal(0.02) for
 * `common_layers.Linear`/`Embedding` weights (zero biases), torch's default
 * for the plain convs, ones/zeros for norm TDPs with `param0 = param1` and
 * `nodecay_* = 0` (so every TDP starts time-independent).
 */
export function init(key: Key, config: DiMRConfig): DiMRParams {
  const sp = specs(config);
  const keys = random.split(key, sp.length);
  const flat: Record<string, Tensor> = {};
  sp.forEach((s, i) => {
    const k = keys[i], init = s.init;
    // param1 starts as a copy of param0 (a separate buffer holding the same base init).
    if (s.name.endsWith(".param1")) flat[s.name] = ops.add(flat[s.name.slice(0, -7) + ".param0"], 0);
    else if (init === "trunc") flat[s.name] = truncNormalInit(k, s.shape, { std: 0.02 });
    else if (init === "ones") flat[s.name] = onesInit(s.shape);
    else if (init === "zeros") flat[s.name] = zerosInit(s.shape);
    else if (init === "torchW") flat[s.name] = kaimingUniform(k, s.shape);
    else flat[s.name] = uniformInit(k, s.shape, 1 / Math.sqrt(init.torchB));
  });
  return unflattenTree(flat) as DiMRParams;
}

/** Which parameters take weight decay (DiMR excludes every `nodecay_*` tensor); pass to AdamW's `decayMask`. */
export function decayMask(path: string): boolean {
  return !/(^|\.)nodecay_(weight|bias)$/.test(path);
}

/** `value(τ) = p1 + sigmoid(τ·(w + 1) + b)·(p0 − p1)` per sample: `[N, ...shape]` from `tau [N]`. */
export function tdpValue(p: Tdp, tau: Tensor): Tensor {
  const shape = p.param0.shape;
  const tt = ops.reshape(tau, [tau.shape[0], ...shape.map(() => 1)]);
  const ex = (v: Tensor) => ops.reshape(v, [1, ...shape]);
  const s = ops.sigmoid(ops.add(ops.mul(tt, ex(ops.add(p.nodecay_weight, 1))), ex(p.nodecay_bias)));
  return ops.add(ex(p.param1), ops.mul(s, ex(ops.sub(p.param0, p.param1))));
}

/** Broadcasts a per-sample vector `[N, C]` over the middle axes of `x [N, ..., C]`. */
function perSample(v: Tensor, x: Tensor): Tensor {
  return ops.reshape(v, [v.shape[0], ...x.shape.slice(1, -1).map(() => 1), v.shape[1]]);
}

/** TD-LayerNorm over the last axis (eps 1e-5): `LN(x)·weight(τ) + bias(τ)`. */
export function tdLayerNorm(p: TdLnParams, x: Tensor, tau: Tensor): Tensor {
  const xn = layerNormalize(x, { axis: -1, eps: 1e-5 });
  return ops.add(ops.mul(xn, perSample(tdpValue(p.weight, tau), x)), perSample(tdpValue(p.bias, tau), x));
}

/** TD-RMSNorm: `x / (‖x‖₂·d^-½ + 1e-8) · scale(τ)` over the last axis (eps added to the RMS, outside the root). */
export function tdRmsNorm(p: { scale: Tdp }, x: Tensor, tau: Tensor): Tensor {
  return ops.mul(rmsNormalize(x, { axis: -1, eps: 1e-8, epsOutside: true }), perSample(tdpValue(p.scale, tau), x));
}

/** The block norm of the config's `normType`. */
function blockNorm(p: DiMRNormParams, x: Tensor, tau: Tensor, normType: DiMRNormType): Tensor {
  if (normType === "LN") return tdLayerNorm(p as TdLnParams, x, tau);
  const scale = (p as { scale: Tdp | Tensor }).scale;
  if (scale instanceof Tensor) return ops.mul(rmsNormalize(x, { axis: -1, eps: 1e-8, epsOutside: true }), scale);
  return tdRmsNorm({ scale }, x, tau);
}

function mlpBlock(p: MlpBlockParams, x: Tensor, tau: Tensor, normType: DiMRNormType): Tensor {
  const h = blockNorm(p.norm, x, tau, normType);
  return linearApply(p.w2, ops.mul(gelu(linearApply(p.w0, h)), linearApply(p.w1, h)));
}

function selfAttention(
  p: { norm: DiMRNormParams; query_key_value: LinearParams; dense: LinearParams },
  x: Tensor,
  tau: Tensor,
  heads: number,
  normType: DiMRNormType,
): Tensor {
  const [B, T, C] = x.shape, hd = C / heads;
  // [B, T, 3·heads, hd] -> [B, 3·heads, T, hd]; q, k, v are consecutive head groups.
  const h = linearApply(p.query_key_value, blockNorm(p.norm, x, tau, normType));
  const qkv = ops.transpose(ops.reshape(h, [B, T, 3 * heads, hd]), [0, 2, 1, 3]);
  const [q, k, v] = ops.split(qkv, 3, 1);
  return linearApply(p.dense, mergeHeads(attention(q, k, v)));
}

/** `F.interpolate(mode="area")` to `[H // r, W // r]` (adaptive average pooling), NCHW. */
export function evenDownInterpolate(x: Tensor, r: number): Tensor {
  if (r === 1) return x;
  const [, , H, W] = x.shape;
  const [Ho, Wo] = [Math.floor(H / r), Math.floor(W / r)];
  if (Ho < 1 || Wo < 1) {
    throw new ShapeError(`DiMR: input ${fmtShape(x.shape)} is too small for image_input_ratio ${r}`);
  }
  // Adaptive-average-pool bins [floor(i·n/m), ceil((i+1)·n/m)) as a matrix per axis.
  const poolMatrix = (n: number, m: number) => {
    const a = allocHost(x.dtype, n * m);
    for (let i = 0; i < m; i++) {
      const s = Math.floor((i * n) / m), e = Math.ceil(((i + 1) * n) / m);
      for (let j = s; j < e; j++) a[j * m + i] = 1 / (e - s);
    }
    return fromHost(a, [n, m], x.dtype);
  };
  const xw = ops.matmul(x, poolMatrix(W, Wo)); // [N, C, H, Wo]
  return ops.swapaxes(ops.matmul(ops.swapaxes(xw, 2, 3), poolMatrix(H, Ho)), 2, 3);
}

function positionIds(H: number, W: number, maxW: number): Tensor {
  const ids = new Int32Array(H * W);
  for (let h = 0; h < H; h++) for (let w = 0; w < W; w++) ids[h * W + w] = h * maxW + w;
  return fromHost(ids, [H * W], "i32");
}

/** Options of {@link apply} (`train` + `key` enable the residual dropout of configs with dropoutProb > 0). */
export type DiMRApplyOptions = ApplyOptions;

function stageApply(
  p: DiMRStageParams,
  s: DiMRStageConfig,
  c: DiMRConfig,
  images: Tensor,
  tau: Tensor,
  y: Tensor,
  lowres: Tensor | undefined,
  prevMaxHeight: number,
  drop: (x: Tensor) => Tensor,
): [Tensor, Tensor] {
  const img = evenDownInterpolate(images, s.imageInputRatio);
  const f = s.inputFeatureRatio;
  let x = ops.transpose(conv2dApply(p.input_layer["1"], img, { stride: f }), [0, 2, 3, 1]); // [B, H, W, C]
  const [B, H, W, C] = x.shape;
  if (H > s.maxHeight || W > s.maxWidth) {
    throw new ShapeError(`DiMR: branch grid ${H}x${W} exceeds its position table ${s.maxHeight}x${s.maxWidth}`);
  }
  const pos = ops.take(p.input_layer["3"].position_embeddings.weight, positionIds(H, W, s.maxWidth), 0);
  x = ops.add(x, ops.reshape(pos, [1, H, W, C]));
  if (lowres !== undefined) {
    const [ln0, up, ln2] = p.upsample!;
    const r = Math.floor(s.maxHeight / prevMaxHeight);
    const u = tdLayerNorm(ln2, pixelShuffleChannelLast(linearApply(up.kernel, tdLayerNorm(ln0, lowres, tau)), r), tau);
    if (u.shape.join() !== x.shape.join()) {
      throw new ShapeError(
        `DiMR: upsampled low-res features ${fmtShape(u.shape)} do not match the branch grid ${fmtShape(x.shape)}`,
      );
    }
    x = ops.add(x, u);
  }
  const isT = s.blockType === "TransformerBlock";
  const cls = isT && p.class_embeds !== undefined;
  if (isT) x = ops.reshape(x, [B, H * W, C]);
  if (cls) {
    const ids = y.dtype === "i32" ? y : ops.cast(y, "i32");
    x = ops.concat([ops.reshape(ops.take(p.class_embeds!.weight, ids, 0), [B, 1, C]), x], 1);
  }
  const block = (bp: DiMRBlockParams, h: Tensor) => tidy(() => blockBody(bp, h));
  const blockBody = (bp: DiMRBlockParams, h: Tensor) => {
    let a: Tensor;
    if (isT) a = selfAttention(bp.block1 as Parameters<typeof selfAttention>[0], h, tau, s.numHeads!, c.normType);
    else {
      const ks = s.kernelSize!;
      const dw = conv2dApply((bp.block1 as { "1": Conv2dParams })["1"], ops.transpose(h, [0, 3, 1, 2]), {
        padding: Math.floor(ks / 2),
        groups: C,
      });
      a = ops.transpose(dw, [0, 2, 3, 1]);
    }
    h = ops.add(h, drop(a));
    return ops.add(h, drop(mlpBlock(bp.block2, h, tau, c.normType)));
  };
  const L = p.blocks.length, half = Math.floor(L / 2);
  const ext: Tensor[] = [x], skips: Tensor[] = [];
  for (let i = 0; i < half; i++) {
    x = block(p.blocks[i], x);
    ext.push(x);
    skips.push(x);
  }
  x = block(p.blocks[half], x);
  ext.push(x);
  for (let j = 0; j < half; j++) {
    x = linearApply(p.skip_denses[j], ops.concat([x, skips.pop()!], -1));
    x = block(p.blocks[half + 1 + j], x);
    ext.push(x);
  }
  const grid = (t: Tensor) => (isT ? ops.reshape(cls ? ops.slice(t, [0, 1]) : t, [B, H, W, C]) : t);
  const out = ops.transpose(tdLayerNorm(p.output_layer["0"], grid(x), tau), [0, 3, 1, 2]);
  const k = s.finalKernelSize;
  const y0 = conv2dApply(p.output_layer["2"], out, { padding: Math.floor(k / 2) });
  return [y0, ops.concat(ext.map(grid), -1)];
}

/**
 * MRModel forward: `x [N, channels, H, W]`, `logSnr [N]` float (the network
 * input `n/1000·8 − 4`, larger = noisier), `y [N]` labels. Returns every
 * branch's prediction at its own resolution, lowest resolution first.
 */
export function apply(
  params: DiMRParams,
  x: Tensor,
  logSnr: Tensor,
  y: Tensor,
  config: DiMRConfig,
  opts: DiMRApplyOptions = {},
): Tensor[] {
  const c = checkConfig(config);
  if (!(x instanceof Tensor) || x.ndim !== 4 || x.shape[1] !== c.channels) {
    throw new ShapeError(
      `DiMR.apply: x must be [N, ${c.channels}, H, W], got ${x instanceof Tensor ? fmtShape(x.shape) : typeof x}`,
    );
  }
  const N = x.shape[0];
  if (!(logSnr instanceof Tensor) || logSnr.ndim !== 1 || logSnr.shape[0] !== N) {
    throw new ShapeError(
      `DiMR.apply: logSnr must be [${N}], got ${logSnr instanceof Tensor ? fmtShape(logSnr.shape) : typeof logSnr}`,
    );
  }
  if (c.numClasses !== undefined && (!(y instanceof Tensor) || y.ndim !== 1 || y.shape[0] !== N)) {
    throw new ShapeError(`DiMR.apply: y must be [${N}], got ${y instanceof Tensor ? fmtShape(y.shape) : typeof y}`);
  }
  if (params?.stages?.length !== c.stages.length) {
    throw new DifflabError(`DiMR.apply: params have ${params?.stages?.length} stages, config has ${c.stages.length}`);
  }
  const tau = ops.div(ops.cast(logSnr, x.dtype), 4);
  const outs: Tensor[] = [];
  let lowres: Tensor | undefined;
  let key = opts.key;
  c.stages.forEach((s, k) => {
    const p = opts.train && s.dropoutProb > 0 ? s.dropoutProb : 0;
    if (p > 0 && key === undefined) throw new DifflabError(`DiMR.apply: training with dropoutProb ${p} needs opts.key`);
    const drop = (h: Tensor) => {
      if (p === 0) return h;
      const [k1, k2] = random.split(key!, 2);
      key = k1;
      return dropout(h, p, k2);
    };
    const [o, lr] = stageApply(params.stages[k], s, c, x, tau, y, lowres, k > 0 ? c.stages[k - 1].maxHeight : 0, drop);
    outs.push(o);
    lowres = c.blockGradToLowres ? stopGradient(lr) : lr;
  });
  return outs;
}

/**
 * Multiply-accumulates of one forward at batch 1 with every branch at its
 * full `maxHeight × maxWidth` grid: linears, convs, and the two attention
 * matmuls over HW + 1 tokens (the README's "GFLOPs").
 */
export function flops(config: DiMRConfig): number {
  const c = checkConfig(config);
  let m = 0;
  c.stages.forEach((s, k) => {
    const D = s.dim, A = s.maxHeight * s.maxWidth, f = s.inputFeatureRatio;
    const isT = s.blockType === "TransformerBlock";
    const T = A + (isT && c.numClasses !== undefined ? 1 : 0);
    m += D * c.channels * f * f * A;
    if (k > 0) {
      const prev = c.stages[k - 1], r = Math.floor(s.maxHeight / prev.maxHeight);
      m += lowresDim(prev) * D * r * r * prev.maxHeight * prev.maxWidth;
    }
    const mlp = 3 * D * s.hiddenDim * T;
    const mix = isT ? 4 * D * D * T + 2 * T * T * D : s.kernelSize! ** 2 * D * A;
    m += blockCount(s) * (mix + mlp);
    m += Math.floor(s.numBlocks / 2) * 2 * D * D * T;
    m += c.channels * D * s.finalKernelSize ** 2 * A;
  });
  return m;
}

/** Builds a config from the official MRModel config (`channels`, `stage_configs`, …, snake_case). */
export function configFromOfficial(kwargs: Record<string, unknown>): DiMRConfig {
  // An attribute that is absent, None or undefined takes the official default.
  const kw = <T>(o: Record<string, unknown>, name: string, dflt: T): T => (o[name] ?? dflt) as T;
  const peType = kw<string>(kwargs, "pe_type", "APE");
  if (peType !== "APE") {
    throw new DifflabError(`DiMR.configFromOfficial: pe_type "${peType}" is not supported (only APE)`);
  }
  if ("condition_dim" in kwargs) {
    throw new DifflabError(`DiMR.configFromOfficial: text conditioning (condition_dim) is not supported`);
  }
  const st = kw<Record<string, unknown>[]>(kwargs, "stage_configs", []);
  if (!Array.isArray(st) || !st.length) {
    throw new DifflabError(`DiMR.configFromOfficial: stage_configs must be a non-empty list`);
  }
  const nc = kwargs["num_classes"];
  return checkConfig({
    channels: kw(kwargs, "channels", 4),
    numClasses: nc === undefined || nc === null ? undefined : (nc as number),
    blockGradToLowres: kw(kwargs, "block_grad_to_lowres", false),
    normType: kw(kwargs, "norm_type", "LN") as DiMRNormType,
    stages: st.map((s) => {
      const bt = kw<string>(s, "block_type", "");
      return {
        blockType: bt as DiMRStageConfig["blockType"],
        dim: kw(s, "dim", 0),
        hiddenDim: kw(s, "hidden_dim", 0),
        numHeads: bt === "TransformerBlock" ? kw(s, "num_attention_heads", 0) : undefined,
        kernelSize: bt === "ConvNeXtBlock" ? kw(s, "kernel_size", 0) : undefined,
        numBlocks: kw(s, "num_blocks", 0),
        maxHeight: kw(s, "max_height", 0),
        maxWidth: kw(s, "max_width", 0),
        imageInputRatio: kw(s, "image_input_ratio", 1),
        inputFeatureRatio: kw(s, "input_feature_ratio", 1),
        finalKernelSize: kw(s, "final_kernel_size", 3),
        dropoutProb: kw(s, "dropout_prob", 0),
      };
    }),
  });
}

/** DiMR as a {@link ModelDef}; `apply`'s `t` is the log-SNR and it returns every resolution. */
export const def: ModelDef<DiMRConfig, DiMRParams> = {
  family: "DiMR",
  configs,
  init,
  apply: (p, x, t, y, c, o) => apply(p, x, t, y, c, o),
  flops,
  paramShapes,
  configFromOfficial,
};
