"""Ablation sweeps: a grid over spec and training-config keys x seeds, each point trained, exported and
benchmarked, run by Ray Tune (``pip install 'ltd[ray]'``).

A sweep file (``experiments/<name>.yaml``)::

    name: reward-mode
    spec: ../envs/tiny-code.yaml        # relative to the sweep file
    config: ppo-quick.yaml              # training config, relative to the sweep file
    grid:                               # spec.<key> or train.<key>, dotted for nested keys
      spec.reward: [throughput, rate, accepted]
    seeds: [0, 1, 2]                    # train.seed of each run
    bench: {prompts: 20, max_new_tokens: 48}

Each trial writes its spec and config into ``<out>/<trial key>/``, trains there (a trial stopped
for any reason resumes from its own checkpoints), exports the bundle, and measures ``ar``, the
static ``partner`` and ``ltd`` on the spec's test prompts in one run. Trials run one at a time by
default: two timing runs on one machine would distort each other's wall clock. Ray Tune keeps
the experiment state: running the same command again restores it and runs only what is missing.
The summary (``summary.md``, ``summary.json``, ``summary.png`` in ``<out>``) gives, per grid point,
mean and 95 % confidence interval over the seeds.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ltd.errors import ConfigError
from ltd.paths import atomic_write_bytes, atomic_write_json, read_yaml
from ltd.stats import mean_ci

log = logging.getLogger(__name__)
METRICS = ("ltd_vs_partner", "ltd_speedup", "partner_speedup", "ltd_tokens_per_s", "validation_tokens_per_s",
           "ltd_mean_accepted")


class BenchOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompts: int = Field(20, ge=2)
    max_new_tokens: int = Field(48, ge=1)


class SweepSpec(BaseModel):
    """A sweep file, validated (unknown keys are refused)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    spec: str
    config: str | None = None
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    bench: BenchOptions = Field(default_factory=BenchOptions)
    max_concurrent_trials: int = Field(1, ge=1)

    @field_validator("grid")
    @classmethod
    def _keys(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not key.startswith(("spec.", "train.")) or key.endswith("."):
                raise ValueError(f"grid key {key!r} must start with spec. or train. (e.g. spec.reward)")
            if key == "train.seed":
                raise ValueError("set seeds with `seeds:`, not a grid key")
            if not values:
                raise ValueError(f"grid key {key!r} has no values")
        return grid

    def points(self) -> list[dict[str, Any]]:
        """Every combination of the grid's values (one point when the grid is empty)."""
        keys = list(self.grid)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(self.grid[k] for k in keys))]


def load_sweep(path: str | Path) -> tuple[SweepSpec, Path]:
    path = Path(path)
    data = read_yaml(path, "sweep file", ConfigError, "see experiments/ for examples")
    if not isinstance(data, dict):
        raise ConfigError(f"sweep file {path} must be a YAML mapping (see experiments/ for examples)")
    try:
        sweep = SweepSpec.model_validate(data)
    except ValidationError as exc:
        from ltd.spec import _one_line

        raise ConfigError(_one_line(exc, f"sweep file {path}"))
    return sweep, path.resolve().parent


def _set(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
        if not isinstance(tree, dict):
            raise ConfigError(f"cannot set {dotted!r}: {p!r} is not a mapping")
    tree[leaf] = value


def trial_key(point: dict[str, Any], seed: int) -> str:
    parts = [f"{k.split('.', 1)[1]}={v}" for k, v in point.items()] + [f"seed={seed}"]
    return ",".join(parts).replace("/", "_").replace(" ", "")


def prepare_trial(sweep: SweepSpec, base: Path, point: dict[str, Any], seed: int, out: Path) -> Path:
    """Write the trial's spec and config into its folder; check both load. Returns the folder."""
    from ltd.spec import load_spec
    from ltd.train import load_config

    spec_path = (base / sweep.spec).resolve()
    spec_data = read_yaml(spec_path, "spec file", ConfigError, "fix `spec:` in the sweep file")
    config_data = {}
    if sweep.config:
        config_data = read_yaml((base / sweep.config).resolve(), "training config", ConfigError,
                                "fix `config:` in the sweep file") or {}
    for key, value in point.items():
        _set(spec_data if key.startswith("spec.") else config_data, key.split(".", 1)[1], value)
    config_data["seed"] = seed
    trial = out / trial_key(point, seed)
    trial.mkdir(parents=True, exist_ok=True)
    # paths in the spec stay relative to the original spec's folder
    if isinstance(spec_data.get("pair"), str) and spec_data["pair"].endswith((".yaml", ".yml")):
        spec_data["pair"] = str((spec_path.parent / spec_data["pair"]).resolve())
    prompts = spec_data.get("workload", {}).get("prompts")
    if isinstance(prompts, str) and prompts != "heldout":
        spec_data["workload"]["prompts"] = str((spec_path.parent / prompts).resolve())
    atomic_write_bytes(trial / "spec.yaml", yaml.safe_dump(spec_data, sort_keys=False).encode())
    atomic_write_bytes(trial / "config.yaml", yaml.safe_dump(config_data, sort_keys=False).encode())
    spec = load_spec(trial / "spec.yaml")
    load_config(trial / "config.yaml")
    shared = spec_path.with_suffix(".cost.json")  # one cost model for every trial: the same clock
    if shared.exists() and not spec.cost_model_path.exists():
        shutil.copy(shared, spec.cost_model_path)
    return trial


def run_trial(trial: Path, bench: BenchOptions) -> dict[str, float]:
    """Train (or resume), export and benchmark one trial; its figures."""
    from ltd.bench import run_workloads
    from ltd.env import spec_pair, workload_prompts
    from ltd.export import export_run, load_bundle
    from ltd.spec import load_spec
    from ltd.train import TrainingRun, load_config

    run_dir = trial / "run"
    if (run_dir / "state.json").exists():
        run = TrainingRun.resume(run_dir)
    else:
        run = TrainingRun.create(trial / "spec.yaml", load_config(trial / "config.yaml"), run_dir)
    if not run.state.get("finished"):
        run.run()
    summary_path = trial / "bench.json"
    if not summary_path.exists():
        bundle_dir = export_run(run_dir, trial / "policy")
        s = load_spec(trial / "spec.yaml")
        pair = spec_pair(s)
        bundle = load_bundle(bundle_dir, pair)
        prompts = workload_prompts(s, pair, "test")[: bench.prompts]
        summary = run_workloads(pair, {"test": (prompts, 0)}, ["ar", "partner", "ltd"],
                                max_new_tokens=bench.max_new_tokens, engine_options=bundle.engine_options(),
                                extra=bundle.bench_controllers())
        summary.pop("workloads", None)
        atomic_write_json(summary_path, summary)
    summary = json.loads(summary_path.read_text())
    m = summary["methods"]
    return {"ltd_vs_partner": m["ltd"]["vs_partner"]["ratio"], "ltd_speedup": m["ltd"]["speedup"],
            "partner_speedup": m["partner"]["speedup"], "ltd_tokens_per_s": m["ltd"]["tokens_per_s"],
            "ltd_mean_accepted": m["ltd"]["mean_accepted"],
            "validation_tokens_per_s": (run.state.get("best") or {}).get("tokens_per_s", float("nan"))}


def _trainable(config: dict) -> dict:
    import torch

    if config.get("threads"):
        torch.set_num_threads(config["threads"])
    return run_trial(Path(config["trial"]), BenchOptions(**config["bench"]))


def run_sweep(path: str | Path, out: str | Path | None = None, threads: int | None = None) -> dict:
    """Run (or finish) the sweep in ``path`` with Ray Tune; write and return its summary."""
    from ltd.env import prepare_clock
    from ltd.ray_env import import_ray, init_ray
    from ltd.spec import load_spec

    import_ray("`ltd sweep` runs on Ray Tune", "tune")
    from ray import tune

    sweep, base = load_sweep(path)
    out = Path(out) if out else Path("runs") / "sweeps" / sweep.name
    out = out.resolve()
    trials = [(point, seed, prepare_trial(sweep, base, point, seed, out)) for point in sweep.points()
              for seed in sweep.seeds]
    prepare_clock(load_spec(trials[0][2] / "spec.yaml"))  # fitted once, before the trials copy it
    param_space = {"trial": tune.grid_search([str(t) for *_, t in trials]), "bench": sweep.bench.model_dump(),
                   "threads": threads}
    ray = init_ray()
    cpus = max(1, int(ray.available_resources().get("CPU", 1)) // sweep.max_concurrent_trials)
    trainable = tune.with_resources(_trainable, {"cpu": cpus})
    storage = out / "tune"
    if tune.Tuner.can_restore(storage / sweep.name):
        tuner = tune.Tuner.restore(str(storage / sweep.name), trainable, resume_errored=True,
                                   param_space=param_space)
    else:
        tuner = tune.Tuner(trainable, param_space=param_space,
                           tune_config=tune.TuneConfig(max_concurrent_trials=sweep.max_concurrent_trials),
                           run_config=tune.RunConfig(name=sweep.name, storage_path=str(storage), verbose=1))
    results = tuner.fit()
    errors = [r.error for r in results if r.error]
    if errors:
        raise ConfigError(f"{len(errors)} trial(s) of sweep {sweep.name} failed ({errors[0]}); "
                          f"run the same command again to retry them")
    figures = {r.config["trial"]: {k: r.metrics.get(k) for k in METRICS} for r in results}
    rows = [{"point": point, "seed": seed, **figures[str(t)]} for point, seed, t in trials]
    summary = summarize_sweep(sweep, rows)
    write_summary(summary, out)
    return summary


def summarize_sweep(sweep: SweepSpec, rows: list[dict]) -> dict:
    points = []
    for point in sweep.points():
        mine = [r for r in rows if r["point"] == point]
        points.append({"point": point, **{m: mean_ci([r[m] for r in mine]) for m in METRICS}})
    return {"name": sweep.name, "grid": sweep.grid, "seeds": sweep.seeds, "bench": sweep.bench.model_dump(),
            "points": points, "trials": rows}


def _fmt(ci: dict, digits: int = 3) -> str:
    if ci["mean"] is None:
        return "n/a"
    if ci["lo"] is None:
        return f"{ci['mean']:.{digits}f}"
    return f"{ci['mean']:.{digits}f} [{ci['lo']:.{digits}f}, {ci['hi']:.{digits}f}]"


def markdown(summary: dict) -> str:
    head = ["point", "ltd / partner", "ltd / ar", "partner / ar", "ltd tokens/s", "validation tokens/s (clock)"]
    lines = [f"# Sweep {summary['name']}", "",
             f"Mean and 95 % CI over seeds {summary['seeds']}; test prompts: {summary['bench']['prompts']}, "
             f"{summary['bench']['max_new_tokens']} new tokens, greedy, wall clock, one run per trial.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in summary["points"]:
        name = ", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in p["point"].items()) or "(base)"
        lines.append(f"| {name} | {_fmt(p['ltd_vs_partner'])} | {_fmt(p['ltd_speedup'])} | "
                     f"{_fmt(p['partner_speedup'])} | {_fmt(p['ltd_tokens_per_s'], 1)} | "
                     f"{_fmt(p['validation_tokens_per_s'], 1)} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    from ltd.plotting import pyplot

    plt = pyplot()

    labels = [", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in p["point"].items()) or "base"
              for p in summary["points"]]
    fig, ax = plt.subplots(figsize=(1.5 + 1.3 * len(labels), 3.6))
    for j, (metric, name) in enumerate((("ltd_vs_partner", "ltd / partner"), ("ltd_speedup", "ltd / ar"))):
        means = [p[metric]["mean"] or 0.0 for p in summary["points"]]
        err = [[m - (p[metric]["lo"] if p[metric]["lo"] is not None else m) for m, p in zip(means, summary["points"])],
               [(p[metric]["hi"] if p[metric]["hi"] is not None else m) - m for m, p in zip(means, summary["points"])]]
        xs = [i + 0.38 * j for i in range(len(labels))]
        ax.bar(xs, means, 0.36, yerr=err, capsize=3, label=name)
    for i, p in enumerate(summary["points"]):  # the seeds themselves
        ys = [r["ltd_vs_partner"] for r in summary["trials"] if r["point"] == p["point"]]
        ax.scatter([i] * len(ys), ys, s=8, color="black", zorder=3)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks([i + 0.19 for i in range(len(labels))], labels, rotation=15, fontsize=8)
    ax.set_ylabel("tokens/s ratio")
    ax.set_title(f"sweep {summary['name']}: mean, 95% CI over {len(summary['seeds'])} seeds (dots: ltd/partner)",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_summary(summary: dict, out: Path) -> None:
    atomic_write_json(out / "summary.json", summary)
    atomic_write_bytes(out / "summary.md", markdown(summary).encode())
    plot(summary, out / "summary.png")
