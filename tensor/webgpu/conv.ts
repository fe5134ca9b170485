/**
 * @file The general grouped convolution primitive as an implicit GEMM:
 * rows are output positions (oy, ox) of one image, columns are output
 * channels, the reduction runs over (ky, kx, ci). Each thread keeps an
 * R-position x C-channel block in registers (no workgroup memory, as for
 * matmul on llvmpipe); for each kernel tap it computes the R input positions
 * and their validity once and then streams over input channels. Stride,
 * signed padding (negative = crop), input (lhs) dilation and kernel (rhs)
 * dilation follow the `conv` primitive of prims.ts exactly, so the backward
 * convolutions of autograd/rules.ts run on the same kernel.
 */
import type { ConvParams } from "../prims.ts";
import { size } from "../shape.ts";
import {
  DIV_SRC,
  elemBytes,
  enables,
  fdiv,
  fromStore,
  magic,
  magics,
  regType,
  storeType,
  toStore,
  Uniforms,
} from "./codegen.ts";
import type { Engine } from "./engine.ts";
import { launch, spanOf } from "./launch.ts";
import { matmul } from "./matmul.ts";
import type { View } from "./reduce.ts";
import { THREAD_INDEX, WG } from "./codegen.ts";

interface Cfg {
  R: number;
  C: number;
  WX: number;
  WY: number;
}

const FIELDS = [
  "OW_m",
  "OW_s",
  "dh_m",
  "dh_s",
  "dw_m",
  "dw_s",
  "G",
  "Ci",
  "H",
  "W",
  "Co",
  "KH",
  "KW",
  "OH",
  "OW",
  "sh",
  "sw",
  "pt",
  "pl",
  "dh",
  "dw",
  "rh",
  "rw",
  "tilesP",
  "tilesC",
  "nb",
  "n0",
  "gridX",
  "xo",
  "xs0",
  "xs1",
  "xs2",
  "xs3",
  "xs4",
  "wo",
  "ws0",
  "ws1",
  "ws2",
  "ws3",
  "ws4",
  "yo",
] as const;

function source(
  cfg: Cfg,
  x: View,
  outDtype: View["dtype"],
  dil: boolean,
  fixed: { KH: number; KW: number; Ci: number } | null,
): string {
  const { R, C, WX, WY } = cfg;
  const OWd = { d: "p.OW", m: "p.OW_m", s: "p.OW_s" };
  const dh = { d: "p.dh", m: "p.dh_m", s: "p.dh_s" }, dw = { d: "p.dw", m: "p.dw_m", s: "p.dw_s" };
  // Input dilation needs a division per tap; without it (every forward conv) there is none.
  const tapY = (r: number) =>
    dil
      ? `let py${r} = i32(oy${r} * p.sh + ky * p.rh) - pt; let pyu${r} = u32(max(py${r}, 0)); let iy${r} = ${
        fdiv(`pyu${r}`, dh)
      };
    let vy${r} = py${r} >= 0 && pyu${r} == iy${r} * p.dh && iy${r} < p.H;`
      : `let py${r} = i32(oy${r} * p.sh + ky * p.rh) - pt; let iy${r} = u32(max(py${r}, 0));
    let vy${r} = py${r} >= 0 && iy${r} < p.H;`;
  const tapX = (r: number) =>
    dil
      ? `let px${r} = i32(ox${r} * p.sw + kx * p.rw) - pl; let pxu${r} = u32(max(px${r}, 0)); let ix${r} = ${
        fdiv(`pxu${r}`, dw)
      };
      let v${r} = vy${r} && px${r} >= 0 && pxu${r} == ix${r} * p.dw && ix${r} < p.W;`
      : `let px${r} = i32(ox${r} * p.sw + kx * p.rw) - pl; let ix${r} = u32(max(px${r}, 0));
      let v${r} = vy${r} && px${r} >= 0 && ix${r} < p.W;`;
  const d = x.dtype;
  const T = regType(d);
  const rows = [...Array(R).keys()], cols = [...Array(C).keys()];
  const u = new Uniforms();
  for (const f of FIELDS) u.field(f);
  const X = (i: string) => fromStore(d, `X[${i}]`);
  const Wt = (i: string) => fromStore(d, `Wt[${i}]`);
  return `${enables([d, outDtype])}${u.decl()}
@group(0) @binding(1) var<storage, read_write> Y: array<${storeType(outDtype)}>;
@group(0) @binding(2) var<storage, read> X: array<${storeType(d)}>;
@group(0) @binding(3) var<storage, read> Wt: array<${storeType(d)}>;
${DIV_SRC}
@compute @workgroup_size(${WX}, ${WY})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
  let wid = wg.x + wg.y * p.gridX;
  let per = p.G * p.tilesP * p.tilesC;
  let nl = wid / per;
  if (nl >= p.nb) { return; }
  let n = p.n0 + nl;
  var rem = wid - nl * per;
  let g = rem / (p.tilesP * p.tilesC);
  rem = rem - g * (p.tilesP * p.tilesC);
  let tp = rem / p.tilesC;
  let tc = rem - tp * p.tilesC;
  let ohw = p.OH * p.OW;
  let p0 = tp * ${R * WX}u + l.x * ${R}u;
  let co0 = tc * ${C * WY}u + l.y * ${C}u;
  let pt = bitcast<i32>(p.pt);
  let pl = bitcast<i32>(p.pl);
  let xb = p.xo + n * p.xs0 + g * p.xs1;
  let wb = p.wo + g * p.ws0;
${
    rows.map((r) =>
      `  let pp${r} = min(p0 + ${r}u, ohw - 1u); let oy${r} = ${
        fdiv(`pp${r}`, OWd)
      }; let ox${r} = pp${r} - oy${r} * p.OW;`
    ).join("\n")
  }
${cols.map((c) => `  let wc${c} = wb + min(co0 + ${c}u, p.Co - 1u) * p.ws1;`).join("\n")}
${rows.map((r) => cols.map((c) => `  var acc${r}_${c}: ${T} = ${T}(0);`).join("")).join("\n")}
  for (var ky = 0u; ky < ${fixed ? `${fixed.KH}u` : "p.KH"}; ky = ky + 1u) {
${rows.map((r) => `    ${tapY(r)}`).join("\n")}
    for (var kx = 0u; kx < ${fixed ? `${fixed.KW}u` : "p.KW"}; kx = kx + 1u) {
${
    rows.map((r) =>
      `      ${tapX(r)}
      let xoff${r} = xb + iy${r} * p.xs3 + ix${r} * p.xs4;`
    ).join("\n")
  }
      let wk = ky * p.ws3 + kx * p.ws4;
      for (var ci = 0u; ci < ${fixed ? `${fixed.Ci}u` : "p.Ci"}; ci = ci + 1u) {
${rows.map((r) => `        let xv${r} = select(${T}(0), ${X(`xoff${r} + ci * p.xs2`)}, v${r});`).join("\n")}
${cols.map((c) => `        let wv${c} = ${Wt(`wc${c} + wk + ci * p.ws2`)};`).join("\n")}
${rows.map((r) => "        " + cols.map((c) => `acc${r}_${c} = acc${r}_${c} + xv${r} * wv${c};`).join(" ")).join("\n")}
      }
    }
  }
  let yb = p.yo + ((n * p.G + g) * p.Co) * ohw;
${
    rows.map((r) =>
      `  if (p0 + ${r}u < ohw) {` +
      cols.map((c) =>
        ` if (co0 + ${c}u < p.Co) { Y[yb + (co0 + ${c}u) * ohw + p0 + ${r}u] = ${toStore(outDtype, `acc${r}_${c}`)}; }`
      ).join("") +
      ` }`
    ).join("\n")
  }
}
`;
}

let tuning: Partial<Cfg> = {};
/** Overrides the tile configuration (tuning scripts only). */
export function setConvTuning(t: Partial<Cfg>): void {
  tuning = t;
}

function chooseCfg(Co: number, ohw: number): Cfg {
  if (tuning.R) return { R: 8, C: 8, WX: 8, WY: 8, ...tuning };
  const C = Co >= 8 ? 8 : Co >= 4 ? 4 : Co >= 2 ? 2 : 1;
  let WY = 1;
  while (WY < 8 && WY * C < Co) WY *= 2;
  // One channel per thread (depthwise): 4 positions measured best; more channels share loads over 8.
  const R = ohw >= 8 && C > 1 ? 8 : 4;
  const WX = Math.max(1, 64 / WY);
  return { R, C, WX, WY };
}

/** Bytes of the im2col matrix of a conv, or Infinity when the GEMM path should not be used. */
export function im2colBytes(x: View, w: View, outShape: readonly number[]): number {
  const [N, G, Ci] = x.shape;
  const [, Co, , KH, KW] = w.shape;
  const ohw = outShape[3] * outShape[4];
  const kg = Ci * KH * KW;
  // Small reductions or few output channels (depthwise) stay on the direct kernel.
  if (Co < 16 || kg < 16 || ohw < 16 || x.dtype !== "f32") return Infinity;
  const bytes = N * G * kg * ohw * 4;
  return bytes <= 256 * 2 ** 20 ? bytes : Infinity;
}

/** True when w's (ci, ky, kx) axes flatten into one stride (the GEMM path's A operand). */
export function flattenableWeights(w: View): boolean {
  const [, , , KH, KW] = w.shape;
  return w.strides[3] === KW * w.strides[4] && w.strides[2] === KH * KW * w.strides[4];
}

/**
 * The GEMM path: im2col into `col` ([N,G,Ci*KH*KW,OH*OW]), then per group one batched
 * matmul W_g [Co, K] x col_g [K, OHW] written straight into y's [N,G,Co,OHW] layout.
 */
export function convGemm(
  engine: Engine,
  x: View,
  w: View,
  p: ConvParams,
  outShape: readonly number[],
  out: GPUBuffer,
  col: GPUBuffer,
): void {
  const [N, G, Ci, H, W] = x.shape;
  const [, Co, , KH, KW] = w.shape;
  const [, , , OH, OW] = outShape;
  const ohw = OH * OW, kg = Ci * KH * KW;
  const dil = p.lhsDilation[0] !== 1 || p.lhsDilation[1] !== 1;
  // Four consecutive positions per thread (one vec4 store): the index math, divisions
  // included, is paid once per four elements.
  const V = ohw % 4 === 0 && engine.storageAlign % 16 === 0 ? 4 : 1;
  const pipe = engine.pipe(`im2col|${x.dtype}|${dil}|${V}`, 1, 1, false, () => {
    const u = new Uniforms();
    for (const k of ["n", "base", "gx", "H", "W", "sh", "sw", "pt", "pl", "rh", "rw"]) u.field(k);
    const [ROWd, KWd, KHd, Cid, Gd, OWd, dh, dw] = ["rowlen", "KW", "KH", "Ci", "G", "OW", "dh", "dw"].map((k) =>
      u.divisor(k)
    );
    for (const k of ["xo", "xs0", "xs1", "xs2", "xs3", "xs4", "oo"]) u.field(k);
    const split = (v: string, D: ReturnType<typeof u.divisor>, rest: string) =>
      `let ${rest}q = ${fdiv(rest, D)}; let ${v} = ${rest} - ${rest}q * ${D.d};`;
    const tap = (j: number) =>
      `  { let py = i32(oy * p.sh) + pyk; let px = i32(ox * p.sw) + pxk;
    ${
        dil
          ? `let pyu = u32(max(py, 0)); let pxu = u32(max(px, 0)); let iy = ${fdiv("pyu", dh)}; let ix = ${
            fdiv("pxu", dw)
          };
    let ok = py >= 0 && px >= 0 && pyu == iy * p.dh && pxu == ix * p.dw && iy < p.H && ix < p.W;`
          : `let iy = u32(max(py, 0)); let ix = u32(max(px, 0));
    let ok = py >= 0 && px >= 0 && iy < p.H && ix < p.W;`
      }
    if (ok) { v${j} = X[xb + iy * p.xs3 + ix * p.xs4]; }
    ox = ox + 1u; if (ox == p.OW) { ox = 0u; oy = oy + 1u; } }\n`;
    const js = [...Array(V).keys()];
    return `${u.decl()}
@group(0) @binding(1) var<storage, read_write> out: array<${V === 4 ? "vec4<f32>" : "f32"}>;
@group(0) @binding(2) var<storage, read> X: array<f32>;
${DIV_SRC}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  ${THREAD_INDEX}
  if (t >= p.n) { return; }
  let f = p.base + t;
  ${split("q0", ROWd, "f")}
  ${split("kx", KWd, "fq")}
  ${split("ky", KHd, "fqq")}
  ${split("ci", Cid, "fqqq")}
  ${split("g", Gd, "fqqqq")}
  let n = fqqqqq;
  let q = q0 * ${V}u;
  var oy = ${fdiv("q", OWd)};
  var ox = q - oy * p.OW;
  let xb = p.xo + n * p.xs0 + g * p.xs1 + ci * p.xs2;
  let pyk = i32(ky * p.rh) - bitcast<i32>(p.pt);
  let pxk = i32(kx * p.rw) - bitcast<i32>(p.pl);
  ${js.map((j) => `var v${j} = 0.0;`).join(" ")}
${js.map(tap).join("")}  out[p.oo + f] = ${V === 4 ? "vec4<f32>(v0, v1, v2, v3)" : "v0"};
}
`;
  });
  const total = (N * G * kg * ohw) / V;
  const perN = (G * kg * ohw) / V, xRest = G * Ci * H * W;
  launch(engine, pipe, "conv im2col", total, [
    { buf: col, eb: 4, offset: 0, span: (s, e) => [s * V, e * V - 1], shape: [N, G, kg, ohw] },
    {
      buf: x.buf,
      eb: 4,
      offset: x.offset,
      span: (s, e) =>
        spanOf(x.shape, x.strides, x.offset, Math.floor(s / perN) * xRest, (Math.floor((e - 1) / perN) + 1) * xRest),
      shape: x.shape,
    },
  ], (s, e, offs, gx) => [
    e - s,
    s,
    gx,
    H,
    W,
    p.stride[0],
    p.stride[1],
    p.padding[0][0],
    p.padding[1][0],
    p.rhsDilation[0],
    p.rhsDilation[1],
    ...magics([ohw / V, KW, KH, Ci, G, OW, p.lhsDilation[0], p.lhsDilation[1]]),
    offs[1],
    ...x.strides,
    offs[0] / V,
  ]);
  for (let g = 0; g < G; g++) {
    const A: View = {
      buf: w.buf,
      dtype: w.dtype,
      shape: [N, Co, kg],
      strides: [0, w.strides[1], w.strides[4]],
      offset: w.offset + g * w.strides[0],
    };
    const B: View = {
      buf: col,
      dtype: x.dtype,
      shape: [N, kg, ohw],
      strides: [G * kg * ohw, ohw, 1],
      offset: g * kg * ohw,
    };
    matmul(engine, A, B, out, { offset: g * Co * ohw, scb: G * Co * ohw, ldc: ohw });
  }
}

/** y = conv(x, w) with x [N,G,Ci,H,W], w [G,Co,Ci,KH,KW] (views) into contiguous `out` [N,G,Co,OH,OW]. */
export function conv(
  engine: Engine,
  x: View,
  w: View,
  p: ConvParams,
  outShape: readonly number[],
  out: GPUBuffer,
): void {
  const [N, G, Ci, H, W] = x.shape;
  const [, Co, , KH, KW] = w.shape;
  const [, , , OH, OW] = outShape;
  if (size(outShape) === 0) return;
  const ohw = OH * OW;
  const cfg = chooseCfg(Co, ohw);
  const dil = p.lhsDilation[0] !== 1 || p.lhsDilation[1] !== 1;
  // Small kernels with one input channel per group (depthwise) get their loop bounds baked in:
  // llvmpipe runs uniform-bounded loops with per-lane masks, which dominated these cheap convs.
  const fixed = KH <= 3 && KW <= 3 && Ci === 1 ? { KH, KW, Ci } : null;
  const key = `conv|${cfg.R}|${cfg.C}|${cfg.WX}|${cfg.WY}|${x.dtype}|${dil}|${fixed ? `${KH}x${KW}x${Ci}` : ""}`;
  const pipe = engine.pipe(key, 1, 2, false, () => source(cfg, x, x.dtype, dil, fixed));
  const tilesP = Math.ceil(ohw / (cfg.R * cfg.WX));
  const tilesC = Math.ceil(Co / (cfg.C * cfg.WY));
  const per = G * tilesP * tilesC;
  const eb = elemBytes(x.dtype);
  const xRest = G * Ci * H * W, yRest = G * Co * ohw;
  launch(
    engine,
    pipe,
    "conv",
    N,
    [
      { buf: out, eb, offset: 0, span: (s, e) => [s * yRest, e * yRest - 1], shape: outShape },
      {
        buf: x.buf,
        eb,
        offset: x.offset,
        span: (s, e) => spanOf(x.shape, x.strides, x.offset, s * xRest, e * xRest),
        shape: x.shape,
      },
      { buf: w.buf, eb, offset: w.offset, span: () => spanAll(w), shape: w.shape },
    ],
    (s, e, offs, gx) => [
      ...magic(OW).slice(1),
      ...magic(p.lhsDilation[0]).slice(1),
      ...magic(p.lhsDilation[1]).slice(1),
      G,
      Ci,
      H,
      W,
      Co,
      KH,
      KW,
      OH,
      OW,
      p.stride[0],
      p.stride[1],
      p.padding[0][0],
      p.padding[1][0],
      p.lhsDilation[0],
      p.lhsDilation[1],
      p.rhsDilation[0],
      p.rhsDilation[1],
      tilesP,
      tilesC,
      e - s,
      s,
      gx / (cfg.WX * cfg.WY),
      offs[1],
      ...x.strides,
      offs[2],
      ...w.strides,
      offs[0],
    ],
    { threads: (n) => n * per * cfg.WX * cfg.WY, wg: cfg.WX * cfg.WY },
  );
}

function spanAll(v: View): [number, number] {
  const n = size(v.shape);
  return n === 0 ? [v.offset, v.offset] : spanOf(v.shape, v.strides, v.offset, 0, n);
}
