/**
 * @file How a Tensor looks in a notebook. The Jupyter display method is
 * installed on `Tensor.prototype` from here (the tensor core stays free of
 * presentation code): a header with dtype, shape, backend and statistics,
 * then a preview chosen from the shape - a picture for 2-D maps and
 * `[C,H,W]` / `[N,C,H,W]` images with C in {1, 3}, a colour-mapped heat map
 * on request, a truncated table otherwise. The method is async (the Deno
 * kernel awaits it), so every backend works, WebGPU included.
 */
import { ShapeError } from "../tensor/errors.ts";
import * as ops from "../tensor/ops.ts";
import { Tensor, tidy } from "../tensor/tensor.ts";
import {
  base64,
  DISPLAY,
  type Displayable,
  displayable,
  escapeHtml,
  fmtNum,
  fmtShape,
  type MimeBundle,
} from "./common.ts";
import { type Colormap, colormapCss, type HostImage, renderGrid, type RenderOptions } from "./image.ts";

/** How to show a tensor; "auto" picks from the shape. */
export type TensorView = "auto" | "image" | "heatmap" | "table";

/** Options of a tensor's display. */
export interface TensorDisplayOptions {
  /** View (default "auto"). */
  as?: TensorView;
  /** Value range of image/heat-map views (default: automatic, see `autoRange`). */
  range?: readonly [number, number];
  /** Colour map (default gray for images, viridis for heat maps). */
  colormap?: Colormap;
  /** Integer upscale factor of image views (default automatic). */
  scale?: number;
  /** At most this many images of an `[N,C,H,W]` grid (default 64). */
  maxImages?: number;
  /** Grid rows of an `[N,C,H,W]` grid. */
  rows?: number;
  /** Title shown above the preview. */
  title?: string;
}

/** Static facts about a tensor that its display needs. */
export interface TensorMeta {
  shape: readonly number[];
  dtype: string;
  backend: string;
}

/** Elements read in full for a preview; larger tensors are previewed from a slice. */
const READ_LIMIT = 1 << 20;
const EDGE = 4;

function isImageShape(shape: readonly number[]): "image2d" | "chw" | "nchw" | null {
  const big = (h: number, w: number) => h >= 8 && w >= 8;
  if (shape.length === 2 && shape[0] >= 8 && shape[1] >= 8) return "image2d";
  if (shape.length === 3 && (shape[0] === 1 || shape[0] === 3) && big(shape[1], shape[2])) return "chw";
  if (shape.length === 4 && (shape[1] === 1 || shape[1] === 3) && big(shape[2], shape[3])) return "nchw";
  return null;
}

/** The view "auto" resolves to for a shape (and checks an explicit request against the shape). */
export function chooseView(shape: readonly number[], as: TensorView = "auto"): "image" | "heatmap" | "table" {
  if (as === "table") return "table";
  if (as === "heatmap") {
    if (shape.length !== 2 && shape.length !== 3) {
      throw new ShapeError(`display: a heat map needs a [H,W] or [K,H,W] tensor, got ${fmtShape(shape)}`);
    }
    return "heatmap";
  }
  const img = isImageShape(shape);
  if (as === "image") {
    if (!img && shape.length !== 2) {
      throw new ShapeError(
        `display: an image needs [H,W], [C,H,W] or [N,C,H,W] with C in {1,3}, got ${fmtShape(shape)}`,
      );
    }
    return "image";
  }
  return img ? "image" : "table";
}

/** Summary statistics of host values (finite values only; NaN/inf counted). */
export function stats(
  data: ArrayLike<number>,
): { min: number; max: number; mean: number; std: number; nonFinite: number } {
  let min = Infinity, max = -Infinity, s = 0, s2 = 0, n = 0, bad = 0;
  for (let i = 0; i < data.length; i++) {
    const v = Number(data[i]);
    if (!Number.isFinite(v)) {
      bad++;
      continue;
    }
    if (v < min) min = v;
    if (v > max) max = v;
    s += v;
    s2 += v * v;
    n++;
  }
  const mean = n ? s / n : NaN;
  return {
    min: n ? min : NaN,
    max: n ? max : NaN,
    mean,
    std: n ? Math.sqrt(Math.max(0, s2 / n - mean * mean)) : NaN,
    nonFinite: bad,
  };
}

function header(meta: TensorMeta, data: ArrayLike<number> | null, note: string): { html: string; plain: string } {
  const title = `${meta.dtype}${fmtShape(meta.shape)}`;
  let statsText = "";
  if (data && data.length > 1 && meta.dtype !== "bool") {
    const s = stats(data);
    statsText = `min ${fmtNum(s.min)} · max ${fmtNum(s.max)} · mean ${fmtNum(s.mean)} · std ${fmtNum(s.std)}` +
      (s.nonFinite ? ` · <b style="color:#c00">${s.nonFinite} NaN/inf</b>` : "");
  } else if (data && data.length > 1) {
    let on = 0;
    for (let i = 0; i < data.length; i++) on += data[i] ? 1 : 0;
    statsText = `${on} of ${data.length} true`;
  }
  const html = `<div style="font-family:monospace;margin:2px 0"><b>Tensor</b> ${escapeHtml(title)} on <b>${
    escapeHtml(meta.backend)
  }</b>${statsText ? ` <span style="color:#666">· ${statsText}</span>` : ""}${
    note ? ` <span style="color:#888">(${escapeHtml(note)})</span>` : ""
  }</div>`;
  const plain = `Tensor(${title} on ${meta.backend})` + (statsText ? ` ${statsText.replace(/<[^>]+>/g, "")}` : "");
  return { html, plain };
}

function fmtValue(v: number, dtype: string): string {
  if (dtype === "bool") return v ? "true" : "false";
  return fmtNum(Number(v));
}

/** Indices shown along an axis of length n: all, or the first and last `edge` with a gap marker (-1). */
function shownIndices(n: number, edge: number): number[] {
  if (n <= 2 * edge + 1) return [...Array(n).keys()];
  return [...Array(edge).keys(), -1, ...Array.from({ length: edge }, (_, i) => n - edge + i)];
}

/** An HTML table of the last two axes of `data` (shape `shape`, row-major) at leading index 0. */
function tableHtml(shape: readonly number[], data: ArrayLike<number>, dtype: string): { html: string; plain: string } {
  if (shape.length === 0) {
    const v = fmtValue(Number(data[0]), dtype);
    return { html: `<div style="font-family:monospace">${escapeHtml(v)}</div>`, plain: v };
  }
  const rowsN = shape.length >= 2 ? shape[shape.length - 2] : 1, colsN = shape[shape.length - 1];
  const ri = shownIndices(rowsN, EDGE), ci = shownIndices(colsN, 2 * EDGE);
  const td = (s: string, extra = "") => `<td style="text-align:right;font-family:monospace${extra}">${s}</td>`;
  const lines: string[] = [];
  const plainRows: string[] = [];
  for (const r of ri) {
    if (r < 0) {
      lines.push(`<tr><th></th>${ci.map(() => td("⋮", ";color:#888")).join("")}</tr>`);
      plainRows.push("...");
      continue;
    }
    const cells = ci.map((c) => (c < 0 ? "…" : fmtValue(Number(data[r * colsN + c]), dtype)));
    lines.push(
      `<tr>${shape.length >= 2 ? `<th style="color:#888">${r}</th>` : ""}${
        cells.map((s) => td(escapeHtml(s), s === "…" ? ";color:#888" : "")).join("")
      }</tr>`,
    );
    plainRows.push(cells.join(" "));
  }
  const head = `<tr>${shape.length >= 2 ? "<th></th>" : ""}${
    ci.map((c) => `<th style="color:#888;text-align:right">${c < 0 ? "" : c}</th>`).join("")
  }</tr>`;
  const lead = shape.length > 2
    ? `<div style="color:#666;font-size:90%">showing [${
      [...shape.slice(0, -2).map(() => "0"), ":", ":"].join(", ")
    }]</div>`
    : "";
  return {
    html: `${lead}<table class="difflab-tensor">${head}${lines.join("")}</table>`,
    plain: plainRows.join("\n"),
  };
}

function imagesOf(shape: readonly number[], data: ArrayLike<number>, kind: "image" | "heatmap"): HostImage[] {
  const img = isImageShape(shape);
  if (kind === "image" && img === "chw") return [{ data, channels: shape[0], height: shape[1], width: shape[2] }];
  if (kind === "image" && img === "nchw") {
    const [n, c, h, w] = shape, per = c * h * w;
    return Array.from({ length: n }, (_, i) => ({
      data: Array.prototype.slice.call(data, i * per, (i + 1) * per) as number[],
      channels: c,
      height: h,
      width: w,
    }));
  }
  if (shape.length === 3) {
    const [k, h, w] = shape;
    return Array.from({ length: k }, (_, i) => ({
      data: Array.prototype.slice.call(data, i * h * w, (i + 1) * h * w) as number[],
      channels: 1,
      height: h,
      width: w,
    }));
  }
  return [{ data, channels: 1, height: shape[0], width: shape[1] }];
}

function colorbar(map: Colormap, range: readonly [number, number]): string {
  return `<div style="display:flex;align-items:center;gap:6px;font-family:monospace;font-size:90%">${
    escapeHtml(fmtNum(range[0]))
  }<div style="width:160px;height:10px;background:${colormapCss(map)}"></div>${escapeHtml(fmtNum(range[1]))}</div>`;
}

/**
 * The MIME bundle of a tensor preview from host values (pure and
 * synchronous; `previewShape` is the shape of `data` when it is a slice of
 * the tensor, with `note` saying which).
 */
export function tensorBundle(
  meta: TensorMeta,
  data: ArrayLike<number>,
  opts: TensorDisplayOptions = {},
  previewShape: readonly number[] = meta.shape,
  note = "",
): MimeBundle {
  const view = chooseView(previewShape, opts.as);
  const h = header(meta, note ? null : data, note);
  const title = opts.title ? `<div style="font-weight:bold">${escapeHtml(opts.title)}</div>` : "";
  if (view === "table") {
    const t = tableHtml(previewShape, data, meta.dtype);
    return { "text/html": `${title}${h.html}${t.html}`, "text/plain": `${h.plain}\n${t.plain}` };
  }
  const map: Colormap = opts.colormap ?? (view === "heatmap" ? "viridis" : "gray");
  const images = imagesOf(previewShape, data, view);
  const ropts: RenderOptions = { range: opts.range, colormap: map, scale: opts.scale, rows: opts.rows };
  if (view === "heatmap" && images.length > 1 && opts.rows === undefined) ropts.rows = 1;
  const r = renderGrid(images, ropts);
  const b64 = base64(r.png);
  const legend = map === "gray"
    ? `<div style="font-family:monospace;font-size:90%;color:#666">black = ${fmtNum(r.range[0])}, white = ${
      fmtNum(r.range[1])
    }</div>`
    : colorbar(map, r.range);
  return {
    "image/png": b64,
    "text/html": `${title}${h.html}<img src="data:image/png;base64,${b64}" width="${r.width}" height="${r.height}" ` +
      `style="image-rendering:pixelated" alt="${escapeHtml(fmtShape(meta.shape))}"/>${legend}`,
    "text/plain": `${h.plain}\n<${images.length} image(s), ${r.width}×${r.height} px>`,
  };
}

/** Reads what a preview needs (all of it, or a slice for large tensors) and builds the bundle. */
export async function tensorDisplay(t: Tensor, opts: TensorDisplayOptions = {}): Promise<MimeBundle> {
  const meta: TensorMeta = { shape: t.shape, dtype: t.dtype, backend: t.backend.name };
  if (t.isDisposed) {
    const title = `${t.dtype}${fmtShape(t.shape)}`;
    return {
      "text/plain": `Tensor(${title} on ${meta.backend}) (disposed)`,
      "text/html":
        `<div style="font-family:monospace"><b>Tensor</b> ${title} on <b>${meta.backend}</b> (disposed)</div>`,
    };
  }
  const view = chooseView(t.shape, opts.as);
  const maxImages = opts.maxImages ?? 64;
  let starts: number[] | null = null, ends: number[] | null = null, note = "";
  if (view === "image" && t.ndim === 4 && t.shape[0] > maxImages) {
    [starts, ends] = [[0, 0, 0, 0], [maxImages, ...t.shape.slice(1)]];
    note = `first ${maxImages} of ${t.shape[0]} images`;
  } else if (view === "table" && t.size > READ_LIMIT) {
    // Top-left corner of the first matrix; the statistics would need the whole tensor.
    starts = t.shape.map(() => 0);
    ends = t.shape.map((n, i) => (i < t.ndim - 2 ? 1 : Math.min(n, 2 * EDGE + 1 + (i === t.ndim - 1 ? 2 * EDGE : 0))));
    note = `preview of a corner; no statistics for ${t.size.toLocaleString("en")} elements`;
  }
  if (!starts) return tensorBundle(meta, await t.data(), opts);
  const part = tidy(() => ops.slice(t, starts!, ends!));
  try {
    return tensorBundle(meta, await part.data(), opts, part.shape, note);
  } finally {
    part.dispose();
  }
}

/** A tensor with display options (e.g. `show(attn, {as: "heatmap"})`), read when displayed. */
export function view(t: Tensor, opts: TensorDisplayOptions = {}): Displayable {
  return { [DISPLAY]: () => tensorDisplay(t, opts) } as Displayable;
}

/** Input of {@link heatmap}: a tensor `[H,W]` / `[K,H,W]` or nested arrays of numbers. */
export type HeatmapInput = Tensor | readonly (readonly number[])[] | readonly (readonly (readonly number[])[])[];

/** Options of {@link heatmap}. */
export interface HeatmapOptions {
  /** Colour map (default viridis; rdbu for signed data). */
  colormap?: Colormap;
  /** Value range (default min..max; symmetric for rdbu). */
  range?: readonly [number, number];
  /** Integer upscale factor (default automatic). */
  scale?: number;
  /** Title above the map. */
  title?: string;
  /** Captions under each map of a `[K,H,W]` stack (HTML only). */
  captions?: readonly string[];
}

function nestedToHost(x: readonly unknown[]): { data: number[]; shape: number[] } {
  const shape: number[] = [];
  let d: unknown = x;
  while (Array.isArray(d)) {
    shape.push(d.length);
    d = d[0];
  }
  const data = (x as unknown[]).flat(shape.length) as number[];
  if (data.length !== shape.reduce((a, b) => a * b, 1)) throw new ShapeError(`heatmap: ragged nested array`);
  return { data: data.map(Number), shape };
}

/**
 * A colour-mapped heat map (attention maps, masks, per-channel statistics),
 * read now so later disposal of the tensor does not matter. `[K,H,W]`
 * stacks are drawn side by side.
 */
export async function heatmap(x: HeatmapInput, opts: HeatmapOptions = {}): Promise<Displayable> {
  let meta: TensorMeta, data: ArrayLike<number>;
  if (x instanceof Tensor) {
    meta = { shape: x.shape, dtype: x.dtype, backend: x.backend.name };
    data = await x.data();
  } else {
    const h = nestedToHost(x as readonly unknown[]);
    meta = { shape: h.shape, dtype: "f64", backend: "host" };
    data = h.data;
  }
  const b = tensorBundle(meta, data, {
    as: "heatmap",
    colormap: opts.colormap,
    range: opts.range,
    scale: opts.scale,
    title: opts.title,
  });
  if (opts.captions?.length) {
    b["text/html"] += `<div style="font-size:90%;color:#444">${opts.captions.map(escapeHtml).join(" · ")}</div>`;
  }
  return displayable(b);
}

/** Options of {@link imageGrid}. */
export interface ImageGridOptions extends RenderOptions {
  /** Title above the grid. */
  title?: string;
  /** Caption under the grid (HTML only). */
  caption?: string;
}

/**
 * Images as one PNG grid, read now: a tensor `[N,C,H,W]` (C in {1,3}), or a
 * list of tensors `[C,H,W]` / `[H,W]` / `[1,C,H,W]` of possibly different
 * sizes (smaller ones are upscaled to the largest, e.g. DiMR's branches).
 * Values in [-1, 1] map black..white unless `range` says otherwise.
 */
export async function imageGrid(
  images: Tensor | readonly Tensor[],
  rows?: number,
  opts: ImageGridOptions = {},
): Promise<Displayable> {
  const list: HostImage[] = [];
  const add = async (t: Tensor) => {
    const d = await t.data();
    const s = t.shape;
    if (s.length === 4 && (s[1] === 1 || s[1] === 3)) list.push(...imagesOf(s, d, "image"));
    else if (s.length === 3 && (s[0] === 1 || s[0] === 3)) {
      list.push({ data: d, channels: s[0], height: s[1], width: s[2] });
    } else if (s.length === 2) list.push({ data: d, channels: 1, height: s[0], width: s[1] });
    else {throw new ShapeError(
        `imageGrid: images must be [N,C,H,W], [C,H,W] or [H,W] with C in {1,3}, got ${fmtShape(s)}`,
      );}
  };
  if (images instanceof Tensor) await add(images);
  else for (const t of images) await add(t);
  const r = renderGrid(list, { ...opts, rows: rows ?? opts.rows });
  const b64 = base64(r.png);
  const title = opts.title ? `<div style="font-weight:bold">${escapeHtml(opts.title)}</div>` : "";
  const caption = opts.caption ? `<div style="font-size:90%;color:#444">${escapeHtml(opts.caption)}</div>` : "";
  return displayable({
    "image/png": b64,
    "text/html": `${title}<img src="data:image/png;base64,${b64}" width="${r.width}" height="${r.height}" ` +
      `style="image-rendering:pixelated" alt="image grid"/>${caption}`,
    "text/plain": `${opts.title ?? "image grid"}: ${list.length} images, ${r.width}×${r.height} px`,
  });
}

/** Installs the Jupyter display method on every Tensor (idempotent). */
export function installTensorDisplay(): void {
  Object.defineProperty(Tensor.prototype, DISPLAY, {
    value: function (this: Tensor): Promise<MimeBundle> {
      return tensorDisplay(this);
    },
    configurable: true,
    writable: true,
    enumerable: false,
  });
}
