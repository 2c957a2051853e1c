"""The engine is lossless: greedy output equals the target's own greedy decoding, token for token."""

from __future__ import annotations

import pytest
import torch

from ltd.controllers import StaticController
from ltd.engine import SpecEngine
from ltd.runtime import generate_ids, run_cycle

SETTINGS = [  # (depth, top_k, width)
    (0, 1, 0),  # plain decoding through the same path
    (1, 1, 1),
    (4, 1, 4),  # chain
    (3, 3, 8),
    (5, 4, 20),
    (2, 8, 30),
]


def reference(pair, ids: list[int], max_new_tokens: int, eos: int | None = None) -> list[int]:
    kwargs = {} if eos is None else {"eos_token_id": eos}
    out = pair.target.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                               max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pair.tokenizer.pad_token_id,
                               **kwargs)
    return out[0, len(ids):].tolist()


@pytest.fixture(params=["fast", "hf"])
def backend(request) -> str:
    """Both forward paths: plain torch over the weights, and the transformers forward."""
    return request.param


@pytest.fixture(scope="module")
def prompt_ids(noisy_pair, micro_prompts) -> list[list[int]]:
    ids = [noisy_pair.encode(p)[:40] for p in micro_prompts[:50]]
    assert len(ids) == 50
    return ids


def test_greedy_identical_to_target_generate(noisy_pair, prompt_ids, backend):
    engine = SpecEngine(noisy_pair, backend=backend)
    refs = [reference(noisy_pair, ids, 24) for ids in prompt_ids]
    accepted = []
    for depth, top_k, width in SETTINGS:
        controller = StaticController(depth, top_k, width)
        for ids, ref in zip(prompt_ids, refs):
            g = generate_ids(engine, ids, controller, max_new_tokens=24)
            assert g.output_ids == ref, (depth, top_k, width, ids)
            accepted.extend(g.accepted)
    # the pair exercises both long accepted paths and rejections
    assert max(accepted) >= 3 and min(accepted) == 0


def test_qwen3_architecture_is_lossless(qwen_pair, micro_prompts, backend):
    engine = SpecEngine(qwen_pair, backend=backend)
    for p in micro_prompts[:8]:
        ids = qwen_pair.encode(p)[:30]
        ref = reference(qwen_pair, ids, 20)
        for depth, top_k, width in [(3, 3, 8), (4, 1, 4)]:
            assert generate_ids(engine, ids, StaticController(depth, top_k, width), max_new_tokens=20).output_ids == ref


def test_copy_draft_gets_every_drafted_token_accepted(copy_pair, micro_prompts, backend):
    engine = SpecEngine(copy_pair, backend=backend)
    ids = copy_pair.encode(micro_prompts[0])[:30]
    engine.reset(ids)
    for _ in range(6):
        r = run_cycle(engine, StaticController(4, 1, 4))
        assert r.accepted == 4 and len(r.new_tokens) == 5
    # a tree: the draft's best root child is the target's choice, and the verified greedy chain is taken whole
    for _ in range(6):
        engine.begin(3)
        for _ in range(3):
            engine.expand()
        layout = engine.tree.verify_layout(10)
        chain = 0  # how deep the draft's greedy chain goes inside the verified nodes
        cur = 0
        for _ in range(3):
            kids = [i for i in range(1, len(layout.parents)) if layout.parents[i] == cur]
            if not kids:
                break
            best = max(kids, key=lambda i: float(engine.tree.scores[layout.nodes[i - 1]]))
            chain, cur = chain + 1, best
        r = engine.verify(10)
        assert r.accepted >= chain >= 1


def test_eos_inside_accepted_path_stops_there(copy_pair, micro_prompts, backend):
    engine = SpecEngine(copy_pair, backend=backend)
    for p in micro_prompts[:10]:
        ids = copy_pair.encode(p)[:30]
        free = reference(copy_pair, ids, 12, eos=-1)
        stop = free[5]  # a token the target emits mid-way, inside a depth-6 accepted path
        ref = reference(copy_pair, ids, 12, eos=stop)
        g = generate_ids(engine, ids, StaticController(6, 1, 6), max_new_tokens=12, stop_tokens={stop})
        assert g.output_ids == ref
        assert g.output_ids[-1] == stop and len(g.output_ids) <= 6


@pytest.mark.parametrize("max_new", [1, 3, 7])
def test_max_new_tokens_cut_inside_accepted_path(copy_pair, micro_prompts, max_new, backend):
    engine = SpecEngine(copy_pair, backend=backend)
    ids = copy_pair.encode(micro_prompts[1])[:30]
    g = generate_ids(engine, ids, StaticController(5, 1, 5), max_new_tokens=max_new)
    assert g.output_ids == reference(copy_pair, ids, max_new)
    assert len(g.output_ids) == max_new


def test_tree_verify_logits_equal_chain_logits(noisy_pair, micro_prompts, backend):
    engine = SpecEngine(noisy_pair, backend=backend)
    ids = noisy_pair.encode(micro_prompts[2])[:40]
    engine.reset(ids)
    run_cycle(engine, StaticController(2, 2, 3))  # move past the prompt so the caches hold a real history
    prefix = list(engine.tokens)
    engine.begin(3)
    for _ in range(4):
        engine.expand()
    layout = engine.tree.verify_layout(25)
    logits, tokens, parents = engine.target_pass(25)
    assert logits.shape[0] == len(tokens) + 1 == 26
    for i in range(len(parents)):
        path, cur = [], i
        while cur > 0:
            path.append(tokens[cur - 1])
            cur = parents[cur]
        seq = torch.tensor([prefix + path[::-1]])
        with torch.no_grad():
            chain = noisy_pair.target(input_ids=seq).logits[0, -1]
        torch.testing.assert_close(logits[i], chain, atol=1e-4, rtol=1e-4)
    assert max(layout.depths) == 4


def test_depth_zero_is_plain_decoding_and_skips_the_draft(noisy_pair, micro_prompts, backend):
    engine = SpecEngine(noisy_pair, backend=backend)
    ids = noisy_pair.encode(micro_prompts[3])[:20]
    engine.reset(ids)
    r = run_cycle(engine, StaticController(0, 1, 0))
    assert r.accepted == 0 and len(r.new_tokens) == 1 and r.draft_seconds == 0.0 and engine.draft_len == 0
    # the draft catches up on everything it has not seen at its next expansion
    r = run_cycle(engine, StaticController(2, 2, 4))
    assert engine.draft_len == len(engine.tokens) - len(r.new_tokens)


def test_caches_track_the_accepted_path(noisy_pair, micro_prompts, backend):
    engine = SpecEngine(noisy_pair, backend=backend)
    engine.reset(noisy_pair.encode(micro_prompts[4])[:30])
    for cfg in [(3, 3, 8), (0, 1, 0), (5, 2, 9), (2, 4, 12)] * 3:
        run_cycle(engine, StaticController(*cfg))
        assert engine.target.length == len(engine.tokens) - 1
        assert engine.draft.length >= engine.draft_len


def test_context_limit_is_respected(noisy_pair, backend):
    engine = SpecEngine(noisy_pair, backend=backend)
    ids = [5] * (engine.max_context - 4)
    g = generate_ids(engine, ids, StaticController(6, 2, 8), max_new_tokens=50)
    assert len(ids) + len(g.output_ids) <= engine.max_context
    assert g.output_ids == reference(noisy_pair, ids, len(g.output_ids))


def test_auto_backend_picks_the_checked_fast_path(noisy_pair, qwen_pair):
    assert SpecEngine(noisy_pair).target.kind == "fast"
    assert SpecEngine(qwen_pair).draft.kind == "fast"
    assert SpecEngine(noisy_pair, backend="hf").target.kind == "hf"


def test_restricted_draft_vocabulary_stays_lossless(micro_pair, micro_prompts, backend):
    engine = SpecEngine(micro_pair, backend=backend, draft_vocab=64)
    assert engine.draft_vocab is not None and engine.draft_vocab.numel() == 64
    for p in micro_prompts[:10]:
        ids = micro_pair.encode(p)[:30]
        g = generate_ids(engine, ids, StaticController(3, 3, 8), max_new_tokens=20)
        assert g.output_ids == reference(micro_pair, ids, 20)
