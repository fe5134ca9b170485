/**
 * @file `deno task bench`: the anchor workloads of research/perf-baselines.md
 * (same shapes and FLOP counts as ../shared/anchor-bench/lib/spec.mjs), one JSON
 * line each: `{"name","backend","ms","gflops"}`. `ms` is the median wall time
 * of one op after a warm-up run, each run synchronised by reading one element
 * of its result, so queued GPU work is really finished.
 */
import * as d from "../mod.ts";
import type { Tensor } from "../mod.ts";
import { parseCli } from "../cli/args.ts";

const USAGE = `Usage: deno task bench [--backend cpu|wasm|webgpu] [--only NAME[,NAME...]] [--reps N] [--all]

Prints one JSON line {"name","backend","ms","gflops"} per workload; ms is the median
per-op time after one warm-up run. GFLOP counts follow research/perf-baselines.md
(attention: the two GEMMs; mlp_train: five GEMMs).

Options:
  --backend B   backend to measure (default: cpu)
  --only NAMES  comma-separated workload names, or a prefix before "_" (e.g. "matmul")
  --reps N      timed runs per workload (default: 3 on cpu, 1 when a run takes over 2 s;
                7 on other backends)
  --all         include workloads skipped on cpu because they take minutes (matmul_2048)
  -h, --help    show this help

Workloads: `;

/** One benchmark: `setup` builds inputs (outside the timing) and returns the op to time. */
interface Workload {
  name: string;
  /** Conventional FLOP count of one op. */
  flops: number;
  /** Too slow for the cpu reference backend unless `--all`. */
  slowOnCpu?: boolean;
  /** Returns `run` (one op, awaited until its result is readable) and `teardown`. */
  setup(): { run: () => Promise<void>; teardown: () => void };
}

/** Waits until `t` is computed by reading one element (cheap on every backend). */
async function sync(t: Tensor): Promise<void> {
  const one = d.tidy(() => d.slice(d.reshape(t, [t.size]), [0], [1]));
  await one.data();
  one.dispose();
}

/** Standard normal inputs scaled by `scale`, built without leaving temporaries behind. */
function randn(seed: number, shape: number[], scale = 1): Tensor {
  return d.tidy(() => d.mul(d.random.normal(d.randomKey(seed), shape), scale));
}

/** A workload whose op is a pure function of fixed inputs: each run's output is synced, then freed. */
function pure(name: string, flops: number, inputs: () => Tensor[], op: (...xs: Tensor[]) => Tensor, slowOnCpu = false) {
  return {
    name,
    flops,
    slowOnCpu,
    setup() {
      const xs = inputs();
      return {
        run: async () => {
          const out = d.tidy(() => op(...xs));
          await sync(out);
          out.dispose();
        },
        teardown: () => d.dispose(xs),
      };
    },
  } satisfies Workload;
}

function matmul(n: number, slowOnCpu = false): Workload {
  return pure(`matmul_${n}`, 2 * n ** 3, () => [randn(1, [n, n]), randn(2, [n, n])], d.matmul, slowOnCpu);
}

// Shapes as in ../shared/anchor-bench/lib/spec.mjs.
const CONV = { N: 8, H: 32, W: 32, C: 64, K: 3 };
const ATT = { B: 8, heads: 4, T: 256, D: 64 };
const MLP = { batch: 256, width: 1024, lr: 1e-3 };

const mlpLoss = (p: Record<string, Tensor>, x: Tensor, y: Tensor) => {
  const h = d.maximum(d.add(d.matmul(x, p.w1), p.b1), 0);
  return d.mean(d.square(d.sub(d.add(d.matmul(h, p.w2), p.b2), y)));
};
const mlpGrad = d.valueAndGrad(mlpLoss);

const CORE_WORKLOADS: Workload[] = [
  matmul(256),
  matmul(1024),
  matmul(2048, true),
  pure(
    "conv2d",
    2 * CONV.N * CONV.H * CONV.W * CONV.C * CONV.C * CONV.K * CONV.K,
    () => [randn(3, [CONV.N, CONV.C, CONV.H, CONV.W]), randn(4, [CONV.C, CONV.C, CONV.K, CONV.K])],
    (x, w) => d.conv2d(x, w, { padding: "same" }),
  ),
  pure(
    "depthwise",
    2 * CONV.N * CONV.H * CONV.W * CONV.C * CONV.K * CONV.K,
    () => [randn(5, [CONV.N, CONV.C, CONV.H, CONV.W]), randn(6, [CONV.C, 1, CONV.K, CONV.K])],
    (x, w) => d.conv2d(x, w, { padding: "same", groups: CONV.C }),
  ),
  pure(
    "attention",
    2 * (2 * ATT.B * ATT.heads * ATT.T * ATT.T * ATT.D),
    () => [7, 8, 9].map((s) => randn(s, [ATT.B, ATT.heads, ATT.T, ATT.D])),
    (q, k, v) => d.matmul(d.softmax(d.mul(d.matmul(q, d.swapaxes(k, -1, -2)), 1 / Math.sqrt(ATT.D)), -1), v),
  ),
  {
    name: "mlp_train",
    flops: 5 * 2 * MLP.batch * MLP.width * MLP.width,
    setup() {
      const { batch: B, width: W, lr } = MLP;
      let p: Record<string, Tensor> = {
        w1: randn(10, [W, W], 0.03),
        b1: d.zeros([W]),
        w2: randn(11, [W, W], 0.03),
        b2: d.zeros([W]),
      };
      const x = randn(12, [B, W]), y = randn(13, [B, W]);
      return {
        run: async () => {
          const next = d.tidy(() => {
            const [, g] = mlpGrad(p, x, y) as [Tensor, Record<string, Tensor>];
            return Object.fromEntries(Object.entries(p).map(([k, v]) => [k, d.sub(v, d.mul(g[k], lr))]));
          });
          d.dispose(p);
          p = next;
          await sync(p.b2);
        },
        teardown: () => d.dispose([p, x, y]),
      };
    },
  },
];

/**
 * One training step of a paper model at 32×32×4 latents, batch 8, as the official train.py does it:
 * the family's diffusion loss, forward + backward, and an AdamW update (lr 1e-4, no weight decay).
 * FLOPs: forward multiply-accumulates × 2 × batch, times 3 for forward + backward.
 */
function modelTrain(name: string, model: string): Workload {
  const { classCount, imageShape, objectiveFor } = d.train;
  const { def, config } = d.models.findModel(model);
  const batch = 8;
  return {
    name,
    flops: 3 * 2 * batch * def.flops(config),
    slowOnCpu: true,
    setup() {
      const [C, S] = imageShape(def, config);
      const obj = objectiveFor(def, config);
      let params = d.tidy(() => def.init(d.randomKey(0), config)) as unknown;
      let opt = d.nn.adamw.init(params);
      const x = randn(20, [batch, C, S, S]);
      const y = d.tensor(Array.from({ length: batch }, (_, i) => (i * 37) % classCount(def, config)), {
        dtype: "i32",
      });
      let step = 0;
      return {
        run: async () => {
          const key = d.random.foldIn(d.randomKey(1), step++);
          const res = d.tidy(() => {
            const [loss, g] = d.valueAndGrad((p: unknown) => obj.loss(p, x, y, key))(params) as [Tensor, unknown];
            const up = d.nn.adamw.update(params, g, opt, { lr: 1e-4, weightDecay: 0 });
            return { loss, params: up.params, opt: up.state };
          });
          d.dispose([params, opt]);
          params = res.params;
          opt = res.opt;
          await res.loss.data();
          res.loss.dispose();
        },
        teardown: () => d.dispose([params, opt, x, y]),
      };
    },
  };
}

const MODEL_WORKLOADS: Workload[] = [modelTrain("dit_s2_train", "DiT-S/2"), modelTrain("dico_s_train", "DiCo-S")];

const WORKLOADS: Workload[] = [...CORE_WORKLOADS, ...MODEL_WORKLOADS];

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

async function measure(w: Workload, backend: string, repsFlag: number | undefined): Promise<number> {
  const { run, teardown } = w.setup();
  try {
    let t = performance.now();
    await run(); // warm-up: first-call costs (pipeline compilation, JIT) are not the op's speed
    const first = performance.now() - t;
    const reps = repsFlag ?? (backend === "cpu" ? (first > 2000 ? 1 : 3) : 7);
    const times: number[] = [];
    for (let i = 0; i < reps; i++) {
      t = performance.now();
      await run();
      times.push(performance.now() - t);
    }
    return median(times);
  } finally {
    teardown();
  }
}

async function main() {
  const usage = USAGE + WORKLOADS.map((w) => w.name).join(", ");
  const cli = parseCli(usage, {
    backend: { type: "string" },
    only: { type: "string" },
    reps: { type: "string" },
    all: { type: "boolean" },
  });
  const backend = cli.choice("backend", ["cpu", "wasm", "webgpu"] as const, "cpu");
  const reps = cli.str("reps") === undefined ? undefined : cli.int("reps", 1, 1);
  const all = cli.bool("all");
  let chosen = WORKLOADS;
  const only = cli.str("only");
  if (only !== undefined) {
    const names = only.split(",").map((s) => s.trim()).filter((s) => s);
    for (const n of names) {
      if (!WORKLOADS.some((w) => w.name === n || w.name.startsWith(n + "_"))) {
        cli.fail(`--only: unknown workload '${n}' (have: ${WORKLOADS.map((w) => w.name).join(", ")})`);
      }
    }
    chosen = WORKLOADS.filter((w) => names.some((n) => w.name === n || w.name.startsWith(n + "_")));
  }
  await d.setBackend(backend);
  for (const w of chosen) {
    // Naming a slow workload exactly in --only asks for it even on cpu.
    const named = only?.split(",").some((n) => n.trim() === w.name) ?? false;
    if (w.slowOnCpu && backend === "cpu" && !all && !named) continue;
    const ms = await measure(w, backend, reps);
    const gflops = w.flops / (ms * 1e6);
    console.log(JSON.stringify({ name: w.name, backend, ms: +ms.toFixed(3), gflops: +gflops.toFixed(3) }));
  }
}

if (import.meta.main) {
  try {
    await main();
  } catch (e) {
    console.error(e instanceof d.DifflabError ? `error: ${e.message}` : e);
    Deno.exit(1);
  }
}
