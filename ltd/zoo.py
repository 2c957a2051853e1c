"""Built-in draft/target pairs, trained offline from the built-in corpus.

``build_pair("tiny")`` installs the pair that ships with the package (seconds);
``build_pair("tiny", rebuild=True)`` and ``build_pair("micro")`` train one from its recipe:

1. a byte-level BPE tokenizer on the training documents;
2. a Llama-architecture target, next-token loss on the training documents;
3. a pool of the target's own continuations (greedy and sampled) of training text;
4. a smaller draft distilled from the target (KL to the target's logits) on real text and on
   that pool, so it learns where the target actually goes;
5. held-out figures (loss, degeneracy of greedy continuations, greedy acceptance), written to
   ``pair.json`` with the recipe and the hashes of the weights.

Every stage checkpoints atomically under ``$LTD_HOME/builds/<preset>`` and a rerun resumes where
the last one stopped, so a long build can span sessions.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ltd.corpus import Document, corpus_fingerprint, load_documents, split_documents
from ltd.errors import PairError
from ltd.paths import PACKAGE_DIR, atomic_write_json, ltd_home, replace_dir, settled_dir, sha256_file

log = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
SHIPPED_DIR = PACKAGE_DIR / "assets" / "pairs"


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    layers: int
    heads: int
    intermediate: int


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a built pair; recorded whole in ``pair.json``."""

    name: str
    vocab_size: int
    seq_len: int
    target: ModelShape
    draft: ModelShape
    target_steps: int
    draft_steps: int
    batch_size: int = 8
    target_lr: float = 2e-3
    draft_lr: float = 2e-3
    warmup_steps: int = 10
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.1
    pool_sequences: int = 256
    pool_prompt_len: int = 64
    corpus_chars: int | None = None  # cap on training characters (micro), None = all
    eval_prompts: int = 32
    eval_new_tokens: int = 60
    prompt_tokens: int = 64
    workload_prompts: int = 200
    draft_from_target: bool = True
    seed: int = 0

    @property
    def max_position(self) -> int:
        return self.seq_len

    @classmethod
    def from_dict(cls, data: dict) -> Recipe:
        """A recipe from its JSON form (``recipe.json`` of a build, or ``pair.json["recipe"]``)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise PairError(f"unknown recipe key {unknown[0]!r}: known keys are {', '.join(sorted(names))}")
        try:
            d = dict(data, target=ModelShape(**data["target"]), draft=ModelShape(**data["draft"]))
            return cls(**d)
        except (KeyError, TypeError) as exc:
            raise PairError(f"incomplete or malformed recipe ({exc}): start from a build's recipe.json")


PRESETS: dict[str, Recipe] = {
    # Seconds to build; for tests, where only losslessness matters.
    "micro": Recipe(
        name="micro",
        vocab_size=512,
        seq_len=128,
        target=ModelShape(hidden=64, layers=2, heads=4, intermediate=128),
        draft=ModelShape(hidden=64, layers=1, heads=4, intermediate=128),
        target_steps=300,
        draft_steps=120,
        target_lr=4e-3,
        draft_lr=4e-3,
        pool_sequences=64,
        draft_from_target=False,  # a draft that often disagrees makes a stricter test pair
        pool_prompt_len=32,
        corpus_chars=600_000,
        eval_prompts=8,
        eval_new_tokens=30,
        prompt_tokens=32,
        workload_prompts=120,
    ),
    # The default pair: quality first (non-degenerate target, draft acceptance >= 0.6).
    "tiny": Recipe(
        name="tiny",
        vocab_size=4096,
        seq_len=256,
        target=ModelShape(hidden=192, layers=6, heads=6, intermediate=512),
        draft=ModelShape(hidden=192, layers=1, heads=6, intermediate=512),
        target_steps=3000,
        draft_steps=800,
        target_lr=2.6e-3,  # 2e-3 at width 256, scaled by 1/width
        draft_lr=2.6e-3,
        warmup_steps=30,
        pool_sequences=384,
    ),
    # For a GPU (experiments/gpu_check.sh): a heavier target, trained in about a minute on one GPU.
    # On a 2-core CPU this recipe would take many hours.
    "small": Recipe(
        name="small",
        vocab_size=4096,
        seq_len=256,
        target=ModelShape(hidden=512, layers=8, heads=8, intermediate=1536),
        draft=ModelShape(hidden=512, layers=1, heads=8, intermediate=1536),
        target_steps=1500,
        draft_steps=500,
        batch_size=32,
        target_lr=1e-3,
        draft_lr=1e-3,
        warmup_steps=50,
        pool_sequences=384,
    ),
}


# Runtime settings measured best for a built-in pair on this project's machine; they go into
# pair.json ("runtime") and the engine uses them unless told otherwise. On a 2-core CPU the
# draft's output layer is most of what a draft step reads: restricting it to the 1024 most frequent
# tokens made the best static tree 1.08x plain decoding instead of 0.91x (experiments/core).
RUNTIME_DEFAULTS: dict[str, dict] = {"micro": {}, "tiny": {"draft_vocab": 1024}}


def recipe_for(preset: str) -> Recipe:
    if preset not in PRESETS:
        raise PairError(f"unknown preset {preset!r}: choose one of {', '.join(sorted(PRESETS))}")
    return PRESETS[preset]


def pair_dir(preset: str) -> Path:
    """The built pair's folder (or the previous one, if replacing it was interrupted)."""
    return settled_dir(_pair_home(preset))


def _pair_home(preset: str) -> Path:
    return ltd_home() / "pairs" / preset


# --------------------------------------------------------------------------- tokenizer


def train_tokenizer(docs: list[Document], vocab_size: int, max_position: int, out: Path):
    """Byte-level BPE on the training documents, saved as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((d.text for d in docs), trainer=trainer)
    # Prompts start like documents do in training: right after the separator.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{EOS_TOKEN} $A", special_tokens=[(EOS_TOKEN, tok.token_to_id(EOS_TOKEN))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=max_position,
    )
    fast.save_pretrained(out)
    return fast


def token_ranking(stream: torch.Tensor, vocab_size: int) -> list[int]:
    """All token ids, most frequent in the training stream first (ties by id).

    The engine can restrict the draft's output layer to the head of this ranking (as EAGLE-3
    restricts its draft vocabulary): on a CPU the draft's output matrix is most of what a draft
    step reads.
    """
    counts = torch.bincount(stream, minlength=vocab_size).double()
    order = sorted(range(len(counts)), key=lambda i: (-float(counts[i]), i))
    return order


def encode_documents(tokenizer, docs: list[Document]) -> torch.Tensor:
    """One long id stream: separator, document, separator, document, ..."""
    eos = tokenizer.eos_token_id
    encodings = tokenizer.backend_tokenizer.encode_batch([d.text for d in docs], add_special_tokens=False)
    out: list[int] = []
    for enc in encodings:
        out.append(eos)
        out.extend(enc.ids)
    return torch.tensor(out, dtype=torch.long)


# --------------------------------------------------------------------------- models


def make_model(shape: ModelShape, recipe: Recipe, tokenizer, seed: int):
    """A Llama causal LM with zero-initialised residual-branch outputs (trains faster here)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        max_position_embeddings=recipe.max_position,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    return model


def init_draft_from_target(draft, target) -> bool:
    """Start the draft from the target's embeddings, final norm and first layers where shapes match."""
    if draft.config.hidden_size != target.config.hidden_size:
        return False
    with torch.no_grad():
        draft.model.embed_tokens.weight.copy_(target.model.embed_tokens.weight)
        draft.model.norm.weight.copy_(target.model.norm.weight)
        for d_layer, t_layer in zip(draft.model.layers, target.model.layers):
            if d_layer.mlp.up_proj.weight.shape == t_layer.mlp.up_proj.weight.shape:
                d_layer.load_state_dict(t_layer.state_dict())
    return True


def count_params(model) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


# --------------------------------------------------------------------------- training


def _lr_lambda(recipe: Recipe, steps: int):
    def fn(step: int) -> float:
        if step < recipe.warmup_steps:
            return (step + 1) / recipe.warmup_steps
        progress = (step - recipe.warmup_steps) / max(1, steps - recipe.warmup_steps)
        return recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return fn


def random_windows(stream: torch.Tensor, batch: int, length: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(stream) - length, (batch,), generator=gen)
    return torch.stack([stream[s : s + length] for s in starts.tolist()])


def _save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def train_loop(model, loss_fn, steps: int, lr: float, recipe: Recipe, ckpt: Path, desc: str,
               checkpoint_every_s: float = 120.0) -> None:
    """AdamW + warmup + cosine, resumable from ``ckpt`` (model, optimiser, schedule, data RNG)."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optim = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.95),
    )
    sched = torch.optim.lr_scheduler.LambdaLR(optim, _lr_lambda(recipe, steps))
    gen = torch.Generator().manual_seed(recipe.seed + 1)
    step = 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True, map_location="cpu")
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optim"])
        sched.load_state_dict(state["sched"])
        gen.set_state(state["rng"])
        step = int(state["step"])
        log.info("%s: resuming at step %d of %d", desc, step, steps)
    model.train()
    last_save = time.monotonic()
    bar = tqdm(total=steps, initial=step, desc=desc, unit="step", mininterval=5.0)
    while step < steps:
        loss = loss_fn(gen)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        sched.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if time.monotonic() - last_save > checkpoint_every_s or step == steps:
            _save_checkpoint(ckpt, {"model": model.state_dict(), "optim": optim.state_dict(),
                                    "sched": sched.state_dict(), "rng": gen.get_state(), "step": step})
            last_save = time.monotonic()
    bar.close()
    model.eval()


def _lm_loss(model, ids: torch.Tensor) -> torch.Tensor:
    ids = ids.to(model.device)
    logits = model(input_ids=ids[:, :-1], use_cache=False).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def _kl_loss(draft, target, ids: torch.Tensor) -> torch.Tensor:
    ids = ids.to(draft.device)
    with torch.no_grad():
        p_log = F.log_softmax(target(input_ids=ids, use_cache=False).logits.float(), dim=-1)
    q_log = F.log_softmax(draft(input_ids=ids, use_cache=False).logits, dim=-1)
    v = p_log.shape[-1]
    return F.kl_div(q_log.reshape(-1, v), p_log.reshape(-1, v), log_target=True, reduction="batchmean")


@torch.no_grad()
def generate_pool(target, stream: torch.Tensor, recipe: Recipe, seed: int) -> torch.Tensor:
    """The target's own continuations of training text: half greedy, half sampled (T=1)."""
    gen = torch.Generator().manual_seed(seed)
    new = recipe.seq_len - recipe.pool_prompt_len
    out = []
    batch = 32
    bar = tqdm(total=recipe.pool_sequences, desc="target continuations", unit="seq", mininterval=5.0)
    for i in range(0, recipe.pool_sequences, batch):
        n = min(batch, recipe.pool_sequences - i)
        prompts = random_windows(stream, n, recipe.pool_prompt_len, gen).to(target.device)
        sample = (i // batch) % 2 == 1
        torch.manual_seed(seed + i)
        seqs = target.generate(
            prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new, min_new_tokens=new,
            do_sample=sample, temperature=1.0 if sample else None, top_k=0 if sample else None,
            top_p=None, pad_token_id=target.config.pad_token_id,
        )
        out.append(seqs[:, : recipe.seq_len].cpu())
        bar.update(n)
    bar.close()
    return torch.cat(out)


# --------------------------------------------------------------------------- evaluation


def degeneracy(tokens: list[int]) -> tuple[float, float]:
    """(repeated-4-gram share, distinct-token share) of one continuation."""
    grams = [tuple(tokens[i : i + 4]) for i in range(len(tokens) - 3)]
    rep4 = 1.0 - len(set(grams)) / len(grams) if grams else 0.0
    distinct = len(set(tokens)) / len(tokens) if tokens else 0.0
    return rep4, distinct


def heldout_windows(tokenizer, heldout: list[Document], count: int, length: int, seed: int) -> list[list[int]]:
    """``count`` token windows from held-out documents, each starting at a line start."""
    gen = torch.Generator().manual_seed(seed)
    encs = tokenizer.backend_tokenizer.encode_batch([d.text for d in heldout], add_special_tokens=False)
    bos = tokenizer.bos_token_id
    windows = []
    attempts = 0
    while len(windows) < count and attempts < count * 50:
        attempts += 1
        ids = encs[int(torch.randint(0, len(encs), (1,), generator=gen))].ids
        if len(ids) < length + 8:
            continue
        start = int(torch.randint(0, len(ids) - length, (1,), generator=gen))
        # move to the first token after a line break, so prompts start at a line
        while start < len(ids) - length and "\n" not in tokenizer.decode([ids[start]]):
            start += 1
        start += 1
        if start + length - 1 > len(ids):
            continue
        windows.append([bos] + ids[start : start + length - 1])
    return windows


@torch.no_grad()
def evaluate_pair(target, draft, tokenizer, heldout: list[Document], recipe: Recipe) -> dict:
    """Held-out loss, degeneracy of greedy continuations, greedy per-token acceptance."""
    stream = encode_documents(tokenizer, heldout)
    gen = torch.Generator().manual_seed(1234)
    windows = random_windows(stream, 32, min(recipe.seq_len, len(stream) - 1), gen)
    losses = {name: float(_lm_loss(m, windows)) for name, m in (("target", target), ("draft", draft))}

    prompts = torch.tensor(heldout_windows(tokenizer, heldout, recipe.eval_prompts, recipe.prompt_tokens, 99),
                           device=target.device)
    n = recipe.eval_new_tokens
    seqs = target.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=n,
                           min_new_tokens=n, do_sample=False, pad_token_id=target.config.pad_token_id)
    conts = seqs[:, prompts.shape[1]:]
    rep4, distinct = zip(*(degeneracy(c.tolist()) for c in conts))
    # Greedy acceptance: does the draft's argmax equal the target's own next token?
    draft_next = draft(input_ids=seqs[:, :-1].to(draft.device), use_cache=False).logits.argmax(-1)[:, prompts.shape[1] - 1:]
    acceptance = (draft_next == conts).float().mean().item()
    samples = [tokenizer.decode(prompts[i, 1:].tolist()) + " ⟨⟩ " + tokenizer.decode(conts[i].tolist())
               for i in range(3)]
    return {
        "heldout_loss_target": round(losses["target"], 4),
        "heldout_loss_draft": round(losses["draft"], 4),
        "repeated_4gram_share": round(sum(rep4) / len(rep4), 4),
        "distinct_token_share": round(sum(distinct) / len(distinct), 4),
        "greedy_acceptance": round(acceptance, 4),
        "eval_prompts": len(prompts),
        "eval_new_tokens": n,
        "samples": samples,
    }


def write_workload(tokenizer, heldout: list[Document], recipe: Recipe, path: Path) -> None:
    """Held-out code prompts (JSON lines ``{"prompt": ...}``), the pair's default workload."""
    windows = heldout_windows(tokenizer, heldout, recipe.workload_prompts, recipe.prompt_tokens, 7)
    lines = [json.dumps({"prompt": tokenizer.decode(w[1:])}) for w in windows]
    path.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- the build


def weight_hashes(root: Path) -> dict:
    return {f"{part}/model.safetensors": sha256_file(root / part / "model.safetensors") for part in ("target", "draft")}


STEP_KEYS = ("target_steps", "draft_steps")


def _reconcile_build(work: Path, recipe_dict: dict) -> list[dict]:
    """Decide what of a previous build in ``work`` the recipe can still use.

    Same recipe: resume. Only more steps: keep the checkpoints and continue (the cosine schedule
    stretches to the new length, a warm restart); a longer target also invalidates the pool and the
    draft. Anything else: start over. Returns the history of step extensions, kept in pair.json.
    """
    state_path, history_path = work / "recipe.json", work / "history.json"
    history = json.loads(history_path.read_text()) if history_path.exists() else []
    if not state_path.exists():
        return history
    old = json.loads(state_path.read_text())
    if old == recipe_dict:
        return history
    same_but_steps = {k: v for k, v in old.items() if k not in STEP_KEYS} == {
        k: v for k, v in recipe_dict.items() if k not in STEP_KEYS}
    if same_but_steps and all(recipe_dict[k] >= old[k] for k in STEP_KEYS):
        log.warning("%s: steps extended from %s to %s; continuing the previous build", recipe_dict["name"],
                    {k: old[k] for k in STEP_KEYS}, {k: recipe_dict[k] for k in STEP_KEYS})
        history.append({"from": {k: old[k] for k in STEP_KEYS}, "to": {k: recipe_dict[k] for k in STEP_KEYS}})
        if recipe_dict["target_steps"] > old["target_steps"]:
            for name in ("pool.safetensors", "draft.ckpt"):
                (work / name).unlink(missing_ok=True)
        atomic_write_json(history_path, history)
        return history
    log.warning("recipe changed since the last build of %s: starting over", recipe_dict["name"])
    shutil.rmtree(work)
    work.mkdir(parents=True)
    return []


def train_pair(recipe: Recipe, threads: int | None = None, device: str = "cpu") -> Path:
    """Train a pair from its recipe (resuming a previous build) and install it under $LTD_HOME.

    ``device`` is where training runs (``cuda`` trains in seconds what a CPU trains in an hour);
    the saved pair is the same kind of checkpoint whatever the device.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if threads:
        torch.set_num_threads(threads)
    device = _train_device(device)
    t0 = time.time()
    work = ltd_home() / "builds" / recipe.name
    work.mkdir(parents=True, exist_ok=True)
    state_path = work / "recipe.json"
    recipe_dict = dataclasses.asdict(recipe)
    history = _reconcile_build(work, recipe_dict)
    atomic_write_json(state_path, recipe_dict)

    docs = load_documents()
    train_docs, heldout_docs = split_documents(docs)
    if recipe.corpus_chars is not None:
        kept, total = [], 0
        for d in train_docs:
            if total >= recipe.corpus_chars:
                break
            kept.append(d)
            total += len(d.text)
        train_docs = kept
        heldout_docs = heldout_docs[: max(4, len(heldout_docs) // 8)]

    tok_dir = work / "tokenizer"
    if (tok_dir / "tokenizer.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    else:
        tokenizer = train_tokenizer(train_docs, recipe.vocab_size, recipe.max_position, tok_dir)
    stream = encode_documents(tokenizer, train_docs)
    log.info("%s: %d training tokens from %d documents", recipe.name, len(stream), len(train_docs))

    target = make_model(recipe.target, recipe, tokenizer, recipe.seed).to(device)
    train_loop(target, lambda g: _lm_loss(target, random_windows(stream, recipe.batch_size, recipe.seq_len + 1, g)),
               recipe.target_steps, recipe.target_lr, recipe, work / "target.ckpt", f"{recipe.name} target")

    pool_path = work / "pool.safetensors"
    if pool_path.exists():
        from safetensors.torch import load_file

        pool = load_file(pool_path)["ids"]
    else:
        from safetensors.torch import save_file

        pool = generate_pool(target, stream, recipe, recipe.seed + 2)
        save_file({"ids": pool.contiguous()}, str(pool_path) + ".tmp")
        Path(str(pool_path) + ".tmp").replace(pool_path)

    draft = make_model(recipe.draft, recipe, tokenizer, recipe.seed + 3).to(device)
    if recipe.draft_from_target:
        init_draft_from_target(draft, target)
    target.eval()
    for p in target.parameters():
        p.requires_grad_(False)

    def draft_loss(g: torch.Generator) -> torch.Tensor:
        half = recipe.batch_size // 2
        real = random_windows(stream, recipe.batch_size - half, recipe.seq_len, g)
        own = pool[torch.randint(0, len(pool), (half,), generator=g)]
        return _kl_loss(draft, target, torch.cat([real, own]))

    train_loop(draft, draft_loss, recipe.draft_steps, recipe.draft_lr, recipe, work / "draft.ckpt",
               f"{recipe.name} draft")

    figures = evaluate_pair(target, draft, tokenizer, heldout_docs, recipe)
    out = _pair_home(recipe.name)
    staging = out.with_name(out.name + ".staging")
    if staging.exists():
        shutil.rmtree(staging)
    for part, model in (("target", target), ("draft", draft)):
        model.save_pretrained(staging / part)
        tokenizer.save_pretrained(staging / part)
    write_workload(tokenizer, heldout_docs, recipe, staging / "prompts_heldout.jsonl")
    import transformers

    meta = {
        "preset": recipe.name,
        "recipe": recipe_dict,
        "step_extensions": history,
        "corpus": corpus_fingerprint(docs),
        "train_documents": len(train_docs),
        "heldout_documents": len(heldout_docs),
        "train_tokens": int(len(stream)),
        "token_ranking": token_ranking(stream, len(tokenizer)),
        "runtime": RUNTIME_DEFAULTS.get(recipe.name, {}),
        "params": {"target": count_params(target), "draft": count_params(draft)},
        "quality": figures,
        "hashes": weight_hashes(staging),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "build_seconds_this_run": round(time.time() - t0, 1),
    }
    atomic_write_json(staging / "pair.json", meta)
    replace_dir(staging, out)
    # a sanity check that what was written loads back the standard way
    AutoModelForCausalLM.from_pretrained(out / "target")
    return out


def _train_device(device: str) -> str:
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PairError(f"--device {device}: torch sees no CUDA device here; build on cpu or install a CUDA torch")
        torch.backends.cuda.matmul.allow_tf32 = True
    return device


def install_shipped(preset: str) -> Path:
    """Copy the pair that ships with the package into $LTD_HOME, checking its hashes."""
    src = SHIPPED_DIR / preset
    if not (src / "pair.json").exists():
        raise PairError(f"no shipped weights for preset {preset!r}: build it with `ltd pair build --preset {preset} --rebuild`")
    meta = json.loads((src / "pair.json").read_text())
    shipped = meta.get("shipped_hashes", meta["hashes"])
    for rel, digest in shipped.items():
        if sha256_file(src / rel) != digest:
            raise PairError(f"shipped weights {src / rel} do not match their recorded hash: reinstall the package")
    out = _pair_home(preset)
    staging = out.with_name(out.name + ".staging")
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(src, staging)
    replace_dir(staging, out)
    return out


def build_pair(preset: str, rebuild: bool = False, threads: int | None = None, device: str = "cpu") -> Path:
    """Make the pair ``preset`` available under $LTD_HOME and return its folder."""
    recipe = recipe_for(preset)
    out = pair_dir(preset)
    if (out / "pair.json").exists() and not rebuild:
        return out
    if not rebuild and (SHIPPED_DIR / preset / "pair.json").exists():
        return install_shipped(preset)
    return train_pair(recipe, threads=threads, device=device)


def ship_pair(preset: str) -> Path:
    """Copy a built pair into the package as fp16 safetensors (the weights that ship in git)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = pair_dir(preset)
    out = SHIPPED_DIR / preset
    dst = out.with_name(out.name + ".staging")
    if dst.exists():
        shutil.rmtree(dst)
    for part in ("target", "draft"):
        model = AutoModelForCausalLM.from_pretrained(src / part, dtype=torch.float16)
        model.save_pretrained(dst / part)
        AutoTokenizer.from_pretrained(src / part).save_pretrained(dst / part)
    shutil.copy(src / "prompts_heldout.jsonl", dst / "prompts_heldout.jsonl")
    meta = json.loads((src / "pair.json").read_text())
    recipe = recipe_for(preset)
    docs = load_documents()
    train_docs, heldout_docs = split_documents(docs)
    tokenizer = AutoTokenizer.from_pretrained(dst / "target")
    if "token_ranking" not in meta:  # pairs built before the ranking was recorded
        meta["token_ranking"] = token_ranking(encode_documents(tokenizer, train_docs), len(tokenizer))
    # the figures of the weights as shipped (fp16, loaded back as fp32)
    target = AutoModelForCausalLM.from_pretrained(dst / "target", dtype=torch.float32).eval()
    draft = AutoModelForCausalLM.from_pretrained(dst / "draft", dtype=torch.float32).eval()
    meta["quality_shipped"] = evaluate_pair(target, draft, tokenizer, heldout_docs, recipe)
    meta.setdefault("step_extensions", [])
    meta["runtime"] = RUNTIME_DEFAULTS.get(preset, {})
    meta["shipped_hashes"] = weight_hashes(dst)
    meta["shipped_dtype"] = "float16"
    atomic_write_json(dst / "pair.json", meta)
    replace_dir(dst, out)
    return out
