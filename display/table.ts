/**
 * @file HTML tables for notebooks: generic record tables and the parameter
 * table of a model (names, shapes, counts, share of the total), with
 * repeated blocks folded into one row (`blocks.{0..5}.attn.qkv.weight ×6`)
 * so a 28-block model still fits on a screen.
 */
import { namedLeaves } from "../nn/tree.ts";
import { DifflabError } from "../tensor/errors.ts";
import { Tensor } from "../tensor/tensor.ts";
import { type Displayable, displayable, escapeHtml, fmtCount, fmtInt, fmtNum, fmtShape } from "./common.ts";

/** A table cell: numbers are formatted (integers with separators), everything else shown as text. */
export type Cell = string | number | boolean | null | undefined;

/** Options of {@link table}. */
export interface TableOptions {
  /** Column order and selection (default: keys of the rows in first-seen order). */
  columns?: readonly string[];
  /** Caption above the table. */
  caption?: string;
  /** Per-column formatter (e.g. to add units). */
  format?: Readonly<Record<string, (v: Cell) => string>>;
}

function fmtCell(v: Cell): string {
  if (v === null || v === undefined) return "—";
  if (typeof v === "number") return Number.isInteger(v) && Math.abs(v) >= 1e4 ? fmtInt(v) : fmtNum(v);
  return String(v);
}

/** The HTML of a table of records. */
export function tableHtml(rows: readonly Readonly<Record<string, Cell>>[], opts: TableOptions = {}): string {
  const cols = opts.columns ?? [...new Set(rows.flatMap((r) => Object.keys(r)))];
  const numeric = cols.map((c) => rows.every((r) => r[c] === null || r[c] === undefined || typeof r[c] === "number"));
  const align = (i: number) => (numeric[i] ? ' style="text-align:right"' : ' style="text-align:left"');
  const cell = (c: string, v: Cell) => escapeHtml(opts.format?.[c] ? opts.format[c](v) : fmtCell(v));
  return [
    `<table class="difflab-table">`,
    opts.caption
      ? `<caption style="caption-side:top;text-align:left;font-weight:bold">${escapeHtml(opts.caption)}</caption>`
      : "",
    `<thead><tr>${cols.map((c, i) => `<th${align(i)}>${escapeHtml(c)}</th>`).join("")}</tr></thead>`,
    `<tbody>`,
    ...rows.map((r) => `<tr>${cols.map((c, i) => `<td${align(i)}>${cell(c, r[c])}</td>`).join("")}</tr>`),
    `</tbody></table>`,
  ].join("\n");
}

function plainTable(rows: readonly Readonly<Record<string, Cell>>[], cols: readonly string[]): string {
  const cells = [cols.slice(), ...rows.map((r) => cols.map((c) => fmtCell(r[c])))];
  const w = cols.map((_, i) => Math.max(...cells.map((r) => r[i].length)));
  return cells.map((r) => r.map((v, i) => v.padEnd(w[i])).join("  ").trimEnd()).join("\n");
}

/** A table of records as an HTML display (text/plain holds an aligned text version). */
export function table(rows: readonly Readonly<Record<string, Cell>>[], opts: TableOptions = {}): Displayable {
  const cols = opts.columns ?? [...new Set(rows.flatMap((r) => Object.keys(r)))];
  return displayable({
    "text/html": tableHtml(rows, opts),
    "text/plain": (opts.caption ? opts.caption + "\n" : "") + plainTable(rows, cols),
  });
}

/** One row of a parameter summary (a single tensor or a folded group of same-shaped ones). */
export interface ParamRow {
  /** Name, with folded indices written as `{0..5}`. */
  name: string;
  /** Shape of each tensor of the row (empty for a module row of a `depth` summary). */
  shape: number[];
  dtype: string;
  /** Number of tensors folded into this row. */
  tensors: number;
  /** Parameters in this row (all tensors). */
  count: number;
}

/** Parameter table data: rows plus totals. */
export interface ParamSummary {
  rows: ParamRow[];
  /** Total parameter count. */
  total: number;
  /** Total number of tensors. */
  tensors: number;
  /** Bytes at each tensor's dtype (shapes-only input counts f32). */
  bytes: number;
}

const BYTES: Record<string, number> = { f64: 8, f32: 4, f16: 2, i32: 4, u32: 4, bool: 1 };

/** What {@link showParams} accepts: a parameter tree (Tensor leaves) or official name → shape. */
export type ParamsInput = unknown;

function entriesOf(tree: ParamsInput): [string, number[], string][] {
  if (tree && typeof tree === "object" && !(tree instanceof Tensor)) {
    const vals = Object.values(tree as Record<string, unknown>);
    if (vals.length && vals.every((v) => Array.isArray(v) && v.every((n) => typeof n === "number"))) {
      return Object.entries(tree as Record<string, number[]>).map(([k, s]) => [k, s.slice(), "f32"]);
    }
  }
  const leaves = namedLeaves(tree);
  if (!leaves.length) throw new DifflabError(`showParams: no tensors (and no name → shape record) in the input`);
  return leaves.map(([k, t]) => [k, t.shape.slice(), t.dtype]);
}

function fmtIndices(vals: number[]): string {
  const u = [...new Set(vals)].sort((a, b) => a - b);
  if (u.length === 1) return String(u[0]);
  const contiguous = u.every((v, i) => i === 0 || v === u[i - 1] + 1);
  return contiguous ? `{${u[0]}..${u[u.length - 1]}}` : `{${u.join(",")}}`;
}

/**
 * Where names may fold: a numeric path segment (e.g. the `3` of
 * `blocks.3.attn.qkv.weight`) folds when every index under the same prefix
 * holds an identical subtree (same suffixes, shapes and dtypes), i.e. it
 * indexes repeated blocks rather than different modules that happen to be
 * numbered (`mlp.0` / `mlp.2`). Returns the foldable prefixes.
 */
function foldablePrefixes(entries: [string, number[], string][]): Set<string> {
  const sigs = new Map<string, Map<string, string[]>>();
  for (const [name, shape, dtype] of entries) {
    const parts = name.split(".");
    parts.forEach((p, i) => {
      if (!/^\d+$/.test(p)) return;
      const prefix = parts.slice(0, i).join(".");
      const byIndex = sigs.get(prefix) ?? new Map<string, string[]>();
      sigs.set(prefix, byIndex);
      const list = byIndex.get(p) ?? [];
      byIndex.set(p, list);
      list.push(`${parts.slice(i + 1).join(".")}|${shape.join(",")}|${dtype}`);
    });
  }
  const out = new Set<string>();
  for (const [prefix, byIndex] of sigs) {
    if (byIndex.size < 2) continue;
    const [first, ...rest] = [...byIndex.values()].map((l) => l.slice().sort().join(";"));
    if (rest.every((r) => r === first)) out.add(prefix);
  }
  return out;
}

/**
 * Summarises parameters: tensors that differ only in the index of repeated
 * blocks (see {@link foldablePrefixes}) fold into one row, unless `fold` is
 * false.
 */
export function paramSummary(tree: ParamsInput, opts: { fold?: boolean; depth?: number } = {}): ParamSummary {
  const entries = entriesOf(tree);
  const foldable = opts.fold === false ? new Set<string>() : foldablePrefixes(entries);
  const groups = new Map<string, { parts: string[]; idx: number[][]; shape: number[]; dtype: string; n: number }>();
  for (const [name, shape, dtype] of entries) {
    const parts = name.split(".");
    const folded = parts.map((p, i) => /^\d+$/.test(p) && foldable.has(parts.slice(0, i).join(".")));
    const pattern = parts.map((p, i) => (folded[i] ? "#" : p)).join(".");
    const key = `${pattern}|${shape.join(",")}|${dtype}`;
    let g = groups.get(key);
    if (!g) {
      g = { parts, idx: parts.map(() => []), shape, dtype, n: 0 };
      groups.set(key, g);
    }
    parts.forEach((p, i) => folded[i] && g!.idx[i].push(Number(p)));
    g.n++;
  }
  let rows: ParamRow[] = [...groups.values()].map((g) => {
    const shown = g.parts.map((p, i) => (g.idx[i].length ? fmtIndices(g.idx[i]) : p));
    const per = g.shape.reduce((a, b) => a * b, 1);
    const name = opts.depth && shown.length > opts.depth ? shown.slice(0, opts.depth).join(".") : shown.join(".");
    const module = !!opts.depth && shown.length > opts.depth;
    return { name, shape: module ? [] : g.shape, dtype: g.dtype, tensors: g.n, count: per * g.n };
  });
  if (opts.depth !== undefined) {
    if (!Number.isInteger(opts.depth) || opts.depth < 1) {
      throw new DifflabError(`showParams: depth must be a positive integer, got ${opts.depth}`);
    }
    // One row per module prefix, in first-seen order.
    const byName = new Map<string, ParamRow>();
    for (const r of rows) {
      const m = byName.get(r.name);
      if (!m) byName.set(r.name, { ...r });
      else {
        m.tensors += r.tensors;
        m.count += r.count;
        m.shape = [];
        if (m.dtype !== r.dtype) m.dtype = "mixed";
      }
    }
    rows = [...byName.values()];
  }
  const total = rows.reduce((a, r) => a + r.count, 0);
  return {
    rows,
    total,
    tensors: entries.length,
    bytes: rows.reduce((a, r) => a + r.count * (BYTES[r.dtype] ?? 4), 0),
  };
}

/** Options of {@link showParams}. */
export interface ShowParamsOptions {
  /** Fold repeated blocks into one row (default true). */
  fold?: boolean;
  /** Summarise by module: one row per name prefix of this many path segments. */
  depth?: number;
  /** Rows shown before "… N more rows" (default 60); totals always cover everything. */
  maxRows?: number;
  /** Caption (e.g. the model name). */
  title?: string;
}

/**
 * An HTML table of a parameter tree (or a `paramShapes` record, which needs
 * no allocation): name, shape, dtype, count and share of the total, with
 * the total in the last row.
 */
export function showParams(tree: ParamsInput, opts: ShowParamsOptions = {}): Displayable {
  const s = paramSummary(tree, { fold: opts.fold, depth: opts.depth });
  const maxRows = opts.maxRows ?? 60;
  const shown = s.rows.slice(0, maxRows);
  const bar = (c: number) => {
    const pct = s.total ? (100 * c) / s.total : 0;
    return `<div style="display:flex;align-items:center;gap:4px"><div style="background:#4c78a8;height:8px;width:${
      Math.max(1, Math.round(pct * 0.8))
    }px"></div><span>${pct < 0.1 ? "<0.1" : pct.toFixed(1)}%</span></div>`;
  };
  const html = [
    `<table class="difflab-params">`,
    opts.title
      ? `<caption style="caption-side:top;text-align:left;font-weight:bold">${escapeHtml(opts.title)}</caption>`
      : "",
    `<thead><tr><th style="text-align:left">parameter</th><th style="text-align:left">shape</th><th>dtype</th>` +
    `<th style="text-align:right">tensors</th><th style="text-align:right">count</th><th style="text-align:left">share</th></tr></thead>`,
    `<tbody>`,
    ...shown.map((r) =>
      `<tr><td style="text-align:left"><code>${escapeHtml(r.name)}</code></td><td style="text-align:left">${
        r.shape.length || !opts.depth ? fmtShape(r.shape) : "(module)"
      }</td><td>${r.dtype}</td><td style="text-align:right">${r.tensors}</td>` +
      `<td style="text-align:right">${fmtInt(r.count)}</td><td>${bar(r.count)}</td></tr>`
    ),
    s.rows.length > shown.length
      ? `<tr><td colspan="6" style="text-align:left">… ${s.rows.length - shown.length} more rows</td></tr>`
      : "",
    `<tr style="font-weight:bold;border-top:2px solid #888"><td style="text-align:left">total</td><td style="text-align:left">${s.tensors} tensors</td><td></td><td></td>` +
    `<td style="text-align:right">${fmtInt(s.total)}</td><td>${fmtCount(s.total)} · ${
      (s.bytes / 2 ** 20).toFixed(1)
    } MiB</td></tr>`,
    `</tbody></table>`,
  ].join("\n");
  const plain = [
    ...(opts.title ? [opts.title] : []),
    plainTable(
      shown.map((r) => ({
        parameter: r.name,
        shape: r.shape.length || !opts.depth ? fmtShape(r.shape) : "(module)",
        tensors: r.tensors,
        count: r.count,
      })),
      ["parameter", "shape", "tensors", "count"],
    ),
    `total: ${fmtInt(s.total)} parameters in ${s.tensors} tensors`,
  ].join("\n");
  return displayable({ "text/html": html, "text/plain": plain });
}
