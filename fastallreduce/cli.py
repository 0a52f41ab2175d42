"""Command line: ``python -m fastallreduce`` (or the ``fastallreduce`` console script).

    fastallreduce bench allreduce [args]   allreduce bandwidth, nccl-tests format, vs torch.distributed gloo
                                           (under torchrun: on the launched ranks, e.g. --dist-backend fastallreduce)
    fastallreduce bench ddp [args]         DDP step benchmark (when fastallreduce.bench.ddp_step exists)
    fastallreduce bench sgd [args]         SGD step benchmark (when fastallreduce.bench.sgd_step exists)
    fastallreduce bench all [--out DIR]    every benchmark above + results/report.md with the machine
    fastallreduce info                     versions, build, topology of this host, algorithms
    fastallreduce demo [args]              large-minibatch SGD demo (Goyal et al.) in miniature
    fastallreduce check --gpu [--dry-run]  the prepared GPU check: build, GPU tests, fused-SGD table

Arguments after the sub-command go to that tool; ``--help`` on each shows its options.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import time
from typing import Any, Optional, Sequence

# Benchmarks provided by other modules of the package, found by import: name -> module. Each offers
# main(argv); `bench all` runs it in its own process with the arguments below ({out}: output directory).
OPTIONAL_BENCHMARKS = {"ddp": "fastallreduce.bench.ddp_step", "sgd": "fastallreduce.bench.sgd_step"}
BENCH_ALL_ARGS = {"ddp": ["--json", "{out}/ddp_step.json"], "sgd": []}


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------
# bench
# ---------------------------------------------------------------------------------------------
def bench_main(argv: Sequence[str]) -> int:
    """``bench <name> [args]``: runs one benchmark, or ``all``."""
    names = ["allreduce", *OPTIONAL_BENCHMARKS, "all"]
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m fastallreduce bench {" + ",".join(names) + "} [args]\n\n"
              "  allreduce  allreduce bandwidth (nccl-tests format) vs torch.distributed gloo\n"
              "  ddp        DDP step benchmark (fastallreduce.bench.ddp_step)\n"
              "  sgd        SGD step benchmark (fastallreduce.bench.sgd_step)\n"
              "  all        all of them (allreduce at 2, 4 and 8 ranks) and a Markdown report")
        return 0 if argv else 2
    name, rest = argv[0], list(argv[1:])
    if name == "allreduce":
        from .bench import allreduce_bw

        return allreduce_bw.main(rest)
    if name in OPTIONAL_BENCHMARKS:
        mod = OPTIONAL_BENCHMARKS[name]
        if not _module_exists(mod):
            print(f"{mod} is not part of this build yet", file=sys.stderr)
            return 2
        return _call_main(importlib.import_module(mod), rest)
    if name == "all":
        return bench_all(rest)
    print(f"unknown benchmark {name!r}; choose from {', '.join(names)}", file=sys.stderr)
    return 2


def _call_main(module: Any, argv: list[str]) -> int:
    main = getattr(module, "main", None)
    if main is None:
        print(f"{module.__name__} has no main()", file=sys.stderr)
        return 2
    rc = main(argv)
    # main() may return an exit status or its results (e.g. rows); only an int is a status.
    return rc if isinstance(rc, int) else 0


def _bench_all_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastallreduce bench all",
                                description="Runs every available benchmark and writes a Markdown report.")
    p.add_argument("--out", default="results", help="output directory (default results/)")
    p.add_argument("--nranks", default="2,4,8", help="world sizes of the allreduce benchmark (default 2,4,8)")
    p.add_argument("--allreduce-args", default="",
                   help="extra arguments for the allreduce benchmark, e.g. \"-e 256M -i 20\"")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds each other benchmark may take")
    p.add_argument("--skip", default="", help=f"comma-separated benchmarks to leave out: {', '.join(OPTIONAL_BENCHMARKS)}")
    return p


def bench_all(argv: Sequence[str]) -> int:
    """Runs allreduce_bw at several world sizes and every optional benchmark; writes report.md."""
    import shlex

    from .bench import allreduce_bw, machine

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

    # 2. benchmarks of the other parts, each in its own process, found by import.
    skip = {x.strip() for x in args.skip.split(",") if x.strip()}
    for name, mod in OPTIONAL_BENCHMARKS.items():
        if name in skip:
            sections.append(f"## {name} step benchmark\n\nleft out (--skip {name}).\n")
            continue
        if not _module_exists(mod):
            note = f"`{mod}` is not in this build yet: skipped."
            print(f"# bench {name}: {note}")
            sections.append(f"## {name} step benchmark\n\n{note}\n")
            continue
        # Its own process (its own rank pools); the module's main(argv) is the contract.
        extra = [a.format(out=args.out) for a in BENCH_ALL_ARGS.get(name, [])]
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
            cells = [_size(row["size"])]
            cells += [f"{res[n][i]['ip']['time_us']:.1f}" for n in names]
            if "gloo" in res:
                cells += [f"{res['gloo'][i]['ip']['time_us'] / res[n][i]['ip']['time_us']:.2f}x"
                          for n in names if n != "gloo"]
            cells.append(str(sum(res[n][i][m]["wrong"] for n in names for m in ("oop", "ip"))))
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _size(n: int) -> str:
    from .bench.allreduce_report import human_size

    return human_size(n)


# ---------------------------------------------------------------------------------------------
# info
# ---------------------------------------------------------------------------------------------
def _probe_algorithms(world: int, timeout: float) -> dict[str, Any]:
    """Starts ``world`` local ranks and tries each algorithm once (what this build can really run)."""
    from .bench import allreduce_harness
    from .launch import RankPool

    import fastallreduce as far

    algos = [a for a in far.ALGORITHMS]
    with RankPool(world, threads=1) as pool:
        status = pool.run(allreduce_harness._rank_setup, algos, "float32", "sum", timeout=timeout)
        topo = pool.run(_rank_topology, timeout=timeout)
        pool.run(allreduce_harness._rank_teardown, timeout=60)
    out: dict[str, Any] = {"world": world, "algorithms": {}, "topology": topo[0]}
    for a in algos:
        reasons = {s[a] for s in status}
        out["algorithms"][a] = "ok" if reasons == {None} else "; ".join(sorted(r for r in reasons if r))
    return out


def _rank_topology() -> dict[str, Any]:
    """What a Communicator learned about the ranks' hosts, and what ``auto`` picks per size."""
    from .bench import allreduce_harness

    c = allreduce_harness._state["comms"].get("auto")
    if c is None:
        return {}
    sizes = [4 << 10, 64 << 10, 1 << 20, 16 << 20, 256 << 20]
    return {"hosts": c.num_hosts, "host_of_rank": c.host_of_rank, "local_ranks": c.local_ranks,
            "auto_choice": {_size(s): c.choose(s) for s in sizes}, "config": c.config}


def info_main(argv: Sequence[str]) -> int:
    """``info``: versions, build, this host's topology and the algorithms this build can run."""
    p = argparse.ArgumentParser(prog="python -m fastallreduce info",
                                description="Versions, build, detected topology and available algorithms.")
    p.add_argument("--no-probe", action="store_true",
                   help="do not start 2 local ranks to try each algorithm (faster; lists names only)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = p.parse_args(argv)

    import torch

    import fastallreduce as far

    from .bench import machine

    info = machine.describe(probe_cuda_arch=True)
    info["torch_cuda_arch_list"] = torch.cuda.get_arch_list() if torch.version.cuda else []
    info["algorithms_known"] = list(far.ALGORITHMS)
    info["optional_modules"] = {m: _module_exists(m) for m in
                                ("fastallreduce.ddp", "fastallreduce.optim", *OPTIONAL_BENCHMARKS.values())}
    from .communicator import host_identity

    info["host_identity"] = host_identity()
    if not args.no_probe:
        try:
            info["probe"] = _probe_algorithms(2, timeout=120.0)
        except Exception as e:  # noqa: BLE001 - report, do not crash `info`
            info["probe"] = {"error": f"{type(e).__name__}: {e}"}
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    gib = (info["memory_bytes"] or 0) / 2**30
    print(f"fastallreduce {info['fastallreduce']} ({info['fastallreduce_path']}, commit {info['git_commit'] or 'n/a'})")
    print(f"torch {info['torch']} (CUDA {info['torch_cuda'] or 'none'}), Python {info['python']}")
    print(f"build: _C.with_cuda = {info['built_with_cuda']}; CUDA architectures in _C: "
          + (", ".join(info["cuda_arch_list"]) if info["cuda_arch_list"] else
             ("none (CPU build)" if not info["built_with_cuda"] else "unknown (cuobjdump not found)")))
    if info["torch_cuda_arch_list"]:
        print(f"       torch's CUDA architectures: {' '.join(info['torch_cuda_arch_list'])}")
    print(f"host: {info['hostname']} ({info['host_identity']})")
    print(f"      {info['cpu_model']}, {info['logical_cpus']} logical CPUs ({info['usable_cpus']} usable), "
          f"{gib:.1f} GiB, SIMD: {' '.join(info['cpu_flags']) or 'n/a'}")
    numa = info["numa_nodes"]
    print(f"      NUMA nodes: {len(numa) or 1}" + (" (" + "; ".join(f"node {n['node']}: cpus {n['cpus']}" for n in numa)
                                                   + ")" if numa else ""))
    if info["dev_shm"]:
        print(f"      /dev/shm: {info['dev_shm']['total_bytes'] / 2**30:.1f} GiB, "
              f"{info['dev_shm']['free_bytes'] / 2**30:.1f} GiB free")
    if info["gpus"]:
        for g in info["gpus"]:
            print(f"      GPU {g['index']}: {g['name']} sm_{g['capability'].replace('.', '')}, "
                  f"{g['memory_bytes'] / 2**30:.0f} GiB, peer access to {g['peer_access'] or 'none'}")
    else:
        print("      GPUs: none visible")
    probe = info.get("probe")
    if probe and "error" not in probe:
        topo = probe.get("topology") or {}
        if topo:
            print(f"topology seen by {probe['world']} local ranks: {topo['hosts']} host(s), "
                  f"host of each rank {topo['host_of_rank']}, local ranks {topo['local_ranks']}")
            print("auto picks: " + ", ".join(f"{k} -> {v}" for k, v in topo["auto_choice"].items()))
        print(f"algorithms (tried on {probe['world']} local ranks, float32 sum):")
        for a, st in probe["algorithms"].items():
            print(f"  {a:<18} {'available' if st == 'ok' else 'not available: ' + st}")
    elif probe:
        print(f"algorithms: {', '.join(info['algorithms_known'])} (probe failed: {probe['error']})")
    else:
        print(f"algorithms: {', '.join(info['algorithms_known'])} (not probed)")
    print("modules: " + ", ".join(f"{m} {'yes' if ok else 'no'}" for m, ok in info["optional_modules"].items()))
    return 0


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m fastallreduce {bench,info,demo,check} ...``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "bench":
        return bench_main(rest)
    if cmd == "info":
        return info_main(rest)
    if cmd == "check":
        from . import gpu_check

        return gpu_check.main(rest)
    if cmd == "demo":
        from . import demo

        return demo.main(rest)
    if cmd in ("--version", "version"):
        import fastallreduce as far

        print(far.__version__)
        return 0
    print(f"unknown command {cmd!r}\n\n{__doc__.strip()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
