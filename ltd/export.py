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

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ltd.errors import ConfigError, LtdError
from ltd.features import FEATURE_NAMES, FEATURES_VERSION, FeatureView
from ltd.paths import atomic_write_bytes, atomic_write_json, read_json, replace_dir, settled_dir, sha256_file
from ltd.policy import MLPPolicy, PolicyController

FORMAT_VERSION = 1
BUNDLE_FILES = ("manifest.json", "weights.safetensors", "README.md")
VIEWS = ("depth", "width")


class BundleError(LtdError):
    """A policy bundle cannot be used."""


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Features(_Part):
    names: list[str]
    definition_version: int
    normalisation: str = ""


class _Actions(_Part):
    depth: list[str]
    widths: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)


class _Network(_Part):
    activation: Literal["tanh", "relu"]
    layers: list[list[Annotated[int, Field(ge=1)]]] = Field(min_length=1)


class _Policies(_Part):
    depth: _Network
    width: _Network


class _Engine(_Part):
    top_k: int = Field(ge=1)
    max_depth: int = Field(ge=1)
    draft_vocab: int | None = Field(None, ge=0)
    drafter: Literal["ar", "block"] = "ar"  # bundles before the block drafter name none: the draft model
    drafter_fingerprint: str | None = None  # the block drafter's weights the policies were trained with
    temperature: float = Field(0.0, ge=0)


class _Partner(_Part):
    depth: int = Field(ge=0)
    top_k: int = Field(ge=1)
    width: int = Field(ge=0)


class _PairRef(_Part):
    name: str
    fingerprint: str


class Manifest(BaseModel):
    """What ``manifest.json`` must hold for the runtime to use a bundle (other keys are records)."""

    format_version: int
    features: _Features
    actions: _Actions
    policies: _Policies
    engine: _Engine
    partner: _Partner
    pair: _PairRef
    clock: str
    hardware: dict
    validation: dict | None = None
    training: dict = Field(default_factory=dict)
    weights_sha256: str


@dataclass
class Bundle:
    path: Path
    manifest: dict
    policies: dict[str, MLPPolicy]

    def partner(self):
        """The static tree the policies were trained against (their baseline)."""
        from ltd.controllers import StaticController

        return StaticController(**self.manifest["partner"])

    def controller(self) -> PolicyController:
        m = self.manifest
        return PolicyController(FeatureView(tuple(m["features"]["names"])), m["actions"]["widths"],
                                m["engine"]["top_k"], self.policies["depth"], self.policies["width"], self.partner())

    def bench_controllers(self) -> dict:
        """``ltd`` and ``partner``, as the benchmark names them."""
        return {"ltd": self.controller(), "partner": self.partner()}

    def engine_options(self) -> dict:
        e = self.manifest["engine"]
        return {"max_depth": e["max_depth"], "draft_vocab": e.get("draft_vocab"), "drafter": e.get("drafter", "ar")}


def export_run(run_dir: str | Path, out: str | Path, name: str | None = None) -> Path:
    """Write the best policies of a training run as a bundle at ``out`` (atomically: a folder swap)."""
    from safetensors.torch import save_file

    from ltd.block_drafter import drafter_fingerprint
    from ltd.env import spec_pair
    from ltd.paths import hardware
    from ltd.train import TrainingRun, load_policy

    run = TrainingRun.resume(run_dir)
    s = run.spec
    best = {v: run.dir / f"best-{v}.safetensors" for v in VIEWS}
    if not all(p.exists() for p in best.values()):
        raise ConfigError(f"run {run_dir} has no validated policies yet: let `ltd train` finish a round first")
    policies = {v: load_policy(p) for v, p in best.items()}
    pair = spec_pair(s)
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
                   "drafter": s.drafting.drafter, "temperature": s.temperature,
                   "drafter_fingerprint": drafter_fingerprint(pair) if s.drafting.drafter == "block" else None},
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
    replace_dir(staging, out)
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
- Engine: {m['engine'].get('drafter', 'ar')} drafter, top_k {m['engine']['top_k']}, max depth {m['engine']['max_depth']}, draft vocabulary
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

    path = settled_dir(path)
    if not path.is_dir():
        raise BundleError(f"policy bundle {path} does not exist: give a folder made by `ltd export`")
    extra = sorted(p.name for p in path.iterdir() if p.name not in BUNDLE_FILES)
    if extra:
        raise BundleError(f"policy bundle {path} holds an unexpected file {extra[0]!r}: bundles hold data only "
                          f"({', '.join(BUNDLE_FILES)}); re-export it")
    manifest = read_json(path / "manifest.json", "bundle manifest", BundleError,
                         fix="re-export the bundle with `ltd export`")
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        got = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise BundleError(f"policy bundle {path} has format version {got!r}, this LTD reads {FORMAT_VERSION}: "
                          "re-export it with this version")
    try:
        checked = Manifest.model_validate(manifest)
    except ValidationError as exc:
        from ltd.spec import _one_line

        raise BundleError(_one_line(exc, f"policy bundle {path}: malformed manifest.json") + "; re-export it")
    weights = path / "weights.safetensors"
    if not weights.exists():
        raise BundleError(f"policy bundle {path} has no weights.safetensors: re-export it")
    if sha256_file(weights) != checked.weights_sha256:
        raise BundleError(f"{weights} does not match the hash in its manifest: the bundle was modified or is "
                          "corrupt, re-export it")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{weights} is not a safetensors file ({exc}): bundles never hold pickles; re-export it")
    names = checked.features.names
    unknown = [n for n in names if n not in FEATURE_NAMES]
    if unknown or checked.features.definition_version != FEATURES_VERSION:
        raise BundleError(f"policy bundle {path} uses features this LTD does not define "
                          f"({unknown[:1] or 'definition v' + str(checked.features.definition_version)})")
    policies = {}
    for view in VIEWS:
        spec = getattr(checked.policies, view)
        try:
            policies[view] = MLPPolicy([tensors[f"{view}.{i}.weight"] for i in range(len(spec.layers))],
                                       [tensors[f"{view}.{i}.bias"] for i in range(len(spec.layers))],
                                       spec.activation)
        except KeyError as exc:
            raise BundleError(f"policy bundle {path}: weights.safetensors lacks tensor {exc}; re-export it")
        except ValueError as exc:
            raise BundleError(f"policy bundle {path}: the {view} network's tensors are malformed ({exc}); re-export it")
        if [[lay.in_features, lay.out_features] for lay in policies[view].layers] != spec.layers:
            raise BundleError(f"policy bundle {path}: the {view} network's shapes differ from its manifest; re-export it")
    if policies["width"].n_actions != len(checked.actions.widths) or policies["depth"].n_actions != 2:
        raise BundleError(f"policy bundle {path}: the networks' outputs do not match its action grids")
    if any(p.obs_size != len(names) for p in policies.values()):
        raise BundleError(f"policy bundle {path}: the networks' inputs do not match its feature list")
    if pair is not None and not force:
        want = checked.pair.fingerprint
        if want != pair.fingerprint():
            raise BundleError(f"policy bundle {path} was trained for pair {checked.pair.name!r} "
                              f"({want}), not this one ({pair.fingerprint()}): use its pair, or --force")
        if checked.engine.drafter == "block":
            from ltd.block_drafter import drafter_fingerprint

            have = drafter_fingerprint(pair)
            if have != checked.engine.drafter_fingerprint:
                raise BundleError(f"policy bundle {path} was trained with another block drafter "
                                  f"({checked.engine.drafter_fingerprint}, this pair has {have}): retrain the "
                                  f"policies on this drafter, or --force")
    return Bundle(path, manifest, policies)
