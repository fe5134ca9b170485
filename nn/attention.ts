/**
 * @file Attention: scaled dot-product attention, U-DiT's cosine attention
 * with a clamped learned temperature, 2-D rotary position embedding with
 * U-DiT's interleaved (x, y) pair layout, and a multi-head self-attention
 * layer with timm/DiT parameter names (`qkv`, `proj`).
 */
import { initWeightBias, type WeightInit } from "./init.ts";
import { linearApply, type LinearParams } from "./linear.ts";
import type { DType } from "../tensor/dtype.ts";
import { DifflabError, DTypeError, fmtShape, ShapeError } from "../tensor/errors.ts";
import * as ops from "../tensor/ops.ts";
import * as random from "../tensor/random.ts";
import type { Key } from "../tensor/random.ts";
import { fromHost, Tensor } from "../tensor/tensor.ts";
import { allocHost } from "../tensor/dtype.ts";

/** `min(x, max)` whose gradient passes where `x <= max`, like `torch.clamp(x, max=...)`. */
export function clampMax(x: Tensor, max: number): Tensor {
  return ops.where(ops.lessEqual(x, max), x, max);
}

/** `max(x, min)` whose gradient passes where `x >= min`, like `torch.clamp(x, min=...)`. */
export function clampMin(x: Tensor, min: number): Tensor {
  return ops.where(ops.greaterEqual(x, min), x, min);
}

/** `F.normalize(x, dim=axis)`: `x / max(‖x‖₂, eps)`. */
export function l2Normalize(x: Tensor, axis = -1, eps = 1e-12): Tensor {
  const n = ops.sqrt(ops.sum(ops.mul(x, x), { axis, keepdims: true }));
  return ops.div(x, clampMin(n, eps));
}

function checkQkv(op: string, q: Tensor, k: Tensor, v: Tensor) {
  for (const [n, t] of [["q", q], ["k", k], ["v", v]] as const) {
    if (!(t instanceof Tensor) || t.ndim < 2) throw new ShapeError(`${op}: ${n} must be a Tensor [..., T, D]`);
  }
  if (q.shape[q.ndim - 1] !== k.shape[k.ndim - 1] || k.shape[k.ndim - 2] !== v.shape[v.ndim - 2]) {
    throw new ShapeError(
      `${op}: q ${fmtShape(q.shape)}, k ${fmtShape(k.shape)}, v ${
        fmtShape(v.shape)
      } need q/k feature sizes and k/v token counts to agree`,
    );
  }
  if (q.dtype !== k.dtype || k.dtype !== v.dtype) {
    throw new DTypeError(`${op}: q, k, v dtypes ${q.dtype}, ${k.dtype}, ${v.dtype} differ`);
  }
}

function attend(scores: Tensor, v: Tensor, mask?: Tensor): Tensor {
  const s = mask === undefined ? scores : ops.where(mask, scores, -Infinity);
  return ops.matmul(ops.softmax(s, -1), v);
}

/** Options of {@link attention}. */
export interface AttentionOptions {
  /** Multiplies q before q·kᵀ (default 1/√head_dim, applied to q first as timm does). */
  scale?: number;
  /** Boolean mask broadcastable to `[..., Tq, Tk]`: true keeps a score. */
  mask?: Tensor;
}

/** Scaled dot-product attention `softmax((q·scale)·kᵀ)·v` on `[..., T, D]` operands. */
export function attention(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions = {}): Tensor {
  checkQkv("attention", q, k, v);
  const scale = opts.scale ?? q.shape[q.ndim - 1] ** -0.5;
  return attend(ops.matmul(ops.mul(q, scale), ops.swapaxes(k, -1, -2)), v, opts.mask);
}

/** Options of {@link cosineAttention}. */
export interface CosineAttentionOptions {
  /** Clamp on the log temperature before exp (U-DiT: 4.6052, i.e. scale ≤ 100). */
  maxLogScale?: number;
  /** Floor of the L2 norm in `F.normalize` (default 1e-12). */
  eps?: number;
  /** Boolean keep-mask broadcastable to the scores. */
  mask?: Tensor;
}

/**
 * Cosine-similarity attention (U-DiT's "v2", Swin-v2 style):
 * `softmax(normalize(q)·normalize(k)ᵀ · exp(min(logitScale, maxLogScale)))·v`.
 * `logitScale` broadcasts against the scores, e.g. `[heads, 1, 1]`.
 */
export function cosineAttention(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  logitScale: Tensor,
  opts: CosineAttentionOptions = {},
): Tensor {
  checkQkv("cosineAttention", q, k, v);
  const eps = opts.eps ?? 1e-12;
  const s = ops.matmul(l2Normalize(q, -1, eps), ops.swapaxes(l2Normalize(k, -1, eps), -1, -2));
  return attend(ops.mul(s, ops.exp(clampMax(logitScale, opts.maxLogScale ?? 4.6052))), v, opts.mask);
}

/** Splits the last axis into heads: `[B, T, H·d]` to `[B, H, T, d]`. */
export function splitHeads(x: Tensor, heads: number): Tensor {
  const D = x.shape[x.ndim - 1];
  if (!Number.isInteger(heads) || heads < 1 || D % heads !== 0) {
    throw new ShapeError(`splitHeads: ${D} features of ${fmtShape(x.shape)} do not divide into ${heads} heads`);
  }
  const lead = x.shape.slice(0, -2);
  const r = ops.reshape(x, [...lead, x.shape[x.ndim - 2], heads, D / heads]);
  return ops.swapaxes(r, -2, -3);
}

/** Inverse of {@link splitHeads}: `[B, H, T, d]` to `[B, T, H·d]` (head-major channels). */
export function mergeHeads(x: Tensor): Tensor {
  if (x.ndim < 3) throw new ShapeError(`mergeHeads: x must be [..., H, T, d], got ${fmtShape(x.shape)}`);
  const t = ops.swapaxes(x, -2, -3);
  return ops.reshape(t, [...t.shape.slice(0, -2), t.shape[t.ndim - 2] * t.shape[t.ndim - 1]]);
}

/** Rotation table of a rotary embedding: cos/sin `[T, headDim/2]`, one row per token. */
export interface RopeTable {
  /** Cosine of each token's rotation angle per complex channel pair, `[T, headDim/2]`. */
  cos: Tensor;
  /** Sine of each token's rotation angle per complex channel pair, `[T, headDim/2]`. */
  sin: Tensor;
}

/**
 * U-DiT's 2-D RoPE table (`precompute_freqs_cis_2d`) for a `gridH × gridW`
 * token grid in row-major order. Frequencies `f_m = theta^(-4m/headDim)`,
 * m < headDim/4; complex pair j (channels 2j, 2j+1) turns by `col·f_{j/2}`
 * for even j and `row·f_{(j-1)/2}` for odd j. For f32 the table is rounded
 * step by step as torch computes it in float32; for f64 it is exact.
 */
export function rope2dTable(
  headDim: number,
  gridH: number,
  gridW: number,
  opts: { theta?: number; dtype?: DType } = {},
): RopeTable {
  if (!Number.isInteger(headDim) || headDim < 4 || headDim % 4 !== 0) {
    throw new ShapeError(`rope2dTable: headDim must be a positive multiple of 4, got ${headDim}`);
  }
  if (![gridH, gridW].every((g) => Number.isInteger(g) && g >= 1)) {
    throw new ShapeError(`rope2dTable: grid sizes must be positive integers, got ${gridH}x${gridW}`);
  }
  const dtype = opts.dtype ?? "f32";
  const theta = opts.theta ?? 10000;
  const r = dtype === "f64" ? (v: number) => v : Math.fround;
  const q = headDim / 4, T = gridH * gridW;
  const freqs = Array.from({ length: q }, (_, m) => r(1 / r(theta ** r((4 * m) / headDim))));
  const c = allocHost(dtype, T * 2 * q), s = allocHost(dtype, T * 2 * q);
  for (let p = 0; p < T; p++) {
    const x = p % gridW, y = Math.floor(p / gridW);
    for (let m = 0; m < q; m++) {
      const ax = r(x * freqs[m]), ay = r(y * freqs[m]);
      c[p * 2 * q + 2 * m] = Math.cos(ax);
      s[p * 2 * q + 2 * m] = Math.sin(ax);
      c[p * 2 * q + 2 * m + 1] = Math.cos(ay);
      s[p * 2 * q + 2 * m + 1] = Math.sin(ay);
    }
  }
  return { cos: fromHost(c, [T, 2 * q], dtype), sin: fromHost(s, [T, 2 * q], dtype) };
}

/**
 * Rotates adjacent channel pairs `(2j, 2j+1)` of `x [..., T, d]` by the
 * table's angles: `(a, b) -> (a·cos - b·sin, a·sin + b·cos)`.
 */
export function applyRope(x: Tensor, table: RopeTable): Tensor {
  if (!(x instanceof Tensor) || x.ndim < 2) throw new ShapeError(`applyRope: x must be [..., T, d]`);
  const [T, d] = x.shape.slice(-2);
  if (table.cos.shape[0] !== T || table.cos.shape[1] * 2 !== d) {
    throw new ShapeError(
      `applyRope: table ${fmtShape(table.cos.shape)} does not fit x ${fmtShape(x.shape)} (need [T, d/2])`,
    );
  }
  const pairs = ops.reshape(x, [...x.shape.slice(0, -1), d / 2, 2]);
  const [a, b] = ops.split(pairs, 2, -1);
  const c = ops.reshape(table.cos, [T, d / 2, 1]), s = ops.reshape(table.sin, [T, d / 2, 1]);
  const re = ops.sub(ops.mul(a, c), ops.mul(b, s));
  const im = ops.add(ops.mul(a, s), ops.mul(b, c));
  return ops.reshape(ops.concat([re, im], -1), x.shape);
}

/** Configuration of {@link mha}. */
export interface MhaConfig {
  /** Model width D. */
  dim: number;
  /** Number of heads (D must divide by it). */
  heads: number;
  /** Bias on the fused qkv projection (default true, as DiT; DiMR uses false). */
  qkvBias?: boolean;
  /** Bias on the output projection (default true). */
  projBias?: boolean;
  /** Learn U-DiT's per-head `logit_scale [heads,1,1]` (init ln 10) for cosine attention (default false). */
  cosine?: boolean;
  /** Weight initialiser (default "torch"). */
  init?: WeightInit;
  /** Parameter dtype (default f32). */
  dtype?: DType;
}

/** Parameters of {@link mha}. */
export interface MhaParams {
  /** Fused query/key/value projection, weight `[3·dim, dim]` (output laid out q|k|v, head-major). */
  qkv: LinearParams;
  /** Output projection applied after merging heads, weight `[dim, dim]`. */
  proj: LinearParams;
  /** Per-head log temperature `[heads, 1, 1]` of cosine attention; present only when `cosine` was set. */
  logit_scale?: Tensor;
}

/** Initialises multi-head self-attention. */
export function mhaInit(key: Key, cfg: MhaConfig): MhaParams {
  if (!Number.isInteger(cfg.heads) || cfg.heads < 1 || cfg.dim % cfg.heads !== 0) {
    throw new ShapeError(`mha.init: dim ${cfg.dim} must divide into ${cfg.heads} heads`);
  }
  const [k1, k2] = random.split(key, 2);
  const scheme = cfg.init ?? "torch";
  const p: MhaParams = {
    qkv: initWeightBias(k1, [3 * cfg.dim, cfg.dim], cfg.qkvBias ?? true, scheme, { dtype: cfg.dtype }) as LinearParams,
    proj: initWeightBias(k2, [cfg.dim, cfg.dim], cfg.projBias ?? true, scheme, { dtype: cfg.dtype }) as LinearParams,
  };
  if (cfg.cosine) p.logit_scale = ops.add(ops.full([cfg.heads, 1, 1], Math.log(10), cfg.dtype ?? "f32"), 0);
  return p;
}

/** Options of {@link mhaApply}. */
export interface MhaApplyOptions {
  /** Number of heads. */
  heads: number;
  /** Rotary table applied to q and k (e.g. from {@link rope2dTable}). */
  rope?: RopeTable;
  /** Softmax temperature for dot-product attention (default 1/√head_dim). */
  scale?: number;
  /** Clamp of the cosine-attention log temperature (default 4.6052). */
  maxLogScale?: number;
  /** Boolean keep-mask broadcastable to `[B, H, T, T]`. */
  mask?: Tensor;
}

/**
 * Multi-head self-attention over `x [B, T, D]`: the fused qkv output is laid
 * out `(q|k|v, head, d)` as timm and DiMR reshape it; cosine attention is used
 * when the params hold `logit_scale`.
 */
export function mhaApply(p: MhaParams, x: Tensor, opts: MhaApplyOptions): Tensor {
  if (!(x instanceof Tensor) || x.ndim !== 3) throw new ShapeError(`mha: x must be [B, T, D]`);
  const [B, T, D] = x.shape;
  const H = opts.heads;
  if (!Number.isInteger(H) || H < 1 || D % H !== 0) throw new ShapeError(`mha: width ${D} must divide into ${H} heads`);
  const qkv = ops.transpose(ops.reshape(linearApply(p.qkv, x), [B, T, 3, H, D / H]), [2, 0, 3, 1, 4]);
  let [q, k, v] = ops.split(qkv, 3, 0).map((t) => ops.reshape(t, [B, H, T, D / H]));
  if (opts.rope) [q, k] = [applyRope(q, opts.rope), applyRope(k, opts.rope)];
  let o: Tensor;
  if (p.logit_scale !== undefined) {
    o = cosineAttention(q, k, v, p.logit_scale, { maxLogScale: opts.maxLogScale, mask: opts.mask });
  } else o = attention(q, k, v, { scale: opts.scale, mask: opts.mask });
  if (!(p.proj?.weight instanceof Tensor)) throw new DifflabError(`mha: params.proj.weight is missing`);
  return linearApply(p.proj, mergeHeads(o));
}

/** Multi-head self-attention as an `init`/`apply` pair. */
export const mha: { init: typeof mhaInit; apply: typeof mhaApply } = { init: mhaInit, apply: mhaApply };
