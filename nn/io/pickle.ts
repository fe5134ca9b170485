/**
 * @file A restricted unpickler for PyTorch state dicts. It never executes anything: globals are
 * resolved against a fixed allow-list to inert markers, and REDUCE/BUILD only interpret the few
 * callables `torch.save` uses for tensors and ordered dicts. Any other opcode or global is an
 * error naming the file, the byte offset and the opcode/global.
 * @module
 */
import { fail, type FileDType } from "./common.ts";

/** A resolved (allow-listed) global, e.g. `collections.OrderedDict`. */
export class PGlobal {
  /** Wraps `module.name`. */
  constructor(readonly module: string, readonly name: string) {}
  /** Fully qualified name. */
  get qual(): string {
    return `${this.module}.${this.name}`;
  }
}
/** A Python tuple. */
export class PTuple {
  /** Wraps the items. */
  constructor(readonly items: unknown[]) {}
}
/** A Python list. */
export class PList {
  /** Wraps the items. */
  constructor(readonly items: unknown[]) {}
}
/** A Python dict or OrderedDict (insertion order kept). */
export class PDict {
  /** Entries keyed by primitive keys. */
  readonly map = new Map<string | number | boolean | bigint | null, unknown>();
}
/** A bytes object. */
export class PBytes {
  /** Wraps the bytes. */
  constructor(readonly bytes: Uint8Array) {}
}
/** A storage reference produced by a persistent id: the bytes live in `data/<key>`. */
export class PStorage {
  /** `dtype` is null for an untyped (byte) storage. */
  constructor(readonly key: string, readonly dtype: FileDType | null, readonly numel: number, readonly type: string) {}
}
/** A tensor view onto a storage. */
export class PTensor {
  /** Offsets and strides are in elements of `dtype`. */
  constructor(
    readonly storage: PStorage,
    readonly offset: number,
    readonly size: number[],
    readonly stride: number[],
    readonly dtype: FileDType,
  ) {}
}

const STORAGES: Record<string, FileDType | null> = {
  "torch.FloatStorage": "F32",
  "torch.DoubleStorage": "F64",
  "torch.HalfStorage": "F16",
  "torch.BFloat16Storage": "BF16",
  "torch.LongStorage": "I64",
  "torch.IntStorage": "I32",
  "torch.ShortStorage": "I16",
  "torch.CharStorage": "I8",
  "torch.ByteStorage": "U8",
  "torch.BoolStorage": "BOOL",
  "torch.UntypedStorage": null,
};
const TORCH_DTYPES: Record<string, FileDType> = {
  "torch.float32": "F32",
  "torch.float64": "F64",
  "torch.float16": "F16",
  "torch.bfloat16": "BF16",
  "torch.int64": "I64",
  "torch.int32": "I32",
  "torch.int16": "I16",
  "torch.int8": "I8",
  "torch.uint8": "U8",
  "torch.bool": "BOOL",
  "torch.uint16": "U16",
  "torch.uint32": "U32",
  "torch.uint64": "U64",
  "torch.float8_e4m3fn": "F8_E4M3",
  "torch.float8_e5m2": "F8_E5M2",
};
const CALLABLES = new Set([
  "collections.OrderedDict",
  "builtins.dict",
  "torch._utils._rebuild_tensor",
  "torch._utils._rebuild_tensor_v2",
  "torch._utils._rebuild_tensor_v3",
  "torch._utils._rebuild_parameter",
  "torch._utils._rebuild_parameter_with_state",
  "torch._tensor._rebuild_from_type_v2",
]);
const MARKERS = new Set(["torch.Tensor", "torch.nn.parameter.Parameter"]);

/** True when `module.name` may appear in a checkpoint pickle. */
export function isAllowedGlobal(qual: string): boolean {
  return CALLABLES.has(qual) || MARKERS.has(qual) || qual in STORAGES || qual in TORCH_DTYPES;
}

const OPNAMES: Record<number, string> = {
  0x28: "MARK",
  0x2e: "STOP",
  0x30: "POP",
  0x31: "POP_MARK",
  0x32: "DUP",
  0x46: "FLOAT",
  0x49: "INT",
  0x4a: "BININT",
  0x4b: "BININT1",
  0x4c: "LONG",
  0x4d: "BININT2",
  0x4e: "NONE",
  0x50: "PERSID",
  0x51: "BINPERSID",
  0x52: "REDUCE",
  0x53: "STRING",
  0x54: "BINSTRING",
  0x55: "SHORT_BINSTRING",
  0x56: "UNICODE",
  0x58: "BINUNICODE",
  0x61: "APPEND",
  0x62: "BUILD",
  0x63: "GLOBAL",
  0x64: "DICT",
  0x7d: "EMPTY_DICT",
  0x65: "APPENDS",
  0x67: "GET",
  0x68: "BINGET",
  0x69: "INST",
  0x6a: "LONG_BINGET",
  0x6c: "LIST",
  0x5d: "EMPTY_LIST",
  0x6f: "OBJ",
  0x70: "PUT",
  0x71: "BINPUT",
  0x72: "LONG_BINPUT",
  0x73: "SETITEM",
  0x74: "TUPLE",
  0x29: "EMPTY_TUPLE",
  0x75: "SETITEMS",
  0x47: "BINFLOAT",
  0x80: "PROTO",
  0x81: "NEWOBJ",
  0x82: "EXT1",
  0x83: "EXT2",
  0x84: "EXT4",
  0x85: "TUPLE1",
  0x86: "TUPLE2",
  0x87: "TUPLE3",
  0x88: "NEWTRUE",
  0x89: "NEWFALSE",
  0x8a: "LONG1",
  0x8b: "LONG4",
  0x42: "BINBYTES",
  0x43: "SHORT_BINBYTES",
  0x8c: "SHORT_BINUNICODE",
  0x8d: "BINUNICODE8",
  0x8e: "BINBYTES8",
  0x8f: "EMPTY_SET",
  0x90: "ADDITEMS",
  0x91: "FROZENSET",
  0x92: "NEWOBJ_EX",
  0x93: "STACK_GLOBAL",
  0x94: "MEMOIZE",
  0x95: "FRAME",
  0x96: "BYTEARRAY8",
  0x97: "NEXT_BUFFER",
  0x98: "READONLY_BUFFER",
};

function describe(v: unknown): string {
  if (v === null) return "None";
  if (v instanceof PGlobal) return v.qual;
  if (v instanceof PTuple) return `tuple(${v.items.length})`;
  if (v instanceof PList) return "list";
  if (v instanceof PDict) return "dict";
  if (v instanceof PTensor) return "tensor";
  if (v instanceof PStorage) return "storage";
  if (v instanceof PBytes) return "bytes";
  return typeof v === "string" ? JSON.stringify(v.slice(0, 40)) : String(v);
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * Unpickles `data` (a torch `data.pkl`). `file` prefixes every error. Persistent ids must be
 * torch storage tuples; `storages` caches them by key so shared storages stay shared.
 */
export function unpickle(file: string, data: Uint8Array): unknown {
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const stack: unknown[] = [];
  const marks: number[] = [];
  const memo = new Map<number, unknown>();
  const storages = new Map<string, PStorage>();
  let pos = 0;
  let opAt = 0;
  let op = "";

  const err = (msg: string): never => fail(file, `data.pkl byte ${opAt} (${op}): ${msg}`);
  const need = (n: number) => {
    if (n < 0 || pos + n > data.byteLength) {
      err(`needs ${n} bytes but only ${data.byteLength - pos} remain (truncated pickle)`);
    }
  };
  const pop = (): unknown => {
    if (stack.length === 0 || (marks.length && stack.length <= marks[marks.length - 1])) err("stack underflow");
    return stack.pop();
  };
  const top = (): unknown => {
    if (stack.length === 0 || (marks.length && stack.length <= marks[marks.length - 1])) err("stack underflow");
    return stack[stack.length - 1];
  };
  const popMark = (): unknown[] => {
    if (!marks.length) err("no MARK to pop to");
    const at = marks.pop()!;
    return stack.splice(at);
  };
  const u8 = () => {
    need(1);
    return data[pos++];
  };
  const u16 = () => {
    need(2);
    const v = dv.getUint16(pos, true);
    pos += 2;
    return v;
  };
  const u32 = () => {
    need(4);
    const v = dv.getUint32(pos, true);
    pos += 4;
    return v;
  };
  const u64 = () => {
    need(8);
    const lo = dv.getUint32(pos, true), hi = dv.getUint32(pos + 4, true);
    pos += 8;
    if (hi >= 2 ** 21) err("length too large");
    return hi * 2 ** 32 + lo;
  };
  const bytes = (n: number) => {
    need(n);
    const b = data.subarray(pos, pos + n);
    pos += n;
    return b;
  };
  const str = (n: number) => {
    try {
      return utf8.decode(bytes(n));
    } catch (e) {
      if (e instanceof TypeError) err("string is not valid UTF-8");
      throw e;
    }
  };
  const line = () => {
    const end = data.indexOf(0x0a, pos);
    if (end < 0 || end - pos > 256) err("missing or overlong newline-terminated name");
    const s = String.fromCharCode(...data.subarray(pos, end));
    pos = end + 1;
    return s;
  };
  const global = (module: string, name: string): PGlobal => {
    const qual = `${module}.${name}`;
    if (!isAllowedGlobal(qual)) {
      err(
        `global ${
          JSON.stringify(qual)
        } is not on the allow-list of a PyTorch state dict (refusing to load; nothing was executed)`,
      );
    }
    return new PGlobal(module, name);
  };
  const dictKey = (k: unknown): string | number | boolean | bigint | null => {
    if (
      k === null || typeof k === "string" || typeof k === "number" || typeof k === "boolean" || typeof k === "bigint"
    ) {
      return k;
    }
    return err(`unsupported dict key ${describe(k)}`);
  };
  const setItems = (d: unknown, kv: unknown[]) => {
    if (!(d instanceof PDict)) err(`SETITEM(S) on ${describe(d)}, not a dict`);
    if (kv.length % 2) err("odd number of items for SETITEMS");
    for (let i = 0; i < kv.length; i += 2) (d as PDict).map.set(dictKey(kv[i]), kv[i + 1]);
  };
  const persistent = (pid: unknown): PStorage => {
    if (!(pid instanceof PTuple) || pid.items.length !== 5 || pid.items[0] !== "storage") {
      return err(`persistent id ${describe(pid)} is not a ('storage', type, key, location, numel) tuple`);
    }
    const [, type, key, location, numel] = pid.items;
    if (!(type instanceof PGlobal) || !(type.qual in STORAGES)) {
      return err(`persistent id storage type ${describe(type)} is not a storage class`);
    }
    if (typeof key !== "string" || !/^[A-Za-z0-9_.-]{1,64}$/.test(key)) {
      return err(`storage key ${describe(key)} is not a plain name`);
    }
    if (typeof location !== "string") return err(`storage location ${describe(location)} is not a string`);
    if (typeof numel !== "number" || !Number.isSafeInteger(numel) || numel < 0) {
      return err(`storage size ${describe(numel)} is not a non-negative integer`);
    }
    const dtype = STORAGES[type.qual];
    const prev = storages.get(key);
    if (prev) {
      if (prev.dtype !== dtype || prev.numel !== numel) {
        err(`storage "${key}" is referenced with conflicting types or sizes`);
      }
      return prev;
    }
    const s = new PStorage(key, dtype, numel, type.qual);
    storages.set(key, s);
    return s;
  };
  const ints = (v: unknown, what: string): number[] => {
    if (!(v instanceof PTuple) && !(v instanceof PList)) {
      return err(`${what} is ${describe(v)}, not a tuple of integers`);
    }
    if (v.items.length > 64) err(`${what} has ${v.items.length} dimensions`);
    return v.items.map((x) => {
      if (typeof x !== "number" || !Number.isSafeInteger(x) || x < 0) {
        err(`${what} contains ${describe(x)}, not a non-negative integer`);
      }
      return x as number;
    });
  };
  const rebuild = (s: unknown, off: unknown, size: unknown, stride: unknown, dtype: FileDType | null): PTensor => {
    if (!(s instanceof PStorage)) return err(`tensor storage is ${describe(s)}, not a persistent storage`);
    if (typeof off !== "number" || !Number.isSafeInteger(off) || off < 0) {
      return err(`storage offset ${describe(off)} is not a non-negative integer`);
    }
    const sz = ints(size, "tensor size"), st = ints(stride, "tensor stride");
    if (sz.length !== st.length) err(`tensor size has ${sz.length} dims but stride has ${st.length}`);
    const dt = dtype ?? s.dtype;
    if (dt === null) return err("untyped storage without a dtype");
    if (dtype !== null && s.dtype !== null && s.dtype !== dtype) {
      err(`tensor dtype ${dtype} does not match storage ${s.type}`);
    }
    return new PTensor(s, off, sz, st, dt);
  };
  const call = (f: unknown, argsV: unknown, depth = 0): unknown => {
    if (!(f instanceof PGlobal)) return err(`REDUCE on ${describe(f)}, which is not an allow-listed callable`);
    if (!(argsV instanceof PTuple)) return err(`REDUCE arguments are ${describe(argsV)}, not a tuple`);
    const a = argsV.items;
    const arity = (lo: number, hi = lo) => {
      if (a.length < lo || a.length > hi) {
        err(`${f.qual} takes ${lo === hi ? lo : `${lo}-${hi}`} arguments, got ${a.length}`);
      }
    };
    switch (f.qual) {
      case "collections.OrderedDict":
      case "builtins.dict": {
        arity(0, 1);
        const d = new PDict();
        if (a.length) {
          const src = a[0];
          if (src instanceof PDict) { for (const [k, v] of src.map) d.map.set(k, v); }
          else if (src instanceof PList || src instanceof PTuple) {
            for (const kv of src.items) {
              if (!(kv instanceof PTuple) || kv.items.length !== 2) err(`${f.qual} item ${describe(kv)} is not a pair`);
              d.map.set(dictKey((kv as PTuple).items[0]), (kv as PTuple).items[1]);
            }
          } else err(`${f.qual} argument ${describe(src)} is not a dict or list of pairs`);
        }
        return d;
      }
      case "torch._utils._rebuild_tensor":
        arity(4);
        return rebuild(a[0], a[1], a[2], a[3], null);
      case "torch._utils._rebuild_tensor_v2":
        arity(6, 7);
        return rebuild(a[0], a[1], a[2], a[3], null);
      case "torch._utils._rebuild_tensor_v3": {
        arity(7, 8);
        const d = a[6];
        if (!(d instanceof PGlobal) || !(d.qual in TORCH_DTYPES)) {
          return err(`dtype ${describe(d)} is not a supported torch dtype`);
        }
        return rebuild(a[0], a[1], a[2], a[3], TORCH_DTYPES[d.qual]);
      }
      case "torch._utils._rebuild_parameter":
      case "torch._utils._rebuild_parameter_with_state":
        arity(f.name === "_rebuild_parameter" ? 3 : 4);
        if (!(a[0] instanceof PTensor)) err(`${f.qual} data is ${describe(a[0])}, not a tensor`);
        return a[0];
      case "torch._tensor._rebuild_from_type_v2": {
        arity(4);
        const [fn, type, args, state] = a;
        if (!(type instanceof PGlobal) || !MARKERS.has(type.qual)) {
          err(`tensor type ${describe(type)} is not torch.Tensor or Parameter`);
        }
        if (!(state === null || (state instanceof PDict && state.map.size === 0))) {
          err("tensor subclass state is not supported");
        }
        if (depth > 2) err("nested tensor rebuilds");
        const r = call(fn, args, depth + 1);
        if (!(r instanceof PTensor)) err(`${f.qual} did not rebuild a tensor`);
        return r;
      }
      default:
        return err(`${f.qual} cannot be called`);
    }
  };

  while (true) {
    opAt = pos;
    if (pos >= data.byteLength) {
      op = "EOF";
      err("pickle ended without STOP (truncated)");
    }
    const code = data[pos++];
    op = OPNAMES[code] ?? `0x${code.toString(16).padStart(2, "0")}`;
    switch (code) {
      case 0x80: { // PROTO
        const v = u8();
        if (v < 2 || v > 5) err(`unsupported pickle protocol ${v}`);
        break;
      }
      case 0x95: // FRAME: framing is only a hint for buffered readers
        u64();
        break;
      case 0x2e: // STOP
        if (marks.length) err("STOP with an open MARK");
        if (stack.length !== 1) err(`STOP with ${stack.length} values on the stack (expected 1)`);
        return stack[0];
      case 0x28: // MARK
        if (marks.length >= 1 << 16) err("too many nested MARKs");
        marks.push(stack.length);
        break;
      case 0x30: // POP
        if (marks.length && stack.length === marks[marks.length - 1]) marks.pop(); // POP of a bare MARK
        else pop();
        break;
      case 0x31: // POP_MARK
        popMark();
        break;
      case 0x32: // DUP
        stack.push(top());
        break;
      case 0x4e:
        stack.push(null);
        break;
      case 0x88:
        stack.push(true);
        break;
      case 0x89:
        stack.push(false);
        break;
      case 0x4a: // BININT
        need(4);
        stack.push(dv.getInt32(pos, true));
        pos += 4;
        break;
      case 0x4b:
        stack.push(u8());
        break;
      case 0x4d:
        stack.push(u16());
        break;
      case 0x8a: // LONG1
      case 0x8b: { // LONG4
        const n = code === 0x8a ? u8() : u32();
        if (n > 64) err(`integer of ${n} bytes is too large`);
        const b = bytes(n);
        let v = 0n;
        for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]);
        if (n && b[n - 1] & 0x80) v -= 1n << BigInt(8 * n);
        stack.push(v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v);
        break;
      }
      case 0x47: // BINFLOAT (big-endian)
        need(8);
        stack.push(dv.getFloat64(pos, false));
        pos += 8;
        break;
      case 0x58: // BINUNICODE
        stack.push(str(u32()));
        break;
      case 0x8c: // SHORT_BINUNICODE
        stack.push(str(u8()));
        break;
      case 0x8d: // BINUNICODE8
        stack.push(str(u64()));
        break;
      case 0x54: // BINSTRING (Python 2 str; latin-1)
      case 0x55: { // SHORT_BINSTRING
        const n = code === 0x54 ? dv.getInt32((need(4), pos), true) : u8();
        if (code === 0x54) pos += 4;
        if (n < 0) err("negative string length");
        stack.push(Array.from(bytes(n), (c) => String.fromCharCode(c)).join(""));
        break;
      }
      case 0x42: // BINBYTES
        stack.push(new PBytes(bytes(u32())));
        break;
      case 0x43: // SHORT_BINBYTES
        stack.push(new PBytes(bytes(u8())));
        break;
      case 0x8e: // BINBYTES8
        stack.push(new PBytes(bytes(u64())));
        break;
      case 0x29:
        stack.push(new PTuple([]));
        break;
      case 0x74:
        stack.push(new PTuple(popMark()));
        break;
      case 0x85:
        stack.push(new PTuple([pop()]));
        break;
      case 0x86: {
        const b = pop(), a = pop();
        stack.push(new PTuple([a, b]));
        break;
      }
      case 0x87: {
        const c = pop(), b = pop(), a = pop();
        stack.push(new PTuple([a, b, c]));
        break;
      }
      case 0x5d:
        stack.push(new PList([]));
        break;
      case 0x6c:
        stack.push(new PList(popMark()));
        break;
      case 0x61: { // APPEND
        const v = pop(), l = top();
        if (!(l instanceof PList)) err(`APPEND to ${describe(l)}, not a list`);
        (l as PList).items.push(v);
        break;
      }
      case 0x65: { // APPENDS
        const vs = popMark(), l = top();
        if (!(l instanceof PList)) err(`APPENDS to ${describe(l)}, not a list`);
        for (const v of vs) (l as PList).items.push(v);
        break;
      }
      case 0x7d:
        stack.push(new PDict());
        break;
      case 0x64: { // DICT
        const d = new PDict();
        setItems(d, popMark());
        stack.push(d);
        break;
      }
      case 0x73: { // SETITEM
        const v = pop(), k = pop();
        setItems(top(), [k, v]);
        break;
      }
      case 0x75: { // SETITEMS
        const kv = popMark();
        setItems(top(), kv);
        break;
      }
      case 0x71: // BINPUT
        memo.set(u8(), top());
        break;
      case 0x72: // LONG_BINPUT
        memo.set(u32(), top());
        break;
      case 0x94: // MEMOIZE
        memo.set(memo.size, top());
        break;
      case 0x68: // BINGET
      case 0x6a: { // LONG_BINGET
        const i = code === 0x68 ? u8() : u32();
        if (!memo.has(i)) err(`memo index ${i} was never stored`);
        stack.push(memo.get(i));
        break;
      }
      case 0x63: { // GLOBAL
        const m = line(), n = line();
        stack.push(global(m, n));
        break;
      }
      case 0x93: { // STACK_GLOBAL
        const n = pop(), m = pop();
        if (typeof m !== "string" || typeof n !== "string") err("STACK_GLOBAL operands are not strings");
        stack.push(global(m as string, n as string));
        break;
      }
      case 0x52: { // REDUCE
        const args = pop(), f = pop();
        stack.push(call(f, args));
        break;
      }
      case 0x62: { // BUILD
        const state = pop(), obj = top();
        // OrderedDict state (e.g. state_dict()._metadata) carries no tensors; anything else is refused.
        if (!(obj instanceof PDict)) err(`BUILD on ${describe(obj)} is not supported`);
        if (!(state === null || state instanceof PDict || state instanceof PTuple)) {
          err(`BUILD state ${describe(state)} is not supported`);
        }
        break;
      }
      case 0x51: // BINPERSID
        stack.push(persistent(pop()));
        break;
      default:
        err(`opcode ${op} is not allowed in a PyTorch state dict`);
    }
  }
}
