"""The import fences between packages (scripts/fences.py): no backward import anywhere, and the
per-package ruff.toml files that make ruff fail on one are generated from the current table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "fences.py"


def _check() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=120
    )


def test_no_package_imports_one_above_or_beside_it() -> None:
    done = _check()
    assert done.returncode == 0, done.stderr


def test_a_backward_import_is_caught(tmp_path: Path) -> None:
    # a capability importing the server that assembles it: the check names the file and levels
    bad = ROOT / "src" / "gpufleet" / "recommend" / "_fence_probe.py"
    bad.write_text("def f():\n    from gpufleet.server import app\n    return app\n")
    try:
        done = _check()
    finally:
        bad.unlink()
    assert done.returncode == 1
    assert "recommend/_fence_probe.py: recommend" in done.stderr
    assert "gpufleet.server" in done.stderr
