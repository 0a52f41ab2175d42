"""Work a caller waits for makes progress when other processes keep every core busy (as
DataLoader workers do): the engine's worker thread must not be starved by them."""
import os
import subprocess
import sys

import pytest

import busy_cases as bc


@pytest.fixture
def busy_cores():
    """One normal-priority busy loop per core plus one, for the duration of the test."""
    n = (os.cpu_count() or 1) + 1
    code = "import time\nuntil = time.monotonic() + 300\nwhile time.monotonic() < until: pass"
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]
    yield n
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


@pytest.mark.timeout(240)
def test_async_allreduce_progresses_on_busy_cores(pool, busy_cores):
    # 16 MB, three rounds: with the worker at SCHED_IDLE 4 of 5 rounds took 8.9-45 s, the sync
    # call 0.24-2.7 s beside them. The bound is far above the sync call's, far below the starved.
    res = pool(2).run(bc.async_allreduce_under_load, 16 << 20, 3, timeout=200)
    for rounds in res:
        for r in rounds:
            for mode in ("async", "sync"):
                status, msg, seconds, exact = r[mode]
                assert status == "ok" and exact, (mode, r)
            assert r["async"][2] < max(5.0, 4 * r["sync"][2]), rounds
