/**
 * @file A small end-to-end example (`deno run -A examples/fit_mlp.ts`):
 * this is a short demo that exercises the whole stack for real: it fits a
 * 2→32→1 tanh MLP to y = sin(πx₁)·cos(πx₂) on 256 random points with
 * full-batch Adam written inline over `valueAndGrad`, one `tidy` per step so
 * memory stays flat, and exits non-zero if the loss did not fall or memory grew.
 */
import * as d from "../mod.ts";
import type { Tensor } from "../mod.ts";
import { parseCli } from "../cli/args.ts";

const USAGE = `Usage: deno task train [--steps N] [--seed S] [--out DIR] [--backend cpu|wasm|webgpu]

Demo trainer (the diffusion trainer replaces it later): fits a 2->32->1 tanh MLP
to y = sin(pi*x1)*cos(pi*x2) on 256 random points in [-1,1]^2 with Adam and a
cosine learning-rate decay, printing the loss as it goes.

Options:
  --steps N     optimisation steps (default 200)
  --seed S      PRNG seed for data and initial weights (default 0)
  --out DIR     also write DIR/log.jsonl, one {"step","loss","lr"} object per logged step
  --backend B   cpu (default), wasm or webgpu (wasm and webgpu are in progress)
  -h, --help    show this help`;

const HIDDEN = 32;
const POINTS = 256;
const LR = 0.03;
const BETA1 = 0.9, BETA2 = 0.999, EPS = 1e-8;

/** The demo model's parameters. */
interface Mlp {
  w1: Tensor;
  b1: Tensor;
  w2: Tensor;
  b2: Tensor;
}
const KEYS = ["w1", "b1", "w2", "b2"] as const;

function initMlp(key: d.Key): Mlp {
  const [k1, k2] = d.random.split(key, 2);
  // LeCun-normal scaling keeps tanh out of saturation at the start.
  return {
    w1: d.mul(d.random.normal(k1, [2, HIDDEN]), 1 / Math.sqrt(2)),
    b1: d.zeros([HIDDEN]),
    w2: d.mul(d.random.normal(k2, [HIDDEN, 1]), 1 / Math.sqrt(HIDDEN)),
    b2: d.zeros([1]),
  };
}

function forward(p: Mlp, x: Tensor): Tensor {
  const h = d.tanh(d.add(d.matmul(x, p.w1), p.b1));
  return d.add(d.matmul(h, p.w2), p.b2);
}

function mse(p: Mlp, x: Tensor, y: Tensor): Tensor {
  return d.mean(d.square(d.sub(forward(p, x), y)));
}

const lossAndGrad = d.valueAndGrad(mse);

/** Cosine decay from LR to LR/10 over the run. */
function lrAt(step: number, steps: number): number {
  const t = steps <= 1 ? 1 : (step - 1) / (steps - 1);
  return LR * (0.1 + 0.9 * 0.5 * (1 + Math.cos(Math.PI * t)));
}

interface State {
  params: Mlp;
  m: Mlp;
  v: Mlp;
}

/** One Adam step; everything not returned is released by `tidy`. */
function trainStep(s: State, x: Tensor, y: Tensor, step: number, lr: number): State & { loss: Tensor } {
  return d.tidy(() => {
    const [loss, g] = lossAndGrad(s.params, x, y) as [Tensor, Mlp];
    const c1 = 1 - BETA1 ** step, c2 = 1 - BETA2 ** step;
    const params = {} as Mlp, m = {} as Mlp, v = {} as Mlp;
    for (const k of KEYS) {
      m[k] = d.add(d.mul(s.m[k], BETA1), d.mul(g[k], 1 - BETA1));
      v[k] = d.add(d.mul(s.v[k], BETA2), d.mul(d.square(g[k]), 1 - BETA2));
      const upd = d.div(d.div(m[k], c1), d.add(d.sqrt(d.div(v[k], c2)), EPS));
      params[k] = d.sub(s.params[k], d.mul(upd, lr));
    }
    return { params, m, v, loss };
  });
}

async function main() {
  const cli = parseCli(USAGE, {
    steps: { type: "string" },
    seed: { type: "string" },
    out: { type: "string" },
    backend: { type: "string" },
  });
  const steps = cli.int("steps", 200, 1);
  const seed = cli.int("seed", 0);
  const out = cli.str("out");
  const backend = cli.choice("backend", ["cpu", "wasm", "webgpu"] as const, "cpu");
  await d.setBackend(backend);

  const logPath = out ? `${out}/log.jsonl` : undefined;
  if (out) {
    await Deno.mkdir(out, { recursive: true });
    await Deno.writeTextFile(logPath!, "");
  }

  const [kData, kInit] = d.random.split(d.randomKey(seed), 2);
  // Set-up runs in tidy too: normal() and friends make temporaries that would otherwise wait for GC.
  const { x, y } = d.tidy(() => {
    const x = d.random.uniform(kData, [POINTS, 2], { min: -1, max: 1 });
    const [x1, x2] = d.split(x, 2, 1);
    return { x, y: d.mul(d.sin(d.mul(x1, Math.PI)), d.cos(d.mul(x2, Math.PI))) };
  });
  let state: State = d.tidy(() => {
    const params = initMlp(kInit);
    return { params, m: d.treeMap(d.zerosLike, params) as Mlp, v: d.treeMap(d.zerosLike, params) as Mlp };
  });
  const liveBefore = d.liveBuffers();

  console.log(
    `demo: 2->${HIDDEN}->1 tanh MLP, y = sin(pi*x1)*cos(pi*x2), ${POINTS} points, Adam, ${steps} steps, ` +
      `seed ${seed}, backend ${d.getBackend()}`,
  );
  const every = Math.max(1, Math.round(steps / 10));
  const t0 = performance.now();
  let first = NaN, last = NaN;
  for (let step = 1; step <= steps; step++) {
    const lr = lrAt(step, steps);
    const next = trainStep(state, x, y, step, lr);
    d.dispose(state);
    state = { params: next.params, m: next.m, v: next.v };
    if (step === 1 || step === steps || step % every === 0) {
      const loss = await next.loss.item();
      if (!Number.isFinite(loss)) {
        console.error(`error: loss became ${loss} at step ${step}`);
        Deno.exit(1);
      }
      if (step === 1) first = loss;
      last = loss;
      console.log(`step ${String(step).padStart(5)}  loss ${loss.toFixed(6)}  lr ${lr.toExponential(2)}`);
      if (logPath) await Deno.writeTextFile(logPath, JSON.stringify({ step, loss, lr }) + "\n", { append: true });
    }
    next.loss.dispose();
  }
  const secs = (performance.now() - t0) / 1000;
  const live = d.liveBuffers();
  console.log(`live buffers: ${liveBefore} before step 1, ${live} after step ${steps}`);
  console.log(`${steps} steps in ${secs.toFixed(2)} s (${(steps / secs).toFixed(1)} steps/s)`);
  if (live > liveBefore) {
    console.error(`error: live buffers grew from ${liveBefore} to ${live}: the training step leaks`);
    Deno.exit(1);
  }
  if (!(last < first)) {
    console.error(`error: loss did not fall: ${first.toFixed(6)} at step 1, ${last.toFixed(6)} at step ${steps}`);
    Deno.exit(1);
  }
  console.log(`loss fell from ${first.toFixed(6)} to ${last.toFixed(6)} (${(first / last).toFixed(1)}x lower)`);
}

if (import.meta.main) {
  try {
    await main();
  } catch (e) {
    // Library errors carry a full explanation; anything else is a bug and keeps its stack.
    console.error(e instanceof d.DifflabError ? `error: ${e.message}` : e);
    Deno.exit(1);
  }
}
