"""Alert rules: what they say, how they are checked, and the built-in set.

A rule watches one *metric* of one *scope* (a host, a GPU, a Unix user or the whole fleet)::

    name: gpu_too_hot
    scope: gpu
    metric: temperature_celsius
    kind: threshold        # threshold | rate | increase | sum | absent
    op: ">="
    threshold: 90
    window_seconds: 300    # rate / increase / sum: over this window
    for_seconds: 120       # the condition must hold this long before the alert fires
    severity: warning      # critical | warning | info
    labels: {team: ops}
    summary: "GPU {gpu} on {host} is at {value} C"
    runbook: "check the fans and the room's cooling"
    group_by: [rule, host] # one message for the alerts that share these labels

Every metric is computed from what a host's sample (or the SSH poller, or the server's clock)
already says; ``METRICS`` lists them with their scope and unit. :func:`check_rules` turns bad
input into :class:`RuleError` messages that name the rule and the field, so a bad rule is
reported and skipped, never a reason for the server not to start.
"""

from __future__ import annotations

import functools
import operator
import re
import string
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gpufleet.i18n import N_, Msg

Scope = Literal["host", "gpu", "user", "fleet"]
Kind = Literal["threshold", "rate", "increase", "sum", "absent"]
Severity = Literal["critical", "warning", "info"]
Op = Literal[">", ">=", "<", "<=", "==", "!="]

SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}

# metric -> (scope, unit, meaning). Ratios are 0..1; flags are 0 or 1.
METRICS: dict[str, tuple[str, str, str]] = {
    # host
    "silent_seconds": ("host", "seconds", "time since the server last heard from the host"),
    "host_down": ("host", "flag", "silent past the offline limit and not reachable (or no probe)"),
    "agent_down": ("host", "flag", "silent past the offline limit, but the host answers a probe"),
    "nvml_hung": ("host", "flag", "the agent reports an NVML call that does not return"),
    "ssh_failed": ("host", "flag", "the SSH poller cannot get a sample (label failure: why)"),
    "cpu_percent": ("host", "percent", "CPU utilisation"),
    "load1_per_cpu": ("host", "ratio", "1-minute load average per CPU"),
    "memory_used_ratio": ("host", "ratio", "1 - available / total memory"),
    "swap_used_ratio": ("host", "ratio", "swap in use / swap total"),
    "disk_used_ratio": ("host", "ratio", "used / total of one mount (label mount)"),
    "clock_skew_abs_seconds": ("host", "seconds", "|agent clock - server clock| at receipt"),
    "collection_errors": ("host", "count", "collection errors in the latest sample"),
    # gpu
    "utilization_gpu_percent": ("gpu", "percent", "GPU utilisation"),
    "memory_used_bytes": ("gpu", "bytes", "GPU memory in use"),
    "gpu_memory_used_ratio": ("gpu", "ratio", "GPU memory in use / total"),
    "temperature_celsius": ("gpu", "celsius", "GPU temperature"),
    "power_cap_ratio": ("gpu", "ratio", "power draw / power limit"),
    "ecc_uncorrected_volatile": ("gpu", "count", "uncorrected ECC errors since the driver loaded"),
    "xid_events": ("gpu", "count", "XID events in the sample (any code)"),
    "gpu_lost": ("gpu", "flag", "GPU fell off the bus: XID 79, or NVML says the GPU is lost"),
    "gpu_error": ("gpu", "flag", "NVML reports an error for this GPU"),
    "held_idle": ("gpu", "flag", "processes hold memory but utilisation is under the idle limit"),
    "ghost_memory_bytes": (
        "gpu",
        "bytes",
        "memory held by PIDs that no longer exist, or by no listed process",
    ),
    # user (over the fleet, from every host's latest sample)
    "user_gpus_held": ("user", "count", "GPUs the user's processes hold"),
    "user_gpus_held_idle": ("user", "count", "GPUs the user holds while they are idle"),
    # fleet
    "fleet_hosts_silent_ratio": ("fleet", "ratio", "hosts silent past the stale limit / hosts"),
    "fleet_gpus_free": ("fleet", "count", "GPUs free right now"),
}

TEMPLATE_FIELDS = {"host", "gpu", "value", "user", "rule", "mount", "failure", "severity", "group"}
LABEL_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class RuleError(ValueError):
    """A rule that cannot be used; the message names the rule and the field."""


def _check_template(text: str) -> str:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as exc:
        raise ValueError(f"not a valid template ({exc}); write {{host}}, {{gpu}}, ...") from None
    for f in fields:
        if f not in TEMPLATE_FIELDS:
            raise ValueError(
                f"unknown placeholder {{{f}}}; use one of {', '.join(sorted(TEMPLATE_FIELDS))}"
            )
    return text


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Unique rule name (lower case, digits, _).")
    scope: Scope = Field(description="What one alert is about: a host, a GPU, a user, the fleet.")
    metric: str = Field(description="The metric watched (see the list in docs/alerts.md).")
    kind: Kind = Field("threshold", description="How the metric is turned into a value.")
    op: Op = Field(">", description="Comparison of the value with the threshold.")
    threshold: float = Field(0.0, description="The limit the value is compared with.")
    clear_threshold: float | None = Field(
        None,
        description="Once firing, the alert clears only when the value is past this (e.g. 85 "
        "for a rule at >= 88): a value hovering at the limit stays one alert.",
    )
    window_seconds: Annotated[float, Field(gt=0, le=7 * 86400)] = Field(
        300.0, description="Window of rate / increase / sum."
    )
    for_seconds: Annotated[float, Field(ge=0, le=30 * 86400)] = Field(
        0.0, description="The condition must hold this long before the alert fires."
    )
    severity: Severity = "warning"
    labels: dict[str, str] = Field(default_factory=dict)
    summary: Annotated[str, Field(max_length=500)] = "{rule} on {host}: {value}"
    runbook: Annotated[str, Field(max_length=2000)] = ""
    group_by: list[str] = Field(default_factory=lambda: ["rule", "host"])
    notify_user: bool = Field(False, description="Also tell the Unix user the alert is about.")
    enabled: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.fullmatch(v):
            raise ValueError(f"{v!r}: use lower-case letters, digits and _, starting with a letter")
        return v

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        if v not in METRICS:
            raise ValueError(f"unknown metric {v!r}; see docs/alerts.md for the list")
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in v.items():
            if not LABEL_RE.fullmatch(k):
                raise ValueError(f"label name {k!r}: lower-case letters, digits and _")
            if len(val) > 256:
                raise ValueError(f"label {k}: at most 256 characters")
        return v

    @field_validator("group_by")
    @classmethod
    def _group_by(cls, v: list[str]) -> list[str]:
        for k in v:
            if not LABEL_RE.fullmatch(k):
                raise ValueError(f"{k!r} is not a label name")
        return v

    @field_validator("summary", "runbook")
    @classmethod
    def _templates(cls, v: str) -> str:
        return _check_template(v)

    def model_post_init(self, _context: Any) -> None:
        scope = METRICS[self.metric][0]
        if scope != self.scope:
            raise ValueError(f"metric {self.metric} is a {scope} metric, not a {self.scope} one")
        c = self.clear_threshold
        if c is not None and (
            (self.op in (">", ">=") and c > self.threshold)
            or (self.op in ("<", "<=") and c < self.threshold)
            or self.op in ("==", "!=")
        ):
            raise ValueError(
                f"clear_threshold {c:g} must be on the clear side of threshold "
                f"{self.threshold:g} (op {self.op})"
            )
        if self.kind == "absent" and self.metric != "silent_seconds":
            raise ValueError("kind absent watches silent_seconds; set metric: silent_seconds")

    def holds(self, value: float) -> bool:
        return _compare(value, self.op, self.threshold)

    def condition(self) -> Callable[[float], bool]:
        """``holds`` as one fast call (the engine's hot loop)."""
        return functools.partial(_OPS[self.op], self.threshold)

    def still_firing(self) -> Callable[[float], bool] | None:
        """With a clear_threshold: whether a firing alert's value has not cleared yet."""
        if self.clear_threshold is None:
            return None
        return functools.partial(_OPS[self.op], self.clear_threshold)


# op(threshold, value): the value is the second argument of the partial
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.lt, ">=": operator.le, "<": operator.gt, "<=": operator.ge,
    "==": operator.eq, "!=": operator.ne,
}  # fmt: skip


def _compare(value: float, op: str, threshold: float) -> bool:
    if op == ">":
        return value > threshold
    if op == ">=":
        return value >= threshold
    if op == "<":
        return value < threshold
    if op == "<=":
        return value <= threshold
    if op == "==":
        return value == threshold
    return value != threshold


def _fields(labels: dict[str, str], value: float | None) -> dict[str, str]:
    fields = {k: "-" for k in TEMPLATE_FIELDS}
    fields.update({k: v for k, v in labels.items() if k in TEMPLATE_FIELDS})
    fields["value"] = "-" if value is None else f"{value:.4g}"
    return fields


def render(template: str, labels: dict[str, str], value: float | None) -> str:
    """Fill ``{host}``, ``{gpu}``, ``{value}``, ... (a missing label is shown as ``-``)."""
    return template.format(**_fields(labels, value))


def render_message(template: str, labels: dict[str, str], value: float | None) -> Msg | None:
    """The filled template as an :class:`~gpufleet.i18n.Msg` each reader renders in their
    language, where it is a built-in rule's own text (the catalogue has it); ``None`` for text a
    user wrote (a custom rule, or a built-in's summary or runbook changed): that stays as written."""
    if template not in builtin_texts():
        return None
    return Msg(template, _fields(labels, value))


def parse_rule(data: Any, where: str = "rule") -> Rule:
    """One rule from a mapping; :class:`RuleError` names the rule and the field."""
    name = data.get("name") if isinstance(data, dict) else None
    label = f"{where} {name!r}" if isinstance(name, str) else where
    if not isinstance(data, dict):
        raise RuleError(f"{where}: a rule is a mapping of fields")
    try:
        return Rule.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(rule)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (see docs/alerts.md for a rule's fields)"
        raise RuleError(f"{label}: {loc}: {msg}") from None


def _b(name: str, metric: str, scope: str, **kw: Any) -> Rule:
    return Rule.model_validate({"name": name, "metric": metric, "scope": scope, **kw})


def builtin_rules() -> list[Rule]:
    """The rules that are on by default. Thresholds are starting points; see docs/alerts.md."""
    rack = ["rule", "group"]
    return [
        _b("host_down", "host_down", "host", op="==", threshold=1, severity="critical",
           group_by=rack, summary=N_("{host} is down: no data and it does not answer"),
           runbook=N_("check power and network of {host} (IPMI/BMC console); its GPU alerts "
                   "are held back while it is down")),
        _b("agent_down", "agent_down", "host", op="==", threshold=1, severity="warning",
           summary=N_("{host} answers but its agent sends nothing"),
           runbook=N_("on {host}: systemctl status gpufleet-agent; journalctl -u gpufleet-agent")),
        _b("nvml_hung", "nvml_hung", "host", op="==", threshold=1, for_seconds=30,
           severity="critical", summary=N_("{host}: NVML calls hang (driver or GPU stuck)"),
           runbook=N_("on {host}: nvidia-smi (does it hang?), dmesg | grep -i nvrm; a reboot "
                   "or a GPU reset usually clears it")),
        _b("ssh_unreachable", "ssh_failed", "host", op="==", threshold=1, for_seconds=30,
           severity="warning", summary=N_("{host}: SSH poll fails ({failure})"),
           runbook=N_("gpufleet hosts shows the poller's reason; check the key, known_hosts "
                   "and that {host} is up")),
        _b("gpu_lost", "gpu_lost", "gpu", op="==", threshold=1, severity="critical",
           summary=N_("{host} GPU {gpu} fell off the bus (XID 79 / GPU is lost)"),
           runbook=N_("drain {host}, then reboot it; if it recurs, reseat or replace GPU {gpu}")),
        _b("ecc_uncorrectable", "ecc_uncorrected_volatile", "gpu", kind="increase", op=">",
           threshold=0, window_seconds=3600, severity="critical",
           summary=N_("{host} GPU {gpu}: {value} new uncorrectable ECC error(s) in the last hour"),
           runbook=N_("jobs on GPU {gpu} may have wrong results; drain and reset the GPU, and "
                   "check for page retirement (nvidia-smi -q -d PAGE_RETIREMENT)")),
        _b("xid_storm", "xid_events", "gpu", kind="sum", op=">=", threshold=5,
           window_seconds=600, severity="warning",
           summary=N_("{host} GPU {gpu}: {value} XID events in 10 minutes"),
           runbook=N_("dmesg | grep -i xid on {host} says which codes; see NVIDIA's XID table")),
        _b("gpu_too_hot", "temperature_celsius", "gpu", op=">=", threshold=88,
           clear_threshold=85, for_seconds=120, severity="warning", summary=N_("{host} GPU {gpu} at {value} C"),
           runbook=N_("check fans and airflow of {host}; the GPU throttles past ~90 C")),
        _b("power_at_cap", "power_cap_ratio", "gpu", op=">=", threshold=0.98,
           for_seconds=1800, severity="info",
           summary=N_("{host} GPU {gpu} at its power cap for 30 minutes"),
           runbook=N_("the job is power-limited; check the power limit (nvidia-smi -q -d POWER)")),
        _b("disk_almost_full", "disk_used_ratio", "host", op=">=", threshold=0.92,
           clear_threshold=0.9, for_seconds=300, severity="warning", summary=N_("{host}: {mount} is {value} full"),
           runbook=N_("du -xh --max-depth=2 {mount} | sort -h on {host}; old checkpoints?")),
        _b("memory_pressure", "memory_used_ratio", "host", op=">=", threshold=0.95,
           clear_threshold=0.9, for_seconds=300, severity="warning",
           summary=N_("{host}: {value} of memory in use"),
           runbook=N_("ps aux --sort=-rss | head on {host}; data loaders with too many workers?")),
        _b("swapping", "swap_used_ratio", "host", op=">=", threshold=0.5, for_seconds=300,
           severity="warning", summary=N_("{host}: {value} of swap in use"),
           runbook=N_("a process on {host} outgrew memory; see memory_pressure")),
        _b("clock_skew", "clock_skew_abs_seconds", "host", op=">", threshold=30,
           for_seconds=60, severity="warning", summary=N_("{host}: clock off by {value} s"),
           runbook=N_("on {host}: timedatectl; enable NTP (chrony or systemd-timesyncd)")),
        _b("gpu_held_idle", "held_idle", "gpu", op="==", threshold=1, for_seconds=4 * 3600,
           severity="info", notify_user=True, group_by=["rule", "user"],
           summary=N_("{user} holds GPU {gpu} on {host} without using it"),
           runbook=N_("if the job is finished, stop it so others can use GPU {gpu} on {host}")),
        _b("ghost_memory", "ghost_memory_bytes", "gpu", op=">", threshold=2**30,
           for_seconds=120, severity="warning",
           summary=N_("{host} GPU {gpu}: {value} bytes held by processes that no longer exist"),
           runbook=N_("nvidia-smi on {host}; a zombie or a container's process; fuser -v "
                   "/dev/nvidia*; a GPU reset frees it")),
    ]  # fmt: skip


@functools.cache
def builtin_texts() -> frozenset[str]:
    """The built-in rules' summaries and runbooks (the zh-CN catalogue translates them)."""
    return frozenset(t for r in builtin_rules() for t in (r.summary, r.runbook) if t)


BUILTIN_TUNABLE = ("threshold", "clear_threshold", "for_seconds", "window_seconds", "severity", "enabled",
                   "labels", "summary", "runbook", "group_by", "op", "notify_user")  # fmt: skip


def tuned(rule: Rule, change: dict[str, Any]) -> dict[str, Any]:
    """A built-in rule's fields with ``change`` applied. A new threshold without a new
    clear_threshold moves the clear limit with it (same margin)."""
    out = {**rule.model_dump(), **change}
    if (
        "threshold" in change and "clear_threshold" not in change
        and rule.clear_threshold is not None and isinstance(change["threshold"], int | float)
    ):  # fmt: skip
        out["clear_threshold"] = rule.clear_threshold + (change["threshold"] - rule.threshold)
    return out


def assemble_rules(
    overrides: dict[str, dict[str, Any]], custom: list[dict[str, Any]]
) -> tuple[list[Rule], list[str]]:
    """The built-in rules with ``overrides`` (rule name -> fields to change) applied, plus the
    ``custom`` rules. Returns the usable rules and one error message per bad one: a bad rule
    is left out (a bad override leaves the built-in rule as it was)."""
    errors: list[str] = []
    rules: dict[str, Rule] = {}
    for rule in builtin_rules():
        change = overrides.get(rule.name)
        if change:
            unknown = [k for k in change if k not in BUILTIN_TUNABLE]
            if unknown:
                errors.append(
                    f"builtin rule {rule.name!r}: {unknown[0]}: cannot be changed; tunable: "
                    + ", ".join(BUILTIN_TUNABLE)
                )
            else:
                try:
                    rule = parse_rule(tuned(rule, change), "builtin rule")
                except RuleError as exc:
                    errors.append(str(exc))
        rules[rule.name] = rule
    for name in overrides:
        if name not in rules:
            errors.append(f"builtin rule {name!r}: there is no such built-in rule")
    for i, data in enumerate(custom):
        try:
            rule = parse_rule(data, f"rules[{i}]")
        except RuleError as exc:
            errors.append(str(exc))
            continue
        if rule.name in rules:
            errors.append(f"rules[{i}] {rule.name!r}: name: a rule with this name exists")
            continue
        rules[rule.name] = rule
    return list(rules.values()), errors
