/**
 * @file What every model family exports, and the helpers they share. A model
 * is a set of plain functions over a parameter record whose nesting mirrors
 * the official PyTorch module tree, so `flattenTree(params)` yields exactly
 * the official `state_dict` names and checkpoints map 1:1.
 */
import { flattenTree, unflattenTree } from "../nn/tree.ts";
import { DifflabError, fmtShape, ShapeError } from "../tensor/errors.ts";
import type { Key } from "../tensor/random.ts";
import { Tensor } from "../tensor/tensor.ts";

/** Options every `apply` understands. */
export interface ApplyOptions {
  /** Training mode: label dropout (needs `key`), routers' Gumbel noise, etc. Default false (eval). */
  train?: boolean;
  /** PRNG key for stochastic parts in training mode. */
  key?: Key;
}

/** The contract of one model family (DiT, DyDiT, U-DiT, DiCo, DiMR). */
export interface ModelDef<C = unknown, P = unknown> {
  /** Family name as the registry shows it, e.g. "DiT". */
  readonly family: string;
  /** Every named configuration the paper/repo defines (plus this project's small ones). */
  readonly configs: Readonly<Record<string, C>>;
  /** Fresh parameters, initialised as the official code does. */
  init(key: Key, config: C): P;
  /** Forward pass on NCHW input; `t` diffusion step (or log-SNR for DiMR), `y` labels (i32). */
  apply(params: P, x: Tensor, t: Tensor, y: Tensor, config: C, opts?: ApplyOptions): Tensor | Tensor[];
  /** Multiply-accumulates of one forward pass at batch 1 (the papers' "GFLOPs" × 1e9). */
  flops(config: C): number;
  /** Official parameter names and shapes, without allocating anything. */
  paramShapes(config: C): Record<string, number[]>;
  /** Builds the config from the official constructor's kwargs (a golden file's metadata). */
  configFromOfficial(kwargs: Record<string, unknown>): C;
  /** Official names of frozen buffers stored as parameters (e.g. DiT's `pos_embed`): never updated in training. */
  readonly frozen?: readonly string[];
}

/** Total parameter count of a config, from its shapes. */
export function paramCount<C>(def: ModelDef<C>, config: C): number {
  return Object.values(def.paramShapes(config)).reduce((a, s) => a + s.reduce((x, y) => x * y, 1), 0);
}

/** Official state_dict of a parameter record. */
export function toStateDict(params: unknown): Record<string, Tensor> {
  return flattenTree(params);
}

/**
 * Builds a parameter record from an official state_dict, checking that the
 * names and shapes are exactly those of the config; errors name the key.
 */
export function fromStateDict<C, P>(def: ModelDef<C, P>, sd: Record<string, Tensor>, config: C): P {
  const want = def.paramShapes(config);
  const missing = Object.keys(want).filter((k) => !(k in sd));
  const extra = Object.keys(sd).filter((k) => !(k in want));
  if (missing.length || extra.length) {
    throw new DifflabError(
      `${def.family}: state_dict does not match the config` +
        (missing.length ? `; missing ${missing.slice(0, 5).join(", ")}${missing.length > 5 ? ", …" : ""}` : "") +
        (extra.length ? `; unexpected ${extra.slice(0, 5).join(", ")}${extra.length > 5 ? ", …" : ""}` : ""),
    );
  }
  for (const [k, s] of Object.entries(want)) {
    const t = sd[k];
    if (!(t instanceof Tensor) || t.shape.join() !== s.join()) {
      throw new ShapeError(
        `${def.family}: state_dict entry "${k}" has shape ${
          t instanceof Tensor ? fmtShape(t.shape) : typeof t
        }, expected ${fmtShape(s)}`,
      );
    }
  }
  return unflattenTree(sd) as P;
}

/** Reads a typed field from official kwargs with a default. */
export function kw<T>(kwargs: Record<string, unknown>, name: string, dflt: T): T {
  const v = kwargs[name];
  return (v === undefined || v === null ? dflt : v) as T;
}
