"""Clocks: time is a dependency of the engine and of rewards, never read ad hoc.

* :class:`WallClock` reads ``time.perf_counter`` after synchronising the device, so on a GPU a
  reading covers the kernels launched before it, not only their launch. As a reward clock it
  charges a cycle what the engine measured.
* :class:`CostClock` charges a cycle what a cost model, fitted on the actual pair and machine by
  :func:`profile_pair` (``ltd profile``), predicts from what the cycle did: one draft forward per
  expansion (by how many tokens it read), one target pass (by how many tokens it verified and how
  long the context was), and a fixed bookkeeping cost. Deterministic, so training with it is
  reproducible and fast.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
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


@dataclass
class CostModel:
    """Seconds of a cycle = sum of draft expansions + one verification + bookkeeping.

    draft(n)      = draft[0] + draft[1] * n                         (n: tokens read)
    verify(n, c)  = verify[0] + verify[1] * n + verify[2] * c      (n: tokens verified, c: context)

    The forwards are timed in isolation; what real cycles cost beyond them (tree bookkeeping, and
    caches made cold by the other model) is fitted on real cycles as ``overhead`` per cycle plus
    ``expand_overhead`` per expansion.
    """

    draft: list[float]
    verify: list[float]
    overhead: float
    expand_overhead: float = 0.0
    draft_vocab: int = 0  # the draft output columns the model was fitted with (0: full vocabulary)
    pair_fingerprint: str = ""
    hardware: dict = field(default_factory=dict)
    fit_error: dict = field(default_factory=dict)
    version: int = 1

    def draft_seconds(self, n: int) -> float:
        return self.draft[0] + self.draft[1] * n

    def verify_seconds(self, n: int, context: int) -> float:
        return self.verify[0] + self.verify[1] * n + self.verify[2] * context

    def cycle_split(self, result) -> tuple[float, float]:
        """(draft seconds, verify + bookkeeping seconds) the model predicts for what the cycle did."""
        d = sum(self.draft_seconds(n) + self.expand_overhead for n in result.draft_inputs)
        return d, self.verify_seconds(result.width + 1, result.context) + self.overhead

    def cycle_seconds(self, result) -> float:
        return sum(self.cycle_split(result))

    def save(self, path: Path) -> None:
        atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> CostModel:
        path = Path(path)
        data = read_json(path, "cost model", ConfigError, "run `ltd profile` for this spec first")
        try:
            model = cls(**data)
        except TypeError as exc:
            raise ConfigError(f"cost model {path} is not a valid cost model ({exc}): run `ltd profile` again")
        number = _finite_number
        ok = (isinstance(model.draft, list) and isinstance(model.verify, list)
              and len(model.draft) == 2 and len(model.verify) == 3
              and all(number(x) for x in [*model.draft, *model.verify, model.overhead, model.expand_overhead])
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


def _median_time(fn, reps: int, clock: WallClock) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = clock.now()
        fn()
        times.append(clock.now() - t0)
    return float(np.median(times))


@torch.inference_mode()
def profile_pair(pair, top_k: int = 4, draft_vocab: int | None = None, reps: int = 7, contexts: tuple[int, ...] = (32, 96, 160),
                 verify_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32), draft_sizes: tuple[int, ...] = (1, 2, 4, 8)) -> CostModel:
    """Time the pair's own forwards on this machine and fit the cost model by least squares."""
    from ltd.controllers import StaticController
    from ltd.engine import SpecEngine
    from ltd.paths import hardware
    from ltd.runtime import run_cycle

    engine = SpecEngine(pair, draft_vocab=draft_vocab)
    clock = engine.clock
    dev = engine.device
    contexts = tuple(c for c in contexts if c + max(verify_sizes) + 2 < engine.max_context) or (8,)
    gen = torch.Generator().manual_seed(0)
    vocab = pair.target.config.vocab_size

    def timed(runner, ctx: int, n: int) -> float:
        runner.reset()
        runner.forward(torch.randint(0, vocab, (ctx,), generator=gen).to(dev), rows="last")
        ids = torch.randint(0, vocab, (n,), generator=gen).to(dev)
        pos = torch.full((n,), ctx, device=dev)
        visible = torch.ones(n, ctx + n, dtype=torch.bool, device=dev) if n > 1 else None

        def step():
            runner.forward(ids, pos, visible)
            runner.truncate(ctx)
        return _median_time(step, reps, clock)

    rows_d, ys_d, rows_v, ys_v = [], [], [], []
    for ctx in contexts:
        for n in draft_sizes:
            rows_d.append([1.0, n])
            ys_d.append(timed(engine.draft, ctx, n))
        for n in verify_sizes:
            rows_v.append([1.0, n, ctx])
            ys_v.append(timed(engine.target, ctx, n))
    coef_d, *_ = np.linalg.lstsq(np.array(rows_d), np.array(ys_d), rcond=None)
    coef_v, *_ = np.linalg.lstsq(np.array(rows_v), np.array(ys_v), rcond=None)
    model = CostModel(draft=[float(x) for x in coef_d], verify=[float(x) for x in coef_v], overhead=0.0,
                      draft_vocab=engine.draft_vocab_size, pair_fingerprint=pair.fingerprint(), hardware=hardware())

    # bookkeeping: what real cycles cost beyond the modelled forwards
    prompt = torch.randint(0, vocab, (contexts[0],), generator=gen).tolist()
    rows, residuals = [], []
    for cfg in ((0, 1, 0), (1, top_k, top_k), (2, top_k, 2 * top_k), (4, top_k, 3 * top_k), (3, 1, 3), (6, 2, 8)):
        for _ in range(3):
            engine.reset(prompt)
            for _ in range(4):
                t0 = clock.now()
                r = run_cycle(engine, StaticController(*cfg))
                rows.append([1.0, len(r.draft_inputs)])
                residuals.append(clock.now() - t0 - model.cycle_seconds(r))
    (cycle_o, expand_o), *_ = np.linalg.lstsq(np.array(rows), np.array(residuals), rcond=None)
    model.overhead, model.expand_overhead = max(0.0, float(cycle_o)), max(0.0, float(expand_o))
    pred_d = np.array(rows_d) @ coef_d
    pred_v = np.array(rows_v) @ coef_v
    model.fit_error = {"draft_rel": float(np.median(np.abs(pred_d - ys_d) / ys_d)),
                       "verify_rel": float(np.median(np.abs(pred_v - ys_v) / ys_v))}
    return model
