/**
 * @file A strict, random-access zip reader for PyTorch checkpoints. It reads only the central
 * directory up front and then single entries on demand (so multi-GB archives stream), supports
 * zip64, and uses fflate only to inflate deflated entries.
 *
 * Zip-bomb and corruption guards: declared sizes are checked before anything is inflated (total
 * uncompressed bytes against a limit, each deflated entry against deflate's maximum ratio), entry
 * byte ranges may not overlap (the overlapping-entries bomb), inflation is streamed in small
 * input pieces and aborted as soon as the output exceeds the declared size, and every entry's
 * CRC-32 is verified.
 * @module
 */
import { Inflate } from "fflate";
import { fail, LITTLE_ENDIAN, readAt, type Reader, wrap } from "./common.ts";

/** One central-directory entry. */
export interface ZipEntry {
  name: string;
  method: number;
  crc: number;
  csize: number;
  usize: number;
  /** Offset of the local file header. */
  lho: number;
  /** First byte after this entry's space (next local header or the central directory). */
  limit: number;
}

/** Limits applied while reading an archive. */
export interface ZipLimits {
  /** Cap on the sum of declared uncompressed sizes of all entries. */
  maxUncompressedBytes: number;
}

/** Largest central directory accepted (a checkpoint with 10^5 tensors needs ~10 MB). */
const MAX_CD_BYTES = 256 * 1024 * 1024;
/** Deflate cannot expand by more than about 1032:1; anything claiming more is a lie. */
const MAX_DEFLATE_RATIO = 1032;
const INFLATE_PIECE = 1 << 16;

const SIG_EOCD = 0x06054b50, SIG_Z64_LOC = 0x07064b50, SIG_Z64_EOCD = 0x06064b50;
const SIG_CDH = 0x02014b50, SIG_LFH = 0x04034b50;

function u64(dv: DataView, at: number, file: string, what: string): number {
  const lo = dv.getUint32(at, true), hi = dv.getUint32(at + 4, true);
  if (hi >= 2 ** 21) fail(file, `zip: ${what} ${dv.getBigUint64(at, true)} is not a plausible size/offset`);
  return hi * 2 ** 32 + lo;
}

function decodeName(raw: Uint8Array): string {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(raw);
  } catch {
    return String.fromCharCode(...raw); // legacy code page: names only need to be compared
  }
}

/** Reads and validates the central directory. */
export function* readZipDir(file: string, size: number, limits: ZipLimits): Reader<Map<string, ZipEntry>> {
  if (size < 22) fail(file, `not a zip archive (${size} bytes, too short for an end-of-central-directory record)`);
  const tailLen = Math.min(size, 22 + 0xffff + 20);
  const tailStart = size - tailLen;
  const tail = yield* readAt(tailStart, tailLen);
  const tv = new DataView(tail.buffer, tail.byteOffset, tail.byteLength);
  let eocd = -1;
  for (let i = tailLen - 22; i >= 0; i--) {
    if (tv.getUint32(i, true) === SIG_EOCD && i + 22 + tv.getUint16(i + 20, true) === tailLen) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) {
    const head = yield* readAt(0, Math.min(size, 4));
    if (head[0] === 0x80) {
      fail(
        file,
        "not a zip archive: this looks like the legacy torch.save format (_use_new_zipfile_serialization=False), which is not supported; re-save it with a current PyTorch",
      );
    }
    fail(file, "not a zip archive (no end-of-central-directory record; truncated or not a PyTorch .pt file)");
  }
  const eocdAbs = tailStart + eocd;
  const disk = tv.getUint16(eocd + 4, true), cdDisk = tv.getUint16(eocd + 6, true);
  let count = tv.getUint16(eocd + 10, true);
  let cdSize = tv.getUint32(eocd + 12, true);
  let cdOffset = tv.getUint32(eocd + 16, true);
  if (tv.getUint16(eocd + 8, true) !== count) fail(file, "zip: multi-disk archives are not supported");
  let cdEnd = eocdAbs;
  // zip64: the locator sits right before the classic record.
  if (eocd >= 20 && tv.getUint32(eocd - 20, true) === SIG_Z64_LOC) {
    const z64 = u64(tv, eocd - 20 + 8, file, "zip64 end-of-central-directory offset");
    if (z64 + 56 > eocdAbs - 20) fail(file, `zip: zip64 end-of-central-directory offset ${z64} is out of range`);
    const rec = yield* readAt(z64, 56);
    const rv = new DataView(rec.buffer);
    if (rv.getUint32(0, true) !== SIG_Z64_EOCD) fail(file, "zip: bad zip64 end-of-central-directory signature");
    if (rv.getUint32(16, true) !== 0 || rv.getUint32(20, true) !== 0) {
      fail(file, "zip: multi-disk archives are not supported");
    }
    const c64 = u64(rv, 32, file, "entry count"), s64 = u64(rv, 40, file, "central directory size");
    const o64 = u64(rv, 48, file, "central directory offset");
    if (u64(rv, 24, file, "entry count") !== c64) fail(file, "zip: multi-disk archives are not supported");
    if (
      (count !== 0xffff && count !== c64) || (cdSize !== 0xffffffff && cdSize !== s64) ||
      (cdOffset !== 0xffffffff && cdOffset !== o64)
    ) {
      fail(file, "zip: zip64 and classic end-of-central-directory records disagree (corrupt archive)");
    }
    count = c64;
    cdSize = s64;
    cdOffset = o64;
    cdEnd = z64;
  } else if (disk !== 0 || cdDisk !== 0) {
    fail(file, "zip: multi-disk archives are not supported");
  }
  if (cdSize > MAX_CD_BYTES) {
    fail(file, `zip: central directory of ${cdSize} bytes exceeds the ${MAX_CD_BYTES}-byte limit`);
  }
  if (cdOffset + cdSize !== cdEnd) {
    fail(
      file,
      `zip: central directory [${cdOffset}, ${
        cdOffset + cdSize
      }) does not end where its end record starts (${cdEnd}); truncated or corrupt`,
    );
  }
  if (count * 46 > cdSize) fail(file, `zip: ${count} entries cannot fit in a ${cdSize}-byte central directory`);
  const cd = yield* readAt(cdOffset, cdSize);
  const cv = new DataView(cd.buffer);
  const entries = new Map<string, ZipEntry>();
  const list: (ZipEntry & { nameLen: number })[] = [];
  let p = 0;
  let total = 0;
  for (let i = 0; i < count; i++) {
    if (p + 46 > cdSize || cv.getUint32(p, true) !== SIG_CDH) {
      fail(file, `zip: central directory entry ${i} is corrupt (bad signature at byte ${cdOffset + p})`);
    }
    const flags = cv.getUint16(p + 8, true), method = cv.getUint16(p + 10, true);
    const crc = cv.getUint32(p + 16, true);
    let csize = cv.getUint32(p + 20, true), usize = cv.getUint32(p + 24, true);
    const nlen = cv.getUint16(p + 28, true), xlen = cv.getUint16(p + 30, true), clen = cv.getUint16(p + 32, true);
    let lho = cv.getUint32(p + 42, true);
    const diskStart = cv.getUint16(p + 34, true);
    if (p + 46 + nlen + xlen + clen > cdSize) fail(file, `zip: central directory entry ${i} runs past the directory`);
    const name = decodeName(cd.subarray(p + 46, p + 46 + nlen));
    // zip64 extra field: only the saturated fields are present, in this order.
    let x = p + 46 + nlen;
    const xe = x + xlen;
    while (x + 4 <= xe) {
      const id = cv.getUint16(x, true), len = cv.getUint16(x + 2, true);
      if (x + 4 + len > xe) fail(file, `zip: entry "${name}" has a malformed extra field`);
      if (id === 1) {
        let q = x + 4;
        const take = (what: string) => {
          if (q + 8 > x + 4 + len) fail(file, `zip: entry "${name}" zip64 extra field is too short for ${what}`);
          const v = u64(cv, q, file, `entry "${name}" ${what}`);
          q += 8;
          return v;
        };
        if (usize === 0xffffffff) usize = take("uncompressed size");
        if (csize === 0xffffffff) csize = take("compressed size");
        if (lho === 0xffffffff) lho = take("header offset");
      }
      x += 4 + len;
    }
    if (diskStart !== 0 && diskStart !== 0xffff) fail(file, "zip: multi-disk archives are not supported");
    if (flags & 1) fail(file, `zip: entry "${name}" is encrypted`);
    if (method !== 0 && method !== 8) fail(file, `zip: entry "${name}" uses unsupported compression method ${method}`);
    if (method === 0 && csize !== usize) {
      fail(file, `zip: stored entry "${name}" has compressed size ${csize} != size ${usize}`);
    }
    if (method === 8 && usize > csize * MAX_DEFLATE_RATIO + 1024) {
      fail(
        file,
        `zip: entry "${name}" claims ${usize} bytes from ${csize} compressed (ratio beyond deflate's maximum; zip bomb?)`,
      );
    }
    if (entries.has(name)) fail(file, `zip: duplicate entry "${name}"`);
    total += usize;
    if (total > limits.maxUncompressedBytes) {
      fail(file, `zip: declared uncompressed size exceeds the ${limits.maxUncompressedBytes}-byte limit (zip bomb?)`);
    }
    const e = { name, method, crc, csize, usize, lho, limit: 0, nameLen: nlen };
    entries.set(name, e);
    list.push(e);
    p += 46 + nlen + xlen + clen;
  }
  // Entries must occupy disjoint ranges before the central directory; overlapping entries are a
  // classic way to build a zip bomb out of one compressed stream.
  list.sort((a, b) => a.lho - b.lho);
  for (let i = 0; i < list.length; i++) {
    const e = list[i];
    e.limit = i + 1 < list.length ? list[i + 1].lho : cdOffset;
    if (e.lho + 30 + e.nameLen + e.csize > e.limit) {
      fail(
        file,
        `zip: entry "${e.name}" (offset ${e.lho}, ${e.csize} bytes) overlaps the next entry or the central directory`,
      );
    }
  }
  return entries;
}

/** Reads one entry's bytes (into `dst` when given), inflating and checking the CRC. */
export function* readZipEntry(file: string, e: ZipEntry, dst?: Uint8Array): Reader<Uint8Array> {
  const lfh = yield* readAt(e.lho, 30);
  const lv = new DataView(lfh.buffer);
  if (lv.getUint32(0, true) !== SIG_LFH) {
    fail(file, `zip: entry "${e.name}" has a bad local header signature at byte ${e.lho}`);
  }
  const nlen = lv.getUint16(26, true), xlen = lv.getUint16(28, true);
  const start = e.lho + 30 + nlen + xlen;
  if (start + e.csize > e.limit) {
    fail(file, `zip: entry "${e.name}" local header makes its data overlap the next entry`);
  }
  const lname = yield* readAt(e.lho + 30, nlen);
  if (decodeName(lname) !== e.name) {
    fail(file, `zip: local header name of "${e.name}" does not match the central directory`);
  }
  if (dst && dst.byteLength !== e.usize) {
    fail(file, `zip: entry "${e.name}" is ${e.usize} bytes, expected ${dst.byteLength}`);
  }
  let out: Uint8Array;
  if (e.method === 0) {
    out = yield* readAt(start, e.usize, dst);
  } else {
    const comp = yield* readAt(start, e.csize);
    out = inflateBounded(file, e, comp, dst ?? new Uint8Array(e.usize));
  }
  const c = crc32(out);
  if (c !== e.crc) {
    fail(
      file,
      `zip: CRC-32 mismatch in entry "${e.name}" (stored ${hex(e.crc)}, computed ${hex(c)}); the file is corrupt`,
    );
  }
  return out;
}

function hex(n: number): string {
  return n.toString(16).padStart(8, "0");
}

function inflateBounded(file: string, e: ZipEntry, comp: Uint8Array, out: Uint8Array): Uint8Array {
  let n = 0, ended = false;
  const inf = new Inflate((chunk: Uint8Array, final: boolean) => {
    if (n + chunk.byteLength > out.byteLength) {
      fail(
        file,
        `zip: entry "${e.name}" inflates to more than its declared ${e.usize} bytes (zip bomb or corrupt data)`,
      );
    }
    out.set(chunk, n);
    n += chunk.byteLength;
    if (final) ended = true;
  });
  try {
    for (let i = 0; i < comp.byteLength; i += INFLATE_PIECE) {
      const end = Math.min(comp.byteLength, i + INFLATE_PIECE);
      inf.push(comp.subarray(i, end), end === comp.byteLength);
      if (ended && end < comp.byteLength) break;
    }
  } catch (err) {
    wrap(file, `zip: entry "${e.name}" has corrupt deflate data`, err);
  }
  if (!ended || n !== e.usize) {
    fail(
      file,
      `zip: entry "${e.name}" inflated to ${n} bytes but declares ${e.usize} (truncated or corrupt deflate data)`,
    );
  }
  return out;
}

const CRC_TABLE = /* @__PURE__ */ (() => {
  const t = new Int32Array(256 * 8);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[i] = c;
  }
  for (let i = 0; i < 256; i++) {
    for (let s = 1; s < 8; s++) t[s * 256 + i] = t[(s - 1) * 256 + i] >>> 8 ^ t[t[(s - 1) * 256 + i] & 0xff];
  }
  return t;
})();

/** CRC-32 (zip polynomial), slice-by-8 over 32-bit words so multi-GB checkpoints verify in seconds. */
export function crc32(b: Uint8Array): number {
  const t = CRC_TABLE;
  let c = -1, i = 0;
  if (LITTLE_ENDIAN) {
    while (i < b.byteLength && (b.byteOffset + i) & 3) c = t[(c ^ b[i++]) & 0xff] ^ c >>> 8;
    const nw = ((b.byteLength - i) >> 3) << 1;
    const w = new Int32Array(b.buffer, b.byteOffset + i, nw);
    for (let j = 0; j < nw; j += 2) {
      const a = w[j] ^ c, d = w[j + 1];
      c = t[1792 + (a & 0xff)] ^ t[1536 + (a >>> 8 & 0xff)] ^ t[1280 + (a >>> 16 & 0xff)] ^ t[1024 + (a >>> 24)] ^
        t[768 + (d & 0xff)] ^ t[512 + (d >>> 8 & 0xff)] ^ t[256 + (d >>> 16 & 0xff)] ^ t[d >>> 24];
    }
    i += nw * 4;
  }
  for (; i < b.byteLength; i++) c = t[(c ^ b[i]) & 0xff] ^ c >>> 8;
  return (c ^ -1) >>> 0;
}
