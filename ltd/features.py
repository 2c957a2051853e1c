"""Observations for the depth and width decisions, shared by the environments and the runtime.

One fixed-size float32 vector, read from the engine between cycle steps. Every feature has a name,
a fixed transform to roughly [0, 1] and a meaning, and none depends in size on top_k or the
maximum depth. A policy bundle records the names it was trained on (``FEATURES_VERSION`` bumps
when a definition changes).

| name            | value                                                                      |
|-----------------|----------------------------------------------------------------------------|
| depth           | expansions so far this cycle / 16                                          |
| tree_size       | log2(1 + tree nodes) / 10                                                  |
| p_node_1 … 32   | draft probability of the 1st, 2nd, 4th, 8th, 16th, 32nd best tree path, 0 if none |
| p_frontier_best | draft probability of the best frontier path                                |
| p_frontier_mean | mean draft probability of the frontier paths                               |
| p_step_max      | mean over the last expansion's rows of the draft's top probability         |
| draft_entropy   | mean entropy of the last expansion's top-k draft candidates (the rest of the mass as one more outcome) / ln(top_k + 1) |
| context         | tokens so far / model context                                              |
| accept_ema      | moving average (0.3) of accepted drafted tokens per cycle / 8              |
| accept_last     | last cycle's accepted drafted tokens / 8                                   |
| depth_last      | last cycle's depth / 16                                                    |
| width_last      | log2(1 + last cycle's width) / 6                                           |
| top_k           | this cycle's top_k / 16                                                    |

``accept_ema`` … ``width_last`` are the acceptance history; leave them out with
``features: no_history`` in an environment spec (an ablation).
"""

from __future__ import annotations

import math
import operator

import numpy as np

FEATURES_VERSION = 1
NODE_RANKS = (1, 2, 4, 8, 16, 32)
FEATURE_NAMES: tuple[str, ...] = (
    "depth", "tree_size", *(f"p_node_{r}" for r in NODE_RANKS), "p_frontier_best", "p_frontier_mean",
    "p_step_max", "draft_entropy", "context", "accept_ema", "accept_last", "depth_last", "width_last", "top_k",
)
HISTORY_FEATURES = ("accept_ema", "accept_last", "depth_last", "width_last")
FEATURE_SETS = {
    "all": FEATURE_NAMES,
    "no_history": tuple(n for n in FEATURE_NAMES if n not in HISTORY_FEATURES),
}


def resolve_feature_set(names: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    from ltd.errors import ConfigError

    if isinstance(names, str):
        if names not in FEATURE_SETS:
            raise ConfigError(f"unknown feature set {names!r}: choose {', '.join(FEATURE_SETS)} or list feature names")
        return FEATURE_SETS[names]
    unknown = [n for n in names if n not in FEATURE_NAMES]
    if unknown:
        raise ConfigError(f"unknown feature {unknown[0]!r}: known features are {', '.join(FEATURE_NAMES)}")
    return tuple(names)


def observe_all(engine) -> list[float]:
    """All features, in ``FEATURE_NAMES`` order.

    The tree's numbers are few (tens): they are read out once with ``tolist`` and the rest is plain
    Python arithmetic. Each small torch or NumPy call costs microseconds of dispatch, more than the
    arithmetic itself, and a decision runs several times per cycle.
    """
    tree = engine.tree
    h = engine.history
    tail = [len(engine.tokens) / engine.max_context, min(h.accept_ema / 8.0, 1.0), min(h.accept_last / 8.0, 1.0),
            min(h.depth_last / 16.0, 1.0), math.log2(1 + h.width_last) / 6.0]
    if tree is None or not len(tree):
        return [0.0] * 12 + tail + [0.0]
    scores = tree.scores.tolist()
    logp = tree.last_logp
    rows = logp.tolist() if logp.dim() > 1 else [logp.tolist()]
    n = len(scores)
    best = sorted(scores, reverse=True)
    # the frontier: the best top_k of the last expansion's nodes (all of them after the first)
    frontier = [math.exp(v) for v in sorted(scores[n - logp.numel():], reverse=True)[:tree.top_k]]
    p_max = entropy = 0.0
    for row in rows:  # top-k log-probabilities, best first; the rest of the mass is one more outcome
        p = [math.exp(v) for v in row]
        rest = max(1.0 - sum(p), 1e-12)
        p_max += p[0]
        entropy -= sum(map(operator.mul, p, row)) + rest * math.log(rest)
    return [min(tree.depth / 16.0, 1.0), math.log2(1 + n) / 10.0,
            *[math.exp(best[r - 1]) if r <= n else 0.0 for r in NODE_RANKS],
            max(frontier), sum(frontier) / len(frontier), p_max / len(rows),
            entropy / len(rows) / math.log(tree.top_k + 1), *tail, min(tree.top_k / 16.0, 1.0)]


class FeatureView:
    """Selects a named subset of the features (the order of ``names`` is the vector's order)."""

    def __init__(self, names: tuple[str, ...] = FEATURE_NAMES):
        self.names = tuple(names)
        self._positions = np.array([FEATURE_NAMES.index(n) for n in self.names], dtype=np.int64)
        self._all = self.names == FEATURE_NAMES

    @property
    def size(self) -> int:
        return len(self.names)

    def __call__(self, engine) -> np.ndarray:
        """The selected features as float32, clipped to [0, 1]."""
        values = np.array(observe_all(engine), dtype=np.float32)
        if not self._all:
            values = values[self._positions]
        return values.clip(0.0, 1.0, out=values)  # in place: a fresh array (half the cost of np.clip)
