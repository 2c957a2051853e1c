"""Benchmarks: every method measured in one run, on the same prompts, by the same engine and clock.

Methods:

* ``ar``: plain decoding, the target alone through the same forward path as verification
  (a cycle of depth 0);
* ``hf_ar``, ``hf_heuristic``, ``hf_confidence``: transformers' ``generate``, without a draft and
  with assisted generation under its two schedules (:mod:`ltd.baselines`);
* ``static``: a fixed EAGLE-style tree, the reference defaults scaled to a small CPU pair;
* ``grid``: the best static (depth, top_k, width) on a validation split, reported on the test split;
* ``partner``: the static partner a training run started from (its spec's ``partner``);
* ``ltd``: the learned depth and width policies of a training run or bundle;
* ``oracle``: per cycle, the depth and width with the highest throughput in hindsight
  (:mod:`ltd.oracle`; its search is not timed);
* ``grid_block``, ``ltd_block``: as ``grid`` and ``ltd``, drafted by the pair's block drafter
  (:mod:`ltd.block_drafter`) on an engine of its own; ``ltd_block`` takes a bundle trained on it.

Methods run interleaved prompt by prompt (the order rotating), so slow drifts of the machine hit
all of them alike. Each method's outputs are checked against ``ar``'s: under greedy decoding they
must be identical token for token.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ltd.controllers import Controller, StaticController, plain
from ltd.engine import SpecEngine
from ltd.errors import ConfigError
from ltd.pair import Pair
from ltd.paths import atomic_write_bytes, atomic_write_json, hardware
from ltd.plotting import pyplot
from ltd.runtime import Generation, generate_ids
from ltd.stats import paired_ratio

log = logging.getLogger(__name__)

DEFAULT_STATIC = StaticController(depth=4, top_k=4, width=12)
KNOWN_METHODS = ("ar", "hf_ar", "hf_heuristic", "hf_confidence", "static", "grid", "partner", "ltd", "oracle",
                 "grid_block", "ltd_block")
BLOCK_METHODS = ("grid_block", "ltd_block")  # drafted by the pair's block drafter (one forward per cycle)
Runner = Callable[[list[int], int], Generation]  # (prompt ids, max new tokens) -> generation


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


def controller_runners(engine: SpecEngine, controllers: dict[str, Controller]) -> dict[str, Runner]:
    """Each controller driving ``engine`` through the runtime's loop."""
    def runner(c: Controller) -> Runner:
        return lambda ids, n: generate_ids(engine, ids, c, max_new_tokens=n)
    return {name: runner(c) for name, c in controllers.items()}


def measure(runners: dict[str, Runner], prompts: list[list[int]], max_new_tokens: int, desc: str = "bench",
            warmup: bool = True, reset: list | None = None) -> dict[str, list[Generation]]:
    """Run every method on every prompt, interleaved, rotating the order per prompt.

    With ``warmup`` each method first runs once, unmeasured, for 16 tokens of the first prompt;
    decision-time counters of the controllers in ``reset`` restart after it.
    """
    names = list(runners)
    if warmup:
        for name in names:
            runners[name](prompts[0], min(16, max_new_tokens))
    for c in reset or []:
        if hasattr(c, "decision_seconds"):
            c.decision_seconds, c.decisions = 0.0, 0
        if getattr(c, "trace", None) is not None:
            c.trace.clear()
    runs: dict[str, list[Generation]] = {n: [] for n in names}
    bar = tqdm(total=len(prompts) * len(names), desc=desc, unit="run", leave=False, mininterval=2.0)
    for i, ids in enumerate(prompts):
        order = names[i % len(names):] + names[: i % len(names)]
        for name in order:
            runs[name].append(runners[name](ids, max_new_tokens))
            bar.update(1)
    bar.close()
    return runs


def grid_search(engine: SpecEngine, grid: list[StaticController], prompts: list[list[int]], max_new_tokens: int,
                keep: int = 8, screen: int = 4) -> tuple[StaticController, list[dict]]:
    """Successive halving on validation prompts: all configs on ``screen`` prompts, the best ``keep`` on all."""
    by_label = {c.label: c for c in grid}
    runners = controller_runners(engine, by_label)
    first = measure(runners, prompts[:screen], max_new_tokens, desc="grid (screen)")
    rate = {name: sum(len(g.output_ids) for g in gs) / sum(g.seconds for g in gs) for name, gs in first.items()}
    finalists = sorted(rate, key=rate.get, reverse=True)[:keep]
    second = measure({n: runners[n] for n in finalists}, prompts, max_new_tokens, desc="grid (finalists)",
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
    for ref in ("grid", "partner", "oracle", "ltd"):  # paired per-prompt ratios against the references that matter
        if ref in results:
            for name, r in results.items():
                if name != ref:
                    pr = paired_ratio([g.tokens_per_s for g in r.runs], [g.tokens_per_s for g in results[ref].runs])
                    out["methods"][name][f"vs_{ref}"] = {k: (round(v, 4) if isinstance(v, float) else v)
                                                         for k, v in pr.items()}
    hf = [n for n in results if n in ("hf_heuristic", "hf_confidence")]
    if "ltd" in results and hf:  # the better of transformers' assisted schedules
        best = max(hf, key=lambda n: results[n].tokens_per_s)
        pr = paired_ratio([g.tokens_per_s for g in results["ltd"].runs], [g.tokens_per_s for g in results[best].runs])
        out["methods"]["ltd"]["vs_hf_best"] = {"ref": best, **{k: (round(v, 4) if isinstance(v, float) else v)
                                                                for k, v in pr.items()}}
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
    lines = rows
    methods = summary["methods"]
    refs = [(name, "grid", m["vs_grid"]) for name, m in methods.items() if m.get("vs_grid", {}).get("n", 0) > 1]
    refs += [("ltd", m.get("ref", ref), m) for ref in ("partner", "oracle", "hf_best")
             if (m := methods.get("ltd", {}).get(f"vs_{ref}", {})).get("n", 0) > 1]
    refs += [(name, "ltd", m["vs_ltd"]) for name, m in methods.items()
             if name in BLOCK_METHODS and m.get("vs_ltd", {}).get("n", 0) > 1]
    if refs:
        lines += ["", "| ratio | per-prompt geometric mean | 95% CI |", "|---|---:|---|"]
        lines += [f"| {name} / {ref} | {pr['ratio']:.3f} | [{pr['lo']:.3f}, {pr['hi']:.3f}] |" for name, ref, pr in refs]
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path, title: str) -> None:
    """Tokens/s by method, one group of bars per workload, speedups over ``ar`` annotated."""
    plt = pyplot()
    workloads = summary.get("workloads") or {summary.get("workload", "workload"): summary}
    names = list(next(iter(workloads.values()))["methods"])
    fig, ax = plt.subplots(figsize=(min(13.0, 2.0 + 0.6 * len(names) * len(workloads)), 3.8))
    width = 0.8 / len(workloads)
    for j, (wname, ws) in enumerate(workloads.items()):
        xs = [i + j * width for i in range(len(names))]
        rates = [ws["methods"].get(n, {}).get("tokens_per_s", 0.0) for n in names]
        bars = ax.bar(xs, rates, width, label=wname)
        for bar, n in zip(bars, names):
            sp = ws["methods"].get(n, {}).get("speedup")
            if sp is not None:
                ax.annotate(f"{sp:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                            va="bottom", fontsize=7)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, rotation=20, fontsize=8)
    ax.set_ylabel("tokens / s")
    ax.set_title(title, fontsize=9)
    if len(workloads) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_choices(choices: dict, path: Path) -> None:
    """The learned policies' depth and width per cycle against the features they saw."""
    plt = pyplot()
    names = choices["features"]
    obs = np.array([c["obs"] for c in choices["cycles"]])
    depth = np.array([c["depth"] for c in choices["cycles"]])
    width = np.array([c["width"] for c in choices["cycles"]])
    rng = np.random.default_rng(0)
    panels = [("depth", depth, f) for f in ("accept_ema", "p_step_max") if f in names]
    panels += [("width", width, f) for f in ("p_node_4", "context") if f in names]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.0), squeeze=False)
    for ax, (what, y, feat) in zip(axes[0], panels):
        ax.scatter(obs[:, names.index(feat)], y + rng.uniform(-0.2, 0.2, len(y)), s=4, alpha=0.3)
        ax.set_xlabel(feat)
        ax.set_ylabel(f"chosen {what}")
    fig.suptitle(f"ltd choices, {len(depth)} of {choices.get('of_cycles', len(depth))} cycles", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(summary: dict, json_out: Path) -> None:
    """``OUT.json``, ``OUT.md`` (tables), ``OUT.png`` (throughput) and ``OUT-choices.png`` (policies)."""
    atomic_write_json(json_out, summary)
    workloads = summary.get("workloads") or {summary.get("workload", "workload"): summary}
    md = []
    for wname, ws in workloads.items():
        md += [f"## {wname} ({ws.get('prompts')} prompts, {ws.get('max_new_tokens')} new tokens, greedy)", "",
               markdown_table(ws)]
    atomic_write_bytes(json_out.with_suffix(".md"), "\n".join(md).encode())
    plot(summary, json_out.with_suffix(".png"), f"{summary.get('pair')} pair, greedy")
    for ws in workloads.values():
        if ws.get("ltd_choices", {}).get("cycles"):
            plot_choices(ws["ltd_choices"], json_out.with_name(json_out.stem + "-choices.png"))
            break


def run_workloads(pair: Pair, workloads: dict[str, tuple[list[list[int]], int]], methods: list[str],
                  json_out: str | Path | None = None, **options) -> dict:
    """:func:`run_bench` on each workload ({name: (prompts, validation)}); methods pooled over all."""
    per = {name: run_bench(pair, prompts, methods, validation=val, workload=name, **options)
           for name, (prompts, val) in workloads.items()}
    first = next(iter(per.values()))
    if len(per) == 1:
        summary = dict(first)
        summary["workloads"] = {first["workload"]: first}
    else:
        pooled = {}
        for name in first["methods"]:
            tokens = sum(ws["methods"][name]["tokens"] for ws in per.values())
            seconds = sum(ws["methods"][name]["seconds"] for ws in per.values())
            pooled[name] = {"tokens_per_s": round(tokens / seconds, 3), "tokens": tokens, "seconds": round(seconds, 4)}
        for name, m in pooled.items():
            m["speedup"] = round(m["tokens_per_s"] / pooled["ar"]["tokens_per_s"], 4)
            m["speedup_min_workload"] = min(ws["methods"][name]["speedup"] for ws in per.values())
        summary = {"methods": pooled, "workloads": per, "pair": first["pair"], "hardware": first["hardware"]}
    if json_out:
        write_report(summary, Path(json_out))
    return summary


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


def _oracle_for(pair: Pair, engine: SpecEngine, controllers: dict[str, Controller]):
    """The hindsight oracle over the learned policies' action space (or the static tree's top_k)."""
    from ltd.clock import cost_model_for
    from ltd.oracle import DEFAULT_WIDTHS, HindsightOracle

    ref = controllers.get("ltd")
    top_k = getattr(ref, "top_k", DEFAULT_STATIC.top_k)
    widths = tuple(getattr(ref, "widths", DEFAULT_WIDTHS))
    return HindsightOracle(cost_model_for(pair, top_k, engine.draft_vocab_size), top_k,
                           min(engine.max_depth, 8), widths)


def run_bench(pair: Pair, prompts: list[list[int]], methods: list[str], max_new_tokens: int = 64,
              validation: int = 6, static: StaticController = DEFAULT_STATIC, grid: list[StaticController] | None = None,
              workload: str = "code", engine_options: dict | None = None,
              extra: dict[str, Controller] | None = None, block_options: dict | None = None) -> dict:
    """Measure ``methods`` on ``prompts``; the first ``validation`` prompts choose ``grid`` and are not reported."""
    from ltd.baselines import hf_generate
    from ltd.oracle import oracle_generate

    unknown = [m for m in methods if m not in KNOWN_METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)}: choose from {', '.join(KNOWN_METHODS)}")
    if "grid" in methods and len(prompts) <= validation:
        raise ConfigError(f"grid needs more than {validation} prompts (the first {validation} choose the config)")
    engine_options = {k: v for k, v in (engine_options or {}).items() if v is not None}
    engine = SpecEngine(pair, **engine_options)
    block_engine = None
    if any(m in BLOCK_METHODS for m in methods):
        block_engine = SpecEngine(pair, **{**engine_options, **(block_options or {}), "drafter": "block"})
    val, test = (prompts[:validation], prompts[validation:]) if "grid" in methods else ([], prompts)
    controllers: dict[str, Controller] = {"ar": plain()}
    grid_table: list[dict] = []
    if "static" in methods:
        controllers["static"] = static
    for name, c in (extra or {}).items():
        if name in methods:
            controllers[name] = c
    missing = [m for m in methods if m in ("ltd", "partner", "ltd_block") and m not in controllers]
    if missing:
        raise ConfigError(f"method(s) {', '.join(missing)} need policies: pass --policy BUNDLE or --run RUN "
                          f"(ltd_block: --block-policy BUNDLE)")
    if "grid" in methods:
        best, grid_table = grid_search(engine, grid or default_grid(), val, max_new_tokens)
        controllers["grid"] = best
    if "grid_block" in methods:
        block_grid = default_grid(max_depth=min(8, block_engine.block.config.block), top_ks=(1, 2, 4))
        best, table = grid_search(block_engine, block_grid, val, max_new_tokens)
        controllers["grid_block"] = best
        grid_table += [dict(row, drafter="block") for row in table]
    trace: list = []
    if hasattr(controllers.get("ltd"), "trace"):
        controllers["ltd"].trace = trace
    runners = controller_runners(engine, {n: c for n, c in controllers.items() if n not in BLOCK_METHODS})
    if block_engine is not None:
        runners.update(controller_runners(block_engine, {n: c for n, c in controllers.items() if n in BLOCK_METHODS}))
    labels = {name: getattr(c, "label", name) + (" (block)" if name in BLOCK_METHODS else "")
              for name, c in controllers.items()}
    if "oracle" in methods:
        oracle = _oracle_for(pair, engine, controllers)
        runners["oracle"] = lambda ids, n: oracle_generate(engine, oracle, ids, n)
        labels["oracle"] = f"hindsight k{oracle.top_k} d<={oracle.max_depth}"
    for name in methods:
        if name.startswith("hf_"):
            schedule = None if name == "hf_ar" else name.removeprefix("hf_")
            runners[name] = lambda ids, n, schedule=schedule: hf_generate(pair, ids, n, engine.clock, schedule)
            labels[name] = "transformers generate" + (f", assistant ({schedule})" if schedule else "")
    order = [m for m in KNOWN_METHODS if m in runners and (m in methods or m == "ar")]
    runs = measure({m: runners[m] for m in order}, test, max_new_tokens, reset=list(controllers.values()))
    results = {name: MethodResult(name, labels[name], runs[name]) for name in order}
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
    if trace:
        names = controllers["ltd"].features.names
        step = max(1, len(trace) // 600)  # every step-th cycle: enough for the plot, a small file
        summary["ltd_choices"] = {"features": list(names), "every": step, "of_cycles": len(trace), "cycles": [
            {"obs": [round(float(x), 3) for x in obs], "depth": d, "width": w} for obs, d, w in trace[::step]]}
    return summary


def load_workload(pair: Pair, prompts_file: str | Path | None) -> tuple[list[str], str]:
    from ltd.runtime import read_prompts

    if prompts_file and prompts_file != "heldout":
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
    workloads = summary.get("workloads") or {summary.get("workload", "workload"): summary}
    lines = []
    for name, ws in workloads.items():
        lines += [f"{name}: {ws.get('prompts')} prompts, {ws.get('max_new_tokens')} new tokens, greedy",
                  markdown_table(ws)]
    if len(workloads) > 1:
        lines.append("all workloads: " + ", ".join(f"{n} {m['tokens_per_s']:.1f} tok/s ({m['speedup']:.3f}x ar, "
                                                   f"lowest workload {m['speedup_min_workload']:.3f}x)"
                                                   for n, m in summary["methods"].items()))
    lines.append(json.dumps({"hardware": summary.get("hardware")}))
    return "\n".join(lines)


def env_overhead(spec_path: str | Path, cycles: int = 300, repeats: int = 4) -> dict:
    """Wall time per cycle of the width environment (features, reward clock, bookkeeping included)
    against the bare runtime loop, both taking the spec's static partner choices on the same prompts."""
    from ltd.env import make_env, sequence_ended, spec_engine
    from ltd.runtime import run_cycle

    env = make_env(spec_path, "width")
    s = env.config
    action = min(range(len(env.widths)), key=lambda i: abs(env.widths[i] - s.partner.width))
    controller = StaticController(s.partner.depth, s.drafting.top_k, env.widths[action])
    engine = spec_engine(s, env.pair)
    prompts = env.prompts

    def bare() -> float:
        """The same cycles as the environment's: its prompt order (the seed-0 generator it draws
        prompts with) and its end of a sequence (max_new_tokens, EOS or the context)."""
        from gymnasium.utils import seeding

        rng, _ = seeding.np_random(0)
        t0, done = time.perf_counter(), 0
        while done < cycles:
            engine.reset(prompts[int(rng.integers(len(prompts)))])
            made = 0
            while done < cycles:
                r = run_cycle(engine, controller)
                done += 1
                made += len(r.new_tokens)
                if sequence_ended(engine, made, s.workload.max_new_tokens, r.new_tokens):
                    break
        return (time.perf_counter() - t0) / cycles

    def stepped() -> float:
        t0 = time.perf_counter()
        env.reset(seed=0)
        for _ in range(cycles):
            _, _, terminated, _, _ = env.step(action)
            if terminated:
                env.reset()
        return (time.perf_counter() - t0) / cycles

    bare(), stepped()  # warm up both
    b, e = [], []
    for i in range(2 * repeats):  # alternate, the order flipping each pair, to spread drift over both
        first, second = (bare, stepped) if i % 2 == 0 else (stepped, bare)
        x, y = first(), second()
        b.append(x if first is bare else y)
        e.append(y if first is bare else x)
    pr = paired_ratio(e, b)
    bare_s, env_s = float(np.median(b)), float(np.median(e))
    return {"bare_ms_per_cycle": round(bare_s * 1e3, 4), "env_ms_per_cycle": round(env_s * 1e3, 4),
            "overhead": round(pr["ratio"] - 1, 4), "overhead_ci": [round(pr["lo"] - 1, 4), round(pr["hi"] - 1, 4)],
            "blocks": len(b), "cycles_per_block": cycles, "env_steps_per_s": round(1 / env_s, 1)}
