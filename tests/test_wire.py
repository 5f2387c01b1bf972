"""gpufleet.wire.trusted_batch: a logged batch read back without validating it again gives
the same ``Batch`` as validation does."""

from __future__ import annotations

import json
import time

import pytest
from pydantic import ValidationError

from gpufleet.wire import Batch, trusted_batch
from tests.conftest import make_batch, make_sample

NOW = time.time()


def terse() -> bytes:
    """A batch as a minimal agent might send it: defaults left out, integers for floats,
    nulls, an XID event, a process in a container, two samples of two hosts."""
    sample = {
        "host": "gpu07",
        "ts": int(NOW) - 5,
        "host_metrics": {"cpu_percent": 50, "load1": 2, "disks": [
            {"mount": "/", "total_bytes": 10**12, "used_bytes": 10**11}
        ]},
        "gpus": [
            {"index": 0, "power_watts": 250, "temperature_celsius": None,
             "xid_events": [{"xid": 79, "ts": int(NOW) - 7}]},
            {"index": 1, "error": "NVML: GPU is lost"},
        ],
        "processes": [{"pid": 4242, "gpu_index": 0, "user": "alice", "started_at": int(NOW) - 99,
                       "container_id": "abc", "container_runtime": "docker"}],
        "errors": ["nvidia-smi timed out"],
    }  # fmt: skip
    other = {"host": "gpu08", "ts": NOW - 5.5, "interval_seconds": 10}
    return json.dumps({
        "batch_id": "terse-batch-0001", "sent_at": int(NOW), "samples": [sample, other],
    }).encode()  # fmt: skip


@pytest.mark.parametrize(
    "raw",
    [
        terse(),
        make_batch(make_sample("a", NOW), make_sample("b", NOW - 1, gpus=2, procs=0))
        .model_dump_json()
        .encode(),
        make_batch(make_sample("c", NOW, gpus=0, procs=0)).model_dump_json().encode(),
    ],
    ids=["terse", "full", "no-gpus"],
)
def test_a_trusted_batch_is_the_validated_batch(raw):
    checked, trusted = Batch.model_validate_json(raw), trusted_batch(raw)
    assert type(trusted) is Batch
    assert trusted == checked
    assert trusted.model_dump_json() == checked.model_dump_json()
    assert trusted.model_fields_set == checked.model_fields_set
    for got, want in zip(trusted.samples, checked.samples, strict=True):
        assert got.model_fields_set == want.model_fields_set
        assert type(got.ts) is float and type(got.interval_seconds) is float
        for gpu in got.gpus:
            assert gpu.power_watts is None or type(gpu.power_watts) is float
    # defaults are fresh per instance, as pydantic makes them
    first, second = trusted_batch(raw), trusted_batch(raw)
    first.samples[-1].errors.append("x")
    assert second.samples[-1].errors != first.samples[-1].errors


def test_a_trusted_batch_is_not_checked_again():
    """What the server reads from its own logs was checked before it was logged: the
    bounds and cross-field rules are not paid for twice."""
    raw = json.loads(terse())
    raw["samples"][0]["host_metrics"]["cpu_percent"] = 250  # over 100: validation refuses
    data = json.dumps(raw).encode()
    with pytest.raises(ValidationError):
        Batch.model_validate_json(data)
    assert trusted_batch(data).samples[0].host_metrics.cpu_percent == 250.0


def test_data_that_does_not_fit_the_models_is_validated_and_refused():
    with pytest.raises(ValueError, match="samples"):
        trusted_batch(b'{"batch_id": "x1234567", "sent_at": 1, "samples": {"no": "list"}}')
    with pytest.raises(ValueError):
        trusted_batch(b"not json")
