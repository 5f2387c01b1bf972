"""Every message the code marks for translation, found where it is written:

- templates: the Jinja AST's calls to ``_("...")`` and ``ngettext("...", "...", n)``, and
  ``t("...")`` / ``GF.t("...")`` in inline scripts;
- the pages' scripts (``web/static/*.js``): ``t("...")`` and ``GF.t("...")``;
- Python: calls to ``_``, ``N_``, ``translate``, ``plural``, ``tr`` (a translator bound to a
  language, as in the e-mailed report), ``msg`` and ``nmsg`` (an ``i18n.Msg`` rendered later)
  and ``i18n.*`` of those, with a string literal first argument; ``pgettext`` and ``pmsg``
  with two (``ast``).

Run as a script it prints the messages the zh-CN catalogue lacks (to translate them)."""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

from jinja2 import Environment, nodes

SRC = Path(__file__).resolve().parents[2] / "src" / "gpufleet"
TEMPLATES = SRC / "web" / "templates"
STATIC = SRC / "web" / "static"

# t("...") or GF.t("...") with a double-quoted literal (the scripts' one style); tc("context",
# "...") for a word with two meanings, catalogued as "context\x04msgid" (gettext's pgettext)
JS_CALL = re.compile(r'(?<![\w$])(?:GF\.)?t\(\s*"((?:[^"\\]|\\.)*)"')
JS_CONTEXT_CALL = re.compile(r'(?<![\w$])(?:GF\.)?tc\(\s*"([^"]*)"\s*,\s*"((?:[^"\\]|\\.)*)"')
# tr: a translator bound to a language; msg / nmsg: a message rendered later (i18n.Msg)
PY_FUNCS = {"_", "N_", "translate", "plural", "tr", "msg", "nmsg"}


def _js_unescape(s: str) -> str:
    return json.loads(f'"{s}"')


def from_js(text: str) -> set[str]:
    found = {_js_unescape(m) for m in JS_CALL.findall(text)}
    return found | {f"{c}\x04{_js_unescape(m)}" for c, m in JS_CONTEXT_CALL.findall(text)}


def from_template(text: str, env: Environment | None = None) -> set[str]:
    env = env or Environment()
    found: set[str] = set()
    for call in env.parse(text).find_all(nodes.Call):
        if isinstance(call.node, nodes.Name) and call.node.name in ("_", "ngettext"):
            for arg in call.args[:1]:  # ngettext's plural: English only (Chinese has one form)
                if isinstance(arg, nodes.Const) and isinstance(arg.value, str):
                    found.add(arg.value)
    for script in re.findall(r"<script>(.*?)</script>", text, re.S):
        found |= from_js(script)
    return found


def from_python(text: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
        if name in ("pgettext", "pmsg"):  # pgettext("job state", "held"): "job state\x04held"
            a = node.args
            if len(a) >= 2 and all(isinstance(x, ast.Constant) for x in a[:2]):
                found.add(f"{a[0].value}\x04{a[1].value}")  # type: ignore[attr-defined]
            continue
        if name not in PY_FUNCS:
            continue
        for arg in node.args[:1]:  # plural's "other" form: English only
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.add(arg.value)
    return found


def messages() -> dict[str, set[str]]:
    """Where each kind of message is used: ``js`` (shipped to the scripts) and ``other``."""
    js: set[str] = set()
    for p in sorted(STATIC.glob("*.js")):
        js |= from_js(p.read_text())
    other: set[str] = set()
    for p in sorted(TEMPLATES.glob("*.html")):
        text = p.read_text()
        other |= from_template(text)
        for script in re.findall(r"<script>(.*?)</script>", text, re.S):
            js |= from_js(script)
    for p in sorted(SRC.rglob("*.py")):
        if "i18n" in p.parts:
            continue
        other |= from_python(p.read_text())
    return {"js": js, "other": other - js}


if __name__ == "__main__":
    cat = json.loads((SRC / "i18n" / "zh-CN.json").read_text())
    merged = {k: v for sec in cat.values() for k, v in sec.items()}
    found = messages()
    section = sys.argv[1] if len(sys.argv) > 1 else None
    for kind, ids in found.items():
        for m in sorted(ids - set(merged if kind == "other" else cat.get("js", {}))):
            if section in (None, kind):
                print(f"{kind}\t{m}")
