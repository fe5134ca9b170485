/**
 * @file Channel-activation statistics, the measurement behind DiCo's Compact
 * Channel Attention: a plain conv block leaves many channels nearly silent
 * (channel redundancy), and CCA's per-channel gate is meant to re-activate
 * them. For every DiCo block this records the mean |activation| of each
 * channel after the conv module (post-GELU, before CCA) and after CCA, and
 * summarises how many channels are "inactive" (below a fraction of the most
 * active channel). Everything returned is plain numbers/arrays so a notebook
 * can plot it directly; `compareCca` runs the same batch with and without
 * the gate.
 */
import { DifflabError, ShapeError } from "../tensor/errors.ts";
import * as ops from "../tensor/ops.ts";
import { Tensor, tidy } from "../tensor/tensor.ts";
import { apply, type DiCoConfig, type DiCoParams, type TapPoint } from "./dico.ts";

/** Options of the statistics. */
export interface ChannelStatsOptions {
  /** A channel is inactive when its mean |activation| is below `threshold × max` over channels (default 0.1). */
  threshold?: number;
  /** Histogram bins over the relative activity range [0, 1] (default 10). */
  bins?: number;
}

/** Activity of every channel of one activation map. */
export interface ChannelSummary {
  /** Number of channels. */
  channels: number;
  /** Per-channel mean |activation| over batch and space. */
  meanAbs: number[];
  /** `meanAbs / max(meanAbs)`, in [0, 1]. */
  relative: number[];
  /** The threshold used (relative to the max). */
  threshold: number;
  /** Channels with `relative < threshold`. */
  inactive: number;
  /** `inactive / channels`. */
  inactiveFraction: number;
  /** Histogram of `relative`: `counts[i]` channels in `[edges[i], edges[i+1])` (the last bin includes 1). */
  histogram: { edges: number[]; counts: number[] };
}

/** Statistics of one DiCo block. */
export interface BlockChannelStats {
  /** Official block name, e.g. `"latent.0"`. */
  block: string;
  /** Stage name, e.g. `"latent"`. */
  stage: string;
  /** Index within the stage. */
  index: number;
  /** After the conv module (1×1 → depthwise 3×3 → GELU), before CCA. */
  conv: ChannelSummary;
  /** After CCA (equals `conv` when CCA is disabled). */
  cca: ChannelSummary;
  /** Per-channel CCA gate averaged over the batch (absent when CCA is disabled). */
  gate?: number[];
}

function checkOpts(opts: ChannelStatsOptions): { threshold: number; bins: number } {
  const threshold = opts.threshold ?? 0.1, bins = opts.bins ?? 10;
  if (!(threshold >= 0 && threshold <= 1)) {
    throw new DifflabError(`channelStats: threshold must be in [0, 1], got ${threshold}`);
  }
  if (!Number.isInteger(bins) || bins < 1) {
    throw new DifflabError(`channelStats: bins must be a positive integer, got ${bins}`);
  }
  return { threshold, bins };
}

/** Summarises per-channel mean |activation| values (one number per channel). */
export function summarizeChannels(meanAbs: ArrayLike<number>, opts: ChannelStatsOptions = {}): ChannelSummary {
  const { threshold, bins } = checkOpts(opts);
  const m = Array.from(meanAbs, Number);
  if (!m.length) throw new DifflabError(`channelStats: no channels`);
  const max = Math.max(...m);
  const relative = m.map((v) => (max > 0 ? v / max : 0));
  const inactive = relative.filter((r) => r < threshold).length;
  const edges = Array.from({ length: bins + 1 }, (_, i) => i / bins);
  const counts = new Array(bins).fill(0);
  for (const r of relative) counts[Math.min(bins - 1, Math.floor(r * bins))]++;
  return {
    channels: m.length,
    meanAbs: m,
    relative,
    threshold,
    inactive,
    inactiveFraction: inactive / m.length,
    histogram: { edges, counts },
  };
}

/** Channel summary of an activation tensor whose channel axis is `axis` (default 1, NCHW). */
export async function channelStats(
  h: Tensor,
  opts: ChannelStatsOptions & { axis?: number } = {},
): Promise<ChannelSummary> {
  if (!(h instanceof Tensor) || h.ndim < 1) {
    throw new ShapeError(`channelStats: h must be a Tensor with a channel axis`);
  }
  const axis = ((opts.axis ?? 1) + h.ndim) % h.ndim;
  const others = [...Array(h.ndim).keys()].filter((a) => a !== axis);
  const v = tidy(() => ops.mean(ops.abs(h), { axis: others }));
  const data = await v.data();
  v.dispose();
  return summarizeChannels(data as ArrayLike<number>, opts);
}

/** Options of {@link dicoChannelStats}. */
export interface DiCoStatsOptions extends ChannelStatsOptions {
  /** Run with CCA's gate replaced by 1 (every block, or the named blocks). */
  disableCca?: boolean | readonly string[];
}

/**
 * Runs DiCo (eval mode) on a batch and returns, for every block in forward
 * order, the channel activity after the conv module and after CCA, plus the
 * mean CCA gate per channel.
 */
export async function dicoChannelStats(
  params: DiCoParams,
  x: Tensor,
  t: Tensor,
  y: Tensor,
  config: DiCoConfig,
  opts: DiCoStatsOptions = {},
): Promise<BlockChannelStats[]> {
  checkOpts(opts);
  const order: string[] = [];
  const rec = tidy(() => {
    const r: Record<string, Partial<Record<TapPoint, Tensor>>> = {};
    apply(params, x, t, y, config, {
      disableCca: opts.disableCca,
      tap: (block, point, h) => {
        if (!r[block]) {
          r[block] = {};
          order.push(block);
        }
        r[block][point] = ops.mean(point === "gate" ? h : ops.abs(h), { axis: [0, 2, 3] });
      },
    });
    return r;
  });
  const out: BlockChannelStats[] = [];
  try {
    for (const block of order) {
      const r = rec[block];
      const read = async (
        v: Tensor | undefined,
      ) => (v ? Array.from((await v.data()) as ArrayLike<number>, Number) : undefined);
      const [conv, cca, gate] = [await read(r.conv), await read(r.cca), await read(r.gate)];
      const dot = block.lastIndexOf(".");
      out.push({
        block,
        stage: block.slice(0, dot),
        index: Number(block.slice(dot + 1)),
        conv: summarizeChannels(conv!, opts),
        cca: summarizeChannels(cca!, opts),
        ...(gate ? { gate } : {}),
      });
    }
  } finally {
    for (const r of Object.values(rec)) for (const v of Object.values(r)) v?.dispose();
  }
  return out;
}

/** One row of {@link compareCca}'s summary. */
export interface CcaComparisonRow {
  /** Block name, `stage.index` (e.g. `"encoder_level_1.0"`). */
  block: string;
  /** Inactive fraction after the conv module, before the gate (CCA on). */
  inactiveBeforeGate: number;
  /** Inactive fraction after the gate (CCA on). */
  inactiveAfterGate: number;
  /** Inactive fraction of the same block's conv output with CCA disabled everywhere. */
  inactiveWithoutCca: number;
}

/**
 * The same batch with CCA on and with CCA off (gate = 1 in every block):
 * full per-block statistics of both runs plus a compact table of inactive
 * channel fractions per block.
 */
export async function compareCca(
  params: DiCoParams,
  x: Tensor,
  t: Tensor,
  y: Tensor,
  config: DiCoConfig,
  opts: ChannelStatsOptions = {},
): Promise<{ withCca: BlockChannelStats[]; withoutCca: BlockChannelStats[]; summary: CcaComparisonRow[] }> {
  const withCca = await dicoChannelStats(params, x, t, y, config, opts);
  const withoutCca = await dicoChannelStats(params, x, t, y, config, { ...opts, disableCca: true });
  const summary = withCca.map((w, i) => ({
    block: w.block,
    inactiveBeforeGate: w.conv.inactiveFraction,
    inactiveAfterGate: w.cca.inactiveFraction,
    inactiveWithoutCca: withoutCca[i].cca.inactiveFraction,
  }));
  return { withCca, withoutCca, summary };
}
