"""The gpufleet server: the app that assembles every capability, ingest and its worker
processes, `/metrics`, the OpenAPI document, and `gpufleet server` / `token`. It sits on
top: nothing but the demo and the command line imports it (scripts/fences.py)."""
