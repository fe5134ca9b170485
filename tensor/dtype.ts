/**
 * @file Data types and their host storage. `f32` is the default; `f64` is
 * the oracle precision of the cpu backend; `f16` needs `Float16Array` on the
 * host and `shader-f16` on WebGPU.
 */
import { describe, DifflabError, DTypeError } from "./errors.ts";

/** Every element type a Tensor can hold. */
export type DType = "f32" | "f64" | "f16" | "i32" | "u32" | "bool";

/** All dtypes, in a stable order. */
export const DTYPES: readonly DType[] = ["f32", "f64", "f16", "i32", "u32", "bool"];

/** Host typed array for any dtype. */
export type TypedArray =
  | Float32Array<ArrayBuffer>
  | Float64Array<ArrayBuffer>
  | Int32Array<ArrayBuffer>
  | Uint32Array<ArrayBuffer>
  | Uint8Array<ArrayBuffer>
  | Float16Array<ArrayBuffer>;

/** True for the floating-point dtypes (the ones that carry gradients). */
export function isFloat(d: DType): boolean {
  return d === "f32" || d === "f64" || d === "f16";
}

/** True for the integer dtypes (`i32`, `u32`). */
export function isInt(d: DType): boolean {
  return d === "i32" || d === "u32";
}

/** Bytes per element. */
export function byteSize(d: DType): number {
  switch (d) {
    case "f64":
      return 8;
    case "f16":
      return 2;
    case "bool":
      return 1;
    default:
      return 4;
  }
}

/** Allocates a zeroed host array of `n` elements of dtype `d`; running out of memory is a DifflabError. */
export function allocHost(d: DType, n: number): TypedArray {
  try {
    return alloc(d, n);
  } catch (e) {
    if (!(e instanceof RangeError)) throw e;
    throw new DifflabError(
      `out of memory: cannot allocate ${n} ${d} elements (${n * byteSize(d)} bytes): ${e.message}`,
    );
  }
}

function alloc(d: DType, n: number): TypedArray {
  switch (d) {
    case "f32":
      return new Float32Array(n);
    case "f64":
      return new Float64Array(n);
    case "f16":
      if (typeof Float16Array === "undefined") {
        throw new DTypeError("f16: this runtime has no Float16Array");
      }
      return new Float16Array(n);
    case "i32":
      return new Int32Array(n);
    case "u32":
      return new Uint32Array(n);
    case "bool":
      return new Uint8Array(n);
  }
}

/** Validates a user-supplied dtype string. */
export function checkDType(op: string, d: unknown): DType {
  if (typeof d !== "string" || !(DTYPES as readonly string[]).includes(d)) {
    throw new DTypeError(`${op}: unknown dtype ${describe(d)} (expected one of ${DTYPES.join(", ")})`);
  }
  return d as DType;
}
