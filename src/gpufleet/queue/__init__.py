"""The live job queue: submit, the simulator's policies driven by a real clock, dispatch to
servers (SSH, Slurm, Kubernetes, the demo's replayed fleet), event-driven completion, and a
predictor that learns from what ran (capability 5 of DESIGN.md; docs/queue.md)."""
