/**
 * @file Crash safety of `deno task train`: runs are killed with SIGKILL at
 * random moments (checkpointing every step, so many kills land inside a
 * checkpoint or log write), and after every kill the checkpoint on disk is a
 * complete, loadable one whose step never goes backwards; `--resume` then
 * carries on, and the finished run equals an uninterrupted one bit for bit
 * (parameters, EMA, optimiser state, logged losses).
 */
import assert from "node:assert/strict";
import * as d from "../mod.ts";
import { loadCheckpoint } from "../train/checkpoint.ts";

await d.setBackend("cpu");

const ROOT = new URL("..", import.meta.url).pathname;
const TRIALS = 20;
// DiT-N/4 on wasm takes ~0.1 s a step, so a trial spans many steps and checkpoint writes.
const FLAGS = [
  "--model",
  "DiT-N/4",
  "--steps",
  "24",
  "--batch",
  "4",
  "--ckpt-every",
  "1",
  "--log-every",
  "1",
  "--grid-per-class",
  "0",
  "--backend",
  "wasm",
  "--quiet",
];

function run(out: string, resume: boolean): Deno.ChildProcess {
  const args = ["run", "-A", `${ROOT}cli/train.ts`, ...FLAGS, "--out", out, ...(resume ? ["--resume"] : [])];
  return new Deno.Command(Deno.execPath(), { args, cwd: ROOT, stdout: "null", stderr: "piped" }).spawn();
}

/** Step and loss of every log line, the part of the log that must not depend on interruptions. */
async function logged(dir: string): Promise<[number, number][]> {
  const text = await Deno.readTextFile(`${dir}/log.jsonl`);
  return text.split("\n").filter((l) => l.trim()).map((l) => {
    const r = JSON.parse(l);
    return [r.step, r.loss];
  });
}

async function tensorsOf(file: string): Promise<Map<string, number[]>> {
  const { tensors } = await d.io.readSafetensors(file);
  const out = new Map<string, number[]>();
  for (const [k, t] of Object.entries(tensors)) out.set(k, Array.from(await t.data()));
  d.dispose(tensors);
  return out;
}

/** Deterministic delays, so a failure can be replayed. */
function mulberry32(seed: number) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

Deno.test({
  name: `train CLI killed with SIGKILL ${TRIALS} times: always a readable checkpoint, resume loses nothing`,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const tmp = await Deno.makeTempDir({ prefix: "difflab-crash-" });
    try {
      const ref = `${tmp}/ref`;
      const t0 = performance.now();
      const r = await run(ref, false).output();
      assert.equal(r.code, 0, new TextDecoder().decode(r.stderr));
      const full = (performance.now() - t0) / 1000;
      const want = await tensorsOf(`${ref}/ckpt.safetensors`);
      const wantLog = await logged(ref);
      assert.equal(wantLog.length, 24);

      const rand = mulberry32(1234);
      let kills = 0, finished = 0, dirs = 0, duringWrite = 0;
      while (kills < TRIALS) {
        const dir = `${tmp}/run-${dirs++}`;
        let lastStep = 0;
        for (let attempt = 0;; attempt++) {
          assert.ok(attempt < 200, "a killed run never finished");
          const last = kills >= TRIALS;
          const child = run(dir, true);
          // Anywhere from start-up to past the end of a whole run; once enough kills, let it finish.
          const delay = 200 + rand() * full * 1000 * 0.6;
          const status = await Promise.race([
            child.status,
            ...(last ? [] : [new Promise<null>((res) => setTimeout(() => res(null), delay))]),
          ]);
          if (status === null) {
            try {
              child.kill("SIGKILL");
            } catch { /* exited just now */ }
            const s = await child.status;
            await child.stderr.cancel();
            if (s.signal === "SIGKILL") kills++;
            else assert.equal(s.code, 0, `run in ${dir} exited with ${s.code}`);
          } else {
            const err = new TextDecoder().decode(await new Response(child.stderr).arrayBuffer());
            assert.equal(status.code, 0, `run in ${dir} failed: ${err}`);
          }
          const files = names(dir);
          if (files.some((n) => n.includes(".tmp-"))) duringWrite++;
          if (files.includes("ckpt.safetensors")) {
            // Whatever the moment of the kill, the checkpoint is complete and loads.
            const st = await loadCheckpoint(`${dir}/ckpt.safetensors`);
            assert.ok(st.info.step >= lastStep, `checkpoint went back from step ${lastStep} to ${st.info.step}`);
            lastStep = st.info.step;
            d.dispose([st.params, st.ema, st.opt.m, st.opt.v]);
          }
          if (status !== null) break;
        }
        finished++;
        const got = await tensorsOf(`${dir}/ckpt.safetensors`);
        assert.deepEqual([...got.keys()].sort(), [...want.keys()].sort());
        for (const [k, v] of want) assert.deepEqual(got.get(k), v, `${dir}: ${k} differs from the uninterrupted run`);
        assert.deepEqual(await logged(dir), wantLog, `${dir}: log differs from the uninterrupted run`);
        assert.ok(names(dir).every((n) => !n.includes(".tmp-")), "temporary files left after a finished run");
      }
      console.log(
        `crash test: ${kills} SIGKILLs over ${finished} runs (${duringWrite} left a partial temp file), all resumed exactly`,
      );
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
});

function names(dir: string): string[] {
  return [...Deno.readDirSync(dir)].map((e) => e.name);
}
