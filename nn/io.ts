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
