"""With temperature > 0 the engine samples the target's own distribution exactly (goodness of fit)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from scipy import stats

from ltd.controllers import StaticController
from ltd.engine import SpecEngine
from ltd.runtime import generate_ids

N = 1500
TEMPERATURE = 0.8


def chi2_pvalue(counts: Counter, probs: torch.Tensor, n: int) -> float:
    expected = probs.double().numpy() * n
    big = np.flatnonzero(expected >= 5)
    obs = [counts.get(int(t), 0) for t in big]
    exp = list(expected[big])
    rest_obs, rest_exp = n - sum(obs), n - sum(exp)
    if rest_exp >= 5:
        obs.append(rest_obs)
        exp.append(rest_exp)
    exp = np.asarray(exp) * (sum(obs) / sum(exp))
    return float(stats.chisquare(obs, exp).pvalue)


def test_first_two_tokens_follow_the_target_distribution(micro_pair, micro_prompts):
    pair = micro_pair
    ids = pair.encode(micro_prompts[5])[:30]
    engine = SpecEngine(pair, temperature=TEMPERATURE, seed=123)
    controller = StaticController(3, 3, 9)
    firsts, pairs, accepted = Counter(), [], 0
    for _ in range(N):
        g = generate_ids(engine, ids, controller, max_new_tokens=2, stop_tokens=set())
        firsts[g.output_ids[0]] += 1
        pairs.append(tuple(g.output_ids))
        accepted += g.accepted[0]
    assert accepted > N // 10, "the draft should get some tokens accepted, or the test checks little"
    with torch.no_grad():
        p1 = torch.softmax(pair.target(input_ids=torch.tensor([ids])).logits[0, -1] / TEMPERATURE, -1)
    assert chi2_pvalue(firsts, p1, N) > 1e-3

    top = firsts.most_common(1)[0][0]
    seconds = Counter(b for a, b in pairs if a == top)
    n2 = sum(seconds.values())
    with torch.no_grad():
        p2 = torch.softmax(pair.target(input_ids=torch.tensor([ids + [top]])).logits[0, -1] / TEMPERATURE, -1)
    assert chi2_pvalue(seconds, p2, n2) > 1e-3


def test_a_biased_rule_would_be_caught(micro_pair, micro_prompts):
    """The check has power: the draft's own distribution differs from the target's and is rejected."""
    pair = micro_pair
    ids = pair.encode(micro_prompts[5])[:30]
    with torch.no_grad():
        q = torch.softmax(pair.draft(input_ids=torch.tensor([ids])).logits[0, -1] / TEMPERATURE, -1)
        p = torch.softmax(pair.target(input_ids=torch.tensor([ids])).logits[0, -1] / TEMPERATURE, -1)
    gen = torch.Generator().manual_seed(0)
    draws = Counter(torch.multinomial(q, N, replacement=True, generator=gen).tolist())
    assert chi2_pvalue(draws, p, N) < 1e-3
