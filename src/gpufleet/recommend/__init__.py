"""Recommend where a job should run now (DESIGN.md capability 3).

Pure core: ``request`` (what is asked, validated), ``fleet`` (a snapshot of hosts and GPUs),
``history`` (features from the warehouse's hour tier), ``rank`` (feasible sets, scores,
reasons), ``eta`` (when nothing fits: the binding limit, the time to free), ``baselines``
(simple rules to compare with) and ``trace``/``labfleet``/``lab``/``evaluate``/``evalreport``/
``latency`` (the closed-loop evaluation). I/O at the edges: ``service`` (live state and the
store), ``api`` (HTTP and the page), ``cli``.
"""
