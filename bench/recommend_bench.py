"""The recommender's evaluation (docs/recommender.md): the same as `gpufleet evaluate-recommender`.

.venv/bin/python bench/recommend_bench.py            # ~2-4 min on one core
.venv/bin/python bench/recommend_bench.py --quick    # seconds, a small fleet
.venv/bin/python bench/recommend_bench.py --json
"""

from __future__ import annotations

import sys

from gpufleet.recommend.cli import evaluate_recommender

if __name__ == "__main__":
    evaluate_recommender.main(sys.argv[1:], prog_name="recommend_bench.py")
