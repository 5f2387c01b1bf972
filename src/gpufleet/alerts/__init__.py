"""Alerts and health (capability 4): rules over hosts', GPUs', users' and the fleet's metrics,
evaluated as samples arrive; Alertmanager's life cycle (pending, firing, resolved; grouping,
inhibition, silences, acknowledgement); messages through Apprise. See docs/alerts.md.

Pure cores: ``rules`` (what a rule says, the built-in set), ``metrics`` (a sample as alert
metrics), ``engine`` (evaluation and life cycle), ``notify`` (who is told what, when). Edges:
``persist`` (state across restarts), ``channels`` (Apprise), ``service`` (the server's glue),
``api`` (routes and the page), ``cli``.
"""
