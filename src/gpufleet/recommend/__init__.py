"""Recommend where a job should run now (DESIGN.md capability 3).

Pure core: ``request`` (what is asked, validated), ``fleet`` (a snapshot of hosts and GPUs),
``history`` (features from the warehouse's hour tier), ``rank`` (feasible sets, scores,
reasons, the ETA when nothing fits), ``baselines`` (simple rules to compare with) and
``sim``/``evaluate`` (the replay harness). I/O at the edges: ``service`` (live state and the
store), ``api`` (HTTP and the page), ``cli``.
"""
