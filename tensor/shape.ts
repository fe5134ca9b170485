/**
 * @file Shape arithmetic shared by every backend: sizes, strides, NumPy
 * broadcasting and axis normalisation. Errors name the op and the shapes.
 */
import { describe, fmtShape, ShapeError } from "./errors.ts";

/** A tensor shape; `[]` is a scalar. */
export type Shape = readonly number[];

/** Number of elements of a shape. */
export function size(shape: Shape): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Row-major (C-order) strides of a shape. */
export function stridesOf(shape: Shape): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

/** True when two shapes are equal. */
export function shapeEq(a: Shape, b: Shape): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** Most elements one tensor may have (32-bit indexing); larger shapes are rejected up front. */
export const MAX_SIZE = 2 ** 31 - 1;

/** Throws naming the op and the shape when `shape` has more than {@link MAX_SIZE} elements. */
export function checkSize(op: string, shape: Shape, arg = "shape"): void {
  let n = 1;
  for (const d of shape) n *= d;
  if (n > MAX_SIZE || shape.some((d) => d > MAX_SIZE)) {
    throw new ShapeError(
      `${op}: ${arg} ${fmtShape(shape)} has ${n} elements, more than the ${MAX_SIZE} a tensor can hold`,
    );
  }
}

/** Validates that a user shape is a list of non-negative integers of a representable total size. */
export function checkShape(op: string, shape: unknown, arg = "shape"): number[] {
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new ShapeError(`${op}: argument ${arg} must be an array of non-negative integers, got ${describe(shape)}`);
  }
  checkSize(op, shape, arg);
  return shape.slice();
}

/** NumPy broadcasting of shapes; throws naming the op and every shape. */
export function broadcastShapes(op: string, ...shapes: Shape[]): number[] {
  const rank = Math.max(...shapes.map((s) => s.length));
  const out = new Array<number>(rank).fill(1);
  for (let i = 0; i < rank; i++) {
    for (const s of shapes) {
      const d = s[s.length - rank + i] ?? 1;
      if (d === 1) continue;
      if (out[i] === 1) out[i] = d;
      else if (out[i] !== d) {
        throw new ShapeError(
          `${op}: shapes ${shapes.map(fmtShape).join(" and ")} cannot be broadcast together ` +
            `(axis ${i - rank}: ${out[i]} vs ${d})`,
        );
      }
    }
  }
  return out;
}

/** Normalises a possibly-negative axis against a rank; names the op, the argument and the rank on error. */
export function normAxis(op: string, axis: unknown, rank: number, arg = "axis"): number {
  if (typeof axis !== "number" || !Number.isInteger(axis)) {
    throw new ShapeError(
      `${op}: argument ${arg} must be an integer in [${-rank}, ${rank}) for a tensor of rank ${rank}, got ${
        describe(axis)
      }`,
    );
  }
  if (axis < -rank || axis >= rank) {
    const what = arg === "axis" ? `axis ${axis}` : `${arg} = ${axis}`;
    throw new ShapeError(`${op}: ${what} is out of range for a tensor of rank ${rank}`);
  }
  return axis < 0 ? axis + rank : axis;
}

/** Normalises an `axis` option (number, list or undefined = all) into sorted unique axes. */
export function normAxes(op: string, axis: unknown, rank: number, arg = "axis"): number[] {
  if (axis === undefined) return [...Array(rank).keys()];
  if (typeof axis !== "number" && !Array.isArray(axis)) {
    throw new ShapeError(
      `${op}: argument ${arg} must be an integer or an array of integers in [${-rank}, ${rank}) ` +
        `for a tensor of rank ${rank}, got ${describe(axis)}`,
    );
  }
  const list: unknown[] = typeof axis === "number" ? [axis] : axis;
  const out = list.map((a, i) => normAxis(op, a, rank, typeof axis === "number" ? arg : `${arg}[${i}]`));
  if (new Set(out).size !== out.length) {
    throw new ShapeError(`${op}: repeated axis in ${describe(list)}`);
  }
  return out.sort((a, b) => a - b);
}
