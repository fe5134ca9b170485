/**
 * @file Reverse-mode autodiff over pytrees. A trace records every primitive
 * whose operands depend on the trace's inputs (a tape per transformation,
 * never visible to users). Backward passes run with the public ops, so any
 * enclosing trace records them too, which is what makes `grad(grad(f))`,
 * `jvp` (as the VJP of a VJP) and `checkpoint` compose.
 */
import { isFloat } from "../tensor/dtype.ts";
import { describe, DifflabError, DTypeError, fmtShape, ShapeError } from "../tensor/errors.ts";
import { zerosLike } from "../tensor/ops.ts";
import * as ops from "../tensor/ops.ts";
import { shapeEq } from "../tensor/shape.ts";
import { alias, installVjp, type SavesFn, Tensor, tidy, type Tracer, tracers } from "../tensor/tensor.ts";
import { checkFlag, checkFn, checkInt, checkOptions } from "../tensor/validate.ts";
import { savedRules, vjpRules } from "./rules.ts";
import { leavesOf, mapLeavesOf, unflatten } from "./tree.ts";

type Ct = Tensor | null;
interface Node {
  inputs: readonly Tensor[];
  outputs: readonly Tensor[];
  vjp: (cts: Ct[], needs?: readonly boolean[]) => Ct[];
}

class Trace implements Tracer {
  readonly nodes: Node[] = [];
  readonly tracked = new Set<Tensor>();
  #open = true;

  tracks(t: Tensor): boolean {
    return this.tracked.has(t);
  }

  /** Marks `t` as depending on the inputs (identity only: its storage may still be freed). */
  track(t: Tensor) {
    this.tracked.add(t);
  }

  record(
    inputs: readonly Tensor[],
    outputs: readonly Tensor[],
    vjp: (cts: Ct[], needs?: readonly boolean[]) => Ct[],
    saves?: SavesFn,
  ) {
    const tracked = inputs.map((t) => this.tracked.has(t));
    this.nodes.push({ inputs, outputs, vjp });
    for (const o of outputs) if (isFloat(o.dtype)) this.track(o);
    // Only what the rule reads must outlive the model's inner tidy scopes; the rest may go now.
    const s = saves?.(tracked);
    inputs.forEach((t, i) => {
      if (s ? s.ins[i] : true) this.#pin(t);
    });
    if (s) outputs.forEach((t, i) => s.outs[i] && this.#pin(t));
  }
  readonly pinned = new Set<Tensor>();

  #pin(t: Tensor) {
    if (!this.pinned.has(t)) this.pinned.add(t), t._traced++;
  }

  /** Stops recording; tensors are no longer protected from enclosing tidy scopes. */
  close() {
    if (!this.#open) return;
    this.#open = false;
    for (const t of this.pinned) t._traced--;
  }

  /**
   * Runs the backward pass from output cotangents; returns the cotangents of `wrt`.
   * With `release`, forward intermediates (node outputs outside `release.keep`)
   * are disposed as soon as no earlier node needs them, so a one-shot gradient
   * never holds activations and cotangents of the whole graph at once.
   */
  backward(seeds: Map<Tensor, Tensor>, wrt: readonly Tensor[], release?: { keep: Set<Tensor> }): Ct[] {
    // firstUse[t]: the lowest node index that references t; once backward passes it, t is dead.
    const firstUse = new Map<Tensor, number>();
    const produced = new Set<Tensor>();
    if (release) {
      this.nodes.forEach((node, n) => {
        for (const t of node.inputs) if (!firstUse.has(t)) firstUse.set(t, n);
        for (const t of node.outputs) {
          if (!firstUse.has(t)) firstUse.set(t, n);
          produced.add(t);
        }
      });
    }
    const dead = (t: Tensor, n: number) =>
      produced.has(t) && firstUse.get(t) === n && !release!.keep.has(t) && !cts.has(t) && t._traced === 0;
    const cts = new Map<Tensor, Tensor>();
    const holds = new Map<Tensor, number>();
    const protect = new Set<Tensor>(seeds.values());
    const hold = (t: Tensor) => holds.set(t, (holds.get(t) ?? 0) + 1);
    const drop = (t: Tensor) => {
      const n = (holds.get(t) ?? 0) - 1;
      if (n > 0) holds.set(t, n);
      else {
        holds.delete(t);
        if (!protect.has(t) && t._traced === 0) t.dispose();
      }
    };
    const accumulate = (t: Tensor, ct: Tensor) => {
      if (!shapeEq(ct.shape, t.shape)) {
        throw new DifflabError(`autograd: cotangent ${fmtShape(ct.shape)} for a tensor of shape ${fmtShape(t.shape)}`);
      }
      const old = cts.get(t);
      if (old) {
        const s = ops.add(old, ct);
        cts.set(t, s);
        hold(s);
        drop(old);
      } else {
        cts.set(t, ct);
        hold(ct);
      }
    };
    for (const [t, c] of seeds) accumulate(t, c);
    for (let n = this.nodes.length - 1; n >= 0; n--) {
      const node = this.nodes[n];
      const outCts = node.outputs.map((o) => cts.get(o) ?? null);
      if (outCts.every((c) => c === null)) {
        if (release) this.#releaseDead(node, n, dead);
        continue;
      }
      // Cotangents of inputs this trace does not track (data, constants) are never used: skip them.
      // The rule's own temporaries die with its scope (enclosing traces keep what they record).
      const needs = node.inputs.map((t) => this.tracked.has(t));
      const inCts = tidy(() => node.vjp(outCts, needs));
      const fresh = new Set<Tensor>();
      node.inputs.forEach((inp, i) => {
        const c = inCts[i];
        if (c && this.tracked.has(inp)) {
          accumulate(inp, c);
          fresh.add(c);
        }
      });
      // Temporaries a rule made but that no accumulator kept.
      for (const c of inCts) if (c && !fresh.has(c) && !holds.has(c) && !outCts.includes(c)) drop(c);
      node.outputs.forEach((o) => {
        const c = cts.get(o);
        if (c) {
          cts.delete(o);
          drop(c);
        }
      });
      if (release) this.#releaseDead(node, n, dead);
    }
    return wrt.map((t) => cts.get(t) ?? null);
  }

  #releaseDead(node: Node, n: number, dead: (t: Tensor, n: number) => boolean) {
    for (const t of node.inputs) if (dead(t, n)) t.dispose();
    for (const t of node.outputs) if (dead(t, n)) t.dispose();
  }
}

/** Runs `f` with `inputs` traced; returns outputs and the trace (closed). */
function traced<R>(op: string, f: (...a: unknown[]) => R, args: unknown[], argnums: readonly number[]) {
  const trace = new Trace();
  const wrapped = args.map((a, i) =>
    argnums.includes(i)
      ? mapLeavesOf(op, a, (t) => {
        if (!isFloat(t.dtype)) return t;
        const w = alias(t);
        // Enclosing traces must see w as t itself, or grad(grad(f)) loses the link.
        for (const tr of tracers) if (tr.tracks(t)) tr.record([t], [w], (c) => [c[0]]);
        trace.track(w);
        return w;
      })
      : a
  );
  tracers.push(trace);
  let out: R;
  try {
    out = f(...wrapped);
  } finally {
    const i = tracers.lastIndexOf(trace);
    if (i >= 0) tracers.splice(i, 1);
    trace.close();
  }
  return { out, trace, wrapped };
}

function checkCt(op: string, o: Tensor, c: unknown): Tensor {
  if (!(c instanceof Tensor)) throw new DifflabError(`${op}: cotangent must be a Tensor, got ${typeof c}`);
  if (!shapeEq(o.shape, c.shape) || o.dtype !== c.dtype) {
    throw new ShapeError(
      `${op}: cotangent ${c.dtype}${fmtShape(c.shape)} does not match output ${o.dtype}${fmtShape(o.shape)}`,
    );
  }
  return c;
}

function gradsFor(
  op: string,
  trace: Trace,
  wrapped: unknown[],
  argnums: readonly number[],
  seeds: Map<Tensor, Tensor>,
  release?: { keep: Set<Tensor> },
) {
  const wrt = argnums.flatMap((i) => leavesOf(op, wrapped[i]));
  const g = trace.backward(seeds, wrt, release);
  let k = 0;
  return argnums.map((i) =>
    mapLeavesOf(op, wrapped[i], (t) => {
      const c = g[k++];
      if (!isFloat(t.dtype)) return null;
      return c ?? zerosLike(t);
    })
  );
}

/**
 * Reverse-mode VJP: returns `[out, pullback]` where `pullback(ct)` maps a
 * cotangent tree shaped like `out` to one cotangent tree per argument.
 */
export function vjp<A extends unknown[], R>(f: (...a: A) => R, ...primals: A): [R, (ct: R) => unknown[]] {
  checkFn("vjp", "f", f);
  const argnums = primals.map((_, i) => i);
  const { out, trace, wrapped } = traced("vjp", f as (...a: unknown[]) => R, primals, argnums);
  const outLeaves = leavesOf("vjp", out);
  const pull = (ct: R) => {
    const ctLeaves = leavesOf("vjp", ct);
    if (ctLeaves.length !== outLeaves.length) {
      throw new DifflabError(`vjp: cotangent has ${ctLeaves.length} tensors, output has ${outLeaves.length}`);
    }
    const seeds = new Map<Tensor, Tensor>();
    outLeaves.forEach((o, i) => {
      const c = checkCt("vjp", o, ctLeaves[i]);
      if (trace.tracks(o)) seeds.set(o, seeds.has(o) ? ops.add(seeds.get(o)!, c) : c);
    });
    return gradsFor("vjp", trace, wrapped, argnums, seeds);
  };
  return [out, pull];
}

/** Options of `grad`/`valueAndGrad`. */
export interface GradOptions {
  /** Which positional arguments to differentiate (default 0). An array returns an array of gradients. */
  argnums?: number | readonly number[];
  /** `f` returns `[value, aux]`; aux is returned untouched. */
  hasAux?: boolean;
}

function scalarOut(op: string, v: unknown): Tensor {
  if (!(v instanceof Tensor)) throw new DifflabError(`${op}: function must return a scalar Tensor, got ${typeof v}`);
  if (v.size !== 1 || !isFloat(v.dtype)) {
    throw new ShapeError(`${op}: function must return a one-element float Tensor, got ${v.dtype}${fmtShape(v.shape)}`);
  }
  return v;
}

/** Returns `(...args) => [value, grads]` (or `[[value, aux], grads]` with hasAux). */
export function valueAndGrad<A extends unknown[]>(f: (...a: A) => Tensor): (...args: A) => [Tensor, A[0]];
/** With options: `argnums` (number or array) and `hasAux`; results are untyped trees. */
export function valueAndGrad<A extends unknown[]>(
  f: (...a: A) => unknown,
  opts?: GradOptions,
): (...args: A) => [unknown, unknown];
/** Implementation of both overloads. */
export function valueAndGrad<A extends unknown[]>(
  f: (...a: A) => unknown,
  opts: GradOptions = {},
): (...args: A) => [unknown, unknown] {
  return valueAndGradOf("valueAndGrad", f, opts);
}

function valueAndGradOf<A extends unknown[]>(
  op: string,
  f: (...a: A) => unknown,
  opts: GradOptions,
): (...args: A) => [unknown, unknown] {
  checkFn(op, "f", f);
  const o = checkOptions<GradOptions>(op, opts, ["argnums", "hasAux"]);
  const hasAux = checkFlag(op, "hasAux", o.hasAux);
  const multi = Array.isArray(o.argnums);
  const argnums: number[] = multi ? [...(o.argnums as number[])] : [(o.argnums as number | undefined) ?? 0];
  argnums.forEach((i, k) => checkInt(op, multi ? `argnums[${k}]` : "argnums", i, 0));
  // One scope around forward and backward: constants and other tensors f creates that are
  // neither returned nor kept go with it, even when the caller has no tidy of its own.
  return (...args: A) => tidy(() => valueAndGradOnce(op, f, args, argnums, multi, hasAux));
}

function valueAndGradOnce<A extends unknown[]>(
  op: string,
  f: (...a: A) => unknown,
  args: A,
  argnums: number[],
  multi: boolean,
  hasAux: boolean,
): [unknown, unknown] {
  for (const i of argnums) {
    if (i >= args.length) {
      throw new DifflabError(`${op}: argnums ${i} is out of range for ${args.length} argument(s)`);
    }
  }
  const { out, trace, wrapped } = traced(op, f as (...a: unknown[]) => unknown, args, argnums);
  let value: unknown = out, aux: unknown;
  if (hasAux) {
    if (!Array.isArray(out) || out.length !== 2) {
      throw new DifflabError(`${op}: hasAux needs f to return [value, aux]`);
    }
    [value, aux] = out;
  }
  const v = scalarOut(op, value);
  const seeds = new Map<Tensor, Tensor>();
  if (trace.tracks(v)) seeds.set(v, ops.onesLike(v));
  // One-shot: intermediates go as soon as backward is past them; the enclosing tidy (see
  // valueAndGradOf) releases the seed and everything else f made that is not returned.
  const g = gradsFor(op, trace, wrapped, argnums, seeds, { keep: new Set(leavesOf(op, out)) });
  return [hasAux ? [v, aux] : v, multi ? g : g[0]];
}

/** Returns `(...args) => grads` of a scalar-valued function (with hasAux: `[grads, aux]`). */
export function grad<A extends unknown[]>(f: (...a: A) => Tensor): (...args: A) => A[0];
/** With options: `argnums` (number or array) and `hasAux`; results are untyped trees. */
export function grad<A extends unknown[]>(f: (...a: A) => unknown, opts?: GradOptions): (...args: A) => unknown;
/** Implementation of both overloads. */
export function grad<A extends unknown[]>(f: (...a: A) => unknown, opts: GradOptions = {}): (...args: A) => unknown {
  const vg = valueAndGradOf<A>("grad", f, opts);
  const hasAux = opts?.hasAux === true;
  return (...args: A) => {
    const [v, g] = vg(...args);
    // The value is not returned: release it unless it is also a gradient or part of aux.
    const value = (hasAux ? (v as unknown[])[0] : v) as Tensor;
    const keep = new Set(leavesOf("grad", hasAux ? [g, (v as unknown[])[1]] : g));
    if (!keep.has(value) && value._traced === 0) value.dispose();
    if (hasAux) return [g, (v as unknown[])[1]];
    return g;
  };
}

/** Blocks gradients: the result has the same values but no dependence on any trace. */
export function stopGradient<T>(x: T): T {
  return mapLeavesOf("stopGradient", x, (t) => alias(t)) as T;
}

function suspended<R>(f: () => R): R {
  const saved = tracers.splice(0, tracers.length);
  try {
    return f();
  } finally {
    tracers.push(...saved);
  }
}

function recordOpaque(inLeaves: Tensor[], outLeaves: Tensor[], vjp: (cts: Ct[]) => Ct[]) {
  for (const tr of tracers) {
    if (inLeaves.some((t) => tr.tracks(t))) tr.record(inLeaves, outLeaves, vjp);
  }
}

/**
 * A function with a user-defined VJP, like `jax.custom_vjp`:
 * `fwd(...args) -> [out, residuals]` and `bwd(residuals, ct) -> grads` (one
 * tree per argument, `null` for none). Without tracing `f` runs directly.
 */
export function customVjp<A extends unknown[], R, Res>(
  f: (...a: A) => R,
  fwd: (...a: A) => [R, Res],
  bwd: (res: Res, ct: R) => unknown[],
): (...a: A) => R {
  checkFn("customVjp", "f", f);
  checkFn("customVjp", "fwd", fwd);
  checkFn("customVjp", "bwd", bwd);
  return (...args: A) => {
    const inLeaves = leavesOf("customVjp", args);
    if (!tracers.some((tr) => inLeaves.some((t) => tr.tracks(t)))) return f(...args);
    const [out0, res] = suspended(() => fwd(...args));
    const out = mapLeavesOf("customVjp", out0, (t) => alias(t)) as R;
    const outLeaves = leavesOf("customVjp", out);
    recordOpaque(inLeaves, outLeaves, (cts) => {
      const full = cts.map((c, i) => c ?? zerosLike(outLeaves[i]));
      const g = bwd(res, unflatten(out, full) as R);
      if (!Array.isArray(g) || g.length !== args.length) {
        throw new DifflabError(`customVjp: bwd must return one gradient tree per argument (${args.length})`);
      }
      const flat: Ct[] = [];
      args.forEach((a, i) => {
        const n = leavesOf("customVjp", a).length;
        const gl = g[i] === null || g[i] === undefined ? new Array(n).fill(null) : leavesOf("customVjp", g[i]);
        if (gl.length !== n) {
          throw new DifflabError(`customVjp: gradient ${i} has ${gl.length} tensors, argument has ${n}`);
        }
        flat.push(...gl);
      });
      return flat;
    });
    return out;
  };
}

/**
 * Rematerialisation: `checkpoint(f)` computes the same values and gradients
 * as `f` but keeps no intermediates; backward recomputes `f` under a fresh trace.
 */
export function checkpoint<A extends unknown[], R>(f: (...a: A) => R): (...a: A) => R {
  checkFn("checkpoint", "f", f);
  return (...args: A) => {
    const inLeaves = leavesOf("checkpoint", args);
    if (!tracers.some((tr) => inLeaves.some((t) => tr.tracks(t)))) return f(...args);
    const out = mapLeavesOf("checkpoint", suspended(() => f(...args)), (t) => alias(t)) as R;
    const outLeaves = leavesOf("checkpoint", out);
    recordOpaque(inLeaves, outLeaves, (cts) => {
      const [again, pull] = vjp(f, ...args);
      const full = cts.map((c, i) => c ?? zerosLike(outLeaves[i]));
      const g = pull(unflatten(again, full) as R);
      return g.flatMap((t, i) => {
        const n = leavesOf("checkpoint", args[i]).length;
        const gl = leavesOf("checkpoint", t);
        return gl.length === n ? gl : new Array(n).fill(null);
      });
    });
    return out;
  };
}

/**
 * Forward-mode product `J(primals)·tangents`, computed as the VJP of the VJP
 * (exact, since pullbacks are linear). Returns `[out, tangentOut]`.
 */
export function jvp<A extends unknown[], R>(f: (...a: A) => R, primals: A, tangents: unknown[]): [R, R] {
  checkFn("jvp", "f", f);
  if (!Array.isArray(primals)) {
    throw new DifflabError(`jvp: argument primals must be an array of arguments, got ${describe(primals)}`);
  }
  if (!Array.isArray(tangents) || tangents.length !== primals.length) {
    throw new DifflabError(
      `jvp: argument tangents must be an array with one tangent tree per primal (${primals.length}), got ${
        describe(tangents)
      }`,
    );
  }
  primals.forEach((p, i) => {
    // Tangents pair with the floating-point leaves of each primal (integer leaves have no tangent).
    const pl = leavesOf("jvp", p).filter((t) => isFloat(t.dtype)), tl = leavesOf("jvp", tangents[i]);
    if (pl.length !== tl.length) {
      throw new DifflabError(
        `jvp: tangents[${i}] has ${tl.length} tensors, primals[${i}] has ${pl.length} float tensors`,
      );
    }
    pl.forEach((t, k) => {
      const u = tl[k];
      if (!shapeEq(t.shape, u.shape) || t.dtype !== u.dtype) {
        const E = t.dtype !== u.dtype ? DTypeError : ShapeError;
        throw new E(
          `jvp: tangent ${u.dtype}${fmtShape(u.shape)} does not match primal ${t.dtype}${
            fmtShape(t.shape)
          } in argument ${i}`,
        );
      }
    });
  });
  const [out, pull] = vjp(f, ...primals);
  const u = mapLeavesOf("jvp", out, (t) => zerosLike(t)) as R;
  const [, pull2] = vjp((ct: R) => pull(ct), u);
  const [tOut] = pull2(tangents);
  return [out, tOut as R];
}

const ALL: readonly boolean[] = [true, true, true, true];

installVjp(
  (prim, params, inputs, outputs, cts, needs) =>
    (vjpRules[prim] as (
      p: unknown,
      i: readonly Tensor[],
      o: readonly Tensor[],
      c: Ct[],
      n: readonly boolean[],
    ) => Ct[])(
      params,
      inputs,
      outputs,
      cts,
      needs ?? ALL,
    ),
  (prim, _params, tracked) => savedRules[prim](tracked),
);
