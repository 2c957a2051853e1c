"""Environment specs: one YAML file per environment (pair, workload, drafting limits, clock, reward).

Validated with pydantic; an unknown key, a wrong type or an impossible width grid is one clear
error line naming the key. Relative paths in a spec are relative to the spec's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ltd.errors import ConfigError
from ltd.paths import read_yaml

# Prompt files are split by position: the first prompts are the test set (benchmarks report on
# them), the next ones validation (choosing configs and checkpoints), the rest training.
SPLITS = {"test": (0, 40), "validation": (40, 60), "train": (60, None)}


def split_prompts(prompts: list, split: str) -> list:
    lo, hi = SPLITS[split]
    part = prompts[lo:hi]
    if not part:
        raise ConfigError(f"the prompt file has {len(prompts)} prompts: too few for a {split!r} split "
                          f"(test: first 40, validation: next 20, train: the rest)")
    return part


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Workload(_Strict):
    prompts: str = "heldout"  # "heldout": the pair's held-out code prompts; else a JSON-lines file
    split: Literal["train", "validation", "test"] = "train"
    max_prompt_tokens: int = Field(96, ge=1)
    max_new_tokens: int = Field(64, ge=1)


class Drafting(_Strict):
    top_k: int = Field(4, ge=1, le=64)
    max_depth: int = Field(8, ge=1, le=32)
    widths: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 6, 8, 12, 16, 24, 32])
    draft_vocab: int | None = Field(None, ge=0)  # None: the pair's default; 0: the full vocabulary
    drafter: Literal["ar", "block"] = "ar"  # the pair's draft model, or its block drafter (ltd drafter train)

    @property
    def capacity(self) -> int:
        """Nodes a tree of ``max_depth`` expansions of ``top_k`` can hold."""
        return self.top_k + (self.max_depth - 1) * self.top_k * self.top_k

    @model_validator(mode="after")
    def _widths_fit(self):
        if not self.widths:
            raise ValueError("width grid is empty: list at least one width")
        if min(self.widths) < 1:
            raise ValueError("widths must be >= 1")
        if max(self.widths) > self.capacity:
            raise ValueError(f"width {max(self.widths)} is above what the tree can hold ({self.capacity} nodes "
                             f"for top_k={self.top_k}, max_depth={self.max_depth})")
        return self


class Partner(_Strict):
    """The static partner that round 0 trains against."""

    depth: int = Field(3, ge=0)
    width: int = Field(8, ge=1)


class EnvSpec(_Strict):
    name: str
    pair: str = "tiny"
    device: str = "cpu"  # cpu | cuda | cuda:N | auto (cuda when there is one)
    dtype: Literal["float32", "bfloat16", "float16", "fp32", "bf16", "fp16"] = "float32"
    workload: Workload = Field(default_factory=Workload)
    drafting: Drafting = Field(default_factory=Drafting)
    temperature: float = Field(0.0, ge=0.0)
    clock: Literal["wall", "cost"] = "cost"
    reward: Literal["throughput", "rate", "accepted"] = "throughput"
    episode: Literal["cycle", "sequence"] = "cycle"
    features: str | list[str] = "all"
    partner: Partner = Field(default_factory=Partner)
    cost_model: str | None = None  # default: <spec file stem>.cost.json beside the spec
    seed: int = 0

    path: Path | None = Field(None, exclude=True)

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value not in ("cpu", "auto", "cuda", "mps") and not value.startswith("cuda:"):
            raise ValueError(f"unknown device {value!r}: choose cpu, cuda, cuda:N, mps or auto")
        return value

    @property
    def torch_device(self) -> str:
        """The device to load on: ``auto`` is cuda where torch sees one, else cpu."""
        if self.device == "auto":
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def resolve(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() or self.path is None else self.path.parent / p

    @property
    def cost_model_path(self) -> Path:
        if self.cost_model:
            return self.resolve(self.cost_model)
        if self.path is None:
            from ltd.paths import ltd_home

            return ltd_home() / "costs" / f"{self.name}.cost.json"
        return self.path.with_suffix(".cost.json")

    @property
    def pair_spec(self) -> str:
        """The pair as ``load_pair`` takes it (a YAML path made absolute)."""
        return str(self.resolve(self.pair)) if self.pair.endswith((".yaml", ".yml")) else self.pair


def _one_line(exc: ValidationError, where: str) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(x) for x in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown key {loc!r}: remove it or check its spelling"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{where}: {loc + ': ' if loc else ''}{msg}"


def parse_spec(data: dict, where: str = "spec", path: Path | None = None) -> EnvSpec:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a spec must be a YAML mapping of keys to values")
    try:
        spec = EnvSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, where))
    spec.path = path
    return spec


def load_spec(path: str | Path) -> EnvSpec:
    """Read and validate a spec file (``yaml.safe_load`` only)."""
    path = Path(path).expanduser()
    data = read_yaml(path, "spec file", ConfigError, "give a YAML file (see envs/ for examples)")
    return parse_spec(data, str(path), path.resolve())
