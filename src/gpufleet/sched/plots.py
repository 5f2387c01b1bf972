"""Plot data for ``gpufleet simulate --plots DIR``: CSV files plus small hand-written SVG charts
(no plotting library needed): the JCT CDF per policy and the queue length over time."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gpufleet.sched.sim import SimResult

_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]


def _svg(
    series: dict[str, list[tuple[float, float]]],
    title: str,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
) -> str:
    width, height, pad = 640, 400, 50
    points = [p for s in series.values() for p in s]
    if not points:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"/>'
    xs = [np.log10(max(x, 1.0)) if logx else x for x, _ in points]
    x0, x1 = min(xs), max(xs) or 1.0
    y0, y1 = 0.0, max(y for _, y in points) or 1.0

    def sx(x: float) -> float:
        value = np.log10(max(x, 1.0)) if logx else x
        return pad + (value - x0) / ((x1 - x0) or 1.0) * (width - 2 * pad)

    def sy(y: float) -> float:
        return height - pad - (y - y0) / ((y1 - y0) or 1.0) * (height - 2 * pad)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<text x="{width / 2}" y="20" text-anchor="middle">{title}</text>',
        f'<text x="{width / 2}" y="{height - 10}" text-anchor="middle">{xlabel}</text>',
        f'<text x="12" y="{height / 2}" transform="rotate(-90 12 {height / 2})" '
        f'text-anchor="middle">{ylabel}</text>',
        f'<rect x="{pad}" y="{pad}" width="{width - 2 * pad}" height="{height - 2 * pad}" '
        'fill="none" stroke="#999"/>',
    ]
    for i, (name, s) in enumerate(series.items()):
        color = _COLORS[i % len(_COLORS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        parts.append(
            f'<text x="{width - pad - 5}" y="{pad + 15 + 15 * i}" text-anchor="end" '
            f'fill="{color}">{name}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def write_plots(directory: Path, results: dict[str, SimResult]) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    cdf: dict[str, list[tuple[float, float]]] = {}
    queue: dict[str, list[tuple[float, float]]] = {}
    lines = ["policy,jct_s,fraction"]
    qlines = ["policy,time_s,waiting_jobs"]
    for name, result in results.items():
        jct = np.sort(
            [
                j.finish_seconds - j.arrival_seconds
                for j in result.jobs
                if j.finish_seconds is not None
            ]
        )
        if jct.size:
            idx = np.unique(np.linspace(0, jct.size - 1, min(500, jct.size)).astype(int))
            cdf[name] = [(float(jct[i]), (i + 1) / jct.size) for i in idx]
            lines += [f"{name},{x:.1f},{y:.5f}" for x, y in cdf[name]]
        queue[name] = [(t / 3600, float(n)) for t, n in result.queue_length]
        qlines += [f"{name},{t * 3600:.1f},{int(n)}" for t, n in queue[name]]
    written = []
    for filename, content in [
        ("jct_cdf.csv", "\n".join(lines) + "\n"),
        ("queue_length.csv", "\n".join(qlines) + "\n"),
        ("jct_cdf.svg", _svg(cdf, "JCT CDF", "JCT (s, log)", "fraction of jobs", logx=True)),
        ("queue_length.svg", _svg(queue, "Jobs waiting", "time (h)", "jobs")),
    ]:
        (directory / filename).write_text(content)
        written.append(str(directory / filename))
    return written
