/**
 * @file Small dependency-free SVG charts for notebooks: line charts (loss
 * curves, per-timestep quantities, activity profiles) and grouped bar
 * charts. Output is standalone SVG 1.1 (valid XML) so it renders in
 * Jupyter, on GitHub and in a browser alike.
 */
import { DifflabError } from "../tensor/errors.ts";
import { type Displayable, displayable, escapeHtml, fmtNum } from "./common.ts";

/** Matplotlib's tab10, the colours people read charts in. */
export const PALETTE: readonly string[] = [
  "#1f77b4",
  "#ff7f0e",
  "#2ca02c",
  "#d62728",
  "#9467bd",
  "#8c564b",
  "#e377c2",
  "#7f7f7f",
  "#bcbd22",
  "#17becf",
];

/** One line of a {@link lineChart}. */
export interface LineSeries {
  /** Legend entry (none: not in the legend). */
  name?: string;
  /** X values (default 1..n). */
  x?: ArrayLike<number>;
  /** Y values; non-finite points (and non-positive ones on a log axis) are left out. */
  y: ArrayLike<number>;
  /** Stroke colour (default: the palette in order). */
  color?: string;
  /** Stroke width (default 1.8). */
  width?: number;
  /** Stroke opacity (default 1). */
  opacity?: number;
  /** Dashed line. */
  dashed?: boolean;
  /** Draw a marker at each point (default: when there are at most 40 points). */
  markers?: boolean;
  /** Marker shape (default "dot"); a "ring" stays visible under another series' dots. */
  marker?: "dot" | "ring" | "square";
}

/** Layout options shared by the charts. */
export interface ChartOptions {
  title?: string;
  xLabel?: string;
  yLabel?: string;
  /** Pixel size (default 640×320). */
  width?: number;
  height?: number;
  /** Logarithmic y axis. */
  logY?: boolean;
  /** Logarithmic x axis. */
  logX?: boolean;
  /** Fixed y range (default: the data's, padded). */
  yRange?: readonly [number, number];
  /** Fixed x range (default: the data's). */
  xRange?: readonly [number, number];
}

/** Evenly spaced "nice" tick values (1, 2 or 5 × 10^k apart) covering [lo, hi]. */
export function niceTicks(lo: number, hi: number, n = 5): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const r = raw / mag;
  const step = (r < 1.5 ? 1 : r < 3 ? 2 : r < 7 ? 5 : 10) * mag;
  const ticks: number[] = [];
  for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) {
    ticks.push(Number((Math.round(v / step) * step).toPrecision(12)));
  }
  return ticks;
}

function logTicks(lo: number, hi: number): number[] {
  const ticks: number[] = [];
  const mults = Math.log10(hi / lo) < 2 ? [1, 2, 5] : [1];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
    for (const m of mults) {
      const v = m * 10 ** e;
      if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9)) ticks.push(Number(v.toPrecision(12)));
    }
  }
  return ticks.length >= 2 ? ticks : [lo, hi];
}

interface Frame {
  W: number;
  H: number;
  left: number;
  right: number;
  top: number;
  bottom: number;
  parts: string[];
}

/** Width of the legend box for these names (0: no legend). */
function legendWidth(names: readonly string[]): number {
  return names.length ? Math.ceil(Math.max(...names.map((n) => n.length)) * 6.8 + 40) : 0;
}

function frame(opts: ChartOptions, legendW = 0): Frame {
  // The legend sits right of the plot so it never hides data; the canvas grows to keep the plot size.
  const W = (opts.width ?? 640) + (legendW ? legendW + 8 : 0), H = opts.height ?? 320;
  const f: Frame = {
    W,
    H,
    left: 64,
    right: W - 16 - (legendW ? legendW + 8 : 0),
    top: opts.title ? 30 : 12,
    bottom: H - 42,
    parts: [],
  };
  f.parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" ` +
      `font-family="sans-serif" font-size="11">`,
    `<rect x="0" y="0" width="${W}" height="${H}" fill="white"/>`,
  );
  if (opts.title) {
    f.parts.push(
      `<text x="${(f.left + f.right) / 2}" y="18" text-anchor="middle" font-size="13" font-weight="bold">${
        escapeHtml(opts.title)
      }</text>`,
    );
  }
  if (opts.xLabel) {
    f.parts.push(
      `<text x="${(f.left + f.right) / 2}" y="${H - 6}" text-anchor="middle">${escapeHtml(opts.xLabel)}</text>`,
    );
  }
  if (opts.yLabel) {
    const cy = (f.top + f.bottom) / 2;
    f.parts.push(
      `<text x="14" y="${cy}" text-anchor="middle" transform="rotate(-90 14 ${cy})">${escapeHtml(opts.yLabel)}</text>`,
    );
  }
  return f;
}

function yAxis(f: Frame, ticks: number[], ty: (v: number) => number) {
  for (const v of ticks) {
    const y = ty(v).toFixed(1);
    f.parts.push(
      `<line x1="${f.left}" x2="${f.right}" y1="${y}" y2="${y}" stroke="#e5e5e5"/>`,
      `<text x="${f.left - 6}" y="${y}" text-anchor="end" dominant-baseline="middle">${escapeHtml(fmtNum(v))}</text>`,
    );
  }
}

function markerSvg(shape: "dot" | "ring" | "square", x: number, y: number, color: string): string {
  const [cx, cy] = [x.toFixed(1), y.toFixed(1)];
  if (shape === "ring") {
    return `<circle cx="${cx}" cy="${cy}" r="4.5" fill="none" stroke="${color}" stroke-width="1.5"/>`;
  }
  if (shape === "square") {
    return `<rect x="${(x - 3).toFixed(1)}" y="${(y - 3).toFixed(1)}" width="6" height="6" fill="${color}"/>`;
  }
  return `<circle cx="${cx}" cy="${cy}" r="2.5" fill="${color}"/>`;
}

function legend(
  f: Frame,
  entries: {
    name: string;
    color: string;
    dashed?: boolean;
    bar?: boolean;
    marker?: "dot" | "ring" | "square";
    opacity?: number;
  }[],
) {
  if (!entries.length) return;
  const w = legendWidth(entries.map((e) => e.name));
  const x0 = f.right + 8, y0 = f.top + 6;
  f.parts.push(
    `<rect x="${x0}" y="${y0}" width="${w}" height="${entries.length * 16 + 6}" fill="white" stroke="#ccc"/>`,
  );
  entries.forEach((e, i) => {
    const y = y0 + 12 + i * 16;
    f.parts.push(
      e.bar
        ? `<rect x="${x0 + 6}" y="${y - 5}" width="18" height="10" fill="${e.color}"/>`
        : e.marker
        ? markerSvg(e.marker, x0 + 15, y, e.color)
        : `<line x1="${x0 + 6}" x2="${
          x0 + 24
        }" y1="${y}" y2="${y}" stroke="${e.color}" stroke-width="2" stroke-opacity="${e.opacity ?? 1}"${
          e.dashed ? ' stroke-dasharray="5 3"' : ""
        }/>`,
      `<text x="${x0 + 30}" y="${y}" dominant-baseline="middle">${escapeHtml(e.name)}</text>`,
    );
  });
}

function svgBundle(svg: string, plain: string): Displayable {
  return displayable({ "image/svg+xml": svg, "text/plain": plain });
}

/** The SVG markup of a line chart (see {@link lineChart}). */
export function lineChartSvg(series: readonly LineSeries[], opts: ChartOptions = {}): string {
  if (!series.length) throw new DifflabError(`lineChart: no series`);
  const logY = opts.logY ?? false, logX = opts.logX ?? false;
  const pts = series.map((s) => {
    const n = s.y.length;
    if (s.x && s.x.length !== n) {
      throw new DifflabError(`lineChart: series "${s.name ?? ""}" has ${s.x.length} x values and ${n} y values`);
    }
    const out: [number, number][] = [];
    for (let i = 0; i < n; i++) {
      const x = s.x ? Number(s.x[i]) : i + 1, y = Number(s.y[i]);
      if (Number.isFinite(x) && Number.isFinite(y) && (!logY || y > 0) && (!logX || x > 0)) out.push([x, y]);
    }
    return out;
  });
  const all = pts.flat();
  if (!all.length) throw new DifflabError(`lineChart: no finite points to draw`);
  let [x0, x1] = opts.xRange ?? [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  if (!(x1 > x0)) [x0, x1] = logX ? [x0 / 2, x0 * 2] : [x0 - 1, x0 + 1];
  if (logX && !opts.xRange) [x0, x1] = [x0 / 1.15, x1 * 1.15];
  let [y0, y1] = opts.yRange ?? [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  if (!opts.yRange) {
    if (logY) [y0, y1] = [y0 / 1.15, y1 * 1.15];
    else {
      const pad = (y1 - y0) * 0.06 || Math.abs(y0) * 0.1 || 1;
      [y0, y1] = [y0 - pad, y1 + pad];
    }
  }
  const f = frame(opts, legendWidth(series.flatMap((s) => (s.name ? [s.name] : []))));
  const tx = logX
    ? (x: number) => f.left + (Math.log(x / x0) / Math.log(x1 / x0)) * (f.right - f.left)
    : (x: number) => f.left + ((x - x0) / (x1 - x0)) * (f.right - f.left);
  const ty = logY
    ? (y: number) => f.bottom - (Math.log(y / y0) / Math.log(y1 / y0)) * (f.bottom - f.top)
    : (y: number) => f.bottom - ((y - y0) / (y1 - y0)) * (f.bottom - f.top);
  yAxis(f, logY ? logTicks(y0, y1) : niceTicks(y0, y1), ty);
  for (const v of logX ? logTicks(x0, x1) : niceTicks(x0, x1, 6)) {
    const x = tx(v).toFixed(1);
    f.parts.push(
      `<line x1="${x}" x2="${x}" y1="${f.bottom}" y2="${f.bottom + 4}" stroke="#333"/>`,
      `<text x="${x}" y="${f.bottom + 16}" text-anchor="middle">${escapeHtml(fmtNum(v))}</text>`,
    );
  }
  f.parts.push(
    `<line x1="${f.left}" x2="${f.right}" y1="${f.bottom}" y2="${f.bottom}" stroke="#333"/>`,
    `<line x1="${f.left}" x2="${f.left}" y1="${f.top}" y2="${f.bottom}" stroke="#333"/>`,
  );
  const entries: Parameters<typeof legend>[1] = [];
  series.forEach((s, i) => {
    const color = s.color ?? PALETTE[i % PALETTE.length];
    const p = pts[i];
    const attrs = `fill="none" stroke="${color}" stroke-width="${s.width ?? 1.8}" stroke-opacity="${s.opacity ?? 1}"` +
      (s.dashed ? ' stroke-dasharray="5 3"' : "");
    f.parts.push(
      `<polyline class="series" data-name="${escapeHtml(s.name ?? "")}" ${attrs} points="${
        p.map(([x, y]) => `${tx(x).toFixed(1)},${ty(y).toFixed(1)}`).join(" ")
      }"/>`,
    );
    if (s.markers ?? p.length <= 40) {
      for (const [x, y] of p) f.parts.push(markerSvg(s.marker ?? "dot", tx(x), ty(y), color));
    }
    if (s.name) {
      const marker = s.width === 0 ? s.marker ?? "dot" : undefined;
      entries.push({ name: s.name, color, dashed: s.dashed, marker, opacity: s.opacity });
    }
  });
  legend(f, entries);
  f.parts.push(`</svg>`);
  return f.parts.join("\n");
}

/** A line chart of one or more series, as an SVG display. */
export function lineChart(series: readonly LineSeries[], opts: ChartOptions = {}): Displayable {
  const svg = lineChartSvg(series, opts);
  const plain = series.map((s) => `${s.name ?? "series"}: ${s.y.length} points`).join("\n");
  return svgBundle(svg, `${opts.title ?? "line chart"}\n${plain}`);
}

/** A loss log entry (train's `LogRecord` fits). */
export interface LossRecord {
  step: number;
  loss: number;
}

/** What {@link lossCurve} accepts: losses per step, log records, or several named runs of either. */
export type LossInput =
  | readonly number[]
  | readonly LossRecord[]
  | Readonly<Record<string, readonly number[] | readonly LossRecord[]>>;

/** Options of {@link lossCurve}. */
export interface LossCurveOptions extends ChartOptions {
  /** EMA factor of the smoothed overlay in [0, 1) (default 0.9 from 30 points on, else none; 0 disables). */
  smooth?: number;
}

/** Debiased exponential moving average (TensorBoard-style smoothing). */
export function emaSmooth(values: ArrayLike<number>, beta: number): number[] {
  const out: number[] = [];
  let m = 0, w = 0;
  for (let i = 0; i < values.length; i++) {
    const v = Number(values[i]);
    if (!Number.isFinite(v)) {
      out.push(NaN);
      continue;
    }
    m = beta * m + (1 - beta) * v;
    w = beta * w + (1 - beta);
    out.push(m / w);
  }
  return out;
}

function toXY(v: readonly number[] | readonly LossRecord[]): { x: number[]; y: number[] } {
  if (v.length && typeof v[0] === "object") {
    const r = v as readonly LossRecord[];
    return { x: r.map((e) => e.step), y: r.map((e) => e.loss) };
  }
  const n = v as readonly number[];
  return { x: n.map((_, i) => i + 1), y: n.slice() };
}

/**
 * The SVG of a loss curve: every recorded point as a thin line, plus a
 * smoothed overlay for long runs; log scale when the loss spans more than
 * 30× (as it does from initialisation to convergence).
 */
export function lossCurveSvg(input: LossInput, opts: LossCurveOptions = {}): string {
  const runs: [string, { x: number[]; y: number[] }][] = Array.isArray(input)
    ? [["loss", toXY(input as readonly number[])]]
    : Object.entries(input as Record<string, readonly number[]>).map(([k, v]) => [k, toXY(v)]);
  if (!runs.length || runs.every(([, r]) => !r.y.length)) throw new DifflabError(`lossCurve: no loss values`);
  const finite = runs.flatMap(([, r]) => r.y.filter(Number.isFinite));
  const lo = Math.min(...finite), hi = Math.max(...finite);
  const logY = opts.logY ?? (lo > 0 && hi / lo > 30);
  const series: LineSeries[] = [];
  runs.forEach(([name, r], i) => {
    const color = PALETTE[i % PALETTE.length];
    const beta = opts.smooth ?? (r.y.length >= 30 ? 0.9 : 0);
    if (beta > 0) {
      series.push({ name, x: r.x, y: r.y, color, opacity: 0.3, width: 1, markers: false });
      series.push({ name: `${name} (smoothed)`, x: r.x, y: emaSmooth(r.y, beta), color, width: 2, markers: false });
    } else series.push({ name, x: r.x, y: r.y, color });
  });
  return lineChartSvg(series, { xLabel: "step", yLabel: "loss", title: "training loss", ...opts, logY });
}

/** A loss curve (see {@link lossCurveSvg}) as an SVG display. */
export function lossCurve(input: LossInput, opts: LossCurveOptions = {}): Displayable {
  const svg = lossCurveSvg(input, opts);
  const ys = Array.isArray(input)
    ? toXY(input as readonly number[]).y
    : Object.values(input as Record<string, readonly number[]>).flatMap((v) => toXY(v).y);
  const f = ys.filter(Number.isFinite);
  return svgBundle(
    svg,
    `loss curve: ${ys.length} points, first ${fmtNum(f[0])}, last ${fmtNum(f[f.length - 1])}, min ${
      fmtNum(Math.min(...f))
    }`,
  );
}

/** One group member of a {@link barChart}. */
export interface BarSeries {
  name: string;
  values: ArrayLike<number>;
  color?: string;
}

/** The SVG of a grouped bar chart: one group per category, one bar per series. */
export function barChartSvg(
  categories: readonly string[],
  series: readonly BarSeries[],
  opts: ChartOptions = {},
): string {
  if (!categories.length || !series.length) throw new DifflabError(`barChart: no categories or no series`);
  for (const s of series) {
    if (s.values.length !== categories.length) {
      throw new DifflabError(
        `barChart: series "${s.name}" has ${s.values.length} values for ${categories.length} categories`,
      );
    }
  }
  const vals = series.flatMap((s) => Array.from(s.values, Number).filter(Number.isFinite));
  let [y0, y1] = opts.yRange ?? [Math.min(0, ...vals), Math.max(0, ...vals)];
  if (!(y1 > y0)) y1 = y0 + 1;
  if (!opts.yRange) y1 += (y1 - y0) * 0.08;
  const longest = Math.max(...categories.map((c) => c.length));
  // Slant the labels only when they would not fit side by side under their groups.
  const rotate = longest * 6.5 > (((opts.width ?? 640) - 80) / categories.length) * 0.9;
  // Slanted labels need room below the axis; the canvas grows so the plot keeps its height.
  const below = rotate ? Math.ceil(longest * 3.8) : 0;
  const f = frame(
    { ...opts, height: (opts.height ?? 320) + below },
    series.length > 1 ? legendWidth(series.map((s) => s.name)) : 0,
  );
  f.bottom -= below;
  const ty = (y: number) => f.bottom - ((y - y0) / (y1 - y0)) * (f.bottom - f.top);
  yAxis(f, niceTicks(y0, y1), ty);
  const gw = (f.right - f.left) / categories.length, bw = (gw * 0.8) / series.length;
  categories.forEach((c, i) => {
    const cx = f.left + gw * (i + 0.5);
    f.parts.push(
      rotate
        ? `<text x="${cx.toFixed(1)}" y="${f.bottom + 10}" text-anchor="end" transform="rotate(-40 ${cx.toFixed(1)} ${
          f.bottom + 10
        })">${escapeHtml(c)}</text>`
        : `<text x="${cx.toFixed(1)}" y="${f.bottom + 16}" text-anchor="middle">${escapeHtml(c)}</text>`,
    );
    series.forEach((s, j) => {
      const v = Number(s.values[i]);
      if (!Number.isFinite(v)) return;
      const x = f.left + gw * i + gw * 0.1 + bw * j;
      const [ya, yb] = [ty(Math.max(v, 0)), ty(Math.min(v, 0))];
      f.parts.push(
        `<rect class="bar" x="${x.toFixed(1)}" y="${ya.toFixed(1)}" width="${(bw * 0.92).toFixed(1)}" height="${
          Math.max(0, yb - ya).toFixed(1)
        }" fill="${s.color ?? PALETTE[j % PALETTE.length]}"><title>${
          escapeHtml(`${s.name} ${c}: ${fmtNum(v)}`)
        }</title></rect>`,
      );
    });
  });
  f.parts.push(
    `<line x1="${f.left}" x2="${f.right}" y1="${ty(0)}" y2="${ty(0)}" stroke="#333"/>`,
    `<line x1="${f.left}" x2="${f.left}" y1="${f.top}" y2="${f.bottom}" stroke="#333"/>`,
  );
  if (series.length > 1) {
    legend(f, series.map((s, j) => ({ name: s.name, color: s.color ?? PALETTE[j % PALETTE.length], bar: true })));
  }
  f.parts.push(`</svg>`);
  return f.parts.join("\n");
}

/** A grouped bar chart as an SVG display. */
export function barChart(
  categories: readonly string[],
  series: readonly BarSeries[],
  opts: ChartOptions = {},
): Displayable {
  return svgBundle(
    barChartSvg(categories, series, opts),
    `${opts.title ?? "bar chart"}: ${categories.length} categories × ${series.length} series`,
  );
}
