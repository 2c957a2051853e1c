"""The Gymnasium environments: checkers pass, training beats random, specs fail clearly."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from ltd.env import make_env

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("view", ["depth", "width"])
def test_gymnasium_and_sb3_env_checkers_pass(micro_spec, view):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = make_env(micro_spec, view)
    check_env(env, skip_render_check=True)
    sb3_check_env(env)


def test_spec_ids_are_registered_on_import():
    import ltd  # noqa: F401

    for view in ("depth", "width"):
        assert f"ltd/micro-code-{view}-v0" in gym.registry
        assert f"ltd/tiny-code-{view}-v0" in gym.registry
    assert gym.registry["ltd/micro-code-depth-v0"].nondeterministic is False


def test_info_and_episode_semantics(micro_spec):
    env = make_env(micro_spec, "depth")
    obs, info = env.reset(seed=3)
    assert obs.shape == env.observation_space.shape and obs.dtype == np.float32
    assert len(info["feature_names"]) == obs.shape[0]
    steps = 0
    while True:
        obs, reward, terminated, truncated, info = env.step(1)
        steps += 1
        if terminated:
            break
        assert reward == 0.0
    assert steps == env.config.drafting.max_depth  # continue until the depth limit
    for key in ("accepted", "tokens", "depth", "width", "draft_seconds", "verify_seconds", "seconds"):
        assert key in info
    assert info["depth"] == env.config.drafting.max_depth and info["tokens"] == info["accepted"] + 1
    # stopping at depth 0 is a plain target step: one token, no draft time
    env.reset()
    _, _, terminated, _, info = env.step(0)
    assert terminated and info["depth"] == 0 and info["tokens"] == 1 and info["draft_seconds"] == 0.0


def _mean_reward(env, act, episodes: int = 60) -> float:
    total = 0.0
    obs, _ = env.reset(seed=11)
    for _ in range(episodes):
        done = False
        while not done:
            obs, r, done, _, _ = env.step(act(obs))
            total += r
        obs, _ = env.reset()
    return total / episodes


def test_short_training_beats_a_random_policy(micro_spec, tmp_path):
    from ltd.train import TrainingRun, load_config, load_policy

    config = load_config(None, {"rounds": 0, "timesteps": {"width": 1536, "depth": 8},
                                "ppo": {"width": {"n_steps": 256, "learning_rate": 3e-3, "ent_coef": 0.0}}})
    run = TrainingRun.create(micro_spec, config, tmp_path / "run")
    run.run()
    policy = load_policy(run.policy_path("width"))
    env = make_env(micro_spec, "width")
    rng = np.random.default_rng(0)
    random_score = _mean_reward(env, lambda o: int(rng.integers(env.action_space.n)))
    learned_score = _mean_reward(env, policy.act)
    assert learned_score > random_score * 1.02, (learned_score, random_score)


def test_interrupted_training_resumes_where_it_stopped(micro_spec, tmp_path, monkeypatch):
    from ltd.errors import LtdError
    from ltd.train import TrainingRun, _Progress, load_config

    config = load_config(None, {"rounds": 1, "checkpoint_every": 64,
                                "timesteps": {"width": 256, "depth": 256},
                                "ppo": {"width": {"n_steps": 64}, "depth": {"n_steps": 64}}})
    run = TrainingRun.create(micro_spec, config, tmp_path / "run")
    original = _Progress.__init__

    def interrupting(self, run_, index, view, total):
        original(self, run_, index, view, total)
        if index == 1:
            inner = self.callback._on_step

            def on_step():
                if self.callback.model.num_timesteps >= 128:
                    raise KeyboardInterrupt
                return inner()
            self.callback._on_step = on_step

    monkeypatch.setattr(_Progress, "__init__", interrupting)
    with pytest.raises(LtdError, match="resume"):
        run.run()
    monkeypatch.setattr(_Progress, "__init__", original)
    resumed = TrainingRun.resume(run.dir)
    assert resumed.state["phase"] == 1
    from stable_baselines3 import PPO

    assert PPO.load(run.phase_zip(1, "depth")).num_timesteps >= 128
    state = resumed.run()
    assert state["finished"] and state["phase"] == 4 and len(state["validation"]) == 4
    assert PPO.load(run.phase_zip(1, "depth")).num_timesteps == 256


@pytest.mark.parametrize("extra, words", [
    ("colour: red\n", ["unknown key 'colour'"]),
    ("drafting:\n  widths: []\n", ["width grid is empty"]),
    ("drafting:\n  top_k: 2\n  max_depth: 2\n  widths: [1, 50]\n", ["above what the tree can hold"]),
    ("clock: sundial\n", ["clock"]),
    ("device: tpu\n", ["unknown device 'tpu'", "cuda"]),
    ("dtype: int8\n", ["dtype", "bf16"]),
    ("drafting:\n  drafter: diffusion\n", ["drafter"]),
])
def test_bad_specs_fail_with_one_line(tmp_path, extra, words):
    import yaml
    from test_cli import assert_one_line_error, run_ltd

    data = yaml.safe_load((ROOT / "envs" / "micro-code.yaml").read_text())
    data.update(yaml.safe_load(extra))
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(data))
    assert_one_line_error(run_ltd("train", str(p), "--run-dir", str(tmp_path / "run")), *words)
    assert not (tmp_path / "run" / "state.json").exists()


def test_missing_spec_and_missing_run(tmp_path):
    from test_cli import assert_one_line_error, run_ltd

    assert_one_line_error(run_ltd("train", str(tmp_path / "nope.yaml")), "does not exist")
    assert_one_line_error(run_ltd("train", "--resume", str(tmp_path / "no-run")), "no run to resume")


def test_an_existing_run_is_never_overwritten(micro_spec, tmp_path):
    from test_cli import assert_one_line_error, run_ltd

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "state.json").write_text('{"precious": true}')
    assert_one_line_error(run_ltd("train", str(micro_spec), "--run-dir", str(tmp_path / "run")), "already holds a run")
    assert (tmp_path / "run" / "state.json").read_text() == '{"precious": true}'
