/**
 * @file Threefry-2x32 (20 rounds), the counter-based generator JAX uses,
 * computed with 32-bit integer arithmetic so every backend produces the same
 * bits. Layout follows JAX's `threefry_2x32`: the counter array is split into
 * halves that form the two words of each block.
 */

const ROT0 = [13, 15, 26, 6];
const ROT1 = [17, 29, 16, 24];

/** One threefry2x32 block: returns the two output words for counter (x0, x1). */
export function threefry2x32(k0: number, k1: number, x0: number, x1: number): [number, number] {
  const k2 = (k0 ^ k1 ^ 0x1bd11bda) >>> 0;
  const ks = [k0 >>> 0, k1 >>> 0, k2];
  let a = (x0 + ks[0]) >>> 0;
  let b = (x1 + ks[1]) >>> 0;
  for (let i = 0; i < 5; i++) {
    const rot = i % 2 === 0 ? ROT0 : ROT1;
    for (const r of rot) {
      a = (a + b) >>> 0;
      b = ((b << r) | (b >>> (32 - r))) >>> 0;
      b = (b ^ a) >>> 0;
    }
    a = (a + ks[(i + 1) % 3]) >>> 0;
    b = (b + ks[(i + 2) % 3] + i + 1) >>> 0;
  }
  return [a, b];
}

/** JAX's `threefry_2x32(key, iota(n))`: n pseudo-random u32 words. */
export function threefryBits(
  k0: number,
  k1: number,
  n: number,
  out: Uint32Array<ArrayBuffer> = new Uint32Array(n),
): Uint32Array<ArrayBuffer> {
  const half = Math.ceil(n / 2);
  for (let i = 0; i < half; i++) {
    const c1 = i + half;
    const [a, b] = threefry2x32(k0, k1, i, c1 < n ? c1 : 0);
    out[i] = a;
    if (c1 < n) out[c1] = b;
  }
  return out;
}

/** Uniform float in [0, 1) from one u32 word with 23 mantissa bits (JAX's f32 recipe). */
export function bitsToUnitF32(bits: number): number {
  return (bits >>> 9) / 8388608;
}
