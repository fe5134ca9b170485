/**
 * @file Storage and handles of the webgpu backend. A handle is a strided view
 * (shape, strides, element offset) onto reference-counted storage, exactly
 * like the cpu backend, so movement primitives never copy. Storage is either
 * a GPU buffer or, while fusion is pending, a lazy elementwise expression
 * that is compiled into its consumer or materialized on demand.
 */
import type { DType } from "../dtype.ts";
import { stridesOf } from "../shape.ts";
import type { Expr } from "./elementwise.ts";

/** A pending elementwise computation (see fusion in backend.ts). */
export interface Lazy {
  /** The expression over `inputs` (Expr inputs index this list). */
  readonly expr: Expr;
  /** Input views, each retained by this lazy storage. */
  readonly inputs: readonly GHandle[];
  /** Number of expression nodes, to cap fused kernel size. */
  readonly nodes: number;
  /** Primitive count when it was created (fusion only inlines recent results). */
  readonly born: number;
}

/** A deferred kernel: runs when its result is first used, or a few primitives later; never if released first. */
export interface Thunk {
  /** Fills `out` from the materialized inputs (`handles` are the pinned input views). */
  readonly run: (out: GPUBuffer, inputs: View[], handles: readonly GHandle[]) => void;
  /** Input views, pinned until the thunk runs or is dropped. */
  readonly inputs: readonly GHandle[];
  /** Primitive count after which it runs anyway. */
  readonly due: number;
}

/** A materialized view as kernels take it. */
export interface View {
  readonly buf: GPUBuffer;
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly strides: readonly number[];
  readonly offset: number;
}

/** Reference-counted storage. */
export interface Storage {
  buf: GPUBuffer | null;
  lazy: Lazy | null;
  thunk?: Thunk | null;
  readonly dtype: DType;
  /** Elements. */
  readonly size: number;
  /** References held by handles (tensors); the storage is live while this is positive. */
  refs: number;
  /** References held by pending expressions that read it (internal; not counted as live). */
  pins: number;
  /** Shape the storage was created with (for lazy storage: the expression's shape). */
  readonly shape: readonly number[];
}

/** A strided view onto storage. */
export interface GHandle {
  readonly st: Storage;
  readonly shape: readonly number[];
  readonly strides: readonly number[];
  readonly offset: number;
}

/** True when the view is row-major contiguous (from its offset on). */
export function isContiguous(h: GHandle): boolean {
  const s = stridesOf(h.shape);
  return h.shape.every((d, i) => d === 1 || s[i] === h.strides[i]);
}
