"""Co-adaptive PPO training of the depth and width policies (stable-baselines3).

Phases: round 0 trains width (static depth partner) then depth (static width partner); each later
round trains width with the latest depth policy frozen, then depth with the latest width policy
frozen. Each phase warm-starts from that view's previous model. After every phase both current
policies are validated together, through the runtime, on the spec's validation prompts (tokens/s
on the spec's clock), and the best pair is kept.

A run folder holds ``state.json`` (where the run is), SB3 checkpoints of the phase in progress
(``phase-<i>-<view>.zip``, written by this run: only runs you made are ever loaded), the extracted
policies (``<view>.safetensors``, plain tensors), TensorBoard logs (``tb/``) and, with wandb
installed, an offline wandb run. Ctrl-C saves; ``--resume RUN`` continues the timesteps, the
learning-rate schedule and the round exactly.
"""

from __future__ import annotations

import io
import logging
import os
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import load_file, save
from tqdm.auto import tqdm

from ltd.errors import ConfigError, LtdError
from ltd.paths import atomic_write_bytes, atomic_write_json, read_json, read_yaml
from ltd.policy import MLPPolicy, PolicyController
from ltd.spec import EnvSpec, load_spec

log = logging.getLogger(__name__)
VIEWS = ("width", "depth")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PPOParams(_Strict):
    learning_rate: float = 3e-4
    n_steps: int = Field(512, ge=8)
    batch_size: int = Field(64, ge=2)
    n_epochs: int = Field(10, ge=1)
    gamma: float = Field(1.0, ge=0, le=1)
    gae_lambda: float = Field(0.95, ge=0, le=1)
    ent_coef: float = 0.01
    clip_range: float = 0.2
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5


class PolicyShape(_Strict):
    net_arch: list[int] = Field(default_factory=lambda: [64, 64])
    activation: Literal["tanh", "relu"] = "tanh"


class PerView(_Strict):
    depth: PPOParams = Field(default_factory=PPOParams)
    width: PPOParams = Field(default_factory=lambda: PPOParams(n_steps=256))


class Timesteps(_Strict):
    depth: int = Field(4096, ge=1)
    width: int = Field(2048, ge=1)


class TrainConfig(_Strict):
    rounds: int = Field(2, ge=0)
    n_envs: int = Field(1, ge=1)
    workers: int = Field(0, ge=0)  # > 0: roll out on that many Ray actors (n_envs is then ignored)
    envs_per_worker: int = Field(1, ge=1)  # environments in each actor, stepped by one remote call
    ray_address: str | None = None  # a running Ray cluster; None: a local Ray
    max_worker_restarts: int = Field(3, ge=0)
    checkpoint_every: int = Field(1024, ge=1)
    validation_prompts: int = Field(8, ge=1)
    validation_max_new_tokens: int = Field(48, ge=1)
    seed: int = 0
    timesteps: Timesteps = Field(default_factory=Timesteps)
    policy: PolicyShape = Field(default_factory=PolicyShape)
    ppo: PerView = Field(default_factory=PerView)


def load_config(path: str | Path | None, overrides: dict | None = None) -> TrainConfig:
    data: dict = {}
    if path is not None:
        path = Path(path)
        data = read_yaml(path, "training config", ConfigError, "see experiments/ppo.yaml") or {}
        if not isinstance(data, dict):
            raise ConfigError(f"training config {path} must be a YAML mapping of keys to values (see experiments/ppo.yaml)")
    data = _merge(data, overrides or {})
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        from ltd.spec import _one_line

        raise ConfigError(_one_line(exc, str(path or "training config")))


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def phases(rounds: int) -> list[tuple[int, str]]:
    return [(r, v) for r in range(rounds + 1) for v in VIEWS]


# ----------------------------------------------------------------------------- SB3 <-> plain torch


def policy_from_sb3(model) -> MLPPolicy:
    """The actor of an SB3 MlpPolicy as a plain :class:`MLPPolicy` (same deterministic actions)."""
    p = model.policy
    linears = [m for m in p.mlp_extractor.policy_net if isinstance(m, torch.nn.Linear)] + [p.action_net]
    acts = {type(m).__name__ for m in p.mlp_extractor.policy_net if not isinstance(m, torch.nn.Linear)}
    activation = "relu" if acts == {"ReLU"} else "tanh"
    return MLPPolicy([m.weight.detach().cpu() for m in linears], [m.bias.detach().cpu() for m in linears], activation)


def save_policy(policy: MLPPolicy, path: Path) -> None:
    atomic_write_bytes(path, save(policy.tensors("net"), metadata={"activation": policy.activation}))


def load_policy(path: Path) -> MLPPolicy:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        activation = (fh.metadata() or {}).get("activation", "tanh")
    tensors = load_file(str(path))
    n = len([k for k in tensors if k.endswith(".weight")])
    return MLPPolicy([tensors[f"net.{i}.weight"] for i in range(n)], [tensors[f"net.{i}.bias"] for i in range(n)],
                     activation)


# ----------------------------------------------------------------------------- the run


class _Progress:
    """SB3 callback: a progress bar, periodic checkpoints, env steps per second."""

    def __init__(self, run, phase_index: int, view: str, total: int):
        from stable_baselines3.common.callbacks import BaseCallback

        outer = self

        class CB(BaseCallback):
            def _on_training_start(self) -> None:
                outer.start = time.perf_counter()
                outer.start_steps = self.model.num_timesteps
                outer.bar = tqdm(total=total, initial=self.model.num_timesteps, desc=f"phase {phase_index} {view}",
                                 unit="step", mininterval=2.0)

            def _on_step(self) -> bool:
                outer.bar.update(self.model.num_timesteps - outer.bar.n)
                if self.model.num_timesteps - outer.last_ckpt >= run.config.checkpoint_every:
                    run.checkpoint(self.model, phase_index, view)
                    outer.last_ckpt = self.model.num_timesteps
                return True

            def _on_training_end(self) -> None:
                outer.bar.close()

        self.callback = CB()
        self.last_ckpt = 0
        self.start = time.perf_counter()
        self.start_steps = 0

    def steps_per_second(self, model) -> float:
        return (model.num_timesteps - self.start_steps) / max(1e-9, time.perf_counter() - self.start)


class TrainingRun:
    def __init__(self, run_dir: Path, spec: EnvSpec, config: TrainConfig, state: dict):
        self.dir = run_dir
        self.spec = spec
        self.config = config
        self.state = state

    # -- creation and resumption

    @classmethod
    def create(cls, spec_path: str | Path, config: TrainConfig, run_dir: str | Path | None = None) -> TrainingRun:
        spec = load_spec(spec_path)
        run_dir = Path(run_dir) if run_dir else Path("runs") / f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        if (run_dir / "state.json").exists():
            raise ConfigError(f"run folder {run_dir} already holds a run: resume it with --resume {run_dir}")
        run_dir.mkdir(parents=True, exist_ok=True)
        state = {"spec": str(Path(spec_path).resolve()), "config": config.model_dump(), "phase": 0,
                 "phases": phases(config.rounds), "validation": [], "best": None, "finished": False}
        run = cls(run_dir, spec, config, state)
        run.save_state()
        return run

    @classmethod
    def resume(cls, run_dir: str | Path) -> TrainingRun:
        run_dir = Path(run_dir)
        path = run_dir / "state.json"
        if not path.exists():
            raise ConfigError(f"no run to resume at {run_dir}: give a folder made by `ltd train`")
        state = read_json(path, "run state", ConfigError, "start a new run")
        try:
            config = TrainConfig.model_validate(state["config"])
        except (TypeError, KeyError, ValidationError) as exc:
            raise ConfigError(f"{path} is not a valid run state ({exc.__class__.__name__}): start a new run")
        return cls(run_dir, load_spec(state["spec"]), config, state)

    def scale(self, workers: int | None, ray_address: str | None, envs_per_worker: int | None = None) -> None:
        """Change where a resumed run rolls out."""
        if workers is not None:
            self.config.workers = workers
        if envs_per_worker is not None:
            self.config.envs_per_worker = envs_per_worker
        if ray_address is not None:
            self.config.ray_address = ray_address
        self.state["config"] = self.config.model_dump()
        self.save_state()

    def save_state(self) -> None:
        atomic_write_json(self.dir / "state.json", self.state)

    # -- pieces

    def policy_path(self, view: str) -> Path:
        return self.dir / f"{view}.safetensors"

    def phase_zip(self, index: int, view: str) -> Path:
        return self.dir / f"phase-{index}-{view}.zip"

    def checkpoint(self, model, index: int, view: str) -> None:
        """The SB3 model of the phase in progress, written whole or not at all."""
        buffer = io.BytesIO()
        model.save(buffer)
        atomic_write_bytes(self.phase_zip(index, view), buffer.getvalue())

    def current_policies(self) -> dict[str, MLPPolicy | None]:
        return {v: load_policy(self.policy_path(v)) if self.policy_path(v).exists() else None for v in VIEWS}

    def controller(self, env_features, policies: dict[str, MLPPolicy | None]) -> PolicyController:
        from ltd.controllers import StaticController

        s = self.spec
        static = StaticController(s.partner.depth, s.drafting.top_k, s.partner.width)
        return PolicyController(env_features, s.drafting.widths, s.drafting.top_k, policies["depth"],
                                policies["width"], static)

    def make_vec_env(self, view: str, partner, seed: int):
        """The phase's vector env: local (``n_envs`` in this process or subprocesses) or Ray actors."""
        from stable_baselines3.common.env_util import make_vec_env
        from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

        from ltd.env import make_env, prepare_clock

        spec = self.spec
        prepare_clock(spec)  # fit a missing cost model once here, not in every worker at once
        if self.config.workers:
            from ltd.ray_env import RayVecEnv

            env = RayVecEnv(spec, view, self.config.workers, partner, seed,
                            envs_per_worker=self.config.envs_per_worker, address=self.config.ray_address,
                            max_restarts=self.config.max_worker_restarts)
            env.seed(seed)
            return env

        def factory():
            return make_env(spec, view, partner=partner)

        vec_cls = SubprocVecEnv if self.config.n_envs > 1 else DummyVecEnv
        return make_vec_env(factory, n_envs=self.config.n_envs, seed=seed, vec_env_cls=vec_cls)

    # -- the loop

    def run(self) -> dict:
        from stable_baselines3 import PPO

        torch.manual_seed(self.config.seed)
        wandb_run = _maybe_wandb(self)
        try:
            while self.state["phase"] < len(self.state["phases"]):
                index = self.state["phase"]
                rnd, view = self.state["phases"][index]
                policies = self.current_policies()
                from ltd.features import FeatureView, resolve_feature_set

                features = FeatureView(resolve_feature_set(self.spec.features))
                partner = self.controller(features, {**policies, view: None})
                env = self.make_vec_env(view, partner, self.config.seed + 1000 * index)
                total = getattr(self.config.timesteps, view)
                zip_path = self.phase_zip(index, view)
                if zip_path.exists():  # resuming this phase (a zip this run wrote: SB3 zips hold pickles)
                    model = PPO.load(zip_path, env=env, device="cpu")
                    self.state.setdefault("resumes", []).append(
                        {"phase": index, "view": view, "from_step": int(model.num_timesteps)})
                    log.info("resuming phase %d (%s) at step %d", index, view, model.num_timesteps)
                else:
                    model = self._new_or_warm_model(view, env, index)
                remaining = total - model.num_timesteps
                progress = _Progress(self, index, view, total)
                progress.last_ckpt = model.num_timesteps
                try:
                    if remaining > 0:
                        model.learn(remaining, callback=progress.callback, reset_num_timesteps=False,
                                    tb_log_name=f"phase{index}-{view}")
                except (KeyboardInterrupt, LtdError) as exc:  # Ctrl-C, or rollout workers lost for good
                    self.checkpoint(model, index, view)
                    self.save_state()
                    env.close()
                    why = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
                    raise LtdError(f"{why}: phase {index} ({view}) saved at {model.num_timesteps} of {total} "
                                   f"steps; continue with `ltd train --resume {self.dir}`")
                sps = progress.steps_per_second(model)
                self.checkpoint(model, index, view)
                save_policy(policy_from_sb3(model), self.policy_path(view))
                env.close()
                figures = self.validate()
                figures.update(round=rnd, view=view, phase=index, env_steps_per_s=round(sps, 1))
                self.state["validation"].append(figures)
                complete = all(self.policy_path(v).exists() for v in VIEWS)  # both views trained at least once
                if complete and (self.state["best"] is None
                                 or figures["tokens_per_s"] > self.state["best"]["tokens_per_s"]):
                    self.state["best"] = figures
                    for v in VIEWS:
                        if self.policy_path(v).exists():
                            atomic_write_bytes(self.dir / f"best-{v}.safetensors", self.policy_path(v).read_bytes())
                self.state["phase"] = index + 1
                self.save_state()
                log.info("phase %d (%s, round %d): validation %.1f tokens/s (%s)", index, view, rnd,
                         figures["tokens_per_s"], self.spec.clock)
            self.state["finished"] = True
            self.save_state()
        finally:
            if wandb_run is not None:
                wandb_run.finish()
        return self.state

    def _new_or_warm_model(self, view: str, env, index: int):
        from stable_baselines3 import PPO

        previous = [i for i, (_, v) in enumerate(self.state["phases"][:index]) if v == view]
        params = getattr(self.config.ppo, view).model_dump()
        if previous and self.phase_zip(previous[-1], view).exists():
            model = PPO.load(self.phase_zip(previous[-1], view), env=env, device="cpu")
            model.num_timesteps = 0  # a new phase: a fresh schedule over its own timesteps
            model.set_random_seed(self.config.seed + index)  # the same in a straight and a resumed run
            return model
        activation = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[self.config.policy.activation]
        return PPO("MlpPolicy", env, seed=self.config.seed + index, device="cpu", verbose=0,
                   tensorboard_log=str(self.dir / "tb"),
                   policy_kwargs={"net_arch": list(self.config.policy.net_arch), "activation_fn": activation},
                   **params)

    def validate(self, split: str = "validation") -> dict:
        """Both current policies together, through the runtime, on held-out prompts."""
        from ltd.env import reward_clock, spec_engine, spec_pair, workload_prompts
        from ltd.features import FeatureView, resolve_feature_set
        from ltd.runtime import run_cycle

        s = self.spec
        pair = spec_pair(s)
        engine = spec_engine(s, pair)
        clock = reward_clock(s, pair, engine)
        controller = self.controller(FeatureView(resolve_feature_set(s.features)), self.current_policies())
        tokens, seconds, cycles, depths, widths = 0, 0.0, 0, [], []
        for ids in workload_prompts(s, pair, split)[: self.config.validation_prompts]:
            engine.reset(ids)
            made = 0
            while made < self.config.validation_max_new_tokens and engine.room > 0:
                r = run_cycle(engine, controller)
                made += len(r.new_tokens)
                seconds += clock.cycle_seconds(r)
                cycles += 1
                depths.append(r.depth)
                widths.append(r.width)
            tokens += made
        return {"tokens_per_s": round(tokens / seconds, 3), "mean_accepted": round(tokens / cycles, 4),
                "mean_depth": round(float(np.mean(depths)), 3), "mean_width": round(float(np.mean(widths)), 3),
                "clock": s.clock}


def _maybe_wandb(run: TrainingRun):
    """An offline wandb run beside TensorBoard when wandb is installed (WANDB_MODE overrides)."""
    try:
        import wandb
    except ImportError:
        return None
    return wandb.init(project="ltd", dir=str(run.dir), mode=os.environ.get("WANDB_MODE", "offline"),
                      config={"spec": run.spec.model_dump(), "train": run.config.model_dump()}, sync_tensorboard=True,
                      name=run.dir.name, resume="allow", id=run.dir.name)
