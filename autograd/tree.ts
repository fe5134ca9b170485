/**
 * @file Pytrees: nested plain objects and arrays whose Tensor leaves are
 * what transformations act on. Non-Tensor leaves (numbers, strings, configs)
 * are static and carried through unchanged.
 */
import { Tensor } from "../tensor/tensor.ts";

/** Collects the Tensor leaves of a tree in a stable (insertion) order. */
export function leaves(tree: unknown): Tensor[] {
  const out: Tensor[] = [];
  const walk = (t: unknown) => {
    if (t instanceof Tensor) out.push(t);
    else if (Array.isArray(t)) t.forEach(walk);
    else if (isRecord(t)) { for (const k of Object.keys(t)) walk(t[k]); }
  };
  walk(tree);
  return out;
}

/** Rebuilds `tree` with each Tensor leaf replaced by `f(leaf, index)`. */
export function mapLeaves(tree: unknown, f: (t: Tensor, i: number) => unknown): unknown {
  let i = 0;
  const walk = (t: unknown): unknown => {
    if (t instanceof Tensor) return f(t, i++);
    if (Array.isArray(t)) return t.map(walk);
    if (isRecord(t)) {
      const o: Record<string, unknown> = {};
      for (const k of Object.keys(t)) o[k] = walk(t[k]);
      return o;
    }
    return t;
  };
  return walk(tree);
}

/** Replaces the Tensor leaves of `tree`, in order, by `values`. */
export function unflatten(tree: unknown, values: readonly unknown[]): unknown {
  return mapLeaves(tree, (_, i) => values[i]);
}

/** Plain object (not a Tensor, array, typed array or class instance like Map). */
export function isRecord(t: unknown): t is Record<string, unknown> {
  if (t === null || typeof t !== "object" || t instanceof Tensor || Array.isArray(t)) return false;
  const proto = Object.getPrototypeOf(t);
  return proto === Object.prototype || proto === null;
}

/** Maps a function over the leaves of several trees of identical structure. */
export function treeMap<T>(f: (...ts: Tensor[]) => T, tree: unknown, ...rest: unknown[]): unknown {
  const others = rest.map(leaves);
  return mapLeaves(tree, (t, i) => f(t, ...others.map((o) => o[i])));
}
