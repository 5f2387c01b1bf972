"""Dispatchers: how a placed job reaches the machines that run it. Each one implements
:class:`gpufleet.queue.dispatch.base.Dispatcher`; the queue never knows which one it drives."""
