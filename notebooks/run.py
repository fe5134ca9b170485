#!/usr/bin/python3
"""Executes Jupyter notebooks headlessly with the Deno kernel and checks their rich outputs.

Why not nbclient/nbconvert: the Deno kernel sometimes publishes `status: idle` before a
cell's outputs, and nbclient stops collecting at idle, so outputs get lost at random. This
runner files every iopub message under the cell whose execute request is its
`parent_header.msg_id` (late outputs still land in the right cell), waits for a short silence
after each cell's idle, and drains iopub once more after the last cell.

Checks (the run fails, exit 1, on any of them):
  - a cell raises (error output or error reply), or exceeds its timeout;
  - a cell's `metadata.difflab.expect` lists MIME types its outputs lack;
  - the notebook's `metadata.difflab.expect` maps MIME types to minimum output counts that
    are not met;
  - a text stream exceeds `metadata.difflab.max_stream_lines` lines in one cell (default 40),
    because the notebooks are meant to show pictures and tables, not walls of numbers.

Executed notebooks go to --out (default: notebooks/executed/, git-ignored) or over the
sources with --inplace; --extract DIR also writes every image/png and image/svg+xml output
to DIR for viewing. Use /usr/bin/python3 (Debian's jupyter_client), not a pyenv python.
"""

import argparse
import base64
import json
import os
import queue
import sys
import time

try:
    from jupyter_client.kernelspec import NoSuchKernel
    from jupyter_client.manager import KernelManager
except ImportError:  # pragma: no cover - environment problem, reported clearly
    sys.stderr.write(
        "error: jupyter_client is not importable by %s.\n"
        "Install it with: apt-get install -y --no-install-recommends python3-nbclient jupyter-client\n"
        "and run this script with /usr/bin/python3.\n" % sys.executable
    )
    sys.exit(2)

RICH = ("image/png", "image/svg+xml", "text/html", "text/markdown")


def log(msg):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def as_text(src):
    return "".join(src) if isinstance(src, list) else src


def to_lines(text):
    """nbformat's multiline-string layout: a list of lines that keep their newlines."""
    lines = text.splitlines(keepends=True)
    return lines if lines else [""]


class CellRun:
    """Outputs and state of one executed cell."""

    def __init__(self, index):
        self.index = index
        self.outputs = []
        self.execution_count = None
        self.reply = None
        self.idle = False
        self.error = None
        self.display_ids = {}

    def add(self, msg):
        kind = msg["msg_type"]
        c = msg["content"]
        if kind == "stream":
            last = self.outputs[-1] if self.outputs else None
            if last is not None and last["output_type"] == "stream" and last["name"] == c["name"]:
                last["text"] += c["text"]
            else:
                self.outputs.append({"output_type": "stream", "name": c["name"], "text": c["text"]})
        elif kind in ("display_data", "execute_result"):
            out = {"output_type": kind, "data": c.get("data", {}), "metadata": c.get("metadata", {})}
            if kind == "execute_result":
                out["execution_count"] = c.get("execution_count")
            did = (c.get("transient") or {}).get("display_id")
            if did:
                self.display_ids[did] = out
            self.outputs.append(out)
        elif kind == "update_display_data":
            did = (c.get("transient") or {}).get("display_id")
            if did in self.display_ids:
                self.display_ids[did]["data"] = c.get("data", {})
        elif kind == "clear_output":
            self.outputs = []
        elif kind == "error":
            self.error = "%s: %s" % (c.get("ename"), c.get("evalue"))
            self.outputs.append(
                {
                    "output_type": "error",
                    "ename": c.get("ename", ""),
                    "evalue": c.get("evalue", ""),
                    "traceback": c.get("traceback", []),
                }
            )
        elif kind == "execute_input":
            self.execution_count = c.get("execution_count")
        elif kind == "status" and c.get("execution_state") == "idle":
            self.idle = True


def nb_outputs(outputs):
    """Runner outputs in nbformat's on-disk layout (multiline strings as line lists)."""
    res = []
    for o in outputs:
        o = dict(o)
        if o["output_type"] == "stream":
            o["text"] = to_lines(o["text"])
        elif "data" in o:
            o["data"] = {
                k: (to_lines(v) if isinstance(v, str) and not k.startswith("image/png") else v)
                for k, v in o["data"].items()
            }
        res.append(o)
    return res


def run_notebook(path, args):
    """Executes one notebook; returns (notebook dict, cell runs, error message or None, seconds)."""
    with open(path, encoding="utf-8") as f:
        nb = json.load(f)
    meta = nb.get("metadata", {})
    kernel = args.kernel or meta.get("kernelspec", {}).get("name", "deno")
    cfg = meta.get("difflab", {})
    timeout = float(cfg.get("timeout", args.timeout))
    km = KernelManager(kernel_name=kernel)
    t0 = time.time()
    try:
        km.start_kernel(cwd=os.path.dirname(os.path.abspath(path)))
    except NoSuchKernel:
        return nb, {}, (
            "no Jupyter kernel named %r; install the Deno kernel with `deno jupyter --install --force`" % kernel
        ), 0.0
    kc = km.client()
    kc.start_channels()
    runs = {}
    by_msg = {}
    failure = None
    try:
        kc.wait_for_ready(timeout=120)

        def pump(wait):
            """Files one iopub message if one arrives within `wait` seconds; True if it did."""
            try:
                msg = kc.get_iopub_msg(timeout=wait)
            except queue.Empty:
                return False
            run = by_msg.get(msg.get("parent_header", {}).get("msg_id"))
            if run is not None:
                run.add(msg)
            return True

        for i, cell in enumerate(nb.get("cells", [])):
            if cell.get("cell_type") != "code":
                continue
            src = as_text(cell.get("source", ""))
            run = CellRun(i)
            runs[i] = run
            if not src.strip():
                continue
            t_cell = time.time()
            msg_id = kc.execute(src, store_history=True, allow_stdin=False, stop_on_error=True)
            by_msg[msg_id] = run
            last_msg = time.time()
            while True:
                if pump(0.05):
                    last_msg = time.time()
                if run.reply is None:
                    try:
                        reply = kc.get_shell_msg(timeout=0)
                        if reply.get("parent_header", {}).get("msg_id") == msg_id:
                            run.reply = reply["content"]
                            if run.execution_count is None:
                                run.execution_count = run.reply.get("execution_count")
                    except queue.Empty:
                        pass
                now = time.time()
                if run.reply is not None and run.idle and now - last_msg >= args.silence:
                    break
                if run.reply is None and now - last_msg > 2 and not km.is_alive():
                    run.error = "the kernel exited or crashed (e.g. Deno.exit, out of memory)"
                    break
                if now - t_cell > timeout:
                    km.interrupt_kernel()
                    run.error = run.error or "timed out after %.0f s" % timeout
                    break
            run.seconds = time.time() - t_cell
            if run.reply is not None and run.reply.get("status") == "error" and run.error is None:
                c = run.reply
                run.error = "%s: %s" % (c.get("ename"), c.get("evalue"))
            if not args.quiet:
                log("  cell %d: %.1f s%s" % (i, run.seconds, " ERROR " + run.error if run.error else ""))
            if run.error:
                failure = "cell %d: %s" % (i, run.error)
                break
        # Late messages of any cell still land where they belong.
        end = time.time() + args.drain
        while time.time() < end:
            pump(0.05)
    finally:
        kc.stop_channels()
        try:
            km.shutdown_kernel(now=False)
        except Exception:  # a wedged kernel must not hide the notebook's result
            km.shutdown_kernel(now=True)
    return nb, runs, failure, time.time() - t0


def check(nb, runs):
    """The notebook's declared expectations; returns a list of problems."""
    problems = []
    meta = nb.get("metadata", {}).get("difflab", {})
    max_lines = int(meta.get("max_stream_lines", 40))
    counts = {}
    for i, run in runs.items():
        cell = nb["cells"][i]
        mimes = set()
        for o in run.outputs:
            for k in o.get("data", {}):
                mimes.add(k)
                counts[k] = counts.get(k, 0) + 1
            if o["output_type"] == "stream":
                n = o["text"].count("\n")
                if n > max_lines:
                    problems.append("cell %d prints %d lines of text (max %d)" % (i, n, max_lines))
        want = cell.get("metadata", {}).get("difflab", {}).get("expect", [])
        missing = [m for m in want if m not in mimes]
        if missing:
            problems.append("cell %d lacks %s (has %s)" % (i, ", ".join(missing), ", ".join(sorted(mimes)) or "nothing"))
    for mime, n in meta.get("expect", {}).items():
        if counts.get(mime, 0) < n:
            problems.append("expected at least %d %s outputs, found %d" % (n, mime, counts.get(mime, 0)))
    return problems, counts


def extract(nb_name, runs, folder):
    os.makedirs(folder, exist_ok=True)
    written = 0
    for i, run in runs.items():
        for j, o in enumerate(run.outputs):
            data = o.get("data", {})
            stem = os.path.join(folder, "%s-cell%02d-%d" % (nb_name, i, j))
            if "image/png" in data:
                with open(stem + ".png", "wb") as f:
                    f.write(base64.b64decode(data["image/png"]))
                written += 1
            if "image/svg+xml" in data:
                with open(stem + ".svg", "w", encoding="utf-8") as f:
                    f.write(as_text(data["image/svg+xml"]))
                written += 1
            if "text/html" in data:
                with open(stem + ".html", "w", encoding="utf-8") as f:
                    f.write(as_text(data["text/html"]))
    return written


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("notebooks", nargs="+", help=".ipynb files to execute, in order")
    p.add_argument("--out", default=None, help="folder for executed notebooks (default: executed/ next to each)")
    p.add_argument("--inplace", action="store_true", help="write outputs over the source notebooks")
    p.add_argument("--kernel", default=None, help="kernel name (default: the notebook's kernelspec, else deno)")
    p.add_argument("--timeout", type=float, default=900, help="per-cell timeout in seconds (metadata may override)")
    p.add_argument("--silence", type=float, default=0.2, help="quiet seconds after a cell's idle before moving on")
    p.add_argument("--drain", type=float, default=1.0, help="seconds to keep collecting after the last cell")
    p.add_argument("--extract", default=None, help="also write every PNG/SVG/HTML output into this folder")
    p.add_argument("--quiet", action="store_true", help="no per-cell timings")
    args = p.parse_args()

    failed = 0
    summary = []
    for path in args.notebooks:
        name = os.path.splitext(os.path.basename(path))[0]
        log("== notebook %s" % path)
        nb, runs, failure, secs = run_notebook(path, args)
        for i, run in runs.items():
            cell = nb["cells"][i]
            cell["outputs"] = nb_outputs(run.outputs)
            cell["execution_count"] = run.execution_count
            if hasattr(run, "seconds"):
                cell.setdefault("metadata", {}).setdefault("difflab", {})["seconds"] = round(run.seconds, 2)
        problems, counts = check(nb, runs) if failure is None else ([], {})
        if failure is not None:
            problems = [failure]
        nb.setdefault("metadata", {}).setdefault("difflab", {})["seconds"] = round(secs, 1)
        if args.inplace:
            dest = path
        else:
            folder = args.out or os.path.join(os.path.dirname(os.path.abspath(path)), "executed")
            os.makedirs(folder, exist_ok=True)
            dest = os.path.join(folder, os.path.basename(path))
        tmp = dest + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(nb, f, indent=1, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, dest)
        if args.extract:
            extract(name, runs, args.extract)
        rich = ", ".join("%s x%d" % (k, counts[k]) for k in RICH if k in counts)
        if problems:
            failed += 1
            for pr in problems:
                log("  FAILED: %s" % pr)
            summary.append("%s: FAILED (%.1f s) - %s" % (name, secs, problems[0]))
        else:
            summary.append("%s: ok (%.1f s; %s)" % (name, secs, rich or "no rich outputs"))
        log("  wrote %s" % dest)
    for line in summary:
        print(line)
    print("notebooks: %d passed, %d failed" % (len(args.notebooks) - failed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
