"""Clocks: time is a dependency of the engine and of rewards, never read ad hoc.

* :class:`WallClock` reads ``time.perf_counter`` after synchronising the device, so on a GPU a
  reading covers the kernels launched before it, not only their launch. As a reward clock it
  charges a cycle what the engine measured.
* :class:`CostClock` charges a cycle what a cost model, fitted on real cycles of the actual pair
  on this machine by :func:`profile_pair` (``ltd profile``), predicts from what the cycle did: a
  cost per expansion (by how many tokens the draft read) and a cost per cycle (by how many tokens
  the target verified and how long the context was). Deterministic, so training with it is
  reproducible and fast.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from ltd.errors import ConfigError
from ltd.paths import atomic_write_json, read_json


class WallClock:
    """Synchronised wall clock for one device."""

    name = "wall"
    deterministic = False

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self._sync = self.device.type == "cuda"

    def now(self) -> float:
        if self._sync:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def cycle_split(self, result) -> tuple[float, float]:
        """(draft seconds, verify seconds) of a cycle, as the engine measured them."""
        return result.draft_seconds, result.verify_seconds

    def cycle_seconds(self, result) -> float:
        return sum(self.cycle_split(result))


def _finite_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


log = logging.getLogger(__name__)

COST_MODEL_VERSION = 2


@dataclass
class CostModel:
    """Seconds of a cycle on one pair and machine, from what the cycle did.

    plain step (no draft):  verify(1, c) [+ cold, right after a drafted cycle]
    drafted cycle:          sum of draft(n_i) over its expansions + verify(w + 1, c) + tree

    with ``draft(n) = draft[0] + draft[1] * n`` (n: tokens the draft read at that expansion),
    ``verify(n, c) = verify[0] + verify[1] * n + verify[2] * c`` (n: tokens the target read, c:
    context) and ``tree`` what a drafted cycle costs beyond its forwards (tree layout, masks, the
    acceptance walk, and caches the draft made cold); ``cold`` is what a plain step costs more when
    the cycle before it drafted. Fitted on real cycles by :func:`profile_pair`.
    """

    draft: list[float]
    verify: list[float]
    tree: float = 0.0
    cold: float = 0.0
    draft_vocab: int = 0  # the draft output columns the model was fitted with (0: full vocabulary)
    drafter: str = "ar"  # the drafter kind it was fitted with (ar: the draft model; block: one forward per cycle)
    pair_fingerprint: str = ""
    hardware: dict = field(default_factory=dict)
    fit_error: dict = field(default_factory=dict)
    version: int = COST_MODEL_VERSION

    def draft_seconds(self, n: int) -> float:
        return self.draft[0] + self.draft[1] * n

    def verify_seconds(self, n: int, context: int) -> float:
        return self.verify[0] + self.verify[1] * n + self.verify[2] * context

    def predict(self, draft_inputs: list[int], width: int, context: int,
                after_draft: bool = False) -> tuple[float, float]:
        """(draft seconds, verify + tree seconds) of a cycle whose draft read ``draft_inputs`` tokens at
        its expansions (none: a plain step) and whose target verified ``width`` tree nodes."""
        if not draft_inputs:
            return 0.0, self.verify_seconds(1, context) + (self.cold if after_draft else 0.0)
        d = sum(self.draft_seconds(n) for n in draft_inputs)
        return d, self.verify_seconds(width + 1, context) + self.tree

    def cycle_split(self, result) -> tuple[float, float]:
        return self.predict(result.draft_inputs, result.width, result.context, result.after_draft)

    def cycle_seconds(self, result) -> float:
        return sum(self.cycle_split(result))

    def save(self, path: Path) -> None:
        atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> CostModel:
        path = Path(path)
        data = read_json(path, "cost model", ConfigError, "run `ltd profile` for this spec first")
        if isinstance(data, dict) and data.get("version") != COST_MODEL_VERSION:
            raise ConfigError(f"cost model {path} has format version {data.get('version')!r}, this LTD reads "
                              f"{COST_MODEL_VERSION}: run `ltd profile` again")
        if not isinstance(data, dict):
            raise ConfigError(f"cost model {path} is not a JSON object: run `ltd profile` again")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"cost model {path} has an unknown key {unknown[0]!r}: run `ltd profile` again")
        try:
            model = cls(**data)
        except TypeError as exc:
            raise ConfigError(f"cost model {path} is not a valid cost model ({exc}): run `ltd profile` again")
        ok = (isinstance(model.draft, list) and isinstance(model.verify, list)
              and len(model.draft) == 2 and len(model.verify) == 3
              and all(_finite_number(x) for x in [*model.draft, *model.verify, model.tree, model.cold])
              and isinstance(model.draft_vocab, int) and isinstance(model.pair_fingerprint, str)
              and isinstance(model.hardware, dict) and isinstance(model.fit_error, dict))
        if not ok:
            raise ConfigError(f"cost model {path} has malformed coefficients: run `ltd profile` again")
        return model


class CostClock:
    """Reward clock backed by a :class:`CostModel`."""

    name = "cost"
    deterministic = True

    def __init__(self, model: CostModel):
        self.model = model

    def cycle_split(self, result) -> tuple[float, float]:
        return self.model.cycle_split(result)

    def cycle_seconds(self, result) -> float:
        return self.model.cycle_seconds(result)


def cost_model_at(path: Path, pair, top_k: int, draft_vocab: int, other_hardware: str = "warn",
                  drafter: str = "ar") -> CostModel:
    """The cost model saved at ``path`` if it was fitted for this pair and draft vocabulary (0: full),
    else one fitted now and saved there. Fitted on other hardware: ``warn`` and use it, or ``refit``."""
    from ltd.paths import hardware

    path = Path(path)
    try:
        model = CostModel.load(path) if path.exists() else None
    except ConfigError:  # an older format or a damaged file: it is derived data, fit it again
        model = None
    here = hardware()
    moved = model is not None and any(model.hardware.get(k) != here.get(k) for k in ("processor", "torch_threads", "gpu"))
    if (model is None or model.pair_fingerprint != pair.fingerprint() or model.draft_vocab != draft_vocab
            or model.drafter != drafter or (moved and other_hardware == "refit")):
        log.warning("fitting the cost model of %s on this machine (ltd profile): %s", pair.name, path)
        model = profile_pair(pair, top_k=top_k, draft_vocab=draft_vocab, drafter=drafter)
        model.save(path)
    elif moved:
        log.warning("cost model %s was fitted on other hardware (%s); run `ltd profile` to fit it here",
                    path, model.hardware)
    return model


def cost_model_for(pair, top_k: int = 4, draft_vocab: int = 0, drafter: str = "ar") -> CostModel:
    """The pair's cost model on this machine, fitted once and kept under ``$LTD_HOME/costs``."""
    from ltd.paths import ltd_home

    kind = "" if drafter == "ar" else f"-{drafter}"
    path = ltd_home() / "costs" / f"{pair.name}-{pair.fingerprint()[:12]}-v{draft_vocab}{kind}.cost.json"
    return cost_model_at(path, pair, top_k, draft_vocab, other_hardware="refit", drafter=drafter)


@torch.inference_mode()
def profile_pair(pair, top_k: int = 4, draft_vocab: int | None = None, cycles: int = 1200, seed: int = 0,
                 drafter: str = "ar") -> CostModel:
    """Fit the cost model on real cycles of ``pair`` on this machine.

    Cycles of random shapes (plain steps, and trees of depth 1-6, top_k up to ``top_k``, widths up to
    the tree's size) run on training prompts of the pair; each cycle's synchronised wall time is
    regressed on what the model counts, robustly (soft-L1 loss: a burst of noise on a shared
    machine moves the fit little), with non-negative coefficients. Fitting whole cycles, not each
    forward alone, charges what the environment's cycles really cost, bookkeeping and cold caches
    included.
    """
    from scipy.optimize import least_squares

    from ltd.controllers import StaticController
    from ltd.engine import SpecEngine
    from ltd.paths import hardware
    from ltd.runtime import read_prompts, run_cycle
    from ltd.spec import SPLITS

    engine = SpecEngine(pair, draft_vocab=draft_vocab, drafter=drafter)
    clock = engine.clock
    rng = np.random.default_rng(seed)
    heldout = pair.target_path.parent / "prompts_heldout.jsonl"
    cut = max(8, min(48, engine.max_context // 4))
    texts = read_prompts(heldout)[SPLITS["train"][0]:] if heldout.exists() else []
    prompts = [pair.encode(t)[:cut] for t in texts] or [
        rng.integers(0, pair.target.config.vocab_size, cut).tolist() for _ in range(8)]
    configs = [StaticController(0, 1, 0)]
    for k in sorted({1, 2, top_k}):
        for d in (1, 2, 3, 4, 6):
            size = k + (d - 1) * k * k
            configs += [StaticController(d, k, w) for w in sorted({1, d, k, 2 * k, 4 * k, size}) if w <= min(size, 32)]
    rows, times = [], []
    config = configs[0]
    for i in range(len(prompts) * 100):
        engine.reset(prompts[i % len(prompts)])
        while engine.room > 24 and len(times) < cycles + 20:
            if rng.random() < 0.5:  # runs of one shape too: plain after plain, tree after tree
                config = configs[int(rng.integers(len(configs)))] if rng.random() < 0.7 else configs[0]
            t0 = clock.now()
            r = run_cycle(engine, config)
            times.append(clock.now() - t0)
            rows.append([1.0, r.width + 1, r.context, float(bool(r.draft_inputs)), len(r.draft_inputs),
                         sum(r.draft_inputs), float(not r.draft_inputs and r.after_draft)])
        if len(times) >= cycles + 20:
            break
    x, y = np.array(rows[20:]), np.array(times[20:])  # the first cycles warm the caches up
    start = np.clip(np.linalg.lstsq(x, y, rcond=None)[0], 0, None)
    fit = least_squares(lambda b: x @ b - y, start, loss="soft_l1", f_scale=0.1 * float(np.median(y)),
                        bounds=(0, np.inf))
    b = [float(v) for v in fit.x]
    model = CostModel(draft=[b[4], b[5]], verify=[b[0], b[1], b[2]], tree=b[3], cold=b[6],
                      draft_vocab=engine.draft_vocab_size, drafter=drafter, pair_fingerprint=pair.fingerprint(),
                      hardware=hardware())
    model.fit_error = {"cycle_rel_median": float(np.median(np.abs(x @ fit.x - y) / y)), "cycles": int(len(y))}
    return model
