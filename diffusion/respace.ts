/**
 * @file Timestep respacing as DiT's `respace.py` does it: `spaceTimesteps` picks the kept steps
 * ("250", "10,20,30", "ddim50" or a list of section counts) and `respaceBetas` rebuilds the betas
 * of the shorter process from the kept cumulative alphas.
 */
import { DifflabError } from "../tensor/errors.ts";

/** A respacing spec: "" (keep all), "N", "a,b,c" (steps per equal section), "ddimN", or section counts. */
export type RespacingSpec = string | readonly number[];

// Python's round(): halves go to the even neighbour.
function pyRound(x: number): number {
  const r = Math.round(x);
  return Math.abs(x - Math.trunc(x)) === 0.5 ? 2 * Math.round(x / 2) : r;
}

function parseCount(op: string, s: string): number {
  const v = s.trim();
  if (!/^[+-]?\d+$/.test(v)) throw new DifflabError(`${op}: "${s}" is not an integer step count`);
  return Number(v);
}

/**
 * The sorted list of original timesteps kept by `spec` out of `numTimesteps` (DiT's
 * `space_timesteps`, which returns them as a set). Each section takes its steps at
 * `round(k * (size - 1) / (count - 1))`, with the stride accumulated and Python's rounding.
 */
export function spaceTimesteps(numTimesteps: number, spec: RespacingSpec): number[] {
  const op = "spaceTimesteps";
  if (!Number.isInteger(numTimesteps) || numTimesteps < 1) {
    throw new DifflabError(`${op}: numTimesteps must be a positive integer, got ${numTimesteps}`);
  }
  let counts: number[];
  if (typeof spec === "string") {
    if (spec === "") return [...Array(numTimesteps).keys()];
    if (spec.startsWith("ddim")) {
      const desired = parseCount(op, spec.slice(4));
      for (let i = 1; i < numTimesteps; i++) {
        if (Math.ceil(numTimesteps / i) === desired) return Array.from({ length: desired }, (_, k) => k * i);
      }
      throw new DifflabError(
        `${op}: cannot create exactly ${desired} steps out of ${numTimesteps} with an integer stride`,
      );
    }
    counts = spec.split(",").map((s) => parseCount(op, s));
  } else {
    if (!Array.isArray(spec) || spec.length === 0) {
      throw new DifflabError(`${op}: spec must be a string or a non-empty list`);
    }
    counts = spec.map((c) => {
      if (!Number.isInteger(c)) throw new DifflabError(`${op}: section counts must be integers, got ${c}`);
      return c;
    });
  }
  const sizePer = Math.floor(numTimesteps / counts.length);
  const extra = numTimesteps % counts.length;
  let start = 0;
  const all = new Set<number>();
  counts.forEach((count, i) => {
    const size = sizePer + (i < extra ? 1 : 0);
    if (size < count) throw new DifflabError(`${op}: cannot divide a section of ${size} steps into ${count}`);
    const stride = count <= 1 ? 1 : (size - 1) / (count - 1);
    let cur = 0;
    for (let k = 0; k < count; k++) {
      all.add(start + pyRound(cur));
      cur += stride;
    }
    start += size;
  });
  return [...all].sort((a, b) => a - b);
}

/**
 * The betas of the respaced process (float64): `1 - acp[t_k] / acp[t_{k-1}]` over the kept steps,
 * plus the timestep map (kept index -> original timestep).
 */
export function respaceBetas(
  betas: Float64Array,
  useTimesteps: Iterable<number>,
): { betas: Float64Array; timestepMap: Int32Array } {
  const keep = new Set(useTimesteps);
  for (const k of keep) {
    if (!Number.isInteger(k) || k < 0 || k >= betas.length) {
      throw new DifflabError(`respaceBetas: kept timestep ${k} is outside 0..${betas.length - 1}`);
    }
  }
  const newBetas: number[] = [];
  const map: number[] = [];
  let acp = 1, last = 1;
  for (let i = 0; i < betas.length; i++) {
    acp *= 1 - betas[i];
    if (keep.has(i)) {
      newBetas.push(1 - acp / last);
      last = acp;
      map.push(i);
    }
  }
  return { betas: Float64Array.from(newBetas), timestepMap: Int32Array.from(map) };
}
