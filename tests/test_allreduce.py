"""The Communicator's correctness matrix: every algorithm, op and dtype against torch.distributed
(gloo) on exactly computable inputs, world sizes 1..8 oversubscribed on this machine's cores."""
import pytest

import dist_cases as dc

SIM_HOSTS = {  # simulated hosts per world size (uneven ones take the flat fallback)
    3: ["a", "a", "b"],
    4: ["a", "a", "b", "b"],
    5: ["a", "b", "c", "a", "b"],
    8: ["a", "b", "a", "b", "a", "b", "a", "b"],
}


def _cases(world, algorithms, big):
    cases = []
    counts = sorted({0, 1, max(world - 1, 0), world + 1, 1009})
    seed = 0
    for algo in algorithms:
        for dt in dc.DTYPES:
            for op in dc.OPS:
                if not dc.valid(dt, op):
                    continue
                kind = "pm2" if op == "product" else "int"
                for n in counts:
                    seed += 1
                    cases.append((algo, n, dt, op, seed, seed % 3 == 0, kind, seed % 4 == 1))
        if big:
            # several pipeline segments / shared-memory chunks
            cases.append((algo, 3_000_001, "float32", "sum", 7, False, "int", False))
            cases.append((algo, 1_500_000, "bfloat16", "avg", 8, True, "int", True))
    return cases


def _check(results, cases, world):
    for i, case in enumerate(cases):
        per_rank = [results[r][i] for r in range(world)]
        errs = [p[0] for p in per_rank]
        assert max(errs) == 0, f"case {case}: error {errs}"
        assert len({p[1] for p in per_rank}) == 1, f"case {case}: ranks disagree bit-wise"


@pytest.mark.parametrize("world", [1, 2, 3, 4, 5, 8])
def test_matrix_flat_and_shm(pool, world):
    algorithms = ["ring", "halving_doubling", "shm", "auto"]
    cases = _cases(world, algorithms, big=world in (2, 3, 4))
    res = pool(world).run(dc.run_cases, cases, timeout=600)
    _check(res, cases, world)
    if world > 1:
        used = {res[0][i][2] for i, c in enumerate(cases) if c[0] == "auto"}
        assert used == {"shm"}, used


@pytest.mark.parametrize("world", [3, 4, 5, 8])
def test_matrix_hierarchical(pool, world):
    hosts = SIM_HOSTS[world]
    cases = _cases(world, ["hierarchical", "auto"], big=world == 4)
    res = pool(world).run(dc.run_cases, cases, hosts, timeout=600)
    _check(res, cases, world)
    uniform = len({hosts.count(h) for h in set(hosts)}) == 1
    used = {res[0][i][2] for i in range(len(cases))}
    if uniform:
        assert used == {"hierarchical"}
    else:
        assert used <= {"ring", "halving_doubling"}


def test_float_random_inputs_hierarchical(pool):
    """The cross-host stage runs on Gloo's own allreduce: with 3 hosts its ring adds in an order
    that differs per slice, yet every rank must get the same bits (and gloo's result within
    rounding), for non-integer float sums and averages, one slot and several."""
    hosts = ["a", "a", "b", "b", "c", "c"]
    cases = [("hierarchical", n, dt, op, 13, False, "randn", False)
             for n in (1009, 3_000_001) for dt in ("float32", "float64") for op in ("sum", "avg")]
    res = pool(6).run(dc.run_cases, cases, hosts, timeout=300)
    for i, case in enumerate(cases):
        assert res[0][i][0] < 1e-4, (case, res[0][i][0])
        assert len({res[r][i][1] for r in range(6)}) == 1, case
        assert res[0][i][2] == "hierarchical", res[0][i]


def test_float_random_inputs(pool):
    """Non-integer floats: equal to gloo within rounding, bit-identical across ranks."""
    cases = [(a, 100_003, dt, op, 11, False, "randn", False)
             for a in ("ring", "halving_doubling", "shm") for dt in ("float32", "float64") for op in ("sum", "avg")]
    res = pool(3).run(dc.run_cases, cases, timeout=300)
    for i, case in enumerate(cases):
        assert res[0][i][0] < 1e-4, (case, res[0][i][0])
        assert len({res[r][i][1] for r in range(3)}) == 1


def test_shm_chunking_across_slots():
    """Messages larger than a slot move in small chunks, ones that fit a slot in one: both exact.

    A 64 KiB slot and 8 KiB chunks (environment, read at Communicator creation) put the chunk
    edges, the slot reuse and the per-rank slices at odd offsets with 3 ranks.
    """
    from fastallreduce.launch import RankPool

    env = {"FASTALLREDUCE_SHM_SLOT_BYTES": str(64 << 10), "FASTALLREDUCE_SHM_CHUNK_BYTES": str(8 << 10)}
    cases = [("shm", n, dt, op, 50 + i, i % 2 == 1, "int", i % 3 == 0)
             for i, (n, dt, op) in enumerate([(50_001, "float32", "sum"), (16_000, "float32", "avg"),
                                               (100_003, "bfloat16", "sum"), (7_777, "float64", "max"),
                                               (40_000, "int64", "sum"), (16_384, "float32", "sum")])]
    with RankPool(3, env=env) as p:
        res = p.run(dc.run_cases, cases, timeout=300)
    _check(res, cases, 3)
    assert {res[0][i][2] for i in range(len(cases))} == {"shm"}


def test_shm_oneshot_threshold_two_ranks(pool):
    """Two local ranks take the one-shot path up to twice FASTALLREDUCE_SHM_ONESHOT_BYTES: both sides
    of that edge (and of the default one) are exact, in and out of place, sync and async."""
    cases = [("shm", n, dt, op, 90 + i, i % 2 == 0, "int", i % 3 == 2)
             for i, (n, dt, op) in enumerate([(8_192, "float32", "sum"), (8_193, "float32", "avg"),
                                               (16_384, "float32", "sum"), (16_385, "float32", "max"),
                                               (32_768, "bfloat16", "sum"), (32_769, "float16", "sum"),
                                               (8_192, "float64", "min"), (8_193, "int64", "sum")])]
    res = pool(2).run(dc.run_cases, cases, timeout=300)
    _check(res, cases, 2)


def _family_cases():
    cases, seed = [], 100
    for kind in ("broadcast", "all_gather", "reduce_scatter"):
        for dt in dc.DTYPES:
            ops = [op for op in dc.OPS if dc.valid(dt, op)] if kind == "reduce_scatter" else ["sum"]
            for op in ops:
                for n in (0, 1, 1009):
                    seed += 1
                    cases.append((kind, n, dt, op, seed, seed % 3 == 0))
        # several shared-memory chunks and slots per call
        cases.append((kind, 1_000_003, "float32", "sum", seed + 1, False))
        cases.append((kind, 700_001, "bfloat16", "avg" if kind == "reduce_scatter" else "sum", seed + 2, True))
    return cases


@pytest.mark.parametrize("world,hosts", [(1, None), (2, None), (3, None), (4, None),
                                         (3, ["a", "a", "b"]), (4, ["a", "b", "a", "b"])])
def test_gather_family(pool, world, hosts):
    """broadcast / all_gather / reduce_scatter: bit-exact against the inputs (gathers, broadcasts)
    and against gloo's all_reduce (reduce_scatter), sync and async, on shared memory (one host)
    and through the engine's allreduce (simulated hosts)."""
    cases = _family_cases()
    res = pool(world).run(dc.check_family, cases, hosts, timeout=600)
    _check(res, cases, world)
    assert {r[2] for rank in res for r in rank} == {hosts is None}


def test_gather_family_bad_inputs(pool):
    res = pool(2).run(dc.family_bad_inputs, timeout=60)
    for raised, y in res:
        # A non-contiguous tensor (7th call) is staged, not refused.
        assert raised == ["ValueError", "TypeError", "ValueError", "TypeError", "ValueError", "ValueError",
                          None, "ValueError", "ValueError", "TypeError", "TypeError"], raised
        assert y == [1.0, 1.0, 1.0]


def test_gather_family_mismatch(pool):
    res = pool(2).run(dc.family_mismatch, timeout=90)
    assert all(r.startswith("MismatchError") and "broadcast" in r and "allgather" in r for r in res), res


@pytest.mark.parametrize("idle", ["1", "0"])
def test_worker_priority(pool, idle):
    """The async worker runs under SCHED_IDLE unless FASTALLREDUCE_WORKER_IDLE=0."""
    (pols, sched_idle), = pool(1).run(dc.worker_policy, idle, timeout=60)
    assert pols == [sched_idle if idle == "1" else 0]
