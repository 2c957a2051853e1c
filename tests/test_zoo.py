"""Built-in pairs: split by file, saved the standard way, figures recorded, builds resumable."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from ltd.corpus import load_documents, split_documents
from ltd.zoo import PRESETS, degeneracy, train_loop, weight_hashes


def test_split_is_by_document_and_stable():
    docs = load_documents()
    train, held = split_documents(docs)
    assert held and train
    assert not {d.name for d in train} & {d.name for d in held}
    assert 0.04 < len(held) / len(docs) < 0.2
    again_train, again_held = split_documents(list(reversed(docs)))
    assert {d.name for d in again_held} == {d.name for d in held}


def test_micro_pair_is_saved_and_loads_with_from_pretrained(micro_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    meta = json.loads((micro_dir / "pair.json").read_text())
    for key in ("recipe", "corpus", "params", "quality", "hashes", "versions"):
        assert key in meta
    assert meta["hashes"] == weight_hashes(micro_dir)
    q = meta["quality"]
    for key in ("heldout_loss_target", "repeated_4gram_share", "distinct_token_share", "greedy_acceptance"):
        assert isinstance(q[key], float)
    target = AutoModelForCausalLM.from_pretrained(micro_dir / "target")
    draft = AutoModelForCausalLM.from_pretrained(micro_dir / "draft")
    tok = AutoTokenizer.from_pretrained(micro_dir / "target")
    assert target.config.vocab_size == draft.config.vocab_size == len(tok)
    assert meta["params"]["draft"] < meta["params"]["target"]
    ids = tok("def f(x):")["input_ids"]
    assert ids[0] == tok.eos_token_id  # prompts start as documents do in training
    assert (micro_dir / "prompts_heldout.jsonl").exists()


def test_degeneracy_figures():
    assert degeneracy([1, 2, 3, 4] * 5) == pytest.approx((1 - 4 / 17, 4 / 20))
    rep, distinct = degeneracy(list(range(20)))
    assert rep == 0.0 and distinct == 1.0


def test_training_resumes_exactly_where_it_stopped(tmp_path):
    recipe = dataclasses.replace(PRESETS["micro"], warmup_steps=2)

    def make():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

    def loss_fn(model, stop_at=None, calls=[0]):  # noqa: B006 - a counter shared across calls on purpose
        def fn(gen):
            calls[0] += 1
            if stop_at is not None and calls[0] > stop_at:
                raise KeyboardInterrupt
            x = torch.randn(4, 8, generator=gen)
            return (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        return fn

    straight = make()
    train_loop(straight, loss_fn(straight), 12, 1e-2, recipe, tmp_path / "a.ckpt", "a", checkpoint_every_s=0)

    resumed = make()
    with pytest.raises(KeyboardInterrupt):
        train_loop(resumed, loss_fn(resumed, stop_at=5, calls=[0]), 12, 1e-2, recipe, tmp_path / "b.ckpt", "b",
                   checkpoint_every_s=0)
    resumed = make()  # a new process would start from scratch weights and read the checkpoint
    train_loop(resumed, loss_fn(resumed), 12, 1e-2, recipe, tmp_path / "b.ckpt", "b", checkpoint_every_s=0)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_more_steps_continue_a_build_other_changes_restart(tmp_path):
    from ltd.zoo import _reconcile_build

    base = dataclasses.asdict(PRESETS["micro"])
    (tmp_path / "target.ckpt").write_text("x")
    (tmp_path / "draft.ckpt").write_text("x")
    (tmp_path / "recipe.json").write_text(json.dumps(base))
    assert _reconcile_build(tmp_path, base) == []
    longer = dict(base, target_steps=base["target_steps"] + 100)
    history = _reconcile_build(tmp_path, longer)
    assert history and history[-1]["to"]["target_steps"] == longer["target_steps"]
    assert (tmp_path / "target.ckpt").exists() and not (tmp_path / "draft.ckpt").exists()
    (tmp_path / "recipe.json").write_text(json.dumps(longer))
    changed = dict(longer, seq_len=64)
    assert _reconcile_build(tmp_path, changed) == []
    assert not (tmp_path / "target.ckpt").exists()


def test_the_shipped_default_pair_installs_and_is_lossless(ltd_home):
    from ltd.zoo import SHIPPED_DIR, install_shipped

    if not (SHIPPED_DIR / "tiny" / "pair.json").exists():
        pytest.skip("no shipped tiny pair in this checkout")
    from ltd.controllers import StaticController
    from ltd.engine import SpecEngine
    from ltd.pair import load_pair
    from ltd.runtime import generate_ids

    root = install_shipped("tiny")
    meta = json.loads((root / "pair.json").read_text())
    assert meta["shipped_dtype"] == "float16"
    pair = load_pair("tiny")
    prompts = [json.loads(line)["prompt"] for line in (root / "prompts_heldout.jsonl").read_text().splitlines()[:3]]
    engine = SpecEngine(pair)
    for text in prompts:
        ids = pair.encode(text)
        ref = pair.target.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False,
                                   pad_token_id=pair.tokenizer.pad_token_id)[0, len(ids):].tolist()
        assert generate_ids(engine, ids, StaticController(3, 4, 8), max_new_tokens=24).output_ids == ref


def test_recipes_round_trip_through_json_and_reject_unknown_keys():
    from ltd.errors import PairError
    from ltd.zoo import Recipe

    r = PRESETS["tiny"]
    assert Recipe.from_dict(json.loads(json.dumps(dataclasses.asdict(r)))) == r
    with pytest.raises(PairError, match="unknown recipe key 'colour'"):
        Recipe.from_dict(dict(dataclasses.asdict(r), colour="red"))
