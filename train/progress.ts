/**
 * @file Progress reporting: a redrawn bar on a terminal, plain periodic
 * lines otherwise (CI logs, pipes), both on stderr.
 */

/** What one progress update shows. */
export interface ProgressInfo {
  step: number;
  total: number;
  /** Training loss (omitted for sampling). */
  loss?: number;
  imagesPerSec: number;
}

/** A progress reporter; `done` ends the bar line. */
export interface Progress {
  update(p: ProgressInfo): void;
  done(): void;
}

function fmtTime(s: number): string {
  if (!Number.isFinite(s)) return "--:--";
  const m = Math.floor(s / 60), r = Math.floor(s % 60);
  return m >= 60 ? `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m` : `${m}:${String(r).padStart(2, "0")}`;
}

/** Creates a reporter for the current stderr: a bar on a TTY, a line every `every` steps otherwise. */
export function createProgress(opts: { every?: number; quiet?: boolean; label?: string } = {}): Progress {
  const enc = new TextEncoder();
  const tty = !opts.quiet && Deno.stderr.isTerminal();
  const start = performance.now();
  let lastLine = 0;
  const text = (p: ProgressInfo) => {
    const el = (performance.now() - start) / 1000;
    const eta = p.step > 0 ? (el / p.step) * (p.total - p.step) : NaN;
    const loss = p.loss === undefined ? "" : ` loss ${p.loss.toFixed(4)}`;
    return `${opts.label ?? "train"} step ${p.step}/${p.total}${loss} ${p.imagesPerSec.toFixed(1)} img/s ` +
      `elapsed ${fmtTime(el)} eta ${fmtTime(eta)}`;
  };
  return {
    update(p) {
      if (opts.quiet) return;
      if (tty) {
        const cols = (() => {
          try {
            return Deno.consoleSize().columns;
          } catch {
            return 80;
          }
        })();
        const t = text(p);
        const width = Math.max(10, cols - t.length - 4);
        const fill = Math.round((p.step / p.total) * width);
        const line = `[${"#".repeat(fill)}${".".repeat(width - fill)}] ${t}`.slice(0, cols - 1);
        Deno.stderr.writeSync(enc.encode(`\r\x1b[2K${line}`));
      } else if (p.step === p.total || p.step - lastLine >= (opts.every ?? 10) || p.step === 1) {
        lastLine = p.step;
        Deno.stderr.writeSync(enc.encode(text(p) + "\n"));
      }
    },
    done() {
      if (tty) Deno.stderr.writeSync(enc.encode("\n"));
    },
  };
}
