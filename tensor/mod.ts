/**
 * @file The tensor layer: values, primitives, backends, PRNG.
 */
import "./backends.ts";
export * from "./ops.ts";
export { type DType, DTYPES, isFloat, type TypedArray } from "./dtype.ts";
export { DifflabError, DTypeError, ShapeError } from "./errors.ts";
export {
  alias,
  dispose,
  fromHost,
  getBackend,
  keep,
  liveBuffers,
  type NestedArray,
  setBackend,
  Tensor,
  tensor,
  type TensorOptions,
  tidy,
} from "./tensor.ts";
export type { BackendName } from "./backend.ts";
export { type Prim, PRIMS } from "./prims.ts";
export * as random from "./random.ts";
export { erfinv, Key, randomKey } from "./random.ts";
