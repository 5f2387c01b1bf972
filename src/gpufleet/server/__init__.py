"""The gpufleet server: ingest, the HTTP API, live state, and the agent-less SSH poller."""
