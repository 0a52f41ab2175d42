"""What each rank runs on the namespaced hosts (fastallreduce/bench/netns_hosts.py), launched by torchrun.

    netns_job.py OUT_DIR cases CASES_JSON      topology, then the correctness cases in the file
    netns_job.py OUT_DIR loop TIMEOUT_S NBYTES allreduces until one raises (a fault test cuts a
                                               link or kills a rank meanwhile)
    netns_job.py OUT_DIR loop TIMEOUT_S NBYTES group
                                               the same, TIMEOUT_S the group's and the
                                               Communicator() on its defaults

Every rank writes OUT_DIR/rank<R>.json; the loop also writes OUT_DIR/looping<R> (its pid) once
it is in the loop, so that the test knows when to strike.
"""
import json
import os
import signal
import socket
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist

import dist_cases as dc
import fastallreduce as far


def topology(c: far.Communicator) -> dict:
    sizes = [0, 4 << 10, 1 << 20, 64 << 20]
    return {"hostname": socket.gethostname(), "group_rank": int(os.environ["GROUP_RANK"]),
            "local_rank": int(os.environ["LOCAL_RANK"]), "num_hosts": c.num_hosts,
            "host_of_rank": c.host_of_rank, "local_ranks": c.local_ranks, "uniform": c.uniform_hosts,
            "single_host": c._c.single_host, "config": c.config, "sizes": sizes,
            "choose": [c.choose(n) for n in sizes]}


# Constants under which the model picks flat at small sizes and hierarchical at large ones.
SLOW_SHM = {"FASTALLREDUCE_SHM_STAGE_US": "1000"}


def choices_with(env: dict, sizes: list) -> dict:
    """config and choose() of a communicator made with ``env`` set (on every rank alike)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        c = far.Communicator(timeout=timedelta(seconds=60))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    out = {"config": c.config, "choose": [c.choose(n) for n in sizes]}
    c.close()
    return out


def run_cases(path: str) -> dict:
    with open(path) as f:
        spec = json.load(f)
    c = dc.comm("auto", timeout=timedelta(seconds=60))
    out = {"topology": topology(c)}
    out["slow_shm"] = choices_with(SLOW_SHM, out["topology"]["sizes"])
    started = time.monotonic()
    out["allreduce"] = dc.run_cases([tuple(x) for x in spec["allreduce"]])
    out["family"] = dc.check_family([tuple(x) for x in spec["family"]])
    out["seconds"] = time.monotonic() - started
    shm = sorted(f for f in os.listdir("/dev/shm") if f.startswith("fastallreduce_"))
    out["shm_while_open"] = shm
    return out


def loop(out_dir: str, timeout_s: float, nbytes: int, defaults: bool) -> dict:
    # When a fault test kills a rank, its torchrun agent SIGTERMs the host's other ranks at once
    # (SIGKILL 30 s later): they must live to report what they raised, then they exit by themselves.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    c = far.Communicator() if defaults else far.Communicator(timeout=timedelta(seconds=timeout_s))
    x = torch.ones(nbytes // 4)
    rank, i = dist.get_rank(), 0
    result = {"error": None, "pid": os.getpid()}
    try:
        while True:
            c.allreduce(x.fill_(1.0))
            i += 1
            if i == 3:
                with open(os.path.join(out_dir, f"looping{rank}"), "w") as f:
                    f.write(str(os.getpid()))
    except Exception as e:  # noqa: BLE001 - the test checks what was raised
        result.update(error=type(e).__name__, message=str(e)[:2000], raised_at=time.time(), iterations=i)
    c.close()
    result["closed_at"] = time.time()
    return result


def main() -> None:
    out_dir, scenario = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    defaults = sys.argv[5:] == ["group"]
    dist.init_process_group("gloo", timeout=timedelta(seconds=float(sys.argv[3]) if defaults else 60))
    rank = dist.get_rank()
    if scenario == "cases":
        result = run_cases(sys.argv[3])
    else:
        result = loop(out_dir, float(sys.argv[3]), int(sys.argv[4]), defaults)
    with open(os.path.join(out_dir, f"rank{rank}.json.tmp"), "w") as f:
        json.dump(result, f)
    os.replace(os.path.join(out_dir, f"rank{rank}.json.tmp"), os.path.join(out_dir, f"rank{rank}.json"))
    if scenario == "cases":
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
