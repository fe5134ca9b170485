/**
 * @file Pixels for the notebooks: planar images (1 or 3 channels) laid out
 * in a grid, upscaled with nearest-neighbour so 28-px digits stay crisp,
 * optional colour maps for single-channel data (heat maps), encoded as PNG
 * with fast-png. Pure functions over host arrays; the tensor-facing
 * wrappers live in tensor.ts.
 */
import { encode } from "fast-png";
import { DifflabError, ShapeError } from "../tensor/errors.ts";

/** Colour maps for single-channel data: gray, viridis (sequential) and rdbu (diverging, blue < 0 < red). */
export type Colormap = "gray" | "viridis" | "rdbu";

/** One planar image `[c, h, w]` on the host. */
export interface HostImage {
  data: ArrayLike<number>;
  /** 1 (grayscale) or 3 (RGB). */
  channels: number;
  height: number;
  width: number;
}

/** Options of {@link renderGrid}. */
export interface RenderOptions {
  /** Grid rows (default: enough for `cols`). */
  rows?: number;
  /** Grid columns (default: `ceil(n / rows)`, or `ceil(sqrt(n))` when neither is given). */
  cols?: number;
  /** Value range mapped to black..white or the colour map's ends (default: see {@link autoRange}). */
  range?: readonly [number, number];
  /** Integer upscale factor (default: so a cell is about 64 px, at most 8, and the grid at most ~960 px wide). */
  scale?: number;
  /** Separator width in output pixels (default 2 for grids, 0 for a single image). */
  gap?: number;
  /** Colour map for single-channel images (default gray). */
  colormap?: Colormap;
  /** Map each image's own min..max to the colour scale (feature maps of different magnitudes); ignores `range`. */
  perImage?: boolean;
}

/** A rendered PNG and its size. */
export interface RenderedPng {
  png: Uint8Array;
  width: number;
  height: number;
  /** The value range that was mapped to the colour scale. */
  range: [number, number];
  /** The upscale factor used. */
  scale: number;
}

// Matplotlib's viridis at 9 evenly spaced points; linear interpolation between them is visually faithful.
const VIRIDIS = [
  [68, 1, 84],
  [71, 44, 122],
  [59, 81, 139],
  [44, 113, 142],
  [33, 144, 141],
  [39, 173, 129],
  [92, 200, 99],
  [170, 220, 50],
  [253, 231, 37],
];
const RDBU = [
  [33, 102, 172],
  [103, 169, 207],
  [209, 229, 240],
  [247, 247, 247],
  [253, 219, 199],
  [239, 138, 98],
  [178, 24, 43],
];

function lerpTable(table: number[][], u: number): [number, number, number] {
  const x = Math.min(1, Math.max(0, u)) * (table.length - 1);
  const i = Math.min(table.length - 2, Math.floor(x)), f = x - i;
  const a = table[i], b = table[i + 1];
  return [a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, a[2] + (b[2] - a[2]) * f];
}

/** RGB (0..255) of a value in [0, 1] under a colour map. */
export function colormapRgb(map: Colormap, u: number): [number, number, number] {
  if (map === "viridis") return lerpTable(VIRIDIS, u);
  if (map === "rdbu") return lerpTable(RDBU, u);
  const g = Math.min(1, Math.max(0, u)) * 255;
  return [g, g, g];
}

/** CSS `linear-gradient` stops of a colour map (for HTML colour bars). */
export function colormapCss(map: Colormap): string {
  const stops = Array.from({ length: 9 }, (_, i) => {
    const [r, g, b] = colormapRgb(map, i / 8).map(Math.round);
    return `rgb(${r},${g},${b}) ${(i * 12.5).toFixed(1)}%`;
  });
  return `linear-gradient(to right, ${stops.join(", ")})`;
}

/** Finite min and max of some values (`[0, 0]` when none are finite). */
export function finiteRange(values: Iterable<ArrayLike<number>>): [number, number] {
  let lo = Infinity, hi = -Infinity;
  for (const arr of values) {
    for (let i = 0; i < arr.length; i++) {
      const v = Number(arr[i]);
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
  }
  return lo <= hi ? [lo, hi] : [0, 0];
}

/**
 * The default value range of images: data already in [-1, 1] (the library's
 * image convention) maps as [-1, 1], data in [0, 1] as [0, 1], anything else
 * from its min to its max. Diverging maps are symmetric around 0.
 */
export function autoRange(values: Iterable<ArrayLike<number>>, map: Colormap = "gray"): [number, number] {
  const [lo, hi] = finiteRange(values);
  if (map === "rdbu") {
    const m = Math.max(Math.abs(lo), Math.abs(hi)) || 1;
    return [-m, m];
  }
  if (map === "gray") {
    const eps = 1e-3;
    if (lo >= -1 - eps && hi <= 1 + eps && lo < -eps) return [-1, 1];
    if (lo >= -eps && hi <= 1 + eps && hi > 0.05) return [0, 1];
  }
  return hi > lo ? [lo, hi] : [lo - 0.5, lo + 0.5];
}

function gridShape(n: number, rows?: number, cols?: number): [number, number] {
  if (rows === undefined && cols === undefined) cols = Math.max(1, Math.ceil(Math.sqrt(n)));
  if (rows === undefined) rows = Math.max(1, Math.ceil(n / cols!));
  if (cols === undefined) cols = Math.max(1, Math.ceil(n / rows));
  if (!Number.isInteger(rows) || !Number.isInteger(cols) || rows < 1 || cols < 1) {
    throw new DifflabError(`imageGrid: rows and cols must be positive integers, got ${rows} and ${cols}`);
  }
  if (rows * cols < n) throw new ShapeError(`imageGrid: a ${rows}×${cols} grid cannot hold ${n} images`);
  return [rows, cols];
}

/**
 * Renders images (possibly of different sizes: smaller ones are upscaled by
 * an integer factor to the largest cell and centred) into one PNG grid.
 */
export function renderGrid(images: readonly HostImage[], opts: RenderOptions = {}): RenderedPng {
  if (!images.length) throw new DifflabError(`imageGrid: no images to show`);
  for (const im of images) {
    if (im.channels !== 1 && im.channels !== 3) {
      throw new ShapeError(`imageGrid: images need 1 or 3 channels, got ${im.channels}`);
    }
    if (im.data.length !== im.channels * im.height * im.width || im.height < 1 || im.width < 1) {
      throw new ShapeError(
        `imageGrid: ${im.data.length} values do not make a ${im.channels}×${im.height}×${im.width} image`,
      );
    }
  }
  const map = opts.colormap ?? "gray";
  const range = opts.range ? [opts.range[0], opts.range[1]] as [number, number] : autoRange(
    images.map((i) => i.data),
    map,
  );
  if (!(range[1] > range[0])) throw new DifflabError(`imageGrid: range must be [lo, hi] with hi > lo, got [${range}]`);
  const [rows, cols] = gridShape(images.length, opts.rows, opts.cols);
  const cellH = Math.max(...images.map((i) => i.height)), cellW = Math.max(...images.map((i) => i.width));
  const single = images.length === 1;
  const gap = opts.gap ?? (single ? 0 : 2);
  // A lone image gets about 192 px, grid cells about 64 px; nothing wider than ~960 px.
  const target = single ? 192 : 64;
  const scale = opts.scale ??
    Math.max(1, Math.min(8, Math.floor(target / Math.max(cellH, cellW)), Math.floor(960 / (cols * cellW))));
  if (!Number.isInteger(scale) || scale < 1) throw new DifflabError(`imageGrid: scale must be a positive integer`);
  const rgb = map !== "gray" || images.some((i) => i.channels === 3);
  const ch = rgb ? 3 : 1;
  const W = cols * cellW * scale + (cols + 1) * gap, H = rows * cellH * scale + (rows + 1) * gap;
  const out = new Uint8Array(W * H * ch).fill(128);
  images.forEach((im, n) => {
    // Per image: plain min..max (the "viridis" rule), symmetric for the diverging map.
    const [lo, hi] = opts.perImage ? autoRange([im.data], map === "rdbu" ? "rdbu" : "viridis") : range;
    const k = hi > lo ? 1 / (hi - lo) : 0;
    // Integer upscale of smaller images to the cell, then centred.
    const f = Math.max(1, Math.min(Math.floor(cellH / im.height), Math.floor(cellW / im.width)));
    const s = f * scale;
    const oy = gap + Math.floor(n / cols) * (cellH * scale + gap) + Math.floor((cellH * scale - im.height * s) / 2);
    const ox = gap + (n % cols) * (cellW * scale + gap) + Math.floor((cellW * scale - im.width * s) / 2);
    const plane = im.height * im.width;
    for (let y = 0; y < im.height * s; y++) {
      const sy = Math.floor(y / s);
      for (let x = 0; x < im.width * s; x++) {
        const src = sy * im.width + Math.floor(x / s);
        const o = ((oy + y) * W + ox + x) * ch;
        if (im.channels === 3) {
          for (let c = 0; c < 3; c++) {
            const u = (Number(im.data[c * plane + src]) - lo) * k;
            out[o + c] = u >= 1 ? 255 : u > 0 ? Math.round(u * 255) : 0;
          }
        } else {
          const u = (Number(im.data[src]) - lo) * k;
          if (ch === 1) out[o] = u >= 1 ? 255 : u > 0 ? Math.round(u * 255) : 0;
          else {
            const [r, g, b] = Number.isNaN(u) ? [255, 0, 255] : colormapRgb(map, u);
            out[o] = Math.round(r), out[o + 1] = Math.round(g), out[o + 2] = Math.round(b);
          }
        }
      }
    }
  });
  return { png: encode({ width: W, height: H, data: out, channels: ch, depth: 8 }), width: W, height: H, range, scale };
}
