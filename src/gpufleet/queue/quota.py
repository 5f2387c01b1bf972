"""Quotas per user and per group: GPUs at once and GPU-hours per week (a rolling 7 days).

Pure: the service counts what each user and group holds and has used (``Usage``); ``blocks``
says which quota a job would break, by name (``quota: user alice may hold 8 GPUs at once; holds
6, this job needs 4``), or None.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from gpufleet.i18n import ENGLISH, N_, Msg, msg

WEEK_SECONDS = 7 * 86400.0


@dataclass(frozen=True)
class Limit:
    gpus_at_once: int | None = None
    gpu_hours_per_week: float | None = None


@dataclass(frozen=True)
class Usage:
    """GPUs held now and GPU-hours used in the last 7 days, per ("user"|"group", name)."""

    gpus: Mapping[tuple[str, str], int] = field(default_factory=dict)
    gpu_hours: Mapping[tuple[str, str], float] = field(default_factory=dict)

    def with_jobs(self, jobs: Iterable[tuple[str, str, int]]) -> Usage:
        """This usage plus jobs (user, group, GPUs) that hold GPUs or are about to."""
        gpus = dict(self.gpus)
        for user, group, count in jobs:
            gpus[("user", user)] = gpus.get(("user", user), 0) + count
            if group:
                gpus[("group", group)] = gpus.get(("group", group), 0) + count
        return Usage(gpus, self.gpu_hours)


# a quota's holder, as the messages name it
_KINDS = {"user": N_("user"), "group": N_("group")}


@dataclass(frozen=True)
class QuotaRules:
    users: Mapping[str, Limit] = field(default_factory=dict)
    groups: Mapping[str, Limit] = field(default_factory=dict)
    default_user: Limit = Limit()
    members: Mapping[str, str] = field(default_factory=dict)  # user -> group

    def group_of(self, user: str) -> str:
        return self.members.get(user, "")

    def limits(self, user: str, group: str) -> list[tuple[str, str, Limit]]:
        out = [("user", user, self.users.get(user, self.default_user))]
        if group and group in self.groups:
            out.append(("group", group, self.groups[group]))
        return out

    def refusal(self, user: str, group: str, gpus: int) -> str | None:
        """A job that no amount of waiting lets run (more GPUs than the quota allows at once)."""
        for kind, name, limit in self.limits(user, group):
            if limit.gpus_at_once is not None and gpus > limit.gpus_at_once:
                return (
                    f"quota: {kind} {name} may hold {limit.gpus_at_once} GPUs at once; "
                    f"this job asks for {gpus}"
                )
        return None

    def blocks(self, user: str, group: str, gpus: int, usage: Usage) -> str | None:
        """Why a quota keeps the job waiting now, in English (None: it does not)."""
        m = self.blocks_msg(user, group, gpus, usage)
        return None if m is None else m.render(ENGLISH)

    def blocks_msg(self, user: str, group: str, gpus: int, usage: Usage) -> Msg | None:
        """``blocks`` as a message, for the queue page and ``gpufleet jobs`` to render in
        their reader's language (numbers formatted here: the pages' scripts fill plain
        ``{name}`` placeholders)."""
        for kind, name, limit in self.limits(user, group):
            held = usage.gpus.get((kind, name), 0)
            if limit.gpus_at_once is not None and held + gpus > limit.gpus_at_once:
                return msg("quota: {kind} {name} may hold {limit} GPUs at once; holds {held},"
                           " this job needs {gpus}", kind=msg(_KINDS[kind]), name=name,
                           limit=limit.gpus_at_once, held=held, gpus=gpus)  # fmt: skip
            used = usage.gpu_hours.get((kind, name), 0.0)
            if limit.gpu_hours_per_week is not None and used >= limit.gpu_hours_per_week:
                return msg("quota: {kind} {name} has used {used} of {limit} GPU-hours this week"
                           " (rolling 7 days)", kind=msg(_KINDS[kind]), name=name,
                           used=f"{used:.1f}", limit=f"{limit.gpu_hours_per_week:g}")  # fmt: skip
        return None

    @property
    def any(self) -> bool:
        return bool(self.users or self.groups or self.default_user != Limit())


def quota_rules(
    quotas: Mapping[str, Mapping[str, Mapping[str, float]]], groups: Mapping[str, list[str]]
) -> QuotaRules:
    """From the config's ``queue.quotas`` and ``queue.groups``; errors name the key."""
    known = {"gpus_at_once", "gpu_hours_per_week"}

    def limit(path: str, values: Mapping[str, float]) -> Limit:
        if not isinstance(values, Mapping):
            raise ValueError(f"{path}: must be a mapping of {', '.join(sorted(known))}")
        for key, value in values.items():
            if key not in known:
                raise ValueError(f"{path}.{key}: unknown limit; use {', '.join(sorted(known))}")
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{path}.{key}: must be a non-negative number, got {value!r}")
        gpus = values.get("gpus_at_once")
        hours = values.get("gpu_hours_per_week")
        return Limit(int(gpus) if gpus is not None else None, hours)

    for kind in quotas:
        if kind not in ("users", "groups", "default"):
            raise ValueError(f"queue.quotas.{kind}: unknown; use users, groups or default")
    users = {n: limit(f"queue.quotas.users.{n}", v) for n, v in quotas.get("users", {}).items()}
    grps = {n: limit(f"queue.quotas.groups.{n}", v) for n, v in quotas.get("groups", {}).items()}
    default = quotas.get("default", {})
    default_user = limit("queue.quotas.default.user", default.get("user", {}))  # type: ignore[arg-type]
    members = {user: group for group, names in groups.items() for user in names}
    return QuotaRules(users, grps, default_user, members)
