/**
 * @file The WebGPU execution engine: device and limits, a pipeline cache keyed
 * by kernel (never by shape), a size-class buffer pool, per-dispatch uniforms
 * packed into one arena bound with dynamic offsets, and deferred submission.
 *
 * Dispatches are recorded into one compute pass and submitted only when a
 * read needs the results, when the uniform arena fills up or after
 * `flushEvery` dispatches: on llvmpipe each GPU wait costs ~11 ms and each
 * submit ~50 µs, so batching is most of the per-op cost.
 *
 * Pool safety: a buffer released while dispatches that read it are still
 * unsubmitted may be reused as the *output* of a later dispatch (dispatches
 * run in order), but not as the target of `queue.writeBuffer` (which would
 * run before the whole pending batch). Released buffers therefore wait on a
 * "dirty" list that only kernels may use until the next submit.
 */
import { DifflabError, fmtShape } from "../errors.ts";

/** Options of the engine (mostly for tests that need small limits). */
export interface EngineOptions {
  /** Caps the bytes one storage binding may cover (default: the device limit). */
  maxBindingBytes?: number;
  /** Submit after this many recorded dispatches (default 64). */
  flushEvery?: number;
  /** Bytes of free buffers the pool may keep before destroying them (default 1 GiB). */
  poolBytes?: number;
}

/** A storage binding: a window of a buffer. */
export interface Binding {
  buf: GPUBuffer;
  offset: number;
  size: number;
}

/** A compiled kernel and the layout it was compiled for. */
export interface Pipe {
  readonly key: string;
  readonly pipeline: GPUComputePipeline;
  readonly layout: GPUBindGroupLayout;
  readonly nOut: number;
  readonly nIn: number;
  readonly flag: boolean;
}

const STORAGE_USAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
/** Bytes each dispatch's uniform binding covers (its struct must fit). */
export const UNIFORM_BYTES = 1024;
const ARENA_BYTES = 256 * 1024;

/** Size classes: four per octave above 256 bytes, so at most 25% is wasted. */
export function sizeClass(bytes: number): number {
  if (bytes <= 256) return 256;
  const p = 2 ** Math.floor(Math.log2(bytes));
  const q = p / 4;
  return Math.ceil(bytes / q) * q;
}

let bufferIds = 0;
const ids = new WeakMap<GPUBuffer, number>();
function idOf(b: GPUBuffer): number {
  let i = ids.get(b);
  if (i === undefined) ids.set(b, i = ++bufferIds);
  return i;
}

/** Owns the device and everything needed to record, submit and read work. */
export class Engine {
  readonly device: GPUDevice;
  readonly adapterInfo: GPUAdapterInfo;
  readonly hasF16: boolean;
  /** Bytes one storage binding may cover. */
  maxBinding: number;
  readonly maxBufferSize: number;
  /** Workgroups per grid dimension (settable below the device limit to test 2-D grids). */
  maxWorkgroups: number;
  readonly maxStorageBuffers: number;
  readonly storageAlign: number;
  readonly uniformAlign: number;
  flushEvery: number;
  poolBytes: number;
  #lost: string | null = null;
  #error: string | null = null;
  #encoder: GPUCommandEncoder | null = null;
  #pass: GPUComputePassEncoder | null = null;
  #recorded = 0;
  #arena: GPUBuffer;
  #arenaHost = new Uint32Array(ARENA_BYTES / 4);
  #arenaCursor = 0;
  #pipes = new Map<string, Pipe>();
  #layouts = new Map<string, [GPUBindGroupLayout, GPUPipelineLayout]>();
  #bindGroups = new Map<string, GPUBindGroup>();
  #clean = new Map<number, GPUBuffer[]>();
  #dirty: [number, GPUBuffer][] = [];
  #pooled = 0;
  #flagBuf: GPUBuffer;
  /** Messages of index errors seen by kernels since the last read (code -> message). */
  #flagMessages = new Map<number, string>();
  /** Number of dispatches recorded since creation (for tests and benchmarks). */
  dispatches = 0;
  /** Number of submits since creation. */
  submits = 0;
  #prof:
    | { qs: GPUQuerySet; keys: string[]; pending: Promise<void>[]; stats: Map<string, { n: number; ms: number }> }
    | null = null;

  private constructor(adapter: GPUAdapter, device: GPUDevice, opts: EngineOptions) {
    this.device = device;
    this.adapterInfo = adapter.info;
    this.hasF16 = device.features.has("shader-f16");
    const lim = device.limits;
    this.maxBinding = Math.min(lim.maxStorageBufferBindingSize, opts.maxBindingBytes ?? Infinity);
    this.maxBufferSize = lim.maxBufferSize;
    this.maxWorkgroups = lim.maxComputeWorkgroupsPerDimension;
    this.maxStorageBuffers = lim.maxStorageBuffersPerShaderStage;
    this.storageAlign = lim.minStorageBufferOffsetAlignment;
    this.uniformAlign = lim.minUniformBufferOffsetAlignment;
    this.flushEvery = opts.flushEvery ?? 64;
    this.poolBytes = opts.poolBytes ?? 2 ** 30;
    this.#arena = device.createBuffer({
      size: ARENA_BYTES + UNIFORM_BYTES,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
    this.#flagBuf = device.createBuffer({ size: 16, usage: STORAGE_USAGE });
    device.lost.then((info) => {
      this.#lost = `${info.reason}: ${info.message}`;
    });
    device.addEventListener("uncapturederror", (e) => {
      const msg = (e as GPUUncapturedErrorEvent).error.message;
      if (!this.#error) this.#error = msg;
    });
  }

  /** Requests the adapter and a device with the adapter's full limits. */
  static async create(opts: EngineOptions = {}): Promise<Engine> {
    if (typeof navigator === "undefined" || !navigator.gpu) {
      throw new DifflabError("webgpu: navigator.gpu is not available in this runtime");
    }
    const adapter = await navigator.gpu.requestAdapter();
    if (!adapter) {
      const env = typeof Deno !== "undefined" ? Deno.env.get("DENO_WEBGPU_BACKEND") : undefined;
      throw new DifflabError(
        `webgpu: no adapter found (navigator.gpu.requestAdapter() returned null; DENO_WEBGPU_BACKEND=${
          JSON.stringify(env)
        }; an empty value disables every backend)`,
      );
    }
    const want = [
      "maxStorageBufferBindingSize",
      "maxBufferSize",
      "maxStorageBuffersPerShaderStage",
      "maxComputeWorkgroupsPerDimension",
      "maxComputeInvocationsPerWorkgroup",
      "maxComputeWorkgroupSizeX",
      "maxComputeWorkgroupSizeY",
      "maxComputeWorkgroupStorageSize",
      "minStorageBufferOffsetAlignment",
      "minUniformBufferOffsetAlignment",
      "maxDynamicUniformBuffersPerPipelineLayout",
    ] as const;
    const requiredLimits: Record<string, number> = {};
    for (const k of want) requiredLimits[k] = adapter.limits[k];
    const requiredFeatures: GPUFeatureName[] = adapter.features.has("shader-f16") ? ["shader-f16"] : [];
    if (adapter.features.has("timestamp-query")) requiredFeatures.push("timestamp-query");
    const device = await adapter.requestDevice({ requiredLimits, requiredFeatures });
    return new Engine(adapter, device, opts);
  }

  /** Throws if the device is lost or an earlier command failed validation. */
  check(op: string): void {
    if (this.#lost !== null) {
      throw new DifflabError(
        `webgpu: ${op}: the GPU device was lost (${this.#lost}); create tensors again after setBackend`,
      );
    }
    if (this.#error !== null) {
      const e = this.#error;
      this.#error = null;
      throw new DifflabError(`webgpu: ${op}: a GPU command failed: ${e}`);
    }
  }

  // ------------------------------------------------------------- pipelines

  #layout(nOut: number, nIn: number, flag: boolean): [GPUBindGroupLayout, GPUPipelineLayout] {
    const key = `${nOut}/${nIn}/${flag}`;
    let l = this.#layouts.get(key);
    if (!l) {
      const entries: GPUBindGroupLayoutEntry[] = [{
        binding: 0,
        visibility: GPUShaderStage.COMPUTE,
        buffer: { type: "uniform", hasDynamicOffset: true, minBindingSize: UNIFORM_BYTES },
      }];
      for (let i = 0; i < nOut + nIn + (flag ? 1 : 0); i++) {
        const ro = i >= nOut && i < nOut + nIn;
        entries.push({
          binding: i + 1,
          visibility: GPUShaderStage.COMPUTE,
          buffer: { type: ro ? "read-only-storage" : "storage" },
        });
      }
      const bgl = this.device.createBindGroupLayout({ entries });
      l = [bgl, this.device.createPipelineLayout({ bindGroupLayouts: [bgl] })];
      this.#layouts.set(key, l);
    }
    return l;
  }

  /**
   * The pipeline for `key`, compiling `source()` on first use. Bindings are
   * 0 = uniforms, then `nOut` read-write outputs, `nIn` read-only inputs and,
   * when `flag` is set, the shared index-error flag.
   */
  pipe(key: string, nOut: number, nIn: number, flag: boolean, source: () => string): Pipe {
    let p = this.#pipes.get(key);
    if (p) return p;
    if (nOut + nIn + (flag ? 1 : 0) > this.maxStorageBuffers) {
      throw new DifflabError(
        `webgpu: kernel ${key.slice(0, 60)} needs ${
          nOut + nIn
        } storage buffers but maxStorageBuffersPerShaderStage is ${this.maxStorageBuffers}`,
      );
    }
    const code = source();
    const [layout, pl] = this.#layout(nOut, nIn, flag);
    const module = this.device.createShaderModule({ code, label: key.slice(0, 80) });
    const pipeline = this.device.createComputePipeline({
      layout: pl,
      compute: { module, entryPoint: "main" },
      label: key.slice(0, 80),
    });
    p = { key, pipeline, layout, nOut, nIn, flag };
    this.#pipes.set(key, p);
    return p;
  }

  /** Number of compiled pipelines. */
  get pipelineCount(): number {
    return this.#pipes.size;
  }

  /** Registers the message a kernel's error code stands for (reported at the next read). */
  flagMessage(code: number, message: string): void {
    this.#flagMessages.set(code, message);
  }

  // ------------------------------------------------------------- recording

  /**
   * Records one dispatch. `uniforms` is the kernel's uniform struct as u32
   * words; `bindings` are outputs then inputs; `groups` is split over two
   * dimensions by the caller (see `grid`).
   */
  dispatch(
    p: Pipe,
    uniforms: Uint32Array | number[],
    bindings: Binding[],
    groups: readonly [number, number],
    label = "",
  ): void {
    this.check(p.key.slice(0, 40));
    if (groups[0] === 0 || groups[1] === 0) return;
    const words = uniforms.length;
    if (words * 4 > UNIFORM_BYTES) {
      throw new DifflabError(`webgpu: kernel ${p.key.slice(0, 60)} has too many uniforms (${words})`);
    }
    const aligned = Math.ceil(this.#arenaCursor / this.uniformAlign) * this.uniformAlign;
    if (aligned + UNIFORM_BYTES > ARENA_BYTES + UNIFORM_BYTES || this.#recorded >= this.flushEvery) this.flush();
    const off = Math.ceil(this.#arenaCursor / this.uniformAlign) * this.uniformAlign;
    this.#arenaHost.set(uniforms, off / 4);
    this.#arenaCursor = off + words * 4;
    const bg = this.#bindGroup(p, bindings);
    if (this.#prof) {
      // Profiling: one pass per dispatch, timestamped at its start and end.
      if (this.#prof.keys.length >= 2048) this.flush();
      if (this.#pass) this.#pass.end();
      this.#encoder ??= this.device.createCommandEncoder();
      const i = this.#prof.keys.length * 2;
      this.#prof.keys.push(label ? `${p.key} ${label}` : p.key);
      this.#pass = this.#encoder.beginComputePass({
        timestampWrites: { querySet: this.#prof.qs, beginningOfPassWriteIndex: i, endOfPassWriteIndex: i + 1 },
      });
    }
    if (!this.#pass) {
      this.#encoder ??= this.device.createCommandEncoder();
      this.#pass = this.#encoder.beginComputePass();
    }
    this.#pass.setPipeline(p.pipeline);
    this.#pass.setBindGroup(0, bg, [off]);
    this.#pass.dispatchWorkgroups(groups[0], groups[1]);
    this.#recorded++;
    this.dispatches++;
  }

  #bindGroup(p: Pipe, bindings: Binding[]): GPUBindGroup {
    let key = `${p.nOut}/${p.nIn}/${p.flag}`;
    for (const b of bindings) key += `|${idOf(b.buf)}:${b.offset}:${b.size}`;
    let bg = this.#bindGroups.get(key);
    if (!bg) {
      const entries: GPUBindGroupEntry[] = [{
        binding: 0,
        resource: { buffer: this.#arena, offset: 0, size: UNIFORM_BYTES },
      }];
      bindings.forEach((b, i) =>
        entries.push({ binding: i + 1, resource: { buffer: b.buf, offset: b.offset, size: b.size } })
      );
      if (p.flag) entries.push({ binding: bindings.length + 1, resource: { buffer: this.#flagBuf } });
      bg = this.device.createBindGroup({ layout: p.layout, entries });
      if (this.#bindGroups.size > 4096) this.#bindGroups.clear();
      this.#bindGroups.set(key, bg);
    }
    return bg;
  }

  /** Workgroup grid for `groups` workgroups, split over x and y to respect maxComputeWorkgroupsPerDimension. */
  grid(groups: number, what: string, shape: readonly number[]): [number, number] {
    const gx = Math.min(groups, this.maxWorkgroups);
    const gy = Math.ceil(groups / Math.max(gx, 1));
    if (gy > this.maxWorkgroups) {
      throw new DifflabError(
        `webgpu: ${what} of shape ${
          fmtShape(shape)
        } needs ${groups} workgroups, more than maxComputeWorkgroupsPerDimension² (${this.maxWorkgroups}²)`,
      );
    }
    return [gx, gy];
  }

  /** Submits everything recorded so far. */
  flush(): void {
    let afterSubmit: (() => void) | null = null;
    if (this.#pass) {
      this.#pass.end();
      this.#pass = null;
    }
    if (this.#encoder && this.#prof && this.#prof.keys.length) {
      const prof = this.#prof;
      const n = prof.keys.length * 2;
      const res = this.device.createBuffer({
        size: n * 8,
        usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
      });
      const rb = this.device.createBuffer({ size: n * 8, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
      this.#encoder.resolveQuerySet(prof.qs, 0, n, res, 0);
      this.#encoder.copyBufferToBuffer(res, 0, rb, 0, n * 8);
      const keys = prof.keys;
      prof.keys = [];
      afterSubmit = () =>
        prof.pending.push(
          rb.mapAsync(GPUMapMode.READ).then(() => {
            const t = new BigUint64Array(rb.getMappedRange());
            keys.forEach((k, j) => {
              const e = prof.stats.get(k) ?? { n: 0, ms: 0 };
              e.n++;
              e.ms += Number(t[2 * j + 1] - t[2 * j]) / 1e6;
              prof.stats.set(k, e);
            });
            rb.unmap();
            rb.destroy();
            res.destroy();
          }),
        );
    }
    if (this.#encoder) {
      if (this.#arenaCursor > 0) {
        this.device.queue.writeBuffer(this.#arena, 0, this.#arenaHost.buffer, 0, Math.ceil(this.#arenaCursor / 4) * 4);
      }
      this.device.queue.submit([this.#encoder.finish()]);
      this.#encoder = null;
      this.submits++;
      afterSubmit?.();
    }
    this.#arenaCursor = 0;
    this.#recorded = 0;
    // Everything released before this submit is now safe for writeBuffer too.
    for (const [c, b] of this.#dirty) this.#toClean(c, b);
    this.#dirty = [];
  }

  // ------------------------------------------------------------- memory

  /**
   * A storage buffer of at least `bytes`. `forUpload` buffers come only from
   * the clean list (safe to fill with writeBuffer before pending work runs).
   */
  alloc(bytes: number, forUpload: boolean, what: () => string): GPUBuffer {
    const c = sizeClass(Math.max(bytes, 4));
    if (c > this.maxBufferSize) {
      const exact = Math.ceil(bytes / 4) * 4;
      if (exact > this.maxBufferSize) {
        throw new DifflabError(
          `webgpu: ${what()} needs ${bytes} bytes, more than maxBufferSize (${this.maxBufferSize})`,
        );
      }
      return this.#create(exact);
    }
    const list = this.#clean.get(c);
    if (list && list.length) {
      this.#pooled -= c;
      return list.pop()!;
    }
    if (!forUpload) {
      for (let i = this.#dirty.length - 1; i >= 0; i--) {
        if (this.#dirty[i][0] === c) {
          const b = this.#dirty[i][1];
          this.#dirty.splice(i, 1);
          this.#pooled -= c;
          return b;
        }
      }
    }
    return this.#create(c);
  }

  #create(size: number): GPUBuffer {
    this.check("alloc");
    try {
      return this.device.createBuffer({ size, usage: STORAGE_USAGE });
    } catch (e) {
      throw new DifflabError(`webgpu: could not allocate a ${size}-byte buffer: ${(e as Error).message}`);
    }
  }

  /** Returns a buffer to the pool (it may still be read by unsubmitted work). */
  free(b: GPUBuffer): void {
    const c = b.size;
    this.#pooled += c;
    this.#dirty.push([c, b]);
    if (this.#pooled > this.poolBytes) this.#trim();
  }

  #toClean(c: number, b: GPUBuffer) {
    let list = this.#clean.get(c);
    if (!list) this.#clean.set(c, list = []);
    list.push(b);
  }

  #trim() {
    // Destroying a buffer that pending work still reads is allowed only after submit.
    this.flush();
    for (const [c, list] of [...this.#clean.entries()].sort((a, b) => b[0] - a[0])) {
      while (list.length && this.#pooled > this.poolBytes / 2) {
        list.pop()!.destroy();
        this.#pooled -= c;
      }
    }
    this.#bindGroups.clear();
  }

  /** Bytes held by free pooled buffers. */
  get pooledBytes(): number {
    return this.#pooled;
  }

  /** Uploads host bytes into a fresh buffer. */
  upload(data: ArrayBufferView, what: () => string): GPUBuffer {
    const bytes = Math.ceil(data.byteLength / 4) * 4;
    const buf = this.alloc(bytes, true, what);
    if (data.byteLength > 0) {
      if (data.byteLength % 4 === 0) {
        this.device.queue.writeBuffer(buf, 0, data.buffer as ArrayBuffer, data.byteOffset, data.byteLength);
      } else {
        const padded = new Uint8Array(bytes);
        padded.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
        this.device.queue.writeBuffer(buf, 0, padded);
      }
    }
    return buf;
  }

  /** Reads `bytes` bytes at `offset` of `src` (offset and size multiples of 4). */
  async read(src: GPUBuffer, offset: number, bytes: number): Promise<ArrayBuffer> {
    this.check("read");
    const size = Math.max(4, Math.ceil(bytes / 4) * 4);
    const staging = this.device.createBuffer({
      size: size + 16,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    if (!this.#encoder) this.#encoder = this.device.createCommandEncoder();
    if (this.#pass) {
      this.#pass.end();
      this.#pass = null;
    }
    if (bytes > 0) this.#encoder.copyBufferToBuffer(src, offset, staging, 16, size);
    this.#encoder.copyBufferToBuffer(this.#flagBuf, 0, staging, 0, 16);
    this.flush();
    try {
      await staging.mapAsync(GPUMapMode.READ);
    } catch (e) {
      staging.destroy();
      // A destroyed device fails the map before its `lost` promise settles: give it a moment, so
      // the error says the device was lost rather than a bare validation error.
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([this.device.lost, new Promise((r) => (timer = setTimeout(r, 200)))]);
      clearTimeout(timer);
      this.check("read");
      throw new DifflabError(`webgpu: reading a buffer failed: ${(e as Error).message}`);
    }
    const all = staging.getMappedRange().slice(0);
    staging.unmap();
    staging.destroy();
    this.check("read");
    const code = new Uint32Array(all, 0, 1)[0];
    if (code !== 0) {
      this.device.queue.writeBuffer(this.#flagBuf, 0, new Uint32Array(4));
      throw new DifflabError(
        `webgpu: ${this.#flagMessages.get(code) ?? `kernel error code ${code}`} (detected when reading results)`,
      );
    }
    return all.slice(16, 16 + bytes);
  }

  /** Starts timing every dispatch with timestamp queries (one pass per dispatch; for tuning only). */
  startProfile(): void {
    if (!this.device.features.has("timestamp-query")) {
      throw new DifflabError("webgpu: this adapter has no timestamp-query");
    }
    this.flush();
    this.#prof = {
      qs: this.device.createQuerySet({ type: "timestamp", count: 4096 }),
      keys: [],
      pending: [],
      stats: new Map(),
    };
  }

  /** Stops profiling and returns GPU milliseconds and dispatch counts per kernel key. */
  async stopProfile(): Promise<Map<string, { n: number; ms: number }>> {
    const prof = this.#prof;
    if (!prof) return new Map();
    this.flush();
    await Promise.all(prof.pending);
    this.#prof = null;
    prof.qs.destroy();
    return prof.stats;
  }

  /** Waits until all submitted work has finished. */
  async sync(): Promise<void> {
    this.flush();
    await this.device.queue.onSubmittedWorkDone();
    this.check("sync");
  }
}
