/**
 * @file The paper models as plain functions over parameter records whose
 * names are the official state_dict names, plus the registry of every named
 * config and the golden-file checkers.
 * @module
 */
/** DiT (Peebles & Xie): ViT over latent patches with adaLN-Zero timestep + class conditioning. */
export * as dit from "./dit.ts";
/** DyDiT: DiT with timestep-wise dynamic width and spatial-wise dynamic token routers. */
export * as dydit from "./dydit.ts";
/** U-DiT: U-shaped transformer with downsampled-token attention, RoPE-2D and re-parameterisable FFN. */
export * as udit from "./udit.ts";
/** DiCo: three-level conv U-Net with adaLN-modulated blocks and Compact Channel Attention. */
export * as dico from "./dico.ts";
/** DiMR: multi-resolution branches with time-dependent layer norm (TD-LN). */
export * as dimr from "./dimr.ts";
/** Channel-activation statistics behind DiCo's Compact Channel Attention (channel redundancy). */
export * as analysis from "./analysis.ts";
export { type ApplyOptions, fromStateDict, type ModelDef, paramCount, toStateDict } from "./common.ts";
export { allModels, families, findModel, type NamedModel } from "./registry.ts";
export { checkModelGolden, type GoldenReport, relErr } from "./golden.ts";
export { familyGoldens } from "./goldens.ts";
