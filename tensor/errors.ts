/**
 * @file Library errors. Every validation failure throws a subclass of
 * {@link DifflabError} whose message names the op, the argument and the
 * offending shapes/dtypes/axes, so a user never has to decode a TypeError
 * from deep inside a kernel.
 */

/** Base class of every error the library throws on purpose. */
export class DifflabError extends Error {
  /** Build an error; `name` identifies the subclass in stack traces. */
  constructor(message: string) {
    super(message);
    this.name = "DifflabError";
  }
}

/** A shape mismatch, a bad axis or a bad size. */
export class ShapeError extends DifflabError {
  /** Build a shape error with a message naming the op and the shapes. */
  constructor(message: string) {
    super(message);
    this.name = "ShapeError";
  }
}

/** A dtype mismatch or a dtype an op does not support. */
export class DTypeError extends DifflabError {
  /** Build a dtype error with a message naming the op and the dtypes. */
  constructor(message: string) {
    super(message);
    this.name = "DTypeError";
  }
}

/** Formats a shape the way error messages print it: `[2,3,4]`. */
export function fmtShape(shape: readonly number[]): string {
  return `[${shape.join(",")}]`;
}

/**
 * Describes any value for an error message without ever throwing: `"a"`,
 * `Symbol(s)`, `[2,-1]`, `null`, `Tensor(f32[2,3] on cpu)`, `a function`.
 */
export function describe(v: unknown, depth = 0): string {
  switch (typeof v) {
    case "string":
      return JSON.stringify(v.length > 40 ? v.slice(0, 40) + "…" : v);
    case "number":
    case "boolean":
    case "undefined":
      return String(v);
    case "bigint":
      return `${v}n`;
    case "symbol":
      return v.toString();
    case "function":
      return "a function";
  }
  if (v === null) return "null";
  try {
    if (Array.isArray(v)) {
      if (depth > 1 || v.length > 8) return `an array of length ${v.length}`;
      return `[${Array.from(v, (x) => describe(x, depth + 1)).join(",")}]`;
    }
    const proto = Object.getPrototypeOf(v);
    if (ArrayBuffer.isView(v)) {
      return `a ${proto?.constructor?.name ?? "typed array"} of length ${(v as Uint8Array).length}`;
    }
    if (proto === Object.prototype || proto === null) {
      const keys = Object.keys(v as object);
      if (depth > 1 || keys.length > 4) return "an object";
      return `{${keys.map((k) => `${k}: ${describe((v as Record<string, unknown>)[k], depth + 1)}`).join(", ")}}`;
    }
    // Class instances with their own toString (Tensor, Key) describe themselves.
    const own = (v as { toString?: unknown }).toString;
    if (typeof own === "function" && own !== Object.prototype.toString) {
      const s = String(v);
      return s.length > 60 ? s.slice(0, 60) + "…" : s;
    }
    return `a ${proto?.constructor?.name ?? "object"}`;
  } catch {
    return "an unprintable value";
  }
}
