"""Rollouts on Ray: a stable-baselines3 ``VecEnv`` whose sub-environments are Ray actors.

Each actor builds its own environment (so its own pair, engine and KV caches) on its own device:
with ``device: cuda`` in the spec every actor asks Ray for one GPU, and Ray's
``CUDA_VISIBLE_DEVICES`` makes it that actor's ``cuda:0``. On CPUs each actor gets ``cpus`` cores
and as many torch threads. Works on a local Ray (started here) or a running cluster
(``ray_address``); every node needs ltd installed and the pair built under its ``$LTD_HOME``.

Auto-reset and ``terminal_observation`` follow ``DummyVecEnv``, so SB3 sees the same rollouts as with
the local vector env. Actor calls for one ``step`` run in parallel on the actors.

A worker that dies (its process killed, its node lost) or does not answer within ``timeout_s`` is
never silently dropped: it is replaced by a fresh actor, and the step it was taking is returned as
a truncated episode ending in the observation it acted on (``info["worker_restarted"] = True``).
PPO bootstraps a truncated step with the value of that observation, so the lost step carries no
advantage. After ``max_restarts`` replacements in one vector env, :class:`WorkerDied` is raised
instead (training saves its checkpoint and says how to resume).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices

from ltd.errors import ConfigError, LtdError
from ltd.spec import EnvSpec

log = logging.getLogger(__name__)


class WorkerDied(LtdError):
    """A rollout worker died more often than the vector env may replace it."""


def import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("rollouts on Ray need Ray: install it with pip install 'ltd[ray]' "
                          "(or train without --workers)") from None
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
    """One environment inside a Ray actor (made remote by :func:`_remote_worker`)."""

    def __init__(self, spec: EnvSpec, view: str, partner, threads: int, ltd_home: str | None):
        import torch
        from stable_baselines3.common.monitor import Monitor

        from ltd.env import make_env

        if ltd_home and "LTD_HOME" not in os.environ:
            os.environ["LTD_HOME"] = ltd_home
        torch.set_num_threads(max(1, threads))
        if spec.device.startswith("cuda") or (spec.device == "auto" and torch.cuda.is_available()):
            spec = spec.model_copy(update={"device": "cuda"})  # the one GPU Ray gave this actor
        self.env = Monitor(make_env(spec, view, partner=partner))

    def pid(self) -> int:
        return os.getpid()

    def reset(self, seed: int | None, options: dict | None):
        return self.env.reset(seed=seed, **({"options": options} if options else {}))

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        reset_info: dict = {}
        if terminated or truncated:
            info["terminal_observation"] = obs
            obs, reset_info = self.env.reset()
        return obs, reward, terminated, truncated, info, reset_info

    def get_attr(self, name: str):
        return self.env.get_wrapper_attr(name)

    def set_attr(self, name: str, value) -> None:
        setattr(self.env, name, value)

    def call(self, name: str, args, kwargs):
        return self.env.get_wrapper_attr(name)(*args, **kwargs)

    def is_wrapped(self, wrapper_class) -> bool:
        from stable_baselines3.common.env_util import is_wrapped

        return is_wrapped(self.env, wrapper_class)


class RayVecEnv(VecEnv):
    """``n`` sub-environments of one view of ``spec``, each a Ray actor (see the module docstring)."""

    def __init__(self, spec: EnvSpec, view: str, n: int, partner=None, seed: int = 0, *,
                 address: str | None = None, cpus: float | None = None, threads: int | None = None,
                 max_restarts: int = 3, timeout_s: float = 600.0):
        if n < 1:
            raise ConfigError(f"--workers must be >= 1 (got {n})")
        ray = init_ray(address)
        self._ray = ray
        self.spec, self.view, self.partner, self.base_seed = spec, view, partner, seed
        gpus = ray.cluster_resources().get("GPU", 0)
        # one GPU per actor: asked for (cuda), or taken where the cluster has one for each (auto)
        self.gpu = spec.device.startswith("cuda") or (spec.device == "auto" and gpus >= n)
        if self.gpu and gpus < n:
            raise ConfigError(f"spec asks for device {spec.device!r} but the Ray cluster has "
                              f"{int(ray.cluster_resources().get('GPU', 0))} GPU(s) for {n} workers: "
                              f"use fewer --workers or device: cpu")
        if cpus is None:
            cpus = max(1, int(ray.cluster_resources().get("CPU", 1)) // n)
        self.cpus = cpus  # what Ray reserves per actor
        self.threads = threads or max(1, int(cpus))  # torch threads per actor
        self.max_restarts, self.timeout_s = max_restarts, timeout_s
        self.restarts = 0
        self._remote = ray.remote(num_cpus=cpus, num_gpus=1 if self.gpu else 0, max_restarts=0)(_EnvWorker)
        self.workers = [self._spawn() for _ in range(n)]
        try:
            space, action_space = ray.get([self.workers[0].get_attr.remote("observation_space"),
                                           self.workers[0].get_attr.remote("action_space")], timeout=timeout_s)
            ray.get([w.pid.remote() for w in self.workers], timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise ConfigError(f"{n} rollout workers ({cpus:g} CPU{' + 1 GPU' if self.gpu else ''} each) did not start "
                              f"within {timeout_s:g} s; the Ray cluster has {ray.cluster_resources()}: "
                              f"use fewer --workers") from None
        except ray.exceptions.RayActorError as exc:
            self.close()
            raise ConfigError(f"a rollout worker failed to start: {exc.__class__.__name__}: "
                              f"{str(exc).strip().splitlines()[-1]}") from None
        self._last_obs = np.zeros((n, *space.shape), dtype=space.dtype)
        self._actions: np.ndarray | None = None
        super().__init__(n, space, action_space)

    def _spawn(self):
        return self._remote.remote(self.spec, self.view, self.partner, self.threads, os.environ.get("LTD_HOME"))

    def _get(self, ref, index: int):
        """One actor's answer; ``None`` when the actor died or hung (it is then replaced)."""
        ray = self._ray
        try:
            return ray.get(ref, timeout=self.timeout_s)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError, ray.exceptions.WorkerCrashedError) as exc:
            self._replace(index, exc)
            return None

    def _replace(self, index: int, exc: Exception) -> None:
        kind = type(exc).__name__
        if self.restarts >= self.max_restarts:
            raise WorkerDied(f"rollout worker {index} of {self.num_envs} died ({kind}) after {self.restarts} "
                             f"replacement(s) already (max_restarts={self.max_restarts}): check the Ray logs "
                             f"(/tmp/ray/session_latest/logs)")
        self.restarts += 1
        log.warning("rollout worker %d died (%s): replacing it (%d of %d replacements)", index, kind,
                    self.restarts, self.max_restarts)
        try:
            self._ray.kill(self.workers[index])
        except Exception:  # already gone
            pass
        self.workers[index] = self._spawn()
        obs, _ = self._ray.get(self.workers[index].reset.remote(self.base_seed + 7919 * self.restarts + index, None),
                               timeout=self.timeout_s)
        self._fresh_obs = obs

    # ------------------------------------------------------------------ VecEnv API

    def reset(self):
        refs = [w.reset.remote(self._seeds[i], self._options[i] or None) for i, w in enumerate(self.workers)]
        for i, ref in enumerate(refs):
            got = self._get(ref, i)
            if got is None:
                got = (self._fresh_obs, {})
            self._last_obs[i], self.reset_infos[i] = got
        self._reset_seeds()
        self._reset_options()
        return self._last_obs.copy()

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions
        self._refs = [w.step.remote(a) for w, a in zip(self.workers, actions)]

    def step_wait(self):
        n = self.num_envs
        rewards = np.zeros(n, dtype=np.float32)
        dones = np.zeros(n, dtype=bool)
        infos: list[dict] = [{} for _ in range(n)]
        for i, ref in enumerate(self._refs):
            got = self._get(ref, i)
            if got is None:  # the worker was replaced: end its episode where it acted, worth its value
                infos[i] = {"terminal_observation": self._last_obs[i].copy(), "TimeLimit.truncated": True,
                            "worker_restarted": True}
                dones[i] = True
                self._last_obs[i] = self._fresh_obs
                continue
            obs, reward, terminated, truncated, info, reset_info = got
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

    def _indices(self, indices: VecEnvIndices) -> Sequence[int]:
        if indices is None:
            return range(self.num_envs)
        return [indices] if isinstance(indices, int) else list(indices)

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return self._ray.get([self.workers[i].get_attr.remote(attr_name) for i in self._indices(indices)])

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        self._ray.get([self.workers[i].set_attr.remote(attr_name, value) for i in self._indices(indices)])

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs) -> list[Any]:
        return self._ray.get([self.workers[i].call.remote(method_name, method_args, method_kwargs)
                              for i in self._indices(indices)])

    def env_is_wrapped(self, wrapper_class, indices: VecEnvIndices = None) -> list[bool]:
        return self._ray.get([self.workers[i].is_wrapped.remote(wrapper_class) for i in self._indices(indices)])

    def worker_pids(self) -> list[int]:
        """The actors' process ids (to watch them, or to kill one in a test)."""
        return self._ray.get([w.pid.remote() for w in self.workers])
