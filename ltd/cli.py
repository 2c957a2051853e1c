"""The ``ltd`` command.

Every user error ends as one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import json
import logging
import sys

import click

from ltd.errors import LtdError


def _setup(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


class LtdGroup(click.Group):
    """Turns the project's own errors into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LtdError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
        except click.UsageError as exc:  # a bad option or command, said in one line like the rest
            where = exc.ctx.command_path if exc.ctx is not None else "ltd"
            click.echo(f"error: {exc.format_message()} (see `{where} --help`)", err=True)
            ctx.exit(2)


@click.group(cls=LtdGroup)
@click.option("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
def cli(threads: int | None) -> None:
    """LTD: learned adaptive drafting for speculative decoding."""
    _setup(threads)


# ----------------------------------------------------------------------------- pair


@cli.group()
def pair() -> None:
    """Build, locate and inspect draft/target pairs."""


@pair.command("build")
@click.option("--preset", default=None, help="micro (seconds, for tests), tiny (the default pair) or small (for a GPU).")
@click.option("--rebuild", is_flag=True, help="Train from the recipe instead of installing shipped weights (resumes).")
@click.option("--recipe", "recipe_file", default=None,
              help="Train from a recipe JSON file instead (e.g. a build's recipe.json); resumes its build.")
@click.option("--device", default="cpu", show_default=True, help="Where to train (cuda: seconds for a small pair).")
def pair_build(preset: str | None, rebuild: bool, recipe_file: str | None, device: str) -> None:
    """Make a built-in pair available under $LTD_HOME/pairs/NAME."""
    from ltd.zoo import Recipe, build_pair, train_pair

    if (preset is None) == (recipe_file is None):
        raise LtdError("give --preset NAME or --recipe FILE.json")
    if recipe_file:
        from ltd.paths import read_json

        data = read_json(recipe_file, "recipe", LtdError, "give the JSON of a build's recipe.json")
        if not isinstance(data, dict):
            raise LtdError(f"recipe {recipe_file} must be a JSON object (see a build's recipe.json)")
        recipe = Recipe.from_dict(data)
        out = train_pair(recipe, device=device)
        preset = recipe.name
    else:
        out = build_pair(preset, rebuild=rebuild, device=device)
    meta = json.loads((out / "pair.json").read_text())
    q = meta.get("quality", {})
    click.echo(f"{preset}: {out}")
    click.echo("  " + ", ".join(f"{k}={v}" for k, v in q.items() if k != "samples"))


@pair.command("path")
@click.argument("preset")
def pair_path(preset: str) -> None:
    """Print where PRESET is (or will be) installed."""
    from ltd.zoo import pair_dir, recipe_for

    recipe_for(preset)
    click.echo(str(pair_dir(preset)))


@pair.command("info")
@click.argument("spec")
def pair_info(spec: str) -> None:
    """Print a pair's recipe and quality figures (pair.json)."""
    from ltd.block_drafter import FOLDER
    from ltd.pair import resolve_pair_paths

    _, target, draft, meta = resolve_pair_paths(spec, build=False)
    info = dict(meta or {"target": str(target), "draft": str(draft)})
    record = target.parent / FOLDER / "recipe.json"
    if record.exists():  # the pair's block drafter (ltd drafter train): how it was trained, its figures
        from ltd.paths import read_json

        info["block_drafter"] = read_json(record, "block drafter record", LtdError, "retrain it")
    click.echo(json.dumps(info, indent=2))


@pair.command("ship")
@click.argument("preset")
def pair_ship(preset: str) -> None:
    """(Maintainers) copy a built pair into the package as fp16 weights."""
    from ltd.zoo import ship_pair

    click.echo(str(ship_pair(preset)))


# ----------------------------------------------------------------------------- generate


def _static_options(f):
    f = click.option("--width", type=int, default=8, show_default=True, help="Tree nodes the target verifies.")(f)
    f = click.option("--top-k", type=int, default=4, show_default=True, help="Nodes kept per expansion.")(f)
    f = click.option("--depth", type=int, default=3, show_default=True, help="Draft expansions per cycle (0: plain).")(f)
    return f


@cli.command()
@click.option("--pair", "pair_spec", default="tiny", show_default=True, help="Preset or target=PATH,draft=PATH.")
@click.option("--prompt", default=None, help="One prompt.")
@click.option("--prompts", "prompts_file", default=None, help="JSON-lines file of {\"prompt\": ...}.")
@_static_options
@click.option("--max-new-tokens", type=int, default=128, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0: greedy.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--draft-vocab", type=int, default=None, help="Draft proposes only the N most frequent tokens (0: all; default: the pair's setting).")
@click.option("--backend", type=click.Choice(["auto", "fast", "hf"]), default="auto", show_default=True,
              help="Forward path: plain-torch fast path, transformers, or fast where it checks out.")
@click.option("--drafter", type=click.Choice(["ar", "block"]), default=None,
              help="The pair's draft model (ar) or its block drafter (default: the bundle's, else ar).")
@click.option("--policy", "policy_dir", default=None, help="A policy bundle (ltd export): learned depth and width.")
@click.option("--force-policy", is_flag=True, help="Use a bundle made for another pair or drafter.")
@click.option("--json", "as_json", is_flag=True, help="One JSON line per prompt.")
def generate(pair_spec, prompt, prompts_file, depth, top_k, width, max_new_tokens, temperature, seed, device,
             draft_vocab, backend, drafter, policy_dir, force_policy, as_json):
    """Generate with speculative decoding (the text is the target's own)."""
    from ltd.controllers import StaticController
    from ltd.engine import SpecEngine
    from ltd.pair import load_pair
    from ltd.runtime import generate_ids, read_prompts

    if (prompt is None) == (prompts_file is None):
        raise LtdError("give exactly one of --prompt TEXT or --prompts FILE.jsonl")
    if prompt is not None and not prompt:
        raise LtdError("empty --prompt: give some text to continue")
    prompts = [prompt] if prompt is not None else read_prompts(prompts_file)
    p = load_pair(pair_spec, device=device)
    options = {"draft_vocab": draft_vocab, "drafter": drafter}
    if policy_dir:
        from ltd.export import load_bundle

        bundle = load_bundle(policy_dir, p, force=force_policy)
        controller = bundle.controller()
        trained_on = bundle.engine_options()["drafter"]
        if drafter is not None and drafter != trained_on and not force_policy:
            raise LtdError(f"policy bundle {policy_dir} was trained on the {trained_on} drafter, not {drafter}: "
                           f"leave out --drafter, or --force-policy")
        options = {k: v if options.get(k) is None else options[k] for k, v in bundle.engine_options().items()}
    else:
        controller = StaticController(depth=depth, top_k=top_k, width=width)
    options = {k: v for k, v in options.items() if v is not None}
    engine = SpecEngine(p, temperature=temperature, seed=seed, backend=backend, **options)
    for text in prompts:
        g = generate_ids(engine, p.encode(text), controller, max_new_tokens=max_new_tokens)
        if as_json:
            click.echo(json.dumps({"prompt": text, "prompt_ids": g.prompt_ids, "output_ids": g.output_ids,
                                   "text": g.text, "tokens_per_s": round(g.tokens_per_s, 3),
                                   "mean_accepted": round(g.mean_accepted, 4), "cycles": g.cycles}))
        else:
            click.echo(text + g.text)
            click.echo(f"-- {len(g.output_ids)} tokens, {g.tokens_per_s:.1f} tokens/s, "
                       f"{g.mean_accepted:.2f} tokens/cycle", err=True)


# ----------------------------------------------------------------------------- bench


@cli.command()
@click.option("--pair", "pair_spec", default="tiny", show_default=True)
@click.option("--methods", default="ar,static,grid", show_default=True)
@click.option("--prompts", "prompts_files", multiple=True,
              help="A workload: JSON-lines prompts, `specbench`, `specbench:CATEGORY` or `heldout` (the pair's "
                   "held-out code, the default); repeat for several.")
@click.option("--limit", type=int, default=30, show_default=True, help="Test prompts.")
@click.option("--validation", type=int, default=6, show_default=True, help="Prompts that choose the grid config.")
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option("--max-prompt-tokens", type=int, default=128, show_default=True, help="Prompts are cut to this.")
@click.option("--static", "static_cfg", default=None, help="Static tree as DEPTH,TOP_K,WIDTH.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16", "fp32", "bf16", "fp16"]), default="float32",
              show_default=True)
@click.option("--draft-vocab", type=int, default=None, help="Draft proposes only the N most frequent tokens (0: all; default: the pair's setting).")
@click.option("--backend", type=click.Choice(["auto", "fast", "hf"]), default="auto", show_default=True)
@click.option("--run", "run_dir", default=None, help="Training run whose policies are `ltd` (and spec `partner`).")
@click.option("--policy", "policy_dir", default=None, help="Policy bundle that is `ltd` (its static partner: `partner`).")
@click.option("--block-policy", "block_policy_dir", default=None,
              help="Policy bundle trained on the block drafter: the method `ltd_block`.")
@click.option("--json", "json_out", default=None, help="Write the summary here (and .md, .png beside it).")
def bench(pair_spec, methods, prompts_files, limit, validation, max_new_tokens, max_prompt_tokens, static_cfg, device,
          dtype, draft_vocab, backend, run_dir, policy_dir, block_policy_dir, json_out):
    """Tokens/s of each method in one run, on held-out prompts, greedy."""
    from ltd.bench import DEFAULT_STATIC, format_summary, load_workload, run_workloads
    from ltd.controllers import StaticController
    from ltd.pair import load_pair

    static = DEFAULT_STATIC
    if static_cfg:
        try:
            d, k, w = (int(x) for x in static_cfg.split(","))
        except ValueError:
            raise LtdError(f"bad --static {static_cfg!r}: write DEPTH,TOP_K,WIDTH, e.g. 4,4,12")
        static = StaticController(d, k, w)
    extra, engine_options = {}, {"draft_vocab": draft_vocab, "backend": backend}
    p = load_pair(pair_spec, device=device, dtype=dtype)
    implied: dict = {}
    if run_dir:
        from ltd.bench import run_controllers

        extra, implied = run_controllers(run_dir)
    elif policy_dir:
        from ltd.export import load_bundle

        bundle = load_bundle(policy_dir, p)
        extra = bundle.bench_controllers()
        implied = bundle.engine_options()
    engine_options.update({k: v for k, v in implied.items() if engine_options.get(k) is None})
    block_options: dict = {}
    if block_policy_dir:
        from ltd.export import load_bundle

        block_bundle = load_bundle(block_policy_dir, p)
        block_options = block_bundle.engine_options()
        if block_options.pop("drafter") != "block":
            raise LtdError(f"--block-policy {block_policy_dir} was trained on the draft model, not the block "
                           f"drafter: pass it as --policy")
        extra["ltd_block"] = block_bundle.controller()
    method_list = [m.strip() for m in methods.split(",") if m.strip()]
    from ltd.bench import bench_split

    workloads = {}
    max_prompt_tokens = min(max_prompt_tokens, p.max_context // 2)  # room to generate, even on tiny test models
    for prompts_file in prompts_files or [None]:
        texts, name = load_workload(p, prompts_file)
        val_texts, test_texts = bench_split(texts, validation if "grid" in method_list else 0, limit)
        workloads[name] = ([p.encode(t)[:max_prompt_tokens] for t in val_texts + test_texts], len(val_texts))
    summary = run_workloads(p, workloads, method_list, json_out=json_out, max_new_tokens=max_new_tokens,
                            static=static, engine_options=engine_options, extra=extra, block_options=block_options)
    click.echo(format_summary(summary))


@cli.command()
@click.option("--quick", is_flag=True, help="The 5-minute variant: fewer training steps and test prompts.")
@click.option("--spec", default=None, help="Environment spec (default: envs/tiny-code.yaml).")
@click.option("--out", default="runs/demo", show_default=True, help="Folder for the run, the bundle and the report.")
def demo(quick, spec, out):
    """The main job: pair, co-adaptive training, export, and a benchmark against plain and static trees."""
    from pathlib import Path

    from ltd.demo import run_demo

    summary_path = run_demo(Path(out), quick=quick, spec=spec)
    click.echo(f"report: {summary_path.with_suffix('.md')}, plot: {summary_path.with_suffix('.png')}")


@cli.command("env-overhead")
@click.argument("spec")
@click.option("--cycles", type=int, default=300, show_default=True)
def env_overhead_cmd(spec, cycles):
    """Wall time per cycle of the width environment against the bare runtime loop (goal: <= 5 %)."""
    from ltd.bench import env_overhead

    click.echo(json.dumps(env_overhead(spec, cycles)))


@cli.command()
@click.option("--pair", "pair_spec", default="tiny", show_default=True)
@click.option("--tokens", type=int, default=20_000, show_default=True, help="Tokens to generate in all.")
@click.option("--max-new-tokens", type=int, default=128, show_default=True, help="Per prompt.")
@click.option("--prompts", "prompts_files", multiple=True,
              help="A workload: JSON-lines prompts, `specbench` or `specbench:CATEGORY`; repeat for several "
                   "(default: the pair's held-out code).")
@click.option("--policy", "policy_dir", default=None, help="A policy bundle (default: a static tree).")
@_static_options
@click.option("--json", "json_out", default=None, help="Write the figures here (and a .png plot beside it).")
def soak(pair_spec, tokens, max_new_tokens, prompts_file, policy_dir, depth, top_k, width, json_out):
    """Generate many tokens and report resident memory against its level after the first prompt."""
    from pathlib import Path

    from ltd.bench import load_workload
    from ltd.controllers import StaticController
    from ltd.engine import SpecEngine
    from ltd.pair import load_pair
    from ltd.paths import atomic_write_json
    from ltd.soak import plot
    from ltd.soak import soak as run_soak

    p = load_pair(pair_spec)
    texts, _ = load_workload(p, prompts_file)
    options: dict = {}
    controller = StaticController(depth=depth, top_k=top_k, width=width)
    if policy_dir:
        from ltd.export import load_bundle

        bundle = load_bundle(policy_dir, p)
        controller, options = bundle.controller(), bundle.engine_options()
    engine = SpecEngine(p, **options)
    report = run_soak(engine, [p.encode(t) for t in texts], controller, tokens, max_new_tokens)
    figures = report.to_json()
    click.echo(f"{figures['tokens']} tokens over {figures['prompts']} prompts: resident memory "
               f"{figures['rss_after_first_mb']} MiB after the first prompt, {figures['rss_final_mb']} MiB at the end "
               f"({100 * figures['growth']:+.1f} %), peak {figures['rss_peak_mb']} MiB ({100 * figures['peak_growth']:+.1f} %)")
    if json_out:
        atomic_write_json(Path(json_out), {"pair": p.name, "controller": getattr(controller, "label", ""), **figures})
        plot(report, Path(json_out).with_suffix(".png"))


# ----------------------------------------------------------------------------- RL


@cli.command()
@click.argument("spec")
@click.option("--out", default=None, help="Where to write the cost model (default: beside the spec).")
def profile(spec, out):
    """Fit the cost-model clock of SPEC's pair on this machine."""
    from pathlib import Path

    from ltd.clock import profile_pair
    from ltd.pair import load_pair
    from ltd.spec import load_spec

    s = load_spec(spec)
    model = profile_pair(load_pair(s.pair_spec, device=s.torch_device, dtype=s.dtype), top_k=s.drafting.top_k,
                         draft_vocab=s.drafting.draft_vocab, drafter=s.drafting.drafter)
    path = Path(out) if out else s.cost_model_path
    model.save(path)
    ms = [round(1e3 * v, 4) for v in (*model.verify, model.tree, *model.draft, model.cold)]
    click.echo(f"{path}: target pass {ms[0]} ms + {ms[1]} ms per token + {ms[2]} ms per context token; drafted "
               f"cycle + {ms[3]} ms; expansion {ms[4]} ms + {ms[5]} ms per draft input token; plain step after a "
               f"drafted cycle + {ms[6]} ms; fit {model.fit_error}")


@cli.command()
@click.argument("spec", required=False)
@click.option("--config", "config_path", default="experiments/ppo.yaml", show_default=True)
@click.option("--run-dir", default=None, help="Run folder (default: runs/<spec>-<time>).")
@click.option("--resume", "resume_dir", default=None, help="Continue the run in this folder (made by you).")
@click.option("--timesteps", default=None, help="Override steps per phase, e.g. depth=2048,width=1024.")
@click.option("--rounds", type=int, default=None, help="Override the number of co-adaptive rounds.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Roll out on this many Ray actors (pip install 'ltd[ray]'); 0: the local vector env.")
@click.option("--envs-per-worker", type=click.IntRange(min=1), default=None,
              help="Environments in each Ray actor, stepped by one remote call (default 1).")
@click.option("--ray-address", default=None, help="A running Ray cluster (default: start a local Ray).")
def train(spec, config_path, run_dir, resume_dir, timesteps, rounds, workers, envs_per_worker, ray_address):
    """Co-adaptive PPO training of the depth and width policies on SPEC."""
    from pathlib import Path

    from ltd.train import TrainingRun, load_config

    if resume_dir:
        run = TrainingRun.resume(resume_dir)
        run.scale(workers, ray_address, envs_per_worker)
        click.echo(f"resuming {resume_dir}: its stable-baselines3 checkpoints are loaded (only resume runs you made)",
                   err=True)
    else:
        if not spec:
            raise LtdError("give a spec file (e.g. envs/tiny-code.yaml) or --resume RUN")
        overrides: dict = {}
        if timesteps:
            try:
                overrides["timesteps"] = {k: int(v) for k, v in (x.split("=") for x in timesteps.split(","))}
            except ValueError:
                raise LtdError(f"bad --timesteps {timesteps!r}: write depth=N,width=M")
        if rounds is not None:
            overrides["rounds"] = rounds
        if workers is not None:
            overrides["workers"] = workers
        if ray_address is not None:
            overrides["ray_address"] = ray_address
        if envs_per_worker is not None:
            overrides["envs_per_worker"] = envs_per_worker
        config = load_config(config_path if Path(config_path).exists() or config_path != "experiments/ppo.yaml"
                             else None, overrides)
        run = TrainingRun.create(spec, config, run_dir)
    state = run.run()
    best = state["best"] or {}
    click.echo(f"{run.dir}: best validation {best.get('tokens_per_s')} tokens/s ({best.get('clock')} clock) "
               f"after phase {best.get('phase')} ({best.get('view')}, round {best.get('round')})")


@cli.command()
@click.argument("spec")
@click.option("--view", type=click.Choice(["width", "depth"]), default="width", show_default=True)
@click.option("--workers", "workers", default="0,1,2", show_default=True,
              help="Worker counts to compare; 0 is one env in this process.")
@click.option("--steps", type=click.IntRange(min=1), default=200, show_default=True, help="Vector steps per block.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--envs-per-worker", type=click.IntRange(min=1), default=1, show_default=True,
              help="Environments per Ray actor; the local vector env then holds as many.")
@click.option("--ray-address", default=None, help="A running Ray cluster (default: start a local Ray).")
@click.option("--json", "json_out", default=None, help="Also write the rows as JSON here.")
def rollouts(spec, view, workers, steps, repeats, envs_per_worker, ray_address, json_out):
    """Rollout throughput (env steps/s): the local vector env against Ray actors."""
    from ltd.paths import atomic_write_json, hardware
    from ltd.rollout_bench import markdown, rollout_throughput
    from ltd.spec import load_spec

    try:
        counts = [int(x) for x in workers.split(",")]
    except ValueError:
        raise LtdError(f"bad --workers {workers!r}: write counts like 0,1,2")
    if not counts or min(counts) < 0:
        raise LtdError(f"bad --workers {workers!r}: counts are 0 (local) or more")
    s = load_spec(spec)
    rows = rollout_throughput(s, view, counts, steps, repeats, address=ray_address, envs_per_worker=envs_per_worker)
    if json_out:
        atomic_write_json(json_out, {"spec": s.name, "view": view, "steps": steps, "repeats": repeats,
                                     "envs_per_worker": envs_per_worker,
                                     "hardware": hardware(), "rows": rows})
    click.echo(markdown(rows, s, view, steps))


@cli.group()
def drafter() -> None:
    """Block drafters: one forward drafts a whole block (DFlash/DFlare style)."""


@drafter.command("train")
@click.option("--pair", "pair_spec", default="tiny", show_default=True, help="A built-in pair (built by ltd pair build).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Training steps (default: the recipe's).")
@click.option("--block", type=click.IntRange(min=2, max=64), default=None, help="Positions per forward.")
@click.option("--device", default="cpu", show_default=True)
def drafter_train(pair_spec, steps, block, device):
    """Distil a block drafter from PAIR's target; saved beside the pair (resumes)."""
    from ltd.drafter_train import DrafterRecipe, train_block_drafter
    from ltd.pair import load_pair

    recipe = DrafterRecipe()
    if steps:
        recipe.steps = steps
    if block:
        recipe.block = block
    p = load_pair(pair_spec)
    figures = train_block_drafter(p, recipe, device=device)
    click.echo(f"{p.name}: block drafter saved; " + ", ".join(f"{k}={v}" for k, v in figures.items()))


@cli.command()
@click.argument("sweep_file")
@click.option("--out", default=None, help="Folder of the trials and the summary (default: runs/sweeps/<name>).")
def sweep(sweep_file, out):
    """Train, export and benchmark every point of a sweep file x seeds (Ray Tune); resumable."""
    from ltd.sweep import markdown, run_sweep

    summary = run_sweep(sweep_file, out)
    click.echo(markdown(summary))


@cli.command("export")
@click.argument("run_dir")
@click.option("-o", "--out", required=True, help="Bundle folder, e.g. policies/tiny-code.")
def export_cmd(run_dir, out):
    """Export a training run's best policies as a bundle (safetensors + JSON) for the runtime."""
    from ltd.export import export_run

    path = export_run(run_dir, out)
    click.echo(f"{path}: manifest.json, weights.safetensors, README.md")


def main() -> None:
    try:
        cli.main(prog_name="ltd")
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
