"""The evaluation's grid and its printed tables (``gpufleet evaluate-recommender``,
bench/recommend_bench.py). Runs scenarios through ``evaluate``; formats, no simulation here."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from gpufleet.philly import TraceJob
from gpufleet.recommend.evaluate import (
    CalSample,
    Config,
    calibration_samples,
    eta_summary,
    reliability,
    run_scenario,
    summarise,
)


def run_grid(trace: list[TraceJob], cfg: Config, vcs: list[str | None], loads: list[float],
             habits: list[str], seeds: list[int], *, calibration: bool = True,
             say: Callable[[str], None] = lambda m: None) -> dict[str, Any]:  # fmt: skip
    scenarios = []
    etas: list[tuple[float, ...]] = []
    cal: list[CalSample] = []
    total = len(vcs) * len(loads) * len(habits)
    n = 0
    for vc in vcs:
        for load in loads:
            for habit in habits:
                n += 1
                per_seed = []
                for seed in seeds:
                    fig, e = run_scenario(trace, cfg, vc, load, habit, seed)
                    per_seed.append(fig)
                    etas += e
                    if calibration:
                        cal += calibration_samples(trace, cfg, vc, load, habit, seed)
                summary = summarise(per_seed)
                v = summary["verdict"]
                say(f"[{n}/{total}] vc {vc or 'all'} load {load:g} habit {habit}: gpufleet"
                    f" {100 * summary['table']['gpufleet']['hit_rate'][0]:.1f}% vs"
                    f" {v['best_baseline']} {100 * summary['table'][v['best_baseline']]['hit_rate'][0]:.1f}%")  # fmt: skip
                scenarios.append({"vc": vc or "all", "load": load, "habit": habit,
                                  "seeds": seeds, "per_seed": per_seed, **summary})  # fmt: skip
    out: dict[str, Any] = {"scenarios": scenarios, "eta": eta_summary(etas)}
    if calibration:
        out["calibration"] = reliability(cal)
        out["calibration_no_history"] = reliability([c for c in cal if not c[2]])
    return out


def reliability_text(c: dict[str, Any], label: str) -> str:
    """A ``reliability`` result as a title line and a table by decile."""
    if not c.get("answers"):
        return f"calibration of p_free_for_duration ({label}): no answers"
    out = [f"calibration of p_free_for_duration ({label}), {c['answers']} answers: Brier"
           f" {c['brier']:.4f} vs base rate {c['brier_base_rate']:.4f} (rate"
           f" {100 * c['base_rate']:.1f}%)",
           "| decile | answers | stated % | observed % | error points |", "|---|---|---|---|---|"]  # fmt: skip
    for r in c["rows"]:
        out.append(f"| {r['decile']} | {r['answers']} | {100 * r['stated']:.1f} |"
                   f" {100 * r['observed']:.1f} | {r['error_points']:+.1f} |")  # fmt: skip
    return "\n".join(out)


def _ci(x: tuple[float, float, float], scale: float = 100.0, fmt: str = "{:.1f}") -> str:
    m, lo, hi = (v * scale for v in x)
    if math.isnan(m):
        return "-"
    return f"{fmt.format(m)} [{fmt.format(lo)}, {fmt.format(hi)}]"


def scenario_text(sc: dict[str, Any]) -> str:
    head = ["recommender", "hit % [95% CI]", "hit % if room", "req wait min", "all wait min",
            "Gini", "busiest 20% %", "util %"]  # fmt: skip
    rows = []
    for name, t in sc["table"].items():
        rows.append([name, _ci(t["hit_rate"]), f"{100 * t['hit_rate_when_room'][0]:.1f}",
                     f"{t['requester_wait_minutes'][0]:.0f}", f"{t['everyone_wait_minutes'][0]:.0f}",
                     f"{t['gini'][0]:.3f}", f"{100 * t['busiest_20pct_share'][0]:.1f}",
                     f"{100 * t['utilisation'][0]:.0f}"])  # fmt: skip
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    v = sc["verdict"]
    m = v["hit_margin_points"]
    verdict = (f"gpufleet - {v['best_baseline']}: {m[0]:+.1f} points [{m[1]:+.1f}, {m[2]:+.1f}]"
               f" ({'met' if v['hit_target_met'] else 'NOT met'}: +10 with the interval above 0);"
               f" wait no worse: {'yes' if v['wait_no_worse'] else 'NO'};"
               f" lowest Gini: {'yes' if v['lowest_gini'] else 'NO'};"
               f" lowest busiest-20%: {'yes' if v['lowest_busiest'] else 'NO'}")  # fmt: skip
    title = f"vc {sc['vc']}, load {sc['load']:g}, habit {sc['habit']}, seeds {sc['seeds']}"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([title, line(head), sep, *(line(r) for r in rows), verdict])


def summary_text(result: dict[str, Any]) -> str:
    out = []
    for sc in result["scenarios"]:
        out += [scenario_text(sc), ""]
    scs = result["scenarios"]
    met = sum(1 for s in scs if s["verdict"]["hit_target_met"])
    out.append(f"hit-rate target met in {met} of {len(scs)} scenarios; wait no worse in"
               f" {sum(1 for s in scs if s['verdict']['wait_no_worse'])}; lowest Gini in"
               f" {sum(1 for s in scs if s['verdict']['lowest_gini'])}; lowest busiest-20% in"
               f" {sum(1 for s in scs if s['verdict']['lowest_busiest'])}")  # fmt: skip
    e = result["eta"]
    if e.get("estimates"):
        out.append(f"time to free (gpufleet, {e['estimates']} estimates when nothing fitted):"
                   f" |predicted - actual| median {e['abs_error_median_hours']:.2f} h, p90"
                   f" {e['abs_error_p90_hours']:.2f} h; predicted median"
                   f" {e['predicted_median_hours']:.2f} h, actual median"
                   f" {e['actual_median_hours']:.2f} h; actual inside the stated 80% range:"
                   f" {100 * e['inside_interval']:.0f}% (the range from past holds:"
                   f" {100 * e.get('inside_own_interval', e['inside_interval']):.0f}%; the"
                   f" stated one came from past estimates for"
                   f" {100 * e.get('from_past_estimates', 0.0):.0f}% of them)")  # fmt: skip
    for key, label in (("calibration", "all answers"),
                       ("calibration_no_history", "hosts with no history")):  # fmt: skip
        c = result.get(key)
        if not c or not c["answers"]:
            continue
        out.append(reliability_text(c, f"{label}, a study: nobody follows the answers"))
    lat = result.get("latency")
    if lat:
        out.append(
            f"latency of one answer with its reasons at {result.get('latency_hosts', 1000)} hosts:"
        )
        out.append("| path | answers | p50 ms | p99 ms | CPU p50 ms | CPU p99 ms |")
        out.append("|---|---|---|---|---|---|")
        for path, r in lat.items():
            out.append(f"| {path} | {r['answers']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |"
                       f" {r['cpu_p50_ms']:.2f} | {r['cpu_p99_ms']:.2f} |")  # fmt: skip
    return "\n".join(out)


def digest_text(results: list[dict[str, Any]]) -> str:
    """One line per cluster x load x habit from one or more saved ``--json`` results: gpufleet
    against the best baseline for that habit, and each target met or not."""
    head = ("| vc | load | habit | gpufleet hit % | best baseline | its hit % | margin points"
            " [95% CI] | hit if room: gpufleet / best | req wait min: gpufleet / best |"
            " Gini: gpufleet / lowest baseline | busiest 20 %: gpufleet / lowest baseline |")  # fmt: skip
    out = [head, "|" + "---|" * 11]
    for res in results:
        for sc in res["scenarios"]:
            t, v = sc["table"], sc["verdict"]
            g, b = t["gpufleet"], t[v["best_baseline"]]
            base = [n for n in t if n != "gpufleet"]
            gini_min = min(t[n]["gini"][0] for n in base)
            busy_min = min(t[n]["busiest_20pct_share"][0] for n in base)
            m = v["hit_margin_points"]
            out.append(
                f"| {sc['vc']} | {sc['load']:g} | {sc['habit']} | {100 * g['hit_rate'][0]:.1f} |"
                f" {v['best_baseline']} | {100 * b['hit_rate'][0]:.1f} |"
                f" {m[0]:+.1f} [{m[1]:+.1f}, {m[2]:+.1f}]{' met' if v['hit_target_met'] else ''} |"
                f" {100 * g['hit_rate_when_room'][0]:.1f} / {100 * b['hit_rate_when_room'][0]:.1f} |"
                f" {g['requester_wait_minutes'][0]:.0f} / {b['requester_wait_minutes'][0]:.0f}"
                f"{' ok' if v['wait_no_worse'] else ''} |"
                f" {g['gini'][0]:.3f} / {gini_min:.3f}{' ok' if v['lowest_gini'] else ''} |"
                f" {100 * g['busiest_20pct_share'][0]:.1f} / {100 * busy_min:.1f}"
                f"{' ok' if v['lowest_busiest'] else ''} |"
            )  # fmt: skip
    scs = [sc for r in results for sc in r["scenarios"]]
    n = len(scs)
    out.append("")
    out.append(
        f"{n} scenarios: hit-rate target (+10 points, interval above 0) met in"
        f" {sum(s['verdict']['hit_target_met'] for s in scs)}; margin above 0 (interval) in"
        f" {sum(s['verdict']['hit_margin_points'][1] > 0 for s in scs)}; requester wait no"
        f" worse in {sum(s['verdict']['wait_no_worse'] for s in scs)}; lowest Gini in"
        f" {sum(s['verdict']['lowest_gini'] for s in scs)}; lowest busiest-20% in"
        f" {sum(s['verdict']['lowest_busiest'] for s in scs)}"
    )
    # calibration: the deciles of every result pooled (weighted by answers)
    pooled: dict[str, list[float]] = {}
    n_ans, brier, brier_base = 0, 0.0, 0.0
    for res in results:
        c = res.get("calibration")
        if not c or not c.get("answers"):
            continue
        n_ans += c["answers"]
        brier += c["brier"] * c["answers"]
        brier_base += c["brier_base_rate"] * c["answers"]
        for r in c["rows"]:
            acc = pooled.setdefault(r["decile"], [0.0, 0.0, 0.0])
            acc[0] += r["answers"]
            acc[1] += r["stated"] * r["answers"]
            acc[2] += r["observed"] * r["answers"]
    if n_ans:
        out += ["", f"calibration of p_free_for_duration, pooled ({n_ans} answers; a study:"
                f" nobody follows the answers): Brier {brier / n_ans:.4f} vs base rate"
                f" {brier_base / n_ans:.4f} (each result's own base rate)",
                "| decile | answers | stated % | observed % | error points |", "|---|---|---|---|---|"]  # fmt: skip
        for dec in sorted(pooled):
            a, st, ob = pooled[dec]
            out.append(f"| {dec} | {a:.0f} | {100 * st / a:.1f} | {100 * ob / a:.1f} |"
                       f" {100 * (ob - st) / a:+.1f} |")  # fmt: skip
    for res in results:
        e = res.get("eta") or {}
        if e.get("estimates"):
            vcs = sorted({sc["vc"] for sc in res["scenarios"]})
            loads = sorted({sc["load"] for sc in res["scenarios"]})
            out.append(f"time to free, vc {', '.join(vcs)} load {', '.join(f'{x:g}' for x in loads)}:"
                       f" {e['estimates']} estimates, |error| median {e['abs_error_median_hours']:.2f} h,"
                       f" p90 {e['abs_error_p90_hours']:.2f} h; predicted median"
                       f" {e['predicted_median_hours']:.2f} h vs actual {e['actual_median_hours']:.2f} h;"
                       f" inside the 80% range {100 * e['inside_interval']:.0f}%")  # fmt: skip
    return "\n".join(out)
