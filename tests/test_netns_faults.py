"""Network faults between namespaced hosts (fastallreduce/bench/netns_hosts.py): a host's link taken down, or a
rank killed, during a loop of large allreduces. Every rank on every host raises within the
communicator's timeout + 10 s naming the ranks it lost, every rank process exits, and no segment
is left in any host's /dev/shm (looked at inside each host's mount namespace afterwards)."""
import os
import re
import signal
import time

import pytest

from fastallreduce.bench import netns_hosts as nh

pytestmark = pytest.mark.timeout(300)

TIMEOUT_S = 10.0  # the communicator's timeout
GROUP_TIMEOUT_S = 20.0  # the group's, where the communicator takes its default
GRACE_S = 10.0  # every rank raises within TIMEOUT_S + GRACE_S of the fault
NBYTES = 32 << 20
LAYOUT = [2, 2]  # ranks 0, 1 on host 0 (it holds the store), ranks 2, 3 on host 1


def _ranks_of(host):
    first = sum(LAYOUT[:host])
    return list(range(first, first + LAYOUT[host]))


def _strike(h, tmp_path, fault, report=None, start=None):
    """Starts the loop on every rank (under torchrun, or ``start(out_dir)``'s job), waits until
    all are in it, calls fault(pids); returns (the time of the fault, the ranks' pids, the results
    of the ranks in ``report`` (default: all), the job)."""
    world = sum(LAYOUT)
    out = tmp_path / "out"
    out.mkdir()
    job = (start(out) if start else h.torchrun(["tests/netns_job.py", str(out), "loop", str(TIMEOUT_S), str(NBYTES)]))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not all((out / f"looping{r}").exists() for r in range(world)):
        assert all(p.poll() is None for p in job.procs), job.output()
        time.sleep(0.2)
    assert all((out / f"looping{r}").exists() for r in range(world)), job.output()
    pids = [int((out / f"looping{r}").read_text()) for r in range(world)]
    t0 = time.time()
    fault(pids)
    res = nh.read_results(out, report if report is not None else world, time.monotonic() + GROUP_TIMEOUT_S + GRACE_S + 30)
    return t0, pids, res, job


def _named(message):
    """The ranks an error names: "... rank 3 ..." or "... [ranks that ...: 2, 3]"."""
    named = {int(m) for m in re.findall(r"\brank (\d+)", message)}
    for group in re.findall(r"\[ranks [^\]]*?: ([\d, ]+)\]", message):
        named |= {int(m) for m in group.split(",")}
    return named


def _check_all_raised(t0, res, expect_ranks, job, timeout_s=TIMEOUT_S):
    late = {r: round(res[r]["raised_at"] - t0, 1) for r in res if res[r]["raised_at"] - t0 > timeout_s + GRACE_S}
    missing = [r for r in expect_ranks if r not in res]
    assert not missing and not late, (f"ranks that never raised: {missing}; raised late (s): {late}",
                                      {r: res[r]["message"] for r in res}, job.output())
    for r in expect_ranks:
        assert res[r]["error"] in ("CommTimeoutError", "CommError"), res[r]
    print({r: res[r]["message"][-160:] for r in expect_ranks})
    print("raised after (s):", {r: round(res[r]["raised_at"] - t0, 1) for r in expect_ranks},
          "closed after (s):", {r: round(res[r]["closed_at"] - t0, 1) for r in expect_ranks})


def _check_clean(h, pids, job):
    """Every rank process ends by itself, and no host's /dev/shm keeps a segment. (The torchrun
    agents are then killed: cut off from the store, an agent waits out its own exit barrier.)"""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(nh.pid_alive(p) for p in pids):
        time.sleep(0.2)
    assert not [p for p in pids if nh.pid_alive(p)], ("rank processes still running after raising", job.output())
    job.kill()
    for i in range(len(LAYOUT)):
        assert h.shm_segments(i) == [], (i, h.shm_segments(i))


@pytest.mark.parametrize("cut", [0, 1], ids=["store_host", "other_host"])
def test_link_down_every_rank_raises(netns_hosts, tmp_path, cut):
    h = netns_hosts(LAYOUT)
    t0, pids, res, job = _strike(h, tmp_path, lambda pids: h.link(cut, up=False))
    _check_all_raised(t0, res, range(sum(LAYOUT)), job)
    _check_across_named(res, cut)
    _check_clean(h, pids, job)


def _check_across_named(res, cut):
    """Every rank names the ranks across the cut: from either side, the other host's ranks."""
    def across(r):
        return {q for q in range(sum(LAYOUT)) if (q in _ranks_of(cut)) != (r in _ranks_of(cut))}

    unnamed = {r: v["message"] for r, v in res.items() if not across(r) <= _named(v["message"])}
    assert not unnamed, unnamed



def test_partition_on_defaults_every_rank_raises(netns_hosts, tmp_path):
    """A user's set-up: two hosts joined by one veth pair (no bridge), ranks started without
    torchrun, init_process_group("gloo", timeout=20 s) from environment variables and
    Communicator() on its defaults (the group's timeout); host 1's end of the cable goes down
    during a loop of 32 MiB allreduces. Every rank raises one of our errors naming the ranks
    across the cut within the timeout + GRACE_S, exits by itself, and leaves no segment."""
    h = netns_hosts(LAYOUT, link="pair")
    argv = ["tests/netns_job.py", "{out}", "loop", str(GROUP_TIMEOUT_S), str(NBYTES), "group"]
    t0, pids, res, job = _strike(h, tmp_path, lambda pids: h.link(1, up=False),
                                 start=lambda out: h.spawn([a.format(out=out) for a in argv]))
    _check_all_raised(t0, res, range(sum(LAYOUT)), job, timeout_s=GROUP_TIMEOUT_S)
    _check_across_named(res, 1)
    _check_clean(h, pids, job)


def test_rank_killed_on_one_host_reported_on_the_others(netns_hosts, tmp_path):
    h = netns_hosts(LAYOUT)
    victim = _ranks_of(1)[-1]
    others = [r for r in range(sum(LAYOUT)) if r != victim]
    t0, pids, res, job = _strike(h, tmp_path, lambda pids: os.kill(pids[victim], signal.SIGKILL), others)
    _check_all_raised(t0, res, others, job)
    unnamed = {r: res[r]["message"] for r in others if victim not in _named(res[r]["message"])}
    assert not unnamed, unnamed
    _check_clean(h, [p for r, p in enumerate(pids) if r != victim], job)
