"""Command line: ``python -m fastallreduce`` (or the ``fastallreduce`` console script).

    fastallreduce bench allreduce [args]   allreduce bandwidth, nccl-tests format, vs torch.distributed gloo
                                           (under torchrun: on the launched ranks, e.g. --dist-backend fastallreduce)
    fastallreduce bench ddp [args]         DDP step benchmark
    fastallreduce bench sgd [args]         SGD step benchmark
    fastallreduce bench all [--out DIR]    every benchmark above + results/report.md with the machine
    fastallreduce info                     versions, build, topology of this host, algorithms
    fastallreduce demo [args]              large-minibatch SGD demo (Goyal et al.) in miniature
    fastallreduce check --gpu [--dry-run]  the prepared GPU check: build, GPU tests, fused-SGD table

Arguments after the sub-command go to that tool; ``--help`` on each shows its options.
"""
from __future__ import annotations

import importlib
import sys
from typing import Optional, Sequence

#: ``bench <name>``: the module whose ``main(argv)`` runs it.
BENCHMARKS = {"allreduce": "fastallreduce.bench.allreduce_bw", "ddp": "fastallreduce.bench.ddp_step",
              "sgd": "fastallreduce.bench.sgd_step", "all": "fastallreduce.bench.report_all"}
#: Every other sub-command: the module whose ``main(argv)`` runs it.
COMMANDS = {"info": "fastallreduce.info", "check": "fastallreduce.gpu_check", "demo": "fastallreduce.demo"}


def _run(module: str, argv: list[str]) -> int:
    rc = importlib.import_module(module).main(argv)
    # main() may return an exit status or its results (e.g. rows); only an int is a status.
    return rc if isinstance(rc, int) else 0


def bench_main(argv: Sequence[str]) -> int:
    """``bench <name> [args]``: runs one benchmark, or ``all``."""
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m fastallreduce bench {" + ",".join(BENCHMARKS) + "} [args]\n\n"
              "  allreduce  allreduce bandwidth (nccl-tests format) vs torch.distributed gloo\n"
              "  ddp        DDP step benchmark\n"
              "  sgd        SGD step benchmark\n"
              "  all        all of them (allreduce at 2, 4 and 8 ranks) and a Markdown report")
        return 0 if argv else 2
    name = argv[0]
    if name not in BENCHMARKS:
        print(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    return _run(BENCHMARKS[name], list(argv[1:]))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m fastallreduce {bench,info,demo,check} ...``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "bench":
        return bench_main(rest)
    if cmd in COMMANDS:
        return _run(COMMANDS[cmd], rest)
    if cmd in ("--version", "version"):
        import fastallreduce as far

        print(far.__version__)
        return 0
    print(f"unknown command {cmd!r}\n\n{__doc__.strip()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
