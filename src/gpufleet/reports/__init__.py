"""Usage warehouse reports: a pure core (facts, calendar, core) over the store's tiers, the
service that fetches facts for it, the ``gpufleet report`` and ``gpufleet rollup`` commands and
the ``/api/v1/reports`` route. Design: docs/warehouse.md."""
