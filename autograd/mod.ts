/**
 * @file Reverse-mode autodiff over parameter trees.
 */
export { checkpoint, customVjp, grad, type GradOptions, jvp, stopGradient, valueAndGrad, vjp } from "./autograd.ts";
export { leaves, mapLeaves, treeMap, unflatten } from "./tree.ts";
