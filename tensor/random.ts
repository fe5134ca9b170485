/**
 * @file Functional PRNG with JAX's threefry2x32 scheme: keys are immutable
 * values, `split` derives independent keys, and every draw is a pure function
 * of (key, shape). Keys, splits and raw bits follow JAX's classic
 * (non-partitionable) layout; bits and uniforms are bit-identical on every
 * backend because they are integer computations.
 */
import { checkDType, type DType, isFloat } from "./dtype.ts";
import { describe, DifflabError, DTypeError, fmtShape, ShapeError } from "./errors.ts";
import * as ops from "./ops.ts";
import { checkShape, MAX_SIZE } from "./shape.ts";
import { bind, type Tensor } from "./tensor.ts";
import { threefry2x32, threefryBits } from "./threefry.ts";
import { checkFloatTensor, checkInt, checkNumber, checkOptions } from "./validate.ts";

/** An immutable PRNG key: two 32-bit words. */
export class Key {
  /** The two key words. */
  readonly data: readonly [number, number];
  /** Builds a key from two u32 words. */
  constructor(k0: number, k1: number) {
    this.data = Object.freeze([k0 >>> 0, k1 >>> 0]) as readonly [number, number];
  }
  /** `Key(k0, k1)`. */
  toString(): string {
    return `Key(${this.data[0]}, ${this.data[1]})`;
  }
}

function checkKey(op: string, key: unknown): Key {
  if (!(key instanceof Key)) {
    throw new DifflabError(`${op}: argument key must be a Key from randomKey()/split(), got ${describe(key)}`);
  }
  return key;
}

/** A key from an integer seed (JAX's `PRNGKey(seed)`: high and low 32-bit words). */
export function randomKey(seed: number): Key {
  if (typeof seed !== "number" || !Number.isSafeInteger(seed)) {
    throw new DifflabError(`randomKey: argument seed must be a safe integer, got ${describe(seed)}`);
  }
  const big = BigInt.asUintN(64, BigInt(seed));
  return new Key(Number(big >> 32n), Number(big & 0xffffffffn));
}

/** Splits a key into `n` independent keys. */
export function split(key: Key, n = 2): Key[] {
  checkKey("random.split", key);
  checkInt("random.split", "n", n, 1, MAX_SIZE / 2);
  const b = threefryBits(key.data[0], key.data[1], 2 * n);
  return Array.from({ length: n }, (_, i) => new Key(b[2 * i], b[2 * i + 1]));
}

/** Derives a key from a key and an integer (JAX's `fold_in`). */
export function foldIn(key: Key, data: number): Key {
  checkKey("random.foldIn", key);
  checkInt("random.foldIn", "data", data);
  const [a, b] = threefry2x32(key.data[0], key.data[1], 0, data >>> 0);
  return new Key(a, b);
}

/** Raw u32 random bits of `shape`. */
export function bits(key: Key, shape: readonly number[]): Tensor {
  checkKey("random.bits", key);
  return bind("random", [], { key: key.data, shape: checkShape("random.bits", shape), dtype: "u32", dist: "bits" })[0];
}

/** Options of the float draws. */
export interface DrawOptions {
  /** Floating-point dtype of the draws (default `f32`). */
  dtype?: DType;
}

/** Uniform floats in [min, max). */
export function uniform(
  key: Key,
  shape: readonly number[],
  opts: DrawOptions & { min?: number; max?: number } = {},
): Tensor {
  return uniformOf("random.uniform", key, shape, opts);
}

function floatDType(op: string, d: unknown): DType {
  const dtype = d === undefined ? "f32" : checkDType(op, d);
  if (!isFloat(dtype)) throw new DTypeError(`${op}: dtype must be floating-point, got ${dtype}`);
  return dtype;
}

function uniformOf(op: string, key: Key, shape: readonly number[], opts: DrawOptions & { min?: number; max?: number }) {
  checkKey(op, key);
  const s = checkShape(op, shape);
  const o = checkOptions<DrawOptions & { min?: number; max?: number }>(op, opts, ["dtype", "min", "max"]);
  const dtype = floatDType(op, o.dtype);
  const lo = o.min === undefined ? 0 : checkNumber(op, "min", o.min, true);
  const hi = o.max === undefined ? 1 : checkNumber(op, "max", o.max, true);
  if (lo > hi) throw new DifflabError(`${op}: min ${lo} must not exceed max ${hi}`);
  const u = bind("random", [], { key: key.data, shape: s, dtype, dist: "uniform" })[0];
  if (lo === 0 && hi === 1) return u;
  return ops.maximum(ops.add(ops.mul(u, hi - lo), lo), lo);
}

/** Standard normal draws (mean 0, std 1), as JAX: sqrt(2)·erfinv(u), u uniform in (-1, 1). */
export function normal(key: Key, shape: readonly number[], opts: DrawOptions = {}): Tensor {
  const dtype = floatDType("random.normal", checkOptions<DrawOptions>("random.normal", opts, ["dtype"]).dtype);
  const lo = dtype === "f64" ? -1 + Number.EPSILON / 2 : dtype === "f16" ? -0.99951171875 : -0.99999994;
  const u = uniformOf("random.normal", key, shape, { dtype, min: lo, max: 1 });
  return ops.mul(erfinv(u), Math.SQRT2);
}

/** Uniform integers in [min, max) as i32. */
export function randint(key: Key, shape: readonly number[], min: number, max: number): Tensor {
  checkKey("random.randint", key);
  const s = checkShape("random.randint", shape);
  if (
    typeof min !== "number" || typeof max !== "number" || !Number.isInteger(min) || !Number.isInteger(max) ||
    max <= min || max - min > 2 ** 31 || min < -(2 ** 31) || max > 2 ** 31
  ) {
    throw new DifflabError(`random.randint: need integers min < max, got [${describe(min)}, ${describe(max)})`);
  }
  const b = bits(key, s);
  const span = max - min;
  const r = ops.sub(b, ops.mul(ops.div(b, span), span));
  return ops.add(ops.cast(r, "i32"), min);
}

/** Bernoulli draws: true with probability `p` (a number or a broadcastable Tensor). */
export function bernoulli(key: Key, p: number | Tensor, shape: readonly number[]): Tensor {
  const op = "random.bernoulli";
  checkKey(op, key);
  const s = checkShape(op, shape);
  if (typeof p === "number") {
    if (!(p >= 0 && p <= 1)) throw new DifflabError(`${op}: probability p must be in [0, 1], got ${p}`);
  } else {
    checkFloatTensor(op, "p", p);
    const off = s.length - p.ndim;
    if (off < 0 || p.shape.some((d, i) => d !== 1 && d !== s[off + i])) {
      throw new ShapeError(`${op}: p of shape ${fmtShape(p.shape)} does not broadcast to shape ${fmtShape(s)}`);
    }
  }
  const dtype = typeof p === "number" ? "f32" : p.dtype;
  const u = bind("random", [], { key: key.data, shape: s, dtype, dist: "uniform" })[0];
  return ops.less(u, p);
}

/** A random permutation of 0..n-1 on the host (for data shuffling). */
export function permutation(key: Key, n: number): number[] {
  checkKey("random.permutation", key);
  checkInt("random.permutation", "n", n, 0, MAX_SIZE);
  const b = threefryBits(key.data[0], key.data[1], Math.max(n, 1));
  const p = [...Array(n).keys()];
  for (let i = n - 1; i > 0; i--) {
    const j = b[i] % (i + 1);
    [p[i], p[j]] = [p[j], p[i]];
  }
  return p;
}

/** Inverse error function (Giles' approximation, as XLA computes it). */
export function erfinv(x: Tensor): Tensor {
  checkFloatTensor("erfinv", "x", x);
  const w = ops.neg(ops.log(ops.mul(ops.sub(1, x), ops.add(1, x))));
  const small = ops.less(w, 5);
  const ws = ops.sub(w, 2.5);
  const wl = ops.sub(ops.sqrt(ops.where(small, 5, w)), 3);
  const horner = (v: Tensor, cs: number[]) =>
    cs.slice(1).reduce((p, c) => ops.add(ops.mul(p, v), c), ops.full(v.shape, cs[0], v.dtype, v));
  const ps = horner(ws, [
    2.81022636e-08,
    3.43273939e-07,
    -3.5233877e-06,
    -4.39150654e-06,
    0.00021858087,
    -0.00125372503,
    -0.00417768164,
    0.246640727,
    1.50140941,
  ]);
  const pl = horner(wl, [
    -0.000200214257,
    0.000100950558,
    0.00134934322,
    -0.00367342844,
    0.00573950773,
    -0.0076224613,
    0.00943887047,
    1.00167406,
    2.83297682,
  ]);
  return ops.mul(ops.where(small, ps, pl), x);
}
