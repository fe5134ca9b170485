/**
 * @file The wasm backend's heap allocator (pure bookkeeping; the bytes live in
 * the Wasm memory). Blocks are 64-byte aligned; free blocks are split to fit
 * a request and coalesced with free neighbours, and binned by size (8 bins per
 * power of two), so a training loop's repeating sizes are reused exactly while
 * changing sizes do not fragment the heap into per-size pools. The top free
 * block returns to the "wilderness", which grows the memory on demand.
 */

interface Block {
  ptr: number;
  size: number;
  free: boolean;
  /** Bin while free. */
  bin: number;
}

const ALIGN = 64;

/** Bin of a block size: 8 bins per power of two. */
function binOf(size: number): number {
  const e = 31 - Math.clz32(size);
  const sub = e >= 3 ? Math.floor((size - 2 ** e) / 2 ** (e - 3)) : 0;
  return e * 8 + sub;
}

/** A first-fit-in-bin allocator with splitting and coalescing over an address range that can grow. */
export class Heap {
  #top: number;
  #bins: Set<Block>[] = [];
  #byStart = new Map<number, Block>();
  #byEnd = new Map<number, Block>();
  #live = 0;
  #peak = 0;
  readonly #grow: (end: number) => boolean;

  /**
   * Manages addresses from `base` up; `grow(end)` must make [base, end) usable (returning false when it
   * cannot).
   */
  constructor(base: number, grow: (end: number) => boolean) {
    this.#top = Math.ceil(base / ALIGN) * ALIGN;
    this.#grow = grow;
  }

  /** Bytes in allocated blocks. */
  get live(): number {
    return this.#live;
  }

  /** Highest `live` so far. */
  get peak(): number {
    return this.#peak;
  }

  /** Restarts peak tracking. */
  resetPeak(): void {
    this.#peak = this.#live;
  }

  /** End of the highest block (free or not): the heap's footprint. */
  get top(): number {
    return this.#top;
  }

  /** Allocates `bytes` (rounded up to 64); returns the address, or -1 when the memory cannot grow. */
  alloc(bytes: number): number {
    const size = Math.max(ALIGN, Math.ceil(bytes / ALIGN) * ALIGN);
    const b0 = binOf(size);
    let blk: Block | undefined;
    // The request's own bin may hold smaller blocks: first fit there; any block of a higher bin fits.
    const own = this.#bins[b0];
    if (own) {
      for (const c of own) {
        if (c.size >= size) {
          blk = c;
          break;
        }
      }
    }
    if (!blk) {
      for (let b = b0 + 1; b < this.#bins.length; b++) {
        const set = this.#bins[b];
        if (set && set.size) {
          blk = set.values().next().value as Block;
          break;
        }
      }
    }
    if (blk) {
      this.#unbin(blk);
      blk.free = false;
      if (blk.size - size >= ALIGN) {
        const rest: Block = { ptr: blk.ptr + size, size: blk.size - size, free: true, bin: -1 };
        this.#byEnd.delete(blk.ptr + blk.size);
        blk.size = size;
        this.#byEnd.set(blk.ptr + size, blk);
        this.#byStart.set(rest.ptr, rest);
        this.#byEnd.set(rest.ptr + rest.size, rest);
        this.#binIt(rest);
      }
    } else {
      // From the wilderness (a free block never touches it: freeing at the top lowers the top).
      const ptr = this.#top;
      if (!this.#grow(ptr + size)) return -1;
      blk = { ptr, size, free: false, bin: -1 };
      this.#byStart.set(ptr, blk);
      this.#byEnd.set(ptr + size, blk);
      this.#top = ptr + size;
    }
    this.#live += blk.size;
    if (this.#live > this.#peak) this.#peak = this.#live;
    return blk.ptr;
  }

  /** Frees the block at `ptr`, merging it with free neighbours. */
  free(ptr: number): void {
    const blk = this.#byStart.get(ptr);
    if (!blk || blk.free) throw new Error(`wasm heap: free of ${ptr}, which is not an allocated block`);
    this.#live -= blk.size;
    this.#byStart.delete(blk.ptr);
    this.#byEnd.delete(blk.ptr + blk.size);
    this.#addFree(blk.ptr, blk.size);
  }

  /** Size of the allocated block at `ptr`. */
  sizeOf(ptr: number): number {
    return this.#byStart.get(ptr)?.size ?? 0;
  }

  /** Inserts a free range, coalescing with the free blocks on either side (or the wilderness). */
  #addFree(ptr: number, size: number) {
    const next = this.#byStart.get(ptr + size);
    if (next && next.free) {
      this.#unbin(next);
      this.#byStart.delete(next.ptr);
      this.#byEnd.delete(next.ptr + next.size);
      size += next.size;
    }
    const prev = this.#byEnd.get(ptr);
    if (prev && prev.free) {
      this.#unbin(prev);
      this.#byStart.delete(prev.ptr);
      this.#byEnd.delete(prev.ptr + prev.size);
      ptr = prev.ptr;
      size += prev.size;
    }
    if (ptr + size === this.#top) {
      this.#top = ptr;
      return;
    }
    const blk: Block = { ptr, size, free: true, bin: -1 };
    this.#byStart.set(ptr, blk);
    this.#byEnd.set(ptr + size, blk);
    this.#binIt(blk);
  }

  #binIt(blk: Block) {
    blk.free = true;
    blk.bin = binOf(blk.size);
    (this.#bins[blk.bin] ??= new Set()).add(blk);
  }

  #unbin(blk: Block) {
    this.#bins[blk.bin]?.delete(blk);
    blk.bin = -1;
  }

  /** Checks the invariants (tests): blocks tile [base, top) without overlap and free blocks are binned. */
  check(base: number): void {
    const blocks = [...this.#byStart.values()].sort((a, b) => a.ptr - b.ptr);
    let at = Math.ceil(base / ALIGN) * ALIGN;
    let live = 0;
    let prevFree = false;
    for (const b of blocks) {
      if (b.ptr !== at) throw new Error(`wasm heap: gap or overlap at ${at} (next block ${b.ptr})`);
      if (this.#byEnd.get(b.ptr + b.size) !== b) throw new Error(`wasm heap: end index broken at ${b.ptr}`);
      if (b.free && prevFree) throw new Error(`wasm heap: adjacent free blocks at ${b.ptr}`);
      if (b.free !== (b.bin >= 0 && this.#bins[b.bin]?.has(b) === true)) {
        throw new Error(`wasm heap: bin broken at ${b.ptr}`);
      }
      if (!b.free) live += b.size;
      prevFree = b.free;
      at = b.ptr + b.size;
    }
    if (at !== this.#top) throw new Error(`wasm heap: blocks end at ${at}, top is ${this.#top}`);
    if (prevFree) throw new Error("wasm heap: a free block touches the wilderness");
    if (live !== this.#live) throw new Error(`wasm heap: live ${this.#live} but blocks hold ${live}`);
  }
}
