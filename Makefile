# The README's commands. Each one sets up what it needs first (scripts/setup.sh).
.PHONY: setup run test test-fast lint bench bench-prometheus bench-alerts-prometheus clean

PORT ?= 8000
DATA ?= gpufleet-data
PYTEST_ARGS ?=
DEMO_ARGS ?=

setup:
	@scripts/setup.sh

## run: the demo: server, a live local agent and a replayed fleet of 24 GPU servers
##      (http://127.0.0.1:$(PORT)), with 90 days of history on first start;
##      DEMO_ARGS="--history-days 30" (see gpufleet demo --help); `gpufleet server --local-agent`
##      for this machine only
run: setup
	.venv/bin/gpufleet demo --data-dir $(DATA) --port $(PORT) $(DEMO_ARGS)

## test: the whole suite, slow end-to-end tests included (what CI runs)
test: setup
	.venv/bin/ruff check src tests bench scripts
	.venv/bin/ruff format --check src tests bench scripts
	.venv/bin/mypy
	.venv/bin/python -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)

## test-fast: skip the slow end-to-end tests
test-fast: setup
	.venv/bin/python -m pytest -n 2 --dist loadfile -m "not slow" $(PYTEST_ARGS)

lint: setup
	.venv/bin/ruff check src tests bench scripts
	.venv/bin/ruff format --check src tests bench scripts
	.venv/bin/mypy

## bench: print the performance figures (docs/benchmarks.md records them)
bench: setup
	.venv/bin/python bench/agent_round.py
	.venv/bin/python bench/ingest.py
	.venv/bin/python bench/ui.py
	.venv/bin/python bench/sched_bench.py
	.venv/bin/python bench/frag_bench.py
	.venv/bin/python bench/recommend_bench.py
	.venv/bin/python bench/queue_bench.py --seeds 0 1 2

## bench-prometheus: the usage reports beside PromQL on the same 30 days (10-25 minutes)
bench-prometheus: setup
	.venv/bin/python bench/vs_prometheus.py

## bench-alerts-prometheus: gpufleet's alerts beside Prometheus + Alertmanager, same faults (~22 min)
bench-alerts-prometheus: setup
	nice -n 10 .venv/bin/python bench/alerts_vs_prometheus.py

clean:
	rm -rf .venv .pytest_cache .ruff_cache .mypy_cache
