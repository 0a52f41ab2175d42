"""Quick synchronous-call latency of each algorithm vs gloo: python benchmarks/quick_allreduce.py WORLD ALGOS SIZES

e.g. python benchmarks/quick_allreduce.py 2 shm,ring 4096,1048576 (median of 200 calls, rank 0).
"""
import sys, time, statistics
from fastallreduce.launch import RankPool

def bench(sizes, algos, iters):
    import torch, torch.distributed as dist, fastallreduce as far
    comms = {a: far.Communicator(algorithm=a) for a in algos}
    out = {}
    for nbytes in sizes:
        n = nbytes // 4
        x = torch.ones(n)
        for a in list(algos) + ["gloo"]:
            it = iters if nbytes < (1 << 20) else max(5, iters // 20)
            ts = []
            for i in range(it + 3):
                dist.barrier() if i % 50 == 0 else None
                t0 = time.perf_counter()
                if a == "gloo":
                    dist.all_reduce(x)
                else:
                    comms[a].allreduce(x)
                ts.append(time.perf_counter() - t0)
            out[(nbytes, a)] = statistics.median(ts[3:]) * 1e6
    for c in comms.values(): c.close()
    return out

if __name__ == "__main__":
    world = int(sys.argv[1]); algos = sys.argv[2].split(",")
    sizes = [int(s) for s in sys.argv[3].split(",")]
    with RankPool(world) as p:
        res = p.run(bench, sizes, algos, 200, timeout=600)
    r0 = res[0]
    for s in sizes:
        print(f"{s:>10}", "  ".join(f"{a}={r0[(s,a)]:9.1f}us" for a in algos + ["gloo"]))
