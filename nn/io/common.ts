/**
 * @file Helpers shared by the checkpoint readers: errors naming the file, file-dtype tables and
 * conversion to Tensor dtypes, and random-access byte sources (memory or an open file).
 * @module
 */
import { DifflabError } from "../../tensor/errors.ts";
import type { DType, TypedArray } from "../../tensor/dtype.ts";

// ------------------------------------------------------------------ shared helpers

/** Bytes read per file read call when streaming tensor data. */
export const CHUNK = 1 << 24;

/** True when the runtime has Float16Array (F16 then loads as f16, otherwise widened to f32). */
export const HAS_F16 = typeof Float16Array !== "undefined";
/** Host byte order; file data is little-endian. */
export const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** Throws a DifflabError whose message starts with the file name. */
export function fail(file: string, msg: string): never {
  throw new DifflabError(`${file}: ${msg}`);
}

/** Wraps a non-library error (I/O, decoding) so callers always see a DifflabError naming the file. */
export function wrap(file: string, what: string, e: unknown): never {
  if (e instanceof DifflabError) throw e;
  const m = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
  throw new DifflabError(`${file}: ${what}: ${m}`);
}

/** Defines an own property, so a key such as "__proto__" cannot reach the prototype. */
export function put<T>(rec: Record<string, T>, key: string, value: T): void {
  Object.defineProperty(rec, key, { value, enumerable: true, writable: true, configurable: true });
}

/** Own-property test that ignores the prototype chain. */
export function hasOwn(o: object, k: string): boolean {
  return Object.prototype.hasOwnProperty.call(o, k);
}

/** Source file element kinds, shared by safetensors dtypes and torch storages. */
/** Element kinds found in checkpoint files (safetensors dtypes; torch storages map onto them). */
export type FileDType =
  | "F64"
  | "F32"
  | "F16"
  | "BF16"
  | "F8_E4M3"
  | "F8_E5M2"
  | "I64"
  | "I32"
  | "I16"
  | "I8"
  | "U64"
  | "U32"
  | "U16"
  | "U8"
  | "BOOL";

/** Bytes per element of each file dtype. */
export const FILE_DTYPE_BYTES: Record<FileDType, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  F8_E4M3: 1,
  F8_E5M2: 1,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
};

/** True for a known file dtype name. */
export function isFileDType(s: unknown): s is FileDType {
  return typeof s === "string" && hasOwn(FILE_DTYPE_BYTES, s);
}

/** The Tensor dtype a file dtype loads as (see the module table). */
export function targetDType(d: FileDType): DType {
  switch (d) {
    case "F64":
      return "f64";
    case "F32":
    case "BF16":
    case "F8_E4M3":
    case "F8_E5M2":
      return "f32";
    case "F16":
      return HAS_F16 ? "f16" : "f32";
    case "U32":
    case "U64":
      return "u32";
    case "BOOL":
      return "bool";
    default:
      return "i32";
  }
}

/** Allocates a zeroed host array of a Tensor dtype. */
export function allocTarget(d: DType, n: number): TypedArray {
  switch (d) {
    case "f64":
      return new Float64Array(n);
    case "f16":
      return new Float16Array(n);
    case "i32":
      return new Int32Array(n);
    case "u32":
      return new Uint32Array(n);
    case "bool":
      return new Uint8Array(n);
    default:
      return new Float32Array(n);
  }
}

/** True when the file bytes can be copied into the target array unchanged. */
export function isVerbatim(d: FileDType): boolean {
  if (!LITTLE_ENDIAN && FILE_DTYPE_BYTES[d] > 1) return false;
  return d === "F64" || d === "F32" || d === "I32" || d === "U32" || (d === "F16" && HAS_F16);
}

const f8e4m3 = /* @__PURE__ */ (() => {
  const t = new Float32Array(256);
  for (let b = 0; b < 256; b++) {
    const s = b & 0x80 ? -1 : 1, e = (b >> 3) & 0xf, m = b & 7;
    if (e === 15 && m === 7) t[b] = NaN;
    else if (e === 0) t[b] = s * (m / 8) * 2 ** -6;
    else t[b] = s * (1 + m / 8) * 2 ** (e - 7);
  }
  return t;
})();
const f8e5m2 = /* @__PURE__ */ (() => {
  const t = new Float32Array(256);
  for (let b = 0; b < 256; b++) {
    const s = b & 0x80 ? -1 : 1, e = (b >> 2) & 0x1f, m = b & 3;
    if (e === 31) t[b] = m === 0 ? s * Infinity : NaN;
    else if (e === 0) t[b] = s * (m / 4) * 2 ** -14;
    else t[b] = s * (1 + m / 4) * 2 ** (e - 15);
  }
  return t;
})();

/**
 * Converts `count` little-endian elements of file dtype `d` from `src` into `dst[at..]`.
 * `what` names the tensor for range errors.
 */
export function convertInto(
  file: string,
  what: string,
  d: FileDType,
  src: Uint8Array,
  dst: TypedArray,
  at: number,
  count: number,
): void {
  const dv = new DataView(src.buffer, src.byteOffset, src.byteLength);
  switch (d) {
    case "F64":
      for (let i = 0; i < count; i++) dst[at + i] = dv.getFloat64(8 * i, true);
      return;
    case "F32":
      for (let i = 0; i < count; i++) dst[at + i] = dv.getFloat32(4 * i, true);
      return;
    case "F16":
      for (let i = 0; i < count; i++) dst[at + i] = halfToFloat(dv.getUint16(2 * i, true));
      return;
    case "BF16": {
      const u = new Uint32Array(1), f = new Float32Array(u.buffer);
      for (let i = 0; i < count; i++) {
        u[0] = dv.getUint16(2 * i, true) << 16;
        dst[at + i] = f[0];
      }
      return;
    }
    case "F8_E4M3":
      for (let i = 0; i < count; i++) dst[at + i] = f8e4m3[src[i]];
      return;
    case "F8_E5M2":
      for (let i = 0; i < count; i++) dst[at + i] = f8e5m2[src[i]];
      return;
    case "I64":
      for (let i = 0; i < count; i++) {
        const lo = dv.getUint32(8 * i, true), hi = dv.getInt32(8 * i + 4, true);
        // In range for i32 exactly when the high word is the sign extension of the low word.
        if (hi !== (lo & 0x80000000 ? -1 : 0)) {
          const v = dv.getBigInt64(8 * i, true);
          fail(file, `${what}: I64 value ${v} at element ${at + i} does not fit in i32`);
        }
        dst[at + i] = lo | 0;
      }
      return;
    case "U64":
      for (let i = 0; i < count; i++) {
        if (dv.getUint32(8 * i + 4, true) !== 0) {
          const v = dv.getBigUint64(8 * i, true);
          fail(file, `${what}: U64 value ${v} at element ${at + i} does not fit in u32`);
        }
        dst[at + i] = dv.getUint32(8 * i, true);
      }
      return;
    case "I32":
      for (let i = 0; i < count; i++) dst[at + i] = dv.getInt32(4 * i, true);
      return;
    case "U32":
      for (let i = 0; i < count; i++) dst[at + i] = dv.getUint32(4 * i, true);
      return;
    case "I16":
      for (let i = 0; i < count; i++) dst[at + i] = dv.getInt16(2 * i, true);
      return;
    case "U16":
      for (let i = 0; i < count; i++) dst[at + i] = dv.getUint16(2 * i, true);
      return;
    case "I8":
      for (let i = 0; i < count; i++) dst[at + i] = dv.getInt8(i);
      return;
    case "U8":
      for (let i = 0; i < count; i++) dst[at + i] = src[i];
      return;
    case "BOOL":
      for (let i = 0; i < count; i++) dst[at + i] = src[i] ? 1 : 0;
      return;
  }
}

/** Decodes an IEEE half-precision bit pattern. */
export function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** Product of dims, or -1 if it is not a safe integer. */
export function numelOf(shape: readonly number[]): number {
  let n = 1;
  for (const s of shape) {
    n *= s;
    if (!Number.isSafeInteger(n)) return -1;
  }
  return n;
}

/** Formats a shape as `[a,b,c]`. */
export function fmt(shape: readonly number[]): string {
  return `[${shape.join(",")}]`;
}

// ------------------------------------------------------------------ random access sources

/** Random-access bytes: an in-memory buffer or an open file. */
/** Synchronous random-access bytes. */
export interface SyncSource {
  size: number;
  read(offset: number, dst: Uint8Array): void;
}
/** Asynchronous random-access bytes. */
export interface AsyncSource {
  size: number;
  read(offset: number, dst: Uint8Array): Promise<void>;
}

/** A random-access source over an in-memory buffer. */
export function memSource(file: string, bytes: Uint8Array): SyncSource {
  return {
    size: bytes.byteLength,
    read(offset, dst) {
      if (offset < 0 || offset + dst.byteLength > bytes.byteLength) {
        fail(
          file,
          `read past end of data (offset ${offset}, length ${dst.byteLength}, data is ${bytes.byteLength} bytes)`,
        );
      }
      dst.set(bytes.subarray(offset, offset + dst.byteLength));
    },
  };
}

/** A random-access source over an open file, reading in bounded chunks. */
export function fileSource(file: string, f: Deno.FsFile, size: number): AsyncSource {
  return {
    size,
    async read(offset, dst) {
      if (offset + dst.byteLength > size) fail(file, `read past end of file (offset ${offset}, file is ${size} bytes)`);
      try {
        await f.seek(offset, Deno.SeekMode.Start);
        let done = 0;
        while (done < dst.byteLength) {
          const n = await f.read(dst.subarray(done, Math.min(dst.byteLength, done + CHUNK)));
          if (n === null || n === 0) {
            fail(file, `unexpected end of file at byte ${offset + done} (file changed while reading?)`);
          }
          done += n;
        }
      } catch (e) {
        wrap(file, "read error", e);
      }
    },
  };
}

/** Opens a file for reading, with errors naming the file. */
export async function openForRead(file: string): Promise<{ f: Deno.FsFile; size: number }> {
  let f: Deno.FsFile;
  try {
    f = await Deno.open(file, { read: true });
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) fail(file, "file not found");
    wrap(file, "cannot open", e);
  }
  try {
    const st = await f.stat();
    if (!st.isFile) fail(file, "not a regular file");
    return { f, size: st.size };
  } catch (e) {
    f.close();
    wrap(file, "cannot stat", e);
  }
}

// ------------------------------------------------------------------ generator-driven reads

/** A read request from a parsing coroutine: fill `dst` with the bytes at `offset`. */
export interface ReadReq {
  offset: number;
  dst: Uint8Array;
}

/** A parser written once as a generator of read requests, driven synchronously or asynchronously. */
export type Reader<R> = Generator<ReadReq, R, void>;

/** Reads `len` bytes at `offset` (or into `dst` when given) from inside a Reader. */
export function* readAt(offset: number, len: number, dst?: Uint8Array): Reader<Uint8Array> {
  const out = dst ?? new Uint8Array(len);
  if (len > 0) yield { offset, dst: out };
  return out;
}

/** Drives a Reader against an in-memory source. */
export function runSync<R>(g: Reader<R>, src: SyncSource): R {
  let r = g.next();
  while (!r.done) {
    src.read(r.value.offset, r.value.dst);
    r = g.next();
  }
  return r.value;
}

/** Drives a Reader against a file. */
export async function runAsync<R>(g: Reader<R>, src: AsyncSource): Promise<R> {
  let r = g.next();
  while (!r.done) {
    await src.read(r.value.offset, r.value.dst);
    r = g.next();
  }
  return r.value;
}
