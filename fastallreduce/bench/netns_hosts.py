"""Real separate hosts on one machine: network + UTS + IPC + mount namespaces, one per host.

Each host has its own hostname, its own network stack reached over a veth link to a bridge (the
bridge lives in a namespace of its own, so nothing touches the machine's own network) or, with
``link="pair"``, over one veth pair straight to the other of two hosts, its own
IPC namespace and a private tmpfs on /dev/shm. A keeper process per host holds the namespaces
open, so /dev/shm can still be inspected after the host's ranks exited; everything else enters
the host through the keeper's namespaces (nsenter).

    with NetnsHosts([2, 2]) as hosts:            # 2 hosts of 2 ranks
        job = hosts.torchrun(["tests/netns_job.py", ...], env={...})   # or hosts.spawn(...): no torchrun
        job.wait(timeout=120)
        hosts.shm_segments(1)                    # what is left in host 1's /dev/shm

Needs root (or CAP_SYS_ADMIN + CAP_NET_ADMIN), `ip` and `nsenter`/`unshare`: `unavailable()`
says why not. Used by the namespaced tests (tests/test_netns_*.py) and by
``python -m fastallreduce bench allreduce --netns-hosts H``.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Optional, Sequence

PREFIX = "far-"
SUBNET = "10.213.0"  # private, and only ever assigned inside namespaces this module creates
IFNAME = "veth0"  # each host's link, as seen inside the host
MASTER_PORT = 29400
# The directory that holds the fastallreduce package (the repository root in a checkout): the
# hosts' working directory and PYTHONPATH, so that ranks import this very package.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _sh(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=timeout)


def unavailable() -> Optional[str]:
    """Why namespaced hosts cannot be made here (None when they can): tried, not guessed."""
    if os.geteuid() != 0:
        return "namespaced hosts need root (ip netns, unshare --mount)"
    for tool in ("ip", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            return f"namespaced hosts need `{tool}`"
    probe = f"{PREFIX}probe-{os.getpid()}"
    try:
        _sh("ip", "netns", "add", probe)
        try:
            _sh("ip", "netns", "exec", probe, "unshare", "--uts", "--ipc", "--mount", "sh", "-c",
                "mount -t tmpfs -o size=1m tmpfs /dev/shm && hostname far-probe")
            _sh("ip", "link", "add", "farprobe0", "netns", probe, "type", "veth", "peer", "name", "farprobe1",
                "netns", probe)
        finally:
            _sh("ip", "netns", "del", probe, check=False)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        err = getattr(e, "stderr", "") or str(e)
        return f"namespaced hosts unavailable: {' '.join(getattr(e, 'cmd', []) or [])}: {err.strip()}"
    return None


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (an exited one its parent has not reaped yet is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _kill_netns_processes(ns: str) -> None:
    pids = _sh("ip", "netns", "pids", ns, check=False).stdout.split()
    for p in pids:
        try:
            os.kill(int(p), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def sweep_stale() -> list:
    """Deletes far-<pid>-* namespaces (and their processes) whose creating process is gone."""
    swept = []
    for line in _sh("ip", "netns", "list", check=False).stdout.splitlines():
        ns = line.split()[0] if line.strip() else ""
        parts = ns.split("-")
        if not ns.startswith(PREFIX) or len(parts) < 3 or not parts[1].isdigit():
            continue
        if pid_alive(int(parts[1])):
            continue  # another live fixture's (or a concurrent test run's)
        _kill_netns_processes(ns)
        _sh("ip", "netns", "del", ns, check=False)
        swept.append(ns)
    return swept


def read_results(out_dir: str, ranks, deadline: float) -> dict:
    """rank -> what it wrote to out_dir/rank<R>.json, for each of ``ranks`` (a count or the ranks),
    once all have written (or what is there at ``deadline``, a time.monotonic())."""
    ranks = list(range(ranks)) if isinstance(ranks, int) else list(ranks)
    paths = {r: os.path.join(out_dir, f"rank{r}.json") for r in ranks}
    while time.monotonic() < deadline and not all(os.path.exists(p) for p in paths.values()):
        time.sleep(0.2)
    out = {}
    for r, p in paths.items():
        if os.path.exists(p):
            with open(p) as f:
                out[r] = json.load(f)
    return out


class Job:
    """One torchrun per host (or one process per rank), all in the background; their output goes to files in ``log_dir``."""

    def __init__(self, procs: list, logs: list):
        self.procs, self.logs = procs, logs

    def wait(self, timeout: float) -> list:
        """Exit codes of the processes (torchruns: one per host); kills every one still running after ``timeout``."""
        deadline = time.monotonic() + timeout
        codes = []
        for p in self.procs:
            try:
                codes.append(p.wait(timeout=max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                codes.append(None)
        self.kill()
        return codes

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=10)

    def output(self) -> str:
        tails = [open(f, errors="replace").read()[-6000:] for f in self.logs]
        return "\n".join(f"--- {os.path.basename(f)} ---\n{t}" for f, t in zip(self.logs, tails))


class NetnsHosts:
    """``layout[i]`` ranks on host i, each host in its own namespaces; see the module docstring."""

    def __init__(self, layout: Sequence[int], log_dir: Optional[str] = None, link: str = "bridge") -> None:
        if link not in ("bridge", "pair") or (link == "pair" and len(layout) != 2):
            raise ValueError(f"link must be 'bridge', or 'pair' for two hosts; got {link!r} for {len(layout)} hosts")
        self.layout = list(layout)
        self.pair = link == "pair"
        self.tag = f"{PREFIX}{os.getpid()}-{int(time.time() * 1000) % 100000}"
        self.bridge_ns = f"{self.tag}-br"
        self.names = [f"{self.tag}-h{i}" for i in range(len(self.layout))]
        self.addrs = [f"{SUBNET}.{i + 1}" for i in range(len(self.layout))]
        self.log_dir = log_dir or "/tmp"
        self.keepers: list = []
        self.jobs: list = []

    # -- set-up and teardown --------------------------------------------------------------
    def __enter__(self) -> "NetnsHosts":
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _create(self) -> None:
        br = self.bridge_ns
        if not self.pair:
            _sh("ip", "netns", "add", br)
            _sh("ip", "-n", br, "link", "add", "br0", "type", "bridge")
            _sh("ip", "-n", br, "link", "set", "br0", "up")
        for ns in self.names:
            _sh("ip", "netns", "add", ns)
        if self.pair:  # one cable, each end inside a host
            _sh("ip", "link", "add", IFNAME, "netns", self.names[0], "type", "veth", "peer", "name", IFNAME, "netns",
                self.names[1])
        for i, ns in enumerate(self.names):
            if not self.pair:
                _sh("ip", "link", "add", IFNAME, "netns", ns, "type", "veth", "peer", "name", f"h{i}", "netns", br)
                _sh("ip", "-n", br, "link", "set", f"h{i}", "master", "br0", "up")
            _sh("ip", "-n", ns, "addr", "add", f"{self.addrs[i]}/24", "dev", IFNAME)
            _sh("ip", "-n", ns, "link", "set", IFNAME, "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
            # The keeper: its own hostname, IPC namespace and /dev/shm, kept alive for nsenter.
            keeper = subprocess.Popen(
                ["ip", "netns", "exec", ns, "unshare", "--uts", "--ipc", "--mount", "--propagation", "private",
                 "sh", "-c", f"hostname {ns} && mount -t tmpfs -o size=2g,mode=1777 tmpfs /dev/shm && "
                 "echo ready && exec sleep 100000"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
            self.keepers.append(keeper)
            line = keeper.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"host {i} keeper failed: {keeper.stderr.read()}")

    def close(self) -> None:
        """Kills every process in the hosts' namespaces and deletes them (links go with them)."""
        for j in self.jobs:
            j.kill()
        for ns in self.names + [self.bridge_ns]:
            _kill_netns_processes(ns)
        for k in self.keepers:
            if k.poll() is None:
                k.kill()
            k.wait(timeout=10)
        for ns in self.names + [self.bridge_ns]:
            _sh("ip", "netns", "del", ns, check=False)

    # -- running things inside a host -----------------------------------------------------
    def enter(self, host: int) -> list:
        """The command prefix that runs what follows inside host ``host``'s namespaces."""
        return ["nsenter", "-t", str(self.keepers[host].pid), "-n", "-u", "-i", "-m", f"--wd={REPO}", "--"]

    def run(self, host: int, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return _sh(*self.enter(host), *cmd, timeout=timeout, check=False)

    def shm_segments(self, host: int) -> list:
        """The fastallreduce segments in host ``host``'s private /dev/shm."""
        out = self.run(host, "ls", "-1", "/dev/shm").stdout.split()
        return sorted(f for f in out if f.startswith("fastallreduce_"))

    def rank_pids(self, host: int) -> list:
        """Pids of Python processes still running in the host (its agents and ranks)."""
        pids = _sh("ip", "netns", "pids", self.names[host], check=False).stdout.split()
        keeper = self.keepers[host].pid
        return [int(p) for p in pids if int(p) != keeper]

    def link(self, host: int, up: bool) -> None:
        """Plugs host ``host``'s cable in or out (the bridge's end of its veth; with one veth pair,
        the host's own end)."""
        if self.pair:
            _sh("ip", "-n", self.names[host], "link", "set", IFNAME, "up" if up else "down")
        else:
            _sh("ip", "-n", self.bridge_ns, "link", "set", f"h{host}", "up" if up else "down")

    def _env(self, env: Optional[dict]) -> dict:
        e = {k: v for k, v in os.environ.items() if not k.startswith("FASTALLREDUCE_HOST_ID")}
        # A script's own directory is on its sys.path already (tests/ for tests/netns_job.py).
        e.update({"GLOO_SOCKET_IFNAME": IFNAME, "OMP_NUM_THREADS": "1",
                  "PYTHONPATH": os.pathsep.join(filter(None, [REPO, e.get("PYTHONPATH")]))})
        e.update(env or {})
        return e

    def _start(self, host: int, cmd: list, env: dict, logs: list) -> subprocess.Popen:
        log = os.path.join(self.log_dir, f"{self.names[host]}-{len(self.jobs)}-{len(logs)}.log")
        with open(log, "w") as f:
            p = subprocess.Popen(self.enter(host) + cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=REPO,
                                 start_new_session=True)
        logs.append(log)
        return p

    def spawn(self, argv: Sequence[str], env: Optional[dict] = None, master_port: int = MASTER_PORT) -> Job:
        """Starts every rank of ``argv`` directly in its host, without torchrun: RANK, WORLD_SIZE,
        LOCAL_RANK, GROUP_RANK, MASTER_ADDR (host 0) and MASTER_PORT in the environment, as a
        user's own launcher sets them for ``init_process_group`` from environment variables."""
        procs, logs = [], []
        world = sum(self.layout)
        for i, n in enumerate(self.layout):
            for lr in range(n):
                rank = sum(self.layout[:i]) + lr
                e = self._env(dict(env or {}, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(lr),
                                   GROUP_RANK=str(i), MASTER_ADDR=self.addrs[0], MASTER_PORT=str(master_port)))
                procs.append(self._start(i, [sys.executable, *argv], e, logs))
        job = Job(procs, logs)
        self.jobs.append(job)
        return job

    def torchrun(self, argv: Sequence[str], env: Optional[dict] = None, master_port: int = MASTER_PORT) -> Job:
        """Starts ``torchrun --nnodes H --nproc-per-node L_i --node-rank i argv`` in every host.

        Rendezvous on host 0's address; GLOO_SOCKET_IFNAME is the host's link. No
        FASTALLREDUCE_HOST_ID: the ranks find out which of them share a host by themselves.
        """
        procs, logs = [], []
        for i, n in enumerate(self.layout):
            cmd = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={len(self.layout)}",
                   f"--nproc-per-node={n}", f"--node-rank={i}", f"--master-addr={self.addrs[0]}",
                   f"--master-port={master_port}", "--max-restarts=0", "--monitor-interval=0.5", *argv]
            procs.append(self._start(i, cmd, self._env(env), logs))
        job = Job(procs, logs)
        self.jobs.append(job)
        return job
