/**
 * @file The paper models as plain functions over parameter records whose
 * names are the official state_dict names, plus the registry of every named
 * config and the golden-file checkers.
 * @module
 */
export * as dit from "./dit.ts";
export * as dydit from "./dydit.ts";
export * as udit from "./udit.ts";
export * as dico from "./dico.ts";
export * as dimr from "./dimr.ts";
export * as analysis from "./analysis.ts";
export { type ApplyOptions, fromStateDict, type ModelDef, paramCount, toStateDict } from "./common.ts";
export { allModels, families, findModel, type NamedModel } from "./registry.ts";
export { checkModelGolden, type GoldenReport, relErr } from "./golden.ts";
export { familyGoldens } from "./goldens.ts";
