/**
 * @file PyTorch zip-format `.pt` state-dict reading (torch.save default since 1.6). The archive is
 * read entry by entry (see zip.ts), `data.pkl` goes through the restricted unpickler (pickle.ts),
 * and each tensor is gathered from its storage honouring storage offset and strides.
 *
 * The top-level object must be a dict. Nested dicts are flattened with "." (so a training
 * checkpoint `{"model": sd, "ema": sd}` gives `model.*` and `ema.*`); non-tensor leaves (ints,
 * strings, None) are skipped. Objects of any other class are refused by the unpickler.
 * @module
 */
import type { TypedArray } from "../../tensor/dtype.ts";
import { fromHost, type Tensor } from "../../tensor/tensor.ts";
import {
  allocTarget,
  convertInto,
  fail,
  FILE_DTYPE_BYTES,
  fileSource,
  fmt,
  isVerbatim,
  memSource,
  numelOf,
  openForRead,
  put,
  type Reader,
  runAsync,
  runSync,
  targetDType,
  wrap,
} from "./common.ts";
import { PDict, type PStorage, PTensor, unpickle } from "./pickle.ts";
import { readZipDir, readZipEntry, type ZipEntry } from "./zip.ts";

/** Options for {@link readTorch} / {@link parseTorch}. */
export interface TorchReadOptions {
  /**
   * Cap on the total declared uncompressed size of the archive's entries (zip-bomb guard).
   * Default: the larger of 1 GiB and 4 × the file size (PyTorch stores entries uncompressed).
   */
  maxUncompressedBytes?: number;
}

/** Largest `data.pkl` accepted; a state dict's pickle is kilobytes to a few megabytes. */
const MAX_PICKLE_BYTES = 256 * 1024 * 1024;
const MAX_DEPTH = 32;

interface Loaded {
  name: string;
  shape: number[];
  data: TypedArray;
  t: PTensor;
}

/** Flattens nested dicts into (name, tensor) pairs; guards against cycles and absurd nesting. */
function collect(file: string, root: unknown): [string, PTensor][] {
  if (!(root instanceof PDict)) {
    fail(file, "the pickled object is not a dict (expected a state dict saved with torch.save)");
  }
  const out: [string, PTensor][] = [];
  const seen = new Set<string>();
  const onPath = new Set<PDict>();
  const walk = (d: PDict, prefix: string, depth: number) => {
    if (depth > MAX_DEPTH) fail(file, `dicts nested more than ${MAX_DEPTH} deep at "${prefix}"`);
    if (onPath.has(d)) fail(file, `dict at "${prefix}" contains itself`);
    onPath.add(d);
    for (const [k, v] of d.map) {
      if (typeof k !== "string" && typeof k !== "number" && typeof k !== "bigint") continue;
      const name = prefix + String(k);
      if (v instanceof PTensor) {
        if (seen.has(name)) fail(file, `duplicate tensor name "${name}" after flattening nested dicts`);
        seen.add(name);
        out.push([name, v]);
      } else if (v instanceof PDict) walk(v, name + ".", depth + 1);
    }
    onPath.delete(d);
  };
  walk(root, "", 0);
  return out;
}

/** Checks a tensor's view against its storage and returns its element count. */
function checkGeometry(file: string, name: string, t: PTensor, storageBytes: number): number {
  const eb = FILE_DTYPE_BYTES[t.dtype];
  const where = `tensor "${name}"`;
  const numel = numelOf(t.size);
  if (numel < 0) fail(file, `${where}: shape ${fmt(t.size)} has too many elements`);
  if (numel === 0) {
    if (t.offset * eb > storageBytes) fail(file, `${where}: storage offset ${t.offset} is past the end of its storage`);
    return 0;
  }
  let last = t.offset;
  for (let i = 0; i < t.size.length; i++) last += (t.size[i] - 1) * t.stride[i];
  if (!Number.isSafeInteger(last) || (last + 1) * eb > storageBytes) {
    fail(
      file,
      `${where}: view (offset ${t.offset}, shape ${fmt(t.size)}, stride ${
        fmt(t.stride)
      }) reaches element ${last} of a ${Math.floor(storageBytes / eb)}-element ${t.dtype} storage "${t.storage.key}"`,
    );
  }
  return numel;
}

function isContiguous(t: PTensor): boolean {
  let expect = 1;
  for (let i = t.size.length - 1; i >= 0; i--) {
    if (t.size[i] !== 1 && t.stride[i] !== expect) return false;
    expect *= t.size[i];
  }
  return true;
}

/** Copies the view's elements out of its storage into a dense row-major byte buffer. */
function gather(t: PTensor, storage: Uint8Array, numel: number): Uint8Array {
  const eb = FILE_DTYPE_BYTES[t.dtype];
  if (isContiguous(t)) return storage.subarray(t.offset * eb, (t.offset + numel) * eb);
  const out = new Uint8Array(numel * eb);
  if (numel === 0) return out;
  // Copy whole elements as machine words (8-byte elements as two 32-bit words).
  const ws = eb === 8 ? 4 : eb, per = eb / ws;
  const aligned = storage.byteOffset % ws === 0 ? storage : storage.slice();
  const view = (b: Uint8Array) =>
    ws === 4
      ? new Uint32Array(b.buffer, b.byteOffset, b.byteLength / 4)
      : ws === 2
      ? new Uint16Array(b.buffer, b.byteOffset, b.byteLength >> 1)
      : b;
  const src = view(aligned), dst = view(out);
  const nd = t.size.length;
  const last = t.size[nd - 1], ls = t.stride[nd - 1] * per;
  const rows = numel / last;
  const idx = new Array(Math.max(0, nd - 1)).fill(0);
  let base = t.offset * per, o = 0;
  for (let r = 0; r < rows; r++) {
    if (per === 1) {
      for (let j = 0, s = base; j < last; j++, s += ls) dst[o++] = src[s];
    } else {
      for (let j = 0, s = base; j < last; j++, s += ls) {
        dst[o++] = src[s];
        dst[o++] = src[s + 1];
      }
    }
    for (let ax = nd - 2; ax >= 0; ax--) {
      idx[ax]++;
      base += t.stride[ax] * per;
      if (idx[ax] < t.size[ax]) break;
      base -= t.stride[ax] * per * t.size[ax];
      idx[ax] = 0;
    }
  }
  return out;
}

function* torchCore(file: string, size: number, opts: TorchReadOptions): Reader<Loaded[]> {
  const maxUncompressedBytes = opts.maxUncompressedBytes ?? Math.max(2 ** 30, 4 * size);
  const dir = yield* readZipDir(file, size, { maxUncompressedBytes });
  const pkls = [...dir.keys()].filter((n) => /^([^/]+\/)?data\.pkl$/.test(n));
  if (pkls.length !== 1) {
    fail(
      file,
      pkls.length
        ? `archive has ${pkls.length} data.pkl entries`
        : "archive has no data.pkl (not a PyTorch checkpoint)",
    );
  }
  const prefix = pkls[0].slice(0, -"data.pkl".length);
  const pklEntry = dir.get(pkls[0])!;
  if (pklEntry.usize > MAX_PICKLE_BYTES) {
    fail(file, `data.pkl is ${pklEntry.usize} bytes, over the ${MAX_PICKLE_BYTES}-byte limit`);
  }
  const bo = dir.get(prefix + "byteorder");
  if (bo) {
    if (bo.usize > 16) fail(file, "byteorder entry is too large");
    const order = new TextDecoder().decode(yield* readZipEntry(file, bo)).trim();
    if (order !== "little") fail(file, `byteorder is "${order}"; only little-endian checkpoints are supported`);
  }
  const pkl = yield* readZipEntry(file, pklEntry);
  const tensors = collect(file, unpickle(file, pkl));

  // Validate every view and storage before reading any tensor data.
  const entryOf = new Map<PStorage, ZipEntry>();
  const uses = new Map<PStorage, number>();
  const numels: number[] = [];
  let outBytes = 0;
  for (const [name, t] of tensors) {
    const s = t.storage;
    let e = entryOf.get(s);
    if (!e) {
      e = dir.get(`${prefix}data/${s.key}`);
      if (!e) fail(file, `tensor "${name}": storage "${s.key}" is missing from the archive (${prefix}data/${s.key})`);
      const bytes = s.numel * (s.dtype ? FILE_DTYPE_BYTES[s.dtype] : 1);
      if (e.usize !== bytes) {
        fail(
          file,
          `tensor "${name}": storage "${s.key}" (${s.type}, ${s.numel} elements) needs ${bytes} bytes but the archive entry has ${e.usize}`,
        );
      }
      entryOf.set(s, e);
    }
    uses.set(s, (uses.get(s) ?? 0) + 1);
    const numel = checkGeometry(file, name, t, e.usize);
    numels.push(numel);
    // Zero strides let a few stored bytes describe a huge tensor; cap what we materialise.
    outBytes += numel * allocTarget(targetDType(t.dtype), 0).BYTES_PER_ELEMENT;
    if (outBytes > maxUncompressedBytes) {
      fail(
        file,
        `tensor "${name}" (shape ${
          fmt(t.size)
        }) brings the loaded size to ${outBytes} bytes, over the ${maxUncompressedBytes}-byte limit (raise opts.maxUncompressedBytes if this is intended)`,
      );
    }
  }

  const cache = new Map<PStorage, Uint8Array>();
  const out: Loaded[] = [];
  for (let i = 0; i < tensors.length; i++) {
    const [name, t] = tensors[i];
    const s = t.storage, e = entryOf.get(s)!, numel = numels[i];
    const target = targetDType(t.dtype);
    const eb = FILE_DTYPE_BYTES[t.dtype];
    const arr = allocTarget(target, numel);
    const left = uses.get(s)! - 1;
    uses.set(s, left);
    if (
      !cache.has(s) && left === 0 && isVerbatim(t.dtype) && t.offset === 0 && numel * eb === e.usize && isContiguous(t)
    ) {
      // Sole user of the whole storage: read straight into the tensor's own array.
      yield* readZipEntry(file, e, new Uint8Array(arr.buffer, arr.byteOffset, arr.byteLength));
    } else {
      let bytes = cache.get(s);
      if (!bytes) {
        bytes = yield* readZipEntry(file, e);
        cache.set(s, bytes);
      }
      const view = gather(t, bytes, numel);
      if (isVerbatim(t.dtype)) new Uint8Array(arr.buffer, arr.byteOffset, arr.byteLength).set(view);
      else convertInto(file, `tensor "${name}"`, t.dtype, view, arr, 0, numel);
      if (left === 0) cache.delete(s);
    }
    out.push({ name, shape: t.size.slice(), data: arr, t });
  }
  return out;
}

function toRecord(items: Loaded[]): Record<string, Tensor> {
  const rec: Record<string, Tensor> = {};
  for (const it of items) put(rec, it.name, fromHost(it.data, it.shape, targetDType(it.t.dtype)));
  return rec;
}

/** Parses an in-memory PyTorch zip checkpoint (state dict); `name` is used in error messages. */
export function parseTorch(bytes: Uint8Array, name = "<bytes>", opts: TorchReadOptions = {}): Record<string, Tensor> {
  if (!(bytes instanceof Uint8Array)) fail(name, "parseTorch expects a Uint8Array");
  try {
    return toRecord(runSync(torchCore(name, bytes.byteLength, opts), memSource(name, bytes)));
  } catch (e) {
    wrap(name, "cannot load checkpoint", e);
  }
}

/** Reads a PyTorch zip `.pt` state dict from disk, entry by entry (checkpoints > 2 GB work). */
export async function readTorch(path: string, opts: TorchReadOptions = {}): Promise<Record<string, Tensor>> {
  const { f, size } = await openForRead(path);
  try {
    return toRecord(await runAsync(torchCore(path, size, opts), fileSource(path, f, size)));
  } catch (e) {
    wrap(path, "cannot load checkpoint", e);
  } finally {
    f.close();
  }
}
