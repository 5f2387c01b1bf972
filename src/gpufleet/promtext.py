"""The Prometheus text exposition format (0.0.4): metric families and their rendering.

Shared by the agent's ``--metrics-port`` and the server's ``/metrics``; no dependencies.
"""

from __future__ import annotations

from collections.abc import Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]


class Family:
    """One metric family: HELP, TYPE and its samples. ``None`` values are left out
    ("not available" is not zero)."""

    __slots__ = ("help", "name", "samples", "type")

    def __init__(self, name: str, help_: str, type_: str = "gauge") -> None:
        self.name = "gpufleet_" + name
        self.help = help_
        self.type = type_
        self.samples: list[tuple[str, Labels, float]] = []

    def add(self, labels: Labels, value: float | int | None, suffix: str = "") -> None:
        if value is not None:
            self.samples.append((suffix, labels, float(value)))


def exposition(families: Iterable[Family]) -> str:
    return "".join(_lines(families))


def _lines(families: Iterable[Family]) -> Iterable[str]:
    for fam in families:
        if not fam.samples:
            continue
        yield f"# HELP {fam.name} {_escape_help(fam.help)}\n# TYPE {fam.name} {fam.type}\n"
        for suffix, labels, value in fam.samples:
            if labels:
                inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
                yield f"{fam.name}{suffix}{{{inner}}} {_number(value)}\n"
            else:
                yield f"{fam.name}{suffix} {_number(value)}\n"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if value != value or value in (float("inf"), float("-inf")):
        return {True: "+Inf", False: "-Inf"}[value > 0] if value == value else "NaN"
    if value == int(value) and abs(value) < 2**63:
        return str(int(value))
    return repr(value)
