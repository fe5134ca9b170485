/**
 * @file Tuning script for the webgpu backend (not part of the library):
 * times workloads through the backend side by side with a raw,
 * shape-specialised reference matmul on the same device, interleaved round by
 * round so that load from other processes hits both alike. Prints medians.
 *
 *   DENO_WEBGPU_BACKEND=gl deno run -A tensor/webgpu/tune.ts [matmul|mlp|conv|attention|ew|all] [--rounds=7]
 */
import * as d from "../mod.ts";
import { grad } from "../../autograd/mod.ts";
import type { Tensor } from "../tensor.ts";
import { backendByName } from "../tensor.ts";
import type { WebGPUBackend } from "./backend.ts";

const args = Deno.args.filter((a) => !a.startsWith("--"));
const opt = (k: string, v: string) => Deno.args.find((a) => a.startsWith(`--${k}=`))?.split("=")[1] ?? v;
const what = args[0] ?? "all";
const rounds = Number(opt("rounds", "7"));
const fusion = opt("fusion", "on") === "on";
const flushEvery = Number(opt("flush", "64"));

await d.setBackend("webgpu");
const be = backendByName("webgpu") as WebGPUBackend;
be.setFusion(fusion);
be.engine.flushEvery = flushEvery;
const device = be.engine.device;

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
const fmt = (ms: number, flops: number) => `${ms.toFixed(1)} ms (${(flops / ms / 1e6).toFixed(2)} GF/s)`;

async function syncRead(t: Tensor) {
  const one = d.tidy(() => d.slice(d.reshape(t, [t.size]), [0], [1]));
  await one.data();
  one.dispose();
}

/** The raw reference: 8x8 register blocks, no workgroup memory, every size baked into the source. */
function rawMatmul(n: number) {
  const rows = [...Array(8).keys()], vs = [0, 1], js = [0, 1, 2, 3];
  const code = `
@group(0) @binding(0) var<storage, read> A: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> B: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> C: array<vec4<f32>>;
@compute @workgroup_size(16, 8)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  let c = g.x * 2u; let r = g.y * 8u;
  ${rows.flatMap((i) => vs.map((v) => `var c${i}_${v} = vec4<f32>();`)).join(" ")}
  for (var k = 0u; k < ${n / 4}u; k++) {
    ${
    vs.map((v) => js.map((j) => `let b${j}_${v} = B[(k * 4u + ${j}u) * ${n / 4}u + c + ${v}u];`).join(" ")).join("\n")
  }
    ${
    rows.map((i) =>
      `{ let a = A[(r + ${i}u) * ${n / 4}u + k];
      ${
        vs.map((v) => js.map((j) => `c${i}_${v} = fma(vec4<f32>(a[${j}]), b${j}_${v}, c${i}_${v});`).join(" ")).join(
          "\n",
        )
      } }`
    ).join("\n")
  }
  }
  ${rows.flatMap((i) => vs.map((v) => `C[(r + ${i}u) * ${n / 4}u + c + ${v}u] = c${i}_${v};`)).join(" ")}
}`;
  const p = device.createComputePipeline({
    layout: "auto",
    compute: { module: device.createShaderModule({ code }), entryPoint: "main" },
  });
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;
  const bufs = [0, 1, 2].map(() => device.createBuffer({ size: n * n * 4, usage }));
  const data = new Float32Array(n * n).map(() => Math.random() - 0.5);
  device.queue.writeBuffer(bufs[0], 0, data);
  device.queue.writeBuffer(bufs[1], 0, data);
  const bg = device.createBindGroup({
    layout: p.getBindGroupLayout(0),
    entries: bufs.map((buffer, binding) => ({ binding, resource: { buffer } })),
  });
  return async (reps: number) => {
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(p);
    pass.setBindGroup(0, bg);
    for (let i = 0; i < reps; i++) pass.dispatchWorkgroups(n / 8 / 16, n / 8 / 8);
    pass.end();
    device.queue.submit([enc.finish()]);
    await device.queue.onSubmittedWorkDone();
  };
}

async function matmul(n: number, reps = 3) {
  const raw = rawMatmul(n);
  const a = d.random.normal(d.randomKey(1), [n, n]), b = d.random.normal(d.randomKey(2), [n, n]);
  // Unused results are never computed (deferred kernels), so every product is read back.
  const ours = async (k: number) => {
    const outs = d.tidy(() => Array.from({ length: k }, () => d.matmul(a, b)));
    await Promise.all(outs.map(syncRead));
    d.dispose(outs);
  };
  await raw(1);
  await ours(1);
  const tr: number[] = [], to: number[] = [], t1: number[] = [];
  for (let r = 0; r < rounds; r++) {
    let t = performance.now();
    await raw(reps);
    tr.push((performance.now() - t) / reps);
    t = performance.now();
    await ours(reps);
    to.push((performance.now() - t) / reps);
    t = performance.now();
    await ours(1);
    t1.push(performance.now() - t);
  }
  const f = 2 * n ** 3;
  console.log(
    `matmul ${n}: raw ${fmt(median(tr), f)} | ours x${reps} ${fmt(median(to), f)} | ours x1+sync ${
      fmt(median(t1), f)
    } | ratio ${(median(tr) / median(to)).toFixed(3)}`,
  );
  d.dispose([a, b]);
}

async function mlp() {
  const B = 256, W = 1024, lr = 1e-3;
  let p: Record<string, Tensor> = {
    w1: d.tidy(() => d.mul(d.random.normal(d.randomKey(10), [W, W]), 0.03)),
    b1: d.zeros([W]),
    w2: d.tidy(() => d.mul(d.random.normal(d.randomKey(11), [W, W]), 0.03)),
    b2: d.zeros([W]),
  };
  const x = d.random.normal(d.randomKey(12), [B, W]), y = d.random.normal(d.randomKey(13), [B, W]);
  const loss = (q: Record<string, Tensor>) => {
    const h = d.maximum(d.add(d.matmul(x, q.w1), q.b1), 0);
    return d.mean(d.square(d.sub(d.add(d.matmul(h, q.w2), q.b2), y)));
  };
  const step = () => {
    const next = d.tidy(() => {
      const g = grad(loss)(p) as Record<string, Tensor>;
      return Object.fromEntries(Object.entries(p).map(([k, v]) => [k, d.sub(v, d.mul(g[k], lr))]));
    });
    d.dispose(p);
    p = next;
  };
  const raw = rawMatmul(1024);
  await raw(1);
  step();
  await syncRead(p.b2);
  const ts: number[] = [], tr: number[] = [];
  const k0 = be.engine.dispatches;
  for (let r = 0; r < rounds; r++) {
    let t = performance.now();
    step();
    await syncRead(p.b2);
    ts.push(performance.now() - t);
    t = performance.now();
    await raw(1);
    tr.push(performance.now() - t);
  }
  const f = 5 * 2 * B * W * W;
  console.log(
    `mlp_train: ${fmt(median(ts), f)} per step (${
      ((be.engine.dispatches - k0) / rounds).toFixed(0)
    } dispatches/step) | raw matmul1024 ${fmt(median(tr), 2 * 1024 ** 3)} | live ${d.liveBuffers()}`,
  );
  d.dispose([p, x, y]);
}

async function timeOp(name: string, flops: number, make: () => Tensor[], op: (...xs: Tensor[]) => Tensor, reps = 3) {
  const xs = make();
  const run = async (k: number) => {
    const outs = d.tidy(() => Array.from({ length: k }, () => op(...xs)));
    await Promise.all(outs.map(syncRead));
    d.dispose(outs);
  };
  await run(1);
  const ts: number[] = [];
  for (let r = 0; r < rounds; r++) {
    const t = performance.now();
    await run(reps);
    ts.push((performance.now() - t) / reps);
  }
  console.log(`${name}: ${fmt(median(ts), flops)}`);
  d.dispose(xs);
}

const rn = (s: number, shape: number[]) => d.random.normal(d.randomKey(s), shape);
if (what === "matmul" || what === "all") {
  await matmul(256, 5);
  await matmul(1024);
}
if (what === "mlp" || what === "all") await mlp();
if (what === "conv" || what === "all") {
  await timeOp(
    "conv2d 3x3 8x64x32x32",
    2 * 8 * 32 * 32 * 64 * 64 * 9,
    () => [rn(3, [8, 64, 32, 32]), rn(4, [64, 64, 3, 3])],
    (x, w) => d.conv2d(x, w, { padding: "same" }),
  );
  await timeOp(
    "depthwise 3x3",
    2 * 8 * 32 * 32 * 64 * 9,
    () => [rn(5, [8, 64, 32, 32]), rn(6, [64, 1, 3, 3])],
    (x, w) => d.conv2d(x, w, { padding: "same", groups: 64 }),
  );
}
if (what === "attention" || what === "all") {
  await timeOp(
    "attention",
    4 * 8 * 4 * 256 * 256 * 64,
    () => [7, 8, 9].map((s) => rn(s, [8, 4, 256, 64])),
    (q, k, v) => d.matmul(d.softmax(d.mul(d.matmul(q, d.swapaxes(k, -1, -2)), 1 / 8), -1), v),
  );
}
if (what === "ew" || what === "all") {
  await timeOp("elementwise chain 4M", 0, () => [rn(1, [2048, 2048])], (x) => d.add(d.mul(d.exp(d.neg(x)), 0.5), x));
  await timeOp("sum 4M", 0, () => [rn(1, [2048, 2048])], (x) => d.sum(x));
}
