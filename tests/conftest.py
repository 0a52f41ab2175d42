import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")

from fastallreduce.launch import RankPool  # noqa: E402

_pools: dict = {}


@pytest.fixture(scope="session")
def pool():
    """pool(n) -> a RankPool of n ranks, shared by every test that asks for n (restarted if a test killed it)."""

    def get(n: int) -> RankPool:
        p = _pools.get(n)
        if p is None or not p.alive():
            if p is not None:
                p.kill()
            p = _pools[n] = RankPool(n)
        return p

    yield get
    for p in _pools.values():
        p.close()
    _pools.clear()
