"""Everything a user configures: one YAML file, plus ``GPUFLEET_*`` environment variables and
command-line flags (flags win over the environment, the environment over the file).

Errors name the file and the key: ``gpufleet.yaml: ingest.clock_skew_warn_seconds: ...``.
Every setting is listed, with its meaning, in docs/configuration.md (a test keeps them in step).
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gpufleet.errors import ConfigError

DEFAULT_CONFIG_NAME = "gpufleet.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ServerSection(_Section):
    host: str = Field(
        "127.0.0.1", description="Address to listen on (127.0.0.1: this machine only)."
    )
    port: Annotated[int, Field(ge=1, le=65535)] = Field(8000, description="TCP port to listen on.")
    data_dir: Path = Field(
        Path("gpufleet-data"), description="Folder for the embedded store, admin key and state."
    )
    database: str | None = Field(
        None,
        description="Store URL; default: the DuckDB file gpufleet.duckdb in data_dir.",
    )


class IngestSection(_Section):
    max_batch_bytes: Annotated[int, Field(ge=1024, le=64 * 2**20)] = Field(
        8 * 2**20, description="Largest accepted request body (after gzip decoding)."
    )
    clock_skew_warn_seconds: Annotated[float, Field(gt=0)] = Field(
        120.0, description="Flag an agent whose clock differs from the server's by more."
    )
    max_future_seconds: Annotated[float, Field(gt=0)] = Field(
        86400.0,
        description="Refuse (422) a batch dated more than this after the server's clock (a "
        "sample from an agent whose clock is far ahead would sit in the future of every "
        "report).",
    )
    dedupe_window_days: Annotated[float, Field(gt=0)] = Field(
        7.0, description="How long a batch id is remembered, so a re-sent batch is stored once."
    )
    max_queue: Annotated[int, Field(ge=1)] = Field(
        20000,
        description="Batches waiting for the writer before ingest answers 503 (back-pressure).",
    )
    workers: Annotated[int, Field(ge=0, le=64)] | Literal["auto"] = Field(
        "auto",
        description="Ingest worker processes that take agents' connections, each on its own "
        "core (0: the server answers ingest itself; auto: one per core but one, up to 4).",
    )

    def worker_count(self, cpus: int | None = None) -> int:
        """The ingest workers to run: ``auto`` is one per core but one (the server's), up to 4."""
        if self.workers != "auto":
            return self.workers
        cpus = cpus or os.cpu_count() or 1
        return max(0, min(4, cpus - 1))


class RetentionSection(_Section):
    raw_days: Annotated[float, Field(gt=0)] = Field(30.0, description="Keep raw samples this long.")
    prune_interval_seconds: Annotated[float, Field(gt=0)] = Field(
        3600.0, description="How often old raw samples are dropped."
    )


class StatusSection(_Section):
    stale_after_intervals: Annotated[float, Field(gt=0)] = Field(
        3.0, description="A host is 'stale' after this many of its intervals without contact."
    )
    offline_after_seconds: Annotated[float, Field(gt=0)] = Field(
        60.0, description="A host is 'offline' after this long without contact (at least 2x stale)."
    )


class WebSection(_Section):
    require_login: bool = Field(
        False,
        description="Require a login to see the dashboard and read API (anything that changes "
        "state always needs one).",
    )
    idle_gpu_minutes: Annotated[float, Field(gt=0)] = Field(
        30.0,
        description="A GPU holding memory but under idle_util_percent this long is marked idle.",
    )
    idle_util_percent: Annotated[float, Field(ge=0, le=100)] = Field(
        5.0, description="Utilisation below which a GPU counts as idle."
    )
    session_max_age_seconds: Annotated[float, Field(ge=60)] = Field(
        7 * 86400.0,
        description="How long a login lasts (the signed session cookie expires after this).",
    )
    login_max_attempts: Annotated[int, Field(ge=1)] = Field(
        5, description="Failed logins for one client address and user name before a lockout."
    )
    login_lockout_seconds: Annotated[float, Field(gt=0)] = Field(
        300.0,
        description="Window in which failed logins count, and how long a lockout lasts.",
    )


class SshSection(_Section):
    hosts: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Agent-less hosts polled over SSH: name, host, port, user, key_file, "
        "known_hosts, interval_seconds, timeout_seconds.",
    )

    @field_validator("hosts")
    @classmethod
    def _check_hosts(cls, hosts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not hosts:
            return hosts
        from gpufleet.poller.service import SshHostConfig

        names = set()
        for i, h in enumerate(hosts):
            try:
                cfg = SshHostConfig.model_validate(h)
            except ValidationError as exc:
                first = exc.errors()[0]
                loc = ".".join(str(p) for p in first["loc"])
                raise ValueError(f"[{i}].{loc}: {first['msg']}") from None
            if cfg.name in names:
                raise ValueError(f"[{i}].name: host {cfg.name!r} is listed twice")
            names.add(cfg.name)
        return hosts


class HostsSection(_Section):
    groups: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Host groups for reports (by=host_group): group name -> host name patterns "
        "(shell-style: *, ?, [a-c]), e.g. {vision: ['gpu-v*'], nlp: ['dgx-0[1-4]']}. A host "
        "is in the first group (in file order) with a matching pattern; other hosts are "
        "reported as '(ungrouped)'. Agents' and SSH hosts' names alike.",
    )

    @field_validator("groups")
    @classmethod
    def _check_groups(cls, groups: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, patterns in groups.items():
            if not name.strip() or len(name) > 128 or not name.isprintable():
                raise ValueError(f"{name[:80]!r}: a group name is 1 to 128 printable characters")
            if not patterns:
                raise ValueError(f"{name}: give at least one host name pattern")
            for i, p in enumerate(patterns):
                if not p.strip() or len(p) > 256 or not p.isprintable():
                    raise ValueError(f"{name}[{i}]: a pattern is 1 to 256 printable characters")
        return groups

    def group_of(self, host: str) -> str | None:
        """The host's group (see ``groups``); None when no pattern matches."""
        return host_group(host, self.groups)


def host_group(host: str, groups: Mapping[str, Sequence[str]]) -> str | None:
    """The first group (in order) with a shell-style pattern matching the host name, else None:
    the one rule for host groups (reports by host group, alert labels)."""
    for name, patterns in groups.items():
        if any(fnmatch.fnmatchcase(host, p) for p in patterns):
            return name
    return None


class WarehouseSection(_Section):
    timezone: str = Field(
        "UTC",
        description="IANA time zone of the lab (e.g. Asia/Shanghai): report days start at its "
        "local midnight.",
    )
    busy_util_percent: Annotated[float, Field(ge=0, lt=100)] = Field(
        5.0, description="A GPU counts as busy while its utilisation is above this (percent)."
    )
    retention_minute_days: Annotated[float, Field(gt=0)] = Field(
        14.0, description="Keep the minute tier this long."
    )
    retention_hour_days: Annotated[float, Field(gt=0)] = Field(
        400.0, description="Keep the hour tier this long (the day tier is kept forever)."
    )
    rollup_interval_seconds: Annotated[float, Field(gt=0)] = Field(
        300.0, description="How often the server rolls completed hours up into the tiers."
    )
    late_window_hours: Annotated[float, Field(ge=0)] = Field(
        72.0,
        description="Raw samples are kept at least this long, so late (spooled) samples can "
        "still be rolled up with the rest of their hour.",
    )

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, name: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {name!r}; use an IANA name such as Asia/Shanghai or UTC"
            ) from None
        return name


class MailSection(_Section):
    smtp_host: str | None = Field(
        None,
        description="SMTP server for the scheduled e-mail reports and the alert notices to "
        "users (held-but-idle GPUs); unset: no e-mail is sent (subscriptions are still kept).",
    )
    smtp_port: Annotated[int, Field(ge=1, le=65535)] = Field(
        587, description="SMTP port (587 submission with STARTTLS, 25 plain, 465 with ssl)."
    )
    starttls: bool = Field(True, description="Upgrade the SMTP connection with STARTTLS.")
    ssl: bool = Field(
        False,
        description="Connect with TLS from the start (SMTPS, port 465; starttls is then moot).",
    )
    username: str | None = Field(None, description="SMTP login user name (unset: no login).")
    password_env: str = Field(
        "GPUFLEET_SMTP_PASSWORD",
        description="Environment variable holding the SMTP password (never in the file).",
    )
    from_address: str = Field(
        "gpufleet@localhost", description="Sender address of the e-mailed reports."
    )
    public_url: str | None = Field(
        None,
        description="The server's address as readers reach it (e.g. https://gpufleet.lab), for "
        "links in the e-mails.",
    )
    check_interval_seconds: Annotated[float, Field(gt=0)] = Field(
        300.0, description="How often the server checks for reports that are due."
    )
    wait_for_rollup_hours: Annotated[float, Field(ge=0)] = Field(
        6.0,
        description="A period's report waits for the rollup to pass the period's end, but no "
        "longer than this after it (hosts that stopped reporting hold the rollup back).",
    )
    timeout_seconds: Annotated[float, Field(gt=0)] = Field(
        30.0, description="SMTP connection timeout."
    )
    ca_file: Path | None = Field(
        None,
        description="PEM file of the CA(s) to trust for the SMTP server's TLS certificate "
        "(e.g. the lab's own CA); default: the system's.",
    )

    @field_validator("smtp_host", "username", "public_url")
    @classmethod
    def _blank_is_unset(cls, v: str | None) -> str | None:
        return v.strip() or None if isinstance(v, str) else v

    @field_validator("from_address")
    @classmethod
    def _check_from(cls, v: str) -> str:
        if not re.fullmatch(r"[^@\s<>]+@[^@\s<>]+", v):
            raise ValueError(f"{v!r} is not an e-mail address (name@host)")
        return v


class RecommendSection(_Section):
    history_days: Annotated[float, Field(gt=0, le=400)] = Field(
        28.0, description="Days of the warehouse's hour tier the recommender learns from."
    )
    history_refresh_seconds: Annotated[float, Field(ge=5)] = Field(
        300.0, description="How often the recommender's history features are rebuilt."
    )
    snapshot_seconds: Annotated[float, Field(ge=0, le=60)] = Field(
        1.0, description="Answers within this many seconds share one snapshot of live state."
    )
    copy_gbit_per_second: Annotated[float, Field(gt=0)] = Field(
        1.0, description="Effective bandwidth for copying a data set between hosts (Gbit/s)."
    )
    calibrate_online: bool = Field(
        True,
        description="Recalibrate the stated chance and the time-to-free range on this fleet's "
        "own past answers (kept in recommend.sqlite3 in the data dir).",
    )
    settle_seconds: Annotated[float, Field(ge=1, le=3600)] = Field(
        30.0, description="How often past answers are settled against the live state."
    )


class AlertChannelSection(_Section):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")] = Field(
        description="Name of the channel, as shown on pages and in logs (never its URL)."
    )
    url: str | None = Field(
        None,
        description="Apprise URL (mailtos://, slack://, dingtalk://, feishu://, wecombot://, "
        "tgram://, json://, ...). It holds secrets: prefer url_env.",
    )
    url_env: str | None = Field(None, description="Environment variable holding the Apprise URL.")
    severities: list[Literal["critical", "warning", "info"]] = Field(
        ["critical", "warning"], description="Severities this channel is told about."
    )
    match: dict[str, str] = Field(
        default_factory=dict,
        description="Label -> shell-style pattern every message must match (e.g. group: vision*).",
    )

    @field_validator("url_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
            raise ValueError(f"{v!r} is not an environment variable name")
        return v

    def model_post_init(self, _context: Any) -> None:
        if (self.url is None) == (self.url_env is None):
            raise ValueError(f"channel {self.name!r}: give exactly one of url and url_env")


class AlertsSection(_Section):
    enabled: bool = Field(True, description="Evaluate alert rules (the built-in ones are on).")
    evaluate_interval_seconds: Annotated[float, Field(gt=0, le=300)] = Field(
        5.0, description="How often the clock-driven checks run (silence, resolves, sending)."
    )
    group_wait_seconds: Annotated[float, Field(ge=0)] = Field(
        30.0, description="A new message group waits this long for more alerts before it is sent."
    )
    group_interval_seconds: Annotated[float, Field(ge=0)] = Field(
        300.0, description="A group that changed is sent again at most this often."
    )
    repeat_interval_seconds: Annotated[float, Field(gt=0)] = Field(
        4 * 3600.0, description="A group still firing (and not acknowledged) is re-sent this often."
    )
    resolve_hold_seconds: Annotated[float, Field(ge=0)] = Field(
        120.0,
        description="A firing alert whose condition clears is resolved only after it stayed "
        "clear this long (a flapping metric is one incident, not many).",
    )
    builtin: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Changes to built-in rules: rule name -> {threshold, for_seconds, severity, "
        "enabled, ...} (see docs/alerts.md).",
    )
    rules: list[dict[str, Any]] = Field(
        default_factory=list, description="Your own rules (see docs/alerts.md for the fields)."
    )
    channels: list[AlertChannelSection] = Field(
        default_factory=list, description="Where alert messages go (Apprise URLs), with routing."
    )
    alertmanager_url: str | None = Field(
        None,
        description="Also forward firing and resolved alerts to this Prometheus Alertmanager "
        "(v2 API), e.g. http://127.0.0.1:9093.",
    )
    user_notice_url: str | None = Field(
        None,
        description="Apprise URL for notices to the Unix user an alert is about (held-but-idle "
        "GPUs), with {user} (the Unix name) or {email} (their address in the user mapping) in "
        "it, e.g. mailto://smtp.lab:25?to={user}@lab.example. Unset: the notice goes to the "
        "user mapping's e-mail address through the mail settings (when smtp_host is set).",
    )
    probe_port: Annotated[int, Field(ge=1, le=65535)] | None = Field(
        None,
        description="TCP port probed on a silent agent host to tell 'agent down' (it answers) "
        "from 'host down' (unset: no probe; silence counts as host down).",
    )
    probe_timeout_seconds: Annotated[float, Field(gt=0, le=30)] = Field(
        2.0, description="Limit of one probe connection."
    )
    idle_util_percent: Annotated[float, Field(ge=0, le=100)] = Field(
        5.0, description="A held GPU under this utilisation counts as idle (gpu_held_idle)."
    )
    history_days: Annotated[float, Field(gt=0)] = Field(
        180.0, description="Keep alert history this long."
    )


class QueueSection(_Section):
    dispatcher: str = Field(
        "none",
        description="Where the job queue runs jobs: none (the queue is off), replay (the demo's "
        "simulated servers), or a dispatcher of docs/dispatchers.md.",
    )
    dispatcher_options: dict[str, Any] = Field(
        default_factory=dict, description="Settings of the chosen dispatcher (docs/dispatchers.md)."
    )
    policy: str = Field(
        "gpufleet", description="Scheduling policy: gpufleet, fifo, tiresias or dlas."
    )
    memory_margin: Annotated[float, Field(ge=0, le=1)] = Field(
        0.1, description="Margin on a job's stated GPU memory when placing it (0.1: 10%)."
    )
    refresh_seconds: Annotated[float, Field(gt=0, le=300)] = Field(
        5.0, description="Longest wait between scheduling passes (they also run on each event)."
    )
    requeue_within_seconds: Annotated[float, Field(ge=0)] = Field(
        600.0,
        description="A job whose host goes down before it ran this long goes back to pending; "
        "after that it fails with 'host down'.",
    )
    groups: dict[str, list[str]] = Field(
        default_factory=dict, description="Quota groups: group name -> its users."
    )
    quotas: dict[str, dict[str, dict[str, float]]] = Field(
        default_factory=dict,
        description="Limits per user and group: {users|groups: {NAME: {gpus_at_once, "
        "gpu_hours_per_week}}, default: {user: {...}}} (docs/queue.md).",
    )
    replay_time_scale: Annotated[float, Field(gt=0)] = Field(
        1.0, description="Replay dispatcher: a job's duration is multiplied by this."
    )


class UiSection(_Section):
    language: Literal["en", "zh-CN"] = Field(
        "en",
        description="Language of the pages, the CLI and the e-mailed reports when nothing "
        "else chooses one: en or zh-CN (a page's switch and the browser's Accept-Language, "
        "and GPUFLEET_LANG for the CLI, come first; docs/i18n.md).",
    )


class Settings(_Section):
    server: ServerSection = ServerSection()
    ingest: IngestSection = IngestSection()
    retention: RetentionSection = RetentionSection()
    status: StatusSection = StatusSection()
    web: WebSection = WebSection()
    ssh: SshSection = SshSection()
    warehouse: WarehouseSection = WarehouseSection()
    hosts: HostsSection = HostsSection()
    mail: MailSection = MailSection()
    recommend: RecommendSection = RecommendSection()
    alerts: AlertsSection = AlertsSection()
    queue: QueueSection = QueueSection()
    ui: UiSection = UiSection()

    @property
    def database_url(self) -> str:
        return self.server.database or str(self.server.data_dir / "gpufleet.duckdb")

    @property
    def database_url_redacted(self) -> str:
        """The store URL without its password, for /healthz and logs."""
        return redact_url(self.database_url)


def redact_url(url: str) -> str:
    """``postgresql://u:secret@h/db`` -> ``postgresql://u:***@h/db``."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


# Environment variables and the setting each one overrides.
ENV_VARS = {
    "GPUFLEET_HOST": ("server", "host"),
    "GPUFLEET_PORT": ("server", "port"),
    "GPUFLEET_DATA_DIR": ("server", "data_dir"),
    "GPUFLEET_DATABASE": ("server", "database"),
    "GPUFLEET_INGEST_WORKERS": ("ingest", "workers"),
}


def _format_error(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown setting (see docs/configuration.md for the valid keys)"
        lines.append(f"{source}: {loc}: {msg}")
    return "\n".join(lines)


def load_settings(
    path: str | Path | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Read the config file (if any), then the environment, then ``overrides`` (CLI flags)."""
    environ = dict(os.environ if environ is None else environ)
    data: dict[str, Any] = {}
    source = "defaults"
    path = path or environ.get("GPUFLEET_CONFIG")
    if path:
        p = Path(path)
        source = str(p)
        try:
            text = p.read_text()
        except OSError as exc:
            raise ConfigError(
                f"cannot read config file {p}: {exc.strerror}",
                hint="pass an existing file with --config, or leave it out to use the defaults",
            ) from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections")
        data = loaded
    for var, (section, key) in ENV_VARS.items():
        if var in environ and environ[var] != "":
            data.setdefault(section, {})
            if not isinstance(data[section], dict):
                break
            data[section][key] = environ[var]
    for section, values in (overrides or {}).items():
        for key, value in values.items():
            if value is not None:
                data.setdefault(section, {})[key] = value
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            _format_error(exc, source),
            hint="fix the setting named above; every setting is described in docs/configuration.md",
        ) from None
