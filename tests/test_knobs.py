"""The knob registry (fastallreduce/knobs.py) is the one declaration of every FASTALLREDUCE_*
variable: the files generated from it are current, nothing reads such a variable around it, every
such name anywhere in the repository is declared, and the engine's defaults and ranges are the
registry's."""
import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from fastallreduce import ALGORITHMS, knobs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Names that look like knobs but are not variables: a preprocessor macro, a test's backend name.
NOT_VARIABLES = {"FASTALLREDUCE_WITH_CUDA", "FASTALLREDUCE_PY"}
NAME = re.compile(r"FASTALLREDUCE_[A-Z0-9_]*[A-Z0-9]")


def _gen():
    spec = importlib.util.spec_from_file_location("gen_knobs", os.path.join(ROOT, "scripts", "gen_knobs.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tracked() -> list:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [p for p in out.splitlines() if os.path.isfile(os.path.join(ROOT, p))]


def test_generated_files_are_current():
    gen = _gen()
    stale = [os.path.relpath(p, ROOT) for p, want in gen.outputs(gen.load_knobs()).items()
             if open(p, encoding="utf-8").read() != want]
    assert not stale, f"stale: {stale}; run python scripts/gen_knobs.py"


def test_every_name_in_the_repository_is_declared():
    declared = {k.name for k in knobs.KNOBS}
    unknown = {}
    for path in _tracked():
        try:
            text = open(os.path.join(ROOT, path), encoding="utf-8").read()
        except UnicodeDecodeError:
            continue
        for name in set(NAME.findall(text)) - declared - NOT_VARIABLES:
            unknown.setdefault(name, path)
    assert not unknown, f"FASTALLREDUCE_* names not declared in fastallreduce/knobs.py: {unknown}"


def _env_reads(source: str, path: str) -> list:
    """Reads of os.environ / os.getenv whose key is a FASTALLREDUCE_* literal or a module constant
    holding one."""
    tree = ast.parse(source, path)
    consts = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
              and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
              for t in n.targets if isinstance(t, ast.Name)}

    def knob_key(node) -> str:
        v = node.value if isinstance(node, ast.Constant) else consts.get(getattr(node, "id", None))
        return v if isinstance(v, str) and v.startswith("FASTALLREDUCE_") else ""

    def is_environ(node) -> bool:
        return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
            isinstance(node, ast.Name) and node.id == "environ")

    found = []
    for node in ast.walk(tree):
        key = None
        if isinstance(node, ast.Call) and node.args:
            f = node.func
            if (isinstance(f, ast.Attribute) and f.attr in ("get", "pop", "setdefault") and is_environ(f.value)) or (
                    isinstance(f, ast.Attribute) and f.attr == "getenv") or (isinstance(f, ast.Name) and f.id == "getenv"):
                key = node.args[0]
        elif isinstance(node, ast.Subscript) and is_environ(node.value) and isinstance(node.ctx, ast.Load):
            key = node.slice
        elif isinstance(node, ast.Compare) and len(node.comparators) == 1 and is_environ(node.comparators[0]):
            key = node.left
        if key is not None and knob_key(key):
            found.append(f"{path}:{node.lineno} reads {knob_key(key)}")
    return found


_CXX_READ = re.compile(r'getenv\s*\(\s*"FASTALLREDUCE_|"FASTALLREDUCE_[A-Z0-9_]+"')


def test_nothing_reads_a_knob_around_the_registry():
    reads = []
    for path in _tracked():
        full = os.path.join(ROOT, path)
        if path.endswith(".py") and path != "fastallreduce/knobs.py":
            reads += _env_reads(open(full, encoding="utf-8").read(), path)
        elif path.startswith("csrc/") and path != "csrc/common/knobs.h":
            for i, line in enumerate(open(full, encoding="utf-8"), 1):
                if _CXX_READ.search(line.split("//")[0]):
                    reads.append(f"{path}:{i} names a knob outside csrc/common/knobs.h")
    assert not reads, "\n".join(reads)


@pytest.mark.parametrize("source", [
    'import os\nx = os.environ.get("FASTALLREDUCE_LOG", "")\n',
    'import os\nK = "FASTALLREDUCE_LOG"\nx = os.environ[K]\n',
    'from os import getenv\nx = getenv("FASTALLREDUCE_LOG")\n',
    'import os\nx = "FASTALLREDUCE_LOG" in os.environ\n',
])
def test_the_read_check_sees_a_read(source):
    assert _env_reads(source, "x.py"), source


def test_registry_values_are_typed_and_checked(monkeypatch):
    monkeypatch.setenv("FASTALLREDUCE_SOAK_OPS", " 7 ")
    assert knobs.value("FASTALLREDUCE_SOAK_OPS") == 7
    monkeypatch.setenv("FASTALLREDUCE_SOAK_OPS", "0")
    with pytest.raises(ValueError, match=r"FASTALLREDUCE_SOAK_OPS='0' is out of range: it must be an integer in \[1, "):
        knobs.value("FASTALLREDUCE_SOAK_OPS")
    monkeypatch.setenv("FASTALLREDUCE_CUDA_SGD", "Kernel")
    assert knobs.value("FASTALLREDUCE_CUDA_SGD") == "kernel"
    monkeypatch.setenv("FASTALLREDUCE_CUDA_SGD", "")
    assert knobs.value("FASTALLREDUCE_CUDA_SGD") == "torch"
    with pytest.raises(KeyError, match="not a fastallreduce knob"):
        knobs.value("FASTALLREDUCE_" + "NOPE")  # built, so that the name check above does not see it
    assert knobs.knob("FASTALLREDUCE_BACKEND_ALGORITHM").choices == ALGORITHMS


_ENGINE_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch.distributed as dist
    import fastallreduce as far
    from fastallreduce import knobs
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    engine = [k for k in knobs.KNOBS if k.reader == "engine"]
    for k in engine:
        os.environ.pop(k.name, None)
    c = far.Communicator()
    out = {"defaults": {k.name: c.config[k.name] for k in engine}, "refused": {}}
    c.close()
    for k in engine:
        for bad in (k.lo - 1, k.hi * 2):
            os.environ[k.name] = repr(int(bad) if k.kind == "int" else bad)
            try:
                far.Communicator().close()
                out["refused"][k.name + "=" + os.environ[k.name]] = "accepted"
            except ValueError as e:
                out["refused"][k.name + "=" + os.environ[k.name]] = str(e)
            del os.environ[k.name]
    print(json.dumps(out))
""")


@pytest.mark.timeout(120)
def test_engine_takes_the_registry_defaults_and_ranges():
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo")
    p = subprocess.run([sys.executable, "-c", _ENGINE_SCRIPT], capture_output=True, text=True, env=env, timeout=100,
                       cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    for k in knobs.KNOBS:
        if k.reader == "engine":
            assert float(out["defaults"][k.name]) == float(k.default), (k.name, out["defaults"][k.name])
    for what, msg in out["refused"].items():
        assert what.split("=")[0] in msg and "out of range" in msg, (what, msg)
