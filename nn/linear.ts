/**
 * @file Dense layers: `linear` (PyTorch layout: weight `[out, in]`, so
 * official state_dict tensors load 1:1), `embedding` (a lookup table) and
 * `mlp` (two layers, or DiMR's gated GELU form).
 */
import { activate, type Activation } from "./activations.ts";
import { initWeightBias, normalInit, type WeightInit } from "./init.ts";
import type { DType } from "../tensor/dtype.ts";
import { DifflabError, DTypeError, fmtShape, ShapeError } from "../tensor/errors.ts";
import * as ops from "../tensor/ops.ts";
import * as random from "../tensor/random.ts";
import type { Key } from "../tensor/random.ts";
import { Tensor } from "../tensor/tensor.ts";

/** Configuration of {@link linear}. */
export interface LinearConfig {
  /** Input features. */
  inFeatures: number;
  /** Output features. */
  outFeatures: number;
  /** Learn an additive bias (default true). */
  bias?: boolean;
  /** Weight initialiser (default "torch": kaiming_uniform a=√5, bias U(±1/√in)). */
  init?: WeightInit;
  /** Parameter dtype (default f32). */
  dtype?: DType;
}

/** Parameters of {@link linear}: weight `[out, in]` and optional bias `[out]`. */
export interface LinearParams {
  /** Weight matrix `[out, in]` (PyTorch layout: `y = x·Wᵀ + b`). */
  weight: Tensor;
  /** Additive bias `[out]`; absent when the layer has no bias. */
  bias?: Tensor;
}

function checkDim(op: string, name: string, v: number) {
  if (!Number.isInteger(v) || v < 1) throw new DifflabError(`${op}: ${name} must be a positive integer, got ${v}`);
}

/** Initialises a linear layer. */
export function linearInit(key: Key, cfg: LinearConfig): LinearParams {
  checkDim("linear.init", "inFeatures", cfg.inFeatures);
  checkDim("linear.init", "outFeatures", cfg.outFeatures);
  return initWeightBias(key, [cfg.outFeatures, cfg.inFeatures], cfg.bias ?? true, cfg.init ?? "torch", {
    dtype: cfg.dtype,
  }) as LinearParams;
}

/** `y = x·Wᵀ + b` over the last axis of `x` (any leading shape). */
export function linearApply(p: LinearParams, x: Tensor): Tensor {
  if (!(p?.weight instanceof Tensor) || p.weight.ndim !== 2) {
    throw new ShapeError(`linear: params.weight must be a [out, in] Tensor, got ${p?.weight}`);
  }
  if (!(x instanceof Tensor) || x.ndim < 1) throw new ShapeError(`linear: x must be a Tensor of rank >= 1`);
  const [out, inF] = p.weight.shape;
  if (x.shape[x.ndim - 1] !== inF) {
    throw new ShapeError(
      `linear: x ${fmtShape(x.shape)} has ${x.shape[x.ndim - 1]} features, weight ${
        fmtShape(p.weight.shape)
      } expects ${inF}`,
    );
  }
  if (x.dtype !== p.weight.dtype) {
    throw new DTypeError(`linear: x dtype ${x.dtype} and weight dtype ${p.weight.dtype} differ`);
  }
  // One 2-D matmul against the transposed weight: broadcasting the weight over
  // leading axes would materialise one copy per batch row.
  const lead = x.shape.slice(0, -1);
  let y = ops.matmul(ops.reshape(x, [-1, inF]), ops.transpose(p.weight));
  if (p.bias !== undefined) {
    if (!(p.bias instanceof Tensor) || p.bias.ndim !== 1 || p.bias.shape[0] !== out) {
      throw new ShapeError(
        `linear: bias must have shape [${out}], got ${p.bias instanceof Tensor ? fmtShape(p.bias.shape) : p.bias}`,
      );
    }
    y = ops.add(y, p.bias);
  }
  return ops.reshape(y, [...lead, out]);
}

/** The linear layer as an `init`/`apply` pair. */
export const linear: { init: typeof linearInit; apply: typeof linearApply } = { init: linearInit, apply: linearApply };

/** Configuration of {@link embedding}. */
export interface EmbeddingConfig {
  /** Number of rows. */
  numEmbeddings: number;
  /** Row width. */
  dim: number;
  /** Standard deviation of the normal init (torch's default 1; DiT's label table 0.02). */
  std?: number;
  /** Parameter dtype (default f32). */
  dtype?: DType;
}

/** Parameters of {@link embedding}: `weight [numEmbeddings, dim]`. */
export interface EmbeddingParams {
  /** Lookup table `[numEmbeddings, dim]`; row i is the vector of index i. */
  weight: Tensor;
}

/** Initialises an embedding table with N(0, std²). */
export function embeddingInit(key: Key, cfg: EmbeddingConfig): EmbeddingParams {
  checkDim("embedding.init", "numEmbeddings", cfg.numEmbeddings);
  checkDim("embedding.init", "dim", cfg.dim);
  return { weight: normalInit(key, [cfg.numEmbeddings, cfg.dim], { std: cfg.std ?? 1, dtype: cfg.dtype }) };
}

/** Looks up rows: `ids` (i32, any shape) to `[...ids.shape, dim]`. */
export function embeddingApply(p: EmbeddingParams, ids: Tensor): Tensor {
  if (!(ids instanceof Tensor)) throw new DifflabError(`embedding: ids must be a Tensor`);
  const idx = ids.dtype === "i32" ? ids : ops.cast(ids, "i32");
  return ops.take(p.weight, idx, 0);
}

/** The embedding table as an `init`/`apply` pair. */
export const embedding: { init: typeof embeddingInit; apply: typeof embeddingApply } = {
  init: embeddingInit,
  apply: embeddingApply,
};

/** Configuration of {@link mlp}. */
export interface MlpConfig {
  /** Input features. */
  inFeatures: number;
  /** Hidden features. */
  hiddenFeatures: number;
  /** Output features (default inFeatures). */
  outFeatures?: number;
  /** Biases on every layer (default true). */
  bias?: boolean;
  /** DiMR's gated form `w2(act(w0·x) ⊙ w1·x)` instead of `fc2(act(fc1·x))` (default false). */
  gated?: boolean;
  /** Weight initialiser of every layer (default "torch"). */
  init?: WeightInit;
  /** Parameter dtype (default f32). */
  dtype?: DType;
}

/** Parameters of {@link mlp}: timm's `fc1`/`fc2`, or DiMR's `w0`/`w1`/`w2` when gated. */
export type MlpParams = { fc1: LinearParams; fc2: LinearParams } | {
  w0: LinearParams;
  w1: LinearParams;
  w2: LinearParams;
};

/** Initialises an MLP. */
export function mlpInit(key: Key, cfg: MlpConfig): MlpParams {
  const out = cfg.outFeatures ?? cfg.inFeatures;
  const common = { bias: cfg.bias ?? true, init: cfg.init, dtype: cfg.dtype };
  if (cfg.gated) {
    const [k0, k1, k2] = random.split(key, 3);
    return {
      w0: linearInit(k0, { inFeatures: cfg.inFeatures, outFeatures: cfg.hiddenFeatures, ...common }),
      w1: linearInit(k1, { inFeatures: cfg.inFeatures, outFeatures: cfg.hiddenFeatures, ...common }),
      w2: linearInit(k2, { inFeatures: cfg.hiddenFeatures, outFeatures: out, ...common }),
    };
  }
  const [k1, k2] = random.split(key, 2);
  return {
    fc1: linearInit(k1, { inFeatures: cfg.inFeatures, outFeatures: cfg.hiddenFeatures, ...common }),
    fc2: linearInit(k2, { inFeatures: cfg.hiddenFeatures, outFeatures: out, ...common }),
  };
}

/**
 * Applies an MLP over the last axis. The activation defaults to exact GELU;
 * DiT's MLP uses "gelu_tanh". The gated form is chosen by the params' names.
 */
export function mlpApply(p: MlpParams, x: Tensor, opts: { act?: Activation } = {}): Tensor {
  const act = opts.act ?? "gelu";
  if ("w0" in p) {
    return linearApply(p.w2, ops.mul(activate(linearApply(p.w0, x), act), linearApply(p.w1, x)));
  }
  if ("fc1" in p) return linearApply(p.fc2, activate(linearApply(p.fc1, x), act));
  throw new DifflabError(`mlp: params need fc1/fc2 or w0/w1/w2, got keys ${Object.keys(p ?? {}).join(", ")}`);
}

/** The MLP as an `init`/`apply` pair. */
export const mlp: { init: typeof mlpInit; apply: typeof mlpApply } = { init: mlpInit, apply: mlpApply };
