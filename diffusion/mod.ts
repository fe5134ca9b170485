/**
 * @file The diffusion layer: DiT's Gaussian diffusion (schedules, respacing, losses, DDPM/DDIM
 * samplers), DiMR's formulation and DPM-Solver, linear-path flow matching, classifier-free
 * guidance, and the reproduction of the diffusion golden files.
 */
export { extract, type ModelFn, numpyLinspace, type Timesteps, torchLinspaceF32, toTimesteps } from "./common.ts";
export * from "./respace.ts";
export * from "./gaussian.ts";
export * from "./dpm_solver.ts";
export * from "./dimr.ts";
export * from "./flow.ts";
export * from "./cfg.ts";
export * from "./golden.ts";
