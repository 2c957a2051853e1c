"""Benchmark methods: transformers baselines and the hindsight oracle keep the target's text; the oracle is exact."""

from __future__ import annotations

import pytest

from ltd.clock import CostModel
from ltd.controllers import StaticController, plain
from ltd.engine import SpecEngine
from ltd.oracle import HindsightOracle, oracle_generate
from ltd.runtime import generate_ids, run_cycle

# A cost model that makes drafting cheap, so the oracle plans drafted cycles of every shape.
CHEAP_DRAFT = CostModel(draft=[1e-5, 1e-6], verify=[1e-3, 1e-5, 0.0], tree=1e-5)


@pytest.fixture(scope="module")
def prompts(micro_pair, micro_prompts) -> list[list[int]]:
    return [micro_pair.encode(t)[:32] for t in micro_prompts[:6]]


def test_oracle_predicts_exactly_what_its_cycles_accept(noisy_pair, prompts):
    engine = SpecEngine(noisy_pair, max_depth=6)
    oracle = HindsightOracle(CHEAP_DRAFT, top_k=3, max_depth=6)
    shapes = set()
    for ids in prompts[:4]:
        engine.reset(ids)
        for _ in range(8):
            if engine.room < 12:
                break
            oracle.choose_top_k(engine)
            depth, width = oracle.plan
            r = run_cycle(engine, StaticController(depth, 3, width) if depth else plain())
            assert len(r.new_tokens) == oracle.expected, (oracle.plan, r.accepted)
            shapes.add(oracle.plan)
    assert len(shapes) > 3  # the check covered many plans, not one


def test_oracle_and_transformers_baselines_keep_the_targets_text(noisy_pair, prompts):
    from ltd.baselines import SCHEDULES, hf_generate

    engine = SpecEngine(noisy_pair, max_depth=6)
    oracle = HindsightOracle(CHEAP_DRAFT, top_k=3, max_depth=6)
    for ids in prompts[:3]:
        ref = generate_ids(engine, ids, plain(), max_new_tokens=24)
        got = oracle_generate(engine, oracle, ids, 24)
        assert got.output_ids == ref.output_ids
        assert got.mean_accepted > 1.0  # the replay really drafted
        for schedule in (None, *SCHEDULES):
            hf = hf_generate(noisy_pair, ids, 24, engine.clock, schedule)
            assert hf.output_ids == ref.output_ids, schedule
            assert hf.cycles >= 1


def test_bench_reports_every_method_with_paired_ratios(micro_pair, prompts, tmp_path):
    from ltd.bench import run_workloads

    methods = ["ar", "hf_ar", "hf_heuristic", "hf_confidence", "static", "grid", "oracle"]
    summary = run_workloads(micro_pair, {"code": (prompts, 2)}, methods, max_new_tokens=12,
                            grid=[StaticController(1, 2, 2), StaticController(2, 1, 2)], json_out=tmp_path / "b.json")
    got = summary["methods"]
    assert list(got) == methods
    for name, m in got.items():
        assert m["tokens_per_s"] > 0 and m["identical_to_ar"], name
        assert {"tokens_per_s", "speedup", "mean_accepted"} <= set(m)
        if name != "grid":
            assert m["vs_grid"]["n"] == len(prompts) - 2
    for suffix in (".json", ".md", ".png"):
        assert (tmp_path / f"b{suffix}").exists()
