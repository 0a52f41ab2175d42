"""The C++ layers include only downwards, as the README's architecture table says:
common <- kernels <- transport <- algorithms <- engine <- backend <- bindings (cuda: kernels)."""
import os
import re

CSRC = os.path.join(os.path.dirname(__file__), "..", "csrc")
LAYERS = {"common": 0, "kernels": 1, "cuda": 1, "transport": 2, "algorithms": 3, "engine": 4, "backend": 5,
          "bindings": 6}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def _includes():
    edges = []
    for root, _, files in os.walk(CSRC):
        for f in files:
            path = os.path.join(root, f)
            src = os.path.relpath(path, CSRC)
            with open(path, encoding="utf-8") as fh:
                for inc in INCLUDE.findall(fh.read()):
                    edges.append((src, inc))
    return edges


def test_every_directory_is_a_layer():
    dirs = {d for d in os.listdir(CSRC) if os.path.isdir(os.path.join(CSRC, d))}
    assert dirs == set(LAYERS), dirs ^ set(LAYERS)


def test_includes_run_downwards():
    edges = _includes()
    assert len(edges) > 40
    upward = [(s, i) for s, i in edges if LAYERS[i.split("/")[0]] > LAYERS[s.split("/")[0]]]
    assert not upward, upward
    # Within a layer, includes are allowed, but files do not include each other in a loop.
    graph: dict = {}
    for s, i in edges:
        graph.setdefault(s, set()).add(i)
    state: dict = {}

    def visit(n, path):
        if state.get(n) == 1:
            raise AssertionError("include cycle: " + " -> ".join(path + [n]))
        if state.get(n) == 2:
            return
        state[n] = 1
        for m in graph.get(n, ()):
            visit(m, path + [n])
        state[n] = 2

    for n in list(graph):
        visit(n, [])


def test_readme_names_the_layers_in_order():
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md"), encoding="utf-8").read()
    line = next(l for l in readme.splitlines() if l.startswith("common -> kernels"))
    order = [w for w in re.findall(r"[a-z]+", line) if w in LAYERS]
    assert order == sorted(order, key=LAYERS.get) and set(order) == set(LAYERS), line
