/**
 * @file Golden checks per family, in one place for the CLI and the tests:
 * each family's official-code golden carries different extra keys (DyDiT's
 * masks, U-DiT's merged form, DiMR's multi-resolution outputs).
 */
import { forwardWithCfg } from "../diffusion/cfg.ts";
import * as ops from "../tensor/ops.ts";
import type { Tensor } from "../tensor/tensor.ts";
import type { ModelDef } from "./common.ts";
import * as dit from "./dit.ts";
import * as dy from "./dydit.ts";
import { checkModelGolden, type GoldenReport } from "./golden.ts";
import * as udit from "./udit.ts";

/** Options of a family's golden check. */
export interface FamilyGoldenOptions {
  /** Cast the golden's f32 tensors to f64 first (cpu oracle check). */
  dtype?: "f32" | "f64";
}

type Apply<P, C> = (p: P, x: Tensor, t: Tensor, y: Tensor, c: C) => Tensor;

/** DiT's `forward_with_cfg` over any DiT-family apply (guidance on channels 0..2, as the official code). */
export function ditCfg<P, C>(apply: Apply<P, C>) {
  return (p: P, x: Tensor, t: Tensor, y: Tensor, scale: number, c: C): Tensor =>
    forwardWithCfg((xx, tt, yy) => apply(p, xx, tt, yy!, c), x, t, y, { scale });
}

/** DiT: forward, CFG, every gradient. */
export function checkDiT(g: Record<string, Tensor>, m: Record<string, string>, o: FamilyGoldenOptions = {}) {
  return checkModelGolden(dit.def, g, m, { cfg: ditCfg(dit.apply), dtype: o.dtype });
}

/** DyDiT: the masked forward and gradients, masks, router logits, the complete path, CFG, and the skipping path. */
export function checkDyDiT(
  g: Record<string, Tensor>,
  m: Record<string, string>,
  o: FamilyGoldenOptions & { onDynamic?: (r: dy.DynamicResult) => void } = {},
): Promise<GoldenReport> {
  return checkModelGolden(dy.def, g, m, {
    dtype: o.dtype,
    cfg: ditCfg(dy.apply),
    extra: async (p, gg, c) => {
      const x = p.pos_embed.dtype === "f64" ? ops.cast(gg.x, "f64") : gg.x;
      const out = dy.applyWithMasks(p, x, gg.t, gg.y, c);
      const dyn = await dy.applyDynamic(p, x, gg.t, gg.y, c);
      o.onDynamic?.(dyn);
      const pairs: Record<string, [Tensor, Tensor]> = {
        attn_weight_masks: [out.attnMasks, gg.attn_weight_masks],
        mlp_weight_masks: [out.mlpMasks, gg.mlp_weight_masks],
        token_select: [out.tokenMasks, gg.token_select],
        attn_router_logits: [out.attnLogits, gg.attn_router_logits],
        mlp_router_logits: [out.mlpLogits, gg.mlp_router_logits],
        token_router_logits: [out.tokenLogits, gg.token_router_logits],
        "out (dynamic, skipping)": [dyn.out, gg.out],
      };
      if (gg.out_complete) pairs.out_complete = [dy.apply(p, x, gg.t, gg.y, c, { complete: true }), gg.out_complete];
      for (const k of Object.keys(pairs)) if (!pairs[k][1]) delete pairs[k];
      return pairs;
    },
  });
}

/** The golden check of a family, by the family name of its ModelDef. */
export const familyGoldens: Record<
  string,
  (g: Record<string, Tensor>, m: Record<string, string>, o?: FamilyGoldenOptions) => Promise<GoldenReport>
> = {
  DiT: checkDiT,
  DyDiT: checkDyDiT,
  "U-DiT": (g, m, o) => udit.checkGolden(g, m, o),
};

/** Generic fallback for families without extra keys. */
export function checkGeneric(
  def: ModelDef<unknown, unknown>,
  g: Record<string, Tensor>,
  m: Record<string, string>,
  o: FamilyGoldenOptions = {},
) {
  return checkModelGolden(def, g, m, { dtype: o.dtype });
}
