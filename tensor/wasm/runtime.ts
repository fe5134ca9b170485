/**
 * @file The wasm backend's runtime: one WebAssembly.Memory (shared between
 * worker threads when SharedArrayBuffer exists), a size-class heap allocator
 * that reuses freed blocks and grows the memory on demand, and a thread pool
 * that runs a kernel's chunks on every core.
 *
 * Dispatch protocol (lock-free, in the first bytes of the memory): the main
 * thread writes the task (kernel id, argument pointer, chunk count), then a
 * claim word `(generation << 20) | nextChunk` and bumps the generation.
 * Every thread, the main one included, claims chunks with compare-and-swap on
 * the claim word, so a late or descheduled worker never blocks progress and
 * can never run a chunk of a newer task with an older task's arguments (its
 * CAS fails on the generation bits). The main thread returns once the done
 * counter reaches the chunk count. Each chunk is computed by exactly one
 * thread with a fixed decomposition, so results do not depend on the number
 * of threads.
 */
import { DifflabError } from "../errors.ts";
import { assemble, type FuncDef, hasRelaxedSimd, hasSharedMemory } from "./emit.ts";
import { Heap } from "./heap.ts";
import { CONST_BASE, CONST_BYTES } from "./math.ts";

/** Bytes per Wasm page. */
const PAGE = 65536;
/** Control words (i32 indices). */
const GEN = 0, CLAIM = 1, DONE = 2, NCHUNK = 3, FN = 4, ARGS = 5, QUIT = 6, ERR = 7;
const CLOSED = -1;
/** Start of the argument area (bytes) and its size. */
const ARG_BASE = 256;
const ARG_BYTES = 2048;
/** Per-thread scratch blocks start here (after the constant table); the heap starts after them. */
const SCRATCH_BASE = CONST_BASE + CONST_BYTES;
/** Bytes of scratch per thread (packing buffers, partial tiles, reduction partials). */
export const SCRATCH_BYTES = 1 << 20;
const MAX_THREADS = 16;
/** First heap address. */
export const HEAP_BASE = SCRATCH_BASE + MAX_THREADS * SCRATCH_BYTES;
const GEN_MOD = 4095;
/** Polls of an idle worker before it sleeps (~0.1-0.2 ms): back-to-back ops then start without a wake-up. */
const SPIN = 100000;

/** A kernel entry point: (argument pointer, chunk index, thread id). */
export type KernelFn = (args: number, chunk: number, tid: number) => void;

const genBits = (g: number) => (g % GEN_MOD) << 20;

/** The source of each worker: instantiate the module on the shared memory, then claim chunks forever. */
const WORKER_SRC = `
let ctl, fns, tid, seen = 0;
const GEN=${GEN}, CLAIM=${CLAIM}, DONE=${DONE}, NCHUNK=${NCHUNK}, FN=${FN}, ARGS=${ARGS}, QUIT=${QUIT}, ERR=${ERR};
function start(msg) {
  const inst = new WebAssembly.Instance(msg.module, { env: { memory: msg.memory } });
  fns = msg.names.map((n) => inst.exports[n]);
  ctl = new Int32Array(msg.memory.buffer, 0, 16);
  tid = msg.tid;
  seen = Atomics.load(ctl, GEN);
  loop();
}
function loop() {
  for (;;) {
    let spins = 0;
    while (Atomics.load(ctl, GEN) === seen) {
      if (Atomics.load(ctl, QUIT)) return;
      if (++spins > ${SPIN}) { Atomics.wait(ctl, GEN, seen, 1000); spins = 0; }
    }
    const g = Atomics.load(ctl, GEN);
    seen = g;
    const f = fns[Atomics.load(ctl, FN)], args = Atomics.load(ctl, ARGS), n = Atomics.load(ctl, NCHUNK);
    const gb = (g % ${GEN_MOD}) << 20;
    for (;;) {
      const v = Atomics.load(ctl, CLAIM);
      if ((v & ~0xfffff) !== gb) break;
      const c = v & 0xfffff;
      if (c >= n) break;
      if (Atomics.compareExchange(ctl, CLAIM, v, v + 1) !== v) continue;
      // A trap must not leave the main thread waiting forever: flag it and count the chunk as done.
      try { f(args, c, tid); } catch (e) { Atomics.store(ctl, ERR, 1); }
      if (Atomics.add(ctl, DONE, 1) === n - 1) Atomics.notify(ctl, DONE);
    }
  }
}
`;

interface Block {
  ptr: number;
  cls: number;
}

/** Runtime state: memory, views, allocator, exports and threads. */
export class Runtime {
  /** The one memory every thread's instance imports. */
  readonly memory: WebAssembly.Memory;
  /** True when the memory is a SharedArrayBuffer (workers possible). */
  readonly shared: boolean;
  /** True when kernels use relaxed-SIMD FMA. */
  readonly relaxed: boolean;
  /** Exported kernels by id. */
  readonly fns: KernelFn[] = [];
  /** Kernel ids by export name. */
  readonly fnId = new Map<string, number>();
  /** Raw exports, for serial helpers with other signatures. */
  readonly exports: Record<string, unknown>;
  /** Threads in use, the calling one included. */
  threads = 1;
  #workers: { terminate(): unknown }[] = [];
  #gen = 0;
  #canWait = true;
  #heap: Heap;
  #views!: {
    u8: Uint8Array;
    i32: Int32Array;
    u32: Uint32Array;
    f32: Float32Array;
    f64: Float64Array;
  };
  #ctl: Int32Array;
  /** The compiled module (shared with the workers). */
  readonly module: WebAssembly.Module;

  private constructor(module: WebAssembly.Module, memory: WebAssembly.Memory, shared: boolean, relaxed: boolean) {
    this.module = module;
    this.memory = memory;
    this.shared = shared;
    this.relaxed = relaxed;
    const inst = new WebAssembly.Instance(module, { env: { memory } });
    this.exports = inst.exports as Record<string, unknown>;
    for (const [name, f] of Object.entries(inst.exports)) {
      if (typeof f === "function") {
        this.fnId.set(name, this.fns.length);
        this.fns.push(f as KernelFn);
      }
    }
    this.#heap = new Heap(HEAP_BASE, (end) => this.#ensure(end));
    this.#ctl = new Int32Array(memory.buffer, 0, 16);
    this.#refresh();
  }

  /** Builds the module from kernel definitions and starts `threads - 1` workers (1 = no workers). */
  static async create(
    build: (relaxed: boolean) => { funcs: FuncDef[]; consts: Uint8Array },
    opts: { threads?: number; shared?: boolean } = {},
  ): Promise<Runtime> {
    const shared = (opts.shared ?? true) && hasSharedMemory();
    const relaxed = hasRelaxedSimd();
    const minPages = Math.ceil((SCRATCH_BASE + MAX_THREADS * SCRATCH_BYTES) / PAGE) + 16;
    const maxPages = 65536;
    const { funcs, consts } = build(relaxed);
    const bytes = assemble(funcs, { shared, minPages, maxPages });
    const module = await WebAssembly.compile(bytes);
    const memory = new WebAssembly.Memory(
      { initial: minPages, maximum: maxPages, shared } as WebAssembly.MemoryDescriptor,
    );
    new Uint8Array(memory.buffer).set(consts, CONST_BASE);
    const rt = new Runtime(module, memory, shared, relaxed);
    const hw = typeof navigator !== "undefined" && navigator.hardwareConcurrency ? navigator.hardwareConcurrency : 1;
    const want = Math.max(1, Math.min(MAX_THREADS, opts.threads ?? hw));
    if (shared && want > 1) await rt.#startWorkers(want);
    return rt;
  }

  async #startWorkers(n: number) {
    const names = [...this.fnId.keys()];
    const g = globalThis as { Deno?: unknown; process?: { versions?: { node?: string } }; Worker?: unknown };
    const ready: Promise<void>[] = [];
    try {
      if (g.Deno !== undefined || g.process?.versions?.node) {
        // node:worker_threads lets the workers be unref'd, so an idle pool never keeps the process alive.
        const wt = await import("node:worker_threads");
        const src = `const { parentPort } = require("node:worker_threads");
          ${WORKER_SRC}
          parentPort.once("message", (msg) => { parentPort.postMessage("ready"); start(msg); });`;
        for (let t = 1; t < n; t++) {
          const w = new wt.Worker(src, { eval: true });
          ready.push(
            new Promise((res, rej) => {
              w.once("message", () => res());
              w.once("error", rej);
            }),
          );
          w.postMessage({ module: this.module, memory: this.memory, names, tid: t });
          this.#workers.push(w);
        }
        await Promise.all(ready);
        // Unref only once started: an unref'd worker's pending message would not keep the loop alive.
        for (const w of this.#workers) (w as unknown as { unref(): void }).unref();
      } else if (typeof g.Worker === "function") {
        const src = `${WORKER_SRC}
          self.onmessage = (e) => { self.postMessage("ready"); start(e.data); };`;
        const url = URL.createObjectURL(new Blob([src], { type: "text/javascript" }));
        for (let t = 1; t < n; t++) {
          const w = new Worker(url);
          ready.push(
            new Promise((res, rej) => {
              w.onmessage = () => res();
              w.onerror = (e) => rej(e);
            }),
          );
          w.postMessage({ module: this.module, memory: this.memory, names, tid: t });
          this.#workers.push(w);
        }
        await Promise.all(ready);
      } else return;
      this.threads = n;
    } catch {
      // No usable workers here (e.g. a sandbox without them): run on the calling thread only.
      for (const w of this.#workers) w.terminate();
      this.#workers = [];
      this.threads = 1;
    }
  }

  /** Stops the workers (the pool is unusable afterwards except single-threaded). */
  shutdown(): void {
    Atomics.store(this.#ctl, QUIT, 1);
    Atomics.add(this.#ctl, GEN, 1);
    Atomics.notify(this.#ctl, GEN);
    for (const w of this.#workers) w.terminate();
    this.#workers = [];
    this.threads = 1;
  }

  // ------------------------------------------------------------ views

  #refresh() {
    const b = this.memory.buffer;
    this.#views = {
      u8: new Uint8Array(b),
      i32: new Int32Array(b),
      u32: new Uint32Array(b),
      f32: new Float32Array(b),
      f64: new Float64Array(b),
    };
  }

  /** Byte view of the whole memory (refreshed after growth). */
  get u8(): Uint8Array {
    return this.#views.u8;
  }
  /** i32 view of the whole memory. */
  get i32(): Int32Array {
    return this.#views.i32;
  }
  /** u32 view of the whole memory. */
  get u32(): Uint32Array {
    return this.#views.u32;
  }
  /** f32 view of the whole memory. */
  get f32(): Float32Array {
    return this.#views.f32;
  }
  /** f64 view of the whole memory. */
  get f64(): Float64Array {
    return this.#views.f64;
  }

  /** Scratch block of thread `tid` (bytes). */
  scratch(tid: number): number {
    return SCRATCH_BASE + tid * SCRATCH_BYTES;
  }

  // ------------------------------------------------------------ allocator

  /** Allocates `bytes` (64-byte aligned), reusing freed memory or growing the Wasm memory. */
  alloc(bytes: number): number {
    const ptr = this.#heap.alloc(bytes);
    if (ptr < 0) {
      throw new DifflabError(
        `wasm: out of memory allocating ${bytes} bytes (heap ${(this.heapBytes / 2 ** 20).toFixed(0)} MiB, ` +
          `${(this.#heap.live / 2 ** 20).toFixed(0)} MiB live; the Wasm heap is limited to 4 GiB)`,
      );
    }
    return ptr;
  }

  /** Frees a block from {@link alloc} (`bytes` as requested, for the caller's bookkeeping only). */
  free(ptr: number, _bytes?: number): void {
    this.#heap.free(ptr);
  }

  /** Grows the memory so [0, end + 64) is mapped: kernels may read (never write) 64 bytes past a block. */
  #ensure(end: number): boolean {
    const have = this.memory.buffer.byteLength;
    if (end + 64 <= have) return true;
    const need = Math.ceil((end + 64 - have) / PAGE);
    const cur = have / PAGE;
    // Grow geometrically so a growing model does not re-grow every step.
    const grow = Math.max(need, Math.min(Math.ceil(cur / 4), 65536 - cur));
    try {
      this.memory.grow(grow);
    } catch {
      try {
        this.memory.grow(need);
      } catch {
        return false;
      }
    }
    this.#refresh();
    return true;
  }

  /** Bytes currently allocated. */
  get bytesLive(): number {
    return this.#heap.live;
  }

  /** Highest `bytesLive` so far (reset with {@link resetPeak}). */
  get peakBytes(): number {
    return this.#heap.peak;
  }

  /** Restarts peak tracking from the current live bytes. */
  resetPeak(): void {
    this.#heap.resetPeak();
  }

  /** The allocator (tests check its invariants). */
  get heap(): Heap {
    return this.#heap;
  }

  /** Bytes of memory the heap has reserved from the Wasm memory. */
  get heapBytes(): number {
    return this.memory.buffer.byteLength;
  }

  // ------------------------------------------------------------ dispatch

  /** Writes kernel arguments (i32 words; numbers that are not integers are stored as f32) and returns their pointer. */
  args(words: readonly number[], floats: readonly number[] = []): number {
    if ((words.length + floats.length) * 4 > ARG_BYTES) throw new DifflabError("wasm: too many kernel arguments");
    const i32 = this.i32, f32 = this.f32;
    const base = ARG_BASE >> 2;
    for (let i = 0; i < words.length; i++) i32[base + i] = words[i];
    for (let i = 0; i < floats.length; i++) f32[base + words.length + i] = floats[i];
    return ARG_BASE;
  }

  /** Id of a kernel (for repeated dispatch without a name lookup). */
  id(name: string): number {
    const id = this.fnId.get(name);
    if (id === undefined) throw new DifflabError(`wasm: no kernel named ${name}`);
    return id;
  }

  /**
   * Runs chunks `0..n-1` of kernel `name` (or id). With `parallel` and workers available the chunks are shared
   * by every thread; otherwise the main thread runs them in order.
   */
  run(name: string | number, args: number, n: number, parallel = true): void {
    const id = typeof name === "number" ? name : this.fnId.get(name);
    if (id === undefined) throw new DifflabError(`wasm: no kernel named ${name}`);
    const f = this.fns[id];
    if (n <= 0) return;
    if (!parallel || this.threads === 1 || n === 1) {
      for (let c = 0; c < n; c++) f(args, c, 0);
      return;
    }
    if (n > 0xfffff) throw new DifflabError(`wasm: ${n} chunks exceed the dispatcher's limit`);
    const ctl = this.#ctl;
    const g = ++this.#gen;
    Atomics.store(ctl, CLAIM, CLOSED);
    Atomics.store(ctl, DONE, 0);
    Atomics.store(ctl, FN, id);
    Atomics.store(ctl, ARGS, args);
    Atomics.store(ctl, NCHUNK, n);
    const gb = genBits(g);
    Atomics.store(ctl, CLAIM, gb);
    Atomics.store(ctl, GEN, g);
    Atomics.notify(ctl, GEN);
    let mine = 0;
    let failure: unknown = null;
    for (;;) {
      const v = Atomics.load(ctl, CLAIM);
      const c = v & 0xfffff;
      if (c >= n) break;
      if (Atomics.compareExchange(ctl, CLAIM, v, v + 1) !== v) continue;
      // After a failure keep claiming (without running) so the task drains and the workers finish.
      if (failure === null) {
        try {
          f(args, c, 0);
        } catch (e) {
          failure = e;
        }
      }
      mine++;
    }
    Atomics.add(ctl, DONE, mine);
    // The remaining chunks are running on other threads: spin briefly, then sleep until the last one
    // notifies (where the main thread may block; browsers' main threads keep spinning).
    let spins = 0;
    for (let d = Atomics.load(ctl, DONE); d < n; d = Atomics.load(ctl, DONE)) {
      if (++spins > 2000 && this.#canWait) {
        try {
          Atomics.wait(ctl, DONE, d, 1);
        } catch {
          this.#canWait = false;
        }
      }
    }
    Atomics.store(ctl, CLAIM, CLOSED);
    if (failure !== null) throw failure;
    if (Atomics.exchange(ctl, ERR, 0)) throw new DifflabError(`wasm: kernel ${name} trapped in a worker thread`);
  }
}
