/**
 * @file Rich display for notebooks (the Deno Jupyter kernel): importing this
 * module gives every Tensor a `Symbol.for("Jupyter.display")` method
 * (dtype, shape, backend, statistics and a picture or table preview), and
 * exports helpers for parameter tables, loss curves, charts, image grids and
 * heat maps. Every helper returns a value the kernel renders when it is a
 * cell's result, or that {@link show} publishes from anywhere in a cell.
 *
 * @example
 * ```ts
 * import * as d from "../mod.ts";
 * const x = d.random.normal(d.randomKey(0), [4, 1, 28, 28]);
 * await d.display.show(x); // a 2×2 grid of noise images under a header
 * d.display.lossCurve([1, 0.5, 0.3, 0.25]); // an SVG chart as the cell's result
 * ```
 * @module
 */
import { bundleOf, type Displayable, isDisplayable, type MimeBundle } from "./common.ts";
import { installTensorDisplay, tensorDisplay } from "./tensor.ts";
import { Tensor } from "../tensor/tensor.ts";

export {
  bundleOf,
  DISPLAY,
  type Displayable,
  displayable,
  escapeHtml,
  fmtCount,
  fmtInt,
  fmtNum,
  isDisplayable,
  type MimeBundle,
} from "./common.ts";
export {
  autoRange,
  type Colormap,
  colormapRgb,
  type HostImage,
  type RenderedPng,
  renderGrid,
  type RenderOptions,
} from "./image.ts";
export {
  barChart,
  barChartSvg,
  type BarSeries,
  type ChartOptions,
  emaSmooth,
  lineChart,
  lineChartSvg,
  type LineSeries,
  lossCurve,
  type LossCurveOptions,
  lossCurveSvg,
  type LossInput,
  type LossRecord,
  niceTicks,
} from "./chart.ts";
export {
  type Cell,
  type ParamRow,
  type ParamsInput,
  type ParamSummary,
  paramSummary,
  showParams,
  type ShowParamsOptions,
  table,
  type TableOptions,
} from "./table.ts";
export {
  chooseView,
  heatmap,
  type HeatmapInput,
  type HeatmapOptions,
  imageGrid,
  type ImageGridOptions,
  stats,
  tensorBundle,
  tensorDisplay,
  type TensorDisplayOptions,
  type TensorMeta,
  type TensorView,
  view,
} from "./tensor.ts";

installTensorDisplay();

/** The Deno kernel's API, if this code runs inside `deno jupyter` (accessing it elsewhere throws). */
function jupyter(): { display(obj: unknown, opts?: { raw?: boolean }): Promise<void> } | null {
  try {
    return (Deno as unknown as { jupyter?: { display(obj: unknown, opts?: { raw?: boolean }): Promise<void> } })
      .jupyter ?? null;
  } catch {
    return null;
  }
}

/**
 * Shows a value now, in the middle of a cell: in Jupyter as rich output
 * (tensors, displays from this module, or anything the kernel knows), and
 * elsewhere as its text/plain form on stdout.
 */
export async function show(x: unknown): Promise<void> {
  let bundle: MimeBundle | null = null;
  if (x instanceof Tensor) bundle = await tensorDisplay(x);
  else if (isDisplayable(x)) bundle = await bundleOf(x as Displayable);
  const j = jupyter();
  if (j) {
    if (bundle) await j.display(bundle, { raw: true });
    else await j.display(x);
    return;
  }
  console.log(bundle ? bundle["text/plain"] ?? Object.keys(bundle).join(", ") : x);
}

/** True inside the Deno Jupyter kernel. */
export function inJupyter(): boolean {
  return jupyter() !== null;
}
