"""Alert tests' kit: samples collected by the agent's real collector over a fake NVML (the only
fake: this machine has no GPU) and the agent tests' committed /proc tree, and a small driver
that runs the engine and the dispatcher the way the service does, on a simulated clock."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from gpufleet.agent.collect import Collector
from gpufleet.agent.fakenvml import FakeNvml
from gpufleet.alerts.engine import Alert, AlertEngine, EngineConfig, HostSeen
from gpufleet.alerts.notify import Dispatcher, Message, Silence, Timing
from gpufleet.alerts.rules import builtin_rules
from gpufleet.wire import Sample
from tests.agent.conftest import HOST_ROOT, PROC_ROOT

T0 = 1_800_000_000.0
GIB = 2**30


@dataclass
class FakeHost:
    """One host: a fake NVML with 8 GPUs, the agent's collector, and edits of host metrics."""

    name: str
    nvml: FakeNvml
    collector: Collector
    host_edits: dict = field(default_factory=dict)

    def sample(self, ts: float) -> Sample:
        s = self.collector.collect()
        hm = s.host_metrics.model_copy(update=self.host_edits)
        return s.model_copy(update={"ts": ts, "host_metrics": hm})


@dataclass
class Driver:
    engine: AlertEngine
    dispatcher: Dispatcher
    silences: list[Silence] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    hosts: dict[str, HostSeen] = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)  # every state change, in order

    def feed(self, sample: Sample, now: float, skew: float = 0.0) -> None:
        h = self.hosts.setdefault(sample.host, HostSeen(sample.host, now, 5.0))
        h.last_received = now
        self.engine.observe(sample, now=now, skew_seconds=skew, group=h.group)

    def tick(self, now: float) -> list[Message]:
        self.engine.tick(now, list(self.hosts.values()))
        taken = self.engine.take_events()
        self.events += taken
        for e in taken:
            if e["event"] == "resolved":
                self.dispatcher.resolved(Alert.from_dict(e["alert"]))
        out = self.dispatcher.flush(list(self.engine.alerts.values()), self.silences, now)
        self.messages += out
        return out

    def firing(self, rule: str | None = None) -> list[Alert]:
        return [a for a in self.engine.alerts.values()
                if a.state == "firing" and (rule is None or a.rule == rule)]  # fmt: skip


@pytest.fixture
def make_host() -> Iterator[Callable[..., FakeHost]]:
    made: list[Collector] = []

    def make(name: str = "node-01", gpus: int = 8, **kw: object) -> FakeHost:
        nvml = FakeNvml.with_models(["NVIDIA A100-SXM4-80GB"] * gpus)
        kw.setdefault("nvml_timeout_seconds", 0.2)
        c = Collector(nvml=nvml, host_name=name, proc_root=PROC_ROOT, host_root=HOST_ROOT,
                      **kw)  # type: ignore[arg-type]  # fmt: skip
        made.append(c)
        return FakeHost(name, nvml, c)

    yield make
    for c in made:
        c.close()


@pytest.fixture
def make_driver() -> Callable[..., Driver]:
    def make(rules=None, timing: Timing | None = None, **cfg: object) -> Driver:
        rules = builtin_rules() if rules is None else rules
        cfg.setdefault("resolve_hold_seconds", 60.0)
        engine = AlertEngine(rules, EngineConfig(**cfg))  # type: ignore[arg-type]
        d = Dispatcher(timing or Timing(30.0, 300.0, 4 * 3600.0))
        d.group_by = {r.name: r.group_by for r in rules}
        return Driver(engine, d)

    return make
