"""In-process restart: the backend destroyed and made again on the same store, and Communicators
made again over one group, work every time and leave no shared-memory segment behind."""

import pytest

import recreate_cases as rc
from fastallreduce.launch import RankPool, free_port
from shm_segments import segments_of


@pytest.mark.timeout(300)
def test_backend_recreated_on_same_store():
    # On the old code 6 of 7 such runs failed: a stale segment name, stale Gloo addresses, hangs.
    with RankPool(2) as pool:  # its own ranks: the case destroys their default group
        res = pool.run(rc.backend_cycles, free_port(), 5, 3, timeout=240)
        pids = pool.pids
    for r in res:
        assert [ok for ok, _ in r["backend"]] == [True] * 5, res
        assert [ok for ok, _ in r["communicator"]] == [True] * 3, res
        assert all(s < 20 for _, s in r["backend"] + r["communicator"]), res
    leaked = segments_of(pids)
    assert leaked == [], leaked
