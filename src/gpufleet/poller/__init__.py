"""Agent-less collection: the server polls hosts over SSH (``nvidia-smi`` CSV and ``/proc``).

- :mod:`gpufleet.poller.parse`: pure functions, poll output text → :class:`gpufleet.wire.Sample`.
- :mod:`gpufleet.poller.ssh`: one SSH round trip per poll, connection reuse, error reasons.
- :mod:`gpufleet.poller.service`: :class:`SshPoller` and its :class:`SshHostConfig`.
"""
