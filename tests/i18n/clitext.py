"""The CLI's help texts, as ``gpufleet.i18n.clickhelp`` looks them up: every ``help=`` of a
click option, argument or command and every prose paragraph of a command's docstring (an
example line, a command without a full stop, or a ``\\b`` block, stays as written)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from gpufleet.i18n.clickhelp import fold

SRC = Path(__file__).resolve().parents[2] / "src" / "gpufleet"
CLICK_CALLS = {"option", "argument", "command", "group", "version_option", "password_option"}


def _is_click(node: ast.expr) -> bool:
    f = node.func if isinstance(node, ast.Call) else node
    return isinstance(f, ast.Attribute) and f.attr in CLICK_CALLS


def paragraphs(doc: str) -> list[str]:
    out = []
    for p in inspect.cleandoc(doc).split("\f")[0].split("\n\n"):
        s = p.strip()
        example = s.startswith(("gpufleet ", "$")) and not s.endswith(".")
        if not s or example or s.startswith(("\b", "-", "{")):
            continue
        out.append(fold(s))
    return out


def from_python(text: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Call) and _is_click(node):
            for kw in node.keywords:
                if kw.arg in ("help", "short_help") and isinstance(kw.value, ast.Constant):
                    found.add(fold(str(kw.value.value)))
        if isinstance(node, ast.FunctionDef) and any(_is_click(d) for d in node.decorator_list):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                found.update(paragraphs(doc))
    return found


def help_texts() -> set[str]:
    found: set[str] = set()
    for p in sorted(SRC.rglob("*.py")):
        found |= from_python(p.read_text())
    return found


if __name__ == "__main__":
    import json

    cat = json.loads((SRC / "i18n" / "zh-CN.json").read_text())
    for m in sorted(help_texts() - set(cat.get("cli", {}))):
        print(m)
