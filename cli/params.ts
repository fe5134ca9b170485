/**
 * @file `deno task params`: one JSON line per named config with its exact
 * parameter count (from shapes, nothing allocated) and GFLOPs (MACs per
 * forward at batch 1, as the papers count them).
 */
import { paramCount } from "../models/common.ts";
import { allModels } from "../models/registry.ts";

for (const { name, def, config } of allModels()) {
  const gflops = Math.round(def.flops(config) / 1e6) / 1e3;
  console.log(JSON.stringify({ model: name, family: def.family, params: paramCount(def, config), gflops }));
}
