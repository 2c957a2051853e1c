"""Sweeps: a grid x seeds trained, exported, benchmarked and summarised by Ray Tune; resumable; bad files refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ltd.errors import ConfigError
from ltd.stats import mean_ci
from ltd.sweep import load_sweep

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def sweep_file(micro_dir, tmp_path) -> Path:
    shutil.copy(ROOT / "envs" / "micro-code.yaml", tmp_path / "micro-code.yaml")
    (tmp_path / "ppo.yaml").write_text("rounds: 0\ntimesteps: {width: 64, depth: 64}\n"
                                       "ppo: {width: {n_steps: 32}, depth: {n_steps: 32}}\nvalidation_prompts: 2\n")
    (tmp_path / "sweep.yaml").write_text(
        "name: test-sweep\nspec: micro-code.yaml\nconfig: ppo.yaml\n"
        "grid:\n  spec.reward: [throughput, accepted]\nseeds: [0]\nbench: {prompts: 3, max_new_tokens: 12}\n")
    return tmp_path / "sweep.yaml"


def test_a_sweep_runs_every_point_and_resumes_without_redoing_work(sweep_file, tmp_path):
    pytest.importorskip("ray")
    from ltd.sweep import run_sweep

    out = tmp_path / "out"
    summary = run_sweep(sweep_file, out)
    assert [p["point"] for p in summary["points"]] == [{"spec.reward": "throughput"}, {"spec.reward": "accepted"}]
    for p in summary["points"]:
        assert p["ltd_vs_partner"]["n"] == 1 and p["ltd_vs_partner"]["mean"] > 0
    for name in ("summary.md", "summary.json", "summary.png"):
        assert (out / name).exists()
    trial = out / "reward=accepted,seed=0"
    assert "reward: accepted" in (trial / "spec.yaml").read_text()
    state = trial / "run" / "state.json"
    assert json.loads(state.read_text())["finished"]
    stamp = state.stat().st_mtime_ns
    again = run_sweep(sweep_file, out)  # restored: nothing is trained or measured again
    assert state.stat().st_mtime_ns == stamp
    assert again["points"] == summary["points"]


@pytest.mark.parametrize("text, words", [
    ("name: x\nspec: a.yaml\ngrid: {reward: [rate]}\n", "must start with spec. or train."),
    ("name: x\nspec: a.yaml\ncolour: red\n", "unknown key 'colour'"),
    ("name: x\nspec: a.yaml\ngrid: {spec.reward: []}\n", "has no values"),
    ("name: x\nspec: a.yaml\nseeds: []\n", "seeds"),
    ("[1, 2]\n", "must be a YAML mapping"),
])
def test_bad_sweep_files_fail_in_one_line(tmp_path, text, words):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")) as err:
        load_sweep(path)
    assert "\n" not in str(err.value)


def test_mean_ci_covers_the_mean():
    ci = mean_ci([1.0, 1.2, 0.8, 1.1])
    assert ci["mean"] == pytest.approx(1.025) and ci["n"] == 4
    assert ci["lo"] < ci["mean"] < ci["hi"]
    assert mean_ci([2.0])["lo"] is None
