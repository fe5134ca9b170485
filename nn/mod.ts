/**
 * @file Functional layers, initialisers, optimisers, EMA, schedules and
 * checkpoint I/O. Layers are `init(key, cfg) -> params` /
 * `apply(params, x, opts?) -> y` pairs over plain records with Tensor leaves;
 * hyper-parameters live in configs/options, never in params.
 *
 * @example
 * ```ts
 * import { nn, randomKey, tensor } from "@difflab/difflab";
 * const p = nn.linear.init(randomKey(0), { inFeatures: 3, outFeatures: 2 });
 * const y = nn.linear.apply(p, tensor([[1, 2, 3]]));
 * ```
 * @module
 */
export * from "./activations.ts";
export * from "./attention.ts";
export * from "./conv.ts";
export * from "./embed.ts";
export * from "./init.ts";
export * from "./linear.ts";
export * from "./norm.ts";
export * from "./optim.ts";
export * from "./spatial.ts";
export * from "./tree.ts";
/** Checkpoint I/O: safetensors read/write (atomic) and PyTorch `.pt` state-dict reading. */
export * as io from "./io.ts";
export * from "./loss_scale.ts";
