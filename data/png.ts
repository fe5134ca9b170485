/**
 * @file PNG in and out (pure JS via npm:fast-png): image grids for sample
 * sheets, atomic file writes, and decoding any PNG colour type/bit depth to
 * 8-bit interleaved pixels.
 */
import { decode, encode } from "fast-png";
import { DifflabError, ShapeError } from "../tensor/errors.ts";
import { Tensor } from "../tensor/tensor.ts";

/** Options of {@link toPngGrid}. */
export interface GridOptions {
  /** Grid rows (default: enough for `cols`). */
  rows?: number;
  /** Grid columns (default: `ceil(n / rows)` if rows is given, else `ceil(sqrt(n))`). */
  cols?: number;
  /** Channels per image, 1 or 3 (required for a Float32Array; a Tensor's shape gives it). */
  channels?: number;
  /** Image side (required for a Float32Array; a Tensor's shape gives it). */
  size?: number;
  /** Value range mapped to 0..255 (default [-1, 1]); values outside are clipped. */
  range?: readonly [number, number];
  /** Separator width in pixels (default 2). */
  gap?: number;
  /** Separator and empty-cell grey level 0..255 (default 128, visible on black and white images). */
  gapValue?: number;
}

/** A grid layout resolved from the options and image count. */
function layout(n: number, opts: GridOptions): [number, number] {
  let { rows, cols } = opts;
  if (rows === undefined && cols === undefined) cols = Math.max(1, Math.ceil(Math.sqrt(n)));
  if (rows === undefined) rows = Math.max(1, Math.ceil(n / cols!));
  if (cols === undefined) cols = Math.max(1, Math.ceil(n / rows));
  if (!Number.isInteger(rows) || !Number.isInteger(cols) || rows < 1 || cols < 1) {
    throw new DifflabError(`toPngGrid: rows and cols must be positive integers, got ${rows} and ${cols}`);
  }
  if (rows * cols < n) throw new ShapeError(`toPngGrid: a ${rows}×${cols} grid cannot hold ${n} images`);
  return [rows, cols];
}

/**
 * Lays `n` planar images (`[n, C, S, S]`, row-major) out as one PNG, row by row, with
 * `gap`-pixel separators; returns the PNG bytes (8-bit grayscale for C = 1, RGB for C = 3).
 */
export function gridToPng(
  pixels: ArrayLike<number>,
  opts: GridOptions & { channels: number; size: number },
): Uint8Array {
  const { channels: c, size: s } = opts;
  if (c !== 1 && c !== 3) throw new ShapeError(`toPngGrid: channels must be 1 or 3, got ${c}`);
  if (!Number.isInteger(s) || s < 1) throw new ShapeError(`toPngGrid: size must be a positive integer, got ${s}`);
  const per = c * s * s;
  if (pixels.length === 0 || pixels.length % per !== 0) {
    throw new ShapeError(`toPngGrid: ${pixels.length} values is not a whole number of ${c}×${s}×${s} images`);
  }
  const n = pixels.length / per;
  const [rows, cols] = layout(n, opts);
  const [lo, hi] = opts.range ?? [-1, 1];
  if (!(hi > lo)) throw new DifflabError(`toPngGrid: range must be [lo, hi] with hi > lo, got [${lo}, ${hi}]`);
  const gap = opts.gap ?? 2;
  const gv = opts.gapValue ?? 128;
  const width = cols * s + (cols + 1) * gap, height = rows * s + (rows + 1) * gap;
  const out = new Uint8Array(width * height * c).fill(gv);
  const k = 255 / (hi - lo);
  for (let i = 0; i < n; i++) {
    const oy = gap + Math.floor(i / cols) * (s + gap), ox = gap + (i % cols) * (s + gap);
    for (let ch = 0; ch < c; ch++) {
      for (let y = 0; y < s; y++) {
        for (let x = 0; x < s; x++) {
          const v = (pixels[i * per + (ch * s + y) * s + x] - lo) * k;
          // NaN maps to 0 so a diverged sample shows up black rather than failing the grid.
          out[((oy + y) * width + ox + x) * c + ch] = v >= 255 ? 255 : v > 0 ? Math.round(v) : 0;
        }
      }
    }
  }
  return encode({ width, height, data: out, channels: c, depth: 8 });
}

/** {@link gridToPng} over a Tensor `[n, C, S, S]` (read back from any backend) or a planar Float32Array. */
export async function toPngGrid(images: Tensor | Float32Array, opts: GridOptions = {}): Promise<Uint8Array> {
  if (images instanceof Tensor) {
    if (images.ndim !== 4 || images.shape[2] !== images.shape[3]) {
      throw new ShapeError(`toPngGrid: images must be [n, C, S, S], got [${images.shape.join(",")}]`);
    }
    const data = await images.data();
    return gridToPng(data, { ...opts, channels: images.shape[1], size: images.shape[2] });
  }
  if (opts.channels === undefined || opts.size === undefined) {
    throw new DifflabError(`toPngGrid: a Float32Array needs opts.channels and opts.size`);
  }
  return gridToPng(images, { ...opts, channels: opts.channels, size: opts.size });
}

/** Writes bytes atomically: to a temporary file in the same directory, then renamed over `path`. */
export async function writePng(path: string, bytes: Uint8Array): Promise<void> {
  const tmp = `${path}.tmp-${crypto.randomUUID().slice(0, 8)}`;
  try {
    await Deno.writeFile(tmp, bytes);
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw new DifflabError(`writePng: cannot write ${path}: ${(e as Error).message}`);
  }
}

/** An 8-bit image with interleaved channels (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA). */
export interface Image8 {
  /** Width in pixels. */
  width: number;
  /** Height in pixels. */
  height: number;
  /** Interleaved channels per pixel (1-4). */
  channels: number;
  /** Row-major samples, `height·width·channels` bytes. */
  data: Uint8Array;
}

/** Decodes a PNG of any colour type and bit depth (palette, 1..16 bits) to 8-bit interleaved pixels. */
export function decodePng(bytes: Uint8Array, name = "<bytes>"): Image8 {
  let png;
  try {
    png = decode(bytes);
  } catch (e) {
    throw new DifflabError(`decodePng: ${name} is not a readable PNG (${(e as Error).message})`);
  }
  const { width, height, depth } = png;
  if (png.palette) {
    const pal = png.palette;
    const ch = pal[0]?.length ?? 3;
    const idx = unpackBits(png.data, width, height, 1, depth);
    const data = new Uint8Array(width * height * ch);
    for (let i = 0; i < idx.length; i++) {
      const col = pal[idx[i]];
      if (!col) throw new DifflabError(`decodePng: ${name}: palette index ${idx[i]} is out of range`);
      data.set(col, i * ch);
    }
    return { width, height, channels: ch, data };
  }
  const ch = png.channels;
  let data: Uint8Array;
  if (depth === 16) {
    data = new Uint8Array(png.data.length);
    for (let i = 0; i < data.length; i++) data[i] = Math.round(png.data[i] / 257);
  } else if (depth === 8) data = Uint8Array.from(png.data);
  else {
    const levels = (1 << depth) - 1;
    data = unpackBits(png.data, width, height, ch, depth).map((v) => Math.round((v * 255) / levels));
  }
  if (data.length !== width * height * ch) {
    throw new DifflabError(`decodePng: ${name}: decoded ${data.length} samples, expected ${width}×${height}×${ch}`);
  }
  return { width, height, channels: ch, data };
}

// Sub-byte samples are packed MSB-first with each row padded to a whole byte.
function unpackBits(src: ArrayLike<number>, w: number, h: number, ch: number, depth: number): Uint8Array {
  if (depth >= 8) return Uint8Array.from(src as ArrayLike<number>);
  const perRow = w * ch, rowBytes = Math.ceil((perRow * depth) / 8), mask = (1 << depth) - 1;
  const out = new Uint8Array(perRow * h);
  for (let y = 0; y < h; y++) {
    for (let i = 0; i < perRow; i++) {
      const bit = i * depth;
      out[y * perRow + i] = (src[y * rowBytes + (bit >> 3)] >> (8 - depth - (bit & 7))) & mask;
    }
  }
  return out;
}
