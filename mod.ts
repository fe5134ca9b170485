/**
 * difflab: a pure-functional tensor library with reverse-mode autodiff and
 * the efficient diffusion architectures of 2024-25 built on it.
 *
 * @example
 * ```ts
 * import { grad, sum, mul, tensor } from "@difflab/difflab";
 * const f = (x) => sum(mul(x, x));
 * const g = grad(f)(tensor([1, 2, 3]));
 * console.log(await g.array()); // [2, 4, 6]
 * ```
 * @module
 */
export * from "./tensor/mod.ts";
export * from "./autograd/mod.ts";
export * as nn from "./nn/mod.ts";
export * as io from "./nn/io.ts";
export * as diffusion from "./diffusion/mod.ts";
