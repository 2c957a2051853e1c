"""The command line: JSON output, and one clear line with a non-zero exit for every bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch


def run_ltd(*args: str, env_home=None):
    """In-process run of the real CLI (LTD_HOME is the session's, set by the fixture)."""
    from click.testing import CliRunner

    from ltd.cli import cli

    result = CliRunner().invoke(cli, list(args))
    result.returncode = result.exit_code
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def assert_one_line_error(proc, *words: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_a_real_process_exits_non_zero_with_one_line(ltd_home):
    import os

    env = dict(os.environ, LTD_HOME=str(ltd_home))
    proc = subprocess.run([sys.executable, "-m", "ltd.cli", "generate", "--pair", "nope", "--prompt", "x"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert_one_line_error(proc, "unknown preset")


def test_generate_json_is_the_targets_greedy_output(micro_dir, ltd_home, micro_prompts, micro_pair, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in micro_prompts[:3]) + "\n")
    proc = run_ltd("generate", "--pair", "micro", "--prompts", str(prompts), "--json", "--max-new-tokens", "12",
                   "--depth", "3", "--top-k", "2", "--width", "5", env_home=ltd_home)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert {"prompt_ids", "output_ids", "text", "tokens_per_s", "mean_accepted", "cycles"} <= set(row)
        ids = row["prompt_ids"]
        ref = micro_pair.target.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                                         pad_token_id=micro_pair.tokenizer.pad_token_id)[0, len(ids):].tolist()
        assert row["output_ids"] == ref


def test_unknown_preset(ltd_home):
    assert_one_line_error(run_ltd("generate", "--pair", "huge", "--prompt", "x", env_home=ltd_home), "unknown preset")


def test_missing_path(ltd_home, tmp_path):
    proc = run_ltd("generate", "--pair", f"target={tmp_path}/nope,draft={tmp_path}/nope", "--prompt", "x",
                   env_home=ltd_home)
    assert_one_line_error(proc, "does not exist")


def test_tokenizer_mismatch(ltd_home, micro_dir, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator(["other text entirely"] * 10, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>"]))
    other = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<s>")
    draft = AutoModelForCausalLM.from_pretrained(micro_dir / "draft")
    draft.save_pretrained(tmp_path / "draft")
    other.save_pretrained(tmp_path / "draft")
    proc = run_ltd("generate", "--pair", f"target={micro_dir / 'target'},draft={tmp_path / 'draft'}", "--prompt", "x",
                   env_home=ltd_home)
    assert_one_line_error(proc, "tokenizer", "differs")


def test_vocabulary_size_mismatch(ltd_home, micro_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    draft = AutoModelForCausalLM.from_pretrained(micro_dir / "draft")
    draft.resize_token_embeddings(draft.config.vocab_size + 64, mean_resizing=False)
    draft.save_pretrained(tmp_path / "draft")
    AutoTokenizer.from_pretrained(micro_dir / "draft").save_pretrained(tmp_path / "draft")
    proc = run_ltd("generate", "--pair", f"target={micro_dir / 'target'},draft={tmp_path / 'draft'}", "--prompt", "x",
                   env_home=ltd_home)
    assert_one_line_error(proc, "vocabulary sizes differ")


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_empty_prompt_file(ltd_home, micro_dir, tmp_path, content):
    f = tmp_path / "empty.jsonl"
    f.write_text(content)
    assert_one_line_error(run_ltd("generate", "--pair", "micro", "--prompts", str(f), env_home=ltd_home), "no prompts")


def test_bad_prompt_lines(ltd_home, micro_dir, tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"text": "no prompt key"}\n')
    assert_one_line_error(run_ltd("generate", "--pair", "micro", "--prompts", str(f), env_home=ltd_home), "prompt")
    f.write_text("not json\n")
    assert_one_line_error(run_ltd("generate", "--pair", "micro", "--prompts", str(f), env_home=ltd_home), "not JSON")
    assert_one_line_error(run_ltd("generate", "--pair", "micro", "--prompts", str(tmp_path / "missing.jsonl"),
                                  env_home=ltd_home), "does not exist")


def test_prompt_longer_than_context(ltd_home, micro_dir):
    proc = run_ltd("generate", "--pair", "micro", "--prompt", "x = 1\n" * 400, env_home=ltd_home)
    assert_one_line_error(proc, "does not fit", "context")


def test_bad_static_tree(ltd_home, micro_dir):
    proc = run_ltd("generate", "--pair", "micro", "--prompt", "x", "--depth", "3", "--width", "0", env_home=ltd_home)
    assert_one_line_error(proc, "verifies nothing")


def test_pair_path_and_unknown_preset(ltd_home):
    proc = run_ltd("pair", "path", "tiny", env_home=ltd_home)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("pairs/tiny")
    assert_one_line_error(run_ltd("pair", "build", "--preset", "giant", env_home=ltd_home), "unknown preset")


def test_pair_from_yaml(ltd_home, micro_dir, tmp_path):
    import shutil

    shutil.copytree(micro_dir, tmp_path / "mine")
    spec = tmp_path / "mine.yaml"
    spec.write_text("target: mine/target\ndraft: mine/draft\n")
    proc = run_ltd("generate", "--pair", str(spec), "--prompt", "def f(", "--max-new-tokens", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["output_ids"]) == 4
    spec.write_text("target: mine/target\ndraft: mine/draft\ncolour: red\n")
    assert_one_line_error(run_ltd("generate", "--pair", str(spec), "--prompt", "x"), "unknown key 'colour'")


def test_spec_bench_is_vendored_and_selectable():
    from ltd.errors import PromptError
    from ltd.runtime import read_prompts

    assert len(read_prompts("specbench")) == 480
    assert len(read_prompts("specbench:qa")) == 80
    assert len(read_prompts("specbench:coding")) == 10
    with pytest.raises(PromptError, match="unknown Spec-Bench category"):
        read_prompts("specbench:poetry")


def test_every_documented_command_exists():
    from ltd.cli import cli

    for name in ("pair", "generate", "bench", "demo", "profile", "train", "export", "env-overhead"):
        assert name in cli.commands, name
