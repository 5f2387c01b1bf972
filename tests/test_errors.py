"""GpufleetError's message and hint, where click shows them."""

import io

import pytest

from gpufleet.errors import GpufleetError


def test_show_writes_message_and_hint_to_the_given_file(capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    GpufleetError("no such host", hint="gpufleet hosts lists them").show(file=out)
    assert out.getvalue() == "error: no such host\nhint: gpufleet hosts lists them\n"
    assert capsys.readouterr().err == ""


def test_show_without_a_file_writes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    GpufleetError("bad config").show()
    captured = capsys.readouterr()
    assert captured.err == "error: bad config\n"
    assert captured.out == ""
