/**
 * @file `deno task golden FILE... [--backend cpu|wasm|webgpu]`: checks golden files produced by
 * the official PyTorch code. For each file it prints one JSON line
 * `{"file","kind","max_rel_err","pass"}`, where the error is ‖ours − ref‖₂ / ‖ref‖₂ maximised over
 * every checked key, and exits non-zero if any file fails (tolerance 1e-4 on cpu, 2e-3 on wasm and
 * webgpu). Failure details (the worst keys, errors) go to stderr.
 *
 * Files are dispatched on their metadata and keys to registered handlers; diffusion goldens are
 * built in, model goldens are added by `registerGoldenHandler` (a file no handler accepts fails
 * with "unsupported golden kind").
 */
import { parseArgs } from "node:util";
import {
  detectDiffusionGolden,
  diffusionGoldenCases,
  GOLDEN_TOLERANCE,
  type GoldenCase,
  goldenError,
} from "../diffusion/mod.ts";
import { readSafetensors } from "../nn/io.ts";
import type { BackendName, Tensor } from "../mod.ts";
import { getBackend, setBackend } from "../mod.ts";
import { USAGE_EXIT } from "./args.ts";
import { checkGeneric, familyGoldens } from "../models/goldens.ts";
import { familyForGolden } from "../models/registry.ts";

const USAGE = `Usage: deno task golden FILE... [--backend cpu|wasm|webgpu]

Recomputes every output stored in each golden .safetensors file and compares it with the
reference. Prints one JSON line per file: {"file","kind","max_rel_err","pass"}.
Exit code: 0 if every file passes, 1 if any fails, 2 on bad usage.

Options:
  --backend B   cpu (default), wasm or webgpu
  -h, --help    show this help`;

/** Relative-error tolerance of the contract per backend. */
export const BACKEND_TOLERANCE: Readonly<Record<BackendName, number>> = { cpu: 1e-4, wasm: 2e-3, webgpu: 2e-3 };

/** The outcome of checking one golden file. */
export interface GoldenReport {
  kind: string;
  /** Maximum relative L2 error over every checked key (null when nothing could be computed). */
  maxRelErr: number | null;
  pass: boolean;
  /** Lines explaining failures (written to stderr). */
  details: string[];
}

/** A checker for one family of golden files. */
export interface GoldenHandler {
  /** Kind reported in the JSON line. */
  kind: string;
  /** True when this handler understands the file. */
  accepts(keys: readonly string[], metadata: Record<string, string>): boolean;
  /** Checks the file's tensors against recomputed values with tolerance `tol`. */
  check(tensors: Record<string, Tensor>, metadata: Record<string, string>, tol: number): Promise<GoldenReport>;
}

const handlers: GoldenHandler[] = [];

/** Adds a handler; later registrations are tried first, so a model handler can refine a generic one. */
export function registerGoldenHandler(h: GoldenHandler): void {
  handlers.unshift(h);
}

/** Runs golden cases: each key must be within the tighter of its own and the backend tolerance. */
export async function runGoldenCases(
  kind: string,
  cases: readonly GoldenCase[],
  refs: Record<string, Tensor>,
  tol: number,
) {
  const details: string[] = [];
  let max = 0, pass = cases.length > 0;
  if (!cases.length) details.push("no checkable keys in the file");
  for (const c of cases) {
    let err: number;
    try {
      err = await goldenError(await c.compute(), refs[c.key], c.category);
    } catch (e) {
      details.push(`${c.key}: ${e instanceof Error ? e.message : String(e)}`);
      pass = false;
      max = Math.max(max, 1);
      continue;
    }
    // Integer keys must match exactly; schedule arrays and times are host math on every backend,
    // so they keep their tighter bound; everything else gets the backend tolerance.
    const limit = c.category === "value" ? tol : Math.min(tol, GOLDEN_TOLERANCE[c.category]);
    if (!(err <= limit)) {
      pass = false;
      details.push(`${c.key}: relative error ${Number.isNaN(err) ? "NaN" : err.toExponential(3)} > ${limit}`);
    }
    max = Number.isNaN(err) ? Number.NaN : Math.max(max, err);
  }
  return { kind, maxRelErr: Number.isNaN(max) ? null : max, pass: pass && !Number.isNaN(max), details };
}

registerGoldenHandler({
  kind: "diffusion",
  accepts: (keys, metadata) => detectDiffusionGolden(keys, metadata) !== null,
  async check(tensors, metadata, tol) {
    const { kind, cases } = diffusionGoldenCases(tensors, metadata);
    return await runGoldenCases(kind, cases, tensors, tol);
  },
});

// Model goldens: files whose metadata names the official class and its constructor config.
registerGoldenHandler({
  kind: "model",
  accepts: (keys, metadata) => typeof metadata.config === "string" && keys.some((k) => k.startsWith("param.")),
  async check(tensors, metadata, tol) {
    const def = familyForGolden(metadata.model);
    const check = familyGoldens[def.family] ?? ((g, m) => checkGeneric(def, g, m));
    const r = await check(tensors, metadata);
    const bad = r.entries.filter((e) => !(e.relErr <= tol));
    return {
      kind: def.family,
      maxRelErr: Number.isFinite(r.maxRelErr) ? r.maxRelErr : null,
      pass: bad.length === 0,
      details: bad.slice(0, 20).map((e) => `${e.key}: relative error ${e.relErr.toExponential(3)} > ${tol}`),
    };
  },
});

function describeKind(metadata: Record<string, string>): string {
  return metadata.class ?? metadata.model ?? "unknown";
}

/** Checks one file on the current backend. */
export async function checkGoldenFile(path: string): Promise<GoldenReport> {
  const tol = BACKEND_TOLERANCE[getBackend()];
  let st;
  try {
    st = await readSafetensors(path);
  } catch (e) {
    return { kind: "unreadable", maxRelErr: null, pass: false, details: [e instanceof Error ? e.message : String(e)] };
  }
  const keys = Object.keys(st.tensors);
  const h = handlers.find((h) => h.accepts(keys, st.metadata));
  if (!h) {
    const kind = describeKind(st.metadata);
    return {
      kind: `unsupported: ${kind}`,
      maxRelErr: null,
      pass: false,
      details: [`unsupported golden kind "${kind}": no handler for this file yet`],
    };
  }
  try {
    return await h.check(st.tensors, st.metadata, tol);
  } catch (e) {
    return { kind: h.kind, maxRelErr: null, pass: false, details: [e instanceof Error ? e.message : String(e)] };
  }
}

async function main(argv: string[]): Promise<number> {
  let values: Record<string, string | boolean | undefined>, positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      args: argv,
      options: { backend: { type: "string" }, help: { type: "boolean", short: "h" } },
      strict: true,
      allowPositionals: true,
    }));
  } catch (e) {
    console.error(`error: ${e instanceof Error ? e.message.split("\n")[0] : String(e)}\n\n${USAGE}`);
    return USAGE_EXIT;
  }
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (positionals.length === 0) {
    console.error(`error: give at least one golden file\n\n${USAGE}`);
    return USAGE_EXIT;
  }
  const backend = (values.backend as string | undefined) ?? "cpu";
  if (!["cpu", "wasm", "webgpu"].includes(backend)) {
    console.error(`error: --backend must be one of cpu|wasm|webgpu, got '${backend}'\n\n${USAGE}`);
    return USAGE_EXIT;
  }
  try {
    await setBackend(backend as BackendName);
  } catch (e) {
    console.error(`error: cannot use backend ${backend}: ${e instanceof Error ? e.message : String(e)}`);
    return 1;
  }
  let allPass = true;
  for (const file of positionals) {
    const r = await checkGoldenFile(file);
    console.log(JSON.stringify({ file, kind: r.kind, max_rel_err: r.maxRelErr, pass: r.pass }));
    if (!r.pass) {
      allPass = false;
      for (const d of r.details.slice(0, 20)) console.error(`${file}: ${d}`);
      if (r.details.length > 20) console.error(`${file}: ... and ${r.details.length - 20} more`);
    }
  }
  return allPass ? 0 : 1;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
