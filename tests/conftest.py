import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")

from fastallreduce.launch import RankPool  # noqa: E402

_pools: dict = {}  # world size -> RankPool, least recently used first
# Rank processes kept alive between tests: each holds torch (about 0.5 GB), and a pool of every
# size from 1 to 8 at once came near 15 GB, enough to exhaust a 24 GB machine running anything
# else. Least recently used pools are closed beyond this.
MAX_LIVE_RANKS = 12


@pytest.fixture(scope="session")
def pool():
    """pool(n) -> a RankPool of n ranks, shared by every test that asks for n (restarted if a test
    killed it; the least recently used pools closed when more than MAX_LIVE_RANKS ranks would live)."""

    def get(n: int) -> RankPool:
        p = _pools.pop(n, None)
        if p is None or not p.alive():
            if p is not None:
                p.kill()
            while _pools and sum(_pools) + n > MAX_LIVE_RANKS:
                _pools.pop(next(iter(_pools))).close()
            p = RankPool(n)
        _pools[n] = p  # most recently used last
        return p

    yield get
    for p in _pools.values():
        p.close()
    _pools.clear()


_netns_checked: list = []


@pytest.fixture
def netns_available():
    """Skips with the reason where namespaced hosts cannot be made; with CI=true that fails instead
    (CI runs as root, so a missing capability there is a broken machine, not an absent one)."""
    from fastallreduce.bench import netns_hosts as nh

    if not _netns_checked:
        _netns_checked.append(nh.unavailable())
        nh.sweep_stale()  # namespaces a killed earlier run left behind
    why = _netns_checked[0]
    if why:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {why}")
        pytest.skip(why)


@pytest.fixture
def netns_hosts(tmp_path, netns_available):
    """netns_hosts(layout, **kw) -> a started fastallreduce.bench.netns_hosts.NetnsHosts, torn down after
    the test (skipped, or failed under CI=true, as netns_available says)."""
    from fastallreduce.bench import netns_hosts as nh

    made = []

    def make(layout, **kw):
        h = nh.NetnsHosts(layout, log_dir=str(tmp_path), **kw)
        made.append(h)
        return h.__enter__()

    yield make
    for h in made:
        h.close()
