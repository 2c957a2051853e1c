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


def observe_all(engine) -> np.ndarray:
    """All features, in ``FEATURE_NAMES`` order.

    The tree's numbers are small: they are copied to NumPy once (zero-copy on a CPU) and the rest
    is NumPy arithmetic, since each small torch op costs microseconds of dispatch.
    """
    tree = engine.tree
    if tree is not None and len(tree):
        scores = tree.scores.detach().cpu().numpy()
        n = scores.shape[0]
        k = min(n, NODE_RANKS[-1])
        best = np.exp(-np.sort(-scores)[:k]) if n > k else np.exp(-np.sort(-scores))
        frontier = np.exp(scores[tree.frontier.cpu().numpy()])
        logp = tree._last_logp.detach().cpu().numpy().reshape(-1, tree._last_logp.shape[-1])
        p = np.exp(logp)
        rest = np.maximum(1.0 - p.sum(-1), 1e-12)
        entropy = float((-(p * logp).sum(-1) - rest * np.log(rest)).mean())
        head = [min(tree.depth / 16.0, 1.0), math.log2(1 + n) / 10.0,
                *(float(best[r - 1]) if r <= k else 0.0 for r in NODE_RANKS),
                float(frontier.max()), float(frontier.mean()), float(p[:, 0].mean()),
                entropy / math.log(tree.top_k + 1)]
        top_k = min(tree.top_k / 16.0, 1.0)
    else:
        head, top_k = [0.0] * 12, 0.0
    h = engine.history
    tail = [len(engine.tokens) / engine.max_context, min(h.accept_ema / 8.0, 1.0), min(h.accept_last / 8.0, 1.0),
            min(h.depth_last / 16.0, 1.0), math.log2(1 + h.width_last) / 6.0, top_k]
    return np.array(head + tail, dtype=np.float32)


class FeatureView:
    """Selects a named subset of the features (the order of ``names`` is the vector's order)."""

    def __init__(self, names: tuple[str, ...] = FEATURE_NAMES):
        self.names = tuple(names)
        self.index = np.array([FEATURE_NAMES.index(n) for n in self.names], dtype=np.int64)

    @property
    def size(self) -> int:
        return len(self.names)

    def __call__(self, engine) -> np.ndarray:
        return observe_all(engine)[self.index]
