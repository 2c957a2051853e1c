"""Rollouts on Ray: a stable-baselines3 ``VecEnv`` whose sub-environments live in Ray actors.

Each actor (a *worker*) builds ``envs_per_worker`` environments on its own device; they share the
actor's copy of the pair, and each has its own engine and KV caches. One remote call per worker
steps all of its environments, so the round trip (about a millisecond) is paid once for them all.
With ``device: cuda`` in the spec every actor asks Ray for one GPU, and Ray's
``CUDA_VISIBLE_DEVICES`` makes it that actor's ``cuda:0``. On CPUs each actor gets ``cpus`` cores
and as many torch threads. Works on a local Ray (started here) or a running cluster
(``ray_address``); every node needs ltd installed and the pair built under its ``$LTD_HOME``.

Auto-reset and ``terminal_observation`` follow ``DummyVecEnv``, so SB3 sees the same rollouts as with
the local vector env. Actor calls for one ``step`` run in parallel on the actors.

A worker that dies (its process killed, its node lost) or does not answer within ``timeout_s`` is
never silently dropped: it is replaced by a fresh actor, and the step each of its environments was
taking is returned as a truncated episode ending in the observation it acted on
(``info["worker_restarted"] = True``).
PPO bootstraps a truncated step with the value of that observation, so the lost step carries no
advantage. After ``max_restarts`` replacements in one vector env, :class:`WorkerDied` is raised
instead (training saves its checkpoint and says how to resume).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices

from ltd.errors import ConfigError, LtdError
from ltd.spec import EnvSpec

log = logging.getLogger(__name__)


class WorkerDied(LtdError):
    """A rollout worker died more often than the vector env may replace it."""


def import_ray(need: str = "rollouts on Ray need Ray (or train without --workers)", *parts: str):
    """Ray (and its ``parts``, e.g. "tune"), or one line saying what needs it and how to install it."""
    import importlib

    try:
        import ray

        for part in parts:
            importlib.import_module(f"ray.{part}")
    except ImportError:
        raise ConfigError(f"{need}: install it with pip install 'ltd[ray]'") from None
    return ray


def init_ray(address: str | None = None):
    """Connect to ``address`` (a running cluster) or start a local Ray once per process."""
    ray = import_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        except ConnectionError as exc:
            raise ConfigError(f"cannot reach the Ray cluster at {address!r} ({exc}): start it with `ray start "
                              f"--head` or leave out --ray-address for a local Ray") from None
    return ray


class _EnvWorker:
    """``count`` environments inside one Ray actor (made remote by :class:`RayVecEnv`)."""

    def __init__(self, spec: EnvSpec, view: str, partner, threads: int, ltd_home: str | None, count: int):
        import torch
        from stable_baselines3.common.monitor import Monitor

        from ltd.env import make_env

        if ltd_home and "LTD_HOME" not in os.environ:
            os.environ["LTD_HOME"] = ltd_home
        torch.set_num_threads(max(1, threads))
        if spec.device.startswith("cuda"):  # cuda:N names a GPU of the driver's machine; here it is Ray's one
            spec = spec.model_copy(update={"device": "cuda"})  # ("auto" finds it by itself)
        self.envs = [Monitor(make_env(spec, view, partner=partner)) for _ in range(count)]

    def pid(self) -> int:
        return os.getpid()

    def reset(self, seeds: list, options: list):
        return [env.reset(seed=seed, **({"options": opt} if opt else {}))
                for env, seed, opt in zip(self.envs, seeds, options)]

    def step(self, actions):
        out = []
        for env, action in zip(self.envs, actions):
            obs, reward, terminated, truncated, info = env.step(action)
            reset_info: dict = {}
            if terminated or truncated:
                info["terminal_observation"] = obs
                obs, reset_info = env.reset()
            out.append((obs, reward, terminated, truncated, info, reset_info))
        return out

    def get_attr(self, name: str, slots: list[int]):
        return [self.envs[j].get_wrapper_attr(name) for j in slots]

    def set_attr(self, name: str, value, slots: list[int]) -> None:
        for j in slots:
            setattr(self.envs[j], name, value)

    def call(self, name: str, args, kwargs, slots: list[int]):
        return [self.envs[j].get_wrapper_attr(name)(*args, **kwargs) for j in slots]

    def is_wrapped(self, wrapper_class, slots: list[int]) -> list[bool]:
        from stable_baselines3.common.env_util import is_wrapped

        return [is_wrapped(self.envs[j], wrapper_class) for j in slots]


class RayVecEnv(VecEnv):
    """``workers`` Ray actors of ``envs_per_worker`` environments each, of one view of ``spec``.

    Environment ``i`` lives in worker ``i // envs_per_worker`` (see the module docstring).
    """

    def __init__(self, spec: EnvSpec, view: str, workers: int, partner=None, seed: int = 0, *,
                 envs_per_worker: int = 1, address: str | None = None, cpus: float | None = None,
                 threads: int | None = None, max_restarts: int = 3, timeout_s: float = 600.0):
        if workers < 1 or envs_per_worker < 1:
            raise ConfigError(f"--workers and --envs-per-worker must be >= 1 (got {workers}, {envs_per_worker})")
        ray = init_ray(address)
        self._ray = ray
        self.spec, self.view, self.partner, self.base_seed = spec, view, partner, seed
        self.per = envs_per_worker
        gpus = ray.cluster_resources().get("GPU", 0)
        # one GPU per actor: asked for (cuda), or taken where the cluster has one for each (auto)
        self.gpu = spec.device.startswith("cuda") or (spec.device == "auto" and gpus >= workers)
        if self.gpu and gpus < workers:
            raise ConfigError(f"spec asks for device {spec.device!r} but the Ray cluster has {int(gpus)} GPU(s) "
                              f"for {workers} workers: use fewer --workers or device: cpu")
        if cpus is None:
            cpus = max(1, int(ray.cluster_resources().get("CPU", 1)) // workers)
        self.cpus = cpus  # what Ray reserves per actor
        self.threads = threads or max(1, int(cpus))  # torch threads per actor
        self.max_restarts, self.timeout_s = max_restarts, timeout_s
        self.restarts = 0
        self._remote = ray.remote(num_cpus=cpus, num_gpus=1 if self.gpu else 0, max_restarts=0)(_EnvWorker)
        self.workers = [self._spawn() for _ in range(workers)]
        try:
            (space,), (action_space,) = ray.get([self.workers[0].get_attr.remote("observation_space", [0]),
                                                 self.workers[0].get_attr.remote("action_space", [0])],
                                                timeout=timeout_s)
            ray.get([w.pid.remote() for w in self.workers], timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise ConfigError(f"{workers} rollout workers ({cpus:g} CPU{' + 1 GPU' if self.gpu else ''} each) did "
                              f"not start within {timeout_s:g} s; the Ray cluster has {ray.cluster_resources()}: "
                              f"use fewer --workers") from None
        except ray.exceptions.RayActorError as exc:
            self.close()
            raise ConfigError(f"a rollout worker failed to start: {exc.__class__.__name__}: "
                              f"{str(exc).strip().splitlines()[-1]}") from None
        n = workers * envs_per_worker
        self._last_obs = np.zeros((n, *space.shape), dtype=space.dtype)
        self._fresh: list = []
        super().__init__(n, space, action_space)

    def _spawn(self):
        return self._remote.remote(self.spec, self.view, self.partner, self.threads, os.environ.get("LTD_HOME"),
                                   self.per)

    def _span(self, w: int) -> range:
        return range(w * self.per, (w + 1) * self.per)

    def _get(self, ref, w: int):
        """One worker's answer; ``None`` when it died or hung (it is then replaced)."""
        ray = self._ray
        try:
            return ray.get(ref, timeout=self.timeout_s)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError, ray.exceptions.WorkerCrashedError) as exc:
            self._replace(w, exc)
            return None

    def _replace(self, w: int, exc: Exception) -> None:
        kind = type(exc).__name__
        if self.restarts >= self.max_restarts:
            raise WorkerDied(f"rollout worker {w} of {len(self.workers)} died ({kind}) after {self.restarts} "
                             f"replacement(s) already (max_restarts={self.max_restarts}): check the Ray logs "
                             f"(`ray logs --help` lists them)")
        self.restarts += 1
        log.warning("rollout worker %d died (%s): replacing it (%d of %d replacements)", w, kind,
                    self.restarts, self.max_restarts)
        try:
            self._ray.kill(self.workers[w])
        except Exception:  # already gone
            pass
        self.workers[w] = self._spawn()
        seeds = [self.base_seed + 7919 * self.restarts + i for i in self._span(w)]
        self._fresh = self._ray.get(self.workers[w].reset.remote(seeds, [None] * self.per), timeout=self.timeout_s)

    # ------------------------------------------------------------------ VecEnv API

    def reset(self):
        refs = [w.reset.remote([self._seeds[i] for i in self._span(k)], [self._options[i] or None for i in self._span(k)])
                for k, w in enumerate(self.workers)]
        for k, ref in enumerate(refs):
            got = self._get(ref, k)
            for i, (obs, info) in zip(self._span(k), got if got is not None else self._fresh):
                self._last_obs[i], self.reset_infos[i] = obs, info
        self._reset_seeds()
        self._reset_options()
        return self._last_obs.copy()

    def step_async(self, actions: np.ndarray) -> None:
        self._refs = [w.step.remote([actions[i] for i in self._span(k)]) for k, w in enumerate(self.workers)]

    def step_wait(self):
        n = self.num_envs
        rewards = np.zeros(n, dtype=np.float32)
        dones = np.zeros(n, dtype=bool)
        infos: list[dict] = [{} for _ in range(n)]
        for k, ref in enumerate(self._refs):
            got = self._get(ref, k)
            if got is None:  # the worker was replaced: end its episodes where they acted, worth their value
                for i, (obs, _) in zip(self._span(k), self._fresh):
                    infos[i] = {"terminal_observation": self._last_obs[i].copy(), "TimeLimit.truncated": True,
                                "worker_restarted": True}
                    dones[i] = True
                    self._last_obs[i] = obs
                continue
            for i, (obs, reward, terminated, truncated, info, reset_info) in zip(self._span(k), got):
                rewards[i], dones[i] = reward, terminated or truncated
                info["TimeLimit.truncated"] = truncated and not terminated
                if dones[i]:
                    self.reset_infos[i] = reset_info
                infos[i] = info
                self._last_obs[i] = obs
        return self._last_obs.copy(), rewards, dones, infos

    def close(self) -> None:
        for w in self.workers:
            try:
                self._ray.kill(w)
            except Exception:
                pass
        self.workers = []

    def _gather(self, method: str, indices: VecEnvIndices, *args) -> list:
        """One call per worker over its environments among ``indices``; answers in the order of ``indices``."""
        if indices is None:
            indices = range(self.num_envs)
        elif isinstance(indices, int):
            indices = [indices]
        order = list(indices)
        groups: dict[int, list[int]] = {}
        for i in order:
            groups.setdefault(i // self.per, []).append(i % self.per)
        answers = self._ray.get([getattr(self.workers[w], method).remote(*args, slots) for w, slots in groups.items()])
        found = {(w, slot): x for (w, slots), part in zip(groups.items(), answers) if part is not None
                 for slot, x in zip(slots, part)}
        return [found.get((i // self.per, i % self.per)) for i in order]

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return self._gather("get_attr", indices, attr_name)

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        self._gather("set_attr", indices, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs) -> list[Any]:
        return self._gather("call", indices, method_name, method_args, method_kwargs)

    def env_is_wrapped(self, wrapper_class, indices: VecEnvIndices = None) -> list[bool]:
        return self._gather("is_wrapped", indices, wrapper_class)

    def worker_pids(self) -> list[int]:
        """The actors' process ids (to watch them, or to kill one in a test)."""
        return self._ray.get([w.pid.remote() for w in self.workers])
