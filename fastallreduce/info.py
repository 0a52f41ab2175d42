"""``python -m fastallreduce info``: versions, the build, this host's topology and the algorithms
this build can run here (tried on two local ranks)."""
from __future__ import annotations

import argparse
import json
from typing import Any, Sequence

from .bench import allreduce_ranks, machine
from .launch import RankPool


def _probe_algorithms(world: int, timeout: float) -> dict[str, Any]:
    """Starts ``world`` local ranks and tries each algorithm once (what this build can really run)."""
    import fastallreduce as far

    algos = [a for a in far.ALGORITHMS]
    with RankPool(world, threads=1) as pool:
        status = pool.run(allreduce_ranks.setup, algos, "float32", "sum", timeout=timeout)
        topo = pool.run(allreduce_ranks.topology, timeout=timeout)
        pool.run(allreduce_ranks.teardown, timeout=60)
    out: dict[str, Any] = {"world": world, "algorithms": {}, "topology": topo[0]}
    for a in algos:
        reasons = {s[a] for s in status}
        out["algorithms"][a] = "ok" if reasons == {None} else "; ".join(sorted(r for r in reasons if r))
    return out


def main(argv: Sequence[str]) -> int:
    """``info``: versions, build, this host's topology and the algorithms this build can run."""
    p = argparse.ArgumentParser(prog="python -m fastallreduce info",
                                description="Versions, build, detected topology and available algorithms.")
    p.add_argument("--no-probe", action="store_true",
                   help="do not start 2 local ranks to try each algorithm (faster; lists names only)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = p.parse_args(argv)

    import torch

    import fastallreduce as far

    info = machine.describe(probe_cuda_arch=True)
    info["torch_cuda_arch_list"] = torch.cuda.get_arch_list() if torch.version.cuda else []
    info["algorithms_known"] = list(far.ALGORITHMS)
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
    return 0
