"""``python -m fastallreduce bench all``: every benchmark, then one Markdown report (results/report.md)
with the machine, the allreduce tables at several world sizes and the DDP and SGD step benchmarks."""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from typing import Any, Sequence

from . import allreduce_bw, machine
from .allreduce_report import human_size

#: The step benchmarks `bench all` runs, each in its own process: name -> (module, its arguments;
#: {out} is the output directory).
STEP_BENCHMARKS = {"ddp": ("fastallreduce.bench.ddp_step", ["--json", "{out}/ddp_step.json"]),
                   "sgd": ("fastallreduce.bench.sgd_step", [])}


def _bench_all_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastallreduce bench all",
                                description="Runs every available benchmark and writes a Markdown report.")
    p.add_argument("--out", default="results", help="output directory (default results/)")
    p.add_argument("--nranks", default="2,4,8", help="world sizes of the allreduce benchmark (default 2,4,8)")
    p.add_argument("--allreduce-args", default="",
                   help="extra arguments for the allreduce benchmark, e.g. \"-e 256M -i 20\"")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds each other benchmark may take")
    p.add_argument("--skip", default="", help=f"comma-separated benchmarks to leave out: {', '.join(STEP_BENCHMARKS)}")
    return p


def main(argv: Sequence[str]) -> int:
    """Runs allreduce_bw at several world sizes and every step benchmark; writes report.md."""
    import shlex

    args = _bench_all_parser().parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    info = machine.describe(probe_cuda_arch=True)
    sections: list[str] = []
    rc = 0

    # 1. allreduce bandwidth (in this process, tables captured for the report).
    ar_argv = ["-n", args.nranks, "--out", args.out, *shlex.split(args.allreduce_args)]
    ar_args = allreduce_bw.build_parser().parse_args(ar_argv)
    buf = io.StringIO()

    def log(line: str = "") -> None:
        print(line)
        buf.write(line + "\n")

    t = time.perf_counter()
    doc = allreduce_bw.run(ar_args, log=log)
    rc |= int(allreduce_bw.total_wrong(doc) != 0)
    cmd = "python -m fastallreduce bench allreduce " + " ".join(shlex.quote(a) for a in ar_argv)
    sections.append(
        f"## Allreduce bandwidth ({time.perf_counter() - t:.0f} s)\n\n`{cmd}`\n\n"
        + _allreduce_summary_md(doc)
        + "\n\nFull tables:\n\n```\n" + buf.getvalue().rstrip() + "\n```\n\n"
        + f"![busbw against size]({os.path.basename(doc.get('png_path', 'allreduce_bw.png'))})\n")

    # 2. the step benchmarks, each in its own process (its own rank pools).
    skip = {x.strip() for x in args.skip.split(",") if x.strip()}
    for name, (mod, bench_args) in STEP_BENCHMARKS.items():
        if name in skip:
            sections.append(f"## {name} step benchmark\n\nleft out (--skip {name}).\n")
            continue
        # Its own process (its own rank pools); the module's main(argv) is the contract.
        extra = [a.format(out=args.out) for a in bench_args]
        cmd = [sys.executable, "-m", "fastallreduce", "bench", name, *extra]
        print(f"# bench {name}: {' '.join(cmd[1:])}")
        t = time.perf_counter()
        try:
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, timeout=args.timeout)
            out, code = p.stdout, str(p.returncode)
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            code = f"timed out after {args.timeout:.0f} s"
        print(out)
        if code != "0":
            rc |= 1
        sections.append(f"## {name} step benchmark ({time.perf_counter() - t:.0f} s, exit {code})\n\n"
                        f"`{' '.join(cmd[1:])}` (`{mod}`)\n\n```\n{out.rstrip()}\n```\n")

    report = os.path.join(args.out, "report.md")
    with open(report, "w") as f:
        f.write("# fastallreduce benchmark report\n\n## Machine\n\n" + machine.describe_markdown(info) + "\n")
        f.write(f"- Memory copy bandwidth (1 process, 1 thread): {doc['copy_bandwidth']['GBps']:.2f} GB/s\n\n")
        f.write("\n".join(sections))
        f.write(f"\nTotal: {time.perf_counter() - t0:.0f} s.\n")
    with open(os.path.join(args.out, "machine.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(f"# wrote {report}")
    return rc


def _allreduce_summary_md(doc: dict[str, Any]) -> str:
    """A compact Markdown table: in-place time per size, ours vs gloo, every world size."""
    parts = []
    for run_ in doc["runs"]:
        res = run_["results"]
        names = list(res)
        if not names:
            continue
        head = "| size | " + " | ".join(f"{n} µs" for n in names) + " | " + " | ".join(
            f"gloo/{n}" for n in names if n != "gloo" and "gloo" in res) + " | #wrong |"
        cols = head.count("|") - 1
        lines = [f"**{run_['nranks']} ranks**, in-place, median of slowest rank"
                 + ("; skipped: " + "; ".join(f"{k} ({v})" for k, v in run_["skipped"].items())
                    if run_["skipped"] else ""), "", head, "|" + "---|" * cols]
        for i, row in enumerate(res[names[0]]):
            cells = [human_size(row["size"])]
            cells += [f"{res[n][i]['ip']['time_us']:.1f}" for n in names]
            if "gloo" in res:
                cells += [f"{res['gloo'][i]['ip']['time_us'] / res[n][i]['ip']['time_us']:.2f}x"
                          for n in names if n != "gloo"]
            cells.append(str(sum(res[n][i][m]["wrong"] for n in names for m in ("oop", "ip"))))
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)
