"""The replay fleet: simulated GPU servers whose processes are real jobs from a trace.

Each simulated host is a :class:`~gpufleet.agent.fakenvml.FakeNvml` (its GPUs), a simulated host
metrics source and a simulated ``/proc`` (who owns each GPU process), read by the agent's own
:class:`~gpufleet.agent.collect.Collector` and pushed through the agent's
:class:`~gpufleet.agent.spool.Spool` and :class:`~gpufleet.agent.push.Sender` to the ingest API,
with ``Batch.source = "replay"``.

    trace = load_trace()                                   # philly_jobs.csv
    engine = FleetEngine(build_fleet(500, seed=0), trace, server_url, token,
                         spool_root=tmp, interval=5.0, speed=60.0)
    engine.start(); ...; engine.stop()

``gpufleet demo`` runs it next to a server and a real agent for this machine.
"""

from gpufleet.demo.engine import FleetEngine
from gpufleet.demo.fleet import HostSpec, build_fleet
from gpufleet.demo.replay import Replay
from gpufleet.demo.trace import TraceJob, default_trace_path, load_trace

__all__ = [
    "FleetEngine",
    "HostSpec",
    "Replay",
    "TraceJob",
    "build_fleet",
    "default_trace_path",
    "load_trace",
]
