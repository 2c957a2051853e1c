"""Rollout throughput: environment steps per second, local vector env against Ray actors.

Every configuration steps the same view of the same spec with uniformly random actions (seeded),
after a warm-up; timed blocks of the configurations are interleaved so drift of the machine hits
all of them alike. Steps are vector-env steps times sub-environments (what PPO collects).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from ltd.spec import EnvSpec


def _make(spec: EnvSpec, view: str, workers: int, seed: int, address: str | None, share: float, per: int):
    if workers == 0:
        from stable_baselines3.common.vec_env import DummyVecEnv

        from ltd.env import make_env

        env = DummyVecEnv([lambda: make_env(spec, view)] * per)
    else:
        from ltd.ray_env import RayVecEnv, init_ray

        cores = int(init_ray(address).cluster_resources().get("CPU", 1))
        # all configurations live at once (blocks interleave), so each reserves a share of the cores;
        # while its block runs, its actors use all of them: cores // workers torch threads each
        env = RayVecEnv(spec, view, workers, seed=seed, address=address, cpus=share,
                        threads=max(1, cores // workers), envs_per_worker=per)
    env.seed(seed)
    env.reset()
    return env


def _block(env, steps: int, rng: np.random.Generator) -> float:
    n, space = env.num_envs, env.action_space
    t0 = time.perf_counter()
    for _ in range(steps):
        env.step(rng.integers(space.n, size=n))
    return steps * n / (time.perf_counter() - t0)


def rollout_throughput(spec: EnvSpec, view: str, workers: list[int], steps: int = 200, repeats: int = 3,
                       warmup: int = 20, seed: int = 0, address: str | None = None,
                       envs_per_worker: int = 1) -> list[dict]:
    """Env steps/s for each worker count (0: ``envs_per_worker`` envs in this process, all cores),
    interleaved blocks."""
    from ltd.env import prepare_clock

    prepare_clock(spec)
    share = 1.0 / max(1, sum(workers))
    envs = {w: _make(spec, view, w, seed, address, share, envs_per_worker) for w in workers}
    rng = np.random.default_rng(seed)
    rates: dict[int, list[float]] = {w: [] for w in workers}
    try:
        for env in envs.values():
            _block(env, warmup, rng)
        with tqdm(total=repeats * len(workers), desc="rollout blocks", leave=False) as bar:
            for r in range(repeats):
                order = workers[r % len(workers):] + workers[: r % len(workers)]
                for w in order:
                    rates[w].append(_block(envs[w], steps, rng))
                    bar.update()
    finally:
        for env in envs.values():
            env.close()
    base = float(np.median(rates[workers[0]]))
    return [{"workers": w, "backend": "local" if w == 0 else "ray", "sub_envs": max(1, w) * envs_per_worker,
             "steps_per_s": round(float(np.median(v)), 1), "min": round(min(v), 1), "max": round(max(v), 1),
             "ratio": round(float(np.median(v)) / base, 3),
             "torch_threads_here": torch.get_num_threads()} for w, v in rates.items()]


def markdown(rows: list[dict], spec: EnvSpec, view: str, steps: int) -> str:
    lines = [f"Rollout throughput, {spec.name} ({view} view, {spec.clock} clock), {steps} vector steps per block",
             "", f"| workers | backend | sub-envs | env steps/s (median) | min | max | × workers={rows[0]['workers']} |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['workers']} | {r['backend']} | {r['sub_envs']} | {r['steps_per_s']} | {r['min']} | {r['max']} | "
              f"{r['ratio']} |" for r in rows]
    return "\n".join(lines)
