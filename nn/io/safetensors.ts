/**
 * @file safetensors reading (validated, streamed) and atomic writing. See `nn/io.ts` for the dtype table.
 * @module
 */
import { DifflabError } from "../../tensor/errors.ts";
import type { DType, TypedArray } from "../../tensor/dtype.ts";
import { fromHost, Tensor } from "../../tensor/tensor.ts";
import {
  allocTarget,
  type AsyncSource,
  CHUNK,
  convertInto,
  fail,
  FILE_DTYPE_BYTES,
  type FileDType,
  fileSource,
  fmt,
  hasOwn,
  isFileDType,
  isVerbatim,
  LITTLE_ENDIAN,
  memSource,
  numelOf,
  openForRead,
  put,
  type SyncSource,
  targetDType,
  wrap,
} from "./common.ts";

/** Largest header we accept (the reference Rust implementation uses the same bound). */
export const MAX_HEADER_BYTES = 100_000_000;

// ------------------------------------------------------------------ safetensors: header

/** One validated header entry. */
interface StEntry {
  name: string;
  dtype: FileDType;
  shape: number[];
  begin: number;
  end: number;
}

/** Validated safetensors header. */
interface StHeader {
  entries: StEntry[];
  metadata: Record<string, string>;
  dataStart: number;
}

/** Reads the 8-byte little-endian header length, checking it against the file size and the cap. */
function headerLength(file: string, first8: Uint8Array, size: number): number {
  if (size < 8) fail(file, `file is ${size} bytes, too short for a safetensors header length (8 bytes)`);
  const dv = new DataView(first8.buffer, first8.byteOffset, 8);
  const lo = dv.getUint32(0, true), hi = dv.getUint32(4, true);
  const n = hi * 2 ** 32 + lo;
  if (hi >= 2 ** 21 || n > MAX_HEADER_BYTES) {
    fail(
      file,
      `header length ${hi >= 2 ** 21 ? dv.getBigUint64(0, true) : n} exceeds the ${MAX_HEADER_BYTES}-byte limit`,
    );
  }
  if (n > size - 8) fail(file, `header length ${n} exceeds the file size minus 8 (${size - 8}); file truncated?`);
  if (n < 2) fail(file, `header length ${n} is too small for a JSON object`);
  return n;
}

/** Parses and validates the JSON header against the data region size. */
function parseHeader(file: string, hbytes: Uint8Array, size: number): StHeader {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(hbytes);
  } catch {
    fail(file, "header is not valid UTF-8");
  }
  if (text[0] !== "{") fail(file, `header does not start with '{' (got ${JSON.stringify(text.slice(0, 16))})`);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    fail(file, `header is not valid JSON (${e instanceof Error ? e.message : String(e)})`);
  }
  if (json === null || typeof json !== "object" || Array.isArray(json)) fail(file, "header JSON is not an object");
  const dataStart = 8 + hbytes.byteLength;
  const dataSize = size - dataStart;
  const metadata: Record<string, string> = {};
  const entries: StEntry[] = [];
  for (const [name, v] of Object.entries(json as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (v === null || typeof v !== "object" || Array.isArray(v)) fail(file, "__metadata__ is not an object");
      for (const [k, mv] of Object.entries(v as Record<string, unknown>)) {
        if (typeof mv !== "string") fail(file, `__metadata__["${k}"] is not a string (got ${typeof mv})`);
        put(metadata, k, mv);
      }
      continue;
    }
    const where = `tensor "${name}"`;
    if (v === null || typeof v !== "object" || Array.isArray(v)) fail(file, `${where}: header entry is not an object`);
    const e = v as Record<string, unknown>;
    for (const k of ["dtype", "shape", "data_offsets"]) if (!hasOwn(e, k)) fail(file, `${where}: missing "${k}"`);
    // Unknown extra fields are ignored, as the reference implementation does.
    if (!isFileDType(e.dtype)) fail(file, `${where}: unknown dtype ${JSON.stringify(e.dtype)}`);
    const dtype = e.dtype;
    const shape = e.shape;
    if (!Array.isArray(shape) || shape.some((s) => typeof s !== "number" || !Number.isSafeInteger(s) || s < 0)) {
      fail(file, `${where}: shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
    }
    const offs = e.data_offsets;
    if (
      !Array.isArray(offs) || offs.length !== 2 ||
      offs.some((o) => typeof o !== "number" || !Number.isSafeInteger(o) || o < 0)
    ) {
      fail(file, `${where}: data_offsets ${JSON.stringify(offs)} is not a pair of non-negative integers`);
    }
    const [begin, end] = offs as number[];
    if (end < begin) fail(file, `${where}: data_offsets [${begin},${end}] end before begin`);
    if (end > dataSize) {
      fail(
        file,
        `${where}: data_offsets [${begin},${end}] past the end of the data region (${dataSize} bytes); file truncated?`,
      );
    }
    const numel = numelOf(shape as number[]);
    const nbytes = numel * FILE_DTYPE_BYTES[dtype];
    if (numel < 0 || !Number.isSafeInteger(nbytes) || nbytes !== end - begin) {
      fail(
        file,
        `${where}: shape ${fmt(shape as number[])} ${dtype} needs ${
          numel < 0 ? "too many" : nbytes
        } bytes but data_offsets [${begin},${end}] span ${end - begin}`,
      );
    }
    entries.push({ name, dtype, shape: (shape as number[]).slice(), begin, end });
  }
  // The spec requires the byte buffer to be fully indexed: no overlaps, no holes, no trailing bytes.
  const sorted = entries.slice().sort((a, b) => a.begin - b.begin || a.end - b.end);
  let pos = 0;
  let prev: StEntry | null = null;
  for (const e of sorted) {
    if (e.begin < pos) {
      fail(
        file,
        `tensor "${e.name}" bytes [${e.begin},${e.end}] overlap tensor "${prev!.name}" [${prev!.begin},${prev!.end}]`,
      );
    }
    if (e.begin > pos) {
      fail(file, `data bytes [${pos},${e.begin}) are not covered by any tensor (hole before "${e.name}")`);
    }
    pos = e.end;
    prev = e;
  }
  if (pos !== dataSize) {
    fail(file, `data region is ${dataSize} bytes but tensors cover only ${pos} (trailing bytes or wrong offsets)`);
  }
  return { entries, metadata, dataStart };
}

function toTensor(e: StEntry, data: TypedArray): Tensor {
  return fromHost(data, e.shape, targetDType(e.dtype));
}

/** Fills a target array from a source range, converting in chunks so no second full-size buffer is needed. */
function fillSync(file: string, e: StEntry, src: SyncSource, dataStart: number): TypedArray {
  const numel = numelOf(e.shape), target = targetDType(e.dtype);
  const out = allocTarget(target, numel);
  const where = `tensor "${e.name}"`;
  if (isVerbatim(e.dtype)) {
    src.read(dataStart + e.begin, new Uint8Array(out.buffer, out.byteOffset, out.byteLength));
    return out;
  }
  const eb = FILE_DTYPE_BYTES[e.dtype];
  const per = Math.max(1, Math.floor(CHUNK / eb));
  const buf = new Uint8Array(Math.min(numel, per) * eb);
  for (let i = 0; i < numel; i += per) {
    const c = Math.min(per, numel - i);
    const view = buf.subarray(0, c * eb);
    src.read(dataStart + e.begin + i * eb, view);
    convertInto(file, where, e.dtype, view, out, i, c);
  }
  return out;
}

async function fillAsync(file: string, e: StEntry, src: AsyncSource, dataStart: number): Promise<TypedArray> {
  const numel = numelOf(e.shape), target = targetDType(e.dtype);
  const out = allocTarget(target, numel);
  const where = `tensor "${e.name}"`;
  if (isVerbatim(e.dtype)) {
    await src.read(dataStart + e.begin, new Uint8Array(out.buffer, out.byteOffset, out.byteLength));
    return out;
  }
  const eb = FILE_DTYPE_BYTES[e.dtype];
  const per = Math.max(1, Math.floor(CHUNK / eb));
  const buf = new Uint8Array(Math.min(numel, per) * eb);
  for (let i = 0; i < numel; i += per) {
    const c = Math.min(per, numel - i);
    const view = buf.subarray(0, c * eb);
    await src.read(dataStart + e.begin + i * eb, view);
    convertInto(file, where, e.dtype, view, out, i, c);
  }
  return out;
}

/** Result of reading a safetensors file. */
export interface Safetensors {
  /** Tensors by name, in file header order. */
  tensors: Record<string, Tensor>;
  /** The `__metadata__` string map (empty if absent). */
  metadata: Record<string, string>;
}

/** Parses an in-memory safetensors file; `name` is used in error messages. */
export function parseSafetensors(bytes: Uint8Array, name = "<bytes>"): Safetensors {
  if (!(bytes instanceof Uint8Array)) fail(name, "parseSafetensors expects a Uint8Array");
  try {
    const src = memSource(name, bytes);
    const n = headerLength(name, bytes.subarray(0, 8), bytes.byteLength);
    const h = parseHeader(name, bytes.subarray(8, 8 + n), bytes.byteLength);
    const arrays = h.entries.map((e) => fillSync(name, e, src, h.dataStart));
    const tensors: Record<string, Tensor> = {};
    h.entries.forEach((e, i) => put(tensors, e.name, toTensor(e, arrays[i])));
    return { tensors, metadata: h.metadata };
  } catch (e) {
    wrap(name, "cannot load safetensors", e);
  }
}

/** Reads a safetensors file, streaming each tensor into its own array (files > 2 GB work). */
export async function readSafetensors(path: string): Promise<Safetensors> {
  const { f, size } = await openForRead(path);
  try {
    const src = fileSource(path, f, size);
    if (size < 8) fail(path, `file is ${size} bytes, too short for a safetensors header length (8 bytes)`);
    const first = new Uint8Array(8);
    await src.read(0, first);
    const n = headerLength(path, first, size);
    const hbytes = new Uint8Array(n);
    await src.read(8, hbytes);
    const h = parseHeader(path, hbytes, size);
    // Read all data before creating tensors so a late failure leaves no tensors behind.
    const arrays: TypedArray[] = [];
    for (const e of h.entries) arrays.push(await fillAsync(path, e, src, h.dataStart));
    const tensors: Record<string, Tensor> = {};
    h.entries.forEach((e, i) => put(tensors, e.name, toTensor(e, arrays[i])));
    return { tensors, metadata: h.metadata };
  } catch (e) {
    wrap(path, "cannot load safetensors", e);
  } finally {
    f.close();
  }
}

// ------------------------------------------------------------------ safetensors: write

const WRITE_DTYPE: Record<DType, FileDType> = {
  f32: "F32",
  f64: "F64",
  f16: "F16",
  i32: "I32",
  u32: "U32",
  bool: "BOOL",
};

async function writeAll(f: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let done = 0;
  while (done < bytes.byteLength) {
    done += await f.write(bytes.subarray(done, Math.min(bytes.byteLength, done + CHUNK)));
  }
}

function randomSuffix(): string {
  const b = crypto.getRandomValues(new Uint8Array(6));
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

/** Builds the space-padded safetensors header for `names` (already sorted) and returns it with each tensor's byte size. */
function buildHeader(
  path: string,
  names: string[],
  tensors: Record<string, Tensor>,
  metadata: Record<string, string> | undefined,
): Uint8Array {
  const parts: string[] = [];
  if (metadata !== undefined) {
    if (metadata === null || typeof metadata !== "object" || Array.isArray(metadata)) {
      fail(path, "writeSafetensors: metadata must be a record of strings");
    }
    const mk = Object.keys(metadata).sort();
    const m: string[] = [];
    for (const k of mk) {
      const v = metadata[k];
      if (typeof v !== "string") fail(path, `writeSafetensors: metadata["${k}"] is not a string (got ${typeof v})`);
      m.push(`${JSON.stringify(k)}:${JSON.stringify(v)}`);
    }
    if (m.length) parts.push(`"__metadata__":{${m.join(",")}}`);
  }
  let off = 0;
  for (const name of names) {
    const t = tensors[name];
    const fd = WRITE_DTYPE[t.dtype];
    const nbytes = numelOf(t.shape) * FILE_DTYPE_BYTES[fd];
    parts.push(
      `${JSON.stringify(name)}:{"dtype":"${fd}","shape":${JSON.stringify(t.shape)},"data_offsets":[${off},${
        off + nbytes
      }]}`,
    );
    off += nbytes;
  }
  const json = new TextEncoder().encode(`{${parts.join(",")}}`);
  // Pad with spaces so the data region starts 8-byte aligned (what the reference writer does).
  const padded = Math.ceil(json.byteLength / 8) * 8;
  if (padded > MAX_HEADER_BYTES) {
    fail(path, `writeSafetensors: header would be ${padded} bytes, over the ${MAX_HEADER_BYTES}-byte limit`);
  }
  const out = new Uint8Array(8 + padded).fill(0x20, 8);
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true);
  out.set(json, 8);
  return out;
}

/**
 * Writes tensors (and optional string metadata) as safetensors, atomically: the bytes go to
 * `path.tmp-<random>` in the same directory, are fsynced, and only then renamed over `path`, so a
 * crash at any moment leaves either the old file or the complete new one. Keys are written sorted.
 */
export async function writeSafetensors(
  path: string,
  tensors: Record<string, Tensor>,
  metadata?: Record<string, string>,
): Promise<void> {
  if (typeof path !== "string" || path === "") {
    throw new DifflabError(`writeSafetensors: path must be a non-empty string`);
  }
  if (tensors === null || typeof tensors !== "object" || Array.isArray(tensors)) {
    fail(path, "writeSafetensors: tensors must be a record of Tensors");
  }
  const names = Object.keys(tensors).sort();
  for (const name of names) {
    const t = tensors[name] as unknown;
    if (name === "__metadata__") fail(path, `writeSafetensors: "__metadata__" is reserved and cannot name a tensor`);
    if (!isTensor(t)) fail(path, `writeSafetensors: tensors["${name}"] is not a Tensor`);
    if (t.isDisposed) fail(path, `writeSafetensors: tensors["${name}"] was disposed`);
    if (!hasOwn(WRITE_DTYPE, t.dtype)) {
      fail(path, `writeSafetensors: tensors["${name}"] has unsupported dtype ${t.dtype}`);
    }
  }
  const header = buildHeader(path, names, tensors, metadata);
  const tmp = `${path}.tmp-${randomSuffix()}`;
  let f: Deno.FsFile | null = null;
  try {
    f = await Deno.open(tmp, { write: true, createNew: true, mode: 0o644 });
    await writeAll(f, header);
    for (const name of names) {
      const t = tensors[name];
      const d = await t.data();
      const expect = numelOf(t.shape) * FILE_DTYPE_BYTES[WRITE_DTYPE[t.dtype]];
      if (d.byteLength !== expect) {
        fail(path, `writeSafetensors: tensors["${name}"] returned ${d.byteLength} bytes, expected ${expect}`);
      }
      let bytes: Uint8Array = new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
      if (t.dtype === "bool") bytes = bytes.map((v) => v ? 1 : 0);
      else if (!LITTLE_ENDIAN) bytes = toLittleEndian(d);
      await writeAll(f, bytes);
    }
    await f.sync();
    f.close();
    f = null;
    await Deno.rename(tmp, path);
  } catch (e) {
    try {
      f?.close();
    } catch { /* already closed */ }
    try {
      await Deno.remove(tmp);
    } catch { /* never created, or already gone */ }
    wrap(path, "write failed (the previous file, if any, is untouched)", e);
  }
  await syncDir(path);
}

function toLittleEndian(d: TypedArray): Uint8Array {
  const eb = d.BYTES_PER_ELEMENT, src = new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
  const out = new Uint8Array(src.byteLength);
  for (let i = 0; i < src.byteLength; i += eb) for (let j = 0; j < eb; j++) out[i + j] = src[i + eb - 1 - j];
  return out;
}

/** Makes the rename durable; best effort, since some platforms cannot open directories. */
async function syncDir(path: string): Promise<void> {
  const slash = path.lastIndexOf("/");
  const dir = slash < 0 ? "." : slash === 0 ? "/" : path.slice(0, slash);
  try {
    const d = await Deno.open(dir, { read: true });
    try {
      await d.sync();
    } finally {
      d.close();
    }
  } catch { /* not supported here; the rename itself is still atomic */ }
}

function isTensor(t: unknown): t is Tensor {
  return t instanceof Tensor;
}
