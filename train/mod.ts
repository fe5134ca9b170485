/**
 * @file Training as a library: the loop, per-family objectives and
 * samplers, checkpoints and progress reporting.
 * @module
 */
export * from "./loop.ts";
export * from "./objectives.ts";
export * from "./checkpoint.ts";
export { createProgress, type Progress, type ProgressInfo } from "./progress.ts";
