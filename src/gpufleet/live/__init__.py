"""Live state of the fleet: the newest sample of each host, kept in memory and fed by ingest
and the SSH poller; the web UI, the recommender and the job queue read it (``state``)."""
