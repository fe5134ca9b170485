/**
 * @file `deno task notebooks`: type-checks the code of every notebook in
 * notebooks/ (the kernel itself does not type-check), then executes them
 * headlessly with the Deno Jupyter kernel through notebooks/run.py
 * (Debian's /usr/bin/python3 + jupyter_client), which fails on any cell
 * error or on a missing promised output (image/png, text/html, SVG), and
 * writes the executed notebooks to notebooks/executed/ (git-ignored).
 */
import { parseCli } from "./args.ts";

const USAGE = `Usage: deno task notebooks [options]

Executes notebooks/*.ipynb top to bottom with the Deno Jupyter kernel and checks their outputs.
Needs Debian's Jupyter client and the Deno kernelspec:
  apt-get install -y --no-install-recommends python3-nbclient jupyter-client
  deno jupyter --install --force

Options:
  --only NAMES      comma-separated notebook names or prefixes (e.g. 01,04_papers)
  --out DIR         where executed notebooks go (default notebooks/executed)
  --inplace         write the outputs into the source notebooks instead
  --extract DIR     also write every PNG/SVG/HTML output into DIR
  --timeout S       per-cell timeout in seconds (default 900)
  --no-typecheck    skip \`deno check\` of the notebooks' code
  --python PATH     Python with jupyter_client (default /usr/bin/python3)
  --list            list the notebooks and exit
  -h, --help        show this help`;

const a = parseCli(USAGE, {
  only: { type: "string" },
  out: { type: "string" },
  inplace: { type: "boolean" },
  extract: { type: "string" },
  timeout: { type: "string" },
  "no-typecheck": { type: "boolean" },
  python: { type: "string" },
  list: { type: "boolean" },
});

const dir = new URL("../notebooks/", import.meta.url);
const dirPath = decodeURIComponent(dir.pathname);
const all = [...Deno.readDirSync(dir)].filter((e) => e.isFile && e.name.endsWith(".ipynb")).map((e) => e.name).sort();
const only = a.str("only")?.split(",").map((s) => s.trim()).filter(Boolean);
const chosen = only ? all.filter((n) => only.some((o) => n === o || n.startsWith(o))) : all;
if (only && only.some((o) => !all.some((n) => n === o || n.startsWith(o)))) {
  a.fail(`--only ${only.join(",")} does not match the notebooks: ${all.join(", ")}`);
}
if (a.bool("list")) {
  for (const n of all) console.log(n);
  Deno.exit(0);
}
if (!chosen.length) a.fail(`no notebooks in ${dirPath}`);
const timeout = a.num("timeout", 900, 1);
const python = a.str("python", "/usr/bin/python3")!;

interface Notebook {
  cells: { cell_type: string; source: string | string[] }[];
}

/** Type-checks a notebook's code cells as one module next to it (so `../mod.ts` resolves as in the kernel). */
async function typecheck(name: string): Promise<boolean> {
  const nb = JSON.parse(await Deno.readTextFile(`${dirPath}${name}`)) as Notebook;
  const code = nb.cells.filter((c) => c.cell_type === "code").map((c, i) => {
    const src = Array.isArray(c.source) ? c.source.join("") : c.source;
    return `// ---- cell ${i + 1}\n${src}\n`;
  }).join("\n");
  const tmp = `${dirPath}.typecheck-${name.replace(/\.ipynb$/, "")}.ts`;
  await Deno.writeTextFile(tmp, `${code}\nexport {};\n`);
  try {
    const r = await new Deno.Command(Deno.execPath(), {
      args: ["check", "--quiet", tmp],
      stdout: "inherit",
      stderr: "inherit",
    })
      .output();
    if (!r.success) console.error(`== typecheck ${name}: FAILED`);
    return r.success;
  } finally {
    await Deno.remove(tmp).catch(() => {});
  }
}

try {
  Deno.statSync(python);
} catch {
  console.error(
    `error: ${python} not found. Install Debian's Jupyter client: apt-get install -y --no-install-recommends ` +
      `python3-nbclient jupyter-client (or pass --python)`,
  );
  Deno.exit(1);
}

let ok = true;
if (!a.bool("no-typecheck")) {
  for (const n of chosen) ok = (await typecheck(n)) && ok;
  if (!ok) {
    console.error("notebooks: type errors (fix them or pass --no-typecheck)");
    Deno.exit(1);
  }
}

const args = [`${dirPath}run.py`, "--timeout", String(timeout)];
if (a.bool("inplace")) args.push("--inplace");
else args.push("--out", a.str("out", `${dirPath}executed`)!);
const extract = a.str("extract");
if (extract) args.push("--extract", extract);
args.push(...chosen.map((n) => `${dirPath}${n}`));
const env: Record<string, string> = { NO_COLOR: "1" };
if (!Deno.env.get("DENO_WEBGPU_BACKEND")) env.DENO_WEBGPU_BACKEND = "gl";
const res = await new Deno.Command(python, { args, env, stdout: "inherit", stderr: "inherit" }).output();
Deno.exit(res.code);
