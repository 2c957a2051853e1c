"""Policy bundles: what a trained run becomes for deployment. Data only, never code.

A bundle is a folder with exactly three files:

* ``manifest.json``: format version, feature names and their definition version, action grids,
  engine limits, the pair's fingerprint, clock and hardware, training config, validation figures,
  and the SHA-256 of the weights file;
* ``weights.safetensors``: the depth and the width policy networks (``depth.<i>.weight`` ...);
* ``README.md``: a short model card.

Loading checks the format version and the weights' hash, refuses a bundle made for another pair
unless forced, refuses any other file in the folder, and reads tensors with safetensors only: it
never unpickles or executes anything. The runtime imports no stable-baselines3.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ltd.errors import ConfigError, LtdError
from ltd.features import FEATURE_NAMES, FEATURES_VERSION, FeatureView
from ltd.paths import atomic_write_bytes, atomic_write_json, sha256_file
from ltd.policy import MLPPolicy, PolicyController

FORMAT_VERSION = 1
BUNDLE_FILES = ("manifest.json", "weights.safetensors", "README.md")
VIEWS = ("depth", "width")


class BundleError(LtdError):
    """A policy bundle cannot be used."""


@dataclass
class Bundle:
    path: Path
    manifest: dict
    policies: dict[str, MLPPolicy]

    def controller(self) -> PolicyController:
        m = self.manifest
        from ltd.controllers import StaticController

        static = StaticController(**m["partner"])
        return PolicyController(FeatureView(tuple(m["features"]["names"])), m["actions"]["widths"],
                                m["engine"]["top_k"], self.policies["depth"], self.policies["width"], static)

    def engine_options(self) -> dict:
        e = self.manifest["engine"]
        return {"max_depth": e["max_depth"], "draft_vocab": e.get("draft_vocab")}


def export_run(run_dir: str | Path, out: str | Path, name: str | None = None) -> Path:
    """Write the best policies of a training run as a bundle at ``out`` (atomically: a folder swap)."""
    from safetensors.torch import save_file

    from ltd.env import _cached_pair
    from ltd.paths import hardware
    from ltd.train import TrainingRun, load_policy

    run = TrainingRun.resume(run_dir)
    s = run.spec
    best = {v: run.dir / f"best-{v}.safetensors" for v in VIEWS}
    if not all(p.exists() for p in best.values()):
        raise ConfigError(f"run {run_dir} has no validated policies yet: let `ltd train` finish a round first")
    policies = {v: load_policy(p) for v, p in best.items()}
    pair = _cached_pair(s.pair_spec, s.device)
    from ltd.engine import SpecEngine

    draft_vocab = SpecEngine(pair, draft_vocab=s.drafting.draft_vocab, backend="hf").draft_vocab_size
    out = Path(out)
    staging = out.with_name(out.name + ".staging")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    tensors = {}
    for v, pol in policies.items():
        tensors.update(pol.tensors(v))
    save_file(tensors, str(staging / "weights.safetensors"))
    features = FeatureView(tuple(_feature_names(s.features)))
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": name or out.name,
        "features": {"names": list(features.names), "definition_version": FEATURES_VERSION,
                     "normalisation": "fixed transforms of ltd.features (documented there), clipped to [0, 1]"},
        "actions": {"depth": ["stop", "continue"], "widths": list(s.drafting.widths)},
        "policies": {v: {"activation": p.activation, "layers": [[lay.in_features, lay.out_features] for lay in p.layers]}
                     for v, p in policies.items()},
        "engine": {"top_k": s.drafting.top_k, "max_depth": s.drafting.max_depth, "draft_vocab": draft_vocab,
                   "temperature": s.temperature},
        "partner": {"depth": s.partner.depth, "top_k": s.drafting.top_k, "width": s.partner.width},
        "pair": {"name": pair.name, "fingerprint": pair.fingerprint()},
        "clock": s.clock,
        "hardware": hardware(),
        "training": {"spec": s.model_dump(mode="json"), "config": run.config.model_dump(mode="json")},
        "validation": run.state.get("best"),
        "weights_sha256": sha256_file(staging / "weights.safetensors"),
    }
    atomic_write_json(staging / "manifest.json", manifest)
    atomic_write_bytes(staging / "README.md", model_card(manifest).encode())
    if out.exists():
        old = out.with_name(out.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        out.replace(old)
        staging.replace(out)
        shutil.rmtree(old)
    else:
        staging.replace(out)
    return out


def _feature_names(features) -> tuple[str, ...]:
    from ltd.features import resolve_feature_set

    return resolve_feature_set(features)


def model_card(m: dict) -> str:
    v = m.get("validation") or {}
    return f"""# {m['name']}: LTD drafting policies

Depth policy (stop / draft deeper after each expansion) and width policy (how many tree nodes the
target verifies, from {m['actions']['widths']}), trained with co-adaptive PPO.

- Pair: `{m['pair']['name']}` (fingerprint `{m['pair']['fingerprint']}`); the runtime refuses another pair
  unless forced.
- Engine: top_k {m['engine']['top_k']}, max depth {m['engine']['max_depth']}, draft vocabulary
  {m['engine'].get('draft_vocab') or 'full'}, temperature {m['engine']['temperature']}.
- Features ({len(m['features']['names'])}, definition v{m['features']['definition_version']}):
  {', '.join(m['features']['names'])}.
- Trained with the `{m['clock']}` clock on {m['hardware'].get('processor')} ({m['hardware'].get('torch_threads')} threads,
  torch {m['hardware'].get('torch')}). Policies do not transfer between machines: retrain or re-check on yours.
- Validation (held-out prompts, {v.get('clock')} clock): {v.get('tokens_per_s')} tokens/s,
  {v.get('mean_accepted')} tokens per cycle, mean depth {v.get('mean_depth')}, mean width {v.get('mean_width')}.

Use: `ltd generate --pair {m['pair']['name']} --policy PATH_TO_THIS_FOLDER --prompt "..."`.
The text is the target's own; the policies change only the speed.
"""


def load_bundle(path: str | Path, pair=None, force: bool = False) -> Bundle:
    """Read and check a bundle; with ``pair``, refuse one made for another pair unless ``force``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"policy bundle {path} does not exist: give a folder made by `ltd export`")
    extra = sorted(p.name for p in path.iterdir() if p.name not in BUNDLE_FILES)
    if extra:
        raise BundleError(f"policy bundle {path} holds an unexpected file {extra[0]!r}: bundles hold data only "
                          f"({', '.join(BUNDLE_FILES)}); re-export it")
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except FileNotFoundError:
        raise BundleError(f"policy bundle {path} has no manifest.json: re-export it with `ltd export`")
    except (ValueError, UnicodeDecodeError):
        raise BundleError(f"{path / 'manifest.json'} is not valid JSON: the bundle is corrupt, re-export it")
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        got = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise BundleError(f"policy bundle {path} has format version {got!r}, this LTD reads {FORMAT_VERSION}: "
                          "re-export it with this version")
    weights = path / "weights.safetensors"
    if not weights.exists():
        raise BundleError(f"policy bundle {path} has no weights.safetensors: re-export it")
    if sha256_file(weights) != manifest.get("weights_sha256"):
        raise BundleError(f"{weights} does not match the hash in its manifest: the bundle was modified or is "
                          "corrupt, re-export it")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{weights} is not a safetensors file ({exc}): bundles never hold pickles; re-export it")
    try:
        names = manifest["features"]["names"]
        unknown = [n for n in names if n not in FEATURE_NAMES]
        if unknown or manifest["features"]["definition_version"] != FEATURES_VERSION:
            raise BundleError(f"policy bundle {path} uses features this LTD does not define "
                              f"({unknown[:1] or 'definition v' + str(manifest['features']['definition_version'])})")
        policies = {}
        for view in VIEWS:
            n = len(manifest["policies"][view]["layers"])
            policies[view] = MLPPolicy([tensors[f"{view}.{i}.weight"] for i in range(n)],
                                       [tensors[f"{view}.{i}.bias"] for i in range(n)],
                                       manifest["policies"][view]["activation"])
        widths = manifest["actions"]["widths"]
        if policies["width"].n_actions != len(widths) or policies["depth"].n_actions != 2:
            raise BundleError(f"policy bundle {path}: the networks' outputs do not match its action grids")
        if any(p.obs_size != len(names) for p in policies.values()):
            raise BundleError(f"policy bundle {path}: the networks' inputs do not match its feature list")
        manifest["engine"]["top_k"], manifest["engine"]["max_depth"]  # noqa: B018 - required keys
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"policy bundle {path} has a malformed manifest or weights ({exc.__class__.__name__}: "
                          f"{exc}): re-export it")
    if pair is not None and not force:
        want = manifest.get("pair", {}).get("fingerprint")
        if want != pair.fingerprint():
            raise BundleError(f"policy bundle {path} was trained for pair {manifest.get('pair', {}).get('name')!r} "
                              f"({want}), not this one ({pair.fingerprint()}): use its pair, or --force")
    return Bundle(path, manifest, policies)
