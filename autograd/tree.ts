/**
 * @file Pytrees: nested plain objects and arrays whose Tensor leaves are
 * what transformations act on. Non-Tensor leaves (numbers, strings, configs)
 * are static and carried through unchanged.
 */
import { describe, DifflabError } from "../tensor/errors.ts";
import { Tensor } from "../tensor/tensor.ts";
import { checkFn } from "../tensor/validate.ts";

/** Collects the Tensor leaves of a tree in a stable (insertion) order. */
export function leaves(tree: unknown): Tensor[] {
  return leavesOf("leaves", tree);
}

/** `leaves` whose errors (a cyclic tree) name the calling op. */
export function leavesOf(op: string, tree: unknown): Tensor[] {
  const out: Tensor[] = [];
  const open = new Set<unknown>();
  const walk = (t: unknown) => {
    if (t instanceof Tensor) out.push(t);
    else if (Array.isArray(t) || isRecord(t)) {
      enter(op, open, t);
      if (Array.isArray(t)) t.forEach(walk);
      else for (const k of Object.keys(t)) walk(t[k]);
      open.delete(t);
    }
  };
  walk(tree);
  return out;
}

// Containers on the current path: meeting one again means the tree contains itself (shared subtrees are fine).
function enter(op: string, open: Set<unknown>, t: unknown) {
  if (open.has(t)) throw new DifflabError(`${op}: the tree contains a cycle (a container that contains itself)`);
  open.add(t);
}

/** Rebuilds `tree` with each Tensor leaf replaced by `f(leaf, index)`. */
export function mapLeaves(tree: unknown, f: (t: Tensor, i: number) => unknown): unknown {
  return mapLeavesOf("mapLeaves", tree, f);
}

/** `mapLeaves` whose errors (a cyclic tree, `f` not a function) name the calling op. */
export function mapLeavesOf(op: string, tree: unknown, f: (t: Tensor, i: number) => unknown): unknown {
  checkFn(op, "f", f);
  let i = 0;
  const open = new Set<unknown>();
  const walk = (t: unknown): unknown => {
    if (t instanceof Tensor) return f(t, i++);
    if (Array.isArray(t) || isRecord(t)) {
      enter(op, open, t);
      let r: unknown;
      if (Array.isArray(t)) r = t.map(walk);
      else {
        const o: Record<string, unknown> = {};
        for (const k of Object.keys(t)) o[k] = walk(t[k]);
        r = o;
      }
      open.delete(t);
      return r;
    }
    return t;
  };
  return walk(tree);
}

/** Replaces the Tensor leaves of `tree`, in order, by `values` (one per leaf). */
export function unflatten(tree: unknown, values: readonly unknown[]): unknown {
  if (!Array.isArray(values)) {
    throw new DifflabError(
      `unflatten: argument values must be an array with one value per leaf, got ${describe(values)}`,
    );
  }
  const n = leavesOf("unflatten", tree).length;
  if (values.length !== n) {
    throw new DifflabError(`unflatten: tree has ${n} tensor leaves but ${values.length} values were given`);
  }
  return mapLeavesOf("unflatten", tree, (_, i) => values[i]);
}

/** Plain object (not a Tensor, array, typed array or class instance like Map). */
export function isRecord(t: unknown): t is Record<string, unknown> {
  if (t === null || typeof t !== "object" || t instanceof Tensor || Array.isArray(t)) return false;
  const proto = Object.getPrototypeOf(t);
  return proto === Object.prototype || proto === null;
}

/** Maps a function over the leaves of several trees of identical structure. */
export function treeMap<T>(f: (...ts: Tensor[]) => T, tree: unknown, ...rest: unknown[]): unknown {
  checkFn("treeMap", "f", f);
  const others = rest.map((t) => leavesOf("treeMap", t));
  if (others.length) {
    const n = leavesOf("treeMap", tree).length;
    others.forEach((o, j) => {
      if (o.length !== n) {
        throw new DifflabError(`treeMap: tree ${j + 1} has ${o.length} tensor leaves, the first tree has ${n}`);
      }
    });
  }
  return mapLeavesOf("treeMap", tree, (t, i) => f(t, ...others.map((o) => o[i])));
}
