/**
 * @file The tensor layer: values, primitives, backends, PRNG.
 */
import "./backends.ts";
export * from "./ops.ts";
export { DTYPES, type DType, isFloat, type TypedArray } from "./dtype.ts";
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
export { PRIMS, type Prim } from "./prims.ts";
export * as random from "./random.ts";
export { erfinv, Key, randomKey } from "./random.ts";
