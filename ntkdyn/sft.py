"""Supervised fine-tuning (SFT): the base models of the toolkit, and the cross-entropy the LP stage of LP-FT uses.

Data format (used by the WHOLE toolkit: SFT, RL rollouts, LP-FT, the kernels' probe contexts):

* a training sequence is ``encode_prompt(prompt) + encode(answer) + [eos]``: with the character tokenizer of
  :mod:`ntkdyn.tasks` (pad=0, bos=1, eos=2) ``[bos] + encode(prompt) + encode(answer) + [eos]``, the answer
  following the prompt directly (``"sum 47:" + "12+35"``); with a chat model's tokenizer the prompt is rendered by
  its chat template (a user turn and the generation prompt) and the answer + EOS (its end-of-turn token) is the
  assistant turn;
* batches of sequences are RIGHT-padded with ``pad`` (:func:`make_examples`); the loss mask is 1 on the tokens that
  are prediction targets, the answer tokens and the EOS, and 0 on BOS, the prompt and the padding;
* an RL rollout prompt is ``encode_prompt(prompt)`` (:func:`prompt_ids`; LEFT-padded for the sampler by
  ``lm.generate``), and the completion is the generated tokens up to and including the first EOS id
  (``evaluation.split_completions``). A completion without EOS inside ``max_new_tokens`` is truncated: it scores 0
  and counts as malformed. Sampling, scoring and :func:`evaluate` live in :mod:`ntkdyn.evaluation` (the one path,
  shared with the RL trainer, pass@k and the one-step experiment); `evaluate` is re-exported here.

The base policy is trained on answers drawn by :func:`draw_sft_data`: uniformly random correct answers with
probability ``correct_frac`` and task-made near misses otherwise, so that it is DIVERSE (many distinct answers per
prompt) and only PARTLY correct, which leaves room for RL. :func:`train` first spends ``clean_frac`` of its steps
on correct answers only (the task is learned much faster from clean data), then mixes in the near misses. With the
default recipe (:class:`SFTConfig`) the held-out reward at temperature 1 is about 0.3 on "sum" and 0.57 on
"multiple", with 23-31 distinct answers among 32 samples per prompt (README, "Base models").

Quick start::

    from ntkdyn import sft, tasks
    lm = sft.train("sum", "runs/sum-base")           # AdamW, warmup + cosine; writes a HF model dir + logs
    lm = sft.train("sum", "runs/smol-sum", model="smollm2-135m-instruct", lr=1e-5, steps=20)   # fine-tune
    sft.evaluate(lm, tasks.get("sum"))               # {"reward": ..., "unique_answers": ..., "frac_malformed": ...}
    ids, loss_mask = sft.make_examples(tasks.get("sum"), lm.tokenizer, ["sum 47:"], ["12+35"])
    sft.sequence_ce_loss(lm, lm.params, ids, loss_mask)   # pure in params (jax.grad works)
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import tasks as _tasks
from .evaluation import CORRECT, MAX_NEW_TOKENS, evaluate, last_eval, task_of
from .io import append_jsonl, atomic_dir, write_json
from .models.config import ModelConfig
from .models.lm import LM, load, with_char_tokenizer
from .models.logprobs import next_token_logp
from .examples import make_examples, prompt_ids
from .models.tokenizer import CHAT_CHOICES, chat_enabled
from .optim import make_optimizer, matrices_only
from .options import add_options, build, choices_of, given, option

__all__ = [
    "SIZES",
    "BASE_FAMILIES",
    "SFTConfig",
    "CORRECT",
    "MAX_NEW_TOKENS",
    "prompt_ids",
    "make_examples",
    "sequence_ce",
    "sequence_ce_loss",
    "draw_sft_data",
    "default_config",
    "train",
    "evaluate",
    "add_arguments",
    "run_cli",
]

SIZES = ("default", "tiny")
BASE_FAMILIES = ("gpt_neox", "gpt2", "llama")  # the families default_config builds (cf. models.config.FAMILIES)

_RUN = ("task", "dataset", "out", "model", "chat")  # SFTConfig fields that are train's own arguments, not the recipe


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """The SFT recipe (`train`'s keywords) and, last, what the command line also names (task or dataset, out, model,
    chat template); `ntkdyn sft` is generated from the fields. The defaults are tuned so that, on held-out prompts
    sampled at temperature 1, the base reward of every binary task lies in [0.2, 0.7] with many distinct answers
    per prompt. Validated on construction (ValueError naming the field)."""

    family: str = option("gpt_neox", "family of a new base model", choices=BASE_FAMILIES)
    size: str = option("default", "size of a new base model", choices=SIZES)
    steps: int = option(2500, "AdamW steps")
    batch_size: int = option(32, "sequences per step")
    lr: float = option(2e-3, "peak learning rate (AdamW, linear warmup, cosine decay to 5%)")
    seed: int = option(0, "seed of the initialisation and of the SFT data")
    correct_frac: float = option(0.6, "share of SFT answers that are correct (the rest are near misses)")
    clean_frac: float = option(0.6, "share of the steps, at the start, trained on correct answers only")
    warmup: int = option(100, "linear warmup steps")
    weight_decay: float = option(0.01, "AdamW weight decay (on the matrices)")
    log_every: int = option(50, "steps between sft_log.jsonl records")
    eval_prompts: int = option(64, "held-out prompts of the final evaluation (0: none)")
    eval_samples: int = option(32, "samples per evaluation prompt")
    task: str = option(_tasks.DEFAULT_TASK, "task name (a built-in task)")
    dataset: str | None = option(None, "train on a dataset's prompt + completion columns instead of --task (JSONL, "
                                 "JSON, CSV, Parquet or a directory saved by datasets; no reward evaluation)")
    out: str | None = option(None, "output directory (Hugging Face model dir + sft logs); required")
    model: str | None = option(None, "fine-tune this model (a directory, a .gguf file or a known name such as "
                               "smollm2-135m-instruct) instead of training a new one (--family / --size)")
    chat: bool | None = option(None, "render prompts with the tokenizer's chat template (auto: when it has one)",
                               flag="--chat-template", choices=CHAT_CHOICES)

    def __post_init__(self):
        for name in ("family", "size"):
            choices = choices_of(SFTConfig)[name]
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}; got {getattr(self, name)!r}")
        for name, lo in (("steps", 1), ("batch_size", 1), ("log_every", 1), ("seed", 0), ("warmup", 0),
                         ("eval_prompts", 0), ("eval_samples", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}; got {v!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0; got {self.lr!r}")
        if not (isinstance(self.weight_decay, (int, float)) and math.isfinite(self.weight_decay)
                and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0; got {self.weight_decay!r}")
        for name in ("correct_frac", "clean_frac"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
                raise ValueError(f"{name} must be a number in [0, 1]; got {v!r}")

    def recipe(self) -> dict:
        """The recipe fields (all but task, dataset, out, model, chat), typed, in field order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _RUN}

# size -> (d_model, n_layers, n_heads, d_ff multiple of d_model for the GELU families)
_SHAPES = {"default": (128, 4, 4, 4), "tiny": (64, 2, 4, 3)}


# ----------------------------------------------------------------------------- data


def draw_sft_data(task, n: int, seed: int = 0, correct_frac: float = SFTConfig.correct_frac):
    """``n`` (prompt, answer) pairs: train-split prompts; each answer is ``task.sample_answer(prompt, rng,
    correct=rng.random() < correct_frac)``, i.e. uniform over the correct answers (diverse) with probability
    ``correct_frac`` and a near miss otherwise (partly correct). Deterministic in ``seed``. A dataset task gives
    its train rows' (prompt, ``completion``) pairs instead, drawn with ``seed`` (``correct_frac`` unused)."""
    task = task_of(task)
    if not 0.0 <= correct_frac <= 1.0:
        raise ValueError(f"correct_frac must be in [0, 1]; got {correct_frac}")
    if isinstance(task, _tasks.DatasetTask):
        prompts, completions = task.sft_pairs("train")
        idx = np.random.default_rng([int(seed), 2]).choice(len(prompts), size=int(n), replace=n > len(prompts))
        return [prompts[i] for i in idx], [_tasks.completion_text(completions[i]) for i in idx]
    prompts = task.prompts("train", int(n), seed)
    rng = np.random.default_rng([int(seed), 1])
    answers = [task.sample_answer(p, rng, correct=bool(rng.random() < correct_frac)) for p in prompts]
    return prompts, answers


# ----------------------------------------------------------------------------- loss


def sequence_ce(graphdef, cfg: ModelConfig, params, ids, loss_mask):
    """Token-mean cross-entropy  -(1/Σm) Σ_{b,t} m[b,t] log π(ids[b,t] | ids[b,<t])  over the positions with
    ``loss_mask == 1`` (the logits at t-1 predict the token at t), on arrays and static configs (jit-able). A
    pure function of ``params``: jax.grad of it is the SFT gradient, and restricted to the head it is the LP stage
    of LP-FT."""
    ids = jnp.asarray(ids, jnp.int32)
    m = jnp.asarray(loss_mask, jnp.float32)[:, 1:]
    nll = -next_token_logp(graphdef, cfg, params, ids)  # (B, T-1)
    return jnp.sum(nll * m) / jnp.maximum(jnp.sum(m), 1.0)


def sequence_ce_loss(lm: LM, params, ids, loss_mask):
    """:func:`sequence_ce` of the model ``lm`` with parameters ``params`` (ids checked against its config)."""
    ids = jnp.asarray(ids, jnp.int32)
    lm.check_ids(ids[:, :-1])
    return sequence_ce(lm.graphdef, lm.config, params, ids, loss_mask)


# ----------------------------------------------------------------------------- models


def default_config(vocab_size: int, family: str = "gpt_neox", size: str = "default", *, bos_token_id: int = 1,
                   eos_token_id: int = 2, pad_token_id: int = 0, max_positions: int = 64) -> ModelConfig:
    """A small decoder for the synthetic tasks.

    ``size="default"``: d_model 128, 4 layers, 4 heads, d_ff 4d (806,656 parameters, gpt_neox, for the 52-token
    character vocabulary); ``size="tiny"``: d_model 64, 2 layers, 4 heads, d_ff 3d (~90k, for tests). ``family``:
    "gpt_neox" (Pythia: untied head, partial rotary 0.25, parallel residual, biases, GELU), "gpt2" (tied head,
    learned positions, gelu_new) or "llama" (RMSNorm, full RoPE, SwiGLU with d_ff ~ 8d/3 so the size matches,
    untied head)."""
    if family not in BASE_FAMILIES:
        raise ValueError(f"family must be one of {BASE_FAMILIES}; got {family!r}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}; got {size!r}")
    d, L, H, ff = _SHAPES[size]
    common = dict(vocab_size=int(vocab_size), d_model=d, n_layers=L, n_heads=H, n_kv_heads=H,
                  max_positions=max_positions, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                  pad_token_id=pad_token_id)
    if family == "gpt_neox":
        return ModelConfig(family="gpt_neox", d_ff=ff * d, rotary_pct=0.25, parallel_residual=True,
                           tie_word_embeddings=False, qkv_bias=True, out_bias=True, activation="gelu", **common)
    if family == "gpt2":
        return ModelConfig(family="gpt2", d_ff=ff * d, tie_word_embeddings=True, qkv_bias=True, out_bias=True,
                           activation="gelu_new", **common)
    return ModelConfig(family="llama", model_type="llama", d_ff=16 * round(ff * d * 2 / 3 / 16), rotary_pct=1.0,
                       tie_word_embeddings=False, activation="silu", norm_eps=1e-6, **common)


# ----------------------------------------------------------------------------- training


def _check_out_dir(out_dir):
    if not isinstance(out_dir, (str, os.PathLike)) or not str(out_dir):
        raise ValueError(f"out_dir must be a directory path; got {out_dir!r}")
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise ValueError(f"out_dir {out_dir} exists and is not a directory")
        if os.listdir(out_dir) and not os.path.isfile(os.path.join(out_dir, "sft_config.json")):
            raise ValueError(f"out_dir {out_dir} exists, is not empty and is not an ntkdyn sft directory "
                             "(no sft_config.json); refusing to replace it")
    return out_dir


@functools.lru_cache(maxsize=16)
def _schedule(steps, lr, warmup):
    """Linear warmup to `lr`, then cosine decay to 5% of it at `steps` (one object per setting, so the optimizer
    built on it, and the compiled step, are shared by repeated runs in one process)."""
    warmup = min(int(warmup), max(steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps=warmup, decay_steps=max(steps, warmup + 1),
                                              end_value=lr * 0.05)


def _optimizer(steps, lr, warmup, weight_decay):
    """(tx, schedule): AdamW (b2 0.98) on the schedule, global-norm clip 1, weight decay on the matrices only."""
    schedule = _schedule(steps, lr, warmup)
    tx = make_optimizer("adamw", schedule, None, max_grad_norm=1.0, weight_decay=weight_decay, b2=0.98,
                        decay_mask=matrices_only)
    return tx, schedule


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg", "tx"))
def _train_step(params, opt_state, ids, mask, *, graphdef, cfg, tx):
    """One SFT step: the gradient of :func:`sequence_ce` over all parameters, applied by `tx`."""
    loss, grads = jax.value_and_grad(lambda p: sequence_ce(graphdef, cfg, p, ids, mask))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def train(task_name: str = _tasks.DEFAULT_TASK, out_dir: str = "runs/sft", *, progress: bool = True,
          model: str | None = None, chat: bool | None = None, **recipe) -> LM:
    """Train a base model from scratch on ``task_name`` by SFT (or fine-tune ``model``) and write it to ``out_dir``.
    ``recipe``: the recipe fields of :class:`SFTConfig` (family, size, steps, batch_size, lr, seed, correct_frac,
    clean_frac, warmup, weight_decay, log_every, eval_prompts, eval_samples); the rest keep its defaults.

    ``model``: None trains a new :func:`default_config` model (``family``, ``size``) with the character tokenizer;
    a model directory, .gguf file or known name (``"smollm2-135m-instruct"``) is fine-tuned from its weights with
    its own tokenizer (``family`` / ``size`` are then unused). ``chat``: the chat-template switch of
    :func:`make_examples` (None: on when the tokenizer has a template).

    ``steps`` AdamW steps (warmup then cosine decay to 5% of ``lr``, global-norm clip 1, weight decay on matrices)
    on fresh batches of :func:`draw_sft_data` (``batch_size * steps`` examples, seed ``seed``), in two phases: the
    first ``clean_frac`` of the steps use correct answers only (this teaches the task, e.g. the subtraction behind
    "sum", several times faster than noisy data), the rest mix in near misses with ``1 - correct_frac``
    probability, so the final policy is diverse and only partly correct. ``out_dir`` gets,
    atomically (staged in a hidden sibling and renamed at the end; an existing sft directory there is replaced):
    the Hugging Face model directory with its tokenizer, ``sft_config.json`` (the arguments, the model config,
    the data format) and ``sft_log.jsonl`` (``{"step", "loss", "lr", "time"}`` every ``log_every`` steps, then
    ``{"eval": ...}``, :func:`evaluate` on ``eval_prompts`` held-out prompts; 0 skips it).

    Raises ValueError on bad arguments (before any work) and on a non-finite loss (naming the step); nothing is
    left in ``out_dir`` then.
    """
    rc = build(SFTConfig, recipe, exclude=_RUN, what="SFT recipe key")
    task, out_dir = task_of(task_name), _check_out_dir(out_dir)
    casts = dict(steps=int, batch_size=int, lr=float, seed=int, correct_frac=float, clean_frac=float, warmup=int,
                 weight_decay=float, log_every=int, eval_prompts=int, eval_samples=int)
    args = dict(task=task.name, **{k: casts.get(k, lambda x: x)(v) for k, v in rc.recipe().items()})
    family, size = rc.family, rc.size
    if model is None:
        tok = _tasks.CharTokenizer()
        cfg = default_config(tok.vocab_size, family, size, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
                             pad_token_id=tok.pad_id)
        lm = LM.init(cfg, seed=args["seed"], tokenizer=tok)
    else:
        lm = with_char_tokenizer(load(os.fspath(model)), f"model {model}")  # a directory, .gguf file or known name
        args.update(model=str(model), family=lm.config.family, size=None, chat=chat)
    chat_enabled(lm.tokenizer, chat)  # a bad switch fails before any work
    with atomic_dir(out_dir, what="sft output directory") as stage:  # staged, renamed into place at the end
        return _train_in(stage, task, lm, args, progress, chat)


def _version():
    """The installed ntkdyn version (None when the package metadata is missing)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ntkdyn")
    except PackageNotFoundError:  # pragma: no cover
        return None


def _train_data(task, tok, cfg, args, chat=None):
    """(ids, loss_mask) of all steps * batch_size examples, in training order.

    Phase 1 (the first clean_frac of the steps): correct answers only, which teaches the task's structure fast;
    phase 2: correct answers with probability correct_frac, near misses otherwise (a partly correct policy)."""
    steps, B = args["steps"], args["batch_size"]
    n_clean = int(round(args["clean_frac"] * steps)) * B
    p1, a1 = draw_sft_data(task, n_clean, seed=args["seed"], correct_frac=1.0)
    p2, a2 = draw_sft_data(task, steps * B - n_clean, seed=args["seed"] + 100_003, correct_frac=args["correct_frac"])
    ids_all, mask_all = make_examples(task, tok, p1 + p2, a1 + a2, chat=chat)  # one fixed T: one compilation
    if ids_all.shape[1] > cfg.max_positions:
        raise ValueError(f"sequences of {ids_all.shape[1]} tokens exceed max_positions={cfg.max_positions}")
    return ids_all, mask_all


def _train_in(stage, task, lm, args, progress, chat=None):
    from tqdm.auto import tqdm

    steps, B = args["steps"], args["batch_size"]
    tok, cfg = lm.tokenizer, lm.config
    conf_path, log_path = os.path.join(stage, "sft_config.json"), os.path.join(stage, "sft_log.jsonl")
    fmt = ("chat_template(prompt, add_generation_prompt) + encode(answer) + [eos]; loss on answer + eos"
           if chat_enabled(tok, chat) else "[bos] + encode(prompt) + encode(answer) + [eos]; loss on answer + eos")
    conf = dict({k: v for k, v in args.items() if k != "model"}, model=cfg.to_hf(), num_params=None,
                data_format=fmt, version=_version())
    if "model" in args:
        conf["base_model"] = args["model"]
    write_json(conf_path, conf)
    ids_all, mask_all = _train_data(task, tok, cfg, args, chat)
    tx, schedule = _optimizer(steps, args["lr"], args["warmup"], args["weight_decay"])
    gd = dict(graphdef=lm.graphdef, cfg=cfg, tx=tx)
    params, opt_state = lm.params, tx.init(lm.params)
    t0 = time.perf_counter()
    pending, last_logged = [], 0
    with tqdm(total=steps, disable=not progress, desc=f"sft {task.name}", dynamic_ncols=True) as bar:
        for step in range(1, steps + 1):
            sl = slice((step - 1) * B, step * B)
            params, opt_state, loss = _train_step(params, opt_state, ids_all[sl], mask_all[sl], **gd)
            pending.append(loss)
            if step == 1 or step % args["log_every"] == 0 or step == steps:
                losses = np.asarray(jax.device_get(pending), np.float64)
                bad = np.flatnonzero(~np.isfinite(losses))
                if bad.size:
                    raise ValueError(f"sft {task.name}: non-finite loss {losses[bad[0]]} at step "
                                     f"{last_logged + 1 + int(bad[0])} (lr={args['lr']}); nothing was written")
                rec = dict(step=step, loss=float(losses.mean()), lr=float(schedule(step - 1)),
                           time=round(time.perf_counter() - t0, 3))
                append_jsonl(log_path, rec)
                bar.set_postfix(loss=f"{rec['loss']:.4f}")
                bar.update(step - last_logged)
                pending, last_logged = [], step
    lm = lm.replace(jax.device_get(params))
    if args["eval_prompts"] and not isinstance(task, _tasks.DatasetTask):  # a dataset brings no reward to evaluate
        ev = evaluate(lm, task, n_prompts=args["eval_prompts"], samples=args["eval_samples"], seed=args["seed"],
                      chat=chat)
        append_jsonl(log_path, dict(step=steps, eval=ev, time=round(time.perf_counter() - t0, 3)))
    # the model files go into the stage itself (lm.save writes a fresh directory, so write next to it and move)
    tmp_model = lm.save(os.path.join(stage, ".model"))
    for name in os.listdir(tmp_model):
        os.replace(os.path.join(tmp_model, name), os.path.join(stage, name))
    os.rmdir(tmp_model)
    write_json(conf_path, dict(conf, num_params=lm.num_params, train_seconds=round(time.perf_counter() - t0, 3)))
    return lm


# ----------------------------------------------------------------------------- CLI


def add_arguments(p):
    add_options(p, SFTConfig)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_cli(args) -> int:
    o = given(args, SFTConfig)
    task, dataset, out = o.pop("task", None), o.pop("dataset", None), o.pop("out", None)
    try:
        if dataset is not None and task is not None:
            raise ValueError(f"--dataset {dataset!r} and --task {task!r} both given; expected one")
        if out is None:
            raise ValueError("--out is required (the output directory)")
        lm = train(dataset or task or SFTConfig.task, out, progress=not args.no_progress, **o)
    except ValueError as e:
        print(f"ntkdyn sft: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {os.path.abspath(out)} ({lm.num_params:,} parameters)")
    ev = last_eval(out)
    if ev is not None:
        print(f"held-out evaluation ({ev['n_prompts']} prompts x {ev['samples']} samples, temperature 1):")
        print(json.dumps(ev, indent=2))
    return 0
