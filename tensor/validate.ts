/**
 * @file Cheap argument validation for the public API. Every check is O(rank)
 * or O(number of arguments) and never touches tensor data, so the hot paths
 * stay fast; every failure is a {@link DifflabError} whose message names the
 * op, the argument and the offending value, e.g.
 * `sum: argument axis must be an integer in [-2, 2) for a tensor of rank 2, got "a"`.
 *
 * Options objects: `undefined` means "all defaults"; `null`, arrays, class
 * instances and unknown keys are rejected (a misspelt option would otherwise
 * be silently ignored), and so is `null` for any individual option.
 */
import { checkDType, type DType, isFloat } from "./dtype.ts";
import { describe, DifflabError, DTypeError } from "./errors.ts";
import { Tensor } from "./tensor.ts";

export { checkShape, checkSize, MAX_SIZE } from "./shape.ts";

/** Throws unless `x` is a Tensor. */
export function checkTensor(op: string, arg: string, x: unknown): Tensor {
  if (!(x instanceof Tensor)) throw new DifflabError(`${op}: argument ${arg} must be a Tensor, got ${describe(x)}`);
  return x;
}

/** Throws unless `x` is a floating-point Tensor. */
export function checkFloatTensor(op: string, arg: string, x: unknown): Tensor {
  checkTensor(op, arg, x);
  if (!isFloat((x as Tensor).dtype)) {
    throw new DTypeError(`${op}: argument ${arg} must be a floating-point tensor, got ${(x as Tensor).dtype}`);
  }
  return x as Tensor;
}

/** Throws unless `x` is a Tensor of a numeric (non-bool) dtype. */
export function checkNumericTensor(op: string, arg: string, x: unknown): Tensor {
  checkTensor(op, arg, x);
  if ((x as Tensor).dtype === "bool") throw new DTypeError(`${op}: argument ${arg} must not be bool; cast it first`);
  return x as Tensor;
}

/** Throws unless `v` is a number (finite when `finite`). */
export function checkNumber(op: string, name: string, v: unknown, finite = false): number {
  if (typeof v !== "number" || (finite && !Number.isFinite(v))) {
    throw new DifflabError(`${op}: argument ${name} must be a ${finite ? "finite " : ""}number, got ${describe(v)}`);
  }
  return v;
}

/** Throws unless `v` is a safe integer in `[min, max]`. */
export function checkInt(
  op: string,
  name: string,
  v: unknown,
  min = -Number.MAX_SAFE_INTEGER,
  max = Number.MAX_SAFE_INTEGER,
): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min || v > max) {
    const range = min === -Number.MAX_SAFE_INTEGER
      ? ""
      : max === Number.MAX_SAFE_INTEGER
      ? ` >= ${min}`
      : ` in [${min}, ${max}]`;
    throw new DifflabError(`${op}: argument ${name} must be an integer${range}, got ${describe(v)}`);
  }
  return v;
}

/** Throws unless `v` is a boolean or undefined (which gives `dflt`). */
export function checkFlag(op: string, name: string, v: unknown, dflt = false): boolean {
  if (v === undefined) return dflt;
  if (typeof v !== "boolean") throw new DifflabError(`${op}: argument ${name} must be a boolean, got ${describe(v)}`);
  return v;
}

/** Validates a dtype argument, `undefined` giving `dflt`. */
export function checkDTypeArg(op: string, v: unknown, dflt: DType = "f32"): DType {
  return v === undefined ? dflt : checkDType(op, v);
}

/**
 * Validates an options object: `undefined` (no options) or a plain object
 * whose keys are all in `keys` and whose values are not `null`.
 */
export function checkOptions<T extends object>(op: string, opts: unknown, keys: readonly (keyof T & string)[]): T {
  if (opts === undefined) return {} as T;
  const proto = opts !== null && typeof opts === "object" ? Object.getPrototypeOf(opts) : undefined;
  if (proto !== Object.prototype && proto !== null) {
    throw new DifflabError(`${op}: argument opts must be an options object or undefined, got ${describe(opts)}`);
  }
  for (const k of Object.keys(opts as object)) {
    if (!(keys as readonly string[]).includes(k)) {
      throw new DifflabError(
        `${op}: unknown option ${JSON.stringify(k)} (expected ${keys.length ? keys.join(", ") : "no options"})`,
      );
    }
    if ((opts as Record<string, unknown>)[k] === null) {
      throw new DifflabError(`${op}: option ${k} must not be null (omit it for the default)`);
    }
  }
  return opts as T;
}

/** Throws unless `f` is a function. */
export function checkFn<F>(op: string, name: string, f: F): F {
  if (typeof f !== "function") throw new DifflabError(`${op}: argument ${name} must be a function, got ${describe(f)}`);
  return f;
}
