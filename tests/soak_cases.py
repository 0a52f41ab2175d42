"""Random collectives, checked against torch.distributed, with async ops in flight together."""
import random

import torch
import torch.distributed as dist

import dist_cases as dc


def soak(seed: int, n_ops: int, hosts=None):
    rng = random.Random(seed)  # same stream on every rank: every rank issues the same ops
    algorithms = ["auto", "ring", "halving_doubling", "shm"] if not hosts else ["auto", "hierarchical", "ring"]
    comms = {a: dc.comm(a, hosts) for a in algorithms}
    checked = wrong = 0
    pending = []

    def settle():
        nonlocal checked, wrong
        for fut, res_tensor, ref, dtype, op, p2p in pending:
            got = fut.wait() if fut is not None else res_tensor
            if got.numel() and dtype in (torch.float16, torch.bfloat16) and op == "avg" and p2p:
                ok = dc.avg16_error(got, ref, op, True) == 0  # divided before summing: a few ulps
            elif dtype == torch.bool:
                ok = torch.equal(got, ref)
            else:
                ok = torch.equal(got.double().nan_to_num(), ref.double().nan_to_num())
            checked += 1
            wrong += 0 if ok else 1
        pending.clear()

    for i in range(n_ops):
        dtype_name = rng.choice(dc.DTYPES)
        op = rng.choice([o for o in dc.OPS if dc.valid(dtype_name, o)])
        n = rng.choice([0, 1, 7, 100, 1000, 4096, 65_537, 300_000]) if rng.random() < 0.97 else 2_500_000
        algo = rng.choice(algorithms)
        async_op = rng.random() < 0.5
        kind = "pm2" if op == "product" else "int"
        x = dc.make_input(dist.get_rank(), n, getattr(torch, dtype_name), seed * 100_000 + i, kind)
        ref = dc.reference(x, op)
        p2p = algo in ("ring", "halving_doubling", "hierarchical") or (bool(hosts) and algo == "auto")
        if async_op:
            pending.append((comms[algo].allreduce(x, op=op, async_op=True), None, ref, x.dtype, op, p2p))
        else:
            settle()
            pending.append((None, comms[algo].allreduce(x, op=op), ref, x.dtype, op, p2p))
        if len(pending) >= 4 or rng.random() < 0.3:
            settle()
    settle()
    return checked, wrong
