/**
 * @file The Tensor value, the single `bind` entry point through which every
 * primitive runs, scope-based memory reclamation (`tidy`) and the hook that
 * lets autograd record primitives. A Tensor is immutable: ops return new
 * Tensors; `dispose` only releases storage early.
 */
import type { Backend, BackendName } from "./backend.ts";
import { createCpuBackend } from "./cpu.ts";
import { allocHost, checkDType, type DType, isFloat, type TypedArray } from "./dtype.ts";
import { describe, DifflabError, DTypeError, fmtShape, ShapeError } from "./errors.ts";
import { type Aval, type ParamsOf, type Prim, shapeRules } from "./prims.ts";
import { checkShape, checkSize, size, stridesOf } from "./shape.ts";
import { checkFn, checkOptions, checkTensor } from "./validate.ts";

/** Nested JS arrays of numbers or booleans, as `array()` returns them. */
export type NestedArray = number | boolean | NestedArray[];

/** Something that records primitives for reverse-mode autodiff. */
export interface Tracer {
  /** True when `t` depends on this tracer's inputs. */
  tracks(t: Tensor): boolean;
  /**
   * Records one application; `vjp` maps output cotangents to input cotangents, and may skip
   * (return null for) inputs whose `needs` entry is false.
   */
  record(
    inputs: readonly Tensor[],
    outputs: readonly Tensor[],
    vjp: (cts: (Tensor | null)[], needs?: readonly boolean[]) => (Tensor | null)[],
    saves?: SavesFn,
  ): void;
}

/**
 * Which operands a VJP reads the values of, given which inputs the tracer tracks
 * (everything else it reads is shape/dtype only). Absent: all inputs, no outputs.
 */
export type SavesFn = (tracked: readonly boolean[]) => { ins: readonly boolean[]; outs: readonly boolean[] };

/** Active tracers, innermost last. Internal: users only see vjp/grad. */
export const tracers: Tracer[] = [];

/** Rule table hook: autograd installs the VJP of each primitive here. */
export type VjpFn = (
  prim: Prim,
  params: unknown,
  inputs: readonly Tensor[],
  outputs: readonly Tensor[],
  cts: (Tensor | null)[],
  needs?: readonly boolean[],
) => (Tensor | null)[];
let vjpOf: VjpFn | null = null;
let savesOf: ((prim: Prim, params: unknown, tracked: readonly boolean[]) => ReturnType<SavesFn>) | null = null;
/** Installs the primitive VJP dispatcher and its saved-operand table (called once by autograd). */
export function installVjp(
  f: VjpFn,
  saves: (prim: Prim, params: unknown, tracked: readonly boolean[]) => ReturnType<SavesFn>,
): void {
  vjpOf = f;
  savesOf = saves;
}

// ---------------------------------------------------------------- backends

const backends = new Map<BackendName, Backend>([["cpu", createCpuBackend()]]);
const factories = new Map<BackendName, () => Promise<Backend>>();
let current: Backend = backends.get("cpu")!;

/** Registers a lazily created backend (wasm, webgpu). */
export function registerBackend(name: BackendName, factory: () => Promise<Backend>): void {
  factories.set(name, factory);
}

/** Selects the backend new tensors are created on. */
export async function setBackend(name: BackendName): Promise<void> {
  let b = backends.get(name);
  if (!b) {
    const f = factories.get(name);
    if (!f) {
      const have = [...new Set([...backends.keys(), ...factories.keys()])].join(", ");
      throw new DifflabError(`setBackend: unknown or unavailable backend ${describe(name)} (available: ${have})`);
    }
    b = await f();
    backends.set(name, b);
  }
  current = b;
}

/** Name of the current backend. */
export function getBackend(): BackendName {
  return current.name;
}

/** The current backend object (internal). */
export function currentBackend(): Backend {
  return current;
}

/** Backend object by name, if it has been created. */
export function backendByName(name: BackendName): Backend | undefined {
  return backends.get(name);
}

// ---------------------------------------------------------------- memory

interface Scope {
  tensors: Set<Tensor>;
}
const scopes: Scope[] = [];

const finalizer = new FinalizationRegistry<{ backend: Backend; handle: unknown }>((h) => {
  h.backend.release(h.handle);
});

// ---------------------------------------------------------------- tensor

let nextId = 0;

/** An immutable n-dimensional array on one backend. */
export class Tensor {
  /** Dimensions; `[]` for a scalar. */
  readonly shape: readonly number[];
  /** Element type. */
  readonly dtype: DType;
  /** Backend that owns the storage. */
  readonly backend: Backend;
  /** Unique id, for debugging and tracing. */
  readonly id: number = nextId++;
  #handle: unknown;
  #disposed = false;
  /** Number of active tracers recording this tensor (internal). */
  _traced = 0;

  /** Internal: wrap a backend handle. Use `tensor()` to create tensors. */
  constructor(backend: Backend, handle: unknown, aval: Aval) {
    this.backend = backend;
    this.#handle = handle;
    this.shape = Object.freeze(aval.shape.slice());
    this.dtype = aval.dtype;
    finalizer.register(this, { backend, handle }, this);
    scopes.at(-1)?.tensors.add(this);
  }

  /** Backend handle; throws a clear error after dispose. */
  get handle(): unknown {
    if (this.#disposed) {
      throw new DifflabError(
        `tensor ${fmtShape(this.shape)} ${this.dtype} was disposed (dispose() was called or its tidy scope ended)`,
      );
    }
    return this.#handle;
  }

  /** Number of elements. */
  get size(): number {
    return size(this.shape);
  }

  /** Rank. */
  get ndim(): number {
    return this.shape.length;
  }

  /** True once the storage has been released. */
  get isDisposed(): boolean {
    return this.#disposed;
  }

  /** Copies the values to a row-major host typed array. */
  data(): Promise<TypedArray> {
    return this.backend.read(this.handle, this);
  }

  /** Synchronous read, on backends that can (cpu, wasm). */
  dataSync(): TypedArray {
    if (!this.backend.readSync) {
      throw new DifflabError(`dataSync: backend ${this.backend.name} reads asynchronously; use await t.data()`);
    }
    return this.backend.readSync(this.handle, this);
  }

  /** Values as nested JS arrays (booleans for bool tensors). */
  async array(): Promise<NestedArray> {
    return nest(await this.data(), this.shape, this.dtype);
  }

  /** Nested JS arrays, synchronously, where the backend allows it. */
  arraySync(): NestedArray {
    return nest(this.dataSync(), this.shape, this.dtype);
  }

  /** The single value of a one-element tensor. */
  async item(): Promise<number> {
    if (this.size !== 1) throw new ShapeError(`item: tensor has shape ${fmtShape(this.shape)}, not one element`);
    return Number((await this.data())[0]);
  }

  /** Releases the storage now instead of at scope end or garbage collection. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    finalizer.unregister(this);
    this.backend.release(this.#handle);
  }

  /** Short description, e.g. `Tensor(f32[2,3] on cpu)`. */
  toString(): string {
    return `Tensor(${this.dtype}${fmtShape(this.shape)} on ${this.backend.name})`;
  }
}

function nest(d: TypedArray, shape: readonly number[], dtype: DType): NestedArray {
  const conv = dtype === "bool" ? (v: number) => v !== 0 : (v: number) => v;
  if (shape.length === 0) return conv(Number(d[0]));
  const st = stridesOf(shape);
  const rec = (axis: number, off: number): NestedArray[] => {
    const out: NestedArray[] = [];
    for (let i = 0; i < shape[axis]; i++) {
      out.push(axis === shape.length - 1 ? conv(Number(d[off + i])) : rec(axis + 1, off + i * st[axis]));
    }
    return out;
  };
  return rec(0, 0);
}

/** Creates a tensor on the current backend from a host array (taking ownership). */
export function fromHost(data: TypedArray, shape: readonly number[], dtype: DType): Tensor {
  const s = checkShape("fromHost", shape);
  checkDType("fromHost", dtype);
  const want = HOST_ARRAYS[dtype]?.();
  if (!want || !(data instanceof want)) {
    throw new DTypeError(
      `fromHost: data of dtype ${dtype} must be held in ${want?.name ?? "Float16Array"}, got ${describe(data)}`,
    );
  }
  if (data.length !== size(s)) {
    throw new ShapeError(`fromHost: ${data.length} values do not fill shape ${fmtShape(s)}`);
  }
  shape = s;
  const b = current;
  return new Tensor(b, b.fromHost(data, { shape, dtype }), { shape, dtype });
}

// The host array class each dtype is stored in (f16 only where the runtime has Float16Array).
const HOST_ARRAYS: Record<DType, () => (abstract new (...a: never[]) => TypedArray) | undefined> = {
  f32: () => Float32Array,
  f64: () => Float64Array,
  f16: () => typeof Float16Array === "undefined" ? undefined : Float16Array,
  i32: () => Int32Array,
  u32: () => Uint32Array,
  bool: () => Uint8Array,
};

/** A new Tensor object sharing `t`'s storage (autograd uses it for fresh identities). */
export function alias(t: Tensor): Tensor {
  return new Tensor(t.backend, t.backend.retain(t.handle), t);
}

/** Runs one primitive: checks shapes/dtypes, executes, and lets active tracers record it. */
export function bind<P extends Prim>(prim: P, inputs: readonly Tensor[], params: ParamsOf[P]): Tensor[] {
  const backend = inputs.length ? inputs[0].backend : current;
  for (const t of inputs) {
    if (!(t instanceof Tensor)) throw new DifflabError(`${prim}: operand is not a Tensor (${String(t)})`);
    if (t.backend !== backend) {
      throw new DifflabError(`${prim}: operands live on different backends (${backend.name} and ${t.backend.name})`);
    }
  }
  const outAvals = shapeRules[prim](inputs, params);
  for (const a of outAvals) checkSize(prim, a.shape, "result shape");
  const handles = backend.run(prim, inputs.map((t) => t.handle), inputs, params, outAvals);
  const outs = handles.map((h, i) => new Tensor(backend, h, outAvals[i]));
  if (tracers.length && outs.some((o) => isFloat(o.dtype))) {
    for (const tr of tracers) {
      if (inputs.some((t) => tr.tracks(t))) {
        tr.record(
          inputs,
          outs,
          (cts, needs) => vjpOf!(prim, params, inputs, outs, cts, needs),
          (tracked) => savesOf!(prim, params, tracked),
        );
      }
    }
  }
  return outs;
}

// ---------------------------------------------------------------- tidy

/** A tree of values: tensors, arrays, plain objects, or anything else (left alone). */
export type Tree = unknown;

/** Visits every Tensor leaf of a tree. */
export function forEachTensor(tree: Tree, f: (t: Tensor) => void, seen = new Set<unknown>()): void {
  if (tree instanceof Tensor) f(tree);
  else if (tree && typeof tree === "object" && !seen.has(tree)) {
    seen.add(tree);
    for (const v of Object.values(tree as Record<string, unknown>)) forEachTensor(v, f, seen);
  }
}

/**
 * Runs `fn` and releases every tensor created inside it except those in its
 * result (and those an active autograd trace still needs, which move to the
 * enclosing scope). Async functions are supported: the scope ends when the
 * returned promise settles.
 */
export function tidy<T>(fn: () => T): T {
  checkFn("tidy", "fn", fn);
  const scope: Scope = { tensors: new Set() };
  scopes.push(scope);
  let result: T;
  try {
    result = fn();
  } catch (e) {
    endScope(scope, undefined);
    throw e;
  }
  if (result instanceof Promise) {
    return result.then(
      (v) => {
        endScope(scope, v);
        return v;
      },
      (e) => {
        endScope(scope, undefined);
        throw e;
      },
    ) as T;
  }
  endScope(scope, result);
  return result;
}

function endScope(scope: Scope, result: unknown) {
  const i = scopes.lastIndexOf(scope);
  if (i >= 0) scopes.splice(i, 1);
  const keep = new Set<Tensor>();
  forEachTensor(result, (t) => keep.add(t));
  const parent = scopes.at(-1);
  for (const t of scope.tensors) {
    if (keep.has(t) || t._traced > 0 || kept.has(t)) parent?.tensors.add(t);
    else t.dispose();
  }
}

const kept = new WeakSet<Tensor>();

/** Marks a tensor to survive every enclosing `tidy` (like tf.keep). */
export function keep<T extends Tensor>(t: T): T {
  checkTensor("keep", "t", t);
  kept.add(t);
  return t;
}

/** Disposes every tensor leaf of a tree. */
export function dispose(tree: Tree): void {
  forEachTensor(tree, (t) => t.dispose());
}

/** Live storage buffers on a backend (default: the current one). */
export function liveBuffers(name?: BackendName): number {
  if (name !== undefined && !backends.has(name) && !factories.has(name)) {
    const have = [...new Set([...backends.keys(), ...factories.keys()])].join(", ");
    throw new DifflabError(`liveBuffers: unknown backend ${describe(name)} (available: ${have})`);
  }
  const b = name ? backends.get(name) : current;
  return b ? b.liveBuffers() : 0;
}

// ---------------------------------------------------------------- creation

/** Options for `tensor()`. */
export interface TensorOptions {
  /** Element type (default: inferred from the data, `f32` for numbers). */
  dtype?: DType;
  /** Shape to give the flat values (default: the nesting of `data`). */
  shape?: readonly number[];
}

function inferShape(data: unknown, op: string): number[] {
  const shape: number[] = [];
  const seen = new Set<unknown>();
  let d = data;
  while (Array.isArray(d)) {
    if (seen.has(d)) throw new DifflabError(`${op}: argument data is a nested array that contains itself`);
    seen.add(d);
    shape.push(d.length);
    d = d[0];
  }
  checkSize(op, shape, "data shape");
  return shape;
}

function flatten(data: unknown, shape: number[], out: number[], depth: number, op: string) {
  if (depth === shape.length) {
    if (typeof data === "number") out.push(data);
    else if (typeof data === "boolean") out.push(data ? 1 : 0);
    else throw new DifflabError(`${op}: expected a number at depth ${depth}, got ${describe(data)}`);
    return;
  }
  if (!Array.isArray(data) || data.length !== shape[depth]) {
    throw new ShapeError(`${op}: ragged nested array: expected length ${shape[depth]} at depth ${depth}`);
  }
  for (const v of data) flatten(v, shape, out, depth + 1, op);
}

/** Creates a tensor from a number, boolean, nested array or typed array. */
export function tensor(data: NestedArray | ArrayLike<number>, opts: TensorOptions = {}): Tensor {
  checkOptions<TensorOptions>("tensor", opts, ["dtype", "shape"]);
  if (data instanceof DataView || data instanceof BigInt64Array || data instanceof BigUint64Array) {
    throw new DifflabError(`tensor: argument data must hold numbers, got ${describe(data)}`);
  }
  let dtype: DType;
  if (opts.dtype !== undefined) dtype = checkDType("tensor", opts.dtype);
  else if (data instanceof Float64Array) dtype = "f64";
  else if (data instanceof Int32Array) dtype = "i32";
  else if (data instanceof Uint32Array) dtype = "u32";
  else if (typeof data === "boolean" || (Array.isArray(data) && firstLeaf(data) === "boolean")) {
    dtype = "bool";
  } else dtype = "f32";
  let flat: ArrayLike<number>;
  let shape: number[];
  if (ArrayBuffer.isView(data)) {
    flat = data as ArrayLike<number>;
    shape = [flat.length];
  } else {
    shape = inferShape(data, "tensor");
    const out: number[] = [];
    flatten(data, shape, out, 0, "tensor");
    flat = out;
  }
  if (opts.shape !== undefined) {
    const s = checkShape("tensor", opts.shape);
    if (size(s) !== flat.length) {
      throw new ShapeError(`tensor: ${flat.length} values cannot take shape ${fmtShape(s)}`);
    }
    shape = s;
  }
  const host = allocHost(dtype, flat.length);
  for (let i = 0; i < flat.length; i++) host[i] = dtype === "bool" ? (flat[i] ? 1 : 0) : flat[i];
  return fromHost(host, shape, dtype);
}

function firstLeaf(d: unknown): string {
  const seen = new Set<unknown>();
  while (Array.isArray(d)) {
    if (seen.has(d)) return "cycle"; // inferShape reports it
    seen.add(d);
    d = d[0];
  }
  return typeof d;
}
