/**
 * @file Checkpoint I/O tests: safetensors round trips for every dtype, atomic writes (including
 * SIGKILL during a write), the PyTorch `.pt` fixtures against their safetensors twins, a generated
 * corpus of malformed files, and a mutation property test (every outcome is a clean parse or a
 * DifflabError naming the file).
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { deflateSync } from "fflate";
import { parseSafetensors, parseTorch, readSafetensors, readTorch, writeSafetensors } from "../nn/io.ts";
import { DifflabError } from "../tensor/errors.ts";
import { fromHost, type Tensor, tensor } from "../tensor/tensor.ts";
import type { DType } from "../tensor/dtype.ts";

const FIX = new URL("./fixtures/", import.meta.url).pathname;
const CONFIG = new URL("../deno.json", import.meta.url).pathname;
const IO_URL = new URL("../nn/io.ts", import.meta.url).href;
const enc = new TextEncoder();

// ------------------------------------------------------------------ helpers

function values(t: Tensor): number[] {
  return Array.from(t.dataSync() as ArrayLike<number>, Number);
}

function cat(...parts: (Uint8Array | number[])[]): Uint8Array {
  const n = parts.reduce((s, p) => s + p.length, 0);
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function u16le(v: number): number[] {
  return [v & 0xff, (v >>> 8) & 0xff];
}
function u32le(v: number): number[] {
  return [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff];
}
function u64le(v: bigint): number[] {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v, true);
  return [...b];
}

/** Expects `f` to throw a DifflabError whose message names `file` (and matches `re` when given). */
function expectRejects(f: () => unknown, file: string, re?: RegExp): DifflabError {
  try {
    f();
  } catch (e) {
    checkErr(e, file, re);
    return e as DifflabError;
  }
  assert.fail(`${file}: expected a DifflabError, but it parsed`);
}
async function expectRejectsAsync(f: () => Promise<unknown>, file: string, re?: RegExp): Promise<void> {
  try {
    await f();
  } catch (e) {
    checkErr(e, file, re);
    return;
  }
  assert.fail(`${file}: expected a DifflabError, but it parsed`);
}
function checkErr(e: unknown, file: string, re?: RegExp) {
  if (!(e instanceof DifflabError)) {
    assert.fail(`${file}: expected a DifflabError, got ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`);
  }
  assert.ok(e.message.includes(file), `message does not name the file ${file}: ${e.message}`);
  if (re) assert.match(e.message, re, `${file}: unexpected reason`);
}

/** Independent minimal safetensors decoder (no validation) used as the reference. */
function naiveSafetensors(bytes: Uint8Array): Map<string, { dtype: string; shape: number[]; raw: Uint8Array }> {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = Number(dv.getBigUint64(0, true));
  const h = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
  const out = new Map();
  for (
    const [k, v] of Object.entries(h as Record<string, { dtype: string; shape: number[]; data_offsets: number[] }>)
  ) {
    if (k === "__metadata__") continue;
    const raw = bytes.slice(8 + n + v.data_offsets[0], 8 + n + v.data_offsets[1]);
    out.set(k, { dtype: v.dtype, shape: v.shape, raw });
  }
  return out;
}

/** Builds safetensors bytes from a header (object or raw text) and a data region. */
function st(
  header: unknown,
  data: Uint8Array | number[] = [],
  o: { raw?: Uint8Array; len?: bigint; pad?: boolean } = {},
): Uint8Array {
  let hb = o.raw ?? enc.encode(JSON.stringify(header));
  if (o.pad !== false) hb = cat(hb, new Array((8 - (hb.length % 8)) % 8).fill(0x20));
  return cat(u64le(o.len ?? BigInt(hb.length)), hb, data);
}

/** A small valid file: F32 [2], I64 [1], BF16 [2,1], BOOL [3] plus metadata. */
function smallValid(): Uint8Array {
  const f32 = new Uint8Array(new Float32Array([1.5, -2]).buffer);
  const i64 = new Uint8Array(new BigInt64Array([-7n]).buffer);
  const bf16 = new Uint8Array(new Uint16Array([0x3fc0, 0xc000]).buffer); // 1.5, -2
  return st(
    {
      __metadata__: { kind: "small" },
      a: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
      b: { dtype: "I64", shape: [1], data_offsets: [8, 16] },
      c: { dtype: "BF16", shape: [2, 1], data_offsets: [16, 20] },
      d: { dtype: "BOOL", shape: [3], data_offsets: [20, 23] },
    },
    cat(f32, i64, bf16, [1, 0, 2]),
  );
}

// ------------------------------------------------------------------ zip and pickle builders (independent of the reader)

const CRC_T = (() => {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[i] = c >>> 0;
  }
  return t;
})();
function crc(b: Uint8Array): number {
  let c = 0xffffffff;
  for (const x of b) c = CRC_T[(c ^ x) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

interface ZEntry {
  name: string;
  data: Uint8Array;
  deflate?: boolean;
  usize?: number;
  crc?: number;
  flags?: number;
  method?: number;
  lho?: number;
}

/** Minimal zip writer with knobs for lying about sizes, methods and offsets. */
function makeZip(entries: ZEntry[]): Uint8Array {
  const locals: Uint8Array[] = [];
  const cds: Uint8Array[] = [];
  let off = 0;
  for (const e of entries) {
    const name = enc.encode(e.name);
    const comp = e.deflate ? deflateSync(e.data) : e.data;
    const method = e.method ?? (e.deflate ? 8 : 0);
    const c = e.crc ?? crc(e.data);
    const usize = e.usize ?? e.data.length;
    const head = (sig: number[], cd: boolean) =>
      cat(
        sig,
        cd ? u16le(20) : [],
        u16le(20),
        u16le(e.flags ?? 0),
        u16le(method),
        u16le(0),
        u16le(0x21),
        u32le(c),
        u32le(comp.length),
        u32le(usize),
        u16le(name.length),
        u16le(0),
        cd ? [...u16le(0), ...u16le(0), ...u16le(0), ...u32le(0), ...u32le(e.lho ?? off)] : [],
        name,
      );
    const local = cat(head([0x50, 0x4b, 3, 4], false), comp);
    cds.push(head([0x50, 0x4b, 1, 2], true));
    locals.push(local);
    off += local.length;
  }
  const cd = cat(...cds);
  const eocd = cat(
    [0x50, 0x4b, 5, 6],
    u16le(0),
    u16le(0),
    u16le(entries.length),
    u16le(entries.length),
    u32le(cd.length),
    u32le(off),
    u16le(0),
  );
  return cat(...locals, cd, eocd);
}

/** Tiny pickle assembler. */
const OP = {
  PROTO2: [0x80, 2],
  MARK: [0x28],
  STOP: [0x2e],
  TUPLE: [0x74],
  EMPTY_TUPLE: [0x29],
  EMPTY_DICT: [0x7d],
  SETITEMS: [0x75],
  REDUCE: [0x52],
  BINPERSID: [0x51],
  NEWFALSE: [0x89],
  BUILD: [0x62],
};
function G(m: string, n: string): number[] {
  return [0x63, ...enc.encode(`${m}\n${n}\n`)];
}
function S(s: string): number[] {
  const b = enc.encode(s);
  return [0x58, ...u32le(b.length), ...b];
}
function I(n: number): number[] {
  if (n >= 0 && n < 256) return [0x4b, n];
  return [0x4a, ...u32le(n >>> 0)];
}
function T(xs: number[]): number[] {
  return [...OP.MARK, ...xs.flatMap(I), ...OP.TUPLE];
}
interface TSpec {
  key: string;
  stype?: string;
  numel: number;
  offset?: number;
  size: number[];
  stride: number[];
}
function tensorOps(t: TSpec, pid?: number[]): number[] {
  return [
    ...G("torch._utils", "_rebuild_tensor_v2"),
    ...OP.MARK,
    ...(pid ??
      [
        ...OP.MARK,
        ...S("storage"),
        ...G("torch", t.stype ?? "FloatStorage"),
        ...S(t.key),
        ...S("cpu"),
        ...I(t.numel),
        ...OP.TUPLE,
      ]),
    ...OP.BINPERSID,
    ...I(t.offset ?? 0),
    ...T(t.size),
    ...T(t.stride),
    ...OP.NEWFALSE,
    ...G("collections", "OrderedDict"),
    ...OP.EMPTY_TUPLE,
    ...OP.REDUCE,
    ...OP.TUPLE,
    ...OP.REDUCE,
  ];
}
function statePickle(items: [string, number[]][]): Uint8Array {
  return new Uint8Array([
    ...OP.PROTO2,
    ...G("collections", "OrderedDict"),
    ...OP.EMPTY_TUPLE,
    ...OP.REDUCE,
    ...OP.MARK,
    ...items.flatMap(([k, ops]) => [...S(k), ...ops]),
    ...OP.SETITEMS,
    ...OP.STOP,
  ]);
}
function f32bytes(xs: number[]): Uint8Array {
  return new Uint8Array(new Float32Array(xs).buffer);
}
/** A .pt archive: data.pkl plus storages, under `arch/`. */
function ptFile(pkl: Uint8Array, storages: Record<string, Uint8Array> = {}, extra: ZEntry[] = []): Uint8Array {
  return makeZip([
    { name: "arch/data.pkl", data: pkl },
    ...Object.entries(storages).map(([k, v]) => ({ name: `arch/data/${k}`, data: v })),
    { name: "arch/version", data: enc.encode("3\n") },
    ...extra,
  ]);
}
const W = { key: "0", numel: 6, size: [2, 3], stride: [3, 1] };
const W_DATA = { "0": f32bytes([0, 1, 2, 3, 4, 5]) };
function validPt(): Uint8Array {
  return ptFile(statePickle([["w", tensorOps(W)]]), W_DATA);
}

// ------------------------------------------------------------------ safetensors: reading

Deno.test("safetensors: golden files match an independent decoder (shapes, dtypes, values, metadata)", async () => {
  for (const f of ["dit_a", "dico_a", "dimr_a", "diffusion_a", "udit_a"]) {
    const path = FIX + f + ".safetensors";
    const { tensors, metadata } = await readSafetensors(path);
    const ref = naiveSafetensors(await Deno.readFile(path));
    assert.deepEqual(Object.keys(tensors).sort(), [...ref.keys()].sort());
    for (const [k, r] of ref) {
      const t = tensors[k];
      assert.deepEqual([...t.shape], r.shape, k);
      if (r.dtype === "F32") {
        assert.equal(t.dtype, "f32");
        assert.deepEqual(values(t), Array.from(new Float32Array(r.raw.buffer)));
      } else if (r.dtype === "I64") {
        assert.equal(t.dtype, "i32");
        assert.deepEqual(values(t), Array.from(new BigInt64Array(r.raw.buffer), Number));
      } else assert.fail(`unexpected golden dtype ${r.dtype}`);
    }
    if (f !== "diffusion_a") assert.equal(typeof JSON.parse(metadata.config), "object");
  }
  const dit = await readSafetensors(FIX + "dit_a.safetensors");
  assert.deepEqual(values(dit.tensors.t), [999, 17]);
  assert.deepEqual([...dit.tensors.loss.shape], []);
  assert.match(dit.metadata.repo_commit, /^[0-9a-f]{40}$/);
  // The in-memory parser gives the same result.
  const mem = parseSafetensors(await Deno.readFile(FIX + "dit_a.safetensors"), "dit_a");
  assert.deepEqual(Object.keys(mem.tensors), Object.keys(dit.tensors));
  for (const k of Object.keys(mem.tensors)) assert.deepEqual(values(mem.tensors[k]), values(dit.tensors[k]));
  assert.deepEqual(mem.metadata, dit.metadata);
});

Deno.test("safetensors: widening reads (BF16, F16, I64, U64, I16, I8, U8, U16, F8) give exact values", () => {
  const bf16 = new Uint16Array([0x3fc0, 0xc000, 0x7f80, 0x0001]); // 1.5, -2, inf, smallest subnormal
  const f16 = new Uint16Array([0x3e00, 0xc000, 0x7bff, 0x0001]); // 1.5, -2, 65504, 2^-24
  const i64 = new BigInt64Array([-(2n ** 31n), 2n ** 31n - 1n, 0n]);
  const u64 = new BigUint64Array([0n, 2n ** 32n - 1n]);
  const i16 = new Int16Array([-32768, 32767]);
  const i8 = new Int8Array([-128, 127]);
  const u8 = new Uint8Array([0, 255]);
  const u16 = new Uint16Array([65535, 1]);
  const f8 = new Uint8Array([0x38, 0xc0]); // e4m3: 1.0, -2.0
  const f8b = new Uint8Array([0x3c, 0x7c]); // e5m2: 1.0, inf
  const parts = [bf16, f16, i64, u64, i16, i8, u8, u16, f8, f8b].map((a) => new Uint8Array(a.buffer));
  const names = ["BF16", "F16", "I64", "U64", "I16", "I8", "U8", "U16", "F8_E4M3", "F8_E5M2"];
  const shapes = [[4], [4], [3], [2], [2], [2], [2], [2], [2], [2]];
  const header: Record<string, unknown> = {};
  let off = 0;
  names.forEach((n, i) => {
    header[n] = { dtype: n, shape: shapes[i], data_offsets: [off, off + parts[i].length] };
    off += parts[i].length;
  });
  const { tensors: t } = parseSafetensors(st(header, cat(...parts)), "widen.safetensors");
  assert.equal(t.BF16.dtype, "f32");
  assert.deepEqual(values(t.BF16), [1.5, -2, Infinity, 2 ** -133]);
  assert.equal(t.F16.dtype, typeof Float16Array === "undefined" ? "f32" : "f16");
  assert.deepEqual(values(t.F16), [1.5, -2, 65504, 2 ** -24]);
  assert.equal(t.I64.dtype, "i32");
  assert.deepEqual(values(t.I64), [-(2 ** 31), 2 ** 31 - 1, 0]);
  assert.equal(t.U64.dtype, "u32");
  assert.deepEqual(values(t.U64), [0, 2 ** 32 - 1]);
  assert.deepEqual(values(t.I16), [-32768, 32767]);
  assert.deepEqual(values(t.I8), [-128, 127]);
  assert.equal(t.U8.dtype, "i32");
  assert.deepEqual(values(t.U8), [0, 255]);
  assert.deepEqual(values(t.U16), [65535, 1]);
  assert.deepEqual(values(t.F8_E4M3), [1, -2]);
  assert.deepEqual(values(t.F8_E5M2), [1, Infinity]);
});

Deno.test("safetensors: a tensor larger than the 16 MB read chunk streams and converts correctly", async () => {
  const dir = await Deno.makeTempDir({ prefix: "difflab-io-" });
  try {
    const n = 2_200_003; // I64: 17.6 MB, so conversion crosses a chunk boundary at an odd element
    const big = new BigInt64Array(n);
    for (let i = 0; i < n; i++) big[i] = BigInt(i * 7 - 1_000_000);
    const path = `${dir}/big.safetensors`;
    await Deno.writeFile(
      path,
      st({ big: { dtype: "I64", shape: [n], data_offsets: [0, n * 8] } }, new Uint8Array(big.buffer)),
    );
    const { tensors } = await readSafetensors(path);
    const d = tensors.big.dataSync();
    assert.equal(d.length, n);
    for (const i of [0, 1, 2_097_151, 2_097_152, 2_097_153, n - 1]) {
      assert.equal(d[i], i * 7 - 1_000_000, `element ${i}`);
    }
    let bad = 0;
    for (let i = 0; i < n; i++) if (d[i] !== i * 7 - 1_000_000) bad++;
    assert.equal(bad, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ------------------------------------------------------------------ safetensors: writing

function sampleTensors(): Record<string, Tensor> {
  const out: Record<string, Tensor> = {
    "f32": tensor([[1.5, -0, NaN], [Infinity, -Infinity, 3.4e38]], { dtype: "f32" }),
    "f64": tensor([Math.PI, -1e-300, 5e-324], { dtype: "f64" }),
    "i32": tensor([-(2 ** 31), 2 ** 31 - 1, 0, 7], { dtype: "i32", shape: [2, 2] }),
    "u32": tensor([0, 2 ** 32 - 1, 12345], { dtype: "u32" }),
    "bool": tensor([true, false, true], { dtype: "bool" }),
    "scalar.f32": tensor(2.5, { dtype: "f32" }),
    "scalar.i32": tensor(-3, { dtype: "i32" }),
    "scalar.bool": tensor(true, { dtype: "bool" }),
    "empty.f32": fromHost(new Float32Array(0), [0], "f32"),
    "empty.3d": fromHost(new Int32Array(0), [2, 0, 3], "i32"),
    'weird "name"/ü.__proto__': tensor([1, 2], { dtype: "f32" }),
    ["__proto__"]: tensor([3], { dtype: "f32" }),
    "10": tensor([10], { dtype: "f32" }),
    "9": tensor([9], { dtype: "f32" }),
  };
  if (typeof Float16Array !== "undefined") {
    out.f16 = tensor([1.5, -2, 65504, 2 ** -24, -0], { dtype: "f16" });
    out["scalar.f16"] = tensor(0.5, { dtype: "f16" });
  }
  return out;
}

Deno.test("safetensors: write/read round trip for every dtype, 0-d and empty tensors, and metadata", async () => {
  const dir = await Deno.makeTempDir({ prefix: "difflab-io-" });
  try {
    const src = sampleTensors();
    const meta = { config: JSON.stringify({ a: 1 }), "ünïcode": "värde ✓", empty: "", __proto__x: "p" };
    const path = `${dir}/rt.safetensors`;
    await writeSafetensors(path, src, meta);
    const { tensors, metadata } = await readSafetensors(path);
    assert.deepEqual(Object.keys(tensors).sort(), Object.keys(src).sort());
    assert.deepEqual({ ...metadata }, meta);
    for (const [k, t] of Object.entries(src)) {
      const r = tensors[k];
      assert.equal(r.dtype, t.dtype, k);
      assert.deepEqual([...r.shape], [...t.shape], k);
      const a = values(t), b = values(r);
      assert.equal(a.length, b.length);
      a.forEach((v, i) => assert.ok(Object.is(v, b[i]), `${k}[${i}]: ${v} vs ${b[i]}`));
    }
    assert.ok(Object.prototype.hasOwnProperty.call(tensors, "__proto__"));
    assert.equal(Object.getPrototypeOf(tensors), Object.prototype);
    // Independent decoder agrees on layout; header is space-padded to 8 and keys are sorted.
    const bytes = await Deno.readFile(path);
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    assert.equal(n % 8, 0);
    const headerText = new TextDecoder().decode(bytes.subarray(8, 8 + n));
    assert.match(headerText, /^\{.*\} *$/);
    const keys = Object.keys(src).sort();
    assert.deepEqual([...naiveSafetensors(bytes).keys()].sort(), keys);
    const parsedHeader = JSON.parse(headerText);
    const ranges = keys.map((k) => parsedHeader[k].data_offsets as number[]);
    assert.equal(ranges[0][0], 0);
    for (let i = 1; i < ranges.length; i++) {
      assert.equal(ranges[i][0], ranges[i - 1][1], "sorted keys are laid out in order");
    }
    // Keys appear in the header text in sorted order (JSON objects would reorder integer-like keys).
    const at = keys.map((k) => headerText.indexOf(JSON.stringify(k) + ":{"));
    assert.ok(at.every((v, i) => v > 0 && (i === 0 || v > at[i - 1])), "header keys are written sorted");
    assert.ok(headerText.startsWith('{"__metadata__":{'));
    // Deterministic: writing again gives identical bytes; parse of the bytes equals the read.
    await writeSafetensors(`${dir}/rt2.safetensors`, src, meta);
    assert.deepEqual(await Deno.readFile(`${dir}/rt2.safetensors`), bytes);
    const mem = parseSafetensors(bytes, "rt");
    for (const k of keys) assert.deepEqual(values(mem.tensors[k]), values(tensors[k]));
    // No metadata argument: no __metadata__ entry, empty metadata on read.
    await writeSafetensors(`${dir}/nometa.safetensors`, { x: tensor([1]) });
    assert.deepEqual((await readSafetensors(`${dir}/nometa.safetensors`)).metadata, {});
    // An empty record is a valid (empty) file.
    await writeSafetensors(`${dir}/empty.safetensors`, {});
    assert.deepEqual(Object.keys((await readSafetensors(`${dir}/empty.safetensors`)).tensors), []);
    assert.deepEqual(
      (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).filter((n) => n.includes(".tmp-")),
      [],
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("safetensors: bad write arguments are rejected with the path named, before anything is written", async () => {
  const dir = await Deno.makeTempDir({ prefix: "difflab-io-" });
  try {
    const p = `${dir}/bad.safetensors`;
    await expectRejectsAsync(() => writeSafetensors(p, { __metadata__: tensor([1]) }), p, /reserved/);
    await expectRejectsAsync(() => writeSafetensors(p, { a: [1, 2] as unknown as Tensor }), p, /not a Tensor/);
    await expectRejectsAsync(
      () => writeSafetensors(p, { a: tensor([1]) }, { k: 3 as unknown as string }),
      p,
      /not a string/,
    );
    const gone = tensor([1, 2]);
    gone.dispose();
    await expectRejectsAsync(() => writeSafetensors(p, { a: gone }), p, /disposed/);
    await expectRejectsAsync(
      () => writeSafetensors(`${dir}/no/such/dir/x.safetensors`, { a: tensor([1]) }),
      "no/such/dir",
    );
    assert.deepEqual(await Array.fromAsync(Deno.readDir(dir)), []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("safetensors: atomic writes never replace a good file with a partial one", async () => {
  const dir = await Deno.makeTempDir({ prefix: "difflab-io-" });
  try {
    const path = `${dir}/ckpt.safetensors`;
    await writeSafetensors(path, { w: tensor([1, 2, 3]) }, { step: "1" });
    const good = await Deno.readFile(path);

    // A failure in the middle of writing (a tensor's data cannot be read) leaves the old file and no temp file.
    const poisoned = tensor([4, 5, 6]);
    Object.defineProperty(poisoned, "data", { value: () => Promise.reject(new Error("device lost")) });
    await expectRejectsAsync(
      () => writeSafetensors(path, { a: tensor([0]), w: poisoned }, { step: "2" }),
      path,
      /device lost/,
    );
    assert.deepEqual(await Deno.readFile(path), good);
    assert.deepEqual((await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name), ["ckpt.safetensors"]);

    // A failing rename (target is a non-empty directory) removes the temp file and reports the path.
    const dpath = `${dir}/isdir.safetensors`;
    await Deno.mkdir(dpath);
    await Deno.writeFile(`${dpath}/keep`, new Uint8Array([1]));
    await expectRejectsAsync(() => writeSafetensors(dpath, { w: tensor([1]) }), dpath);
    assert.deepEqual((await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).sort(), [
      "ckpt.safetensors",
      "isdir.safetensors",
    ]);

    // A stale temp file from a crashed writer (garbage) is never mistaken for the checkpoint.
    await Deno.writeFile(`${path}.tmp-deadbeef0000`, new Uint8Array([1, 2, 3, 4, 5]));
    assert.deepEqual((await readSafetensors(path)).metadata, { step: "1" });
    await writeSafetensors(path, { w: tensor([7, 8, 9]) }, { step: "3" });
    const r = await readSafetensors(path);
    assert.deepEqual(r.metadata, { step: "3" });
    assert.deepEqual(values(r.tensors.w), [7, 8, 9]);
    await expectRejectsAsync(() => readSafetensors(`${path}.tmp-deadbeef0000`), ".tmp-deadbeef0000");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("safetensors: SIGKILL at random moments during repeated writes always leaves a readable, consistent file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "difflab-io-" });
  try {
    const path = `${dir}/ckpt.safetensors`;
    // The child rewrites an 8 MB tensor filled with the step number, forever.
    const child = `
      import { writeSafetensors } from ${JSON.stringify(IO_URL)};
      import { fromHost } from ${JSON.stringify(new URL("../tensor/tensor.ts", import.meta.url).href)};
      for (let step = 1; ; step++) {
        await writeSafetensors(${
      JSON.stringify(path)
    }, { w: fromHost(new Float32Array(1 << 21).fill(step), [1 << 21], "f32") }, { step: String(step) });
        console.log(step);
      }`;
    let midWriteKills = 0;
    const trials = 5;
    for (let trial = 0; trial < trials; trial++) {
      const p = new Deno.Command(Deno.execPath(), {
        args: ["eval", "--config", CONFIG, child],
        stdout: "piped",
        stderr: "null",
        env: { RUST_BACKTRACE: "0" },
      }).spawn();
      // Wait for at least one completed write in this trial, then kill at a random moment.
      const reader = p.stdout.getReader();
      let buf = "";
      while (!buf.includes("\n")) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += new TextDecoder().decode(value);
      }
      await new Promise((r) => setTimeout(r, 5 + Math.floor(Math.random() * 120)));
      p.kill("SIGKILL");
      await p.status;
      reader.releaseLock();
      await p.stdout.cancel();
      const { tensors, metadata } = await readSafetensors(path);
      const step = Number(metadata.step);
      assert.ok(step >= 1, `trial ${trial}: step ${metadata.step}`);
      const d = tensors.w.dataSync();
      assert.equal(d.length, 1 << 21);
      assert.ok(d.every((v) => v === step), `trial ${trial}: tensor content does not match step ${step}`);
      const stale = (await Array.fromAsync(Deno.readDir(dir))).filter((e) => e.name.includes(".tmp-"));
      if (stale.length) midWriteKills++;
      for (const e of stale) await Deno.remove(`${dir}/${e.name}`);
    }
    // Stale temp files show the kill hit a write in progress at least sometimes; either way the file was good.
    console.log(`    ${trials} SIGKILL trials, ${midWriteKills} left a partial temp file behind; all reads consistent`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ------------------------------------------------------------------ PyTorch .pt

Deno.test("torch: dit_a_state_dict.pt loads to exactly the param.* tensors of dit_a.safetensors", async () => {
  const pt = await readTorch(FIX + "dit_a_state_dict.pt");
  const st = (await readSafetensors(FIX + "dit_a.safetensors")).tensors;
  const want = Object.keys(st).filter((k) => k.startsWith("param.")).map((k) => k.slice("param.".length));
  assert.equal(want.length, 32);
  assert.deepEqual(Object.keys(pt).sort(), want.sort());
  for (const k of want) {
    const a = pt[k], b = st["param." + k];
    assert.equal(a.dtype, b.dtype, k);
    assert.deepEqual([...a.shape], [...b.shape], k);
    const x = values(a), y = values(b);
    assert.ok(x.every((v, i) => Object.is(v, y[i])), `${k}: values differ`);
  }
  const mem = parseTorch(await Deno.readFile(FIX + "dit_a_state_dict.pt"), "dit_a_state_dict.pt");
  assert.deepEqual(Object.keys(mem), Object.keys(pt));
  for (const k of Object.keys(pt)) assert.deepEqual(values(mem[k]), values(pt[k]));
});

Deno.test("torch: strided views, shared storages, every storage dtype, protocols 2 and 4, deflate, nesting", async () => {
  const exp = (await readSafetensors(FIX + "torchlike_expected.safetensors")).tensors;
  const dtypes: Record<string, DType> = {
    half: typeof Float16Array === "undefined" ? "f32" : "f16",
    scalar: "f64",
    long: "i32",
    int: "i32",
    short: "i32",
    char: "i32",
    byte: "i32",
    bool: "bool",
    long_strided: "i32",
    double_t: "f64",
    half_t: typeof Float16Array === "undefined" ? "f32" : "f16",
    bool_t: "bool",
  };
  for (const f of ["torchlike_p2.pt", "torchlike_p4.pt"]) {
    const t = await readTorch(FIX + f);
    // Nested dicts are flattened with "."; non-tensor leaves ("step", "note") are skipped.
    assert.deepEqual(Object.keys(t).sort(), Object.keys(exp).sort(), f);
    for (const k of Object.keys(exp)) {
      assert.deepEqual([...t[k].shape], [...exp[k].shape], `${f} ${k}`);
      assert.equal(t[k].dtype, dtypes[k] ?? "f32", `${f} ${k}`);
      assert.deepEqual(values(t[k]), values(exp[k]), `${f} ${k}`);
    }
  }
  // Spot checks that do not depend on the generator: a transposed view and an expanded (stride 0) view.
  const t = await readTorch(FIX + "torchlike_p2.pt");
  assert.deepEqual(values(t.transposed), [-2, 0, 2, -1.5, 0.5, 2.5, -1, 1, 3, -0.5, 1.5, 3.5]);
  assert.deepEqual(values(t.expanded), [-1.5, -1, -0.5, -1.5, -1, -0.5]);
  assert.deepEqual(values(t.long), [0, -1, 2 ** 31 - 1, -(2 ** 31), 999, 17]);
});

Deno.test("torch: hand-assembled pickles: the valid base parses; each single defect is rejected for its reason", () => {
  const ok = parseTorch(validPt(), "base.pt");
  assert.deepEqual(Object.keys(ok), ["w"]);
  assert.deepEqual(values(ok.w), [0, 1, 2, 3, 4, 5]);
  // Transposed view of the same storage via the hand assembler.
  const tr = parseTorch(
    ptFile(statePickle([["t", tensorOps({ ...W, size: [3, 2], stride: [1, 3] })]]), W_DATA),
    "tr.pt",
  );
  assert.deepEqual(values(tr.t), [0, 3, 1, 4, 2, 5]);
  for (const c of malformedTorch()) {
    if (!c.re) continue;
    expectRejects(() => parseTorch(c.bytes, c.name), c.name, c.re);
  }
});

// ------------------------------------------------------------------ malformed corpus

interface Case {
  name: string;
  bytes: Uint8Array;
  re?: RegExp;
}

function malformedSafetensors(dit: Uint8Array): Case[] {
  const cases: Case[] = [];
  const add = (name: string, bytes: Uint8Array, re?: RegExp) => cases.push({ name: `${name}.safetensors`, bytes, re });
  // Every truncation of a small valid file.
  const small = smallValid();
  for (let n = 0; n < small.length; n++) add(`trunc-small-${n}`, small.subarray(0, n));
  add("trailing-bytes", cat(small, [0, 0, 0, 0]), /trailing bytes|cover only/);
  // Structurally interesting truncations of a real golden file.
  const n = Number(new DataView(dit.buffer, dit.byteOffset).getBigUint64(0, true));
  const ds = 8 + n;
  const entries = [...naiveSafetensors(dit).keys()];
  const header = JSON.parse(new TextDecoder().decode(dit.subarray(8, ds)));
  const cuts = new Set([0, 1, 7, 8, 9, 8 + (n >> 1), ds - 1, ds, ds + 1, dit.length - 1]);
  for (const k of entries.slice(0, 6)) {
    const [b, e] = header[k].data_offsets;
    for (const c of [ds + b - 1, ds + b + 1, ds + e - 1]) if (c > 0 && c < dit.length) cuts.add(c);
  }
  for (const c of cuts) add(`trunc-dit-${c}`, dit.subarray(0, c));
  // Header length field.
  const hl = (name: string, len: bigint, re: RegExp) => add(`hlen-${name}`, st({}, [], { len }), re);
  hl("2^64-1", 2n ** 64n - 1n, /limit/);
  hl("2^63", 2n ** 63n, /limit/);
  hl("2^40", 2n ** 40n, /limit/);
  hl("100MB+1", 100_000_001n, /limit/);
  hl("past-eof", 9n, /exceeds the file size/);
  hl("zero", 0n, /too small/);
  add("hlen-one", st(null, [], { raw: enc.encode("{"), pad: false }), /too small/);
  // Header text.
  const raw = (name: string, text: string | Uint8Array, re: RegExp) =>
    add(`hdr-${name}`, st(null, [], { raw: typeof text === "string" ? enc.encode(text) : text }), re);
  raw("not-utf8", cat(enc.encode('{"a\xff'), [0xff, 0xfe], enc.encode('":1}')), /UTF-8/);
  raw("lone-surrogate", cat(enc.encode('{"'), [0xed, 0xa0, 0x80], enc.encode('":{}}')), /UTF-8/);
  raw("trailing-comma", '{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},}', /JSON/);
  raw("truncated-json", '{"a":{"dtype":"F32","shape":[0]', /JSON/);
  raw("array", "[1,2,3]", /start with/);
  raw("null", "null", /start with/);
  raw("number", "42", /start with/);
  raw("string", '"x"', /start with/);
  raw("leading-space", ' {"a":1}', /start with/);
  raw("nul-padding", cat(enc.encode("{}"), [0, 0, 0, 0, 0, 0]), /JSON/);
  raw("garbage", "{\x01\x02\x03", /JSON/);
  raw("nested-deep", "{" + '"a":'.repeat(1) + "[".repeat(5000) + "]".repeat(5000) + "}", /not an object|shape/);
  const hdr = (name: string, h: unknown, data: number[] | Uint8Array, re: RegExp) =>
    add(`hdr-${name}`, st(h, data), re);
  const e8 = new Array(8).fill(0);
  const ok = (over: Record<string, unknown>) => ({ a: { dtype: "F32", shape: [2], data_offsets: [0, 8], ...over } });
  for (const d of ["F128", "f32", "float32", "", "Q8", "__proto__", "toString"]) {
    hdr(`dtype-${d || "empty"}`, ok({ dtype: d }), e8, /unknown dtype/);
  }
  hdr("dtype-number", ok({ dtype: 7 }), e8, /unknown dtype/);
  hdr("dtype-null", ok({ dtype: null }), e8, /unknown dtype/);
  hdr("dtype-missing", { a: { shape: [2], data_offsets: [0, 8] } }, e8, /missing "dtype"/);
  const shapes: [string, unknown][] = [
    ["neg", [-2]],
    ["frac", [2.5]],
    ["string-dim", ["2"]],
    ["string", "2"],
    ["null", null],
    ["object", { a: 1 }],
    ["huge", [1e15, 1e15]],
    ["2^53", [2 ** 53]],
    ["1e300", [1e300]],
    ["product-overflow", [2 ** 30, 2 ** 30, 2 ** 30]],
    ["wrong-size", [3]],
    ["many-dims", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]],
  ];
  for (const [nm, s] of shapes) hdr(`shape-${nm}`, ok({ shape: s }), e8, /shape/);
  hdr("shape-missing", { a: { dtype: "F32", data_offsets: [0, 8] } }, e8, /missing "shape"/);
  const offs: [string, unknown, RegExp][] = [
    ["reversed", [8, 0], /end before begin/],
    ["short", [0, 4], /span/],
    ["long", [0, 12], /past the end|span/],
    ["past-eof", [0, 1e12], /past the end/],
    ["negative", [-8, 0], /non-negative/],
    ["frac", [0.5, 8.5], /non-negative integers/],
    ["string", "0,8", /pair/],
    ["single", [0], /pair/],
    ["triple", [0, 8, 16], /pair/],
    ["null", null, /pair/],
    ["huge", [2 ** 60, 2 ** 60 + 8], /non-negative integers|past the end/],
  ];
  for (const [nm, o, re] of offs) hdr(`offsets-${nm}`, ok({ data_offsets: o }), e8, re);
  hdr("offsets-missing", { a: { dtype: "F32", shape: [2] } }, e8, /missing "data_offsets"/);
  const two = (a: number[], b: number[], size: number, re: RegExp, name: string) =>
    hdr(
      name,
      {
        a: { dtype: "F32", shape: [2], data_offsets: a },
        b: { dtype: "F32", shape: [2], data_offsets: b },
      },
      new Array(size).fill(0),
      re,
    );
  two([0, 8], [4, 12], 12, /overlap/, "overlap-partial");
  two([0, 8], [0, 8], 8, /overlap/, "overlap-same");
  two([0, 8], [12, 20], 20, /not covered|hole/, "hole");
  two([4, 12], [12, 20], 20, /not covered|hole/, "hole-at-start");
  hdr("meta-number", { __metadata__: { a: 1 }, ...ok({}) }, e8, /not a string/);
  hdr("meta-object", { __metadata__: { a: {} }, ...ok({}) }, e8, /not a string/);
  hdr("meta-array", { __metadata__: ["a"], ...ok({}) }, e8, /__metadata__/);
  hdr("meta-null", { __metadata__: null, ...ok({}) }, e8, /__metadata__/);
  hdr("entry-array", { a: [1, 2] }, [], /not an object/);
  hdr("entry-string", { a: "F32" }, [], /not an object/);
  hdr("entry-null", { a: null }, [], /not an object/);
  hdr("metadata-only-with-data", { __metadata__: { a: "b" } }, e8, /cover only|trailing/);
  const i64 = new Uint8Array(new BigInt64Array([1n, 2n ** 40n]).buffer);
  hdr(
    "i64-out-of-range",
    { tokens: { dtype: "I64", shape: [2], data_offsets: [0, 16] } },
    i64,
    /"tokens".*does not fit in i32/,
  );
  const i64n = new Uint8Array(new BigInt64Array([-(2n ** 31n) - 1n]).buffer);
  hdr("i64-too-negative", { t: { dtype: "I64", shape: [1], data_offsets: [0, 8] } }, i64n, /"t".*does not fit/);
  const u64 = new Uint8Array(new BigUint64Array([2n ** 32n]).buffer);
  hdr("u64-out-of-range", { u: { dtype: "U64", shape: [1], data_offsets: [0, 8] } }, u64, /"u".*does not fit in u32/);
  return cases;
}

/** Deterministic pseudo-random bytes (xorshift), so corpus cases never depend on luck. */
function noise(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed * 2654435761 >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

function findEocd(b: Uint8Array): number {
  for (let i = b.length - 22; i >= 0; i--) {
    if (b[i] === 0x50 && b[i + 1] === 0x4b && b[i + 2] === 5 && b[i + 3] === 6) return i;
  }
  throw new Error("test setup: no EOCD");
}
function patch(b: Uint8Array, at: number, bytes: number[]): Uint8Array {
  const c = b.slice();
  c.set(bytes, at);
  return c;
}

function malformedTorch(p2?: Uint8Array, p4?: Uint8Array, dit?: Uint8Array): Case[] {
  const cases: Case[] = [];
  const add = (name: string, bytes: Uint8Array, re?: RegExp) => cases.push({ name: `${name}.pt`, bytes, re });
  const pk = (name: string, items: [string, number[]][], re: RegExp, storages = W_DATA) =>
    add(`pickle-${name}`, ptFile(statePickle(items), storages), re);
  const rawPk = (name: string, ops: number[], re: RegExp) =>
    add(`pickle-${name}`, ptFile(new Uint8Array(ops), W_DATA), re);
  const w = tensorOps(W);
  // Globals outside the allow-list (never executed, always named).
  const evil: [string, string][] = [
    ["os", "system"],
    ["posix", "system"],
    ["nt", "system"],
    ["builtins", "eval"],
    ["builtins", "exec"],
    ["builtins", "getattr"],
    ["builtins", "__import__"],
    ["__builtin__", "eval"],
    ["subprocess", "Popen"],
    ["subprocess", "check_output"],
    ["torch", "load"],
    ["torch._utils", "_rebuild_qtensor"],
    ["torch._utils", "_rebuild_sparse_tensor"],
    ["numpy.core.multiarray", "_reconstruct"],
    ["collections", "defaultdict"],
    ["argparse", "Namespace"],
    ["webbrowser", "open"],
    ["shutil", "rmtree"],
  ];
  for (const [m, n] of evil) {
    const call = [...G(m, n), ...S("echo pwned"), 0x85, ...OP.REDUCE];
    rawPk(
      `global-${m}.${n}`,
      [...OP.PROTO2, ...call, ...OP.STOP],
      new RegExp(`"${m.replace(/\./g, "\\.")}\\.${n}".*allow-list`),
    );
    // Also hidden inside an otherwise valid state dict.
    pk(`nested-global-${m}.${n}`, [["w", w], ["x", call]], /allow-list/);
  }
  const sg = [
    0x80,
    4,
    0x8c,
    2,
    ...enc.encode("os"),
    0x8c,
    6,
    ...enc.encode("system"),
    0x93,
    ...S("id"),
    0x85,
    0x52,
    0x2e,
  ];
  rawPk("stack-global-os.system", sg, /"os\.system".*allow-list/);
  rawPk("stack-global-non-string", [0x80, 4, ...I(1), ...I(2), 0x93, 0x2e], /STACK_GLOBAL operands/);
  // Opcodes outside the allowed set.
  const badOps: [string, number[]][] = [
    ["INST", [0x69, ...enc.encode("os\nsystem\n")]],
    ["OBJ", [0x28, ...G("collections", "OrderedDict"), 0x6f]],
    ["NEWOBJ", [...G("collections", "OrderedDict"), 0x29, 0x81]],
    ["NEWOBJ_EX", [0x92]],
    ["EXT1", [0x82, 1]],
    ["EXT2", [0x83, 1, 0]],
    ["PERSID", [0x50, ...enc.encode("0\n")]],
    ["INT", [0x49, ...enc.encode("1\n")]],
    ["PUT", [0x4e, 0x70, ...enc.encode("0\n")]],
    ["EMPTY_SET", [0x8f]],
    ["FROZENSET", [0x28, 0x91]],
    ["BYTEARRAY8", [0x96, ...u64le(0n)]],
    ["NEXT_BUFFER", [0x97]],
    ["0xff", [0xff]],
    ["0x00", [0x00]],
    ["0x20", [0x20]],
  ];
  for (const [nm, ops] of badOps) rawPk(`opcode-${nm}`, [...OP.PROTO2, ...ops, ...OP.STOP], /not allowed|allow-list/);
  // Structural pickle damage.
  rawPk("empty", [], /without STOP/);
  rawPk("no-stop", [...OP.PROTO2, ...OP.EMPTY_DICT], /without STOP/);
  rawPk("underflow-reduce", [...OP.PROTO2, ...OP.REDUCE, ...OP.STOP], /underflow/);
  rawPk("underflow-stop", [...OP.PROTO2, ...OP.STOP], /STOP with 0/);
  rawPk("two-on-stop", [...OP.PROTO2, ...OP.EMPTY_DICT, ...OP.EMPTY_DICT, ...OP.STOP], /STOP with 2/);
  rawPk("open-mark", [...OP.PROTO2, ...OP.MARK, ...OP.EMPTY_DICT, ...OP.STOP], /open MARK/);
  rawPk("binget-missing", [...OP.PROTO2, 0x68, 9, ...OP.STOP], /memo index 9/);
  rawPk("long-binget-missing", [...OP.PROTO2, 0x6a, ...u32le(2 ** 31), ...OP.STOP], /memo index/);
  rawPk("protocol-6", [0x80, 6, ...OP.EMPTY_DICT, ...OP.STOP], /protocol 6/);
  rawPk("protocol-1", [0x80, 1, ...OP.EMPTY_DICT, ...OP.STOP], /protocol 1/);
  rawPk("binunicode-huge", [...OP.PROTO2, 0x58, ...u32le(0xffffffff), ...OP.STOP], /truncated pickle/);
  rawPk("binunicode8-huge", [0x80, 4, 0x8d, ...u64le(2n ** 40n), ...OP.STOP], /truncated pickle/);
  rawPk("binbytes-huge", [0x80, 3, 0x42, ...u32le(0x7fffffff), ...OP.STOP], /truncated pickle/);
  rawPk("long4-huge", [...OP.PROTO2, 0x8b, ...u32le(0x7fffffff), ...OP.STOP], /too large/);
  rawPk("frame-truncated", [0x80, 4, 0x95, 1, 2], /truncated pickle/);
  rawPk("not-utf8-string", [...OP.PROTO2, 0x58, ...u32le(2), 0xff, 0xfe, ...OP.STOP], /UTF-8/);
  rawPk("global-no-newline", [...OP.PROTO2, 0x63, ...enc.encode("collections OrderedDict")], /newline/);
  rawPk("root-list", [...OP.PROTO2, 0x5d, ...OP.STOP], /not a dict/);
  rawPk("root-int", [...OP.PROTO2, ...I(5), ...OP.STOP], /not a dict/);
  rawPk("root-none", [...OP.PROTO2, 0x4e, ...OP.STOP], /not a dict/);
  rawPk(
    "dict-cycle",
    [...OP.PROTO2, ...OP.EMPTY_DICT, 0x71, 0, ...OP.MARK, ...S("a"), 0x68, 0, ...OP.SETITEMS, ...OP.STOP],
    /contains itself/,
  );
  const deep: number[] = [...OP.PROTO2];
  for (let i = 0; i < 100; i++) deep.push(...OP.EMPTY_DICT, ...S("k"));
  deep.push(...OP.EMPTY_DICT);
  for (let i = 0; i < 100; i++) deep.push(0x73);
  deep.push(...OP.STOP);
  rawPk("dict-nesting-100", deep, /nested more than/);
  rawPk(
    "setitems-on-list",
    [...OP.PROTO2, 0x5d, ...OP.MARK, ...S("a"), ...I(1), ...OP.SETITEMS, ...OP.STOP],
    /not a dict/,
  );
  rawPk("append-on-dict", [...OP.PROTO2, ...OP.EMPTY_DICT, ...I(1), 0x61, ...OP.STOP], /not a list/);
  rawPk(
    "reduce-non-callable",
    [...OP.PROTO2, ...S("x"), ...OP.EMPTY_TUPLE, ...OP.REDUCE, ...OP.STOP],
    /not an allow-listed callable/,
  );
  rawPk("reduce-storage-class", [
    ...OP.PROTO2,
    ...G("torch", "FloatStorage"),
    ...OP.EMPTY_TUPLE,
    ...OP.REDUCE,
    ...OP.STOP,
  ], /cannot be called/);
  rawPk("build-on-list", [...OP.PROTO2, 0x5d, ...OP.EMPTY_DICT, ...OP.BUILD, ...OP.STOP], /BUILD on list/);
  rawPk(
    "dict-tuple-key",
    [...OP.PROTO2, ...OP.EMPTY_DICT, ...OP.EMPTY_TUPLE, ...I(1), 0x73, ...OP.STOP],
    /unsupported dict key/,
  );
  // Tensor/storage semantics.
  const pid = (items: number[]) => [...OP.MARK, ...items, ...OP.TUPLE];
  const std = (
    stype = "FloatStorage",
    key = "0",
    numel = 6,
  ) => [...S("storage"), ...G("torch", stype), ...S(key), ...S("cpu"), ...I(numel)];
  pk(
    "pid-arity",
    [["w", tensorOps(W, pid([...S("storage"), ...G("torch", "FloatStorage"), ...S("0")]))]],
    /persistent id/,
  );
  pk("pid-tag", [[
    "w",
    tensorOps(W, pid([...S("module"), ...G("torch", "FloatStorage"), ...S("0"), ...S("cpu"), ...I(6)])),
  ]], /persistent id/);
  pk("pid-not-storage-class", [[
    "w",
    tensorOps(W, pid([...S("storage"), ...G("collections", "OrderedDict"), ...S("0"), ...S("cpu"), ...I(6)])),
  ]], /not a storage class/);
  pk("pid-key-path", [["w", tensorOps(W, pid(std("FloatStorage", "../../etc/passwd")))]], /plain name/);
  pk("pid-negative-numel", [[
    "w",
    tensorOps(W, pid([...S("storage"), ...G("torch", "FloatStorage"), ...S("0"), ...S("cpu"), ...I(-1)])),
  ]], /non-negative/);
  pk("pid-conflicting", [["w", w], ["v", tensorOps({ ...W, stype: "IntStorage" })]], /conflicting/);
  pk("storage-missing", [["w", tensorOps({ ...W, key: "7" })]], /storage "7" is missing/);
  pk("storage-size-mismatch", [["w", tensorOps({ ...W, numel: 7, size: [7], stride: [1] })]], /needs 28 bytes/);
  pk("view-offset-past-end", [["w", tensorOps({ ...W, offset: 1 })]], /reaches element 6/);
  pk("view-stride-past-end", [["w", tensorOps({ ...W, stride: [4, 1] })]], /reaches element/);
  pk("view-big-dims", [["w", tensorOps({ ...W, size: [100000, 100000], stride: [1, 1] })]], /reaches element/);
  pk("view-negative-stride", [["w", tensorOps({ ...W, stride: [3, -1] })]], /non-negative/);
  pk("view-rank-mismatch", [["w", tensorOps({ ...W, stride: [3] })]], /2 dims but stride has 1/);
  pk(
    "view-too-many-dims",
    [["w", tensorOps({ ...W, size: new Array(65).fill(1), stride: new Array(65).fill(1) })]],
    /dimensions/,
  );
  pk(
    "view-expand-bomb",
    [["w", tensorOps({ ...W, size: [1 << 20, 1 << 20], stride: [0, 0] })]],
    /"w".*over the \d+-byte limit/,
  );
  pk("view-empty-offset-past-end", [["w", tensorOps({ ...W, offset: 100, size: [0], stride: [1] })]], /past the end/);
  const longData = { "0": new Uint8Array(new BigInt64Array([1n, 2n ** 35n]).buffer) };
  pk(
    "long-out-of-range",
    [["idx", tensorOps({ key: "0", stype: "LongStorage", numel: 2, size: [2], stride: [1] })]],
    /"idx".*does not fit in i32/,
    longData,
  );
  pk(
    "rebuild-arity",
    [["w", [...G("torch._utils", "_rebuild_tensor_v2"), ...OP.EMPTY_TUPLE, ...OP.REDUCE]]],
    /takes 6-7 arguments/,
  );
  pk("parameter-not-tensor", [["w", [
    ...G("torch._utils", "_rebuild_parameter"),
    ...OP.MARK,
    ...I(1),
    0x88,
    0x4e,
    ...OP.TUPLE,
    ...OP.REDUCE,
  ]]], /not a tensor/);
  pk(
    "duplicate-flattened-name",
    [["a.b", w], ["a", [...OP.EMPTY_DICT, ...S("b"), ...w, 0x73]]],
    /duplicate tensor name "a\.b"/,
  );
  // Archive-level problems.
  add(
    "byteorder-big",
    ptFile(statePickle([["w", w]]), W_DATA, [{ name: "arch/byteorder", data: enc.encode("big") }]),
    /big/,
  );
  add("no-data-pkl", makeZip([{ name: "arch/other.pkl", data: statePickle([]) }]), /no data\.pkl/);
  add(
    "two-data-pkl",
    makeZip([{ name: "a/data.pkl", data: statePickle([]) }, { name: "b/data.pkl", data: statePickle([]) }]),
    /2 data\.pkl/,
  );
  const pkl = statePickle([["w", w]]);
  const base = [{ name: "arch/data.pkl", data: pkl }, { name: "arch/data/0", data: W_DATA["0"] }];
  add("encrypted", makeZip([{ ...base[0], flags: 1 }, base[1]]), /encrypted/);
  add("method-bzip2", makeZip([{ ...base[0], method: 12 }, base[1]]), /compression method 12/);
  add("duplicate-entry", makeZip([...base, base[1]]), /duplicate entry/);
  add("overlapping-entries", makeZip([base[0], { ...base[1], lho: 0 }]), /overlaps|local header name/);
  add("bad-crc", makeZip([{ ...base[0], crc: 12345 }, base[1]]), /CRC-32/);
  add("bad-crc-storage", makeZip([base[0], { ...base[1], crc: 1 }]), /CRC-32 mismatch in entry "arch\/data\/0"/);
  add("stored-size-lie", makeZip([base[0], { ...base[1], usize: 20 }]), /compressed size/);
  add(
    "deflate-truncated",
    makeZip([{ ...base[0], deflate: true, usize: pkl.length + 6 }, base[1]]),
    /inflated to \d+ bytes but declares/,
  );
  // Zip bombs: declared sizes are checked before inflating; lies are caught while inflating.
  const zeros = new Uint8Array(1 << 20);
  add(
    "bomb-ratio",
    makeZip([base[0], { name: "arch/data/0", data: zeros.subarray(0, 1000), deflate: true, usize: 2 ** 32 - 2 }]),
    /ratio|zip bomb/,
  );
  add(
    "bomb-inflates-past-declared",
    makeZip([base[0], { name: "arch/data/0", data: zeros, deflate: true, usize: 24, crc: crc(W_DATA["0"]) }]),
    /more than its declared 24 bytes/,
  );
  const filler = noise(300_000, 1);
  add(
    "bomb-total-over-limit",
    makeZip([
      ...base,
      ...[1, 2, 3, 4, 5].map((i) => ({ name: `arch/pad${i}`, data: filler, method: 8, usize: 300_000_000 })),
    ]),
    /limit|zip bomb/,
  );
  add(
    "deflate-garbage",
    makeZip([base[0], { name: "arch/data/0", data: noise(64, 2), method: 8, usize: 24, crc: 0 }]),
    /deflate|inflate/,
  );
  // Not a zip at all.
  add("empty-file", new Uint8Array(0), /not a zip/);
  add("random-100", noise(100, 3), /not a zip/);
  add(
    "legacy-pickle",
    new Uint8Array([
      0x80,
      0x02,
      0x8a,
      0x0a,
      0x6c,
      0xfc,
      0x9c,
      0x46,
      0xf9,
      0x20,
      0x6a,
      0xa8,
      0x50,
      0x19,
      ...new Array(40).fill(0x2e),
    ]),
    /legacy/,
  );
  add("safetensors-as-pt", smallValid(), /not a zip/);
  add("tar-header", cat(enc.encode("archive/data.pkl"), new Array(500).fill(0)), /not a zip/);
  // Byte-level damage to real archives.
  const d = dit ?? new Uint8Array(0);
  if (dit) {
    const e = findEocd(d);
    const dv = new DataView(d.buffer, d.byteOffset);
    const cdOff = dv.getUint32(e + 16, true), cdSize = dv.getUint32(e + 12, true);
    const z64 = Number(dv.getBigUint64(e - 20 + 8, true));
    const firstLho = 0,
      secondLho = (() => {
        const nlen = dv.getUint16(cdOff + 28, true),
          xlen = dv.getUint16(cdOff + 30, true),
          clen = dv.getUint16(cdOff + 32, true);
        return dv.getUint32(cdOff + 46 + nlen + xlen + clen + 42, true);
      })();
    const cuts = [
      0,
      1,
      3,
      4,
      21,
      22,
      29,
      30,
      64,
      1000,
      secondLho,
      secondLho + 10,
      cdOff - 1,
      cdOff,
      cdOff + 23,
      cdOff + cdSize - 1,
      z64,
      z64 + 30,
      e - 20,
      e - 1,
      e,
      e + 10,
      d.length - 1,
    ];
    for (const c of cuts) add(`trunc-dit-pt-${c}`, d.subarray(0, c));
    add("dit-cd-signature", patch(d, cdOff, [0x50, 0x4b, 9, 9]), /central directory entry 0 is corrupt/);
    add("dit-cd-method", patch(d, cdOff + 10, [99, 0]), /compression method 99/);
    add("dit-cd-flags-encrypted", patch(d, cdOff + 8, [1, 0]), /encrypted/);
    add("dit-cd-usize", patch(d, cdOff + 24, [0xff, 0xff, 0, 0]), /compressed size/);
    add("dit-cd-both-sizes", patch(patch(d, cdOff + 20, u32le(1 << 29)), cdOff + 24, u32le(1 << 29)), /overlaps/);
    add("dit-cd-name-len", patch(d, cdOff + 28, [0xff, 0x7f]), /runs past|corrupt/);
    add("dit-cd-lho", patch(d, cdOff + 42, u32le(firstLho + 7)), /local header|overlaps|signature/);
    add("dit-cd-crc", patch(d, cdOff + 16, [0, 0, 0, 0]), /CRC-32/);
    add("dit-local-signature", patch(d, firstLho, [0, 0, 0, 0]), /local header signature/);
    add("dit-local-name", patch(d, firstLho + 30, [0x41]), /does not match/);
    const pklData = firstLho + 30 + dv.getUint16(firstLho + 26, true) + dv.getUint16(firstLho + 28, true);
    add(
      "dit-pkl-byte",
      patch(d, pklData + 100, [d[pklData + 100] ^ 0x40]),
      /CRC-32 mismatch in entry "dit_a_state_dict\/data\.pkl"/,
    );
    add("dit-storage-byte", patch(d, secondLho + 200, [0x12, 0x34]), /CRC-32/);
    add("dit-eocd-cd-offset", patch(d, e + 16, u32le(cdOff + 1)), /disagree|central directory/);
    add("dit-eocd-cd-size", patch(d, e + 12, u32le(cdSize - 1)), /disagree|central directory/);
    add("dit-eocd-count", patch(d, e + 10, u16le(1000)), /disagree|entries|multi-disk/);
    add("dit-eocd-comment-len", patch(d, e + 20, u16le(5)), /not a zip/);
    add("dit-z64-offset", patch(d, e - 20 + 8, u32le(z64 + 3)), /zip64|signature|out of range/);
    add("dit-z64-offset-huge", patch(d, e - 20 + 8, [...u32le(0), ...u32le(0x7fffffff)]), /plausible|out of range/);
    add("dit-z64-signature", patch(d, z64, [0, 0, 0, 0]), /zip64/);
    add("dit-z64-count", patch(d, z64 + 32, u32le(33)), /disagree|multi-disk/);
    add("dit-z64-cd-offset", patch(d, z64 + 48, u32le(cdOff - 8)), /disagree|central directory/);
  }
  // Truncations of the deflated protocol-4 archive and of the stored protocol-2 one.
  if (p4) { for (let c = 0; c < p4.length; c += 53) add(`trunc-p4-${c}`, p4.subarray(0, c)); }
  if (p2) { for (let c = 7; c < p2.length; c += 211) add(`trunc-p2-${c}`, p2.subarray(0, c)); }
  return cases;
}

Deno.test("malformed corpus: every file is rejected with a DifflabError naming it (path and in-memory APIs)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "difflab-corpus-" });
  try {
    const dit = await Deno.readFile(FIX + "dit_a.safetensors");
    const ditPt = await Deno.readFile(FIX + "dit_a_state_dict.pt");
    const p2 = await Deno.readFile(FIX + "torchlike_p2.pt");
    const p4 = await Deno.readFile(FIX + "torchlike_p4.pt");
    const sts = malformedSafetensors(dit);
    const pts = malformedTorch(p2, p4, ditPt);
    const rss0 = Deno.memoryUsage().rss;
    const t0 = performance.now();
    for (const c of sts) {
      const path = `${dir}/${c.name}`;
      await Deno.writeFile(path, c.bytes);
      await expectRejectsAsync(() => readSafetensors(path), path, c.re);
      expectRejects(() => parseSafetensors(c.bytes, c.name), c.name, c.re);
    }
    for (const c of pts) {
      const path = `${dir}/${c.name}`;
      await Deno.writeFile(path, c.bytes);
      await expectRejectsAsync(() => readTorch(path), path, c.re);
      expectRejects(() => parseTorch(c.bytes, c.name), c.name, c.re);
    }
    // Missing files and directories are clean errors too.
    await expectRejectsAsync(() => readSafetensors(`${dir}/missing.safetensors`), "missing.safetensors", /not found/);
    await expectRejectsAsync(() => readTorch(`${dir}/missing.pt`), "missing.pt", /not found/);
    await expectRejectsAsync(() => readTorch(dir), dir, /not a regular file/);
    const grew = (Deno.memoryUsage().rss - rss0) / 2 ** 20;
    console.log(
      `    corpus: ${sts.length} safetensors + ${pts.length} .pt = ${
        sts.length + pts.length
      } malformed files rejected ` +
        `(each via path and bytes) in ${(performance.now() - t0).toFixed(0)} ms, RSS +${grew.toFixed(0)} MB`,
    );
    assert.ok(sts.length + pts.length >= 200, "corpus has at least 200 files");
    assert.ok(grew < 1024, `no unbounded allocation (RSS grew ${grew.toFixed(0)} MB)`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ------------------------------------------------------------------ mutation properties

type Mutation = { kind: "set"; at: number; v: number } | { kind: "cut"; at: number } | {
  kind: "insert";
  at: number;
  v: number;
};

function mutate(b: Uint8Array, muts: Mutation[]): Uint8Array {
  let c: Uint8Array = b.slice();
  for (const m of muts) {
    const at = c.length ? m.at % (c.length + (m.kind === "set" ? 0 : 1)) : 0;
    if (m.kind === "set" && c.length) c[at] = m.v;
    else if (m.kind === "cut") c = c.slice(0, at);
    else if (m.kind === "insert") c = cat(c.subarray(0, at), [(m as { v: number }).v], c.subarray(at));
  }
  return c;
}

const mutationArb = fc.array(
  fc.oneof(
    {
      weight: 6,
      arbitrary: fc.record({ kind: fc.constant("set" as const), at: fc.nat(), v: fc.integer({ min: 0, max: 255 }) }),
    },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant("cut" as const), at: fc.nat() }) },
    {
      weight: 1,
      arbitrary: fc.record({ kind: fc.constant("insert" as const), at: fc.nat(), v: fc.integer({ min: 0, max: 255 }) }),
    },
  ),
  { minLength: 1, maxLength: 8 },
);

/** Byte ranges of the tensor names inside a safetensors header (a mutation there may legitimately rename a key). */
function nameRanges(b: Uint8Array): [number, number][] {
  const text = new TextDecoder().decode(b.subarray(8, 8 + Number(new DataView(b.buffer).getBigUint64(0, true))));
  const out: [number, number][] = [];
  for (const k of Object.keys(JSON.parse(text))) {
    const i = text.indexOf(JSON.stringify(k));
    out.push([8 + i, 8 + i + JSON.stringify(k).length]);
  }
  return out;
}

Deno.test("property: mutated safetensors files parse to the same keys or throw a DifflabError naming the file", () => {
  // Half header, half data, so mutations hit both the validated header and the raw tensor bytes.
  const base = st(
    {
      __metadata__: { kind: "prop" },
      a: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
      b: { dtype: "I64", shape: [2, 2], data_offsets: [8, 40] },
      c: { dtype: "BF16", shape: [40], data_offsets: [40, 120] },
      d: { dtype: "BOOL", shape: [3], data_offsets: [120, 123] },
      e: { dtype: "F16", shape: [30], data_offsets: [123, 183] },
    },
    noise(183, 9).map((v, i) => (i >= 8 && i < 40 ? (i % 8 === 0 ? v & 0x7f : 0) : v)),
  );
  const keys = Object.keys(parseSafetensors(base).tensors).sort();
  const names = nameRanges(base);
  let parsed = 0, rejected = 0;
  fc.assert(
    fc.property(mutationArb, (muts) => {
      const b = mutate(base, muts);
      let r;
      try {
        r = parseSafetensors(b, "mutant.safetensors");
      } catch (e) {
        checkErr(e, "mutant.safetensors");
        rejected++;
        return;
      }
      parsed++;
      const got = Object.keys(r.tensors).sort();
      const touchedName = muts.some((m) =>
        m.kind !== "set" || names.some(([s, e]) => m.at % b.length >= s && m.at % b.length < e)
      );
      if (touchedName) assert.equal(got.length, keys.length);
      else assert.deepEqual(got, keys);
      for (const t of Object.values(r.tensors)) assert.equal(t.dataSync().length, t.shape.reduce((a, s) => a * s, 1));
    }),
    { numRuns: 400, seed: 20240611 },
  );
  console.log(`    safetensors mutants: ${parsed} parsed, ${rejected} rejected`);
});

Deno.test("property: mutated .pt files (stored and deflated) load the same keys or throw a DifflabError naming the file", async () => {
  for (const f of ["torchlike_p2.pt", "torchlike_p4.pt"]) {
    const base = await Deno.readFile(FIX + f);
    const keys = Object.keys(parseTorch(base)).sort();
    let parsed = 0, rejected = 0;
    fc.assert(
      fc.property(mutationArb, (muts) => {
        try {
          const r = parseTorch(mutate(base, muts), `mutant-${f}`);
          assert.deepEqual(Object.keys(r).sort(), keys);
          parsed++;
        } catch (e) {
          if (e instanceof assert.AssertionError) throw e;
          checkErr(e, `mutant-${f}`);
          rejected++;
        }
      }),
      { numRuns: 300, seed: 4242 },
    );
    console.log(`    ${f} mutants: ${parsed} parsed, ${rejected} rejected`);
  }
});
