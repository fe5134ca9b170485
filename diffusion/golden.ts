/**
 * @file Reproduction of the diffusion golden files (goldens/README.md): for every key the official
 * code produced, a case that recomputes it with this library from the file's own inputs. The
 * cases are driven by the file's keys and metadata, so files with other seeds, timesteps,
 * respacings or sample lengths are handled the same way; a key with no known reproduction
 * becomes a failing case instead of being skipped.
 */
import { DifflabError, fmtShape } from "../tensor/errors.ts";
import { add, broadcastTo, mul } from "../tensor/ops.ts";
import type { Tensor } from "../tensor/tensor.ts";
import { dimrDecayedScale, guide, guideDimr } from "./cfg.ts";
import { f32 } from "./common.ts";
import {
  dimrLogSnr,
  dimrLogSnrFromContinuous,
  dimrNoiseSchedule,
  dimrQSample,
  dimrSchedule,
  multiScaleLoss,
} from "./dimr.ts";
import {
  type DpmSolver,
  dpmSolver,
  dpmSolverSample,
  dpmSolverUpdate,
  fastOrders,
  getTimeSteps,
  inverseLambda,
  marginalLambda,
  marginalLogMeanCoeff,
  marginalStd,
} from "./dpm_solver.ts";
import {
  createDiffusion,
  ddimSampleFromOutput,
  type GaussianDiffusion,
  modelTimesteps,
  pMeanVarianceFromOutput,
  pSampleFromOutput,
  qPosteriorMeanVariance,
  qSample,
  trainingLossesFromOutput,
} from "./gaussian.ts";
import { spaceTimesteps } from "./respace.ts";

/** A recomputed value: a tensor or plain numbers (row-major, the reference's element count). */
export type GoldenValue = Tensor | ArrayLike<number>;

/** How a key is compared: schedule arrays and times (1e-5), losses and steps (1e-4), integers (exact). */
export type GoldenCategory = "schedule" | "value" | "index";

/** Relative L2 tolerance of each category on the cpu backend. */
export const GOLDEN_TOLERANCE: Readonly<Record<GoldenCategory, number>> = { schedule: 1e-5, value: 1e-4, index: 0 };

/** One reproducible key. */
export interface GoldenCase {
  /** The golden key this case reproduces. */
  key: string;
  /** How it is compared. */
  category: GoldenCategory;
  /** Recomputes the key; throws (a failing case) when it cannot. */
  compute: () => GoldenValue | Promise<GoldenValue>;
}

/** The kinds of diffusion golden files. */
export type DiffusionGoldenKind = "dit-diffusion" | "dimr-diffusion";

/** Recognises a diffusion golden file from its metadata and keys (null for anything else). */
export function detectDiffusionGolden(
  keys: readonly string[],
  metadata: Record<string, string>,
): DiffusionGoldenKind | null {
  if (metadata.config || metadata.class) return null;
  if (keys.some((k) => k.startsWith("schedule.cum_alphas")) || keys.some((k) => k.startsWith("dpm."))) {
    return "dimr-diffusion";
  }
  if (keys.some((k) => k.endsWith(".alphas_cumprod")) || (metadata.calls ?? "").includes("create_diffusion")) {
    return "dit-diffusion";
  }
  return null;
}

async function host(v: GoldenValue): Promise<Float64Array> {
  if (Array.isArray(v) || ArrayBuffer.isView(v) || (typeof v === "object" && v !== null && "length" in v)) {
    return Float64Array.from(v as ArrayLike<number>, Number);
  }
  return Float64Array.from(await (v as Tensor).data(), Number);
}

/** ‖ours − ref‖₂ / ‖ref‖₂ (‖ours‖₂ when ref is all zeros); for "index", 0 when equal and 1 otherwise. */
export async function goldenError(ours: GoldenValue, ref: Tensor, category: GoldenCategory): Promise<number> {
  const a = await host(ours), b = await host(ref);
  if (a.length !== b.length) {
    throw new DifflabError(`computed ${a.length} values but the reference ${fmtShape(ref.shape)} has ${b.length}`);
  }
  if (category === "index") return a.every((v, i) => v === b[i]) ? 0 : 1;
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    const va = category === "schedule" ? Math.fround(a[i]) : a[i];
    num += (va - b[i]) ** 2;
    den += b[i] ** 2;
  }
  if (Number.isNaN(num)) return Number.NaN;
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
}

/** Builds every case of a diffusion golden file. */
export function diffusionGoldenCases(
  tensors: Record<string, Tensor>,
  metadata: Record<string, string>,
): { kind: DiffusionGoldenKind; cases: GoldenCase[] } {
  const kind = detectDiffusionGolden(Object.keys(tensors), metadata);
  if (!kind) throw new DifflabError("diffusionGoldenCases: not a diffusion golden file");
  return { kind, cases: kind === "dit-diffusion" ? ditCases(tensors, metadata) : dimrCases(tensors, metadata) };
}

function need(tensors: Record<string, Tensor>, key: string): Tensor {
  const t = tensors[key];
  if (!t) throw new DifflabError(`the golden file has no input "${key}"`);
  return t;
}

function camel(snake: string): string {
  return snake.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

async function scalarOf(t: Tensor): Promise<number> {
  return Number((await t.data())[0]);
}

// ------------------------------------------------------------------ DiT GaussianDiffusion

const DIT_INPUTS: Record<string, readonly string[]> = {
  q_sample: ["x0", "t", "noise"],
  train_loss: ["x0", "t", "noise", "model_output"],
  p_sample: ["x_t", "t", "model_output", "noise"],
  ddim: ["x_t", "t", "model_output", "noise"],
};

function ditCases(tensors: Record<string, Tensor>, metadata: Record<string, string>): GoldenCase[] {
  let calls: Record<string, string> = {};
  try {
    calls = metadata.calls ? JSON.parse(metadata.calls) : {};
  } catch {
    calls = {};
  }
  const keys = Object.keys(tensors);
  const groups = new Set(
    keys.filter((k) => k.endsWith(".betas") && tensors[k.replace(/betas$/, "timestep_map")]).map((k) => k.slice(0, -6)),
  );
  const specOf = (g: string): string => {
    const m = /create_diffusion\((?:timestep_respacing=)?"([^"]*)"/.exec(calls[g] ?? "");
    if (m) return m[1];
    if (g === "train") return "";
    if (/^r\d+$/.test(g)) return g.slice(1);
    if (/^ddim\d+$/.test(g)) return g;
    throw new DifflabError(`cannot tell the respacing of schedule group "${g}" (no create_diffusion call in metadata)`);
  };
  const schedule = (calls.train ?? "").includes("squaredcos") ? "squaredcos_cap_v2" : "linear";
  const cache = new Map<string, GaussianDiffusion>();
  const diffusion = (g: string) => {
    let d = cache.get(g);
    if (!d) cache.set(g, d = createDiffusion(specOf(g), { noiseSchedule: schedule }));
    return d;
  };
  // Which schedule group a call ran on, e.g. "r250.p_sample(...)" -> r250.
  const groupOf = (call: string, dflt: string) => /^(\w+)\./.exec(calls[call] ?? "")?.[1] ?? dflt;
  const T = tensors["train.betas"]?.shape[0] ?? 1000;

  const cases: GoldenCase[] = [];
  const covered = new Set<string>();
  const add_ = (key: string, category: GoldenCategory, compute: () => GoldenValue | Promise<GoldenValue>) => {
    covered.add(key);
    cases.push({ key, category, compute });
  };
  for (const [g, ins] of Object.entries(DIT_INPUTS)) for (const k of ins) covered.add(`${g}.${k}`);

  for (const g of groups) {
    for (const k of keys.filter((k) => k.startsWith(`${g}.`))) {
      const name = k.slice(g.length + 1);
      if (name === "timestep_map") add_(k, "index", () => diffusion(g).timestepMap);
      else {
        add_(k, "schedule", () => {
          const arr = (diffusion(g) as unknown as Record<string, unknown>)[camel(name)];
          if (!(arr instanceof Float64Array)) throw new DifflabError(`unknown schedule array "${name}"`);
          return arr;
        });
      }
    }
  }
  for (const k of keys.filter((k) => k.startsWith("space_timesteps."))) {
    add_(k, "index", () => spaceTimesteps(T, k.slice("space_timesteps.".length)));
  }

  if (tensors["q_sample.out"]) {
    const d = () => diffusion(groupOf("q_sample", "train"));
    add_(
      "q_sample.out",
      "value",
      () => qSample(d(), need(tensors, "q_sample.x0"), need(tensors, "q_sample.t"), need(tensors, "q_sample.noise")),
    );
  }

  if (keys.some((k) => k.startsWith("train_loss."))) {
    const d = () => diffusion(groupOf("train_loss", "train"));
    const x0 = () => need(tensors, "train_loss.x0"), t = () => need(tensors, "train_loss.t");
    const xt = () => qSample(d(), x0(), t(), need(tensors, "train_loss.noise"));
    const terms = () =>
      trainingLossesFromOutput(
        d(),
        need(tensors, "train_loss.model_output"),
        x0(),
        xt(),
        t(),
        need(tensors, "train_loss.noise"),
      );
    const post = () => qPosteriorMeanVariance(d(), x0(), xt(), t());
    for (const name of ["loss", "mse", "vb"] as const) {
      if (tensors[`train_loss.${name}`]) {
        add_(`train_loss.${name}`, "value", () => {
          const v = terms()[name];
          if (!v) throw new DifflabError(`this diffusion's loss has no "${name}" term`);
          return v;
        });
      }
    }
    if (tensors["train_loss.model_t"]) {
      add_("train_loss.model_t", "index", () => modelTimesteps(d(), t(), x0().shape[0]));
    }
    if (tensors["train_loss.q_posterior_mean"]) add_("train_loss.q_posterior_mean", "value", () => post().mean);
    if (tensors["train_loss.q_posterior_log_variance"]) {
      add_("train_loss.q_posterior_log_variance", "value", () => broadcastTo(post().logVarianceClipped, x0().shape));
    }
  }

  // p_sample / p_sample_clip: one ancestral step of the respaced process on the stored model output.
  if (keys.some((k) => k.startsWith("p_sample."))) {
    const d = () => diffusion(groupOf("p_sample", "r250"));
    const x = () => need(tensors, "p_sample.x_t"), t = () => need(tensors, "p_sample.t");
    const mo = () => need(tensors, "p_sample.model_output");
    const step = (clip: boolean) =>
      pSampleFromOutput(d(), mo(), x(), t(), { clipDenoised: clip, noise: need(tensors, "p_sample.noise") });
    const pmv = () => pMeanVarianceFromOutput(d(), mo(), x(), t(), { clipDenoised: false });
    const outs: Record<string, [GoldenCategory, () => GoldenValue]> = {
      "p_sample.sample": ["value", () => step(false).sample],
      "p_sample.pred_xstart": ["value", () => step(false).predXstart],
      "p_sample.mean": ["value", () => pmv().mean],
      "p_sample.log_variance": ["value", () => broadcastTo(pmv().logVariance, x().shape)],
      "p_sample.model_t": ["index", () => modelTimesteps(d(), t(), x().shape[0])],
      "p_sample_clip.sample": ["value", () => step(true).sample],
      "p_sample_clip.pred_xstart": ["value", () => step(true).predXstart],
    };
    for (const [k, [c, f]] of Object.entries(outs)) if (tensors[k]) add_(k, c, f);
  }

  // ddim / ddim_eta1: one DDIM step (eta 0 and 1) on the ddim-respaced process.
  if (keys.some((k) => k.startsWith("ddim."))) {
    const d = () => diffusion(groupOf("ddim", "ddim50"));
    const x = () => need(tensors, "ddim.x_t"), t = () => need(tensors, "ddim.t");
    const step = (eta: number) =>
      ddimSampleFromOutput(d(), need(tensors, "ddim.model_output"), x(), t(), {
        clipDenoised: false,
        eta,
        noise: need(tensors, "ddim.noise"),
      });
    const outs: Record<string, [GoldenCategory, () => GoldenValue]> = {
      "ddim.sample": ["value", () => step(0).sample],
      "ddim.pred_xstart": ["value", () => step(0).predXstart],
      "ddim.model_t": ["index", () => modelTimesteps(d(), t(), x().shape[0])],
      "ddim_eta1.sample": ["value", () => step(1).sample],
    };
    for (const [k, [c, f]] of Object.entries(outs)) if (tensors[k]) add_(k, c, f);
  }

  unknownKeys(keys, covered, cases);
  return cases;
}

function unknownKeys(keys: readonly string[], covered: Set<string>, cases: GoldenCase[]): void {
  for (const k of keys) {
    if (!covered.has(k)) {
      cases.push({
        key: k,
        category: "value",
        compute: () => {
          throw new DifflabError(`no reproduction is known for key "${k}"`);
        },
      });
    }
  }
}

// ------------------------------------------------------------------ DiMR objective and DPM-Solver

function dimrCases(tensors: Record<string, Tensor>, metadata: Record<string, string>): GoldenCase[] {
  void metadata;
  const keys = Object.keys(tensors);
  const cases: GoldenCase[] = [];
  const covered = new Set<string>();
  const add_ = (key: string, category: GoldenCategory, compute: () => GoldenValue | Promise<GoldenValue>) => {
    covered.add(key);
    cases.push({ key, category, compute });
  };
  const inputs = [
    "loss.x0",
    "loss.eps",
    "loss.n",
    "loss.coeffs",
    "ns.t",
    "ns.inv.lambda",
    "fake.a",
    "fake.c",
    "dpm.x_T",
    "dpm.rdefault.s",
    "dpm.rdefault.t",
    "wrap.t_continuous",
    "cfg.cond",
    "cfg.uncond",
    "cfg.scale",
    "cfgpow.scale",
    "cfgpow.pow",
    "cfgpow.timestep",
  ];
  for (const k of inputs) covered.add(k);
  for (const k of keys) if (/^loss\.pred\.\d+$/.test(k)) covered.add(k);

  const sched = dimrSchedule();
  const ns = dimrNoiseSchedule(sched);
  for (
    const [k, arr] of [["schedule.betas", sched.betas], ["schedule.cum_alphas", sched.cumAlphas], [
      "schedule.cum_betas",
      sched.cumBetas,
    ]] as const
  ) {
    if (tensors[k]) add_(k, "schedule", () => arr);
  }

  if (tensors["loss.x0"]) {
    const preds = keys.filter((k) => /^loss\.pred\.\d+$/.test(k)).sort((a, b) =>
      Number(a.split(".")[2]) - Number(b.split(".")[2])
    );
    const coeffs = async () => Array.from(await need(tensors, "loss.coeffs").data(), Number);
    const n = () => need(tensors, "loss.n");
    const terms = async () => multiScaleLoss(preds.map((k) => tensors[k]), need(tensors, "loss.eps"), await coeffs());
    if (tensors["loss.xn"]) {
      add_("loss.xn", "value", () => dimrQSample(sched, need(tensors, "loss.x0"), n(), need(tensors, "loss.eps")));
    }
    if (tensors["loss.log_snr"]) add_("loss.log_snr", "value", () => dimrLogSnr(n()));
    for (const k of keys.filter((k) => /^loss\.target\.\d+$/.test(k))) {
      add_(k, "value", async () => {
        const i = Number(k.split(".")[2]);
        const tg = (await terms()).targets[i];
        if (!tg) throw new DifflabError(`no target level ${i}`);
        return tg;
      });
    }
    if (tensors["loss.per_sample"]) add_("loss.per_sample", "value", async () => (await terms()).perSample);
    if (tensors["loss.mean"]) add_("loss.mean", "value", async () => (await terms()).mean);
  }

  const hostList = async (k: string) => Array.from(await need(tensors, k).data(), Number);
  if (tensors["ns.t"]) {
    const fns: Record<string, (t: number) => number> = {
      "ns.log_alpha": (t) => marginalLogMeanCoeff(ns, t),
      "ns.sigma": (t) => marginalStd(ns, t),
      "ns.lambda": (t) => marginalLambda(ns, t),
    };
    for (const [k, f] of Object.entries(fns)) {
      if (tensors[k]) {
        add_(k, "schedule", async () => (await hostList("ns.t")).map(f));
      }
    }
  }
  if (tensors["ns.inv.t"]) {
    add_("ns.inv.t", "schedule", async () => (await hostList("ns.inv.lambda")).map((l) => inverseLambda(ns, l)));
  }
  if (tensors["wrap.log_snr"]) {
    add_(
      "wrap.log_snr",
      "schedule",
      async () => (await hostList("wrap.t_continuous")).map((t) => dimrLogSnrFromContinuous(t)),
    );
  }

  // The stand-in model eps(x, t) = a*x + c*sin(3t), t the continuous time.
  let calls = 0;
  const solver = (): DpmSolver => {
    const a = need(tensors, "fake.a"), c = need(tensors, "fake.c");
    return dpmSolver(
      (x, t) => {
        calls++;
        return add(mul(a, x), mul(c, f32(Math.sin(f32(3 * f32(t))))));
      },
      ns,
      { predictX0: true },
    );
  };
  const t0 = 1 / 1000;
  const fastKey = keys.find((k) => /^dpm\.fast\d+\.timesteps$/.test(k));
  const gridSteps = fastKey ? Number(/^dpm\.fast(\d+)\./.exec(fastKey)![1]) : 250;
  for (const k of keys.filter((k) => /^dpm\.fast\d+\.(timesteps|orders)$/.test(k))) {
    const steps = Number(/^dpm\.fast(\d+)\./.exec(k)![1]);
    if (k.endsWith("timesteps")) add_(k, "schedule", () => getTimeSteps(ns, "time_uniform", 1, t0, steps));
    else add_(k, "index", () => fastOrders(steps, 3));
  }
  const grid = () => getTimeSteps(ns, "time_uniform", 1, t0, gridSteps);
  for (const k of keys.filter((k) => /^dpm\.step\d\.(s|t|r1|r2|out)$/.test(k))) {
    const order = Number(k[8]);
    const which = k.slice(10);
    const g = () => grid();
    const rs = () => {
      const ts = g(), lam = (t: number) => marginalLambda(ns, t);
      const h = f32(lam(ts[order]) - lam(ts[0]));
      return { r1: f32(f32(lam(ts[1]) - lam(ts[0])) / h), r2: f32(f32(lam(ts[2]) - lam(ts[0])) / h) };
    };
    if (which === "s") add_(k, "schedule", () => [g()[0]]);
    else if (which === "t") add_(k, "schedule", () => [g()[order]]);
    else if (which === "r1" || which === "r2") add_(k, "schedule", () => [rs()[which]]);
    else {
      add_(k, "value", () => {
        const ts = g();
        const r = order > 1 ? rs() : { r1: undefined, r2: undefined };
        return dpmSolverUpdate(solver(), need(tensors, "dpm.x_T"), ts[0], ts[order], order, {
          r1: order > 1 ? r.r1 : undefined,
          r2: order > 2 ? r.r2 : undefined,
        });
      });
    }
  }
  for (const k of keys.filter((k) => /^dpm\.rdefault\.order\d\.out$/.test(k))) {
    const order = Number(/order(\d)/.exec(k)![1]);
    add_(k, "value", async () =>
      dpmSolverUpdate(
        solver(),
        need(tensors, "dpm.x_T"),
        await scalarOf(need(tensors, "dpm.rdefault.s")),
        await scalarOf(need(tensors, "dpm.rdefault.t")),
        order,
      ));
  }
  for (const k of keys.filter((k) => /^dpm\.sample\d+\.(out|nfe)$/.test(k))) {
    const steps = Number(/sample(\d+)/.exec(k)![1]);
    add_(k, k.endsWith("nfe") ? "index" : "value", async () => {
      calls = 0;
      const out = await dpmSolverSample(solver(), need(tensors, "dpm.x_T"), { steps, eps: t0, T: 1 });
      return k.endsWith("nfe") ? [calls] : out;
    });
  }

  if (tensors["cfg.out"]) {
    add_(
      "cfg.out",
      "value",
      async () =>
        guideDimr(need(tensors, "cfg.cond"), need(tensors, "cfg.uncond"), await scalarOf(need(tensors, "cfg.scale"))),
    );
  }
  const eff = async () =>
    dimrDecayedScale(
      await scalarOf(need(tensors, "cfgpow.scale")),
      await scalarOf(need(tensors, "cfgpow.pow")),
      await scalarOf(need(tensors, "cfgpow.timestep")),
    );
  if (tensors["cfgpow.effective_scale"]) add_("cfgpow.effective_scale", "schedule", async () => [await eff()]);
  if (tensors["cfgpow.out"]) {
    add_("cfgpow.out", "value", async () => guide(need(tensors, "cfg.cond"), need(tensors, "cfg.uncond"), await eff()));
  }

  unknownKeys(keys, covered, cases);
  return cases;
}
