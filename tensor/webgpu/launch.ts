/**
 * @file Launching kernels within the binding limit. A kernel works on a flat
 * range of "items" (output elements, output rows, reduction outputs...). When
 * every buffer fits in one storage binding the range is dispatched at once;
 * otherwise it is split into chunks whose operands each touch a window that
 * fits `maxStorageBufferBindingSize`, and each operand is bound as that
 * window with its element offset rebased. A single item whose operands
 * cannot fit is an error naming the limit and the tensor's shape.
 */
import { DifflabError, fmtShape } from "../errors.ts";
import type { Binding, Engine, Pipe } from "./engine.ts";
import { WG } from "./codegen.ts";

/** One buffer a kernel binds. */
export interface Operand {
  readonly buf: GPUBuffer;
  /** Bytes per element. */
  readonly eb: number;
  /** The element offset the kernel adds to its indices (rebased per window). */
  readonly offset: number;
  /** Inclusive element range touched by items [s, e) (absolute, offset included); null = whole buffer. */
  readonly span: ((s: number, e: number) => [number, number]) | null;
  /** Shape reported in errors. */
  readonly shape: readonly number[];
}

/**
 * Inclusive [min, max] of `offset + Σ idx·stride` over row-major flat
 * indices [s, e) of `shape` (e > s). Decomposes the range into a prefix row,
 * whole rows and a suffix row per axis, so it costs O(rank).
 */
export function spanOf(
  shape: readonly number[],
  strides: readonly number[],
  offset: number,
  s: number,
  e: number,
): [number, number] {
  const r = shape.length;
  const inner = new Array<number>(r + 1);
  inner[r] = 1;
  for (let a = r - 1; a >= 0; a--) inner[a] = inner[a + 1] * shape[a];
  const full = (a: number): [number, number] => {
    let lo = 0, hi = 0;
    for (let j = a; j < r; j++) {
      const x = (shape[j] - 1) * strides[j];
      if (x < 0) lo += x;
      else hi += x;
    }
    return [lo, hi];
  };
  const rec = (a: number, s: number, e: number): [number, number] => {
    if (a === r) return [0, 0];
    if (s === 0 && e === inner[a]) return full(a);
    const n = inner[a + 1];
    const i0 = Math.floor(s / n), i1 = Math.floor((e - 1) / n);
    const st = strides[a];
    if (i0 === i1) {
      const [lo, hi] = rec(a + 1, s - i0 * n, e - i0 * n);
      return [lo + i0 * st, hi + i0 * st];
    }
    const [alo, ahi] = rec(a + 1, s - i0 * n, n);
    const [blo, bhi] = rec(a + 1, 0, e - i1 * n);
    let lo = Math.min(alo + i0 * st, blo + i1 * st), hi = Math.max(ahi + i0 * st, bhi + i1 * st);
    if (i1 - i0 > 1) {
      const [flo, fhi] = full(a + 1);
      const x0 = (i0 + 1) * st, x1 = (i1 - 1) * st;
      lo = Math.min(lo, flo + Math.min(x0, x1));
      hi = Math.max(hi, fhi + Math.max(x0, x1));
    }
    return [lo, hi];
  };
  const [lo, hi] = rec(0, s, e);
  return [lo + offset, hi + offset];
}

/** Span of a fresh contiguous output of `perItem` elements per item. */
export function contiguousSpan(perItem: number): (s: number, e: number) => [number, number] {
  return (s, e) => [s * perItem, e * perItem - 1];
}

/** Threads per item-range dispatch and the grid for it. */
export function threadGrid(engine: Engine, threads: number, wg: number, what: string, shape: readonly number[]) {
  const groups = Math.ceil(threads / wg);
  const g = engine.grid(groups, what, shape);
  return { groups: g, gx: g[0] * wg };
}

/**
 * Dispatches `items` items in as few chunks as the binding limit allows.
 * `uniforms(s, e, offsets, gx)` builds the uniform words for items [s, e)
 * given each operand's rebased element offset and the grid row width in
 * threads; `threads(n)` is how many threads n items need.
 */
export function launch(
  engine: Engine,
  pipe: Pipe,
  what: string,
  items: number,
  operands: readonly Operand[],
  uniforms: (s: number, e: number, offsets: number[], gx: number) => number[] | Uint32Array,
  opts: { threads?: (n: number) => number; wg?: number } = {},
): void {
  if (items <= 0) return;
  const wg = opts.wg ?? WG;
  const threadsOf = opts.threads ?? ((n: number) => n);
  const limit = engine.maxBinding;
  const shapeForErr = operands[0]?.shape ?? [];
  // Items per dispatch allowed by the 2-D grid (maxComputeWorkgroupsPerDimension²).
  const maxThreads = engine.maxWorkgroups * engine.maxWorkgroups * wg;
  let maxItems = items;
  if (threadsOf(items) > maxThreads) {
    let lo = 0, hi = items;
    while (lo < hi) {
      const mid = Math.ceil((lo + hi) / 2);
      if (threadsOf(mid) <= maxThreads) lo = mid;
      else hi = mid - 1;
    }
    if (lo === 0) {
      throw new DifflabError(
        `webgpu: ${what} of shape ${fmtShape(shapeForErr)}: one work item needs ${
          threadsOf(1)
        } threads, more than maxComputeWorkgroupsPerDimension² (${engine.maxWorkgroups}²) workgroups`,
      );
    }
    maxItems = lo;
  }
  if (maxItems === items && operands.every((o) => o.buf.size <= limit)) {
    const { groups, gx } = threadGrid(engine, threadsOf(items), wg, what, shapeForErr);
    const bindings = operands.map((o) => ({ buf: o.buf, offset: 0, size: o.buf.size }));
    engine.dispatch(pipe, uniforms(0, items, operands.map((o) => o.offset), gx), bindings, groups);
    return;
  }
  const align = engine.storageAlign;
  const windows = (s: number, e: number): { bindings: Binding[]; offsets: number[] } | string => {
    if (operands.every((o) => o.buf.size <= limit)) {
      return {
        bindings: operands.map((o) => ({ buf: o.buf, offset: 0, size: o.buf.size })),
        offsets: operands.map((o) => o.offset),
      };
    }
    const bindings: Binding[] = [];
    const offsets: number[] = [];
    for (const o of operands) {
      if (o.span === null) {
        if (o.buf.size > limit) return `a ${o.buf.size}-byte operand of shape ${fmtShape(o.shape)}`;
        bindings.push({ buf: o.buf, offset: 0, size: o.buf.size });
        offsets.push(o.offset);
        continue;
      }
      const [lo, hi] = o.span(s, e);
      const start = Math.floor((lo * o.eb) / align) * align;
      const end = Math.min(Math.ceil(((hi + 1) * o.eb) / 4) * 4, o.buf.size);
      const size = Math.max(4, end - start);
      if (size > limit) return `${size} bytes of the tensor of shape ${fmtShape(o.shape)}`;
      bindings.push({ buf: o.buf, offset: start, size });
      offsets.push(o.offset - start / o.eb);
    }
    return { bindings, offsets };
  };
  let chunk = maxItems;
  let s = 0;
  while (s < items) {
    let e = Math.min(items, s + chunk);
    let w = windows(s, e);
    while (typeof w === "string" && e - s > 1) {
      chunk = Math.max(1, Math.floor((e - s) / 2));
      e = s + chunk;
      w = windows(s, e);
    }
    if (typeof w === "string") {
      throw new DifflabError(
        `webgpu: ${what}: one work item needs ${w}, more than maxStorageBufferBindingSize (${limit} bytes)`,
      );
    }
    const { groups, gx } = threadGrid(engine, threadsOf(e - s), wg, what, shapeForErr);
    engine.dispatch(pipe, uniforms(s, e, w.offsets, gx), w.bindings, groups);
    s = e;
  }
}
