"""The features equal their documented definitions, computed here directly from the draft's logits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ltd.engine import SpecEngine
from ltd.features import FEATURE_NAMES, FEATURE_SETS, NODE_RANKS, FeatureView, observe_all


def reference(engine, logits: torch.Tensor) -> dict[str, float]:
    """The features from the tree's scores and the last expansion's full draft logits [rows, V]."""
    tree = engine.tree
    probs = torch.softmax(logits.double(), -1)
    top = probs.topk(tree.top_k, -1).values
    rest = (1 - top.sum(-1)).clamp(min=1e-12)
    entropy = (-(top * top.log()).sum(-1) - rest * rest.log()).mean().item()
    paths = tree.scores.double().exp().sort(descending=True).values
    frontier = tree.scores[tree.frontier].double().exp()
    h = engine.history
    return {
        "depth": tree.depth / 16, "tree_size": math.log2(1 + len(tree)) / 10,
        **{f"p_node_{r}": (paths[r - 1].item() if r <= len(paths) else 0.0) for r in NODE_RANKS},
        "p_frontier_best": frontier.max().item(), "p_frontier_mean": frontier.mean().item(),
        "p_step_max": top[:, 0].mean().item(), "draft_entropy": entropy / math.log(tree.top_k + 1),
        "context": len(engine.tokens) / engine.max_context, "accept_ema": h.accept_ema / 8,
        "accept_last": h.accept_last / 8, "depth_last": h.depth_last / 16,
        "width_last": math.log2(1 + h.width_last) / 6, "top_k": tree.top_k / 16,
    }


@pytest.mark.parametrize("top_k", [1, 3, 8])
def test_features_match_their_definitions(micro_pair, top_k):
    engine = SpecEngine(micro_pair, draft_vocab=0)
    engine.reset(micro_pair.tokenizer("def add(a, b):\n    return")["input_ids"])
    checked = 0
    for _ in range(4):
        engine.begin(top_k)
        empty = observe_all(engine)
        assert empty[:12] == [0.0] * 12 and empty[-1] == 0.0
        for _ in range(3):
            engine.expand()
            ref = reference(engine, engine.tree.last_logits.reshape(-1, engine.tree.last_logits.shape[-1]))
            got = dict(zip(FEATURE_NAMES, observe_all(engine)))
            for name in FEATURE_NAMES:
                assert got[name] == pytest.approx(ref[name], abs=1e-5), name
            checked += 1
        engine.verify(6)
    assert checked == 12


def test_feature_view_selects_and_clips(micro_pair):
    engine = SpecEngine(micro_pair)
    engine.reset(micro_pair.tokenizer("import os")["input_ids"])
    engine.begin(4)
    engine.expand()
    view = FeatureView(FEATURE_SETS["no_history"])
    obs = view(engine)
    full = np.clip(np.array(observe_all(engine), dtype=np.float32), 0, 1)
    assert obs.dtype == np.float32 and obs.shape == (len(FEATURE_SETS["no_history"]),)
    assert np.array_equal(obs, full[[FEATURE_NAMES.index(n) for n in view.names]])
    assert obs.min() >= 0.0 and obs.max() <= 1.0
