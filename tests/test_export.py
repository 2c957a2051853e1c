"""Policy bundles: same actions as SB3, data only, refused when tampered, wrong version or wrong pair."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ltd.export import BundleError, export_run, load_bundle

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def bundle_dir(micro_run, tmp_path) -> Path:
    return export_run(micro_run.dir, tmp_path / "bundle")


def test_bundle_actions_equal_sb3_deterministic_actions(micro_run, bundle_dir, micro_pair):
    from stable_baselines3 import PPO

    from ltd.env import make_env

    bundle = load_bundle(bundle_dir, micro_pair)
    assert sorted(p.name for p in bundle_dir.iterdir()) == ["README.md", "manifest.json", "weights.safetensors"]
    for view, index in (("width", 0), ("depth", 1)):
        # the bundle holds the best policies; here training had one phase per view, so they are these
        model = PPO.load(micro_run.phase_zip(index, view), device="cpu")
        env = make_env(micro_run.spec, view)
        obs, _ = env.reset(seed=0)
        rng = np.random.default_rng(0)
        recorded = []
        while len(recorded) < 1000:
            recorded.append(obs)
            obs, _, done, _, _ = env.step(int(rng.integers(env.action_space.n)))
            if done:
                obs, _ = env.reset()
        batch = np.stack(recorded)
        # also points off the training distribution, where near-ties are likelier
        batch = np.concatenate([batch, rng.random((200, batch.shape[1]), dtype=np.float32)])
        sb3_actions, _ = model.predict(batch, deterministic=True)
        ours = [bundle.policies[view].act(o) for o in batch]
        assert list(sb3_actions) == ours


def test_generate_with_a_bundle_is_the_targets_greedy_output(bundle_dir, micro_pair, micro_prompts, tmp_path):
    from test_cli import run_ltd

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in micro_prompts[:4]) + "\n")
    proc = run_ltd("generate", "--pair", "micro", "--policy", str(bundle_dir), "--prompts", str(prompts), "--json",
                   "--max-new-tokens", "16")
    assert proc.returncode == 0, proc.stderr
    for line in proc.stdout.splitlines():
        row = json.loads(line)
        ids = row["prompt_ids"]
        ref = micro_pair.target.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False,
                                         pad_token_id=micro_pair.tokenizer.pad_token_id)[0, len(ids):].tolist()
        assert row["output_ids"] == ref


def test_runtime_does_not_import_stable_baselines3(bundle_dir):
    import subprocess
    import sys

    code = (f"import sys, ltd; b = ltd.load_bundle({str(bundle_dir)!r}); b.controller(); "
            "assert 'stable_baselines3' not in sys.modules, 'runtime imported SB3'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_tampered_weights_are_refused(bundle_dir):
    w = bundle_dir / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match the hash"):
        load_bundle(bundle_dir)


def test_wrong_format_version_is_refused(bundle_dir):
    m = json.loads((bundle_dir / "manifest.json").read_text())
    m["format_version"] = 99
    (bundle_dir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="format version 99"):
        load_bundle(bundle_dir)


def test_another_pairs_bundle_is_refused_unless_forced(bundle_dir, noisy_pair):
    with pytest.raises(BundleError, match="trained for pair"):
        load_bundle(bundle_dir, noisy_pair)
    assert load_bundle(bundle_dir, noisy_pair, force=True).policies


def test_pickle_payloads_are_refused(bundle_dir):
    import hashlib

    class Boom:
        def __reduce__(self):
            return (print, ("this must never run",))

    (bundle_dir / "extra.pkl").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(BundleError, match="unexpected file 'extra.pkl'"):
        load_bundle(bundle_dir)
    (bundle_dir / "extra.pkl").unlink()
    # a pickle in place of the weights, with a manifest that vouches for it
    w = bundle_dir / "weights.safetensors"
    w.write_bytes(pickle.dumps(Boom()))
    m = json.loads((bundle_dir / "manifest.json").read_text())
    m["weights_sha256"] = hashlib.sha256(w.read_bytes()).hexdigest()
    (bundle_dir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="not a safetensors file"):
        load_bundle(bundle_dir)


def test_cli_reports_a_bad_bundle_in_one_line(bundle_dir, micro_dir):
    from test_cli import assert_one_line_error, run_ltd

    (bundle_dir / "manifest.json").write_text("{not json")
    assert_one_line_error(run_ltd("generate", "--pair", "micro", "--policy", str(bundle_dir), "--prompt", "x"),
                          "not valid JSON")
    assert_one_line_error(run_ltd("generate", "--pair", "micro", "--policy", str(bundle_dir / "nope"),
                                  "--prompt", "x"), "does not exist")
