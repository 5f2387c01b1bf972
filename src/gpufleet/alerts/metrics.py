"""What one host's sample says, as alert metrics: a pure function of the sample and what the
server knew when it arrived. One *series* per host, per mount, per GPU."""

from __future__ import annotations

from dataclasses import dataclass

from gpufleet.wire import Sample

LOST_TEXT = ("GPU is lost", "GpuIsLost", "fell off the bus")
HUNG_TEXT = "NVML is hung"
Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Thresholds:
    """Settings metrics depend on (not rules: what 'idle' or 'held' means)."""

    idle_util_percent: float = 5.0
    held_memory_bytes: int = 512 * 2**20
    ghost_min_bytes: int = 2**30


def labels_of(**kw: str | int | None) -> Labels:
    return tuple(sorted((k, str(v)) for k, v in kw.items() if v is not None))


_KEYS: dict[tuple[str, str | None, str, object], Labels] = {}


def _key(host: str, group: str | None, what: str, value: object) -> Labels:
    """``labels_of(host=, group=, <what>=value)``, remembered (the same few per host)."""
    k = (host, group, what, value)
    got = _KEYS.get(k)
    if got is None:
        if len(_KEYS) > 200_000:
            _KEYS.clear()
        extra = {} if what == "host" else {what: value}
        got = _KEYS[k] = labels_of(host=host, group=group, **extra)  # type: ignore[arg-type]
    return got


_ALL: frozenset[str] = frozenset()  # "every metric" (the default of ``wanted``)
GPU_DERIVED = frozenset({"held_idle", "ghost_memory_bytes"})
_EVERY = GPU_DERIVED | {"disk_used_ratio"}  # the metrics ``wanted`` can leave out


def sample_series(
    sample: Sample, *, skew_seconds: float | None, group: str | None, th: Thresholds,
    wanted: frozenset[str] = _ALL,
) -> dict[Labels, dict[str, float]]:
    """Series labels -> metric values, for one sample. Missing data gives no value (a rule
    on it neither fires nor resolves). ``wanted``: the metrics some rule reads (the per-GPU
    process sums are skipped when no rule needs them); empty: all."""
    if not wanted:
        wanted = _EVERY
    host = sample.host
    out: dict[Labels, dict[str, float]] = {}
    hm = sample.host_metrics
    h: dict[str, float] = {
        "nvml_hung": float(any(HUNG_TEXT in e for e in sample.errors)),
        "collection_errors": float(len(sample.errors)),
    }
    if hm.cpu_percent is not None:
        h["cpu_percent"] = hm.cpu_percent
    if hm.load1 is not None and hm.cpu_count:
        h["load1_per_cpu"] = hm.load1 / hm.cpu_count
    if hm.memory_total_bytes and hm.memory_available_bytes is not None:
        h["memory_used_ratio"] = 1 - hm.memory_available_bytes / hm.memory_total_bytes
    if hm.swap_total_bytes and hm.swap_used_bytes is not None:
        h["swap_used_ratio"] = hm.swap_used_bytes / hm.swap_total_bytes
    if skew_seconds is not None:
        h["clock_skew_abs_seconds"] = abs(skew_seconds)
    out[_key(host, group, "host", host)] = h
    for disk in hm.disks if "disk_used_ratio" in wanted else ():
        if disk.total_bytes > 0:
            key = _key(host, group, "mount", disk.mount)
            out[key] = {"disk_used_ratio": disk.used_bytes / disk.total_bytes}
    derived = not GPU_DERIVED.isdisjoint(wanted)
    procs_by_gpu: dict[int, list] = {}
    if derived:
        for p in sample.processes:
            procs_by_gpu.setdefault(p.gpu_index, []).append(p)
    for g in sample.gpus:
        procs = procs_by_gpu.get(g.index, [])
        m: dict[str, float] = {
            "gpu_error": float(g.error is not None),
            "xid_events": float(len(g.xid_events)),
            "gpu_lost": float(
                any(e.xid == 79 for e in g.xid_events)
                or (g.error is not None and any(t in g.error for t in LOST_TEXT))
            ),
        }
        if g.utilization_gpu_percent is not None:
            m["utilization_gpu_percent"] = g.utilization_gpu_percent
        if g.memory_used_bytes is not None:
            m["memory_used_bytes"] = float(g.memory_used_bytes)
            if g.memory_total_bytes:
                m["gpu_memory_used_ratio"] = g.memory_used_bytes / g.memory_total_bytes
        if g.temperature_celsius is not None:
            m["temperature_celsius"] = g.temperature_celsius
        if g.power_watts is not None and g.power_limit_watts:
            m["power_cap_ratio"] = g.power_watts / g.power_limit_watts
        if g.ecc_uncorrected_volatile is not None:
            m["ecc_uncorrected_volatile"] = float(g.ecc_uncorrected_volatile)
        out[_key(host, group, "gpu", g.index)] = m
        if not derived:
            continue
        if not procs:  # the common case: nothing listed, nothing held by a user
            if g.error is None:
                if g.utilization_gpu_percent is not None:
                    m["held_idle"] = 0.0
                if g.memory_used_bytes is not None:
                    used = g.memory_used_bytes
                    m["ghost_memory_bytes"] = float(used) if used >= th.ghost_min_bytes else 0.0
            continue
        users = sorted({p.user for p in procs if p.user})
        if g.error is None and g.utilization_gpu_percent is not None:
            held = sum(p.gpu_memory_bytes or 0 for p in procs if p.uid is not None or p.user)
            m["held_idle"] = float(
                bool(users)
                and held >= th.held_memory_bytes
                and g.utilization_gpu_percent < th.idle_util_percent
            )
        if g.error is None and g.memory_used_bytes is not None:
            gone = sum(p.gpu_memory_bytes or 0 for p in procs if p.uid is None and not p.user)
            m["ghost_memory_bytes"] = float(gone)
        # the user label is kept only on the held-but-idle series (so the alert names them)
        if users and "held_idle" in m:
            hkey = _user_key(host, group, g.index, ",".join(users))
            out[hkey] = {"held_idle": m.pop("held_idle")}
    return out


def _user_key(host: str, group: str | None, gpu: int, user: str) -> Labels:
    k = (host, group, f"gpu{gpu}", user)
    got = _KEYS.get(k)
    if got is None:
        got = _KEYS[k] = labels_of(host=host, group=group, gpu=gpu, user=user)
    return got
