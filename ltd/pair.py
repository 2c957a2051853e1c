"""Load a draft/target pair from local checkpoints, check that they can work together, fingerprint it.

A pair is named by a preset (``micro``, ``tiny``: built or installed under ``$LTD_HOME``) or by
two local paths, ``target=PATH,draft=PATH``. The tokenizer comes from the target's folder; the
draft must use the same vocabulary, since the target verifies the draft's token ids as they are.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ltd.errors import PairError, first_line
from ltd.paths import read_json, read_yaml

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


@dataclass
class Pair:
    """A target model, its draft and their shared tokenizer, on one device."""

    target: torch.nn.Module
    draft: torch.nn.Module
    tokenizer: object
    name: str
    target_path: Path
    draft_path: Path
    meta: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.target.parameters()).device

    @property
    def max_context(self) -> int:
        return int(getattr(self.target.config, "max_position_embeddings", 2048))

    @property
    def eos_token_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    def fingerprint(self) -> str:
        """A short hash of both models' configs and weight files: a policy bundle names its pair by it."""
        h = hashlib.sha256()
        for path in (self.target_path, self.draft_path):
            for name in sorted(p.name for p in path.glob("*.safetensors")):
                st = (path / name).stat()
                h.update(f"{name}:{st.st_size}".encode())
            h.update((path / "config.json").read_bytes())
        return h.hexdigest()[:16]

    def encode(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt)["input_ids"])


def _pair_from_yaml(path: Path) -> tuple[str, Path | None, Path | None]:
    """A YAML file naming a preset (``preset: tiny``) or two checkpoints (``target:``, ``draft:``).

    Relative paths are relative to the YAML file. A spec with a ``pair:`` section (an environment
    spec) is read from that section.
    """
    data = read_yaml(path, "pair file", PairError, "give a preset name, target=PATH,draft=PATH or a YAML file")
    if isinstance(data, dict) and isinstance(data.get("pair"), (dict, str)):
        data = data["pair"]
    if isinstance(data, str):
        return data, None, None
    if not isinstance(data, dict):
        raise PairError(f"pair file {path} must hold a mapping with preset, or target and draft")
    unknown = set(data) - {"preset", "target", "draft"}
    if unknown:
        raise PairError(f"pair file {path}: unknown key {sorted(unknown)[0]!r} (known: preset, target, draft)")
    if "preset" in data:
        return str(data["preset"]), None, None
    if not {"target", "draft"} <= set(data):
        raise PairError(f"pair file {path} needs both target: PATH and draft: PATH (or preset: NAME)")
    base = path.parent
    return "custom", base / Path(str(data["target"])).expanduser(), base / Path(str(data["draft"])).expanduser()


def parse_pair_spec(spec: str) -> tuple[str, Path | None, Path | None]:
    """``tiny`` -> ("tiny", None, None); ``target=A,draft=B`` -> ("custom", A, B); or a YAML file."""
    if spec.endswith((".yaml", ".yml")):
        return _pair_from_yaml(Path(spec).expanduser())
    if "=" not in spec:
        return spec, None, None
    parts = {}
    for item in spec.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in ("target", "draft") or not value.strip():
            raise PairError(f"bad pair spec {spec!r}: write a preset name or target=PATH,draft=PATH")
        parts[key] = Path(value.strip()).expanduser()
    if set(parts) != {"target", "draft"}:
        raise PairError(f"bad pair spec {spec!r}: both target=PATH and draft=PATH are needed")
    return "custom", parts["target"], parts["draft"]


def _check_checkpoint(path: Path, role: str) -> None:
    if not path.exists():
        raise PairError(f"{role} checkpoint {path} does not exist: pass a local folder made by save_pretrained")
    if not (path / "config.json").exists():
        raise PairError(f"{role} checkpoint {path} has no config.json: pass a folder made by save_pretrained")


def _vocab_signature(tokenizer) -> str:
    return hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()


def resolve_pair_paths(spec: str, build: bool = True) -> tuple[str, Path, Path, dict]:
    name, target_path, draft_path = parse_pair_spec(spec)
    meta: dict = {}
    if target_path is None:
        from ltd.zoo import PRESETS, build_pair, pair_dir, recipe_for

        built_name = re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name) is not None
        if name not in PRESETS and built_name and (pair_dir(name) / "pair.json").exists():
            root = pair_dir(name)  # built from a recipe file (`ltd pair build --recipe`)
        else:
            recipe_for(name)  # unknown preset -> clear error
            root = build_pair(name) if build else pair_dir(name)
        if not (root / "pair.json").exists():
            raise PairError(f"pair {name!r} is not built: run `ltd pair build --preset {name}`")
        meta = read_json(root / "pair.json", "pair record", PairError, f"rebuild it with `ltd pair build --preset {name}`")
        if not isinstance(meta, dict):
            raise PairError(f"{root / 'pair.json'} is not a pair record: rebuild it with `ltd pair build --preset {name}`")
        target_path, draft_path = root / "target", root / "draft"
    return name, target_path, draft_path, meta


def load_pair(spec: str = "tiny", device: str | torch.device = "cpu", dtype: str = "float32",
              attn_implementation: str = "sdpa") -> Pair:
    """Load and validate a pair; builds a missing preset first."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise PairError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    name, target_path, draft_path, meta = resolve_pair_paths(spec)
    _check_checkpoint(target_path, "target")
    _check_checkpoint(draft_path, "draft")
    # Loading a folder made elsewhere can fail in many ways inside transformers and tokenizers
    # (bad JSON, truncated weights, unknown model types); each is that folder's problem, in one line.
    try:
        tokenizer = AutoTokenizer.from_pretrained(target_path)
    except Exception as exc:
        raise PairError(f"cannot load a tokenizer from {target_path}: save one there with save_pretrained "
                        f"({first_line(exc)})") from None
    try:
        draft_tok = AutoTokenizer.from_pretrained(draft_path)
    except Exception:
        draft_tok = None  # a draft folder without a tokenizer uses the target's
    if draft_tok is not None and _vocab_signature(draft_tok) != _vocab_signature(tokenizer):
        raise PairError(f"the draft's tokenizer ({draft_path}) differs from the target's ({target_path}): "
                        "a draft must share the target's vocabulary")
    models = []
    for path, role in ((target_path, "target"), (draft_path, "draft")):
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], attn_implementation=attn_implementation)
        except Exception as exc:
            raise PairError(f"cannot load the {role} model from {path}: {first_line(exc)}") from None
        models.append(model.to(device).eval())
    target, draft = models
    if target.config.vocab_size != draft.config.vocab_size:
        raise PairError(f"vocabulary sizes differ (target {target.config.vocab_size}, draft "
                        f"{draft.config.vocab_size}): a draft must share the target's vocabulary")
    if len(tokenizer) > target.config.vocab_size:
        raise PairError(f"the tokenizer has {len(tokenizer)} tokens but the target only {target.config.vocab_size}: "
                        "use the tokenizer the target was trained with")
    for p in list(target.parameters()) + list(draft.parameters()):
        p.requires_grad_(False)
    return Pair(target, draft, tokenizer, name, target_path, draft_path, meta)
