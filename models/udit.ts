/**
 * @file U-DiT (YuchuanTian/U-DiT, `udit_models.py`): a U-shaped diffusion
 * transformer on NCHW feature maps with downsampled-token self-attention
 * (dwconv5(x)+x, four stride-2 polyphase sub-maps, shared QKV, RoPE-2D,
 * cosine attention within each sub-map) and the re-parameterisable FFN.
 *
 * Parameters mirror the official module tree, so `flattenTree(params)` gives
 * the checkpoint (training-form) state_dict names. {@link merge} builds the
 * inference form functionally: every rep-FFN becomes the six tensors the
 * official `FeedForward.add_buffer()` computes (`project_in_weight`, ...), and
 * {@link apply} runs whichever form each FFN record holds.
 */
import { forwardWithCfg } from "../diffusion/cfg.ts";
import { gelu, geluTanh, silu } from "../nn/activations.ts";
import { applyRope, attention, cosineAttention, rope2dTable, type RopeTable } from "../nn/attention.ts";
import { conv2dApply, type Conv2dParams } from "../nn/conv.ts";
import {
  labelEmbedderApply,
  type LabelEmbedderParams,
  timestepEmbedderApply,
  type TimestepEmbedderParams,
} from "../nn/embed.ts";
import { normalInit, xavierUniform, zerosInit } from "../nn/init.ts";
import { linearApply, type LinearParams } from "../nn/linear.ts";
import { layerNormalize, modulate } from "../nn/norm.ts";
import { pixelShuffle, pixelUnshuffle } from "../nn/spatial.ts";
import { flattenTree } from "../nn/tree.ts";
import { DifflabError, fmtShape, ShapeError } from "../tensor/errors.ts";
import * as ops from "../tensor/ops.ts";
import * as random from "../tensor/random.ts";
import type { Key } from "../tensor/random.ts";
import { Tensor, tidy } from "../tensor/tensor.ts";
import { type ApplyOptions, kw, type ModelDef } from "./common.ts";
import { checkModelGolden, type GoldenReport } from "./golden.ts";

// ---------------------------------------------------------------------------------------------
// Configs
// ---------------------------------------------------------------------------------------------

/** U-DiT hyper-parameters (the official `U_DiT(**kwargs)` constructor arguments, camel-cased). */
export interface UDiTConfig {
  /** Latent side S (stored by the official model, unused by the math: the grid comes from x). */
  inputSize: number;
  /** Polyphase factor of the downsampled-token attention, one value or one per level (5). */
  downFactor: number | readonly number[];
  /** Latent channels C. */
  inChannels: number;
  /** Width h of level 1; level 2 is 2h, the latent 4h, decoder level 1 2h. */
  hiddenSize: number;
  /** U_DiTBlocks per level: encoder 1, encoder 2, latent, decoder 2, decoder 1. */
  depth: readonly number[];
  /** Heads at every level (the head dim doubles per level down). */
  numHeads: number;
  /** FFN hidden width = int(w · mlpRatio). */
  mlpRatio: number;
  /** Label dropout for CFG training; > 0 adds the null row to the label tables. */
  classDropoutProb: number;
  /** Number of classes (the null class id when classDropoutProb > 0). */
  numClasses: number;
  /** Output 2C channels (eps and the learned variance) instead of C. */
  learnSigma: boolean;
  /** Re-parameterisable FFN (two-conv projections, three dwconvs) when true and ffnType is "rep". */
  rep: boolean;
  /** "rep": the FeedForward with dwconvs; "basic": timm-style 1×1-conv Mlp with tanh GELU. */
  ffnType: "rep" | "basic";
  /** "v2": cosine attention with a learned clamped temperature; null: scaled dot-product. */
  attnType: "v2" | null;
  /** "rope2d": 2-D RoPE on the downsampled grid; null: no position embedding. */
  posembType: "rope2d" | null;
  /** Downsampler name; its last digit is the depthwise kernel size (official: "dwconv5"). */
  downsampler: string;
  /** Add the identity to the depthwise downsampler output. */
  downShortcut: boolean;
}

const SHARED = {
  inputSize: 32,
  downFactor: 2,
  inChannels: 4,
  depth: [2, 5, 8, 5, 2],
  mlpRatio: 2,
  classDropoutProb: 0.1,
  numClasses: 1000,
  learnSigma: true,
  rep: true,
  ffnType: "rep",
  attnType: "v2",
  posembType: "rope2d",
  downsampler: "dwconv5",
  downShortcut: true,
} as const;

/**
 * Named configs. U-DiT-S/B/L are the official ones (their factories ignore
 * kwargs, so input 32 and 1000 classes always apply). U-DiT-T is this
 * project's own small config for 32×32 single-channel data (MNIST-like).
 */
export const configs: Readonly<Record<string, UDiTConfig>> = {
  "U-DiT-S": { ...SHARED, hiddenSize: 96, numHeads: 4 },
  "U-DiT-B": { ...SHARED, hiddenSize: 192, numHeads: 8 },
  "U-DiT-L": { ...SHARED, hiddenSize: 384, numHeads: 16 },
  "U-DiT-T": { ...SHARED, inChannels: 1, numClasses: 10, hiddenSize: 32, numHeads: 2, depth: [1, 1, 2, 1, 1] },
};

/** Builds the config from `U_DiT(**kwargs)` arguments, with the official class defaults. */
export function configFromOfficial(kwargs: Record<string, unknown>): UDiTConfig {
  const downsampler = kw<string | null>(kwargs, "downsampler", null);
  if (typeof downsampler !== "string" || !/[0-9]$/.test(downsampler)) {
    throw new DifflabError(
      `U-DiT configFromOfficial: downsampler must be a name ending in the kernel size, e.g. "dwconv5", got ${
        JSON.stringify(downsampler)
      }`,
    );
  }
  const attnType = kw<string | null>(kwargs, "attn_type", null);
  const posembType = kw<string | null>(kwargs, "posemb_type", null);
  const ffnType = kw<string>(kwargs, "ffn_type", "rep");
  if (attnType !== null && attnType !== "v2") {
    throw new DifflabError(`U-DiT: attn_type ${JSON.stringify(attnType)} is not v2/None`);
  }
  if (posembType !== null && posembType !== "rope2d") {
    throw new DifflabError(`U-DiT: posemb_type ${JSON.stringify(posembType)} is not rope2d/None`);
  }
  if (ffnType !== "rep" && ffnType !== "basic") {
    throw new DifflabError(`U-DiT: ffn_type ${JSON.stringify(ffnType)} is not rep/basic`);
  }
  const cfg: UDiTConfig = {
    inputSize: kw(kwargs, "input_size", 32),
    downFactor: kw<number | number[]>(kwargs, "down_factor", 2),
    inChannels: kw(kwargs, "in_channels", 4),
    hiddenSize: kw(kwargs, "hidden_size", 1152),
    depth: kw<number[]>(kwargs, "depth", [2, 5, 8, 5, 2]),
    numHeads: kw(kwargs, "num_heads", 16),
    mlpRatio: kw(kwargs, "mlp_ratio", 4),
    classDropoutProb: kw(kwargs, "class_dropout_prob", 0.1),
    numClasses: kw(kwargs, "num_classes", 1000),
    learnSigma: Boolean(kw(kwargs, "learn_sigma", true)),
    rep: Boolean(kw(kwargs, "rep", 1)),
    ffnType,
    attnType,
    posembType,
    downsampler,
    downShortcut: Boolean(kw(kwargs, "down_shortcut", false)),
  };
  validate(cfg);
  return cfg;
}

function validate(c: UDiTConfig): void {
  const posInt = (n: string, v: unknown) => {
    if (!Number.isInteger(v) || (v as number) < 1) {
      throw new DifflabError(`U-DiT config: ${n} must be a positive integer, got ${v}`);
    }
  };
  posInt("hiddenSize", c.hiddenSize);
  posInt("numHeads", c.numHeads);
  posInt("inChannels", c.inChannels);
  posInt("numClasses", c.numClasses);
  if (!Array.isArray(c.depth) || c.depth.length !== 5 || !c.depth.every((d) => Number.isInteger(d) && d >= 0)) {
    throw new DifflabError(`U-DiT config: depth must be 5 non-negative integers, got ${JSON.stringify(c.depth)}`);
  }
  if (c.hiddenSize % 2) {
    throw new DifflabError(`U-DiT config: hiddenSize ${c.hiddenSize} must be even (down1_2 halves it)`);
  }
  if (c.hiddenSize % c.numHeads) {
    throw new DifflabError(`U-DiT config: hiddenSize ${c.hiddenSize} must divide into ${c.numHeads} heads`);
  }
  if (c.posembType === "rope2d" && (c.hiddenSize / c.numHeads) % 4) {
    throw new DifflabError(
      `U-DiT config: RoPE-2D needs a level-1 head dim divisible by 4, got ${c.hiddenSize / c.numHeads}`,
    );
  }
  downFactors(c);
}

function downFactors(c: UDiTConfig): number[] {
  const f = typeof c.downFactor === "number" ? new Array(5).fill(c.downFactor) : [...c.downFactor];
  if (f.length !== 5 || !f.every((v) => Number.isInteger(v) && v >= 1)) {
    throw new DifflabError(
      `U-DiT config: downFactor must be a positive integer or 5 of them, got ${JSON.stringify(c.downFactor)}`,
    );
  }
  return f;
}

function downKernel(c: UDiTConfig): number {
  return Number(c.downsampler[c.downsampler.length - 1]);
}

function ffnHidden(w: number, c: UDiTConfig): number {
  return Math.trunc(w * c.mlpRatio);
}

/** Widths of the five levels: h, 2h, 4h, 2h, 2h (decoder level 1 stays at 2h). */
function levelWidths(h: number): number[] {
  return [h, 2 * h, 4 * h, 2 * h, 2 * h];
}

const LEVELS = ["encoder_level_1", "encoder_level_2", "latent", "decoder_level_2", "decoder_level_1"] as const;

// ---------------------------------------------------------------------------------------------
// Parameter records
// ---------------------------------------------------------------------------------------------

/** Training-form rep-FFN: `project_in.{0,1}`, `dwconv.{0,1,2}` (5×5, 3×3, 1×1), `project_out.{0,1}`. */
export interface RepFfnParams {
  /** 1×1 convs w→hf/2→hf (no activation between them). */
  project_in: [Conv2dParams, Conv2dParams];
  /** Depthwise 5×5, 3×3 and 1×1 convs summed with the identity. */
  dwconv: [Conv2dParams, Conv2dParams, Conv2dParams];
  /** 1×1 convs hf→hf/2→w. */
  project_out: [Conv2dParams, Conv2dParams];
}

/** Inference-form rep-FFN: the six tensors of the official `add_buffer()`. */
export interface MergedFfnParams {
  /** `W2·W1` as a `[hf, w, 1, 1]` conv. */
  project_in_weight: Tensor;
  /** `W2·b1 + b2`. */
  project_in_bias: Tensor;
  /** `K5 + K3 + (K1 + 1)`, `[hf, 1, 5, 5]`. */
  dwconv_weight: Tensor;
  /** `b5 + b3 + b1`. */
  dwconv_bias: Tensor;
  /** `W2·W1` as a `[w, hf, 1, 1]` conv. */
  project_out_weight: Tensor;
  /** `W2·b1 + b2`. */
  project_out_bias: Tensor;
}

/** Non-rep FeedForward (`rep=0`): one conv each. */
export interface PlainFfnParams {
  /** 1×1 conv w→hf. */
  project_in: Conv2dParams;
  /** Depthwise 5×5 conv. */
  dwconv: Conv2dParams;
  /** 1×1 conv hf→w. */
  project_out: Conv2dParams;
}

/** `ffn_type='basic'`: 1×1-conv Mlp. */
export interface BasicMlpParams {
  /** 1×1 conv w→hf. */
  fc1: Conv2dParams;
  /** 1×1 conv hf→w. */
  fc2: Conv2dParams;
}

/** Any FFN form a block may hold. */
export type FfnParams = RepFfnParams | MergedFfnParams | PlainFfnParams | BasicMlpParams;

/** `DownSample_Attn` parameters. */
export interface DownAttnParams {
  /** Per-head log temperature `[heads, 1, 1]` (attn_type v2 only). */
  logit_scale?: Tensor;
  /** Shared QKV linear w→3w. */
  to_qkv: LinearParams;
  /** 1×1 output conv. */
  to_out: Conv2dParams;
  /** Depthwise downsampler conv (`DownSampler.layer`). */
  downsampler: { layer: Conv2dParams };
}

/** One `U_DiTBlock` (two attention + FFN sub-blocks, each with its own adaLN). */
export interface UDiTBlockParams {
  /** First sub-block attention. */
  attn1: DownAttnParams;
  /** First sub-block FFN (train or merged form). */
  mlp1: FfnParams;
  /** First sub-block `SiLU, Linear(w, 6w)`. */
  adaLN_modulation1: { "1": LinearParams };
  /** Second sub-block attention. */
  attn2: DownAttnParams;
  /** Second sub-block FFN. */
  mlp2: FfnParams;
  /** Second sub-block `SiLU, Linear(w, 6w)`. */
  adaLN_modulation2: { "1": LinearParams };
}

/** The whole U-DiT parameter record (official state_dict tree). */
export interface UDiTParams {
  /** 3×3 conv C→h. */
  x_embedder: { proj: Conv2dParams };
  /** Timestep MLP of width h. */
  t_embedder_1: TimestepEmbedderParams;
  /** Label table of width h. */
  y_embedder_1: LabelEmbedderParams;
  /** Timestep MLP of width 2h. */
  t_embedder_2: TimestepEmbedderParams;
  /** Label table of width 2h. */
  y_embedder_2: LabelEmbedderParams;
  /** Timestep MLP of width 4h. */
  t_embedder_3: TimestepEmbedderParams;
  /** Label table of width 4h. */
  y_embedder_3: LabelEmbedderParams;
  /** Blocks at width h, conditioned on c1. */
  encoder_level_1: UDiTBlockParams[];
  /** 3×3 conv h→h/2 then PixelUnshuffle(2). */
  down1_2: { body: [{ weight: Tensor }] };
  /** Blocks at width 2h, conditioned on c2. */
  encoder_level_2: UDiTBlockParams[];
  /** 3×3 conv 2h→h then PixelUnshuffle(2). */
  down2_3: { body: [{ weight: Tensor }] };
  /** Blocks at width 4h, conditioned on c3. */
  latent: UDiTBlockParams[];
  /** 3×3 conv 4h→8h then PixelShuffle(2). */
  up3_2: { body: [{ weight: Tensor }] };
  /** 1×1 conv on [up, skip]: 4h→2h. */
  reduce_chan_level2: Conv2dParams;
  /** Blocks at width 2h, conditioned on c2. */
  decoder_level_2: UDiTBlockParams[];
  /** 3×3 conv 2h→4h then PixelShuffle(2). */
  up2_1: { body: [{ weight: Tensor }] };
  /** 1×1 conv on [up, skip]: 2h→2h. */
  reduce_chan_level1: Conv2dParams;
  /** Blocks at width 2h, conditioned on c2. */
  decoder_level_1: UDiTBlockParams[];
  /** 3×3 conv 2h→2h. */
  output: Conv2dParams;
  /** LayerNorm2d + modulate (c2) + 3×3 conv 2h→out. */
  final_layer: { out_proj: Conv2dParams; adaLN_modulation: { "1": LinearParams } };
}

// A parameter spec: the shape plus how `initialize_weights` fills it.
type Fill = "xavier" | "zeros" | "ln10" | { normal: number } | { xavierFans: [number, number] };
class Spec {
  constructor(readonly shape: number[], readonly fill: Fill) {}
}
type SpecTree = Spec | SpecTree[] | { [k: string]: SpecTree };

const xav = (...shape: number[]) => new Spec(shape, "xavier");
const zero = (...shape: number[]) => new Spec(shape, "zeros");
// _basic_init: xavier weight, zero bias, for every nn.Linear and nn.Conv2d.
const layer = (shape: number[], bias = true): SpecTree =>
  bias ? { weight: new Spec(shape, "xavier"), bias: zero(shape[0]) } : { weight: new Spec(shape, "xavier") };
const zeroLayer = (out: number, inp: number, k = 1, conv = false): SpecTree => ({
  weight: new Spec(conv ? [out, inp, k, k] : [out, inp], "zeros"),
  bias: zero(out),
});

function ffnSpec(w: number, c: UDiTConfig, merged: boolean): SpecTree {
  const hf = ffnHidden(w, c);
  if (c.ffnType === "basic") return { fc1: layer([hf, w, 1, 1]), fc2: layer([w, hf, 1, 1]) };
  if (!c.rep) {
    return { project_in: layer([hf, w, 1, 1]), dwconv: layer([hf, 1, 5, 5]), project_out: layer([w, hf, 1, 1]) };
  }
  if (merged) {
    return {
      project_in_weight: xav(hf, w, 1, 1),
      project_in_bias: zero(hf),
      dwconv_weight: xav(hf, 1, 5, 5),
      dwconv_bias: zero(hf),
      project_out_weight: xav(w, hf, 1, 1),
      project_out_bias: zero(w),
    };
  }
  const h2 = Math.trunc(hf / 2);
  return {
    project_in: [layer([h2, w, 1, 1]), layer([hf, h2, 1, 1])],
    dwconv: [layer([hf, 1, 5, 5]), layer([hf, 1, 3, 3]), layer([hf, 1, 1, 1])],
    project_out: [layer([h2, hf, 1, 1]), layer([w, h2, 1, 1])],
  };
}

function attnSpec(w: number, c: UDiTConfig): SpecTree {
  const k = downKernel(c);
  const s: Record<string, SpecTree> = {};
  // state_dict order: the module's own Parameter first, then submodules.
  if (c.attnType === "v2") s.logit_scale = new Spec([c.numHeads, 1, 1], "ln10");
  s.to_qkv = layer([3 * w, w]);
  s.to_out = layer([w, w, 1, 1]);
  s.downsampler = { layer: layer([w, 1, k, k]) };
  return s;
}

function blockSpec(w: number, c: UDiTConfig, merged: boolean): SpecTree {
  return {
    attn1: attnSpec(w, c),
    mlp1: ffnSpec(w, c, merged),
    adaLN_modulation1: { "1": zeroLayer(6 * w, w) },
    attn2: attnSpec(w, c),
    mlp2: ffnSpec(w, c, merged),
    adaLN_modulation2: { "1": zeroLayer(6 * w, w) },
  };
}

function specTree(c: UDiTConfig, merged = false): SpecTree {
  validate(c);
  const h = c.hiddenSize, out = c.learnSigma ? 2 * c.inChannels : c.inChannels;
  const rows = c.numClasses + (c.classDropoutProb > 0 ? 1 : 0);
  const tEmb = (w: number): SpecTree => ({
    mlp: {
      "0": { weight: new Spec([w, 256], { normal: 0.02 }), bias: zero(w) },
      "2": { weight: new Spec([w, w], { normal: 0.02 }), bias: zero(w) },
    },
  });
  const yEmb = (w: number): SpecTree => ({ embedding_table: { weight: new Spec([rows, w], { normal: 0.02 }) } });
  const blocks = (lvl: number) => Array.from({ length: c.depth[lvl] }, () => blockSpec(levelWidths(h)[lvl], c, merged));
  const body = (o: number, i: number): SpecTree => ({ body: [layer([o, i, 3, 3], false)] });
  return {
    // Patch embed is initialised like a Linear on the [h, C·9] view.
    x_embedder: {
      proj: { weight: new Spec([h, c.inChannels, 3, 3], { xavierFans: [9 * c.inChannels, h] }), bias: zero(h) },
    },
    t_embedder_1: tEmb(h),
    y_embedder_1: yEmb(h),
    t_embedder_2: tEmb(2 * h),
    y_embedder_2: yEmb(2 * h),
    t_embedder_3: tEmb(4 * h),
    y_embedder_3: yEmb(4 * h),
    encoder_level_1: blocks(0),
    down1_2: body(h / 2, h),
    encoder_level_2: blocks(1),
    down2_3: body(h, 2 * h),
    latent: blocks(2),
    up3_2: body(8 * h, 4 * h),
    reduce_chan_level2: layer([2 * h, 4 * h, 1, 1]),
    decoder_level_2: blocks(3),
    up2_1: body(4 * h, 2 * h),
    reduce_chan_level1: layer([2 * h, 2 * h, 1, 1]),
    decoder_level_1: blocks(4),
    output: layer([2 * h, 2 * h, 3, 3]),
    final_layer: { out_proj: zeroLayer(out, 2 * h, 3, true), adaLN_modulation: { "1": zeroLayer(4 * h, 2 * h) } },
  };
}

function mapSpec<T>(t: SpecTree, f: (s: Spec, path: string) => T, path = ""): unknown {
  const j = (k: string | number) => (path === "" ? String(k) : `${path}.${k}`);
  if (t instanceof Spec) return f(t, path);
  if (Array.isArray(t)) return t.map((v, i) => mapSpec(v, f, j(i)));
  const o: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(t)) o[k] = mapSpec(v, f, j(k));
  return o;
}

function shapesOf(t: SpecTree): Record<string, number[]> {
  const out: Record<string, number[]> = {};
  mapSpec(t, (s, p) => (out[p] = [...s.shape]));
  return out;
}

/** Official (training-form, = checkpoint) parameter names and shapes. */
export function paramShapes(config: UDiTConfig): Record<string, number[]> {
  return shapesOf(specTree(config));
}

/** Parameter names and shapes of the inference form that {@link merge} produces. */
export function mergedParamShapes(config: UDiTConfig): Record<string, number[]> {
  return shapesOf(specTree(config, true));
}

/** Parameter count of the inference (re-parameterised) form, as the paper reports it. */
export function mergedParamCount(config: UDiTConfig): number {
  return Object.values(mergedParamShapes(config)).reduce((a, s) => a + s.reduce((x, y) => x * y, 1), 0);
}

/**
 * Fresh parameters as `initialize_weights` makes them: xavier_uniform and
 * zero bias for every Linear/Conv2d, normal(0.02) label tables and timestep
 * MLP weights, zero adaLN and output layers, `logit_scale = ln 10`.
 */
export function init(key: Key, config: UDiTConfig, opts: { dtype?: "f32" | "f64" } = {}): UDiTParams {
  const tree = specTree(config);
  const n = Object.keys(shapesOf(tree)).length;
  const keys = random.split(key, n);
  let i = 0;
  const dtype = opts.dtype ?? "f32";
  return mapSpec(tree, (s) => {
    const k = keys[i++];
    const f = s.fill;
    if (f === "zeros") return zerosInit(s.shape, { dtype });
    if (f === "xavier") return xavierUniform(k, s.shape, { dtype });
    if (f === "ln10") return ops.add(ops.full(s.shape, Math.log(10), dtype), 0);
    if ("normal" in f) return normalInit(k, s.shape, { std: f.normal, dtype });
    return xavierUniform(k, s.shape, { dtype, fans: f.xavierFans });
  }) as UDiTParams;
}

// ---------------------------------------------------------------------------------------------
// Re-parameterisation
// ---------------------------------------------------------------------------------------------

function isRepFfn(p: FfnParams): p is RepFfnParams {
  return "project_in" in p && Array.isArray(p.project_in);
}

function conv1x1Matrix(w: Tensor): Tensor {
  return ops.reshape(w, [w.shape[0], w.shape[1]]);
}

/** Merges two stacked 1×1 convs: `W = W2·W1`, `b = W2·b1 + b2`. */
function mergeProjection(a: Conv2dParams, b: Conv2dParams): [Tensor, Tensor] {
  const w1 = conv1x1Matrix(a.weight), w2 = conv1x1Matrix(b.weight);
  const w = ops.matmul(w2, w1);
  const bias = ops.add(
    ops.reshape(ops.matmul(w2, ops.reshape(a.bias!, [a.bias!.shape[0], 1])), [w2.shape[0]]),
    b.bias!,
  );
  return [ops.reshape(w, [w.shape[0], w.shape[1], 1, 1]), bias];
}

/** The official `FeedForward.add_buffer()`, computed functionally (differentiable, nothing mutated). */
export function mergeFfn(p: RepFfnParams): MergedFfnParams {
  const [inW, inB] = mergeProjection(p.project_in[0], p.project_in[1]);
  const [outW, outB] = mergeProjection(p.project_out[0], p.project_out[1]);
  const [d5, d3, d1] = p.dwconv;
  if (d5.weight.shape[2] !== 5 || d3.weight.shape[2] !== 3 || d1.weight.shape[2] !== 1) {
    throw new ShapeError(
      `U-DiT mergeFfn: dwconv kernels must be 5×5, 3×3, 1×1, got ${fmtShape(d5.weight.shape)}, ${
        fmtShape(d3.weight.shape)
      }, ${fmtShape(d1.weight.shape)}`,
    );
  }
  // K5 + K3 in the centre 3×3 + (K1 + 1) at the centre tap; the +1 is the identity branch.
  const k3 = ops.pad(d3.weight, [[1, 1], [1, 1]]);
  const k1 = ops.pad(ops.add(d1.weight, 1), [[2, 2], [2, 2]]);
  return {
    project_in_weight: inW,
    project_in_bias: inB,
    dwconv_weight: ops.add(ops.add(d5.weight, k3), k1),
    dwconv_bias: ops.add(ops.add(d5.bias!, d3.bias!), d1.bias!),
    project_out_weight: outW,
    project_out_bias: outB,
  };
}

/**
 * The inference form: a NEW record in which every rep-FFN is replaced by its
 * merged tensors (other leaves are shared, nothing is mutated). Unlike the
 * official `.eval()`, calling it twice is harmless: merged FFNs pass through.
 */
export function merge(params: UDiTParams, _config?: UDiTConfig): UDiTParams {
  const block = (b: UDiTBlockParams): UDiTBlockParams => ({
    ...b,
    mlp1: isRepFfn(b.mlp1) ? mergeFfn(b.mlp1) : b.mlp1,
    mlp2: isRepFfn(b.mlp2) ? mergeFfn(b.mlp2) : b.mlp2,
  });
  const out = { ...params } as UDiTParams;
  for (const l of LEVELS) out[l] = params[l].map(block);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Forward pass
// ---------------------------------------------------------------------------------------------

/** Options of {@link apply}. */
export interface UDiTApplyOptions extends ApplyOptions {
  /**
   * Run the inference form: rep-FFNs are merged on the fly (as `.eval()` does).
   * Records from {@link merge} run the inference form without this flag.
   */
  merged?: boolean;
}

interface Ctx {
  heads: number;
  attnType: UDiTConfig["attnType"];
  rope: boolean;
  shortcut: boolean;
  tables: Map<string, RopeTable>;
}

function ropeTable(ctx: Ctx, hd: number, n: number, dtype: Tensor["dtype"]): RopeTable {
  const id = `${hd}/${n}/${dtype}`;
  let t = ctx.tables.get(id);
  if (!t) {
    // Official positions: side = int(sqrt(N)), x = p mod side, y = p div side (N need not be square).
    const side = Math.floor(Math.sqrt(n));
    const rows = Math.ceil(n / side);
    const full = rope2dTable(hd, rows, side, { dtype: dtype === "f64" ? "f64" : "f32" });
    t = rows * side === n ? full : { cos: ops.slice(full.cos, [0, 0], [n]), sin: ops.slice(full.sin, [0, 0], [n]) };
    if (t.cos.dtype !== dtype) t = { cos: ops.cast(t.cos, dtype), sin: ops.cast(t.sin, dtype) };
    ctx.tables.set(id, t);
  }
  return t;
}

/** `DownSample_Attn`: dwconv(x)+x, polyphase sub-maps, shared QKV, RoPE, cosine attention per sub-map. */
function downAttn(p: DownAttnParams, x: Tensor, r: number, ctx: Ctx): Tensor {
  const [B, C, H, W] = x.shape;
  if (H % r || W % r) {
    throw new ShapeError(`U-DiT attention: feature map ${fmtShape(x.shape)} does not divide by down factor ${r}`);
  }
  const kd = p.downsampler.layer.weight.shape[2];
  let z = conv2dApply(p.downsampler.layer, x, { padding: (kd - 1) / 2, groups: C });
  if (ctx.shortcut) z = ops.add(z, x);
  const h = H / r, w = W / r, n = h * w, heads = ctx.heads, hd = C / heads;
  // 'b d (h dh) (w dw) -> b (dh dw) (h w) d'
  const tok = ops.reshape(ops.transpose(ops.reshape(z, [B, C, h, r, w, r]), [0, 3, 5, 2, 4, 1]), [B, r * r, n, C]);
  const qkv = linearApply(p.to_qkv, tok);
  // chunk(3) then '(h d)': [B, r², n, 3, heads, hd] -> [3, B, r², heads, n, hd]
  const s = ops.transpose(ops.reshape(qkv, [B, r * r, n, 3, heads, hd]), [3, 0, 1, 4, 2, 5]);
  let [q, k, v] = ops.split(s, 3, 0).map((t) => ops.reshape(t, [B, r * r, heads, n, hd]));
  if (ctx.rope) {
    const table = ropeTable(ctx, hd, n, q.dtype);
    [q, k] = [applyRope(q, table), applyRope(k, table)];
  }
  let o: Tensor;
  if (ctx.attnType === "v2") {
    if (!(p.logit_scale instanceof Tensor)) throw new DifflabError(`U-DiT attention: attn_type v2 needs logit_scale`);
    o = cosineAttention(q, k, v, p.logit_scale, { maxLogScale: 4.6052 });
  } else o = attention(q, k, v, { scale: hd ** -0.5 });
  // 'b (dh dw) he (h w) d -> b (he d) (h dh) (w dw)'
  const m = ops.reshape(ops.transpose(ops.reshape(o, [B, r, r, heads, h, w, hd]), [0, 3, 6, 4, 1, 5, 2]), [B, C, H, W]);
  return conv2dApply(p.to_out, m);
}

function dw(p: Conv2dParams, x: Tensor): Tensor {
  return conv2dApply(p, x, { padding: (p.weight.shape[2] - 1) / 2, groups: x.shape[1] });
}

function ffn(p: FfnParams, x: Tensor, merged: boolean): Tensor {
  if (isRepFfn(p)) {
    if (merged) return ffn(mergeFfn(p), x, false);
    const a = gelu(conv2dApply(p.project_in[1], conv2dApply(p.project_in[0], x)));
    let out = a;
    for (const d of p.dwconv) out = ops.add(out, dw(d, a));
    return conv2dApply(p.project_out[1], conv2dApply(p.project_out[0], out));
  }
  if ("project_in_weight" in p) {
    const a = gelu(conv2dApply({ weight: p.project_in_weight, bias: p.project_in_bias }, x));
    const d = dw({ weight: p.dwconv_weight, bias: p.dwconv_bias }, a);
    return conv2dApply({ weight: p.project_out_weight, bias: p.project_out_bias }, d);
  }
  if ("fc1" in p) return conv2dApply(p.fc2, geluTanh(conv2dApply(p.fc1, x)));
  if ("project_in" in p) return conv2dApply(p.project_out, dw(p.dwconv, gelu(conv2dApply(p.project_in, x))));
  throw new DifflabError(`U-DiT: unrecognised FFN record with keys ${Object.keys(p ?? {}).join(", ")}`);
}

const norm2d = (x: Tensor) => layerNormalize(x, { axis: 1, eps: 1e-6 });
const perChannel = (v: Tensor) => ops.reshape(v, [v.shape[0], v.shape[1], 1, 1]);

function block(p: UDiTBlockParams, x: Tensor, c: Tensor, r: number, ctx: Ctx, merged: boolean): Tensor {
  const sc = silu(c);
  for (const j of [1, 2] as const) {
    const [shA, scA, gA, shM, scM, gM] = ops.split(linearApply(p[`adaLN_modulation${j}`]["1"], sc), 6, 1);
    x = ops.add(
      x,
      ops.mul(perChannel(gA), downAttn(p[`attn${j}`], modulate(norm2d(x), shA, scA, { axis: 1 }), r, ctx)),
    );
    x = ops.add(x, ops.mul(perChannel(gM), ffn(p[`mlp${j}`], modulate(norm2d(x), shM, scM, { axis: 1 }), merged)));
  }
  return x;
}

const conv3 = (p: { weight: Tensor; bias?: Tensor }, x: Tensor) => conv2dApply(p, x, { padding: 1 });

/**
 * U-DiT forward on NCHW `x [N, C, S, S]` with timesteps `t [N]` and labels
 * `y [N]`; returns `[N, 2C (or C), S, S]`. Eval mode (no label dropout)
 * unless `opts.train`; the FFN form follows the record (train form for
 * checkpoint params) unless `opts.merged`.
 */
export function apply(
  params: UDiTParams,
  x: Tensor,
  t: Tensor,
  y: Tensor,
  config: UDiTConfig,
  opts: UDiTApplyOptions = {},
): Tensor {
  if (!(x instanceof Tensor) || x.ndim !== 4 || x.shape[1] !== config.inChannels) {
    throw new ShapeError(
      `U-DiT apply: x must be [N, ${config.inChannels}, H, W], got ${
        x instanceof Tensor ? fmtShape(x.shape) : typeof x
      }`,
    );
  }
  const [N, , H, W] = x.shape;
  if (H % 4 || W % 4) {
    throw new ShapeError(`U-DiT apply: spatial size ${H}x${W} of x must divide by 4 (two 2× downsamplings)`);
  }
  for (const [n, v] of [["t", t], ["y", y]] as const) {
    if (!(v instanceof Tensor) || v.ndim !== 1 || v.shape[0] !== N) {
      throw new ShapeError(
        `U-DiT apply: ${n} must be [${N}], got ${v instanceof Tensor ? fmtShape(v.shape) : typeof v}`,
      );
    }
  }
  const df = downFactors(config);
  const merged = opts.merged ?? false;
  const ctx: Ctx = {
    heads: config.numHeads,
    attnType: config.attnType,
    rope: config.posembType === "rope2d",
    shortcut: config.downShortcut,
    tables: new Map(),
  };
  const train = opts.train ?? false;
  if (train && config.classDropoutProb > 0 && opts.key === undefined) {
    throw new DifflabError(`U-DiT apply: training with classDropoutProb ${config.classDropoutProb} needs opts.key`);
  }
  // Each official y_embedder draws its own dropout mask, so each level gets its own key.
  const keys = opts.key ? random.split(opts.key, 3) : [undefined, undefined, undefined];
  const cond = (k: 1 | 2 | 3) =>
    ops.add(
      timestepEmbedderApply(params[`t_embedder_${k}`], t),
      labelEmbedderApply(params[`y_embedder_${k}`], y, {
        numClasses: config.numClasses,
        train,
        dropoutProb: config.classDropoutProb,
        key: keys[k - 1],
      }),
    );
  const c1 = cond(1), c2 = cond(2), c3 = cond(3);
  const run = (bs: UDiTBlockParams[], h: Tensor, c: Tensor, r: number) => {
    // RoPE tables are built here, outside the per-block scopes, so later blocks (and backward) can reuse them.
    const [, C, H, W] = h.shape;
    if (ctx.rope && bs.length && H % r === 0 && W % r === 0) ropeTable(ctx, C / ctx.heads, (H / r) * (W / r), h.dtype);
    return bs.reduce((a, b) => tidy(() => block(b, a, c, r, ctx, merged)), h);
  };

  const e1 = run(params.encoder_level_1, conv3(params.x_embedder.proj, x), c1, df[0]);
  const e2 = run(params.encoder_level_2, pixelUnshuffle(conv3(params.down1_2.body[0], e1), 2), c2, df[1]);
  const lat = run(params.latent, pixelUnshuffle(conv3(params.down2_3.body[0], e2), 2), c3, df[2]);
  const up2 = pixelShuffle(conv3(params.up3_2.body[0], lat), 2);
  const d2 = run(params.decoder_level_2, conv2dApply(params.reduce_chan_level2, ops.concat([up2, e2], 1)), c2, df[3]);
  const up1 = pixelShuffle(conv3(params.up2_1.body[0], d2), 2);
  const d1 = run(params.decoder_level_1, conv2dApply(params.reduce_chan_level1, ops.concat([up1, e1], 1)), c2, df[4]);
  const o = conv3(params.output, d1);
  const fl = params.final_layer;
  const [shift, scale] = ops.split(linearApply(fl.adaLN_modulation["1"], silu(c2)), 2, 1);
  return conv3(fl.out_proj, modulate(norm2d(o), shift, scale, { axis: 1 }));
}

// ---------------------------------------------------------------------------------------------
// FLOPs
// ---------------------------------------------------------------------------------------------

/**
 * Multiply-accumulates of one forward pass at batch 1 and `inputSize`,
 * counting convolutions, linear layers and the attention matmuls as the
 * official `torchprofile.profile_macs` run does. Default: the eval
 * (re-parameterised) form the paper reports; `{form: "train"}` for the
 * un-merged FFN.
 */
export function flops(config: UDiTConfig, opts: { form?: "eval" | "train"; inputSize?: number } = {}): number {
  validate(config);
  const S = opts.inputSize ?? config.inputSize, h = config.hiddenSize, C = config.inChannels;
  const merged = (opts.form ?? "eval") === "eval";
  const out = config.learnSigma ? 2 * C : C;
  const kd = downKernel(config);
  const df = downFactors(config);
  const P = [S * S, (S * S) / 4, (S * S) / 16, (S * S) / 4, S * S];
  const blockMacs = (w: number, p: number, r: number) => {
    const hf = ffnHidden(w, config), h2 = Math.trunc(hf / 2);
    let ffnM: number;
    if (config.ffnType === "basic") ffnM = 2 * p * w * hf;
    else if (!config.rep) ffnM = 2 * p * w * hf + p * hf * 25;
    else if (merged) ffnM = 2 * p * w * hf + p * hf * 25;
    else ffnM = p * (w * h2 + h2 * hf) + p * hf * (25 + 9 + 1) + p * (hf * h2 + h2 * w);
    const attnM = p * w * kd * kd + p * w * 3 * w + 2 * ((p * p) / (r * r)) * w + p * w * w;
    return 2 * (w * 6 * w + attnM + ffnM);
  };
  let m = P[0] * C * h * 9;
  for (const w of [h, 2 * h, 4 * h]) m += 256 * w + w * w;
  levelWidths(h).forEach((w, i) => (m += config.depth[i] * blockMacs(w, P[i], df[i])));
  m += P[0] * h * (h / 2) * 9 + P[1] * 2 * h * h * 9; // down1_2, down2_3
  m += P[2] * 4 * h * 8 * h * 9 + P[1] * 4 * h * 2 * h; // up3_2, reduce_chan_level2
  m += P[1] * 2 * h * 4 * h * 9 + P[0] * 2 * h * 2 * h; // up2_1, reduce_chan_level1
  m += P[0] * 2 * h * 2 * h * 9 + 2 * h * 4 * h + P[0] * 2 * h * out * 9; // output, final adaLN, out_proj
  return m;
}

// ---------------------------------------------------------------------------------------------
// Golden check
// ---------------------------------------------------------------------------------------------

/**
 * Runs a U-DiT golden file: `out_unmerged` and every gradient through the
 * training form, `out` and `cfg.out` through the merged inference form (as
 * the official `.eval()` path made them), and every `rep.*` tensor against
 * {@link merge}. Report keys: `out_unmerged`, `out`, `cfg.out`, `grad.*`, `rep.*`.
 */
export async function checkGolden(
  golden: Record<string, Tensor>,
  metadata: Record<string, string>,
  opts: { dtype?: "f32" | "f64" } = {},
): Promise<GoldenReport> {
  if (!golden["out"] || !golden["out_unmerged"]) {
    throw new DifflabError(`U-DiT golden: file needs both out and out_unmerged`);
  }
  const trainForm: Record<string, Tensor> = { ...golden, out: golden["out_unmerged"] };
  const cast = (t: Tensor, like: Tensor) => (t.dtype !== like.dtype && t.dtype === "f32" ? ops.cast(t, like.dtype) : t);
  const report = await checkModelGolden(def, trainForm, metadata, {
    dtype: opts.dtype,
    // cfg.out comes from the official eval path, i.e. the merged FFNs.
    cfg: (p, x, t, y, s, c) => {
      const mp = merge(p, c);
      return forwardWithCfg((xx, tt, yy) => apply(mp, xx, tt, yy!, c), x, t, y, { scale: s });
    },
    extra: (p, g, c) =>
      tidy(() => {
        const like = p.x_embedder.proj.weight;
        const mp = merge(p, c);
        const pairs: Record<string, [Tensor, Tensor]> = {
          "out(merged)": [apply(mp, cast(g["x"], like), g["t"], g["y"], c), golden["out"]],
        };
        const flat = flattenTree(mp);
        for (const [k, ref] of Object.entries(golden)) {
          if (!k.startsWith("rep.")) continue;
          const ours = flat[k.slice(4)];
          if (!ours) throw new DifflabError(`U-DiT golden: merge produced no ${k.slice(4)}`);
          pairs[k] = [ours, ref];
        }
        return pairs;
      }),
  });
  for (const e of report.entries) {
    if (e.key === "out") e.key = "out_unmerged";
    else if (e.key === "out(merged)") e.key = "out";
  }
  if (report.worst === "out") report.worst = "out_unmerged";
  else if (report.worst === "out(merged)") report.worst = "out";
  return report;
}

/** The U-DiT family definition (registered by models/registry.ts). */
export const def: ModelDef<UDiTConfig, UDiTParams> = {
  family: "U-DiT",
  configs,
  init: (key, config) => init(key, config),
  apply: (params, x, t, y, config, opts) => apply(params, x, t, y, config, opts as UDiTApplyOptions),
  flops: (config) => flops(config),
  paramShapes,
  configFromOfficial,
};
