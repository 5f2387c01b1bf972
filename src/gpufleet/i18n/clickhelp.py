"""The command line in the current language (``gpufleet.i18n.current``).

- Help texts: ``TranslatingFormatter`` (click's ``Context.formatter_class``) looks each
  paragraph of a command's help and each option's help up in the catalogue when the help is
  printed (the msgid is the English text, whitespace folded to single spaces), so the
  ``help=`` strings and docstrings stay plain English in the code.
- A group's list of sub-commands shows each one's translated first sentence (``short_help``).
- Chinese help is wrapped by display width (``wrap_text``): click counts characters, and a
  Chinese character takes two terminal columns.
- click's own messages ("Usage:", "Options", "Error: ...", "'x' is not one of ...") are marked
  for gettext inside click; ``install`` points click's modules' ``_`` and ``ngettext`` at the
  catalogue's ``click`` section instead of the (absent) system .mo files.
"""

from __future__ import annotations

import inspect
import re
import unicodedata
from collections.abc import Iterable
from typing import Any

import click
import click.formatting

from gpufleet.i18n import ENGLISH, catalogue, current, sections, width


def fold(text: str) -> str:
    """The msgid of a help paragraph: its words, single-spaced."""
    return " ".join(text.split())


def translate_help(text: str) -> str:
    """Each paragraph of ``text`` translated when the catalogue has it, else left as is."""
    lang = current.get()
    if lang == ENGLISH or not text:
        return text
    cat = catalogue(lang)
    parts = re.split(r"(\n\s*\n)", text)
    return "".join(cat.get(fold(p), p) if p.strip() else p for p in parts)


_EXTRAS = re.compile(r"^(.*?)(\s\s\[[^\[\]]*\])?$", re.S)


class TranslatingFormatter(click.HelpFormatter):
    def write_heading(self, heading: str) -> None:
        super().write_heading(_gettext(heading))  # "Commands" of gpufleet's own command list

    def write_text(self, text: str) -> None:
        super().write_text(translate_help(text))

    def write_dl(
        self, rows: Iterable[tuple[str, str]], col_max: int = 30, col_spacing: int = 2
    ) -> None:
        out = []
        for term, desc in rows:
            m = _EXTRAS.match(desc)
            if m and m.group(1):  # "help text  [default: x]": the [...] came through click's _
                desc = translate_help(m.group(1)) + (m.group(2) or "")
            out.append((term, desc))
        super().write_dl(out, col_max, col_spacing)


# closing punctuation stays on the line of the character before it (no line starts with it)
_CLOSING = set("，。、；：？！）」』》】〉”’,.;:?!)]}")


def _tokens(text: str) -> list[str]:
    """Words of narrow characters, single wide characters (each may end a line), spaces."""
    out: list[str] = []
    word = ""
    for c in text:
        if c.isspace() or unicodedata.east_asian_width(c) in "WF":
            if word:
                out.append(word)
                word = ""
            if c.isspace():
                if out and out[-1] != " ":
                    out.append(" ")
            elif c in _CLOSING and out and out[-1] != " ":
                out[-1] += c
            else:
                out.append(c)
        elif c in _CLOSING and not word and out and out[-1] != " ":
            out[-1] += c
        else:
            word += c
    if word:
        out.append(word)
    return out


def wrap_wide(text: str, columns: int, first: str = "", rest: str = "") -> list[str]:
    """``text`` in lines of at most ``columns`` terminal columns, a Chinese character counting
    two (click's wrapping counts characters); a line may break between any two wide ones."""
    lines: list[str] = []
    line, used, space = first, width(first), False
    for tok in _tokens(text):
        if tok == " ":
            space = line.strip() != ""
            continue
        w = width(tok) + (1 if space else 0)
        if used + w > columns and line.strip():
            lines.append(line.rstrip())
            line, used, space = rest, width(rest), False
            w = width(tok)
        line += (" " if space else "") + tok
        used += w
        space = False
    if line.strip():
        lines.append(line.rstrip())
    return lines


def wrap_text(
    text: str, width: int = 78, initial_indent: str = "", subsequent_indent: str = "",
    preserve_paragraphs: bool = False,
) -> str:  # fmt: skip
    """click's ``formatting.wrap_text``, measuring Chinese text in terminal columns."""
    if not any(unicodedata.east_asian_width(c) in "WF" for c in text):
        return _ORIGINAL_WRAP(text, width, initial_indent, subsequent_indent, preserve_paragraphs)
    if not preserve_paragraphs:
        return "\n".join(wrap_wide(text, width, initial_indent, subsequent_indent))
    out = []
    for par in re.split(r"\n\s*\n", text.expandtabs()):
        raw = par.splitlines()
        if not raw:
            continue
        if raw[0].strip() == "\b":
            out.append("\n".join(initial_indent + x for x in raw[1:]))
            continue
        extra = " " * (len(raw[0]) - len(raw[0].lstrip()))
        joined = " ".join(x.strip() for x in raw)
        out.append(
            "\n".join(wrap_wide(joined, width, initial_indent + extra, subsequent_indent + extra))
        )
    return "\n\n".join(out)


def _gettext(message: str) -> str:
    lang = current.get()
    if lang == ENGLISH:
        return message
    return sections(lang)["click"].get(message, message)


def _ngettext(singular: str, plural: str, n: int) -> str:
    lang = current.get()
    form = singular if n == 1 else plural
    if lang != ENGLISH:  # one form in Chinese, but click's two differ in meaning ("one of")
        cat = sections(lang)["click"]
        return cat.get(form) or cat.get(singular) or form
    return form


def short_help(command: click.Command, limit: int = 45) -> str:
    """A sub-command's line in its group's command list: click cuts the English help to a
    sentence; here the first paragraph is translated first, then cut at its first full
    stop (。) or at ``limit`` characters."""
    text = command.short_help or command.help or ""
    if current.get() == ENGLISH or not text or command.short_help:
        return _ORIGINAL_SHORT_HELP(command, limit)
    first = inspect.cleandoc(text).split("\f")[0].split("\n\n")[0]
    translated = translate_help(first)
    if translated == first:  # not in the catalogue: click's English line
        return _ORIGINAL_SHORT_HELP(command, limit)
    line = fold(translated).split("。")[0] + "。" if "。" in translated else fold(translated)
    return line if len(line) <= limit else line[: limit - 1] + "…"


_ORIGINAL_SHORT_HELP = click.Command.get_short_help_str
_ORIGINAL_WRAP = click.formatting.wrap_text
CLICK_MODULES = ("core", "decorators", "exceptions", "formatting", "parser", "types", "termui")


def install(modules: Iterable[str] = CLICK_MODULES) -> None:
    """Route click's gettext calls to the catalogue, and its help through the formatter."""
    import importlib

    for name in modules:
        mod: Any = importlib.import_module(f"click.{name}")
        if hasattr(mod, "_"):
            mod._ = _gettext
        if hasattr(mod, "ngettext"):
            mod.ngettext = _ngettext
    click.Context.formatter_class = TranslatingFormatter
    click.formatting.wrap_text = wrap_text  # Chinese help wrapped by display width
    click.Command.get_short_help_str = short_help  # type: ignore[method-assign,assignment]
