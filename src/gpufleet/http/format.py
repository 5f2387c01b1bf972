"""Display-edge conversions for templates: base units in, human text out ("N/A" when unknown)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment

NA = "N/A"


def human_bytes(n: float | None, digits: int = 1) -> str:
    if n is None:
        return NA
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.{digits}f} {unit}"
        n /= 1024
    return NA  # pragma: no cover


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return NA
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def ago(ts: float | None, now: float | None = None) -> str:
    if ts is None:
        return "never"
    return human_duration((time.time() if now is None else now) - ts) + " ago"


def utc(ts: float | None) -> str:
    if ts is None:
        return NA
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def or_na(value: Any) -> Any:
    return NA if value is None or value == "" else value


def register_filters(env: Environment) -> None:
    env.filters.update(
        bytes=human_bytes, duration=human_duration, ago=ago, utc=utc, na=or_na
    )
