/**
 * @file What the training-related commands share: backend selection
 * (`--backend`, else the automatic default), dataset loading by name or
 * directory, PNG grid writing, and turning library errors into one clear
 * line (the stack only with `--debug`).
 */
import { loadDataset } from "../data/mod.ts";
import { toPngGrid, writePng } from "../data/png.ts";
import { DifflabError } from "../tensor/errors.ts";
import { getBackend, setBackend, type Tensor } from "../mod.ts";
import type { BackendName } from "../tensor/backend.ts";
import type { Dataset } from "../data/dataset.ts";

/** Selects `--backend` or the default (webgpu on a hardware GPU, else wasm, else cpu); returns the name. */
export async function chooseBackend(requested: string | undefined): Promise<BackendName> {
  if (requested) {
    await setBackend(requested as BackendName);
    return getBackend();
  }
  for (const name of await defaultOrder()) {
    try {
      await setBackend(name);
      return name;
    } catch {
      // Try the next one: a backend that cannot start here is not an error when none was asked for.
    }
  }
  return getBackend();
}

async function defaultOrder(): Promise<BackendName[]> {
  try {
    const { autoSelectBackend } = await import("../tensor/wasm/select.ts");
    const first = await autoSelectBackend();
    return first === "webgpu" ? ["webgpu", "wasm", "cpu"] : ["wasm", "cpu"];
  } catch {
    return ["cpu"];
  }
}

/** Loads `mnist`, `fashion-mnist`, or a directory of per-class PNG folders. */
export function openDataset(name: string): Promise<Dataset> {
  if (name === "mnist" || name === "fashion-mnist") return loadDataset(name);
  return loadDataset({ dir: name });
}

/** Writes `images [n, C, H, W]` in [-1, 1] as a PNG grid with `rows` rows (atomically). */
export async function writeGrid(path: string, images: Tensor, rows: number): Promise<void> {
  await writePng(path, await toPngGrid(images, { rows }));
}

/**
 * Runs a command's main: library errors (and missing files, permissions) become
 * one `error: ...` line and exit 1; `--debug` in argv also prints the stack.
 */
export async function runMain(main: () => Promise<void>): Promise<void> {
  try {
    await main();
  } catch (e) {
    const debug = Deno.args.includes("--debug");
    const known = e instanceof DifflabError || e instanceof Deno.errors.NotFound ||
      e instanceof Deno.errors.PermissionDenied || e instanceof Deno.errors.AlreadyExists ||
      e instanceof Deno.errors.NotADirectory || e instanceof Deno.errors.IsADirectory;
    const msg = e instanceof Error ? e.message : String(e);
    console.error(`error: ${msg.split("\n")[0]}`);
    if (debug) console.error(e instanceof Error ? e.stack : e);
    else if (!known) console.error("(run with --debug for the stack trace)");
    Deno.exit(1);
  }
}
