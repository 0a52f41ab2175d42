"""fastallreduce/_C.pyi says what the built extension exports: every name of ``_C`` and every
member of its classes is in the stub with the same kind (class, function, variable; method,
property, class attribute) and the same parameter names, and the stub has nothing ``_C`` lacks."""
import ast
import os
import re

import pytest

from fastallreduce import _C

STUB = os.path.join(os.path.dirname(__file__), "..", "fastallreduce", "_C.pyi")
CUDA_ONLY = {"sgd_step_cuda"}
# pybind11's own members of every class it makes.
PYBIND_INTERNAL = {"_pybind11_conduit_v1_"}
_PARAMS = re.compile(r"^\w+\((.*?)\) ->", re.S)


def _stub():
    tree = ast.parse(open(STUB, encoding="utf-8").read(), STUB)
    top, classes = {}, {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            top[node.name] = "class"
            members = {}
            for m in node.body:
                if isinstance(m, ast.FunctionDef):
                    prop = any(isinstance(d, ast.Name) and d.id == "property" for d in m.decorator_list)
                    members[m.name] = ("property", None) if prop else ("method", [a.arg for a in m.args.args][1:])
                elif isinstance(m, ast.AnnAssign):
                    members[m.target.id] = ("attribute", None)
            classes[node.name] = members
        elif isinstance(node, ast.FunctionDef):
            top[node.name] = ("function", [a.arg for a in node.args.args])
        elif isinstance(node, ast.AnnAssign):
            top[node.target.id] = "variable"
    return top, classes


def _params(obj) -> list:
    """Parameter names from pybind11's signature line (``self`` left out)."""
    m = _PARAMS.match((obj.__doc__ or "").strip())
    assert m, obj
    names = [p.split(":")[0].strip() for p in re.split(r",\s*(?![^\[]*\])", m.group(1)) if p.strip()]
    return [n for n in names if n != "self"]


def _runtime():
    top, classes = {}, {}
    for name in dir(_C):
        if name.startswith("__"):
            continue
        obj = getattr(_C, name)
        if isinstance(obj, type):
            top[name] = "class"
            members = {}
            if not issubclass(obj, Exception):
                for m, v in vars(obj).items():
                    if (m.startswith("__") and m != "__init__") or m in PYBIND_INTERNAL or m == "__members__":
                        continue
                    if isinstance(v, property):
                        members[m] = ("property", None)
                    elif isinstance(v, obj):
                        members[m] = ("attribute", None)
                    else:
                        members[m] = ("method", _params(v))
            classes[name] = members
        elif callable(obj):
            top[name] = ("function", _params(obj))
        else:
            top[name] = "variable"
    return top, classes


def test_stub_lists_every_export_with_its_kind():
    stub_top, stub_classes = _stub()
    top, classes = _runtime()
    missing = {n: k for n, k in top.items() if stub_top.get(n) != k}
    assert not missing, f"in _C but not in the stub as such: {missing}"
    extra = set(stub_top) - set(top) - (set() if _C.with_cuda else CUDA_ONLY)
    assert not extra, f"in the stub but not in _C: {extra}"


@pytest.mark.parametrize("cls", sorted(n for n, k in _runtime()[0].items() if k == "class"))
def test_stub_lists_every_member(cls):
    have = _runtime()[1][cls]
    stub = {m: k for m, k in _stub()[1][cls].items() if m != "__members__"}
    # The stub's __init__ of an exception is inherited: only pybind11 classes list theirs.
    assert {m: k for m, k in have.items()} == stub, cls
