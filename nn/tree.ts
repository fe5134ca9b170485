/**
 * @file Named views of parameter trees. A parameter record whose nesting
 * mirrors a PyTorch module (`blocks: [{ attn: { qkv: { weight } } }]`)
 * flattens to exactly the official `state_dict` names
 * (`blocks.0.attn.qkv.weight`), which is what checkpoint I/O and
 * optimiser-state saving rely on.
 */
import { isRecord } from "../autograd/tree.ts";
import { DifflabError } from "../tensor/errors.ts";
import { Tensor } from "../tensor/tensor.ts";

/** A static (non-tensor) leaf that may live in optimiser state. */
export type StaticLeaf = number | string | boolean | null;

/** Every Tensor leaf of `tree` with its dotted path, in insertion order. */
export function namedLeaves(tree: unknown, prefix = ""): [string, Tensor][] {
  const out: [string, Tensor][] = [];
  walk(tree, prefix, (p, v) => {
    if (v instanceof Tensor) out.push([p, v]);
  });
  return out;
}

function join(prefix: string, k: string | number): string {
  return prefix === "" ? String(k) : `${prefix}.${k}`;
}

function walk(t: unknown, path: string, f: (path: string, leaf: unknown) => void): void {
  if (t instanceof Tensor) f(path, t);
  else if (Array.isArray(t)) t.forEach((v, i) => walk(v, join(path, i), f));
  else if (isRecord(t)) { for (const k of Object.keys(t)) walk(t[k], join(path, k), f); }
  else f(path, t);
}

/** Flattens the Tensor leaves of a tree into `{ "a.b.0.c": Tensor }` (official state_dict style names). */
export function flattenTree(tree: unknown, prefix = ""): Record<string, Tensor> {
  const out: Record<string, Tensor> = {};
  for (const [k, v] of namedLeaves(tree, prefix)) {
    if (k in out) throw new DifflabError(`flattenTree: two leaves share the name "${k}"`);
    out[k] = v;
  }
  return out;
}

/**
 * Rebuilds a nested tree from dotted names. A level whose keys are exactly
 * `0..n-1` becomes an array, any other level a plain record.
 */
export function unflattenTree(flat: Record<string, unknown>): unknown {
  const root: Record<string, unknown> = {};
  for (const [name, v] of Object.entries(flat)) {
    const parts = name.split(".");
    if (parts.some((p) => p === "")) throw new DifflabError(`unflattenTree: malformed name "${name}"`);
    let node = root;
    parts.forEach((p, i) => {
      if (i === parts.length - 1) {
        if (p in node) throw new DifflabError(`unflattenTree: "${name}" collides with another entry`);
        node[p] = v;
      } else {
        const next = node[p];
        if (next === undefined) node = node[p] = {} as Record<string, unknown>;
        else if (isRecord(next)) node = next;
        else {throw new DifflabError(
            `unflattenTree: "${name}" descends into a leaf at "${parts.slice(0, i + 1).join(".")}"`,
          );}
      }
    });
  }
  const arrays = (t: unknown): unknown => {
    if (!isRecord(t)) return t;
    const keys = Object.keys(t);
    const idx = keys.map((k) => (/^(0|[1-9][0-9]*)$/.test(k) ? Number(k) : -1));
    if (keys.length > 0 && idx.every((i) => i >= 0) && idx.slice().sort((a, b) => a - b).every((v, i) => v === i)) {
      return Array.from({ length: keys.length }, (_, i) => arrays(t[String(i)]));
    }
    const o: Record<string, unknown> = {};
    for (const k of keys) o[k] = arrays(t[k]);
    return o;
  };
  return arrays(root);
}

/**
 * Splits a state tree (tensors plus numbers/strings/booleans/nulls) into the
 * shape `io.writeSafetensors` stores: named tensors, and the static leaves as
 * one JSON metadata entry under `key`.
 */
export function stateToRecord(
  state: unknown,
  key = "difflab.state",
): { tensors: Record<string, Tensor>; metadata: Record<string, string> } {
  const tensors: Record<string, Tensor> = {};
  const statics: Record<string, StaticLeaf> = {};
  walk(state, "", (p, v) => {
    if (v instanceof Tensor) tensors[p] = v;
    else if (v === null || typeof v === "number" || typeof v === "string" || typeof v === "boolean") statics[p] = v;
    else if (v === undefined) return;
    else throw new DifflabError(`stateToRecord: leaf "${p}" is a ${typeof v}, which cannot be saved`);
  });
  return { tensors, metadata: { [key]: JSON.stringify(statics) } };
}

/** Inverse of {@link stateToRecord}: rebuilds the state tree from named tensors and metadata. */
export function stateFromRecord(
  rec: { tensors: Record<string, Tensor>; metadata?: Record<string, string> },
  key = "difflab.state",
): unknown {
  const raw = rec.metadata?.[key];
  let statics: Record<string, StaticLeaf> = {};
  if (raw !== undefined) {
    try {
      statics = JSON.parse(raw);
    } catch (e) {
      throw new DifflabError(`stateFromRecord: metadata "${key}" is not valid JSON (${(e as Error).message})`);
    }
  }
  return unflattenTree({ ...statics, ...rec.tensors });
}

/**
 * Rebuilds a tree shaped like `template` whose Tensor leaves are taken from
 * `flat` by dotted name (exact structure, no array guessing). Missing names
 * throw, naming the first few.
 */
export function unflattenLike<T>(template: T, flat: Record<string, Tensor>, prefix = ""): T {
  const missing: string[] = [];
  const build = (t: unknown, path: string): unknown => {
    if (t instanceof Tensor) {
      const v = flat[path];
      if (!(v instanceof Tensor)) missing.push(path);
      return v;
    }
    if (Array.isArray(t)) return t.map((v, i) => build(v, join(path, i)));
    if (isRecord(t)) {
      const o: Record<string, unknown> = {};
      for (const k of Object.keys(t)) o[k] = build(t[k], join(path, k));
      return o;
    }
    return t;
  };
  const out = build(template, prefix) as T;
  if (missing.length) {
    throw new DifflabError(
      `unflattenLike: ${missing.length} tensor(s) missing, e.g. ${missing.slice(0, 5).map((m) => `"${m}"`).join(", ")}`,
    );
  }
  return out;
}
