"""The engine's parts alone, through fastallreduce._C._testing: the fault record codec, the
planner's choices for a table of calls and topologies, and the FIFO queue's ordering and
shutdown. No peers, store or transports: each part is built from plain arguments."""
import pytest
import torch

from fastallreduce import _C

T = _C._testing
ALLREDUCE, ALLGATHER, REDUCE_SCATTER, BROADCAST = range(4)
AUTO, RING, HD, SHM, HIER = range(5)
SUM, AVG, PRODUCT, MAX, MIN = range(5)

# ---- faults ---------------------------------------------------------------------------------

MESSAGES = [b"", b"plain", b"a|b|c", b"line1\nline2\n", b"|leading", b"trailing|", b"far1|timeout|3|4|nested",
            "\u00fcn\u00efcode".encode(), b"\x00binary\xff"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", T.fault_kinds())
def test_fault_round_trip(kind):
    for message in MESSAGES:
        for rank in (-1, 0, 7):
            for seq in (None, 0, 1, 2**40):
                record = T.fault_encode(kind, rank, seq, message)
                got = T.fault_decode(record)
                assert got == {"kind": kind, "rank": rank, "seq": seq, "message": message}, record


@pytest.mark.timeout(60)
def test_fault_kinds_are_the_ones_that_exist():
    assert set(T.fault_kinds()) == {"mismatch", "timeout", "fault", "aborted", "store_lost", "rejected"}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("result,kind", [(1, "timeout"), (2, "fault"), (100, "fault")])
def test_fault_decodes_the_transport_records(result, kind):
    # torch's NCCL watchdog results become "<kind>|<message>" records in the transport layer.
    record = _C._nccl_fault_record(result, 3, "allreduce of 8 x float32")
    got = T.fault_decode(record)
    assert got["kind"] == kind and got["rank"] == -1 and got["seq"] is None
    assert got["message"] == record.split("|", 1)[1].encode()


@pytest.mark.timeout(60)
def test_fault_decode_of_other_text():
    assert T.fault_decode("no bar at all") == {"kind": "fault", "rank": -1, "seq": None, "message": b"no bar at all"}
    assert T.fault_decode("odd|a|b")["message"] == b"a|b"
    assert T.fault_decode("far1|nokind|1|2|m")["kind"] == "fault"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind,cls", [("mismatch", _C.MismatchError), ("rejected", _C.MismatchError),
                                      ("timeout", _C.CommTimeoutError), ("fault", _C.CommError),
                                      ("aborted", _C.CommError), ("store_lost", _C.CommError)])
def test_fault_raises_its_class(kind, cls):
    record = T.fault_encode(kind, 2, 5, "fastallreduce: it | broke\nhere")
    with pytest.raises(cls) as info:
        T.fault_raise(record, " [ranks that did not reach allreduce #5: 1]")
    assert type(info.value) is cls
    assert str(info.value) == "fastallreduce: it | broke\nhere [ranks that did not reach allreduce #5: 1]"


# ---- the planner ----------------------------------------------------------------------------

ONE_HOST = [0, 0, 0, 0]
TWO_BY_TWO = [0, 0, 1, 1]
FOUR_HOSTS = [0, 1, 2, 3]
UNEVEN = [0, 0, 1]
ALONE = [0]


def f32(n):
    return torch.zeros(n, dtype=torch.float32)


# (hosts, rank, kind, input, output, op, root, requested algo) -> (algo, inner algo)
PLANS = [
    (ONE_HOST, 0, ALLREDUCE, f32(1), None, SUM, 0, AUTO, "shm", "auto"),
    (ONE_HOST, 3, ALLREDUCE, f32(1 << 20), None, AVG, 0, AUTO, "shm", "auto"),
    (ONE_HOST, 0, ALLREDUCE, f32(256), None, SUM, 0, RING, "ring", "auto"),
    (ONE_HOST, 0, ALLREDUCE, f32(256), None, SUM, 0, HIER, "halving_doubling", "auto"),  # no cross-host group
    (ONE_HOST, 1, ALLGATHER, f32(8), f32(32), SUM, 0, AUTO, "shm", "auto"),
    (ONE_HOST, 1, REDUCE_SCATTER, f32(32), f32(8), MAX, 0, AUTO, "shm", "auto"),
    (ONE_HOST, 2, BROADCAST, f32(8), None, SUM, 3, AUTO, "shm", "auto"),
    (TWO_BY_TWO, 0, ALLREDUCE, f32(256), None, SUM, 0, AUTO, "hierarchical", "auto"),
    (TWO_BY_TWO, 3, ALLREDUCE, f32(1 << 22), None, SUM, 0, AUTO, "hierarchical", "auto"),
    (TWO_BY_TWO, 0, ALLREDUCE, f32(256), None, SUM, 0, HD, "halving_doubling", "auto"),
    (TWO_BY_TWO, 1, ALLGATHER, f32(8), f32(32), SUM, 0, AUTO, "hierarchical", "hierarchical"),
    (FOUR_HOSTS, 0, ALLREDUCE, f32(256), None, SUM, 0, AUTO, "halving_doubling", "auto"),
    (FOUR_HOSTS, 2, ALLREDUCE, f32(1 << 20), None, SUM, 0, HIER, "halving_doubling", "auto"),
    (FOUR_HOSTS, 1, REDUCE_SCATTER, f32(32), f32(8), SUM, 0, AUTO, "halving_doubling", "halving_doubling"),
    (FOUR_HOSTS, 0, BROADCAST, f32(8), None, SUM, 2, AUTO, "halving_doubling", "halving_doubling"),
    (UNEVEN, 0, ALLREDUCE, f32(1024), None, SUM, 0, AUTO, "ring", "auto"),
    (UNEVEN, 2, ALLREDUCE, f32(1024), None, SUM, 0, HIER, "ring", "auto"),
    (ALONE, 0, ALLREDUCE, f32(16), None, SUM, 0, AUTO, "halving_doubling", "auto"),
    (ALONE, 0, ALLGATHER, f32(16), f32(16), SUM, 0, AUTO, "shm", "auto"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("hosts,rank,kind,inp,out,op,root,algo,want,inner", PLANS)
def test_planner_chooses(hosts, rank, kind, inp, out, op, root, algo, want, inner):
    plan = T.plan(hosts, rank, kind, inp, out, op=op, root=root, algo=algo)
    assert (plan["algo"], plan["inner_algo"]) == (want, inner)


@pytest.mark.timeout(60)
def test_planner_choice_is_the_same_on_every_rank():
    for hosts in (ONE_HOST, TWO_BY_TWO, FOUR_HOSTS, UNEVEN):
        for n in (1, 1000, 1 << 16, 1 << 24):
            assert len({T.choose(hosts, r, n) for r in range(len(hosts))}) == 1, (hosts, n)


@pytest.mark.timeout(60)
def test_planner_stages_what_the_kernels_cannot_take():
    strided = torch.zeros(16)[::2]
    assert T.plan(ONE_HOST, 0, ALLREDUCE, strided)["staged"]
    assert not T.plan(ONE_HOST, 0, ALLREDUCE, f32(8))["staged"]
    # Contiguity never changes the path (ranks may differ in it).
    assert T.plan(TWO_BY_TWO, 0, ALLREDUCE, strided)["algo"] == T.plan(TWO_BY_TWO, 0, ALLREDUCE, f32(8))["algo"]


# (hosts, kind, input, output, op, root, algo) -> exception
REJECTIONS = [
    (TWO_BY_TWO, ALLREDUCE, f32(8), None, SUM, 0, SHM, ValueError),  # shm needs one host
    (ONE_HOST, ALLREDUCE, torch.zeros(8, dtype=torch.int32), None, AVG, 0, AUTO, TypeError),
    (ONE_HOST, ALLREDUCE, torch.zeros(8, dtype=torch.bool), None, SUM, 0, AUTO, TypeError),
    (ONE_HOST, ALLREDUCE, torch.zeros(8, dtype=torch.complex64), None, SUM, 0, AUTO, TypeError),
    (ONE_HOST, ALLREDUCE, torch.zeros(8, device="meta"), None, SUM, 0, AUTO, NotImplementedError),
    (ONE_HOST, ALLREDUCE, f32(8), f32(9), SUM, 0, AUTO, ValueError),
    (ONE_HOST, ALLGATHER, f32(8), f32(8), SUM, 0, AUTO, ValueError),
    (ONE_HOST, REDUCE_SCATTER, f32(8), f32(8), SUM, 0, AUTO, ValueError),
    (ONE_HOST, BROADCAST, f32(8), None, SUM, 4, AUTO, ValueError),
    (ONE_HOST, 7, f32(8), None, SUM, 0, AUTO, ValueError),
    (ONE_HOST, ALLREDUCE, torch.zeros(1).expand(8), None, SUM, 0, AUTO, ValueError),  # elements share memory
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("hosts,kind,inp,out,op,root,algo,exc", REJECTIONS)
def test_planner_rejects(hosts, kind, inp, out, op, root, algo, exc):
    with pytest.raises(exc, match="fastallreduce: "):
        T.plan(hosts, 0, kind, inp, out, op=op, root=root, algo=algo)


NO_OP = 99  # a reduction the kernels have no code for (BAND, PREMUL_SUM, ...)
# (hosts, kind, tensor, op) -> whether the engine takes it (the torch backend delegates the rest)
TAKES = [
    (TWO_BY_TWO, ALLREDUCE, f32(8), SUM, True),
    (TWO_BY_TWO, ALLREDUCE, f32(8), NO_OP, False),
    (TWO_BY_TWO, ALLGATHER, f32(8), SUM, False),
    (ONE_HOST, ALLGATHER, f32(8), SUM, True),
    (ONE_HOST, BROADCAST, f32(8), NO_OP, True),  # not a reduction: the op does not matter
    (ONE_HOST, REDUCE_SCATTER, f32(8), NO_OP, False),
    (ONE_HOST, ALLREDUCE, torch.zeros(8, dtype=torch.int64), AVG, False),
    (ONE_HOST, ALLREDUCE, torch.zeros(8, dtype=torch.bool), SUM, False),
    (ONE_HOST, ALLREDUCE, torch.zeros(8, dtype=torch.bool), MAX, True),
    (ONE_HOST, ALLREDUCE, torch.zeros(8, dtype=torch.complex64), SUM, False),
    (ONE_HOST, ALLREDUCE, torch.zeros(8).to_sparse(), SUM, False),
    (ONE_HOST, ALLREDUCE, torch.zeros(8, device="meta"), SUM, False),
    (ONE_HOST, ALLREDUCE, torch.zeros(16)[::2], SUM, True),  # staged, never delegated
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("hosts,kind,tensor,op,want", TAKES)
def test_planner_decides_eligibility(hosts, kind, tensor, op, want):
    assert T.takes(hosts, 0, kind, tensor, op) is want


# ---- the queue ------------------------------------------------------------------------------


def _run(script):
    return T.queue_run(script)


@pytest.mark.timeout(60)
def test_queue_runs_in_issue_order_on_the_worker():
    r = _run([(False, False, 5)] * 6)
    assert r["order"] == list(range(6)) and set(r["threads"]) == {"worker"}
    assert r["results"] == [None] * 6


@pytest.mark.timeout(60)
def test_queue_runs_a_sync_call_on_its_callers_thread_when_idle():
    r = _run([(True, False, 0), (True, False, 0)])
    assert r["order"] == [0, 1] and r["threads"] == ["caller", "caller"]


@pytest.mark.timeout(60)
def test_queue_keeps_a_sync_call_behind_queued_ones():
    r = _run([(False, False, 50), (False, False, 0), (True, False, 0), (False, False, 0)])
    assert r["order"] == [0, 1, 2, 3]
    assert r["threads"][2] == "worker"  # queued behind the async calls, so it ran in their order


@pytest.mark.timeout(60)
def test_queue_reports_each_calls_own_error():
    r = _run([(False, True, 0), (False, False, 0), (True, True, 0), (False, False, 0)])
    assert r["order"] == [0, 1, 2, 3]
    assert r["results"] == ["call 0 failed", None, "call 2 failed", None]


@pytest.mark.timeout(60)
def test_queue_close_drains_then_refuses():
    r = _run([(False, False, 30)] * 5)
    assert r["order"] == list(range(5)) and r["results"] == [None] * 5
    assert r["refused_after_close"]
