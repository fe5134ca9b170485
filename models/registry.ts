/**
 * @file One registry of every model family and named config, used by the
 * CLI (`train`, `params`, `golden`) and notebooks.
 */
import { DifflabError } from "../tensor/errors.ts";
import type { ModelDef } from "./common.ts";
import * as dit from "./dit.ts";
import * as dydit from "./dydit.ts";
import * as udit from "./udit.ts";
import * as dico from "./dico.ts";
import * as dimr from "./dimr.ts";

/** Every family, by name. */
export const families: Readonly<Record<string, ModelDef<unknown, unknown>>> = {
  DiT: dit.def as ModelDef<unknown, unknown>,
  DyDiT: dydit.def as ModelDef<unknown, unknown>,
  "U-DiT": udit.def as ModelDef<unknown, unknown>,
  DiCo: dico.def as ModelDef<unknown, unknown>,
  DiMR: dimr.def as ModelDef<unknown, unknown>,
};

/** Golden-file `model` metadata values mapped to families. */
const GOLDEN_NAMES: Record<string, string> = { dit: "DiT", dydit: "DyDiT", udit: "U-DiT", dico: "DiCo", dimr: "DiMR" };

/** A named config with its family. */
export interface NamedModel {
  name: string;
  def: ModelDef<unknown, unknown>;
  config: unknown;
}

/** Every named config of every family, in a stable order. */
export function allModels(): NamedModel[] {
  return Object.values(families).flatMap((def) =>
    Object.entries(def.configs).map(([name, config]) => ({ name, def, config }))
  );
}

/** Looks up a named config (e.g. "DiT-XL/2"); the error lists what exists. */
export function findModel(name: string): NamedModel {
  const m = allModels().find((m) => m.name === name);
  if (!m) {
    throw new DifflabError(`unknown model "${name}"; known: ${allModels().map((m) => m.name).join(", ")}`);
  }
  return m;
}

/** The family a golden file was made from (its `model` metadata). */
export function familyForGolden(model: string | undefined): ModelDef<unknown, unknown> {
  const fam = GOLDEN_NAMES[(model ?? "").toLowerCase()];
  const def = fam ? families[fam] : undefined;
  if (!def) throw new DifflabError(`golden: unsupported model "${model}" (known: ${Object.keys(families).join(", ")})`);
  return def;
}
