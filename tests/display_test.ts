/**
 * @file Rich display: the MIME bundles a Tensor produces (picture, heat map
 * or table by shape), the decoded PNG pixels, parameter-table totals against
 * the models' own counts, and the SVG charts (well-formed XML, one point per
 * value).
 */
import assert from "node:assert/strict";
import { decode } from "fast-png";
import * as d from "../mod.ts";

const D = d.display;

/** The bundle a value shows in Jupyter. */
function bundle(x: unknown): Promise<d.display.MimeBundle> {
  assert.ok(D.isDisplayable(x), "value has no Jupyter display method");
  return D.bundleOf(x as d.display.Displayable);
}

function png(b: d.display.MimeBundle) {
  assert.ok(b["image/png"], `no image/png in bundle with ${Object.keys(b).join(", ")}`);
  return decode(Uint8Array.from(atob(b["image/png"]), (c) => c.charCodeAt(0)));
}

/** Minimal XML well-formedness check: balanced tags, quoted attributes, valid entities, one root. */
function assertWellFormedXml(xml: string) {
  const stack: string[] = [];
  let roots = 0, i = 0;
  const checkText = (t: string) => {
    for (const m of t.matchAll(/&([^;\s]*);?/g)) {
      assert.match(m[0], /^&(amp|lt|gt|quot|apos|#\d+|#x[0-9a-fA-F]+);$/, `bad entity ${m[0]}`);
    }
    assert.ok(!t.includes("<"), "stray <");
  };
  while (i < xml.length) {
    const lt = xml.indexOf("<", i);
    if (lt < 0) {
      checkText(xml.slice(i));
      break;
    }
    const text = xml.slice(i, lt);
    if (!stack.length) assert.equal(text.trim(), "", `text outside the root: ${text.slice(0, 40)}`);
    checkText(text);
    const gt = xml.indexOf(">", lt);
    assert.ok(gt > lt, "unterminated tag");
    const tag = xml.slice(lt + 1, gt);
    i = gt + 1;
    if (tag.startsWith("?") || tag.startsWith("!--")) continue;
    if (tag.startsWith("/")) {
      assert.equal(tag.slice(1).trim(), stack.pop(), "mismatched closing tag");
      continue;
    }
    const selfClosing = tag.endsWith("/");
    const body = selfClosing ? tag.slice(0, -1) : tag;
    const name = body.match(/^([A-Za-z_][\w:.-]*)/)?.[1];
    assert.ok(name, `bad tag <${tag.slice(0, 30)}>`);
    const attrs = body.slice(name.length);
    const rest = attrs.replace(/\s+[A-Za-z_][\w:.-]*="[^"<]*"/g, "");
    assert.equal(rest.trim(), "", `bad attributes in <${name}>: ${rest.slice(0, 40)}`);
    for (const m of attrs.matchAll(/="([^"]*)"/g)) checkText(m[1]);
    if (!stack.length) roots++;
    if (!selfClosing) stack.push(name);
  }
  assert.deepEqual(stack, [], "unclosed tags");
  assert.equal(roots, 1, "exactly one root element");
}

function polylinePoints(svg: string): number[] {
  return [...svg.matchAll(/<polyline[^>]* points="([^"]*)"/g)].map((m) => m[1].trim().split(/\s+/).length);
}

Deno.test("display: a [N,1,H,W] tensor shows as a PNG grid with exact pixels", async () => {
  // Image 0 all -1 (black), image 1 all +1 (white): [-1, 1] data maps to black..white.
  const x = d.concat([d.full([1, 1, 8, 8], -1), d.full([1, 1, 8, 8], 1)], 0);
  const b = await bundle(x);
  assert.ok(b["text/html"].includes("<img"), "html embeds the image");
  assert.ok(
    b["text/html"].includes("f32[2,1,8,8]") && b["text/html"].includes("cpu"),
    "header names dtype/shape/backend",
  );
  const img = png(b);
  // 8-px cells upscale ×8 to 64 px; 2 columns with 2-px gaps: 2·64 + 3·2 wide, 64 + 2·2 high.
  assert.equal(img.width, 134);
  assert.equal(img.height, 68);
  assert.equal(img.channels, 1);
  const at = (x: number, y: number) => img.data[y * img.width + x];
  assert.equal(at(2 + 32, 2 + 32), 0, "first image black");
  assert.equal(at(2 + 64 + 2 + 32, 2 + 32), 255, "second image white");
  assert.equal(at(0, 0), 128, "gap is mid gray");
});

Deno.test("display: [3,H,W] is one RGB image and 2-D maps are grayscale images", async () => {
  const rgb = d.stack([d.full([8, 8], 1), d.full([8, 8], 0), d.full([8, 8], -1)], 0);
  const im = png(await bundle(rgb));
  assert.equal(im.channels, 3);
  assert.deepEqual([...im.data.slice(0, 3)], [255, 128, 0], "R=+1, G=0, B=-1 under the [-1,1] range");
  const ramp = d.reshape(d.arange(0, 100), [10, 10]);
  const g = png(await bundle(ramp));
  assert.equal(g.channels, 1);
  assert.equal(g.data[0], 0, "min maps to black");
  assert.equal(g.data[g.data.length - 1], 255, "max maps to white");
});

Deno.test("display: small and 1-D tensors show as HTML tables, truncated when long", async () => {
  const b = await bundle(d.tensor([[1, 2, 3], [4, 5, 6]]));
  assert.equal(b["image/png"], undefined);
  assert.ok(b["text/html"].includes("<table"));
  for (const v of ["1", "2", "3", "4", "5", "6"]) assert.ok(b["text/html"].includes(`>${v}</td>`), `value ${v} shown`);
  assert.ok(b["text/plain"].startsWith("Tensor(f32[2,3] on cpu)"));
  const long = await bundle(d.arange(0, 1000));
  const cells = long["text/html"].match(/<td/g)!.length;
  assert.ok(cells < 30, `1000 values are truncated to a few cells (${cells})`);
  assert.ok(long["text/html"].includes("999") && long["text/html"].includes("…"));
  const scalar = await bundle(d.tensor(2.5));
  assert.ok(scalar["text/html"].includes("2.5"));
  const nd = await bundle(d.reshape(d.arange(0, 24), [2, 3, 4]));
  assert.ok(nd["text/html"].includes("showing [0, :, :]"));
});

Deno.test("display: a huge tensor is previewed from a corner slice without reading it all", async () => {
  const big = d.zeros([1100, 1000]);
  const b = await D.tensorDisplay(big, { as: "table" });
  assert.ok(b["text/html"].includes("preview of a corner"));
  assert.ok(b["text/html"].includes("<table"));
});

Deno.test("display: heat maps use the viridis colour map end to end", async () => {
  const t = d.reshape(d.arange(0, 64), [8, 8]);
  const b = await bundle(await D.heatmap(t));
  const im = png(b);
  assert.equal(im.channels, 3);
  assert.deepEqual([...im.data.slice(0, 3)], [68, 1, 84], "min is viridis' dark purple");
  const n = im.data.length;
  assert.deepEqual([...im.data.slice(n - 3)], [253, 231, 37], "max is viridis' yellow");
  assert.ok(b["text/html"].includes("linear-gradient"), "html carries a colour bar");
  const viaView = png(await bundle(D.view(t, { as: "heatmap" })));
  assert.deepEqual([...viaView.data], [...im.data]);
  // A [K,H,W] stack is drawn side by side; nested arrays work too.
  const stack = png(await bundle(await D.heatmap([[[0, 1], [1, 0]], [[1, 1], [0, 0]]], { scale: 4 })));
  assert.equal(stack.width, 2 * 8 + 3 * 2);
  await assert.rejects(() => bundle(D.view(d.arange(0, 5), { as: "heatmap" })), d.ShapeError);
});

Deno.test("display: bool masks are images and disposed tensors say so", async () => {
  const m = d.greater(d.reshape(d.arange(0, 64), [8, 8]), 31.5);
  const b = await bundle(m);
  assert.ok(b["text/html"].includes("32 of 64 true"));
  const im = png(b);
  assert.equal(im.data[0], 0);
  assert.equal(im.data[im.data.length - 1], 255);
  const t = d.ones([3]);
  t.dispose();
  assert.match((await bundle(t))["text/plain"], /disposed/);
});

Deno.test("display: imageGrid lays out tensors of different sizes in one PNG", async () => {
  const small = d.full([1, 8, 8], 1), large = d.full([1, 16, 16], -1);
  const b = await bundle(await D.imageGrid([small, large], 1, { scale: 2, gap: 0 }));
  const im = png(b);
  assert.equal(im.width, 64);
  assert.equal(im.height, 32);
  assert.equal(im.data[0], 255, "the 8×8 image is upscaled to fill its 16×16 cell");
  assert.equal(im.data[31], 255);
  assert.equal(im.data[32], 0);
  await assert.rejects(() => D.imageGrid(d.zeros([2, 2, 8, 8])), d.ShapeError);
});

Deno.test("display: showParams totals equal the models' parameter counts", async () => {
  for (const name of ["DiT-T/2", "U-DiT-T", "DiMR-T"]) {
    const { def, config } = d.models.findModel(name);
    const shapes = def.paramShapes(config);
    const s = D.paramSummary(shapes);
    assert.equal(s.total, d.models.paramCount(def, config), name);
    assert.equal(s.tensors, Object.keys(shapes).length);
    assert.ok(s.rows.length < s.tensors, `${name}: repeated blocks fold into fewer rows`);
    assert.equal(D.paramSummary(shapes, { fold: false }).rows.length, s.tensors);
    const html = (await bundle(D.showParams(shapes)))["text/html"];
    assert.ok(html.includes(D.fmtInt(s.total)), `${name}: total in the table`);
  }
  const p = d.nn.mlp.init(d.randomKey(0), { inFeatures: 3, hiddenFeatures: 5, outFeatures: 2 });
  const s = D.paramSummary(p);
  assert.equal(s.total, 3 * 5 + 5 + 5 * 2 + 2);
  assert.equal(s.bytes, 4 * s.total);
  assert.deepEqual(s.rows.map((r) => r.name), ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]);
  const blocks = { blocks: [0, 1, 2].map(() => ({ w: d.zeros([4, 4]) })) };
  const folded = D.paramSummary(blocks);
  assert.deepEqual(folded.rows.map((r) => [r.name, r.tensors, r.count]), [["blocks.{0..2}.w", 3, 48]]);
  assert.throws(() => D.showParams({}), d.DifflabError);
});

Deno.test("display: lossCurve is well-formed SVG with one point per loss value", async () => {
  const short = Array.from({ length: 10 }, (_, i) => 1 / (i + 1));
  const svg = (await bundle(D.lossCurve(short)))["image/svg+xml"];
  assertWellFormedXml(svg);
  assert.deepEqual(polylinePoints(svg), [10], "no smoothing below 30 points");
  const long = Array.from({ length: 200 }, (_, i) => 2 * Math.exp(-i / 40) + 0.05);
  const svgLong = D.lossCurveSvg(long);
  assertWellFormedXml(svgLong);
  assert.deepEqual(polylinePoints(svgLong), [200, 200], "raw and smoothed series");
  // Log records use their step as x; non-finite losses are left out.
  const recs = [{ step: 10, loss: 1 }, { step: 20, loss: NaN }, { step: 30, loss: 0.5 }, { step: 40, loss: 0.25 }];
  const svgRec = D.lossCurveSvg(recs, { title: "a <title> & more" });
  assertWellFormedXml(svgRec);
  assert.deepEqual(polylinePoints(svgRec), [3]);
  assert.ok(svgRec.includes("a &lt;title&gt; &amp; more"));
  const multi = D.lossCurveSvg({ a: [1, 2, 3], b: [3, 2, 1, 0.5] });
  assert.deepEqual(polylinePoints(multi), [3, 4]);
  assert.throws(() => D.lossCurve([]), d.DifflabError);
});

Deno.test("display: line and bar charts are well-formed and complete", () => {
  const svg = D.lineChartSvg(
    [{ name: "x²", x: [1, 2, 3, 4], y: [1, 4, 9, 16] }, {
      name: "2ˣ",
      x: [1, 2, 3, 4],
      y: [2, 4, 8, 16],
      dashed: true,
    }],
    { logY: true, logX: true, title: "growth", xLabel: "x", yLabel: "y" },
  );
  assertWellFormedXml(svg);
  assert.deepEqual(polylinePoints(svg), [4, 4]);
  const bars = D.barChartSvg(["a", "b", "c"], [{ name: "p", values: [1, 2, 3] }, { name: "q", values: [0.5, -1, 2] }]);
  assertWellFormedXml(bars);
  assert.equal(bars.match(/<rect class="bar"/g)!.length, 6);
  assert.throws(() => D.barChartSvg(["a"], [{ name: "p", values: [1, 2] }]), d.DifflabError);
  assert.deepEqual(D.niceTicks(0, 1, 5), [0, 0.2, 0.4, 0.6, 0.8, 1]);
});

Deno.test("display: table() formats numbers and escapes text", async () => {
  const b = await bundle(D.table([{ model: "<b>DiT</b>", params: 675129632, gflops: 118.6213 }], { caption: "zoo" }));
  assert.ok(b["text/html"].includes("&lt;b&gt;DiT&lt;/b&gt;"));
  assert.ok(b["text/html"].includes("675,129,632"));
  assert.ok(b["text/html"].includes("118.6"));
  assert.ok(b["text/plain"].includes("zoo"));
  assert.equal(D.inJupyter(), false);
});

Deno.test("display: showParams folds only repeated blocks and summarises by module depth", () => {
  const { def, config } = d.models.findModel("U-DiT-T");
  const shapes = def.paramShapes(config);
  const s = D.paramSummary(shapes);
  // `mlp.0` and `mlp.2` of an embedder are different layers, not repeated blocks.
  assert.ok(
    s.rows.some((r) => r.name === "t_embedder_1.mlp.0.bias") &&
      s.rows.some((r) => r.name === "t_embedder_1.mlp.2.bias"),
  );
  const latent = s.rows.find((r) => r.name.startsWith("latent.{0..1}.attn1.to_qkv.weight"));
  assert.ok(latent && latent.tensors === 2, "the latent level's two blocks fold");
  const mods = D.paramSummary(shapes, { depth: 1 });
  assert.equal(mods.total, s.total);
  assert.ok(mods.rows.some((r) => r.name === "encoder_level_1" && r.shape.length === 0));
  assert.equal(new Set(mods.rows.map((r) => r.name)).size, mods.rows.length, "one row per module");
  assert.throws(() => D.paramSummary(shapes, { depth: 0 }), d.DifflabError);
});

Deno.test("display: perImage maps each image of a grid to its own range", async () => {
  const a = d.reshape(d.arange(0, 64), [1, 8, 8]), b = d.mul(a, 100);
  const im = png(await bundle(await D.imageGrid([a, b], 1, { perImage: true, scale: 1, gap: 0 })));
  const row = (y: number) => [...im.data.slice(y * im.width, (y + 1) * im.width)];
  assert.deepEqual(row(7).slice(0, 8), row(7).slice(8, 16), "both images use their full black..white scale");
  assert.equal(im.data[7 * 16 + 7], 255);
  const shared = png(await bundle(await D.imageGrid([a, b], 1, { scale: 1, gap: 0 })));
  assert.equal(
    shared.data[7 * 16 + 7],
    Math.round((63 / 6300) * 255),
    "a shared range leaves the small image nearly black",
  );
});
