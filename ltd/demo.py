"""The main job in one command (``ltd demo``): what a new user runs first.

1. install the default pair (the shipped ``tiny`` weights) if it is missing;
2. fit the cost-model clock of the spec on this machine if it has none;
3. train the depth and width policies co-adaptively (PPO);
4. export the best policies as a bundle;
5. benchmark plain decoding, the default static tree, the best static tree on a grid, the static
   partner training started from, and the learned policies, in one run on held-out prompts:
   a markdown table, a JSON summary and a PNG plot.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import click

from ltd.paths import PACKAGE_DIR

PROJECT = PACKAGE_DIR.parent


def run_demo(out: Path, quick: bool = False, spec: str | None = None) -> Path:
    from ltd.bench import format_summary, run_workloads
    from ltd.env import spec_pair, workload_prompts
    from ltd.export import export_run, load_bundle
    from ltd.spec import load_spec
    from ltd.train import TrainingRun, load_config

    t0 = time.perf_counter()
    spec_path = Path(spec) if spec else PROJECT / "envs" / "tiny-code.yaml"
    config_path = PROJECT / "experiments" / ("ppo-quick.yaml" if quick else "ppo.yaml")
    s = load_spec(spec_path)
    click.echo(f"[1/4] pair {s.pair}", err=True)
    pair = spec_pair(s)
    click.echo("[2/4] co-adaptive training", err=True)
    run_dir = out / "run"
    if (run_dir / "state.json").exists():
        run = TrainingRun.resume(run_dir)
        if run.state.get("finished"):
            click.echo(f"      {run_dir} already trained: reusing it (delete it to retrain)", err=True)
    else:
        run = TrainingRun.create(spec_path, load_config(config_path), run_dir)
    if not run.state.get("finished"):
        run.run()
    click.echo("[3/4] export", err=True)
    bundle_dir = export_run(run_dir, out / "policy")
    bundle = load_bundle(bundle_dir, pair)
    click.echo("[4/4] benchmark", err=True)
    test = workload_prompts(s, pair, "test")[: 12 if quick else 40]
    validation = workload_prompts(s, pair, "validation")[: 4 if quick else 8]

    summary = run_workloads(pair, {"held-out code": (validation + test, len(validation))},
                            ["ar", "static", "grid", "partner", "ltd"], json_out=out / "bench.json",
                            max_new_tokens=s.workload.max_new_tokens, engine_options=bundle.engine_options(),
                            extra=bundle.bench_controllers())
    click.echo(format_summary(summary))
    click.echo(f"total {time.perf_counter() - t0:.0f} s", err=True)
    shutil.copy(run_dir / "state.json", out / "training_state.json")
    return out / "bench.json"
