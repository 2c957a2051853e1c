"""Reliability: no lost work when killed, no crash on bad files, no code from files, no leaks, determinism."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ltd.paths import settled_dir

ROOT = Path(__file__).resolve().parents[1]


def _kill_during(script: str, tmp_path: Path, delays: list[float]) -> None:
    """Start ``script`` (which prints ``ready`` once it has written once) and SIGKILL it after each delay."""
    for delay in delays:
        proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), str(tmp_path)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        yield


def test_sigkill_while_writing_a_file_leaves_a_whole_one(tmp_path):
    script = """
        import sys
        from pathlib import Path
        from ltd.paths import atomic_write_bytes
        path = Path(sys.argv[1]) / "data.bin"
        payloads = [bytes([i]) * (24 << 20) for i in range(2)]
        atomic_write_bytes(path, payloads[0])
        print("ready", flush=True)
        i = 1
        while True:
            atomic_write_bytes(path, payloads[i % 2])
            i += 1
    """
    for _ in _kill_during(script, tmp_path, [0.05, 0.13, 0.31, 0.47]):
        data = (tmp_path / "data.bin").read_bytes()
        assert len(data) == 24 << 20 and data in (b"\0" * (24 << 20), b"\1" * (24 << 20))


def test_sigkill_while_replacing_a_folder_leaves_a_whole_one(tmp_path):
    script = """
        import shutil, sys
        from pathlib import Path
        from ltd.paths import replace_dir
        root = Path(sys.argv[1])
        def write(version):
            staging = root / "bundle.staging"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            for name in ("a.bin", "b.bin", "c.bin"):
                (staging / name).write_bytes(bytes([version]) * (4 << 20))
            replace_dir(staging, root / "bundle")
        write(0)
        print("ready", flush=True)
        i = 1
        while True:
            write(i % 2)
            i += 1
    """
    for _ in _kill_during(script, tmp_path, [0.02, 0.07, 0.11, 0.23, 0.29, 0.41]):
        folder = settled_dir(tmp_path / "bundle")
        contents = {(folder / n).read_bytes() for n in ("a.bin", "b.bin", "c.bin")}
        assert len(contents) == 1 and contents.pop() in (b"\0" * (4 << 20), b"\1" * (4 << 20))


def _ltd(*args: str, home: Path) -> subprocess.Popen:
    env = dict(os.environ, LTD_HOME=str(home))
    return subprocess.Popen([sys.executable, "-m", "ltd.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_training_killed_mid_phase_resumes_and_finishes(micro_spec, ltd_home, tmp_path):
    config = tmp_path / "ppo.yaml"
    config.write_text("rounds: 0\ncheckpoint_every: 64\ntimesteps: {width: 128, depth: 1024}\n"
                      "ppo: {width: {n_steps: 64}, depth: {n_steps: 64}}\n")
    run_dir = tmp_path / "run"
    proc = _ltd("train", str(micro_spec), "--config", str(config), "--run-dir", str(run_dir), home=ltd_home)
    checkpoint = run_dir / "phase-1-depth.zip"
    deadline = time.time() + 300
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert checkpoint.exists(), proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGKILL)  # mid-phase: the depth phase has 1024 steps, checkpoints every 64
    proc.wait(timeout=60)
    state = json.loads((run_dir / "state.json").read_text())
    assert state["phase"] == 1 and not state["finished"]

    resumed = _ltd("train", "--resume", str(run_dir), home=ltd_home)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]
    assert "only resume runs you made" in err
    state = json.loads((run_dir / "state.json").read_text())
    assert state["finished"] and state["phase"] == 2
    (resume,) = state["resumes"]
    assert resume["phase"] == 1 and resume["from_step"] >= 64  # at most the steps since a checkpoint lost
    from stable_baselines3 import PPO

    assert PPO.load(checkpoint, device="cpu").num_timesteps == 1024


def test_training_twice_with_the_cost_clock_gives_identical_policies(micro_spec, tmp_path):
    from ltd.train import TrainingRun, load_config

    config = load_config(None, {"rounds": 1, "seed": 7, "timesteps": {"width": 128, "depth": 128},
                                "ppo": {"width": {"n_steps": 64}, "depth": {"n_steps": 64}}})
    runs = []
    for name in ("a", "b"):
        run = TrainingRun.create(micro_spec, config, tmp_path / name)
        run.run()
        runs.append(run)
    for view in ("width", "depth"):
        a, b = (r.policy_path(view).read_bytes() for r in runs)
        assert a == b, f"{view} policies differ between two identical runs"
    def figures(run):  # all but the wall-clock training speed
        return [{k: v for k, v in f.items() if k != "env_steps_per_s"} for f in run.state["validation"]]

    assert figures(runs[0]) == figures(runs[1])
    other = TrainingRun.create(micro_spec, config.model_copy(update={"seed": 8}), tmp_path / "c")
    other.run()
    assert other.policy_path("depth").read_bytes() != runs[0].policy_path("depth").read_bytes()


# ----------------------------------------------------------------------------- bad files: fuzzing

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ltd.errors import LtdError  # noqa: E402

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
scalars = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=20)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                          max_size=4), max_leaves=12)


def documents(known: dict) -> st.SearchStrategy:
    """Valid documents with some keys deleted, replaced by junk or added; or junk altogether."""
    def mutate(draw_data):
        doc, drops, swaps, extra = draw_data
        doc = json.loads(json.dumps(doc))
        for key in drops:
            doc.pop(key, None)
        for key, value in swaps:
            if isinstance(doc.get(key), dict) and doc[key] and isinstance(value, tuple):
                sub = sorted(doc[key])[value[0] % len(doc[key])]
                doc[key][sub] = value[1]
            else:
                doc[key] = value[1] if isinstance(value, tuple) else value
        doc.update(extra)
        return doc
    keys = st.sampled_from(sorted(known))
    mutated = st.tuples(st.just(known), st.lists(keys, max_size=2),
                        st.lists(st.tuples(keys, values | st.tuples(st.integers(0, 9), values)), max_size=3),
                        st.dictionaries(st.text(max_size=8), values, max_size=1)).map(mutate)
    return mutated | values


def text_files(known: dict, dump) -> st.SearchStrategy:
    return documents(known).map(dump).map(str.encode) | st.binary(max_size=200) | st.text(max_size=200).map(str.encode)


def _only_ltd_errors(load, path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        load(path)
    except LtdError as exc:
        assert "\n" not in str(exc).strip(), f"error message is not one line: {exc!r}"


@pytest.fixture(scope="module")
def valid_spec() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "envs" / "micro-code.yaml").read_text())


@FUZZ
@given(data=st.data())
def test_fuzzed_env_specs_raise_only_ltd_errors(valid_spec, tmp_path, data):
    import yaml

    from ltd.spec import load_spec

    _only_ltd_errors(load_spec, tmp_path / "spec.yaml", data.draw(text_files(valid_spec, yaml.safe_dump)))


@FUZZ
@given(data=st.data())
def test_fuzzed_training_configs_raise_only_ltd_errors(tmp_path, data):
    import yaml

    from ltd.train import load_config

    known = yaml.safe_load((ROOT / "experiments" / "ppo.yaml").read_text())
    _only_ltd_errors(load_config, tmp_path / "ppo.yaml", data.draw(text_files(known, yaml.safe_dump)))


@FUZZ
@given(lines=st.lists(st.binary(max_size=40) | documents({"prompt": "x", "turns": ["y"]}).map(json.dumps)
                      .map(str.encode), max_size=5))
def test_fuzzed_prompt_files_raise_only_ltd_errors(tmp_path, lines):
    from ltd.runtime import read_prompts

    _only_ltd_errors(read_prompts, tmp_path / "prompts.jsonl", b"\n".join(lines))


@FUZZ
@given(data=st.data())
def test_fuzzed_cost_models_raise_only_ltd_errors(tmp_path, data):
    from ltd.clock import CostModel

    known = {"draft": [1e-3, 1e-4], "verify": [2e-3, 1e-4, 1e-7], "tree": 1e-4,
             "draft_vocab": 0, "pair_fingerprint": "abc", "hardware": {}, "fit_error": {}, "version": 2}
    _only_ltd_errors(CostModel.load, tmp_path / "m.cost.json", data.draw(text_files(known, json.dumps)))


@FUZZ
@given(data=st.data())
def test_fuzzed_pair_files_raise_only_ltd_errors(tmp_path, data):
    import yaml

    from ltd.pair import load_pair

    _only_ltd_errors(lambda p: load_pair(str(p)), tmp_path / "pair.yaml",
                     data.draw(text_files({"target": "t", "draft": "d", "preset": "micro"}, yaml.safe_dump)))


@pytest.fixture(scope="module")
def bundle_template(micro_run, tmp_path_factory) -> Path:
    from ltd.export import export_run

    return export_run(micro_run.dir, tmp_path_factory.mktemp("bundle") / "bundle")


@FUZZ
@given(data=st.data(), weights=st.none() | st.binary(max_size=300))
def test_fuzzed_bundles_raise_only_ltd_errors(bundle_template, micro_pair, tmp_path, data, weights):
    import shutil

    from ltd.export import load_bundle
    from ltd.paths import sha256_file

    bundle = tmp_path / "b"
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.copytree(bundle_template, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    if weights is not None:  # other weights, with their hash in the manifest so the loader reads them
        (bundle / "weights.safetensors").write_bytes(weights)
        manifest["weights_sha256"] = sha256_file(bundle / "weights.safetensors")
    raw = data.draw(text_files(manifest, json.dumps))

    def load(path: Path):
        load_bundle(bundle, micro_pair).controller()

    _only_ltd_errors(load, bundle / "manifest.json", raw)


@FUZZ
@given(data=st.data())
def test_fuzzed_model_folders_raise_only_ltd_errors(micro_dir, tmp_path, data):
    import shutil

    from ltd.pair import load_pair

    target = tmp_path / "target"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(micro_dir / "target", target)
    config = json.loads((target / "config.json").read_text())
    victim = data.draw(st.sampled_from(["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]))
    if victim == "config.json":
        raw = data.draw(text_files(config, json.dumps))
    else:
        original = (target / victim).read_bytes()
        cut = data.draw(st.integers(0, len(original)))
        raw = data.draw(st.sampled_from([original[:cut], original[:cut] + b"\0" * 64 + original[cut + 64:],
                                         data.draw(st.binary(max_size=100))]))
    _only_ltd_errors(lambda p: load_pair(f"target={target},draft={micro_dir / 'draft'}"), target / victim, raw)


# ----------------------------------------------------------------------------- files from others: no code


def test_no_loader_unpickles(micro_pair, micro_dir, micro_spec, bundle_template, monkeypatch):
    """Every loader of files a user may get from others works with pickle and torch.load disabled."""
    import pickle

    import torch

    from ltd.clock import CostModel
    from ltd.export import load_bundle
    from ltd.pair import load_pair
    from ltd.runtime import read_prompts
    from ltd.spec import load_spec
    from ltd.train import load_config

    def refuse(*args, **kwargs):
        raise AssertionError("a loader tried to unpickle")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    load_pair(f"target={micro_dir / 'target'},draft={micro_dir / 'draft'}")
    load_bundle(bundle_template, micro_pair).controller()
    spec = load_spec(micro_spec)
    CostModel.load(spec.cost_model_path)
    read_prompts(micro_dir / "prompts_heldout.jsonl")
    load_config(ROOT / "experiments" / "ppo.yaml")


def test_error_messages_stay_one_line_whatever_a_file_holds():
    from ltd.errors import ConfigError

    assert str(ConfigError("unknown key 'a\nb\rc'")) == "unknown key 'a\\nb\\rc'"
