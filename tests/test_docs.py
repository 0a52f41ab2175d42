"""The documentation stays true to the code: docs/api.md is what scripts/api_docs.py makes from the
docstrings today, and every relative link in README.md, CHANGELOG.md and docs/ points at a file."""
import importlib.util
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _api_docs():
    spec = importlib.util.spec_from_file_location("api_docs", os.path.join(ROOT, "scripts", "api_docs.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_api_page_is_current():
    api_docs = _api_docs()
    with open(os.path.join(ROOT, "docs", "api.md"), encoding="utf-8") as f:
        committed = f.read()
    # Regenerated in memory: a changed docstring or signature without `python scripts/api_docs.py` fails here.
    assert api_docs.render() == committed, "docs/api.md is out of date: run python scripts/api_docs.py"


def test_api_page_covers_every_public_name():
    api_docs = _api_docs()
    page = api_docs.render()
    assert "no docstring" not in page
    for modname, names in api_docs.API:
        for name in names:
            assert f"`{modname}.{name}" in page, (modname, name)
    for method in ("allreduce", "broadcast", "all_gather", "reduce_scatter", "close", "abort"):
        assert f"`Communicator.{method}(" in page


def test_markdown_rendering():
    md = _api_docs().markdown
    doc = """Head with ``code`` and :class:`~a.b.Thing` and :func:`f`.

    Formula::

        x = 1
          y = 2

    Args:
        first: one line
            and its continuation.
        second: two.

    Raises:
        ValueError: when.
    """
    out = md(doc)
    assert "Head with `code` and `Thing` and `f`." in out
    assert "Formula:\n\n```\nx = 1\n  y = 2\n```" in out
    assert "* `first`: one line and its continuation.\n* `second`: two." in out
    assert "**Raises:**\n\n* `ValueError`: when." in out


def test_relative_links_resolve():
    pages = ["README.md", "CHANGELOG.md"] + [os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs"))
                                             if f.endswith(".md")]
    broken = []
    for page in pages:
        with open(os.path.join(ROOT, page), encoding="utf-8") as f:
            text = f.read()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target:
                continue
            if not os.path.exists(os.path.normpath(os.path.join(ROOT, os.path.dirname(page), target))):
                broken.append((page, target))
    assert not broken, broken


def test_readme_stays_a_front_page():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) <= 150, len(lines)
    commands = [l.split("#")[0].strip() for l in lines if l.startswith("bash scripts/")]
    assert commands[:2] == ["bash scripts/main.sh", "bash scripts/test.sh"], commands
