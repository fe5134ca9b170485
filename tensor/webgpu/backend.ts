/**
 * @file The `webgpu` backend: every primitive of the registry as WGSL, with
 * the cpu backend's semantics (tensor/cpu.ts is the oracle).
 *
 * - Handles are strided views onto reference-counted storage, so reshape
 *   (when contiguous), transpose, broadcast, slice and flip never copy; the
 *   kernels read views through their strides.
 * - Elementwise primitives are lazy: each returns storage holding an
 *   expression over its inputs, and consecutive elementwise primitives are
 *   composed into one expression. The expression is compiled into one kernel
 *   when something else needs the values (a reduction, matmul, a read...), or
 *   never, if the result is released unused. Matmul and conv are deferred a few
 *   primitives the same way, so results nobody uses (autograd's cotangents for
 *   inputs that need none) are never computed.
 * - Work is recorded into one command encoder and submitted rarely; reads are
 *   the only waits (see engine.ts).
 * - Storage counted by `liveBuffers()` is every storage with a reference,
 *   lazy or not; free buffers in the pool do not count.
 */
import type { Backend, Handle } from "../backend.ts";
import { adamwVia, layerNormVia, softmaxVia } from "../composite.ts";
import { allocHost, type DType, type TypedArray } from "../dtype.ts";
import { DifflabError, DTypeError, fmtShape } from "../errors.ts";
import type { Aval, ParamsOf, Prim } from "../prims.ts";
import { shapeEq, size, stridesOf } from "../shape.ts";
import { elemBytes } from "./codegen.ts";
import { conv, convGemm, flattenableWeights, im2colBytes } from "./conv.ts";
import { type EwOp, type Expr, exprNodes, runExpr } from "./elementwise.ts";
import { Engine, type EngineOptions, sizeClass } from "./engine.ts";
import { matmul } from "./matmul.ts";
import { gather, random, scatterAdd } from "./misc.ts";
import { fillZero, plainSrc, type RedSrc, reduce, scan } from "./reduce.ts";
import { type GHandle, isContiguous, type Lazy, type Storage, type View } from "./storage.ts";

/** Options of the webgpu backend. */
export interface WebGPUOptions extends EngineOptions {
  /** Fuse chains of elementwise primitives into one kernel (default true). */
  fusion?: boolean;
  /** Most expression nodes one fused kernel may hold (default 40). */
  maxFusedNodes?: number;
  /** A pending result is fused into consumers created at most this many primitives later (default 32). */
  fuseWindow?: number;
  /** Matmul/conv results not used within this many primitives run anyway (default 16). */
  deferWindow?: number;
}

/** The webgpu backend, with a few extras for tests and benchmarks. */
export interface WebGPUBackend extends Backend {
  /** The execution engine (device, pool, pipelines). */
  readonly engine: Engine;
  /** Sets the bytes one storage binding may cover (for tests of the limit splitting); returns the old value. */
  setMaxBindingBytes(bytes: number): number;
  /** Uses im2col + matmul for GEMM-like convolutions (default) or always the direct kernel; returns the old setting. */
  setConvGemm(on: boolean): boolean;
  /** Turns elementwise fusion on or off; returns the old setting. */
  setFusion(on: boolean): boolean;
  /** Runs every deferred kernel and waits until all recorded commands have run on the GPU. */
  sync(): Promise<void>;
}

type Kernel<P extends Prim> = (
  ins: GHandle[],
  inAvals: readonly Aval[],
  p: ParamsOf[P],
  out: readonly Aval[],
) => GHandle[];

/**
 * Strides that let a strided view take `to` without copying (NumPy's no-copy reshape), or
 * null. Splitting or merging axes works whenever each merged group is itself contiguous,
 * e.g. the batch axes of a transposed attention operand.
 */
export function reshapeStrides(
  shape: readonly number[],
  strides: readonly number[],
  to: readonly number[],
): number[] | null {
  if (size(to) === 0) return stridesOf(to);
  const os: number[] = [], ost: number[] = [];
  shape.forEach((d, i) => {
    if (d !== 1) {
      os.push(d);
      ost.push(strides[i]);
    }
  });
  const out = new Array<number>(to.length).fill(0);
  let oi = 0, ni = 0;
  while (ni < to.length || oi < os.length) {
    if (ni < to.length && to[ni] === 1) {
      out[ni++] = 0;
      continue;
    }
    if (oi >= os.length || ni >= to.length) return null;
    // Grow one group of old axes [oi, oj) and new axes [ni, nj) with equal element counts.
    let oj = oi + 1, nj = ni + 1;
    let po = os[oi], pn = to[ni];
    while (po !== pn) {
      if (po < pn) po *= os[oj++];
      else pn *= to[nj++];
      if (oj > os.length || nj > to.length) return null;
    }
    for (let k = oi; k < oj - 1; k++) if (ost[k] !== ost[k + 1] * os[k + 1]) return null;
    let acc = ost[oj - 1];
    for (let k = nj - 1; k >= ni; k--) {
      out[k] = to[k] === 1 ? 0 : acc;
      acc *= to[k];
    }
    oi = oj;
    ni = nj;
  }
  return out;
}

/** Creates the webgpu backend (throws a DifflabError when there is no adapter). */
export async function createWebGPUBackend(opts: WebGPUOptions = {}): Promise<WebGPUBackend> {
  const engine = await Engine.create(opts);
  let fusion = opts.fusion ?? true;
  let gemmConv = true;
  const maxNodes = opts.maxFusedNodes ?? 40;
  const fuseWindow = opts.fuseWindow ?? 32;
  const deferWindow = opts.deferWindow ?? 16;
  let live = 0;
  // Primitive counter: the age of a pending result, so fusion never chains across training steps.
  let clock = 0;

  const checkDtype = (op: string, d: DType) => {
    if (d === "f64") {
      throw new DTypeError(`webgpu: ${op}: f64 is not supported on the webgpu backend (use f32, or the cpu backend)`);
    }
    if (d === "f16" && !engine.hasF16) {
      throw new DTypeError(
        `webgpu: ${op}: f16 needs the adapter feature shader-f16, which this adapter (${engine.adapterInfo.description}) lacks`,
      );
    }
  };

  // ---------------------------------------------------------------- storage

  const allocBuf = (bytes: number, shape: readonly number[], dtype: DType) =>
    engine.alloc(Math.max(4, bytes), false, () => `a ${dtype} tensor of shape ${fmtShape(shape)}`);

  const newStorage = (dtype: DType, shape: readonly number[]): Storage => {
    const n = size(shape);
    const buf = allocBuf(n * elemBytes(dtype), shape, dtype);
    live++;
    return { buf, lazy: null, dtype, size: n, refs: 1, pins: 0, shape };
  };

  const fresh = (dtype: DType, shape: readonly number[]): GHandle => {
    const st = newStorage(dtype, shape);
    return { st, shape, strides: stridesOf(shape), offset: 0 };
  };

  const view = (h: GHandle, shape: readonly number[], strides: readonly number[], offset: number): GHandle => {
    h.st.refs++;
    return { st: h.st, shape, strides, offset };
  };

  const dropStorage = (st: Storage) => {
    if (st.thunk) {
      // Released before anything used it: the deferred kernel never runs.
      const th = st.thunk;
      st.thunk = null;
      th.inputs.forEach(unpin);
    }
    if (st.lazy) {
      const lz = st.lazy;
      st.lazy = null;
      lz.inputs.forEach(unpin);
    }
    if (st.buf) {
      engine.free(st.buf);
      st.buf = null;
    }
  };

  const release = (h: GHandle) => {
    const st = h.st;
    if (st.refs <= 0) return;
    if (--st.refs > 0) return;
    live--;
    if (st.pins === 0) dropStorage(st);
  };

  /** A pending expression's hold on one of its inputs. */
  const pin = (h: GHandle): GHandle => {
    h.st.pins++;
    return h;
  };
  const unpin = (h: GHandle) => {
    const st = h.st;
    if (--st.pins === 0 && st.refs === 0) dropStorage(st);
  };

  /** Makes sure the storage behind `h` holds a buffer; returns it as a kernel view. */
  const materialize = (h: GHandle): View => {
    const st = h.st;
    if (st.refs <= 0 && st.pins <= 0) {
      throw new DifflabError(`webgpu: a tensor of shape ${fmtShape(h.shape)} was used after it was released`);
    }
    if (!st.buf && st.thunk) {
      const th = st.thunk;
      const views = th.inputs.map(materialize);
      const buf = allocBuf(st.size * elemBytes(st.dtype), st.shape, st.dtype);
      st.thunk = null;
      th.run(buf, views, th.inputs);
      st.buf = buf;
      th.inputs.forEach(unpin);
    }
    if (!st.buf) {
      const lz = st.lazy!;
      lz.inputs.forEach(materialize);
      const buf = allocBuf(st.size * elemBytes(st.dtype), st.shape, st.dtype);
      runExpr(engine, lz.expr, lz.inputs, {
        buf,
        dtype: st.dtype,
        shape: st.shape,
        strides: stridesOf(st.shape),
        offset: 0,
      });
      st.buf = buf;
      st.lazy = null;
      lz.inputs.forEach(unpin);
    }
    return { buf: st.buf, dtype: st.dtype, shape: h.shape, strides: h.strides, offset: h.offset };
  };

  /** A contiguous copy of a view (a new storage). */
  const copy = (h: GHandle): GHandle => {
    materialize(h);
    const out = fresh(h.st.dtype, h.shape);
    runExpr(engine, { k: "in", i: 0, dtype: h.st.dtype }, [h], {
      buf: out.st.buf!,
      dtype: h.st.dtype,
      shape: h.shape,
      strides: out.strides,
      offset: 0,
    });
    return out;
  };

  /** A contiguous view of `h`: itself (retained) when already contiguous, else a copy. */
  const contiguous = (h: GHandle): GHandle => (isContiguous(h) ? view(h, h.shape, h.strides, h.offset) : copy(h));

  // ---------------------------------------------------------------- elementwise + fusion

  // Only young, whole, row-major pending results are inlined. Anything else that is still pending is
  // materialized when it becomes a leaf, so a pending result only ever holds real buffers and chains of
  // pending results (e.g. optimizer state across steps) cannot keep old tensors alive.
  const canInline = (h: GHandle): h is GHandle & { st: Storage & { lazy: Lazy } } =>
    fusion && h.st.lazy !== null && clock - h.st.lazy.born <= fuseWindow && h.offset === 0 &&
    shapeEq(h.shape, h.st.shape) && isContiguous(h);

  const ew = (op: EwOp, ins: GHandle[], out: Aval): GHandle[] => {
    const build = (inline: boolean) => {
      const leaves: GHandle[] = [];
      // Structurally equal nodes are shared (inlining the same pending result twice, or x*x's
      // two gradient terms, would otherwise be computed twice in one kernel).
      const interned = new Map<string, Expr>();
      const ids = new Map<Expr, number>();
      const intern = (e: Expr): Expr => {
        const key = e.k === "in"
          ? `i${e.i}:${e.dtype}`
          : `${e.op}:${e.dtype}(${e.args.map((a) => ids.get(a)).join(",")})`;
        const have = interned.get(key);
        if (have) return have;
        interned.set(key, e);
        ids.set(e, ids.size);
        return e;
      };
      const leaf = (h: GHandle, dtype: DType): Expr => {
        let i = leaves.findIndex((l) => l.st === h.st && l.offset === h.offset && shapeEq(l.strides, h.strides));
        if (i < 0) i = leaves.push(h) - 1;
        return intern({ k: "in", i, dtype });
      };
      let nodes = 1;
      const arg = (h: GHandle): Expr => {
        if (inline && canInline(h) && nodes + h.st.lazy.nodes <= maxNodes) {
          const lz = h.st.lazy;
          nodes += lz.nodes;
          const memo = new Map<Expr, Expr>();
          const remap = (e: Expr): Expr => {
            let r = memo.get(e);
            if (r) return r;
            r = e.k === "in"
              ? leaf(lz.inputs[e.i], e.dtype)
              : intern({ k: "op", op: e.op, dtype: e.dtype, args: e.args.map(remap) });
            memo.set(e, r);
            return r;
          };
          return remap(lz.expr);
        }
        nodes++;
        return leaf(h, h.st.dtype);
      };
      const expr = intern({ k: "op", op, dtype: out.dtype, args: ins.map(arg) });
      return { expr, leaves };
    };
    let b = build(true);
    if (b.leaves.length + 1 > engine.maxStorageBuffers) b = build(false);
    if (fusion) {
      b.leaves.forEach(materialize);
      const inputs = b.leaves.map((h) => pin({ st: h.st, shape: h.shape, strides: h.strides, offset: h.offset }));
      live++;
      const st: Storage = {
        buf: null,
        lazy: { expr: b.expr, inputs, nodes: exprNodes(b.expr), born: clock },
        dtype: out.dtype,
        size: size(out.shape),
        refs: 1,
        pins: 0,
        shape: out.shape,
      };
      return [{ st, shape: out.shape, strides: stridesOf(out.shape), offset: 0 }];
    }
    b.leaves.forEach(materialize);
    const o = fresh(out.dtype, out.shape);
    runExpr(engine, b.expr, b.leaves, {
      buf: o.st.buf!,
      dtype: out.dtype,
      shape: out.shape,
      strides: o.strides,
      offset: 0,
    });
    return [o];
  };

  const unary = (op: EwOp): Kernel<Prim> => (ins, _a, _p, out) => ew(op, ins, out[0]);

  // ---------------------------------------------------------------- deferred kernels

  // Matmul and conv results are computed when first used or `deferWindow` primitives later,
  // whichever comes first; one released before that is never computed. This drops the
  // cotangents autograd computes for inputs that need none (the input gradient of a first
  // layer), e.g. one of the six GEMMs of an MLP training step.
  const deferred: Storage[] = [];
  const defer = (
    dtype: DType,
    shape: readonly number[],
    inputs: GHandle[],
    run: (out: GPUBuffer, inputs: View[], handles: readonly GHandle[]) => void,
  ): GHandle => {
    live++;
    const pinned = inputs.map((h) => pin({ st: h.st, shape: h.shape, strides: h.strides, offset: h.offset }));
    const st: Storage = {
      buf: null,
      lazy: null,
      thunk: { run, inputs: pinned, due: clock + deferWindow },
      dtype,
      size: size(shape),
      refs: 1,
      pins: 0,
      shape,
    };
    deferred.push(st);
    return { st, shape, strides: stridesOf(shape), offset: 0 };
  };
  const runDue = () => {
    while (deferred.length && (!deferred[0].thunk || deferred[0].thunk.due < clock)) {
      const st = deferred.shift()!;
      if (st.thunk) materialize({ st, shape: st.shape, strides: stridesOf(st.shape), offset: 0 });
    }
  };
  /**
   * True when the operands and result fit one binding each and the grid cannot exceed the
   * workgroup limit (every kernel has at least one output element per workgroup), so a
   * deferred kernel cannot fail later, away from the call that asked for it.
   */
  const fitsBinding = (ins: GHandle[], out: Aval) =>
    size(out.shape) <= engine.maxWorkgroups ** 2 &&
    [...ins.map((h) => h.st.size * elemBytes(h.st.dtype)), size(out.shape) * elemBytes(out.dtype)].every((b) =>
      sizeClass(Math.max(b, 4)) <= engine.maxBinding
    );

  // ---------------------------------------------------------------- kernels

  const freeBuf = (b: GPUBuffer) => engine.free(b);
  const wrap = (buf: GPUBuffer, dtype: DType, shape: readonly number[]): GHandle => {
    live++;
    return {
      st: { buf, lazy: null, dtype, size: size(shape), refs: 1, pins: 0, shape },
      shape,
      strides: stridesOf(shape),
      offset: 0,
    };
  };

  /** A reduction's source: a young pending expression is reduced through (prologue fusion), else the view. */
  const redSrc = (h: GHandle, extraBuffers: number): RedSrc => {
    if (canInline(h) && h.st.lazy.inputs.length + extraBuffers <= engine.maxStorageBuffers) {
      const lz = h.st.lazy;
      return { expr: lz.expr, leaves: lz.inputs.map(materialize), shape: h.shape, dtype: h.st.dtype };
    }
    return plainSrc(materialize(h));
  };

  const reduceK = (kind: "sum" | "max"): Kernel<"sum" | "max"> => (ins, _a, p, out) => {
    const src = redSrc(ins[0], 1);
    const buf = reduce(
      engine,
      kind,
      src,
      p.axes,
      out[0].dtype,
      (n) => allocBuf(n, out[0].shape, out[0].dtype),
      freeBuf,
    );
    return [wrap(buf, out[0].dtype, out[0].shape)];
  };

  /** A scan; when one lane along a strided axis exceeds the binding limit, scans an axis-last copy and returns a view. */
  const scanK = (h: GHandle, mul: boolean, axis: number, reverse: boolean): GHandle => {
    const x = materialize(h);
    const n = h.shape[axis];
    const eb = elemBytes(h.st.dtype);
    if (size(h.shape) === 0) return fresh(h.st.dtype, h.shape);
    if ((n - 1) * Math.abs(h.strides[axis]) * eb + eb <= engine.maxBinding / 2 || h.strides[axis] === 1) {
      const o = fresh(h.st.dtype, h.shape);
      scan(engine, mul, x, axis, reverse, o.st.buf!);
      return o;
    }
    const perm = [...h.shape.keys()].filter((a) => a !== axis).concat([axis]);
    const moved = copy({
      st: h.st,
      shape: perm.map((a) => h.shape[a]),
      strides: perm.map((a) => h.strides[a]),
      offset: h.offset,
    });
    const o = fresh(h.st.dtype, moved.shape);
    scan(engine, mul, materialize(moved), moved.shape.length - 1, reverse, o.st.buf!);
    release(moved);
    const inv = new Array<number>(perm.length);
    perm.forEach((a, i) => (inv[a] = i));
    const r = view(o, h.shape, inv.map((i) => o.strides[i]), 0);
    release(o);
    return r;
  };

  const kernels: { [P in Prim]: Kernel<P> } = {
    neg: unary("neg"),
    exp: unary("exp"),
    log: unary("log"),
    sin: unary("sin"),
    cos: unary("cos"),
    tanh: unary("tanh"),
    sqrt: unary("sqrt"),
    rsqrt: unary("rsqrt"),
    abs: unary("abs"),
    sign: unary("sign"),
    erf: unary("erf"),
    floor: unary("floor"),
    sigmoid: unary("sigmoid"),
    log1p: unary("log1p"),
    expm1: unary("expm1"),
    gelu: unary("gelu"),
    geluTanh: unary("geluTanh"),
    geluGrad: unary("geluGrad"),
    geluTanhGrad: unary("geluTanhGrad"),
    // max, then exp(x - m) fused into the sum's prologue, then one fused divide.
    layerNorm: (ins, a, p) => [layerNormVia(backend, ins[0], a[0], p.eps) as GHandle],
    adamw: (ins, a, p) => adamwVia(backend, ins, a[0], p) as GHandle[],
    softmax: (ins, a) => [softmaxVia(backend, ins[0], a[0]) as GHandle],
    add: unary("add"),
    sub: unary("sub"),
    mul: unary("mul"),
    div: unary("div"),
    pow: unary("pow"),
    maximum: unary("maximum"),
    minimum: unary("minimum"),
    compare: (ins, _a, p, out) => ew(`cmp_${p.op}`, ins, out[0]),
    where: unary("where"),
    cast: (ins, inAvals, p, out) => {
      checkDtype("cast", p.dtype);
      if (inAvals[0].dtype === p.dtype) return [view(ins[0], ins[0].shape, ins[0].strides, ins[0].offset)];
      return ew("cast", ins, out[0]);
    },
    sum: reduceK("sum"),
    max: reduceK("max"),
    argmax: (ins, _a, p, out) => {
      const src = redSrc(ins[0], 3);
      const buf = reduce(engine, "argmax", src, [p.axis], "i32", (n) => allocBuf(n, out[0].shape, "i32"), freeBuf);
      return [wrap(buf, "i32", out[0].shape)];
    },
    cumsum: (ins, _a, p) => [scanK(ins[0], false, p.axis, p.reverse)],
    cumprod: (ins, _a, p) => [scanK(ins[0], true, p.axis, p.reverse)],
    dot: (ins, _a, _p, out) => {
      const run = (buf: GPUBuffer, [a, b]: View[]) => {
        if (a.shape[2] === 0) fillZero(engine, buf, size(out[0].shape), out[0].dtype);
        else matmul(engine, a, b, buf);
      };
      if (fusion && fitsBinding(ins, out[0])) return [defer(out[0].dtype, out[0].shape, ins, run)];
      const o = fresh(out[0].dtype, out[0].shape);
      run(o.st.buf!, ins.map(materialize));
      return [o];
    },
    conv: (ins, _a, p, out) => {
      const run = (buf: GPUBuffer, [x, w]: View[], [, wh]: readonly GHandle[]) => {
        if (size(x.shape) === 0 || size(w.shape) === 0) {
          fillZero(engine, buf, size(out[0].shape), out[0].dtype);
          return;
        }
        const colBytes = gemmConv ? im2colBytes(x, w, out[0].shape) : Infinity;
        if (colBytes === Infinity) conv(engine, x, w, p, out[0].shape, buf);
        else {
          // im2col + the register-blocked matmul: faster than the direct kernel on GEMM-like convs.
          const wc = flattenableWeights(w) ? view(wh, wh.shape, wh.strides, wh.offset) : copy(wh);
          const col = allocBuf(colBytes, out[0].shape, x.dtype);
          convGemm(engine, x, materialize(wc), p, out[0].shape, buf, col);
          engine.free(col);
          release(wc);
        }
      };
      if (fusion && fitsBinding(ins, out[0])) return [defer(out[0].dtype, out[0].shape, ins, run)];
      const o = fresh(out[0].dtype, out[0].shape);
      run(o.st.buf!, ins.map(materialize), ins);
      return [o];
    },
    gather: (ins, _a, p, out) => {
      const x = materialize(ins[0]), idx = materialize(ins[1]);
      const o = fresh(out[0].dtype, out[0].shape);
      gather(engine, x, idx, p.axis, out[0].shape, o.st.buf!);
      return [o];
    },
    scatterAdd: (ins, inAvals, p, out) => {
      const u = contiguous(ins[0]), idx = contiguous(ins[1]);
      const o = fresh(out[0].dtype, out[0].shape);
      const outer = size(inAvals[0].shape.slice(0, p.axis));
      const inner = size(inAvals[0].shape.slice(p.axis + inAvals[1].shape.length));
      scatterAdd(engine, materialize(u), materialize(idx), outer, p.size, inner, o.st.buf!, out[0].shape);
      release(u);
      release(idx);
      return [o];
    },
    reshape: (ins, _a, p) => {
      const h = ins[0];
      if (isContiguous(h)) return [view(h, p.shape, stridesOf(p.shape), h.offset)];
      const st = reshapeStrides(h.shape, h.strides, p.shape);
      if (st) return [view(h, p.shape, st, h.offset)];
      const c = copy(h);
      const r = view(c, p.shape, stridesOf(p.shape), 0);
      release(c);
      return [r];
    },
    transpose: (ins, _a, p) => {
      const h = ins[0];
      return [view(h, p.perm.map((a) => h.shape[a]), p.perm.map((a) => h.strides[a]), h.offset)];
    },
    broadcast: (ins, _a, p) => {
      const h = ins[0];
      const off = p.shape.length - h.shape.length;
      const strides = p.shape.map((d, i) => {
        const j = i - off;
        return j < 0 || h.shape[j] !== d ? 0 : h.strides[j];
      });
      return [view(h, p.shape, strides, h.offset)];
    },
    slice: (ins, _a, p, out) => {
      const h = ins[0];
      let offset = h.offset;
      h.shape.forEach((_, i) => (offset += p.starts[i] * h.strides[i]));
      return [view(h, out[0].shape, h.strides.map((s, i) => s * p.steps[i]), offset)];
    },
    flip: (ins, _a, p) => {
      const h = ins[0];
      let offset = h.offset;
      const strides = h.strides.map((s, i) => {
        if (!p.axes.includes(i)) return s;
        if (h.shape[i] > 0) offset += (h.shape[i] - 1) * s;
        return -s;
      });
      return [view(h, h.shape, strides, offset)];
    },
    pad: (ins, _a, p, out) => {
      // Zeros, then the input copied into the strided view of the output where it lands: both
      // kernels coalesce axes, so a pad along one axis of a 5-D tensor costs like a 2-D one.
      const h = ins[0];
      materialize(h);
      const o = fresh(out[0].dtype, out[0].shape);
      fillZero(engine, o.st.buf!, size(out[0].shape), out[0].dtype);
      if (size(h.shape) > 0) {
        let offset = 0;
        p.widths.forEach((w, i) => (offset += w[0] * o.strides[i]));
        runExpr(engine, { k: "in", i: 0, dtype: h.st.dtype }, [h], {
          buf: o.st.buf!,
          dtype: out[0].dtype,
          shape: h.shape,
          strides: o.strides.map((st, i) => st * (p.widths[i][2] + 1)),
          offset,
        });
      }
      return [o];
    },
    concat: (ins, inAvals, p, out) => {
      const o = fresh(out[0].dtype, out[0].shape);
      let base = 0;
      ins.forEach((h, t) => {
        const n = inAvals[t].shape[p.axis];
        if (size(h.shape) > 0) {
          materialize(h);
          runExpr(engine, { k: "in", i: 0, dtype: h.st.dtype }, [h], {
            buf: o.st.buf!,
            dtype: out[0].dtype,
            shape: h.shape,
            strides: o.strides,
            offset: base * o.strides[p.axis],
          });
        }
        base += n;
      });
      return [o];
    },
    random: (_ins, _a, p, out) => {
      checkDtype("random", p.dtype);
      const o = fresh(out[0].dtype, out[0].shape);
      random(engine, p.key, p.dtype, p.dist, size(p.shape), o.st.buf!, p.shape);
      return [o];
    },
  };

  // ---------------------------------------------------------------- interface

  const toHost = (raw: ArrayBuffer, dtype: DType, n: number): TypedArray => {
    switch (dtype) {
      case "f32":
        return new Float32Array(raw, 0, n);
      case "i32":
        return new Int32Array(raw, 0, n);
      case "u32":
        return new Uint32Array(raw, 0, n);
      case "bool":
        return Uint8Array.from(new Uint32Array(raw, 0, n), (v) => (v ? 1 : 0));
      case "f16":
        return new Float16Array(raw, 0, n);
      default:
        throw new DTypeError(`webgpu: cannot read dtype ${dtype}`);
    }
  };

  const backend: WebGPUBackend = {
    name: "webgpu",
    engine,
    fromHost(data, aval) {
      engine.check("fromHost");
      checkDtype("tensor", aval.dtype);
      const n = size(aval.shape);
      if (data.length !== n) {
        throw new DifflabError(`webgpu: ${data.length} values do not fill shape ${fmtShape(aval.shape)}`);
      }
      let src: ArrayBufferView = data;
      if (aval.dtype === "bool") src = Uint32Array.from(data as Uint8Array, (v) => (v ? 1 : 0));
      else if (aval.dtype === "f32" && !(data instanceof Float32Array)) {
        src = Float32Array.from(data as ArrayLike<number>);
      } else if (aval.dtype === "i32" && !(data instanceof Int32Array)) {
        src = Int32Array.from(data as ArrayLike<number>);
      } else if (aval.dtype === "u32" && !(data instanceof Uint32Array)) {
        src = Uint32Array.from(data as ArrayLike<number>);
      }
      const buf = engine.upload(src, () => `a ${aval.dtype} tensor of shape ${fmtShape(aval.shape)}`);
      live++;
      const st: Storage = { buf, lazy: null, dtype: aval.dtype, size: n, refs: 1, pins: 0, shape: aval.shape.slice() };
      return { st, shape: st.shape, strides: stridesOf(st.shape), offset: 0 } satisfies GHandle;
    },
    async read(h: Handle, aval: Aval) {
      const g = h as GHandle;
      const n = size(g.shape);
      const eb = elemBytes(aval.dtype);
      if (n === 0) return allocHost(aval.dtype, 0);
      materialize(g);
      let src = g;
      let temp: GHandle | null = null;
      if (!isContiguous(g) || (g.offset * eb) % 4 !== 0) {
        temp = copy(g);
        src = temp;
      }
      const p = engine.read(src.st.buf!, src.offset * eb, n * eb);
      if (temp) release(temp);
      const raw = await p;
      return toHost(raw, aval.dtype, n);
    },
    run(prim, inputs, inAvals, params, outAvals) {
      engine.check(prim);
      clock++;
      runDue();
      for (const a of outAvals) checkDtype(prim, a.dtype);
      for (const a of inAvals) checkDtype(prim, a.dtype);
      return kernels[prim](inputs as GHandle[], inAvals, params, outAvals);
    },
    retain(h: Handle) {
      const g = h as GHandle;
      return view(g, g.shape, g.strides, g.offset);
    },
    release(h: Handle) {
      release(h as GHandle);
    },
    liveBuffers() {
      return live;
    },
    memoryLimits() {
      const max = engine.device.limits.maxBufferSize;
      return { maxTensorBytes: max, describe: `the adapter's maxBufferSize is ${max} bytes` };
    },
    setMaxBindingBytes(bytes: number) {
      const old = engine.maxBinding;
      engine.maxBinding = Math.min(bytes, engine.device.limits.maxStorageBufferBindingSize);
      return old;
    },
    setConvGemm(on: boolean) {
      const old = gemmConv;
      gemmConv = on;
      return old;
    },
    setFusion(on: boolean) {
      const old = fusion;
      fusion = on;
      return old;
    },
    sync() {
      while (deferred.length) {
        const st = deferred.shift()!;
        if (st.thunk) materialize({ st, shape: st.shape, strides: stridesOf(st.shape), offset: 0 });
      }
      return engine.sync();
    },
  };
  return backend;
}
