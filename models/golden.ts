/**
 * @file Checks a model against a golden file made by the official PyTorch
 * code: loads `param.*` by official names, runs the forward pass (and the
 * CFG forward when the file has one), takes the gradient of
 * `sum(out * w)` (summed over every output for multi-resolution models)
 * with respect to every parameter and `x`, and reports the worst relative
 * error ‖ours − ref‖₂ / ‖ref‖₂ over all of them.
 */
import { valueAndGrad } from "../autograd/autograd.ts";
import { DifflabError } from "../tensor/errors.ts";
import * as ops from "../tensor/ops.ts";
import { type Tensor, tidy } from "../tensor/tensor.ts";
import { type ApplyOptions, fromStateDict, type ModelDef, toStateDict } from "./common.ts";

/** One compared quantity. */
export interface GoldenEntry {
  key: string;
  relErr: number;
}

/** Result of a model golden check. */
export interface GoldenReport {
  maxRelErr: number;
  worst: string;
  entries: GoldenEntry[];
}

/** Extra, model-specific comparisons (e.g. DyDiT's masks, U-DiT's merged form). */
export type ExtraChecks<C, P> = (
  params: P,
  golden: Record<string, Tensor>,
  config: C,
) => Promise<Record<string, [Tensor, Tensor]>> | Record<string, [Tensor, Tensor]>;

/** ‖a − b‖₂ / ‖b‖₂ in f64 on the host (0 when both are 0). */
export async function relErr(ours: Tensor, ref: Tensor, what = ""): Promise<number> {
  if (ours.shape.join() !== ref.shape.join()) {
    throw new DifflabError(`golden ${what}: shape [${ours.shape}] vs reference [${ref.shape}]`);
  }
  const [a, b] = [await ours.data(), await ref.data()];
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Number(a[i]) - Number(b[i]);
    num += d * d;
    den += Number(b[i]) ** 2;
  }
  if (den === 0) return Math.sqrt(num);
  const r = Math.sqrt(num / den);
  return Number.isNaN(r) ? Infinity : r;
}

/** Reference outputs of a golden: `out` or `out.0..out.K-1` with matching `w`. */
function outputs(g: Record<string, Tensor>): [string, string][] {
  if (g["out"]) return [["out", "w"]];
  const ks: [string, string][] = [];
  for (let i = 0; g[`out.${i}`]; i++) ks.push([`out.${i}`, `w.${i}`]);
  if (!ks.length) throw new DifflabError("golden: file has neither `out` nor `out.0`");
  return ks;
}

function asList(o: Tensor | Tensor[]): Tensor[] {
  return Array.isArray(o) ? o : [o];
}

/**
 * Runs the full golden check of one model file. `cfg` computes the CFG
 * forward `forward_with_cfg(x, t, y, scale)` for files that carry `cfg.*`.
 */
export async function checkModelGolden<C, P>(
  def: ModelDef<C, P>,
  golden: Record<string, Tensor>,
  metadata: Record<string, string>,
  opts: {
    cfg?: (params: P, x: Tensor, t: Tensor, y: Tensor, scale: number, config: C) => Tensor;
    extra?: ExtraChecks<C, P>;
    apply?: ApplyOptions;
    /** Cast golden f32 tensors to this dtype first (f64 on cpu for a tighter check). */
    dtype?: "f32" | "f64";
  } = {},
): Promise<GoldenReport> {
  const config = def.configFromOfficial(JSON.parse(metadata.config ?? "{}"));
  const cast = (t: Tensor) => (opts.dtype && t.dtype === "f32" ? ops.cast(t, opts.dtype) : t);
  const sd: Record<string, Tensor> = {};
  for (const [k, v] of Object.entries(golden)) if (k.startsWith("param.")) sd[k.slice(6)] = cast(v);
  const params = fromStateDict(def, sd, config);
  const entries: GoldenEntry[] = [];
  const push = async (key: string, ours: Tensor, ref: Tensor) => {
    entries.push({ key, relErr: await relErr(ours, ref, key) });
  };
  const x = cast(golden["x"]), t = golden["t"], y = golden["y"];
  const outs = outputs(golden);
  const ws = outs.map(([, w]) => cast(golden[w]));
  const tIn = t.dtype === "f32" ? cast(t) : t;

  await tidy(async () => {
    // Forward and every gradient of sum(out * w).
    const loss = (p: P, xx: Tensor) => {
      const o = asList(def.apply(p, xx, tIn, y, config, opts.apply));
      if (o.length !== ws.length) {
        throw new DifflabError(`golden: model returned ${o.length} outputs, file has ${ws.length}`);
      }
      return [o.map((oi, i) => ops.sum(ops.mul(oi, ws[i]))).reduce((a, b) => ops.add(a, b)), o] as [Tensor, Tensor[]];
    };
    const [[, o], [gp, gx]] = valueAndGrad(loss, { argnums: [0, 1], hasAux: true })(params, x) as [
      [Tensor, Tensor[]],
      [P, Tensor],
    ];
    for (let i = 0; i < outs.length; i++) await push(outs[i][0], o[i], golden[outs[i][0]]);
    const grads = toStateDict(gp);
    for (const [k, ref] of Object.entries(golden)) {
      if (!k.startsWith("grad.") || k === "grad.x") continue;
      const name = k.slice(5);
      if (!grads[name]) throw new DifflabError(`golden: no gradient for parameter ${name}`);
      await push(k, grads[name], ref);
    }
    if (golden["grad.x"]) await push("grad.x", gx, golden["grad.x"]);
  });
  if (golden["cfg.out"] && opts.cfg) {
    const scale = Number(metadata.cfg_scale ?? "4");
    await tidy(async () => {
      const o = opts.cfg!(params, cast(golden["cfg.x"]), golden["cfg.t"], golden["cfg.y"], scale, config);
      await push("cfg.out", o, golden["cfg.out"]);
    });
  }
  if (opts.extra) {
    const extra = await opts.extra(params, golden, config);
    for (const [k, [ours, ref]] of Object.entries(extra)) await push(k, ours, ref);
  }
  let maxRelErr = 0, worst = "";
  for (const e of entries) {
    if (!(e.relErr <= maxRelErr)) [maxRelErr, worst] = [e.relErr, e.key];
  }
  return { maxRelErr, worst, entries };
}
