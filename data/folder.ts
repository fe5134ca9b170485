/**
 * @file A user's own images: a directory with one sub-folder per class, each
 * holding `.png` files. Classes are the sub-folder names in natural sort order
 * ("2" before "10"); images are decoded with fast-png, converted to grayscale
 * or RGB, alpha-composited over black (the padding colour), and centred on a
 * square canvas (larger images are area-downscaled to fit).
 */
import { type Dataset, makeDataset, placeImage } from "./dataset.ts";
import { decodePng, type Image8 } from "./png.ts";
import { DifflabError } from "../tensor/errors.ts";

/** Options of {@link loadFolder}. */
export interface FolderLoadOptions {
  /** Canvas side (default 32). */
  size?: number;
  /** 1 (grayscale), 3 (RGB) or "auto" (default: 1 when every image is gray, else 3). */
  channels?: 1 | 3 | "auto";
}

const natural = new Intl.Collator("en", { numeric: true });

async function listDir(dir: string): Promise<Deno.DirEntry[]> {
  const out: Deno.DirEntry[] = [];
  for await (const e of Deno.readDir(dir)) if (!e.name.startsWith(".")) out.push(e);
  return out.sort((a, b) => natural.compare(a.name, b.name));
}

// Gray+alpha / RGBA -> premultiplied over black; gray -> gray, RGB -> RGB.
function toChannels(img: Image8, want: 1 | 3): Uint8Array {
  const { width, height, channels: c, data } = img;
  const px = width * height;
  const out = new Uint8Array(px * want);
  const color = c >= 3, alpha = c === 2 || c === 4;
  for (let i = 0; i < px; i++) {
    const a = alpha ? data[i * c + c - 1] / 255 : 1;
    const r = data[i * c], g = color ? data[i * c + 1] : r, b = color ? data[i * c + 2] : r;
    if (want === 1) out[i] = Math.round((0.299 * r + 0.587 * g + 0.114 * b) * a);
    else {
      out[i * 3] = Math.round(r * a);
      out[i * 3 + 1] = Math.round(g * a);
      out[i * 3 + 2] = Math.round(b * a);
    }
  }
  return out;
}

function isGray(img: Image8): boolean {
  if (img.channels < 3) return true;
  const { data, channels: c } = img;
  for (let i = 0; i < data.length; i += c) if (data[i] !== data[i + 1] || data[i] !== data[i + 2]) return false;
  return true;
}

/** Loads a PNG class-folder dataset; any missing, empty or unreadable part is a DifflabError naming it. */
export async function loadFolder(dir: string, opts: FolderLoadOptions = {}): Promise<Dataset> {
  const size = opts.size ?? 32;
  if (!Number.isInteger(size) || size < 1) {
    throw new DifflabError(`loadDataset: size must be a positive integer, got ${size}`);
  }
  const want = opts.channels ?? "auto";
  if (want !== 1 && want !== 3 && want !== "auto") {
    throw new DifflabError(`loadDataset: channels must be 1, 3 or "auto", got ${JSON.stringify(want)}`);
  }
  let entries: Deno.DirEntry[];
  try {
    entries = await listDir(dir);
  } catch (e) {
    throw new DifflabError(
      `loadDataset: cannot read image directory ${dir} (${(e as Error).message}); ` +
        `expected a directory with one sub-folder of .png files per class`,
    );
  }
  const classNames = entries.filter((e) => e.isDirectory).map((e) => e.name);
  if (classNames.length === 0) {
    throw new DifflabError(
      `loadDataset: image directory ${dir} has no class sub-folders; put each class's .png files in its own ` +
        `sub-folder (e.g. ${dir}/cat/1.png, ${dir}/dog/1.png)`,
    );
  }
  const decoded: { img: Image8; label: number }[] = [];
  for (const [label, cls] of classNames.entries()) {
    const files = (await listDir(`${dir}/${cls}`)).filter((e) => e.isFile && /\.png$/i.test(e.name));
    if (files.length === 0) throw new DifflabError(`loadDataset: class folder ${dir}/${cls} has no .png files`);
    for (const f of files) {
      const path = `${dir}/${cls}/${f.name}`;
      decoded.push({ img: decodePng(await Deno.readFile(path), path), label });
    }
  }
  const channels: 1 | 3 = want !== "auto" ? want : decoded.every(({ img }) => isGray(img)) ? 1 : 3;
  const images = new Float32Array(decoded.length * channels * size * size);
  const labels = new Int32Array(decoded.length);
  decoded.forEach(({ img, label }, i) => {
    placeImage(images, i, size, toChannels(img, channels), img.width, img.height, channels);
    labels[i] = label;
  });
  const name = dir.replace(/\/+$/, "").split("/").pop() || dir;
  return makeDataset({
    name,
    images,
    labels,
    channels,
    size,
    numClasses: classNames.length,
    classNames,
    origin: "directory",
  });
}
