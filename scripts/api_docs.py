"""Writes docs/api.md from the docstrings of fastallreduce's public Python API.

    python scripts/api_docs.py            # rewrite docs/api.md
    python scripts/api_docs.py --check    # exit 1 when docs/api.md is not what it would write

The docstrings are the source: this only orders them, renders signatures as written in the code,
and turns their reStructuredText habits (roles, ``literals``, ``::`` blocks, Args/Raises sections)
into Markdown. tests/test_docs.py checks that the committed page is current.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import os
import re
import sys
from typing import Any, Callable, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "docs", "api.md")

# (module, [names]) in page order; a class lists its own public members after it.
API: list[tuple[str, list[str]]] = [
    ("fastallreduce", ["Communicator", "ALGORITHMS", "OPS", "CommError", "MismatchError", "CommTimeoutError",
                       "ClosedError"]),
    ("fastallreduce.ddp", ["register", "allreduce_hook", "HookState", "ZERO_COPY_FALLBACKS"]),
    ("fastallreduce.fused", ["register_fused_optimizer", "fused_sgd_hook", "FusedSGDState"]),
    ("fastallreduce.optim", ["SGD", "WarmupSchedule", "scaled_lr", "param_groups", "zero_init_last_bn",
                             "NORM_LAYERS"]),
    ("fastallreduce.optim.cuda", ["CUDA_SGD_PATHS", "cuda_sgd_path"]),
    ("fastallreduce.arrays", ["ArrayFuture", "as_tensor"]),
    ("fastallreduce.backend", ["BACKEND_NAME", "register", "get_backend", "world_group",
                               "create_backend"]),
    ("fastallreduce.knobs", ["KNOBS", "EXTERNAL", "Knob", "knob", "value", "parse", "is_set", "markdown_table"]),
]
SECTIONS = ("Args", "Returns", "Raises")
_ROLE = re.compile(r":(?:class|func|meth|data|mod|attr|exc):`(~?)([^`]+)`")


class _Text:
    """An annotation shown as this text (inspect prints an annotation with its repr)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _annotation(a: Any) -> Any:
    if a is inspect.Parameter.empty:
        return a
    # Strings are annotations as written (modules with postponed evaluation); others are objects.
    text = a if isinstance(a, str) else inspect.formatannotation(a)
    for long, short in (("torch.distributed.distributed_c10d.", "torch.distributed."),
                        ("torch._C._distributed_c10d.", "torch.distributed.")):
        text = text.replace(long, short)
    return _Text(text)


def signature(obj: Callable) -> str:
    """``(args) -> result`` as written in the source; ``self`` left out."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    params = [p.replace(annotation=_annotation(p.annotation)) for p in sig.parameters.values()]
    if params and params[0].name == "self":
        params = params[1:]
    return str(sig.replace(parameters=params, return_annotation=_annotation(sig.return_annotation)))


def _inline(text: str) -> str:
    """reST roles and ``literals`` as Markdown code spans."""
    text = _ROLE.sub(lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`", text)
    return text.replace("``", "`")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def markdown(doc: Optional[str]) -> str:
    """A docstring as Markdown: ``::`` blocks fenced, Args/Returns/Raises as lists."""
    if not doc:
        return "*(no docstring)*"
    lines = inspect.cleandoc(doc).splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.rstrip(":") in SECTIONS and stripped.endswith(":"):
            out += ["", f"**{stripped[:-1]}:**", ""]
            base = _indent(line)
            i += 1
            while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
                item = lines[i].strip()
                if item and _indent(lines[i]) == base + 4 and re.match(r"[\w, *]+:", item):
                    name, _, rest = item.partition(":")
                    out.append(f"* `{name.strip()}`:{_inline(rest)}")
                elif item and out and out[-1].startswith("* "):
                    out[-1] += " " + _inline(item)  # continuation of the item above
                elif item:
                    out.append(_inline(item))
                i += 1
            out.append("")
            continue
        if stripped.endswith("::"):
            head = line[:-1].rstrip(":").rstrip()
            if head.strip():
                out.append(_inline(head) + ":")
            base = _indent(line)
            block: list[str] = []
            i += 1
            while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            while block and not block[0].strip():
                block.pop(0)
            cut = min((_indent(b) for b in block if b.strip()), default=0)
            out += ["", "```"] + [b[cut:] for b in block] + ["```", ""]
            continue
        out.append(_inline(line))
        i += 1
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _constant_note(module: Any, name: str) -> str:
    """The ``#:`` comment above ``name = ...`` in the module's source."""
    try:
        src = inspect.getsource(module).splitlines()
    except (OSError, TypeError):
        return ""
    for k, line in enumerate(src):
        if re.match(rf"{name}\s*(:[^=]*)?=", line):
            notes = []
            j = k - 1
            while j >= 0 and src[j].lstrip().startswith("#:"):
                notes.insert(0, src[j].lstrip()[2:].strip())
                j -= 1
            return " ".join(notes)
    return ""


def _value(v: Any) -> str:
    if isinstance(v, (tuple, list)) and all(isinstance(x, type) for x in v):
        return "(" + ", ".join(x.__name__ for x in v) + ")"
    return repr(v)


def _members(cls: type) -> list[tuple[str, Any]]:
    """The class's public methods and properties that have a docstring, in source order: its own,
    then those of the project's classes it inherits from (mixins)."""
    out, seen = [], set()
    own = [k for k in cls.__mro__ if k.__module__.split(".")[0] == cls.__module__.split(".")[0]]
    for name, v in [item for k in own for item in vars(k).items()]:
        if name.startswith("_") or name in seen:
            continue
        seen.add(name)
        f = v.fget if isinstance(v, property) else v
        if callable(f) and getattr(f, "__doc__", None) and f.__name__ == name:  # aliases are left out
            out.append((name, v))
    return out


def entry(module: Any, modname: str, name: str) -> list[str]:
    """The Markdown of one public name."""
    obj = getattr(module, name)
    qual = f"{modname}.{name}"
    if inspect.isclass(obj):
        if issubclass(obj, BaseException):
            bases = ", ".join(b.__name__ for b in obj.__bases__)
            return [f"### `{qual}`", "", f"Exception (subclass of `{bases}`).", "", markdown(obj.__doc__), ""]
        lines = [f"### `{qual}{signature(obj)}`", "", markdown(obj.__doc__), ""]
        for mname, m in _members(obj):
            if isinstance(m, property):
                lines += [f"#### `{name}.{mname}` (property)", "", markdown(m.fget.__doc__), ""]
            else:
                lines += [f"#### `{name}.{mname}{signature(m)}`", "", markdown(m.__doc__), ""]
        return lines
    if callable(obj):
        return [f"### `{qual}{signature(obj)}`", "", markdown(obj.__doc__), ""]
    note = _constant_note(importlib.import_module(getattr(obj, "__module__", None) or modname), name) \
        or _constant_note(module, name)
    return [f"### `{qual}`", "", f"`{_value(obj)}`" + (f": {_inline(note)}" if note else ""), ""]


def render() -> str:
    """The whole page."""
    lines = ["# Python API", "",
             "Generated from the docstrings by `python scripts/api_docs.py`; do not edit by hand "
             "(tests/test_docs.py checks that it is current). How the pieces fit: "
             "[usage.md](usage.md), [recipe.md](recipe.md), [backend.md](backend.md).", ""]
    for modname, names in API:
        module = importlib.import_module(modname)
        lines += [f"## `{modname}`", "", markdown(module.__doc__).split("\n\n")[0], ""]
        for name in names:
            lines += entry(module, modname, name)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Writes docs/api.md from the public API's docstrings.")
    p.add_argument("--check", action="store_true", help="exit 1 when docs/api.md is out of date")
    args = p.parse_args(argv)
    page = render()
    if args.check:
        current = open(OUT, encoding="utf-8").read() if os.path.exists(OUT) else ""
        if current != page:
            print(f"{OUT} is out of date: run python scripts/api_docs.py", file=sys.stderr)
            return 1
        return 0
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(page)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, ROOT)  # the checkout's package, not an installed one
    sys.exit(main())
