"""Benchmarks: every method measured in one run, on the same prompts, by the same engine and clock.

Methods (this module grows with the project):

* ``ar``: plain decoding, the target alone through the same forward path as verification
  (a cycle of depth 0);
* ``static``: a fixed EAGLE-style tree, the reference defaults scaled to a small CPU pair;
* ``grid``: the best static (depth, top_k, width) on a validation split, reported on the test split;
* ``partner``: the static partner a training run started from (its spec's ``partner``);
* ``ltd``: the learned depth and width policies of a training run (its best checkpoint).

Methods run interleaved prompt by prompt (the order rotating), so slow drifts of the machine hit
all of them alike. Each method's outputs are checked against ``ar``'s: under greedy decoding they
must be identical token for token.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ltd.controllers import Controller, StaticController, plain
from ltd.engine import SpecEngine
from ltd.errors import ConfigError
from ltd.pair import Pair
from ltd.paths import atomic_write_bytes, atomic_write_json, hardware
from ltd.runtime import Generation, generate_ids
from ltd.stats import paired_ratio

log = logging.getLogger(__name__)

DEFAULT_STATIC = StaticController(depth=4, top_k=4, width=12)
KNOWN_METHODS = ("ar", "static", "grid", "partner", "ltd")


def default_grid(max_depth: int = 6, top_ks: tuple[int, ...] = (1, 2, 4)) -> list[StaticController]:
    """Small grid of static trees: width from a chain up to three nodes per level."""
    out = []
    for depth in range(1, max_depth + 1):
        for k in top_ks:
            size = k + (depth - 1) * k * k
            widths = sorted({min(size, w) for w in (depth, depth + 2, 2 * depth, 3 * depth)})
            for w in widths:
                if k == 1 and w != depth:
                    continue
                out.append(StaticController(depth, k, w))
    return out


@dataclass
class MethodResult:
    name: str
    label: str
    runs: list[Generation]

    @property
    def tokens(self) -> int:
        return sum(len(g.output_ids) for g in self.runs)

    @property
    def seconds(self) -> float:
        return sum(g.seconds for g in self.runs)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def mean_accepted(self) -> float:
        cycles = sum(g.cycles for g in self.runs)
        return self.tokens / cycles if cycles else 0.0


def measure(engine: SpecEngine, controllers: dict[str, Controller], prompts: list[list[int]], max_new_tokens: int,
            desc: str = "bench", warmup: bool = True) -> dict[str, list[Generation]]:
    """Run every controller on every prompt, interleaved, rotating the order per prompt."""
    names = list(controllers)
    if warmup:
        for name in names:
            generate_ids(engine, prompts[0], controllers[name], max_new_tokens=min(16, max_new_tokens))
    for c in controllers.values():  # count policy decision time over the measured runs only
        if hasattr(c, "decision_seconds"):
            c.decision_seconds, c.decisions = 0.0, 0
    runs: dict[str, list[Generation]] = {n: [] for n in names}
    bar = tqdm(total=len(prompts) * len(names), desc=desc, unit="run", leave=False, mininterval=2.0)
    for i, ids in enumerate(prompts):
        order = names[i % len(names):] + names[: i % len(names)]
        for name in order:
            runs[name].append(generate_ids(engine, ids, controllers[name], max_new_tokens=max_new_tokens))
            bar.update(1)
    bar.close()
    return runs


def grid_search(engine: SpecEngine, grid: list[StaticController], prompts: list[list[int]], max_new_tokens: int,
                keep: int = 8, screen: int = 4) -> tuple[StaticController, list[dict]]:
    """Successive halving on validation prompts: all configs on ``screen`` prompts, the best ``keep`` on all."""
    first = measure(engine, {c.label: c for c in grid}, prompts[:screen], max_new_tokens, desc="grid (screen)")
    rate = {name: sum(len(g.output_ids) for g in gs) / sum(g.seconds for g in gs) for name, gs in first.items()}
    finalists = sorted(rate, key=rate.get, reverse=True)[:keep]
    by_label = {c.label: c for c in grid}
    second = measure(engine, {n: by_label[n] for n in finalists}, prompts, max_new_tokens, desc="grid (finalists)",
                     warmup=False)
    final = {name: sum(len(g.output_ids) for g in gs) / sum(g.seconds for g in gs) for name, gs in second.items()}
    best = max(final, key=final.get)
    table = [{"config": n, "screen_tokens_per_s": round(rate[n], 2), "final_tokens_per_s": round(final.get(n, 0), 2)}
             for n in sorted(rate, key=rate.get, reverse=True)]
    return by_label[best], table


def summarize(results: dict[str, MethodResult], baseline: str = "ar") -> dict:
    base = results.get(baseline)
    out: dict = {"methods": {}}
    for name, r in results.items():
        entry = {
            "config": r.label,
            "tokens_per_s": round(r.tokens_per_s, 3),
            "mean_accepted": round(r.mean_accepted, 4),
            "tokens": r.tokens,
            "seconds": round(r.seconds, 4),
            "draft_share": round(sum(g.draft_seconds for g in r.runs) / r.seconds, 4) if r.seconds else 0.0,
            "verify_share": round(sum(g.verify_seconds for g in r.runs) / r.seconds, 4) if r.seconds else 0.0,
        }
        if base is not None:
            entry["speedup"] = round(r.tokens_per_s / base.tokens_per_s, 4) if base.tokens_per_s else None
            pr = paired_ratio([g.tokens_per_s for g in r.runs], [g.tokens_per_s for g in base.runs])
            entry["speedup_per_prompt"] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in pr.items()}
            entry["identical_to_ar"] = all(g.output_ids == b.output_ids for g, b in zip(r.runs, base.runs))
        out["methods"][name] = entry
    for ref in ("grid", "partner"):  # paired per-prompt ratios against the references that matter
        if ref in results:
            for name, r in results.items():
                if name != ref:
                    pr = paired_ratio([g.tokens_per_s for g in r.runs], [g.tokens_per_s for g in results[ref].runs])
                    out["methods"][name][f"vs_{ref}"] = {k: (round(v, 4) if isinstance(v, float) else v)
                                                         for k, v in pr.items()}
    return out


def markdown_table(summary: dict) -> str:
    rows = ["| method | config | tokens/s | speedup vs ar | per-prompt ratio (95% CI) | tokens/cycle | "
            "draft / verify / decision share | same text as ar |",
            "|---|---|---:|---:|---|---:|---|---|"]
    for name, m in summary["methods"].items():
        pr = m.get("speedup_per_prompt", {})
        ci = f"{pr.get('ratio', float('nan')):.3f} [{pr.get('lo', float('nan')):.3f}, {pr.get('hi', float('nan')):.3f}]"
        rows.append(f"| {name} | {m['config']} | {m['tokens_per_s']:.1f} | {m.get('speedup', float('nan')):.3f} | {ci} | "
                    f"{m['mean_accepted']:.2f} | {m['draft_share']:.2f} / {m['verify_share']:.2f} / "
                    f"{m.get('decision_share', 0.0):.3f} | "
                    f"{'yes' if m.get('identical_to_ar', True) else 'NO'} |")
    return "\n".join(rows) + "\n"


def plot(summary: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["methods"])
    rates = [summary["methods"][n]["tokens_per_s"] for n in names]
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(names), 3.4))
    bars = ax.bar(names, rates, color=["#888888" if n == "ar" else "#3a6ea5" for n in names])
    for bar, n in zip(bars, names):
        s = summary["methods"][n].get("speedup")
        if s is not None:
            ax.annotate(f"{s:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
    ax.set_ylabel("tokens / s")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_controllers(run_dir: str | Path) -> tuple[dict[str, Controller], dict]:
    """The ``partner`` and ``ltd`` controllers of a training run, and the engine options its spec implies."""
    from ltd.features import FeatureView, resolve_feature_set
    from ltd.train import VIEWS, TrainingRun, load_policy

    run = TrainingRun.resume(run_dir)
    s = run.spec
    best = {v: run.dir / f"best-{v}.safetensors" for v in VIEWS}
    if not all(p.exists() for p in best.values()):
        raise ConfigError(f"run {run_dir} has no validated policies yet: let `ltd train` finish a round")
    features = FeatureView(resolve_feature_set(s.features))
    policies = {v: load_policy(p) for v, p in best.items()}
    controllers = {"partner": StaticController(s.partner.depth, s.drafting.top_k, s.partner.width),
                   "ltd": run.controller(features, policies)}
    return controllers, {"max_depth": s.drafting.max_depth, "draft_vocab": s.drafting.draft_vocab}


def run_bench(pair: Pair, prompts: list[list[int]], methods: list[str], max_new_tokens: int = 64,
              validation: int = 6, static: StaticController = DEFAULT_STATIC, grid: list[StaticController] | None = None,
              json_out: str | Path | None = None, workload: str = "code", engine_options: dict | None = None,
              extra: dict[str, Controller] | None = None) -> dict:
    """Measure ``methods`` on ``prompts``; the first ``validation`` prompts choose ``grid`` and are not reported."""
    unknown = [m for m in methods if m not in KNOWN_METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)}: choose from {', '.join(KNOWN_METHODS)}")
    if "grid" in methods and len(prompts) <= validation:
        raise ConfigError(f"grid needs more than {validation} prompts (the first {validation} choose the config)")
    engine_options = {k: v for k, v in (engine_options or {}).items() if v is not None}
    engine = SpecEngine(pair, **engine_options)
    val, test = (prompts[:validation], prompts[validation:]) if "grid" in methods else ([], prompts)
    controllers: dict[str, Controller] = {"ar": plain()}
    grid_table: list[dict] = []
    if "static" in methods:
        controllers["static"] = static
    for name, c in (extra or {}).items():
        if name in methods:
            controllers[name] = c
    missing = [m for m in methods if m not in controllers and m != "grid"]
    if missing:
        raise ConfigError(f"method(s) {', '.join(missing)} need a training run: pass --run RUN")
    if "grid" in methods:
        best, grid_table = grid_search(engine, grid or default_grid(), val, max_new_tokens)
        controllers["grid"] = best
    runs = measure(engine, controllers, test, max_new_tokens)
    results = {name: MethodResult(name, getattr(c, "label", name), runs[name]) for name, c in controllers.items()
               if name in methods or name == "ar"}
    summary = summarize(results)
    for name, c in controllers.items():
        if hasattr(c, "decision_seconds") and name in summary["methods"]:
            summary["methods"][name]["decision_share"] = round(c.decision_seconds / max(1e-9, results[name].seconds), 4)
            summary["methods"][name]["decision_us"] = round(1e6 * c.decision_seconds / max(1, c.decisions), 1)
    summary.update(pair=pair.name, fingerprint=pair.fingerprint(), workload=workload, prompts=len(test),
                   validation_prompts=len(val), max_new_tokens=max_new_tokens, hardware=hardware(),
                   engine={"backend": engine.target.kind, "draft_vocab": engine.draft_vocab_size,
                           "max_depth": engine.max_depth},
                   grid=grid_table)
    if json_out:
        json_out = Path(json_out)
        atomic_write_json(json_out, summary)
        atomic_write_bytes(json_out.with_suffix(".md"), markdown_table(summary).encode())
        plot(summary, json_out.with_suffix(".png"), f"{pair.name} pair, {workload}, {len(test)} prompts, greedy")
    return summary


def load_workload(pair: Pair, prompts_file: str | Path | None) -> tuple[list[str], str]:
    from ltd.runtime import read_prompts

    if prompts_file:
        return read_prompts(prompts_file), Path(prompts_file).stem
    default = pair.target_path.parent / "prompts_heldout.jsonl"
    if not default.exists():
        raise ConfigError(f"pair {pair.name} has no held-out prompt file: pass --prompts FILE.jsonl")
    return read_prompts(default), "code (held-out)"


def bench_split(texts: list[str], validation: int, limit: int) -> tuple[list[str], list[str]]:
    """(validation, test) prompts, using the project-wide split where the file is long enough
    (test: the first 40, validation: the next 20, as for training), else the first ``validation``
    prompts for validation and the next ``limit`` for test."""
    from ltd.spec import SPLITS

    lo, hi = SPLITS["validation"]
    if len(texts) >= hi and validation <= hi - lo and limit <= SPLITS["test"][1]:
        return texts[lo:lo + validation], texts[:limit]
    return texts[:validation], texts[validation:validation + limit]


def format_summary(summary: dict) -> str:
    lines = [markdown_table(summary)]
    for name, m in summary["methods"].items():
        for ref in ("partner", "grid"):
            pr = m.get(f"vs_{ref}")
            if pr and pr.get("n", 0) > 1:
                lines.append(f"{name} / {ref}: {pr['ratio']:.3f} [{pr['lo']:.3f}, {pr['hi']:.3f}] (per-prompt, 95% CI)")
    lines.append(json.dumps({"hardware": summary.get("hardware")}))
    return "\n".join(lines)


def env_overhead(spec_path: str | Path, cycles: int = 300) -> dict:
    """Wall time per cycle of the width environment (features, reward clock, bookkeeping included)
    against the bare runtime loop, both taking the spec's static partner choices on the same prompts."""
    from ltd.env import make_env
    from ltd.runtime import run_cycle

    env = make_env(spec_path, "width")
    s = env.config
    action = min(range(len(env.widths)), key=lambda i: abs(env.widths[i] - s.partner.width))
    controller = StaticController(s.partner.depth, s.drafting.top_k, env.widths[action])
    engine = SpecEngine(env.pair, max_depth=s.drafting.max_depth, draft_vocab=s.drafting.draft_vocab)
    prompts = env.prompts

    def bare() -> float:
        t0, done, i = time.perf_counter(), 0, 0
        while done < cycles:
            engine.reset(prompts[i % len(prompts)])
            i += 1
            for _ in range(min(s.workload.max_new_tokens // 2, cycles - done)):
                if engine.room <= 0:
                    break
                run_cycle(engine, controller)
                done += 1
        return (time.perf_counter() - t0) / cycles

    def stepped() -> float:
        env.reset(seed=0)
        t0 = time.perf_counter()
        for _ in range(cycles):
            _, _, terminated, _, _ = env.step(action)
            if terminated:
                env.reset()
        return (time.perf_counter() - t0) / cycles

    bare(), stepped()  # warm up both
    b, e = [], []
    for _ in range(3):  # alternate to spread drift
        b.append(bare())
        e.append(stepped())
    bare_s, env_s = float(np.median(b)), float(np.median(e))
    return {"bare_ms_per_cycle": round(bare_s * 1e3, 4), "env_ms_per_cycle": round(env_s * 1e3, 4),
            "overhead": round(env_s / bare_s - 1, 4), "env_steps_per_s": round(1 / env_s, 1)}
