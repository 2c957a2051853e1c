"""The main job end to end on the micro pair: train, export, benchmark, report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_demo_on_the_micro_pair(micro_dir, tmp_path):
    from test_cli import run_ltd

    shutil.copy(ROOT / "envs" / "micro-code.yaml", tmp_path / "micro-code.yaml")
    proc = run_ltd("demo", "--quick", "--spec", str(tmp_path / "micro-code.yaml"), "--out", str(tmp_path / "demo"))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "demo" / "bench.json").read_text())
    assert set(summary["methods"]) == {"ar", "static", "grid", "partner", "ltd"}
    for name, m in summary["methods"].items():
        assert m["identical_to_ar"], name  # policies change speed, never text
        assert m["tokens_per_s"] > 0
    assert (tmp_path / "demo" / "bench.png").stat().st_size > 1000
    assert "| method |" in (tmp_path / "demo" / "bench.md").read_text()
    assert (tmp_path / "demo" / "policy" / "manifest.json").exists()
