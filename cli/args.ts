/**
 * @file Tiny shared command-line helpers for the `cli/` and `bench/` scripts,
 * on `node:util` `parseArgs` (JSR's std is not reachable here). Bad usage
 * prints one `error: ...` line plus the usage and exits with code 2, never a
 * stack trace; `--help` prints the usage and exits 0.
 */
import { parseArgs } from "node:util";

/** Exit code of every usage error (the conventional "bad command line" code). */
export const USAGE_EXIT = 2;

/** Flags a command accepts: `string` flags take a value, `boolean` flags do not. */
export type FlagSpec = Record<string, { type: "string" | "boolean"; short?: string }>;

/** Typed access to parsed flags; every accessor fails with a usage error on a bad value. */
export interface CliArgs {
  /** Raw parsed values (strings for string flags, booleans for boolean flags). */
  readonly values: Readonly<Record<string, string | boolean | undefined>>;
  /** An integer flag, `dflt` when absent; it must be an integer >= `min`. */
  int(name: string, dflt: number, min?: number): number;
  /** A string flag, or `dflt` when absent. */
  str(name: string, dflt?: string): string | undefined;
  /** A finite number flag, `dflt` when absent; it must be >= `min`. */
  num(name: string, dflt: number, min?: number): number;
  /** A boolean flag (false when absent). */
  bool(name: string): boolean;
  /** A string flag restricted to `choices`, `dflt` when absent. */
  choice<T extends string>(name: string, choices: readonly T[], dflt: T): T;
  /** Reports a usage error for this command and exits with code 2. */
  fail(message: string): never;
}

/** Prints `error: message` and the usage to stderr, then exits with code 2. */
export function usageError(message: string, usage: string): never {
  console.error(`error: ${message}\n\n${usage.trimEnd()}`);
  Deno.exit(USAGE_EXIT);
}

/** Parses `argv` strictly against `spec` (plus `-h/--help`); no positional arguments are accepted. */
export function parseCli(usage: string, spec: FlagSpec, argv: readonly string[] = Deno.args): CliArgs {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: [...argv],
      options: { ...spec, help: { type: "boolean", short: "h" } },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    // node's messages are good but multi-line; the first line names the flag.
    const msg = e instanceof Error ? e.message.split("\n")[0] : String(e);
    usageError(msg, usage);
  }
  if (values.help) {
    console.log(usage.trimEnd());
    Deno.exit(0);
  }
  const fail = (message: string): never => usageError(message, usage);
  const str = (name: string, dflt?: string) => {
    const v = values[name];
    return typeof v === "string" ? v : dflt;
  };
  return {
    values,
    fail,
    str,
    bool: (name) => values[name] === true,
    int(name, dflt, min = -Infinity) {
      const v = str(name);
      if (v === undefined) return dflt;
      const n = Number(v);
      if (!/^-?\d+$/.test(v.trim()) || !Number.isSafeInteger(n)) fail(`--${name} must be an integer, got '${v}'`);
      if (n < min) fail(`--${name} must be at least ${min}, got ${n}`);
      return n;
    },
    num(name, dflt, min = -Infinity) {
      const v = str(name);
      if (v === undefined) return dflt;
      const n = Number(v);
      if (v.trim() === "" || !Number.isFinite(n)) fail(`--${name} must be a number, got '${v}'`);
      if (n < min) fail(`--${name} must be at least ${min}, got ${n}`);
      return n;
    },
    choice<T extends string>(name: string, choices: readonly T[], dflt: T): T {
      const v = str(name);
      if (v === undefined) return dflt;
      if (!(choices as readonly string[]).includes(v)) {
        fail(`--${name} must be one of ${choices.join("|")}, got '${v}'`);
      }
      return v as T;
    },
  };
}
