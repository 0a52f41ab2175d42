"""Separate hosts for real: each in its own network, UTS, IPC and mount namespaces (private
/dev/shm), joined by veth links, ranks started by one torchrun per host, no FASTALLREDUCE_HOST_ID.

Topology is detected, `auto` follows the cost model, and the correctness matrix is exact on 2x2,
3x1 and 2+1 hosts. Network faults between such hosts: test_netns_faults.py.
"""
import json
import os
import subprocess
import sys
import time

import pytest

from fastallreduce.bench import netns_hosts as nh
import test_allreduce as ta

pytestmark = pytest.mark.timeout(420)

FAULT_TIMEOUT_S = 10.0  # the communicator's timeout in the fault tests
GRACE_S = 10.0  # every rank raises within the timeout + this


# -- the cost model the engine's `auto` must follow (csrc/algorithms/common.cpp) -------------
def _ring_us(nbytes, p, alpha, beta):
    return 0.0 if p <= 1 else 2 * (p - 1) * alpha + 2 * (p - 1) / p * nbytes / (beta * 1e3)


def _hd_us(nbytes, p, alpha, beta):
    if p <= 1:
        return 0.0
    pow2, steps = 1, 0
    while pow2 * 2 <= p:
        pow2, steps = pow2 * 2, steps + 1
    us = 2 * steps * alpha + 2 * (pow2 - 1) / pow2 * nbytes / (beta * 1e3)
    return us + (2 * alpha + 2 * nbytes / (beta * 1e3) if pow2 != p else 0.0)


def _hier_us(nbytes, hosts, local, cfg):
    """Per slot-sized chunk: the shared-memory stages' latency and the cross-host steps (one swap
    between two hosts, else a ring's); plus every byte through the shared-memory stages and each
    local rank's 1/L share across hosts."""
    alpha, beta = cfg["FASTALLREDUCE_ALPHA_US"], cfg["FASTALLREDUCE_BETA_GBPS"]
    slot = (cfg["FASTALLREDUCE_HIER_SLOT_BYTES"] + 4095) // 4096 * 4096  # the slot across hosts
    chunks = max(1, -(-nbytes // slot))
    steps = 1 if hosts == 2 else 2 * (hosts - 1)
    return (chunks * (cfg["FASTALLREDUCE_SHM_STAGE_US"] + steps * alpha)
            + nbytes / (cfg["FASTALLREDUCE_SHM_GBPS"] * 1e3) + 2 * (hosts - 1) / hosts * nbytes / local / (beta * 1e3))


def expected_choice(layout, nbytes, cfg):
    """What the model predicts fastest: hierarchical (shared-memory stages, then 1/L of the bytes
    among the H hosts) or flat (every byte among all H*L ranks)."""
    alpha, beta = cfg["FASTALLREDUCE_ALPHA_US"], cfg["FASTALLREDUCE_BETA_GBPS"]
    flat_ring, flat_hd = _ring_us(nbytes, sum(layout), alpha, beta), _hd_us(nbytes, sum(layout), alpha, beta)
    flat = "halving_doubling" if flat_hd <= flat_ring else "ring"
    local = layout[0]
    if len(set(layout)) == 1 and local >= 2 and _hier_us(nbytes, len(layout), local, cfg) <= min(flat_ring, flat_hd):
        return "hierarchical"
    return flat


LAYOUTS = {"2x2": [2, 2], "3x1": [1, 1, 1], "2+1": [2, 1]}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_topology_and_matrix(netns_hosts, tmp_path, name):
    """One torchrun per host runs the whole matrix in the same processes (CI time)."""
    layout = LAYOUTS[name]
    world = sum(layout)
    h = netns_hosts(layout)
    allreduce = ta._cases(world, ["auto"], big=True)
    family = [c for c in ta._family_cases() if c[1] <= 1009]
    spec = tmp_path / "cases.json"
    spec.write_text(json.dumps({"allreduce": allreduce, "family": family}))
    out = tmp_path / "out"
    out.mkdir()
    job = h.torchrun(["tests/netns_job.py", str(out), "cases", str(spec)])
    codes = job.wait(timeout=360)
    res = nh.read_results(out, world, time.monotonic())
    assert codes == [0] * len(layout) and len(res) == world, (codes, job.output())

    topo = [res[r]["topology"] for r in range(world)]
    host_of = [t["group_rank"] for t in topo]
    assert len({t["hostname"] for t in topo}) == len(layout)
    for r, t in enumerate(topo):
        assert t["num_hosts"] == len(layout) and not t["single_host"], t
        # Exactly the ranks of its own namespaced host share its memory: never one across hosts.
        assert t["local_ranks"] == [q for q in range(world) if host_of[q] == host_of[r]], t
        assert t["uniform"] == (len(set(layout)) == 1)
        assert t["choose"] == [expected_choice(layout, n, t["config"]) for n in t["sizes"]], t
    # With today's constants the model says: hierarchical wherever a host has several ranks.
    assert set(topo[0]["choose"]) == {"hierarchical"} if name == "2x2" else "hierarchical" not in topo[0]["choose"]
    # Costlier shared-memory stages (agreed from rank 0's environment): flat for small messages.
    slow = [res[r]["slow_shm"] for r in range(world)]
    assert all(s["choose"] == slow[0]["choose"] for s in slow), slow
    assert {s["config"]["FASTALLREDUCE_SHM_STAGE_US"] for s in slow} == {1000.0}, slow
    assert slow[0]["choose"] == [expected_choice(layout, n, slow[0]["config"]) for n in topo[0]["sizes"]], slow[0]
    if name == "2x2":
        assert slow[0]["choose"][1] != "hierarchical" and slow[0]["choose"][-1] == "hierarchical", slow[0]

    ta._check([res[r]["allreduce"] for r in range(world)], allreduce, world)
    ta._check([res[r]["family"] for r in range(world)], family, world)
    used = {res[0]["allreduce"][i][2] for i in range(len(allreduce))}
    assert used == {"hierarchical"} if name == "2x2" else used <= {"ring", "halving_doubling"}, used
    for i in range(len(layout)):
        assert h.shm_segments(i) == [], (i, h.shm_segments(i))


def test_bench_mode_tiny(netns_available, tmp_path):
    """`bench allreduce --netns-hosts 2` at tiny sizes: hierarchical and gloo measured in the same
    processes on two namespaced hosts, alternating blocks, every result exact; the hosts go away."""
    env = dict(os.environ, PYTHONPATH=nh.REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen([sys.executable, "-m", "fastallreduce", "bench", "allreduce", "--netns-hosts", "2",
                          "--ranks-per-host", "2", "-b", "4K", "-e", "64K", "-f", "16", "-w", "0", "-i", "2",
                          "--rounds", "2", "-a", "hierarchical", "--out", str(tmp_path), "--no-plot"],
                         cwd=nh.REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=240)
    finally:
        p.kill()
    assert p.returncode == 0, (out[-4000:], err[-4000:])
    doc = json.loads((tmp_path / "allreduce_bw.json").read_text())
    assert doc["config"]["netns_hosts"] == [2, 2] and doc["config"]["rounds"] == 2
    (run,) = doc["runs"]
    assert run["nranks"] == 4 and set(run["results"]) == {"gloo", "hierarchical"}, run
    for name, rows in run["results"].items():
        assert [r["size"] for r in rows] == [4096, 65536]
        for r in rows:
            assert r["oop"]["wrong"] == 0 and r["ip"]["wrong"] == 0, (name, r)
            assert len(r["ip"]["iter_times_us"]) == 4  # 2 rounds of 2
            assert name == "gloo" or r["ip"]["algorithm"] == "hierarchical"
    assert all(r["ip"]["ratio_vs_gloo"] > 0 for r in run["results"]["hierarchical"])
    assert "namespaced hosts" in out and "gloo/ours" in out, out
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    assert not [ns for ns in left if ns.startswith(f"{nh.PREFIX}{p.pid}-")], left
