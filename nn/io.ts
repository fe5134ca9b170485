/**
 * @file Checkpoint I/O: safetensors read/write and PyTorch zip `.pt` state-dict reading.
 *
 * Every malformed input is rejected with a {@link DifflabError} whose message starts with the file
 * name and says what is wrong; nothing here throws a bare TypeError/RangeError, loops forever, or
 * allocates more than the file (or a declared, capped, decompressed size) justifies.
 *
 * Large files are streamed: the header is read first, then each tensor's bytes are read with
 * seek+read into that tensor's own typed array, so files (and checkpoints) larger than 2 GB load
 * without one giant buffer.
 *
 * dtype mapping (file → Tensor):
 * | safetensors / torch storage | Tensor dtype | note |
 * |---|---|---|
 * | F32 / FloatStorage | f32 | |
 * | F64 / DoubleStorage | f64 | |
 * | F16 / HalfStorage | f16 | f32 if the runtime has no Float16Array |
 * | BF16 / BFloat16Storage | f32 | widened exactly |
 * | F8_E4M3, F8_E5M2 | f32 | widened exactly (safetensors only) |
 * | I32 / IntStorage | i32 | |
 * | I64 / LongStorage | i32 | range-checked; an out-of-range value is an error naming the key |
 * | I16, I8, U8, U16 / Short-, Char-, ByteStorage | i32 | |
 * | U32 | u32 | |
 * | U64 | u32 | range-checked |
 * | BOOL / BoolStorage | bool | any non-zero byte reads as true |
 *
 * Writing maps f32→F32, f64→F64, f16→F16, i32→I32, u32→U32, bool→BOOL, so every Tensor dtype round-trips.
 *
 * safetensors validation: header length ≤ 100 MB and ≤ file size − 8; UTF-8 JSON object starting
 * with `{`; every entry has a known dtype, a shape of non-negative integers and `data_offsets`
 * whose span equals the shape's byte size; ranges may not overlap and must cover the data region
 * exactly (no holes, no trailing bytes); `__metadata__` values are strings. Unknown extra entry
 * fields are ignored, as the reference implementation does. Writes are atomic (temp file in the
 * same directory, fsync, rename), keys are sorted, and the header is space-padded to 8 bytes.
 *
 * `.pt` (PyTorch zip format, `torch.save` default since 1.6): the central directory is read first
 * (zip64 supported), entries are read one at a time and CRC-checked, stored entries are read in
 * place and deflated ones inflated with fflate under a size cap (zip-bomb guard:
 * `opts.maxUncompressedBytes`, default max(1 GiB, 4 × file size), also bounding the total size of
 * the loaded tensors). `data.pkl` is unpickled by a restricted unpickler with an allow-list of
 * globals (collections.OrderedDict, torch._utils._rebuild_tensor{,_v2,_v3}, _rebuild_parameter{,_with_state},
 * torch._tensor._rebuild_from_type_v2, torch.*Storage, torch dtypes); it never executes code.
 * Tensor views honour storage offset and strides; shared storages are read once. The top-level
 * object must be a dict; nested dicts are flattened with "." and non-tensor leaves are skipped.
 * The legacy (pre-1.6, non-zip) format is rejected with an explanatory error.
 *
 * @module
 */
export {
  MAX_HEADER_BYTES,
  parseSafetensors,
  readSafetensors,
  type Safetensors,
  writeSafetensors,
} from "./io/safetensors.ts";
export { parseTorch, readTorch, type TorchReadOptions } from "./io/torch.ts";
