"""The demo's job trace: read by :mod:`gpufleet.philly` (the one reader, shared with the
simulator); the Philly trace ships with the package."""

from __future__ import annotations

from gpufleet.philly import TRACE_ENV, TRACE_NAME, TraceJob, default_trace_path, load_trace

__all__ = ["TRACE_ENV", "TRACE_NAME", "TraceJob", "default_trace_path", "load_trace"]
