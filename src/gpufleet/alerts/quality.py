"""Alert quality from the history, so admins can tune rules: per rule, alerts per week, how
much they flap, time to acknowledge, and how many fired without anyone acting. Pure."""

from __future__ import annotations

import statistics
from typing import Any

WEEK = 7 * 86400.0


def rule_quality(events: list[dict[str, Any]], now: float, days: float = 28.0) -> list[dict]:
    """``events``: history rows (``at``, ``event``, ``alert``) of the last ``days``.
    Sorted with the noisiest rule (most alerts nobody acknowledged) first."""
    since = now - days * 86400
    rows: dict[str, dict[str, Any]] = {}
    fired_at: dict[str, float] = {}
    acked: set[str] = set()
    ack_seconds: dict[str, list[float]] = {}
    for e in sorted(events, key=lambda e: e["at"]):
        if e["at"] < since:
            continue
        a = e["alert"]
        r = rows.setdefault(a["rule"], {"rule": a["rule"], "fired": 0, "resolved": 0,
                                        "flaps": 0, "acknowledged": 0,
                                        "minutes_firing": []})  # fmt: skip
        fp = a["fingerprint"]
        if e["event"] == "firing":
            r["fired"] += 1
            fired_at[fp] = e["at"]
            acked.discard(fp)
        elif e["event"] == "acknowledged":
            if fp not in acked:
                r["acknowledged"] += 1
                acked.add(fp)
                if fp in fired_at:
                    ack_seconds.setdefault(a["rule"], []).append(e["at"] - fired_at[fp])
        elif e["event"] == "resolved":
            r["resolved"] += 1
            r["flaps"] += int(a.get("flaps") or 0)
            if fp in fired_at:
                r["minutes_firing"].append((e["at"] - fired_at[fp]) / 60)
    out = []
    weeks = max(days * 86400 / WEEK, 1e-9)
    for r in rows.values():
        mins = r.pop("minutes_firing")
        acks = ack_seconds.get(r["rule"], [])
        out.append(r | {
            "per_week": round(r["fired"] / weeks, 2),
            "unacknowledged": r["fired"] - r["acknowledged"],
            "median_minutes_to_ack": round(statistics.median(acks) / 60, 1) if acks else None,
            "median_minutes_firing": round(statistics.median(mins), 1) if mins else None,
            "flapping": r["flaps"] > r["fired"],  # more flaps than incidents
        })  # fmt: skip
    return sorted(out, key=lambda r: (-r["unacknowledged"], -r["fired"], r["rule"]))
