"""The Python package's inner walls: no import cycle between its modules, and no module importing
another module's private names (a leading underscore). Read from the source, every import
counted, also those inside functions: a lazy import hides a cycle, it does not remove it."""
import ast
import os

import pytest

PKG = os.path.join(os.path.dirname(__file__), "..", "fastallreduce")
ROOT = os.path.dirname(os.path.abspath(PKG))


def _modules() -> dict:
    mods = {}
    for root, _, files in os.walk(os.path.abspath(PKG)):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                mods[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return mods


def _imports():
    """(importing module, imported module or None, imported name or None) for every import."""
    mods = _modules()
    for mod, path in mods.items():
        package = mod if path.endswith("__init__.py") else mod.rpartition(".")[0]
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("fastallreduce"):
                        yield mod, a.name, None
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                if not base.startswith("fastallreduce"):
                    continue
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    # `from pkg import module` imports the module (the extension _C counts as one).
                    if sub in mods or a.name == "_C":
                        yield mod, sub, None
                    else:
                        yield mod, base, a.name


def test_no_module_imports_private_names():
    private = [(m, f"{target}.{name}") for m, target, name in _imports()
               if name and name.startswith("_") and not name.startswith("__") and target != "fastallreduce._C"]
    assert not private, "modules importing another module's private names: " + ", ".join(
        f"{m} imports {n}" for m, n in private)


def test_no_import_cycle():
    mods = _modules()
    edges: dict = {}
    for m, target, _ in _imports():
        if target in mods and target != m:
            edges.setdefault(m, set()).add(target)
    # Depth-first search for a back edge; the cycle is reported as a path.
    state: dict = {}
    stack: list = []

    def visit(v):
        state[v] = "open"
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if state.get(w) == "open":
                return stack[stack.index(w):] + [w]
            if w not in state:
                found = visit(w)
                if found:
                    return found
        stack.pop()
        state[v] = "done"
        return None

    for v in sorted(mods):
        if v not in state:
            cycle = visit(v)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("source,expect", [
    ("from .b import _x\n", "fastallreduce.a imports fastallreduce.b._x"),
    ("from . import b\n", None),
])
def test_the_checks_see_a_violation(tmp_path, monkeypatch, source, expect):
    # The walls above must be able to fail: a package with a private import and a cycle.
    pkg = tmp_path / "fastallreduce"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text(source)
    (pkg / "b.py").write_text("from . import a\n_x = 1\n")
    monkeypatch.setattr(__import__(__name__), "PKG", str(pkg))
    monkeypatch.setattr(__import__(__name__), "ROOT", str(tmp_path))
    if expect:
        with pytest.raises(AssertionError, match=expect.replace(".", r"\.")):
            test_no_module_imports_private_names()
    with pytest.raises(AssertionError, match="import cycle"):
        test_no_import_cycle()
