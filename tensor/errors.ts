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
