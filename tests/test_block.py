"""The block drafter: lossless under the engine's verification, one forward per cycle, features in step."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from ltd.block_drafter import BlockConfig, BlockDrafter, drafter_folder, target_layer_outputs
from ltd.controllers import StaticController
from ltd.engine import SpecEngine
from ltd.runtime import generate_ids

BACKENDS = ["fast", "hf"]


@pytest.fixture(scope="module")
def micro_block(micro_pair):
    """A block drafter distilled briefly from the micro target (the micro target loops, so it learns fast)."""
    from ltd.drafter_train import DrafterRecipe, train_block_drafter

    figures = train_block_drafter(micro_pair, DrafterRecipe(steps=120, pool_sequences=48, hidden=64, heads=4,
                                                            intermediate=128, block=6, context=16))
    return micro_pair, figures


def _random_block(pair, block: int) -> None:
    cfg = pair.target.config
    torch.manual_seed(block)
    BlockDrafter(BlockConfig(cfg.hidden_size, list(range(cfg.num_hidden_layers)), hidden=32, layers=1, heads=2,
                             intermediate=64, block=block, context=8)).save(drafter_folder(pair), {"test": True})


def test_distillation_learns(micro_block):
    _, figures = micro_block
    assert figures["own_leading_matches"] > 0.3, figures  # a chain of the block would accept that many


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_block_drafting_is_lossless(micro_block, micro_prompts, backend):
    pair, _ = micro_block
    plain = SpecEngine(pair, backend=backend)
    block = SpecEngine(pair, backend=backend, drafter="block")
    accepted = 0
    for text in micro_prompts[:6]:
        ids = pair.encode(text)[:24]
        ref = generate_ids(plain, ids, StaticController(0, 1, 0), max_new_tokens=40).output_ids
        for c in (StaticController(5, 2, 8), StaticController(3, 1, 3), StaticController(6, 3, 16)):
            g = generate_ids(block, ids, c, max_new_tokens=40)
            assert g.output_ids == ref
            accepted += sum(g.accepted)
    assert accepted > 20, "the drafter should get tokens accepted, or the test checks little"


@pytest.mark.parametrize("backend", BACKENDS)
def test_target_features_stay_in_step_with_the_sequence(micro_block, micro_prompts, backend):
    """After drafted cycles, the engine's feature rows equal a fresh target pass over the committed tokens."""
    pair, _ = micro_block
    engine = SpecEngine(pair, backend=backend, drafter="block")
    ids = pair.encode(micro_prompts[3])[:24]
    g = generate_ids(engine, ids, StaticController(5, 2, 8), max_new_tokens=48)
    assert sum(g.accepted) > 0
    tokens = engine.tokens
    layers = engine.block.config.target_layers
    store, handles = target_layer_outputs(pair.target, layers)
    with torch.no_grad():
        pair.target(input_ids=torch.tensor([tokens[:-1]]))
    for h in handles:
        h.remove()
    fresh = torch.stack([store[i][0] for i in layers], dim=1)
    torch.testing.assert_close(engine.feats[: len(tokens) - 1], fresh, atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("block", [4, 16])
def test_one_drafter_forward_per_cycle_whatever_the_block_length(noisy_pair, micro_prompts, block):
    _random_block(noisy_pair, block)
    engine = SpecEngine(noisy_pair, drafter="block", max_depth=32)
    calls = Counter()
    hook = engine.block.register_forward_hook(lambda *_: calls.update(["forward"]))
    ids = noisy_pair.encode(micro_prompts[1])[:20]
    engine.reset(ids)
    engine.begin(2)
    while engine.can_expand():
        engine.expand()
    assert engine.tree.depth == block and calls["forward"] == 1  # the whole block from one forward
    ref = generate_ids(SpecEngine(noisy_pair), ids, StaticController(0, 1, 0), max_new_tokens=30).output_ids
    calls.clear()
    g = generate_ids(engine, ids, StaticController(block, 2, block), max_new_tokens=30)
    hook.remove()
    assert g.output_ids == ref
    assert calls["forward"] == g.cycles  # every cycle drafted, once


def test_block_drafting_samples_the_target_distribution(micro_block, micro_prompts):
    from test_sampling import TEMPERATURE, chi2_pvalue  # tests/ is on sys.path (rootdir conftest)

    pair, _ = micro_block
    ids = pair.encode(micro_prompts[5])[:30]
    engine = SpecEngine(pair, temperature=TEMPERATURE, seed=7, drafter="block")
    firsts, n = Counter(), 1000
    for _ in range(n):
        g = generate_ids(engine, ids, StaticController(4, 3, 9), max_new_tokens=1, stop_tokens=set())
        firsts[g.output_ids[0]] += 1
    with torch.no_grad():
        p1 = torch.softmax(pair.target(input_ids=torch.tensor([ids])).logits[0, -1] / TEMPERATURE, -1)
    assert chi2_pvalue(firsts, p1, n) > 1e-3


def test_missing_or_corrupt_drafter_is_one_clear_line(noisy_pair, tmp_path):
    from ltd.errors import PairError

    folder = drafter_folder(noisy_pair)
    _random_block(noisy_pair, 4)
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(PairError, match="corrupt") as err:
        SpecEngine(noisy_pair, drafter="block")
    assert "\n" not in str(err.value)
    (folder / "model.safetensors").unlink()
    with pytest.raises(PairError, match="ltd drafter train"):
        SpecEngine(noisy_pair, drafter="block")


def test_policies_train_export_and_decode_over_the_block_drafter(micro_block, micro_spec, micro_prompts, tmp_path):
    """Same two views and bundle format; the manifest names the drafter and pins its weights."""
    import yaml

    from ltd.errors import LtdError
    from ltd.export import export_run, load_bundle
    from ltd.train import TrainingRun, load_config

    pair, _ = micro_block
    data = yaml.safe_load(micro_spec.read_text())
    data["name"] = "micro-code-block"
    data["drafting"].update(drafter="block", max_depth=6)
    spec_path = micro_spec.parent / "micro-code-block.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    config = load_config(None, {"rounds": 0, "timesteps": {"width": 128, "depth": 128},
                                "ppo": {"width": {"n_steps": 64}, "depth": {"n_steps": 64}}})
    run = TrainingRun.create(spec_path, config, tmp_path / "run")
    run.run()
    bundle = load_bundle(export_run(run.dir, tmp_path / "bundle"), pair)
    assert bundle.manifest["engine"]["drafter"] == "block" and bundle.engine_options()["drafter"] == "block"
    ids = pair.encode(micro_prompts[2])[:24]
    ref = generate_ids(SpecEngine(pair), ids, StaticController(0, 1, 0), max_new_tokens=30).output_ids
    engine = SpecEngine(pair, **bundle.engine_options())
    assert engine.block is not None
    assert generate_ids(engine, ids, bundle.controller(), max_new_tokens=30).output_ids == ref

    folder = drafter_folder(pair)
    original = {f: f.read_bytes() for f in folder.iterdir()}
    try:
        block = BlockDrafter.load(drafter_folder(pair))
        with torch.no_grad():
            block.proj.weight.mul_(1.01)
        block.save(drafter_folder(pair), {"test": "another drafter"})
        with pytest.raises(LtdError, match="another block drafter"):
            load_bundle(tmp_path / "bundle", pair)
    finally:
        for f, data in original.items():
            f.write_bytes(data)


def test_a_changed_recipe_starts_the_drafter_build_over(micro_pair, tmp_path):
    """A checkpoint of another shape is never resumed (it would not load); more steps keep it."""
    from ltd.drafter_train import DrafterRecipe, _work_dir

    work = tmp_path / "build"
    _work_dir(work, DrafterRecipe(steps=10), micro_pair, 64)
    (work / "drafter.ckpt").write_bytes(b"checkpoint")
    _work_dir(work, DrafterRecipe(steps=20), micro_pair, 64)
    assert (work / "drafter.ckpt").exists()
    _work_dir(work, DrafterRecipe(steps=20, hidden=32), micro_pair, 64)
    assert not (work / "drafter.ckpt").exists()


def test_generate_cli_drafts_with_the_block_drafter(micro_block, micro_prompts, tmp_path):
    import json

    from test_cli import assert_one_line_error, run_ltd

    pair, _ = micro_block
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in micro_prompts[:3]))
    outs = {}
    for drafter in ("ar", "block"):
        r = run_ltd("generate", "--pair", "micro", "--prompts", str(prompts), "--drafter", drafter, "--depth", "4",
                    "--top-k", "2", "--width", "6", "--max-new-tokens", "24", "--json")
        assert r.returncode == 0, r.stderr
        outs[drafter] = [json.loads(line) for line in r.stdout.splitlines()]
    assert [o["output_ids"] for o in outs["ar"]] == [o["output_ids"] for o in outs["block"]]
    info = json.loads(run_ltd("pair", "info", "micro").stdout)
    assert info["block_drafter"]["figures"]["own_leading_matches"] > 0.3
    assert_one_line_error(run_ltd("generate", "--pair", "micro", "--prompt", "x", "--drafter", "diffusion"),
                          "diffusion")
