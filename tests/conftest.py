"""Shared fixtures: the `micro` built-in pair, and small random-weight pairs saved and loaded the real way.

Losslessness holds for any weights, so the strict engine tests use random pairs whose draft is a
noisy copy of the target: it agrees often enough for long accepted paths and disagrees often
enough for every rejection branch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def ltd_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("ltd_home")
    mp = pytest.MonkeyPatch()
    mp.setenv("LTD_HOME", str(home))
    yield home
    mp.undo()


@pytest.fixture(scope="session")
def micro_dir(ltd_home) -> Path:
    from ltd.zoo import build_pair

    return build_pair("micro")


@pytest.fixture(scope="session")
def micro_pair(micro_dir):
    from ltd.pair import load_pair

    return load_pair("micro")


@pytest.fixture(scope="session")
def micro_prompts(micro_dir) -> list[str]:
    lines = (micro_dir / "prompts_heldout.jsonl").read_text().splitlines()
    return [json.loads(line)["prompt"] for line in lines]


def _config(arch: str, vocab: int, hidden: int, layers: int, tok):
    from transformers import LlamaConfig, Qwen3Config

    cls = {"llama": LlamaConfig, "qwen3": Qwen3Config}[arch]
    return cls(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
               num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4, max_position_embeddings=256,
               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
               initializer_range=0.3, tie_word_embeddings=False)


def make_random_pair(root: Path, arch: str, micro_dir: Path, noise: float, seed: int = 0) -> str:
    """Save a random target and a noisy copy of it as a draft (same shape); return the pair spec."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(micro_dir / "target")
    torch.manual_seed(seed)
    target = AutoModelForCausalLM.from_config(_config(arch, len(tok), 64, 2, tok))
    draft = AutoModelForCausalLM.from_config(_config(arch, len(tok), 64, 2, tok))
    with torch.no_grad():
        for p, q in zip(target.parameters(), draft.parameters()):
            q.copy_(p + noise * torch.randn_like(p) * p.abs().mean())
    for part, model in (("target", target), ("draft", draft)):
        model.save_pretrained(root / part)
        tok.save_pretrained(root / part)
    return f"target={root / 'target'},draft={root / 'draft'}"


@pytest.fixture(scope="session")
def noisy_pair(tmp_path_factory, micro_dir):
    from ltd.pair import load_pair

    return load_pair(make_random_pair(tmp_path_factory.mktemp("noisy"), "llama", micro_dir, noise=0.02))


@pytest.fixture(scope="session")
def qwen_pair(tmp_path_factory, micro_dir):
    from ltd.pair import load_pair

    return load_pair(make_random_pair(tmp_path_factory.mktemp("qwen"), "qwen3", micro_dir, noise=0.02, seed=1))


@pytest.fixture(scope="session")
def copy_pair(tmp_path_factory, micro_dir):
    from ltd.pair import load_pair

    return load_pair(make_random_pair(tmp_path_factory.mktemp("copy"), "llama", micro_dir, noise=0.0, seed=2))


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def micro_spec(micro_dir, tmp_path_factory) -> Path:
    """The shipped micro spec, copied so its cost model is fitted beside the copy."""
    d = tmp_path_factory.mktemp("envs")
    shutil.copy(ROOT / "envs" / "micro-code.yaml", d / "micro-code.yaml")
    return d / "micro-code.yaml"


@pytest.fixture(scope="session")
def micro_run(micro_spec, tmp_path_factory):
    """A short finished training run on the micro pair (one phase per view)."""
    from ltd.train import TrainingRun, load_config

    config = load_config(None, {"rounds": 0, "timesteps": {"width": 256, "depth": 256},
                                "ppo": {"width": {"n_steps": 128}, "depth": {"n_steps": 128}}})
    run = TrainingRun.create(micro_spec, config, tmp_path_factory.mktemp("export") / "run")
    run.run()
    return run
