/**
 * @file The tensor layer: values, primitives, backends, PRNG.
 */
import "./backends.ts";
export * from "./ops.ts";
export { type DType, DTYPES, isFloat, type TypedArray } from "./dtype.ts";
export { DifflabError, DTypeError, ShapeError } from "./errors.ts";
export {
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
  type Tree,
} from "./tensor.ts";
export type { Backend, BackendName, Handle, MemoryLimits } from "./backend.ts";
export { type Aval, type CmpOp, type ConvParams, type Empty, type ParamsOf, type Prim, PRIMS } from "./prims.ts";
/** Functional PRNG: `split`, `normal`, `uniform`, `randint`, `bernoulli`, ... over immutable keys. */
export * as random from "./random.ts";
export { erfinv, Key, randomKey } from "./random.ts";
