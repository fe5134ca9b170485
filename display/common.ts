/**
 * @file What every display helper shares: the Jupyter display protocol
 * (`Symbol.for("Jupyter.display")` returning a MIME bundle), HTML escaping,
 * compact number formatting and base64 for embedded images.
 */

/** The symbol the Deno Jupyter kernel (and `Deno.jupyter.display`) looks up on a value. */
export const DISPLAY: symbol = Symbol.for("Jupyter.display");

/** A Jupyter MIME bundle: MIME type → payload (base64 for image/png, markup or text otherwise). */
export type MimeBundle = Record<string, string>;

/** A value the Deno kernel renders richly; the method may be async (the kernel awaits it). */
export interface Displayable {
  /** Returns the MIME bundle to show. */
  [DISPLAY](): MimeBundle | Promise<MimeBundle>;
}

/** Wraps a ready MIME bundle as a displayable value. */
export function displayable(bundle: MimeBundle): Displayable {
  return { [DISPLAY]: () => bundle } as Displayable;
}

/** True when `x` implements the Jupyter display protocol. */
export function isDisplayable(x: unknown): x is Displayable {
  return x !== null && (typeof x === "object" || typeof x === "function") &&
    typeof (x as Record<symbol, unknown>)[DISPLAY] === "function";
}

/** The MIME bundle of a displayable value (what the kernel would show). */
export async function bundleOf(x: Displayable): Promise<MimeBundle> {
  return await x[DISPLAY]();
}

/** Escapes text for HTML and XML content and attribute values. */
export function escapeHtml(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;").replace(
    /'/g,
    "&#39;",
  );
}

/** Short human form of a number: integers as is, 4 significant digits, exponent form when tiny or huge. */
export function fmtNum(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (!Number.isFinite(v)) return v > 0 ? "inf" : "-inf";
  const a = Math.abs(v);
  if (Number.isInteger(v) && a < 1e6) return String(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
  return String(Number(v.toPrecision(4)));
}

/** An integer with thousands separators (1,899,272). */
export function fmtInt(n: number): string {
  return Math.round(n).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

/** A count in the papers' style: 675.13M, 1.06B, 77.5K. */
export function fmtCount(n: number): string {
  const a = Math.abs(n);
  if (a >= 1e9) return `${(n / 1e9).toFixed(2)}B`;
  if (a >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (a >= 1e3) return `${(n / 1e3).toFixed(1)}K`;
  return String(n);
}

/** `[2,3]` for a shape. */
export function fmtShape(shape: readonly number[]): string {
  return `[${shape.join(",")}]`;
}

/** Standard base64 of bytes (chunked so large images do not overflow the argument list). */
export function base64(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}
