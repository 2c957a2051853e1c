"""Rollouts on Ray actors: the same rollouts as the local vector env, training on them, lost workers seen.

Skipped (with the reason) where Ray is not installed; the rest of the suite does not need it.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is an extra: pip install 'ltd[ray]'")

pytestmark = [pytest.mark.ray, pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.fixture(scope="module")
def spec(micro_spec):
    from ltd.env import prepare_clock
    from ltd.spec import load_spec

    s = load_spec(micro_spec)
    prepare_clock(s)
    yield s
    if ray.is_initialized():
        ray.shutdown()


def _local(spec, view: str, n: int, seed: int):
    from stable_baselines3.common.env_util import make_vec_env

    from ltd.env import make_env

    return make_vec_env(lambda: make_env(spec, view), n_envs=n, seed=seed)


@pytest.mark.parametrize("view, per", [("width", 1), ("depth", 1), ("width", 2)])
def test_ray_rollouts_equal_local_rollouts(spec, view, per):
    """Same seeds and actions: the same observations, rewards, episode ends and infos (cost clock)."""
    from ltd.ray_env import RayVecEnv

    n = 2 * per
    remote, local = RayVecEnv(spec, view, 2, seed=5, envs_per_worker=per), _local(spec, view, n, seed=5)
    remote.seed(5)
    try:
        assert remote.observation_space == local.observation_space
        assert remote.action_space == local.action_space
        np.testing.assert_allclose(remote.reset(), local.reset(), atol=1e-5)
        rng = np.random.default_rng(0)
        ended = 0
        for _ in range(40):
            actions = rng.integers(remote.action_space.n, size=n)
            o1, r1, d1, i1 = remote.step(actions)
            o2, r2, d2, i2 = local.step(actions)
            assert o1.shape == o2.shape == (n, *remote.observation_space.shape)
            np.testing.assert_allclose(o1, o2, atol=1e-5)
            np.testing.assert_allclose(r1, r2, rtol=1e-5)
            np.testing.assert_array_equal(d1, d2)
            for a, b in zip(i1, i2):
                assert {k for k in a if k != "episode"} == {k for k in b if k != "episode"}
                if "terminal_observation" in a:
                    ended += 1
                    np.testing.assert_allclose(a["terminal_observation"], b["terminal_observation"], atol=1e-5)
                    assert a["tokens"] == b["tokens"] and a["TimeLimit.truncated"] is False
        assert ended > 0
        assert remote.get_attr("widths", [n - 1, 0]) == local.get_attr("widths", [n - 1, 0])
    finally:
        remote.close()
        local.close()


def test_a_killed_worker_is_replaced_and_counted(spec):
    from ltd.ray_env import RayVecEnv, WorkerDied

    env = RayVecEnv(spec, "width", 2, seed=0, max_restarts=1, envs_per_worker=2)
    act = np.array([1, 1, 1, 1])
    try:
        env.reset()
        for _ in range(3):
            env.step(act)
        before = env.worker_pids()
        os.kill(before[1], signal.SIGKILL)
        obs, rewards, dones, infos = env.step(act)
        for i in (2, 3):  # worker 1's two environments
            assert infos[i]["worker_restarted"] and dones[i]
            assert infos[i]["TimeLimit.truncated"] and rewards[i] == 0.0  # worth its value: no advantage
        assert env.restarts == 1 and not any("worker_restarted" in infos[i] for i in (0, 1))
        after = env.worker_pids()
        assert after[0] == before[0] and after[1] != before[1]
        env.step(act)  # all work again
        os.kill(after[0], signal.SIGKILL)
        with pytest.raises(WorkerDied, match="worker 0 of 2 died"):  # over the budget: said, not hidden
            env.step(act)
    finally:
        env.close()


def test_training_on_two_ray_workers(spec, tmp_path):
    from ltd.train import TrainingRun, load_config

    config = load_config(None, {"rounds": 0, "workers": 2, "envs_per_worker": 2,
                                "timesteps": {"width": 128, "depth": 128},
                                "ppo": {"width": {"n_steps": 32, "batch_size": 32},
                                        "depth": {"n_steps": 32, "batch_size": 32}}})
    run = TrainingRun.create(spec.path, config, tmp_path / "run")
    state = run.run()
    assert state["finished"] and state["best"] is not None
    assert all(v["env_steps_per_s"] > 0 for v in state["validation"])
    assert run.policy_path("width").exists() and run.policy_path("depth").exists()


def test_asking_for_ray_without_it_is_one_clear_line(monkeypatch):
    import builtins

    from ltd.errors import ConfigError
    from ltd.ray_env import import_ray

    real = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("no ray")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ConfigError, match=r"pip install 'ltd\[ray\]'"):
        import_ray()


def test_rollout_throughput_reports_every_configuration(spec):
    from ltd.rollout_bench import markdown, rollout_throughput

    rows = rollout_throughput(spec, "width", [0, 2], steps=5, repeats=2, warmup=2, envs_per_worker=2)
    assert [r["workers"] for r in rows] == [0, 2] and [r["sub_envs"] for r in rows] == [2, 4]
    assert all(r["min"] <= r["steps_per_s"] <= r["max"] and r["steps_per_s"] > 0 for r in rows)
    assert rows[0]["ratio"] == 1.0
    assert "| 2 | ray | 4 |" in markdown(rows, spec, "width", 5)
