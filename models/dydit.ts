/**
 * @file DyDiT (NUS-HPC-AI-Lab, "Dynamic Diffusion Transformer"): DiT plus
 * three routers per block. Timestep-wise Dynamic Width picks attention heads
 * and MLP channel groups from the timestep embedding; Spatial-wise Dynamic
 * Token lets tokens skip the MLP. `apply` is the differentiable masked form
 * (what the official code computes, with straight-through masks);
 * `applyDynamic` really skips the work - it gathers the active heads, groups
 * and tokens, computes only those and scatters back - and reports the MACs
 * it executed.
 */
import { stopGradient } from "../autograd/autograd.ts";
import { geluTanh, relu, sigmoid } from "../nn/activations.ts";
import { mergeHeads } from "../nn/attention.ts";
import { initWeightBias, zerosInit } from "../nn/init.ts";
import { linearApply, type LinearParams } from "../nn/linear.ts";
import { modulate } from "../nn/norm.ts";
import * as ops from "../tensor/ops.ts";
import * as random from "../tensor/random.ts";
import type { Key } from "../tensor/random.ts";
import { type Tensor, tensor as mkTensor } from "../tensor/tensor.ts";
import type { ApplyOptions, ModelDef } from "./common.ts";
import * as dit from "./dit.ts";

/** DyDiT uses DiT's constructor (the routers add no hyper-parameters). */
export type DyDiTConfig = dit.DiTConfig;

/** DyDiT on every DiT size, plus this project's small `DyDiT-T/2`. */
export const configs: Readonly<Record<string, DyDiTConfig>> = Object.freeze(
  Object.fromEntries(Object.entries(dit.configs).map(([k, v]) => [k.replace(/^DiT/, "DyDiT"), v])),
);

/** Router parameters of one block (official names). */
export interface RouterParams {
  /** Head router on the timestep embedding: `Linear(D, heads)` logits, one per attention head. */
  attn_rate: { router: LinearParams };
  /** MLP channel-group router on the timestep embedding: `Linear(D, heads)` logits, one per group. */
  mlp_rate: { router: LinearParams };
  /** Per-token keep router: `Linear(D, D/16) -> ReLU -> Linear(D/16, 1)` logit for skipping the MLP. */
  token_selection: { mlp_head: { "0": LinearParams; "2": LinearParams } };
}

/** Parameters: DiT's plus routers in every block. */
export type DyDiTParams = Omit<dit.DiTParams, "blocks"> & { blocks: (dit.DiTBlockParams & RouterParams)[] };

/** Official names and shapes. */
export function paramShapes(c: DyDiTConfig): Record<string, number[]> {
  const s = dit.paramShapes(c);
  const D = c.hiddenSize, h = c.numHeads, r = Math.floor(D / 16);
  for (let i = 0; i < c.depth; i++) {
    const b = `blocks.${i}.`;
    Object.assign(s, {
      [b + "attn_rate.router.weight"]: [h, D],
      [b + "attn_rate.router.bias"]: [h],
      [b + "mlp_rate.router.weight"]: [h, D],
      [b + "mlp_rate.router.bias"]: [h],
      [b + "token_selection.mlp_head.0.weight"]: [r, D],
      [b + "token_selection.mlp_head.0.bias"]: [r],
      [b + "token_selection.mlp_head.2.weight"]: [1, r],
      [b + "token_selection.mlp_head.2.bias"]: [1],
    });
  }
  return s;
}

/**
 * DiT's init plus routers: xavier weights and biases 15 (width routers) and
 * 35 (token router), so a fresh model keeps every head, group and token.
 */
export function init(key: Key, c: DyDiTConfig): DyDiTParams {
  const [kd, kr] = random.split(key, 2);
  const base = dit.init(kd, c);
  const D = c.hiddenSize, h = c.numHeads, r = Math.floor(D / 16);
  const keys = random.split(kr, c.depth);
  const lin = (k: Key, o: number, i: number, bias: number): LinearParams => {
    const p = initWeightBias(k, [o, i], true, "xavier") as LinearParams;
    return { weight: p.weight, bias: ops.add(zerosInit([o]), bias) };
  };
  return {
    ...base,
    blocks: base.blocks.map((b, i) => {
      const [k1, k2, k3, k4] = random.split(keys[i], 4);
      return {
        ...b,
        attn_rate: { router: lin(k1, h, D, 15) },
        mlp_rate: { router: lin(k2, h, D, 15) },
        token_selection: { mlp_head: { "0": lin(k3, r, D, 0), "2": lin(k4, 1, r, 35) } },
      };
    }),
  };
}

/** Straight-through hard mask: forward `1[logit > 0]`, gradient of `sigmoid(logit)`. */
function hardMask(logit: Tensor, opts: ApplyOptions, key?: Key): Tensor {
  let l = logit;
  if (opts.train && key) {
    // Gumbel-sigmoid (tau = 1): logits + g1 - g2.
    const [k1, k2] = random.split(key, 2);
    const g = (k: Key) =>
      ops.neg(ops.log(ops.neg(ops.log(random.uniform(k, logit.shape, { dtype: logit.dtype, min: 1e-10 })))));
    l = ops.add(l, ops.sub(g(k1), g(k2)));
  }
  const soft = sigmoid(l);
  const hard = ops.cast(ops.greater(soft, 0.5), soft.dtype);
  return ops.add(ops.sub(hard, stopGradient(soft)), soft);
}

/** Everything the official forward returns besides the output. */
export interface DyDiTOutputs {
  /** Model prediction `[N, outChannels, H, W]`, as DiT's forward. */
  out: Tensor;
  /** `[N, depth, heads]` head masks. */
  attnMasks: Tensor;
  /** `[N, depth, heads]` MLP channel-group masks. */
  mlpMasks: Tensor;
  /** `[N, depth, T, 1]` token keep masks. */
  tokenMasks: Tensor;
  /** Router logits, same shapes as the masks. */
  attnLogits: Tensor;
  /** MLP channel-group router logits `[N, depth, heads]`. */
  mlpLogits: Tensor;
  /** Token router logits `[N, depth, T, 1]`. */
  tokenLogits: Tensor;
}

/** Options of the DyDiT forward. */
export interface DyDiTApplyOptions extends ApplyOptions {
  /** Ignore the routers: the static DiT path (`complete_model=True`). */
  complete?: boolean;
}

function tokenRouter(p: RouterParams, x: Tensor): Tensor {
  const h = p.token_selection.mlp_head;
  return linearApply(h["2"], relu(linearApply(h["0"], x)));
}

/** Masked forward, exactly as the official code (all heads/tokens computed, then masked). */
export function applyWithMasks(
  p: DyDiTParams,
  x: Tensor,
  t: Tensor,
  y: Tensor,
  c: DyDiTConfig,
  opts: DyDiTApplyOptions = {},
): DyDiTOutputs {
  dit.checkInput("DyDiT", x, t, y, c);
  const [kl, kr] = opts.key ? random.split(opts.key, 2) : [undefined, undefined];
  let h = dit.embedPatches(p as unknown as dit.DiTParams, x, c);
  const { tEmb, c: cond } = dit.embedConditions(p as unknown as dit.DiTParams, t, y, c, { ...opts, key: kl });
  const H = c.numHeads;
  const [N, T, D] = h.shape;
  const routeKeys = kr ? random.split(kr, 3 * c.depth) : [];
  const am: Tensor[] = [],
    mm: Tensor[] = [],
    tm: Tensor[] = [],
    al: Tensor[] = [],
    ml: Tensor[] = [],
    tl: Tensor[] = [];
  p.blocks.forEach((b, i) => {
    const [shiftMsa, scaleMsa, gateMsa, shiftMlp, scaleMlp, gateMlp] = dit.adaLN(b.adaLN_modulation, cond, 6);
    const aLog = linearApply(b.attn_rate.router, tEmb), mLog = linearApply(b.mlp_rate.router, tEmb);
    const aMask = hardMask(aLog, opts, routeKeys[3 * i]), mMask = hardMask(mLog, opts, routeKeys[3 * i + 1]);
    let heads = dit.attnHeads(b.attn, modulate(dit.norm(h), shiftMsa, scaleMsa), H);
    if (!opts.complete) heads = ops.mul(heads, ops.reshape(aMask, [N, H, 1, 1]));
    h = ops.add(h, ops.mul(ops.expandDims(gateMsa, 1), linearApply(b.attn.proj, mergeHeads(heads))));
    const tLog = tokenRouter(b, h);
    const tMask = hardMask(tLog, opts, routeKeys[3 * i + 2]);
    let f = linearApply(b.mlp.fc1, modulate(dit.norm(h), shiftMlp, scaleMlp));
    if (!opts.complete) {
      const F = f.shape[2];
      f = ops.reshape(ops.mul(ops.reshape(f, [N, T, H, F / H]), ops.reshape(mMask, [N, 1, H, 1])), [N, T, F]);
    }
    let m = ops.mul(ops.expandDims(gateMlp, 1), linearApply(b.mlp.fc2, geluTanh(f)));
    if (!opts.complete) m = ops.mul(m, tMask);
    h = ops.add(h, m);
    am.push(aMask), mm.push(mMask), tm.push(tMask), al.push(aLog), ml.push(mLog), tl.push(tLog);
  });
  void D;
  return {
    out: dit.finalLayer(p as unknown as dit.DiTParams, h, cond, c),
    attnMasks: ops.stack(am, 1),
    mlpMasks: ops.stack(mm, 1),
    tokenMasks: ops.stack(tm, 1),
    attnLogits: ops.stack(al, 1),
    mlpLogits: ops.stack(ml, 1),
    tokenLogits: ops.stack(tl, 1),
  };
}

/** Forward pass returning the output only (the masked, differentiable form). */
export function apply(
  p: DyDiTParams,
  x: Tensor,
  t: Tensor,
  y: Tensor,
  c: DyDiTConfig,
  opts: DyDiTApplyOptions = {},
): Tensor {
  return applyWithMasks(p, x, t, y, c, opts).out;
}

/** Static MACs at batch 1: DiT's plus the routers. */
export function flops(c: DyDiTConfig): number {
  const D = c.hiddenSize, T = (c.inputSize / c.patchSize) ** 2, r = Math.floor(D / 16);
  return dit.flops(c) + c.depth * (2 * D * c.numHeads + T * (D * r + r));
}

/** MACs of one block's attention and MLP for `heads` active heads, `groups` MLP groups and `tok` MLP tokens. */
function blockMacs(c: DyDiTConfig, heads: number, groups: number, tok: number): number {
  const D = c.hiddenSize, T = (c.inputSize / c.patchSize) ** 2, hd = D / c.numHeads;
  const F = Math.floor(D * c.mlpRatio), fg = F / c.numHeads;
  return T * D * 3 * heads * hd + 2 * T * T * heads * hd + T * heads * hd * D + 2 * tok * D * groups * fg;
}

/**
 * Differentiable ratio of dynamic to static MACs per sample `[N]`, from the
 * masks (straight-through), for the FLOPs-constrained training loss.
 */
export function flopsRatio(o: DyDiTOutputs, c: DyDiTConfig): Tensor {
  const D = c.hiddenSize, T = (c.inputSize / c.patchSize) ** 2, hd = D / c.numHeads;
  const F = Math.floor(D * c.mlpRatio), fg = F / c.numHeads;
  const attnPerHead = T * D * 3 * hd + 2 * T * T * hd + T * hd * D;
  const heads = ops.sum(o.attnMasks, { axis: 2 }); // [N, depth]
  const groups = ops.sum(o.mlpMasks, { axis: 2 });
  const toks = ops.sum(o.tokenMasks, { axis: [2, 3] });
  const dyn = ops.add(ops.mul(heads, attnPerHead), ops.mul(ops.mul(groups, toks), 2 * D * fg));
  const stat = c.depth * blockMacs(c, c.numHeads, c.numHeads, T);
  return ops.div(ops.sum(dyn, { axis: 1 }), stat);
}

/** The FLOPs-constrained term of DyDiT's objective: `(mean_batch(ratio) − target)²`. */
export function flopsLoss(o: DyDiTOutputs, c: DyDiTConfig, target: number): Tensor {
  const r = ops.sub(ops.mean(flopsRatio(o, c)), target);
  return ops.mul(r, r);
}

/** Result of {@link applyDynamic}. */
export interface DynamicResult {
  /** Model prediction `[N, outChannels, H, W]` computed on the active heads, groups and tokens only. */
  out: Tensor;
  /** MACs executed for the whole batch (linear, conv and attention matmuls). */
  executedMacs: number;
  /** MACs of the static DiT path for the same batch. */
  staticMacs: number;
}

function rowsOf(p: LinearParams, idx: number[]): LinearParams {
  const i = mkTensor(idx, { dtype: "i32" });
  return { weight: ops.take(p.weight, i, 0), bias: p.bias ? ops.take(p.bias, i, 0) : undefined };
}

function colsOf(p: LinearParams, idx: number[]): LinearParams {
  return { weight: ops.take(p.weight, mkTensor(idx, { dtype: "i32" }), 1), bias: p.bias };
}

async function bits(t: Tensor): Promise<boolean[]> {
  return Array.from(await t.data(), (v) => Number(v) > 0);
}

/**
 * Inference that really skips work: per block, the active heads and MLP
 * channel groups are gathered from the weights (samples sharing a routing
 * pattern run together) and only tokens kept by the token router go through
 * the MLP (gathered, computed, scattered back). Outputs equal `apply` in eval
 * mode up to float rounding.
 */
export async function applyDynamic(
  p: DyDiTParams,
  x: Tensor,
  t: Tensor,
  y: Tensor,
  c: DyDiTConfig,
): Promise<DynamicResult> {
  dit.checkInput("DyDiT", x, t, y, c);
  let h = dit.embedPatches(p as unknown as dit.DiTParams, x, c);
  const { tEmb, c: cond } = dit.embedConditions(p as unknown as dit.DiTParams, t, y, c, {});
  const Hh = c.numHeads, D = c.hiddenSize, hd = D / Hh;
  const [N, T] = h.shape;
  const F = Math.floor(D * c.mlpRatio), fg = F / Hh;
  let executed = (flops(c) - c.depth * blockMacs(c, Hh, Hh, T)) * N;
  for (const b of p.blocks) {
    const [shiftMsa, scaleMsa, gateMsa, shiftMlp, scaleMlp, gateMlp] = dit.adaLN(b.adaLN_modulation, cond, 6);
    const aOn = await bits(linearApply(b.attn_rate.router, tEmb));
    const mOn = await bits(linearApply(b.mlp_rate.router, tEmb));
    // Attention over the active heads only, per group of samples with the same head set.
    const xa = modulate(dit.norm(h), shiftMsa, scaleMsa);
    const parts: Tensor[] = [], order: number[] = [];
    for (const { samples, units: heads } of groupByPattern(N, aOn, Hh)) {
      const xs = ops.take(xa, mkTensor(samples, { dtype: "i32" }), 0);
      order.push(...samples);
      if (heads.length === 0) {
        parts.push(ops.broadcastTo(b.attn.proj.bias ?? ops.zeros([D], xs.dtype), [samples.length, T, D]));
        continue;
      }
      const rows = [0, 1, 2].flatMap((part) =>
        heads.flatMap((hh) => Array.from({ length: hd }, (_, j) => part * D + hh * hd + j))
      );
      const cols = heads.flatMap((hh) => Array.from({ length: hd }, (_, j) => hh * hd + j));
      const o = dit.attnHeads({ qkv: rowsOf(b.attn.qkv, rows) }, xs, heads.length, hd);
      executed += samples.length * blockMacs(c, heads.length, 0, 0);
      parts.push(linearApply(colsOf(b.attn.proj, cols), mergeHeads(o)));
    }
    const inv = new Array<number>(N);
    order.forEach((s, i) => (inv[s] = i));
    const attnOut = ops.take(ops.concat(parts, 0), mkTensor(inv, { dtype: "i32" }), 0);
    h = ops.add(h, ops.mul(ops.expandDims(gateMsa, 1), attnOut));
    // MLP over kept tokens and active channel groups only.
    const keep = await bits(tokenRouter(b, h));
    const xm = modulate(dit.norm(h), shiftMlp, scaleMlp);
    const flat = ops.reshape(xm, [N * T, D]);
    let update = ops.zeros([N * T, D], h.dtype);
    for (const { samples, units: groups } of groupByPattern(N, mOn, Hh)) {
      const rows = samples.flatMap((s) => Array.from({ length: T }, (_, j) => s * T + j).filter((r) => keep[r]));
      if (rows.length === 0) continue;
      const idx = mkTensor(rows, { dtype: "i32" });
      const xs = ops.take(flat, idx, 0);
      let m: Tensor;
      if (groups.length === 0) m = ops.broadcastTo(b.mlp.fc2.bias ?? ops.zeros([D], xs.dtype), [rows.length, D]);
      else {
        const ch = groups.flatMap((g) => Array.from({ length: fg }, (_, j) => g * fg + j));
        m = linearApply(colsOf(b.mlp.fc2, ch), geluTanh(linearApply(rowsOf(b.mlp.fc1, ch), xs)));
        executed += 2 * rows.length * D * ch.length;
      }
      const gate = ops.take(gateMlp, mkTensor(rows.map((r) => Math.floor(r / T)), { dtype: "i32" }), 0);
      update = ops.add(update, ops.scatterAdd(ops.mul(gate, m), idx, 0, N * T));
    }
    h = ops.add(h, ops.reshape(update, [N, T, D]));
  }
  return {
    out: dit.finalLayer(p as unknown as dit.DiTParams, h, cond, c),
    executedMacs: executed,
    staticMacs: N * flops(c),
  };
}

/** Groups samples by their routing pattern (which of `n` units are on). */
function groupByPattern(N: number, on: boolean[], n: number): { samples: number[]; units: number[] }[] {
  const groups = new Map<string, number[]>();
  for (let s = 0; s < N; s++) {
    const key = on.slice(s * n, (s + 1) * n).map((v) => (v ? 1 : 0)).join("");
    groups.set(key, [...(groups.get(key) ?? []), s]);
  }
  return [...groups].map(([key, samples]) => ({ samples, units: [...key].flatMap((v, i) => (v === "1" ? [i] : [])) }));
}

/** DyDiT as a registry entry. */
export const def: ModelDef<DyDiTConfig, DyDiTParams> = {
  family: "DyDiT",
  configs,
  init,
  apply,
  flops,
  paramShapes,
  frozen: ["pos_embed"],
  configFromOfficial: dit.configFromOfficial,
};
