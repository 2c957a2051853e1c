"""Gymnasium environments: two single-agent views of one decoding game.

Both views drive the same :class:`~ltd.engine.SpecEngine` and the same feature code
(:mod:`ltd.features`) as the runtime; the partner decision comes from a frozen controller
(the spec's static partner, or a trained policy).

``LtdDepthEnv`` — the depth decision
    Action space: ``Discrete(2)``: 0 = stop and verify, 1 = draft one expansion deeper. Stopping
    at depth 0 is a plain target step. At the spec's ``max_depth`` (or the end of the context)
    the cycle stops whatever the action.
    Observation space: ``Box(0, 1, (n,), float32)``, the named features of :mod:`ltd.features`
    (``info["feature_names"]`` at reset).
    Reward: 0 after an expansion; at verification, the cycle's reward (below). The width comes
    from the partner.

``LtdWidthEnv`` — the width decision
    Action space: ``Discrete(len(widths))``: verify the best ``widths[a]`` tree nodes.
    Observation space: as above, read after the partner finished drafting.
    Reward: the cycle's reward. Depth comes from the partner.

Cycle reward (spec ``reward``), with ``s`` the cycle's seconds on the spec's clock (``wall``:
synchronised wall time as measured; ``cost``: the fitted cost model) and ``n`` the tokens it gained
(accepted + 1):

* ``throughput``: ``n / s`` divided by plain decoding's tokens/s at that context: the cycle's
  speedup over plain decoding (the paper's reward, normalised);
* ``rate``: ``n - rho * s`` with ``rho`` the running throughput of this environment: maximises
  total tokens / total time instead of the mean of per-cycle ratios;
* ``accepted``: ``n`` (an ablation that ignores cost).

Episode end: by default one cycle is one episode (``terminated`` after verification), as in the
paper; the next ``reset()`` continues the same sequence, and a new prompt starts when the sequence
reaches ``max_new_tokens``, EOS or the context limit. With ``episode: sequence`` an episode is
the whole sequence. ``truncated`` is never set. ``reset(seed=...)`` always starts a new sequence.

``info`` after verification: ``accepted``, ``tokens``, ``depth``, ``width``, ``draft_seconds``,
``verify_seconds``, ``seconds`` (all on the reward clock), ``plain_seconds``.

Drafter: the spec's ``drafting.drafter``, the pair's draft model (``ar``) or its block drafter
(``block``: one forward drafts the whole block; a depth action then keeps one more block position).
Spaces and rewards are the same for both.

Version history
    v0: first release (the block drafter and the spec's ``device``/``dtype`` came later as spec keys;
    spaces, rewards and episodes unchanged).
"""

from __future__ import annotations

import functools
from pathlib import Path

import gymnasium as gym
import numpy as np

from ltd.clock import CostClock, WallClock
from ltd.controllers import Controller, StaticController
from ltd.engine import CycleResult, SpecEngine
from ltd.features import FeatureView, resolve_feature_set
from ltd.runtime import draft
from ltd.spec import EnvSpec, load_spec, split_prompts

STOP, CONTINUE = 0, 1


def sequence_ended(engine: SpecEngine, generated: int, max_new_tokens: int, new_tokens: list[int]) -> bool:
    """Where the environments end a sequence: ``max_new_tokens`` reached, EOS, or the context full."""
    eos = engine.pair.eos_token_id
    return generated >= max_new_tokens or engine.room <= 0 or (eos is not None and eos in new_tokens)


@functools.lru_cache(maxsize=4)
def _cached_pair(pair_spec: str, device: str, dtype: str = "float32"):
    from ltd.pair import load_pair

    return load_pair(pair_spec, device=device, dtype=dtype)


def spec_pair(spec: EnvSpec):
    """The spec's pair on the spec's device and dtype, loaded once per process."""
    return _cached_pair(spec.pair_spec, spec.torch_device, spec.dtype)


def spec_engine(spec: EnvSpec, pair=None, **overrides) -> SpecEngine:
    """The engine a spec describes (pair, sampling, drafting limits, drafter kind)."""
    options = dict(temperature=spec.temperature, seed=spec.seed, max_depth=spec.drafting.max_depth,
                   draft_vocab=spec.drafting.draft_vocab, drafter=spec.drafting.drafter)
    return SpecEngine(pair or spec_pair(spec), **{**options, **overrides})


def prepare_clock(spec: EnvSpec) -> None:
    """Fit the spec's cost model if it is missing or stale, before workers that all need it start."""
    if spec.clock == "cost":
        pair = spec_pair(spec)
        reward_clock(spec, pair, spec_engine(spec, pair))


def workload_prompts(spec: EnvSpec, pair, split: str | None = None) -> list[list[int]]:
    """The spec's prompts of ``split`` (default: the spec's own), as token ids cut to the spec's length."""
    from ltd.runtime import read_prompts

    if spec.workload.prompts == "heldout":
        path = pair.target_path.parent / "prompts_heldout.jsonl"
    else:
        path = spec.resolve(spec.workload.prompts)
    texts = split_prompts(read_prompts(path), split or spec.workload.split)
    return [pair.encode(t)[: spec.workload.max_prompt_tokens] for t in texts]


def reward_clock(spec: EnvSpec, pair, engine: SpecEngine):
    """The spec's clock: wall time, or the cost model beside the spec (fitted there when missing or stale)."""
    if spec.clock == "wall":
        return WallClock(engine.device)
    from ltd.clock import cost_model_at

    return CostClock(cost_model_at(spec.cost_model_path, pair, spec.drafting.top_k, engine.draft_vocab_size,
                                   drafter=engine.drafter_kind))


class _DecodingEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, spec: str | Path | EnvSpec, partner: Controller | None = None, pair=None):
        super().__init__()
        self.config = spec if isinstance(spec, EnvSpec) else load_spec(spec)
        s = self.config
        self.pair = pair or spec_pair(s)
        self.engine = spec_engine(s, self.pair)
        self.features = FeatureView(resolve_feature_set(s.features))
        self.observation_space = gym.spaces.Box(0.0, 1.0, (self.features.size,), np.float32)
        self.clock = reward_clock(s, self.pair, self.engine)
        self.prompts = workload_prompts(s, self.pair)
        self.partner = partner or StaticController(s.partner.depth, s.drafting.top_k, s.partner.width)
        self.widths = list(s.drafting.widths)
        self._plain_wall: float | None = None
        self._rho: float | None = None
        self._generated = 0
        self._done = True

    # ------------------------------------------------------------------ helpers

    def observe(self) -> np.ndarray:
        return self.features(self.engine)

    def plain_seconds(self, context: int) -> float:
        """Seconds of one plain decoding step at ``context`` on the reward clock."""
        if isinstance(self.clock, CostClock):
            m = self.clock.model
            return sum(m.predict([], 0, context))
        if self._plain_wall is None:
            self._plain_wall = self._measure_plain()
        return self._plain_wall

    def _measure_plain(self) -> float:
        from ltd.runtime import run_cycle

        engine = SpecEngine(self.pair)
        engine.reset(self.prompts[0])
        times = [run_cycle(engine, StaticController(0, 1, 0)).seconds for _ in range(12)]
        return float(np.median(times[2:]))

    def _new_sequence(self) -> None:
        prompt = self.prompts[int(self.np_random.integers(len(self.prompts)))]
        self.engine.reset(prompt)
        self._generated = 0
        self._done = False

    def _begin_cycle(self) -> None:
        self.engine.begin(self.config.drafting.top_k)

    def _finish_cycle(self, width: int) -> tuple[float, dict]:
        """Verify, account, and say what happened."""
        r: CycleResult = self.engine.verify(width)
        draft_s, verify_s = self.clock.cycle_split(r)
        seconds = draft_s + verify_s
        tokens = len(r.new_tokens)
        plain = self.plain_seconds(r.context)
        if self.config.reward == "throughput":
            reward = tokens * plain / seconds
        elif self.config.reward == "rate":
            rho = self._rho if self._rho is not None else 1.0 / plain
            reward = tokens - rho * seconds
            self._rho = 0.95 * rho + 0.05 * tokens / seconds
        else:
            reward = float(tokens)
        self._generated += tokens
        if sequence_ended(self.engine, self._generated, self.config.workload.max_new_tokens, r.new_tokens):
            self._done = True
        info = {"accepted": r.accepted, "tokens": tokens, "depth": r.depth, "width": r.width,
                "draft_seconds": draft_s, "verify_seconds": verify_s, "seconds": seconds,
                "plain_seconds": plain}
        return float(reward), info

    def _start(self, seed: int | None) -> None:
        if seed is not None or self._done:
            self._new_sequence()

    def _info(self) -> dict:
        return {"feature_names": self.features.names}

    def _open_cycle(self) -> None:
        """Bring the engine to this view's first decision of a cycle."""
        raise NotImplementedError

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._start(seed)
        self._open_cycle()
        return self.observe(), self._info()

    def _verified(self, width: int):
        """Verify with ``width``; end the episode or open the next cycle."""
        reward, info = self._finish_cycle(width)
        if self.config.episode == "cycle" or self._done:
            return self.observe(), reward, True, False, info
        self._open_cycle()
        return self.observe(), reward, False, False, info


class LtdDepthEnv(_DecodingEnv):
    """Depth decision: stop (0) or draft one expansion deeper (1), after each expansion."""

    def __init__(self, spec, partner: Controller | None = None, pair=None):
        super().__init__(spec, partner, pair)
        self.action_space = gym.spaces.Discrete(2)

    def _open_cycle(self) -> None:
        self._begin_cycle()

    def step(self, action):
        if int(action) == CONTINUE and self.engine.can_expand():
            self.engine.expand()
            if self.engine.can_expand():
                return self.observe(), 0.0, False, False, {}
        return self._verified(self.partner.choose_width(self.engine))


class LtdWidthEnv(_DecodingEnv):
    """Width decision: verify ``widths[a]`` tree nodes, once per cycle."""

    def __init__(self, spec, partner: Controller | None = None, pair=None):
        super().__init__(spec, partner, pair)
        self.action_space = gym.spaces.Discrete(len(self.widths))

    def _open_cycle(self) -> None:
        draft(self.engine, self.partner)  # the partner's depth decisions, through the runtime's loop

    def step(self, action):
        return self._verified(self.widths[int(action)])


VIEWS = {"depth": LtdDepthEnv, "width": LtdWidthEnv}


def make_env(spec: str | Path | EnvSpec, view: str, partner: Controller | None = None, pair=None) -> _DecodingEnv:
    from ltd.errors import ConfigError

    if view not in VIEWS:
        raise ConfigError(f"unknown view {view!r}: choose depth or width")
    return VIEWS[view](spec, partner=partner, pair=pair)


def spec_dirs() -> list[Path]:
    """Where specs registered at import are looked for: the project's envs/ and $LTD_ENVS."""
    import os

    from ltd.paths import PACKAGE_DIR

    dirs = [PACKAGE_DIR.parent / "envs"]
    dirs += [Path(p) for p in os.environ.get("LTD_ENVS", "").split(os.pathsep) if p]
    return [d for d in dirs if d.is_dir()]


def register_envs() -> list[str]:
    """Register ``ltd/<name>-<view>-v0`` for every spec file found; bad files are skipped."""
    from ltd.errors import LtdError

    ids = []
    for d in spec_dirs():
        for path in sorted(d.glob("*.yaml")):
            try:
                spec = load_spec(path)
            except LtdError:
                continue
            for view, cls in VIEWS.items():
                env_id = f"ltd/{spec.name}-{view}-v0"
                if env_id in gym.registry:
                    continue
                gym.register(env_id, entry_point=f"ltd.env:{cls.__name__}", kwargs={"spec": str(path)},
                             nondeterministic=spec.clock == "wall")
                ids.append(env_id)
    return ids
