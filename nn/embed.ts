/**
 * @file Conditioning and position embeddings of the DiT family: the
 * sinusoidal timestep embedding (cos first), DiT's `TimestepEmbedder` and
 * `LabelEmbedder` (null class for classifier-free guidance, keyed label
 * dropout), and MAE/DiT's fixed 2-D sin-cos position table.
 */
import { silu } from "./activations.ts";
import { initWeightBias, normalInit, type WeightInit } from "./init.ts";
import { linearApply, type LinearParams } from "./linear.ts";
import { allocHost, type DType, isFloat } from "../tensor/dtype.ts";
import { DifflabError, DTypeError, fmtShape, ShapeError } from "../tensor/errors.ts";
import * as ops from "../tensor/ops.ts";
import * as random from "../tensor/random.ts";
import type { Key } from "../tensor/random.ts";
import { fromHost, Tensor } from "../tensor/tensor.ts";

/**
 * DiT's sinusoidal timestep embedding: `freqs_i = exp(-ln(maxPeriod)·i/half)`,
 * `emb = [cos(t·freqs), sin(t·freqs)]` (cos first), a zero column appended
 * for odd `dim`. `t` is `[N]` of any numeric dtype; the result is `[N, dim]`
 * in `dtype` (default: t's dtype when floating, else f32). For f32 the
 * frequencies are rounded step by step as torch computes them in float32.
 */
export function timestepEmbedding(
  t: Tensor,
  dim: number,
  opts: { maxPeriod?: number; dtype?: DType } = {},
): Tensor {
  if (!(t instanceof Tensor) || t.ndim !== 1) {
    throw new ShapeError(
      `timestepEmbedding: t must be a 1-D Tensor [N], got ${t instanceof Tensor ? fmtShape(t.shape) : typeof t}`,
    );
  }
  if (!Number.isInteger(dim) || dim < 1) {
    throw new DifflabError(`timestepEmbedding: dim must be a positive integer, got ${dim}`);
  }
  const dtype = opts.dtype ?? (isFloat(t.dtype) ? t.dtype : "f32");
  if (!isFloat(dtype)) throw new DTypeError(`timestepEmbedding: dtype must be floating-point, got ${dtype}`);
  const maxPeriod = opts.maxPeriod ?? 10000;
  const half = Math.floor(dim / 2);
  const r = dtype === "f64" ? (v: number) => v : Math.fround;
  const f = allocHost(dtype, half);
  const c = r(-Math.log(maxPeriod));
  for (let i = 0; i < half; i++) f[i] = Math.exp(r(r(c * i) / half));
  const freqs = fromHost(f, [1, half], dtype);
  const args = ops.mul(ops.reshape(ops.cast(t, dtype), [t.shape[0], 1]), freqs);
  const parts = [ops.cos(args), ops.sin(args)];
  if (dim % 2) parts.push(ops.zeros([t.shape[0], 1], dtype));
  return ops.concat(parts, 1);
}

/** Configuration of {@link timestepEmbedder}. */
export interface TimestepEmbedderConfig {
  /** Output width D. */
  hiddenSize: number;
  /** Width of the sinusoidal features (default 256). */
  frequencyEmbeddingSize?: number;
  /** Linear weight init: DiT uses `{ normal: 0.02 }` (with zero biases); default "torch". */
  init?: WeightInit;
  /** Parameter dtype (default f32). */
  dtype?: DType;
}

/** Parameters of {@link timestepEmbedder}, named like DiT's `mlp.0` / `mlp.2` (index 1 is the SiLU). */
export interface TimestepEmbedderParams {
  /** The MLP on the sinusoidal features: `0` is `Linear(F, D)`, `2` is `Linear(D, D)`. */
  mlp: { "0": LinearParams; "2": LinearParams };
}

/** Initialises DiT's TimestepEmbedder: `Linear(F, D) -> SiLU -> Linear(D, D)`. */
export function timestepEmbedderInit(key: Key, cfg: TimestepEmbedderConfig): TimestepEmbedderParams {
  const F = cfg.frequencyEmbeddingSize ?? 256, D = cfg.hiddenSize;
  const [k0, k2] = random.split(key, 2);
  const scheme = cfg.init ?? "torch";
  return {
    mlp: {
      "0": initWeightBias(k0, [D, F], true, scheme, { dtype: cfg.dtype }) as LinearParams,
      "2": initWeightBias(k2, [D, D], true, scheme, { dtype: cfg.dtype }) as LinearParams,
    },
  };
}

/** Embeds timesteps `t [N]` to `[N, D]` (max period 10000). */
export function timestepEmbedderApply(p: TimestepEmbedderParams, t: Tensor, opts: { maxPeriod?: number } = {}): Tensor {
  const l0 = p?.mlp?.["0"], l2 = p?.mlp?.["2"];
  if (!(l0?.weight instanceof Tensor) || !(l2?.weight instanceof Tensor)) {
    throw new DifflabError(`timestepEmbedder: params need mlp["0"] and mlp["2"] linear layers`);
  }
  const emb = timestepEmbedding(t, l0.weight.shape[1], { maxPeriod: opts.maxPeriod, dtype: l0.weight.dtype });
  return linearApply(l2, silu(linearApply(l0, emb)));
}

/** DiT's TimestepEmbedder as an `init`/`apply` pair. */
export const timestepEmbedder: { init: typeof timestepEmbedderInit; apply: typeof timestepEmbedderApply } = {
  init: timestepEmbedderInit,
  apply: timestepEmbedderApply,
};

/**
 * DiT's `token_drop`: each label becomes `nullClass` with probability `p`
 * (drawn with `key`), or exactly where `forceDrop` (bool `[N]`) is true.
 * Shared by models with several label tables (DiCo) so all tables drop alike.
 */
export function labelDrop(
  labels: Tensor,
  nullClass: number,
  opts: { p?: number; key?: Key; forceDrop?: Tensor } = {},
): Tensor {
  if (!(labels instanceof Tensor) || labels.ndim !== 1) {
    throw new ShapeError(`labelDrop: labels must be a 1-D Tensor [N]`);
  }
  const ids = labels.dtype === "i32" ? labels : ops.cast(labels, "i32");
  let drop: Tensor | undefined;
  if (opts.forceDrop !== undefined) {
    const fd = opts.forceDrop;
    if (!(fd instanceof Tensor) || fd.ndim !== 1 || fd.shape[0] !== ids.shape[0]) {
      throw new ShapeError(`labelDrop: forceDrop must have shape [${ids.shape[0]}]`);
    }
    drop = fd.dtype === "bool" ? fd : ops.equal(ops.cast(fd, "i32"), 1);
  } else if (opts.key !== undefined && (opts.p ?? 0) > 0) {
    drop = ops.less(random.uniform(opts.key, [ids.shape[0]]), opts.p!);
  }
  return drop === undefined ? ids : ops.where(drop, ops.scalar(nullClass, "i32", ids), ids);
}

/** Configuration of {@link labelEmbedder}. */
export interface LabelEmbedderConfig {
  /** Number of real classes K; the table gets row K as the null class when dropoutProb > 0. */
  numClasses: number;
  /** Width D. */
  hiddenSize: number;
  /** Label dropout probability for CFG training (default 0.1, as DiT). */
  dropoutProb?: number;
  /** Std of the table's normal init (DiT: 0.02; torch's Embedding default: 1). Default 0.02. */
  std?: number;
  /** Parameter dtype (default f32). */
  dtype?: DType;
}

/** Parameters of {@link labelEmbedder}, named like DiT's `embedding_table.weight`. */
export interface LabelEmbedderParams {
  /** Class embedding table `weight [K (+1 null class when dropout > 0), D]`. */
  embedding_table: { weight: Tensor };
}

/** Initialises DiT's LabelEmbedder: a `[K + (dropoutProb > 0), D]` table. */
export function labelEmbedderInit(key: Key, cfg: LabelEmbedderConfig): LabelEmbedderParams {
  const rows = cfg.numClasses + ((cfg.dropoutProb ?? 0.1) > 0 ? 1 : 0);
  if (!Number.isInteger(cfg.numClasses) || cfg.numClasses < 1) {
    throw new DifflabError(`labelEmbedder.init: numClasses must be a positive integer, got ${cfg.numClasses}`);
  }
  return {
    embedding_table: { weight: normalInit(key, [rows, cfg.hiddenSize], { std: cfg.std ?? 0.02, dtype: cfg.dtype }) },
  };
}

/** Options of {@link labelEmbedderApply}. */
export interface LabelEmbedderApplyOptions {
  /** Number of real classes K (the null class id). Default: table rows - 1. */
  numClasses?: number;
  /** Training mode: drop labels with `dropoutProb` using `key`. */
  train?: boolean;
  /** Label dropout probability (default 0.1). */
  dropoutProb?: number;
  /** Key of the dropout draw (required when training with dropoutProb > 0). */
  key?: Key;
  /** Force the null class where true (CFG's unconditional half). */
  forceDrop?: Tensor;
}

/** Embeds labels `[N]` to `[N, D]`, with DiT's train-time dropout to the null class. */
export function labelEmbedderApply(
  p: LabelEmbedderParams,
  labels: Tensor,
  opts: LabelEmbedderApplyOptions = {},
): Tensor {
  const table = p?.embedding_table?.weight;
  if (!(table instanceof Tensor) || table.ndim !== 2) {
    throw new DifflabError(`labelEmbedder: params.embedding_table.weight is missing`);
  }
  const K = opts.numClasses ?? table.shape[0] - 1;
  const pDrop = opts.dropoutProb ?? 0.1;
  let ids = labels;
  if ((opts.train && pDrop > 0) || opts.forceDrop !== undefined) {
    if (opts.train && pDrop > 0 && opts.forceDrop === undefined && opts.key === undefined) {
      throw new DifflabError(`labelEmbedder: training with dropoutProb ${pDrop} needs a key`);
    }
    if (K >= table.shape[0]) {
      throw new ShapeError(`labelEmbedder: the table has no null row ${K} (${table.shape[0]} rows)`);
    }
    ids = labelDrop(labels, K, { p: pDrop, key: opts.key, forceDrop: opts.forceDrop });
  }
  return ops.take(table, ids.dtype === "i32" ? ids : ops.cast(ids, "i32"), 0);
}

/** DiT's LabelEmbedder as an `init`/`apply` pair. */
export const labelEmbedder: { init: typeof labelEmbedderInit; apply: typeof labelEmbedderApply } = {
  init: labelEmbedderInit,
  apply: labelEmbedderApply,
};

function sincos1d(dim: number, pos: ArrayLike<number>): Float64Array {
  if (dim % 2) throw new ShapeError(`sincosPosEmbed: the embedding width ${dim} must be even`);
  const half = dim / 2;
  const omega = Array.from({ length: half }, (_, k) => 1 / 10000 ** (k / half));
  const out = new Float64Array(pos.length * dim);
  for (let m = 0; m < pos.length; m++) {
    for (let k = 0; k < half; k++) {
      const a = pos[m] * omega[k];
      out[m * dim + k] = Math.sin(a);
      out[m * dim + half + k] = Math.cos(a);
    }
  }
  return out;
}

function toDtype(v: Float64Array, shape: number[], dtype: DType): Tensor {
  const h = allocHost(dtype, v.length);
  for (let i = 0; i < v.length; i++) h[i] = v[i];
  return fromHost(h, shape, dtype);
}

/** MAE's 1-D sin-cos table `[len(pos), dim]`: `[sin(pos·ω), cos(pos·ω)]`, ω_k = 10000^(-2k/dim), in f64 then cast. */
export function sincosPosEmbed1d(dim: number, positions: ArrayLike<number>, opts: { dtype?: DType } = {}): Tensor {
  return toDtype(sincos1d(dim, positions), [positions.length, dim], opts.dtype ?? "f32");
}

/**
 * DiT/MAE's `get_2d_sincos_pos_embed` for a `gridH × gridW` grid, tokens in
 * row-major order: `[T (+extraTokens), dim]` whose first half encodes the
 * column and second half the row (meshgrid's w-first order), computed in f64
 * and cast. `extraTokens` zero rows are prepended (cls tokens).
 */
export function sincosPosEmbed2d(
  dim: number,
  gridH: number,
  gridW: number = gridH,
  opts: { dtype?: DType; extraTokens?: number } = {},
): Tensor {
  if (dim % 4) throw new ShapeError(`sincosPosEmbed2d: dim must be a multiple of 4, got ${dim}`);
  if (![gridH, gridW].every((g) => Number.isInteger(g) && g >= 1)) {
    throw new ShapeError(`sincosPosEmbed2d: grid sizes must be positive integers, got ${gridH}x${gridW}`);
  }
  const T = gridH * gridW, half = dim / 2, extra = opts.extraTokens ?? 0;
  const cols = Float64Array.from({ length: T }, (_, p) => p % gridW);
  const rows = Float64Array.from({ length: T }, (_, p) => Math.floor(p / gridW));
  const ew = sincos1d(half, cols), eh = sincos1d(half, rows);
  const out = new Float64Array((T + extra) * dim);
  for (let p = 0; p < T; p++) {
    out.set(ew.subarray(p * half, (p + 1) * half), (p + extra) * dim);
    out.set(eh.subarray(p * half, (p + 1) * half), (p + extra) * dim + half);
  }
  return toDtype(out, [T + extra, dim], opts.dtype ?? "f32");
}
