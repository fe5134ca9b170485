/**
 * @file The one interface every backend implements. A backend owns opaque
 * handles; a handle is a view onto reference-counted storage, so movement
 * primitives can return views without copying and `retain`/`release` decide
 * when storage is freed. `liveBuffers()` is what leak tests read.
 */
import type { TypedArray } from "./dtype.ts";
import type { Aval, ParamsOf, Prim } from "./prims.ts";

/** Names of the backends. */
export type BackendName = "cpu" | "wasm" | "webgpu";

/** Opaque per-backend handle. */
export type Handle = unknown;

/** What a backend must provide. */
export interface Backend {
  /** The backend's name. */
  readonly name: BackendName;
  /** Takes ownership of a host array laid out row-major with `aval.shape`. */
  fromHost(data: TypedArray, aval: Aval): Handle;
  /** Reads a handle back into a fresh row-major host array. */
  read(h: Handle, aval: Aval): Promise<TypedArray>;
  /** Synchronous read, where the backend can do it; otherwise undefined. */
  readSync?(h: Handle, aval: Aval): TypedArray;
  /** Runs one primitive. Input handles stay owned by the caller. */
  run<P extends Prim>(
    prim: P,
    inputs: Handle[],
    inAvals: readonly Aval[],
    params: ParamsOf[P],
    outAvals: readonly Aval[],
  ): Handle[];
  /** A second handle onto the same storage (bumps its reference count). */
  retain(h: Handle): Handle;
  /** Drops one reference; storage is freed when none is left. */
  release(h: Handle): void;
  /** Number of storage buffers currently alive. */
  liveBuffers(): number;
  /** Hard memory limits, where the backend has them (checked up front by callers such as training). */
  memoryLimits?(): MemoryLimits;
}

/** Hard memory limits of a backend. */
export interface MemoryLimits {
  /** Bytes all live tensors together can occupy (undefined: no fixed limit known). */
  totalBytes?: number;
  /** Bytes one tensor can occupy. */
  maxTensorBytes?: number;
  /** The limit in words, for error messages, e.g. "the Wasm heap is limited to 4 GiB". */
  describe: string;
}
