"""The main job's benchmark on two builds of fastallreduce, alternating, in one run.

    python benchmarks/compare_builds.py --old /path/to/old/checkout --new . [--rounds 3] -- [bench args]

Each round runs ``python -m fastallreduce bench allreduce <bench args>`` once with the old tree
first on PYTHONPATH and once with the new one (the order alternates between rounds, so that drift
in a shared machine's load hits both alike), then prints, per world size, implementation and
size, the median over rounds of each build's in-place time and new/old. Every checkout must have
its extension built in place (``python setup.py build_ext --inplace``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile


def _one(tree: str, out: str, bench_args: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    cmd = [sys.executable, "-m", "fastallreduce", "bench", "allreduce", "--no-plot", "--no-progress",
           "--out", out] + bench_args
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, cwd=os.path.abspath(tree))
    with open(os.path.join(out, "allreduce_bw.json")) as f:
        return json.load(f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True)
    ap.add_argument("--new", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("bench_args", nargs="*")
    a = ap.parse_args()
    times: dict = {}  # (world, impl, size, build) -> [in-place us]
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.rounds):
            for build in (("old", "new") if i % 2 == 0 else ("new", "old")):
                doc = _one(getattr(a, build), os.path.join(tmp, build), a.bench_args)
                for run in doc["runs"]:
                    for impl, rows in run["results"].items():
                        for row in rows:
                            if row["ip"]["wrong"]:
                                raise SystemExit(f"{build}: {impl} at {row['size']} bytes gave wrong results")
                            times.setdefault((run["nranks"], impl, row["size"], build), []).append(row["ip"]["time_us"])
                print(f"round {i + 1}/{a.rounds}: {build} done", file=sys.stderr, flush=True)
    print("| ranks | implementation | size | old us | new us | new/old |")
    print("|---|---|---|---|---|---|")
    for (world, impl, size, build) in sorted(k for k in times if k[3] == "old"):
        old = statistics.median(times[(world, impl, size, "old")])
        new_t = times.get((world, impl, size, "new"))
        if not new_t:
            continue
        new = statistics.median(new_t)
        print(f"| {world} | {impl} | {size} | {old:.1f} | {new:.1f} | {new / old:.2f} |")


if __name__ == "__main__":
    main()
