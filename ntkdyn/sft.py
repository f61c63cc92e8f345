"""Supervised fine-tuning (SFT): the base models of the toolkit, and the cross-entropy the LP stage of LP-FT uses.

Data format (used by the WHOLE toolkit: SFT, RL rollouts, LP-FT, the kernels' probe contexts):

* a training sequence is ``[bos] + encode(prompt) + encode(answer) + [eos]`` with the character tokenizer of
  :mod:`ntkdyn.tasks` (pad=0, bos=1, eos=2); the answer follows the prompt directly (``"sum 47:" + "12+35"``);
* batches of sequences are RIGHT-padded with ``pad`` (:func:`make_examples`); the loss mask is 1 on the tokens that
  are prediction targets, the answer tokens and the EOS, and 0 on BOS, the prompt and the padding;
* an RL rollout prompt is ``[bos] + encode(prompt)`` (:func:`prompt_ids`; LEFT-padded for the sampler by
  ``lm.generate``), and the completion is the generated tokens up to and including EOS
  (:func:`decode_completions`). A completion without EOS inside ``max_new_tokens`` is truncated: it scores 0
  (:func:`completion_rewards`) and counts as malformed.

The base policy is trained on answers drawn by :func:`draw_sft_data`: uniformly random correct answers with
probability ``correct_frac`` and task-made near misses otherwise, so that it is DIVERSE (many distinct answers per
prompt) and only PARTLY correct, which leaves room for RL. :func:`train` first spends ``clean_frac`` of its steps
on correct answers only (the task is learned much faster from clean data), then mixes in the near misses. With the
default recipe (:data:`DEFAULTS`) the held-out reward at temperature 1 is about 0.3 on "sum" and 0.57 on
"multiple", with 23-31 distinct answers among 32 samples per prompt (README, "Base models").

Quick start::

    from ntkdyn import sft, tasks
    lm = sft.train("sum", "runs/sum-base")           # AdamW, warmup + cosine; writes a HF model dir + logs
    sft.evaluate(lm, tasks.get("sum"))               # {"reward": ..., "distinct": ..., "frac_malformed": ...}
    ids, loss_mask = sft.make_examples(tasks.get("sum"), lm.tokenizer, ["sum 47:"], ["12+35"])
    sft.sequence_ce_loss(lm, lm.params, ids, loss_mask)   # pure in params (jax.grad works)
"""
from __future__ import annotations

import functools
import json
import math
import os
import shutil
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from . import tasks as _tasks
from .models.config import ModelConfig
from .models.lm import LM

__all__ = [
    "SIZES",
    "FAMILIES",
    "DEFAULTS",
    "prompt_ids",
    "make_examples",
    "sequence_ce_loss",
    "draw_sft_data",
    "default_config",
    "train",
    "decode_completions",
    "completion_rewards",
    "evaluate",
    "add_arguments",
    "run_cli",
]

SIZES = ("default", "tiny")
FAMILIES = ("gpt_neox", "gpt2", "llama")

# The SFT recipe: the defaults of `train` and of `ntkdyn sft` (tuned so that, on held-out prompts sampled at
# temperature 1, the base reward of every binary task lies in [0.2, 0.7] with many distinct answers per prompt).
DEFAULTS = dict(family="gpt_neox", size="default", steps=2500, batch_size=32, lr=2e-3, seed=0, correct_frac=0.6,
                clean_frac=0.6, warmup=100, weight_decay=0.01, log_every=50, eval_prompts=64, eval_samples=32)

CORRECT = 0.9  # reward at or above which a completion is in the task's correct set (tasks.Task.correct_answers)
MAX_NEW_TOKENS = 12  # longest answer (8 characters) + EOS, with room to spare

# size -> (d_model, n_layers, n_heads, d_ff multiple of d_model for the GELU families)
_SHAPES = {"default": (128, 4, 4, 4), "tiny": (64, 2, 4, 3)}


# ----------------------------------------------------------------------------- data


def prompt_ids(tokenizer, prompts) -> list[list[int]]:
    """The RL rollout prompts: ``[bos] + encode(prompt)`` for every prompt (lists of different lengths; pass them
    to ``lm.generate``, which left-pads)."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not one string")
    return [[tokenizer.bos_id] + list(tokenizer.encode(p)) for p in prompts]


def make_examples(task, tokenizer, prompts, answers, length: int | None = None):
    """Teacher-forcing batch of ``[bos] + prompt + answer + [eos]`` sequences.

    Returns ``(ids, loss_mask)``: ``ids`` (B, T) int32 RIGHT-padded with ``tokenizer.pad_id``, and ``loss_mask``
    (B, T) float32, 1 exactly on the answer tokens and the EOS (the prediction targets). ``T`` is the longest
    sequence, or ``length`` when given (a fixed shape avoids recompiling a jitted step).
    """
    prompts, answers = list(prompts), list(answers)
    if len(prompts) != len(answers):
        raise ValueError(f"make_examples: {len(prompts)} prompts but {len(answers)} answers")
    if not prompts:
        raise ValueError("make_examples: no examples")
    if task is not None:
        for p in prompts[:1]:
            task.parse(p)  # a prompt of another task is a caller bug: fail early and clearly
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    rows, starts = [], []
    for p, a in zip(prompts, answers):
        head = [tokenizer.bos_id] + list(tokenizer.encode(p))
        rows.append(head + list(tokenizer.encode(a)) + [tokenizer.eos_id])
        starts.append(len(head))
    T = max(len(r) for r in rows)
    if length is not None:
        if length < T:
            raise ValueError(f"make_examples: length={length} is shorter than the longest sequence ({T} tokens)")
        T = int(length)
    ids = np.full((len(rows), T), pad, np.int32)
    mask = np.zeros((len(rows), T), np.float32)
    for i, (r, s) in enumerate(zip(rows, starts)):
        ids[i, : len(r)] = r
        mask[i, s: len(r)] = 1.0
    return ids, mask


def draw_sft_data(task, n: int, seed: int = 0, correct_frac: float = DEFAULTS["correct_frac"]):
    """``n`` (prompt, answer) pairs: train-split prompts; each answer is ``task.sample_answer(prompt, rng,
    correct=rng.random() < correct_frac)``, i.e. uniform over the correct answers (diverse) with probability
    ``correct_frac`` and a near miss otherwise (partly correct). Deterministic in ``seed``."""
    if isinstance(task, str):
        task = _get_task(task)
    if not 0.0 <= correct_frac <= 1.0:
        raise ValueError(f"correct_frac must be in [0, 1]; got {correct_frac}")
    prompts = task.prompts("train", int(n), seed)
    rng = np.random.default_rng([int(seed), 1])
    answers = [task.sample_answer(p, rng, correct=bool(rng.random() < correct_frac)) for p in prompts]
    return prompts, answers


# ----------------------------------------------------------------------------- loss


def sequence_ce_loss(lm: LM, params, ids, loss_mask):
    """Token-mean cross-entropy  -(1/Σm) Σ_{b,t} m[b,t] log π(ids[b,t] | ids[b,<t])  over the positions with
    ``loss_mask == 1`` (the logits at t-1 predict the token at t). A pure function of ``params``: jax.grad of it
    is the SFT gradient, and restricted to the head it is the LP stage of LP-FT."""
    ids = jnp.asarray(ids, jnp.int32)
    m = jnp.asarray(loss_mask, jnp.float32)[:, 1:]
    z = lm.logits(ids[:, :-1], params=params)  # (B, T-1, V): z at t-1 predicts ids[:, t]
    logp = jax.nn.log_softmax(z.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
    return jnp.sum(nll * m) / jnp.maximum(jnp.sum(m), 1.0)


# ----------------------------------------------------------------------------- models


def default_config(vocab_size: int, family: str = "gpt_neox", size: str = "default", *, bos_token_id: int = 1,
                   eos_token_id: int = 2, pad_token_id: int = 0, max_positions: int = 64) -> ModelConfig:
    """A small decoder for the synthetic tasks.

    ``size="default"``: d_model 128, 4 layers, 4 heads, d_ff 4d (806,656 parameters, gpt_neox, for the 52-token
    character vocabulary); ``size="tiny"``: d_model 64, 2 layers, 4 heads, d_ff 3d (~90k, for tests). ``family``:
    "gpt_neox" (Pythia: untied head, partial rotary 0.25, parallel residual, biases, GELU), "gpt2" (tied head,
    learned positions, gelu_new) or "llama" (RMSNorm, full RoPE, SwiGLU with d_ff ~ 8d/3 so the size matches,
    untied head)."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}; got {family!r}")
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


def _get_task(name):
    try:
        return _tasks.get(name)
    except KeyError:
        raise ValueError(f"unknown task {name!r}; expected one of {_tasks.names()}") from None


def _check_train_args(task_name, out_dir, family, size, steps, batch_size, lr, seed, correct_frac, clean_frac,
                      log_every, warmup, weight_decay, eval_prompts, eval_samples):
    task = _get_task(task_name)
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}; got {family!r}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}; got {size!r}")
    for name, v, lo in (("steps", steps, 1), ("batch_size", batch_size, 1), ("log_every", log_every, 1),
                        ("seed", seed, 0),
                        ("warmup", warmup, 0), ("eval_prompts", eval_prompts, 0), ("eval_samples", eval_samples, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}; got {v!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0; got {lr!r}")
    if not (isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0; got {weight_decay!r}")
    if not (isinstance(correct_frac, (int, float)) and 0.0 <= correct_frac <= 1.0):
        raise ValueError(f"correct_frac must be a number in [0, 1]; got {correct_frac!r}")
    if not (isinstance(clean_frac, (int, float)) and 0.0 <= clean_frac <= 1.0):
        raise ValueError(f"clean_frac must be a number in [0, 1]; got {clean_frac!r}")
    if not isinstance(out_dir, (str, os.PathLike)) or not str(out_dir):
        raise ValueError(f"out_dir must be a directory path; got {out_dir!r}")
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise ValueError(f"out_dir {out_dir} exists and is not a directory")
        if os.listdir(out_dir) and not os.path.isfile(os.path.join(out_dir, "sft_config.json")):
            raise ValueError(f"out_dir {out_dir} exists, is not empty and is not an ntkdyn sft directory "
                             "(no sft_config.json); refusing to replace it")
    return task, out_dir


def _optimizer(steps, lr, warmup, weight_decay):
    import optax

    warmup = min(int(warmup), max(steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps=warmup, decay_steps=max(steps, warmup + 1),
                                                  end_value=lr * 0.05)
    decay_mask = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)  # no decay on biases and norm scales
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=weight_decay, mask=decay_mask))
    return tx, schedule


@functools.lru_cache(maxsize=16)
def _train_step(cfg, steps, lr, warmup, weight_decay):
    """(tx, schedule, jitted step) for one model and optimizer; cached so that repeated runs in one process (task
    sweeps, tests) compile the step once per sequence length."""
    import optax

    tx, schedule = _optimizer(steps, lr, warmup, weight_decay)
    shell = LM(cfg, None)  # any graphdef of cfg merges with the params (graphdefs do not compare equal)

    @jax.jit
    def train_step(params, opt_state, ids, mask):
        loss, grads = jax.value_and_grad(lambda p: sequence_ce_loss(shell, p, ids, mask))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return tx, schedule, train_step


def train(task_name: str = _tasks.DEFAULT_TASK, out_dir: str = "runs/sft", *, family: str = DEFAULTS["family"],
          size: str = DEFAULTS["size"], steps: int = DEFAULTS["steps"], batch_size: int = DEFAULTS["batch_size"],
          lr: float = DEFAULTS["lr"], seed: int = DEFAULTS["seed"], correct_frac: float = DEFAULTS["correct_frac"],
          clean_frac: float = DEFAULTS["clean_frac"], warmup: int = DEFAULTS["warmup"],
          weight_decay: float = DEFAULTS["weight_decay"],
          log_every: int = DEFAULTS["log_every"], eval_prompts: int = DEFAULTS["eval_prompts"],
          eval_samples: int = DEFAULTS["eval_samples"], progress: bool = True) -> LM:
    """Train a base model from scratch on ``task_name`` by SFT and write it to ``out_dir``.

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
    task, out_dir = _check_train_args(task_name, out_dir, family, size, steps, batch_size, lr, seed, correct_frac,
                                      clean_frac, log_every, warmup, weight_decay, eval_prompts, eval_samples)
    args = dict(task=task.name, family=family, size=size, steps=int(steps), batch_size=int(batch_size),
                lr=float(lr), seed=int(seed), correct_frac=float(correct_frac),
                clean_frac=float(clean_frac), warmup=int(warmup),
                weight_decay=float(weight_decay), log_every=int(log_every), eval_prompts=int(eval_prompts),
                eval_samples=int(eval_samples))
    tok = _tasks.CharTokenizer()
    cfg = default_config(tok.vocab_size, family, size, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
                         pad_token_id=tok.pad_id)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(out_dir)}-{os.getpid()}-", dir=parent)
    try:
        lm = _train_in(stage, task, tok, cfg, args, progress)
        os.chmod(stage, 0o755)  # mkdtemp made it private; the result is an ordinary directory
        _replace_dir(stage, out_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return lm


def _train_in(stage, task, tok, cfg, args, progress):
    from tqdm.auto import tqdm

    steps, B = args["steps"], args["batch_size"]
    with open(os.path.join(stage, "sft_config.json"), "w") as f:
        json.dump(dict(args, model=cfg.to_hf(), num_params=None,
                       data_format="[bos] + encode(prompt) + encode(answer) + [eos]; loss on answer + eos",
                       version=_version()), f, indent=2)

    # phase 1 (the first clean_frac of the steps): correct answers only, which teaches the task's structure fast;
    # phase 2: correct answers with probability correct_frac, near misses otherwise (a partly correct policy)
    n_clean = int(round(args["clean_frac"] * steps)) * B
    p1, a1 = draw_sft_data(task, n_clean, seed=args["seed"], correct_frac=1.0)
    p2, a2 = draw_sft_data(task, steps * B - n_clean, seed=args["seed"] + 100_003, correct_frac=args["correct_frac"])
    prompts, answers = p1 + p2, a1 + a2
    ids_all, mask_all = make_examples(task, tok, prompts, answers)  # one fixed T: one compilation
    if ids_all.shape[1] > cfg.max_positions:
        raise ValueError(f"sequences of {ids_all.shape[1]} tokens exceed max_positions={cfg.max_positions}")
    lm = LM.init(cfg, seed=args["seed"], tokenizer=tok)
    tx, schedule, train_step = _train_step(cfg, steps, args["lr"], args["warmup"], args["weight_decay"])

    params, opt_state = lm.params, tx.init(lm.params)
    log_path = os.path.join(stage, "sft_log.jsonl")
    t0 = time.perf_counter()
    pending, last_logged = [], 0
    with open(log_path, "w") as log, tqdm(total=steps, disable=not progress, desc=f"sft {task.name}",
                                          dynamic_ncols=True) as bar:
        for step in range(1, steps + 1):
            sl = slice((step - 1) * B, step * B)
            params, opt_state, loss = train_step(params, opt_state, ids_all[sl], mask_all[sl])
            pending.append(loss)
            if step == 1 or step % args["log_every"] == 0 or step == steps:
                losses = np.asarray(jax.device_get(pending), np.float64)
                bad = np.flatnonzero(~np.isfinite(losses))
                if bad.size:
                    raise ValueError(f"sft {task.name}: non-finite loss {losses[bad[0]]} at step "
                                     f"{last_logged + 1 + int(bad[0])} (lr={args['lr']}); nothing was written")
                rec = dict(step=step, loss=float(losses.mean()), lr=float(schedule(step - 1)),
                           time=round(time.perf_counter() - t0, 3))
                log.write(json.dumps(rec) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{rec['loss']:.4f}")
                bar.update(step - last_logged)
                pending, last_logged = [], step
        lm = lm.replace(jax.device_get(params))
        if args["eval_prompts"]:
            ev = evaluate(lm, task, n_prompts=args["eval_prompts"], samples=args["eval_samples"], seed=args["seed"])
            log.write(json.dumps(dict(step=steps, eval=ev, time=round(time.perf_counter() - t0, 3))) + "\n")
    # the model files go into the stage itself (lm.save writes a fresh directory, so write next to it and move)
    tmp_model = lm.save(os.path.join(stage, ".model"))
    for name in os.listdir(tmp_model):
        os.replace(os.path.join(tmp_model, name), os.path.join(stage, name))
    os.rmdir(tmp_model)
    with open(os.path.join(stage, "sft_config.json")) as f:
        conf = json.load(f)
    conf["num_params"] = lm.num_params
    conf["train_seconds"] = round(time.perf_counter() - t0, 3)
    with open(os.path.join(stage, "sft_config.json"), "w") as f:
        json.dump(conf, f, indent=2)
    return lm


def _replace_dir(src, dst):
    """Rename the finished directory ``src`` to ``dst``, replacing an existing ``dst`` (moved aside first)."""
    if os.path.exists(dst):
        old = src + ".old"
        os.rename(dst, old)
        os.rename(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(src, dst)


def _version():
    try:
        from . import __version__
        return __version__
    except ImportError:  # pragma: no cover
        return None


# ----------------------------------------------------------------------------- evaluation


def decode_completions(tokenizer, tokens, mask, eos_id: int | None = None):
    """Texts of sampled completions (``Generation.tokens`` / ``.mask``, (B, N)): the tokens before EOS, decoded.
    Returns ``(texts, finished)``; ``finished[i]`` is False when row i hit ``max_new_tokens`` without EOS."""
    eos = tokenizer.eos_id if eos_id is None else eos_id
    tokens, mask = np.asarray(tokens), np.asarray(mask)
    texts, finished = [], []
    for row, m in zip(tokens, mask):
        row = row[m.astype(bool)].tolist()
        done = eos in row
        texts.append(tokenizer.decode(row[: row.index(eos)] if done else row))
        finished.append(done)
    return texts, np.asarray(finished, bool)


def completion_rewards(task, prompts, texts, finished) -> np.ndarray:
    """task.reward of each completion; a truncated completion (no EOS) scores 0."""
    return np.asarray([task.reward(p, t) if f else 0.0 for p, t, f in zip(prompts, texts, finished)], np.float64)


def _well_formed(task, text: str) -> bool:
    pattern = getattr(task, "_answer_re", None)
    norm = task.normalize(text)
    return norm is not None and (pattern is None or pattern.fullmatch(norm) is not None)


def evaluate(lm: LM, task, n_prompts: int = 64, samples: int = 32, seed: int = 0, split: str = "test", *,
             max_new_tokens: int = MAX_NEW_TOKENS, temperature: float = 1.0, chunk: int = 1024) -> dict:
    """Sample ``samples`` completions per held-out prompt at ``temperature`` (stopping at EOS) and score them.

    Prompts: ``n_prompts`` of ``split`` (the whole split when it holds fewer, e.g. the 16 test prompts of "sum").
    Returns ``reward`` (mean over all samples), ``reward_std``, ``frac_correct`` (share of samples in the task's
    correct set: reward 1, or >= 0.9 for a graded task; equals ``reward`` for binary tasks), ``distinct`` (distinct
    completions per prompt, mean over prompts), ``distinct_correct`` (distinct completions in the correct set),
    ``answer_space`` (mean size of the correct set per prompt, ``task.answer_space_size``), ``frac_malformed`` (no
    EOS or not in the task's answer format), ``frac_truncated`` (no EOS), ``mean_length`` (completion tokens incl.
    EOS), ``n_prompts`` and ``samples``."""
    from . import metrics

    if isinstance(task, str):
        task = _get_task(task)
    if lm.tokenizer is None:
        raise ValueError("evaluate needs a model with a tokenizer (lm.tokenizer is None)")
    if n_prompts < 1 or samples < 1:
        raise ValueError(f"n_prompts and samples must be >= 1; got {n_prompts}, {samples}")
    pool = task.split_prompts(split)
    prompts = list(pool) if pool is not None and len(pool) <= n_prompts else task.prompts(split, n_prompts, seed)
    tok = lm.tokenizer
    flat = [p for p in prompts for _ in range(samples)]
    ids = prompt_ids(tok, flat)
    texts, finished, lengths = [], [], []
    for i in range(0, len(ids), chunk):
        g = lm.generate(ids[i: i + chunk], max_new_tokens, temperature=temperature, seed=seed + i,
                        stop_token=tok.eos_id)
        t, f = decode_completions(tok, g.tokens, g.mask, tok.eos_id)
        texts += t
        finished.append(f)
        lengths.append(np.asarray(g.mask).sum(1))
    finished = np.concatenate(finished)
    rewards = completion_rewards(task, flat, texts, finished)
    malformed = np.asarray([not (f and _well_formed(task, t)) for t, f in zip(texts, finished)])
    distinct, distinct_ok = [], []
    for j in range(len(prompts)):
        sl = slice(j * samples, (j + 1) * samples)
        distinct.append(metrics.unique_answers(texts[sl]))
        distinct_ok.append(metrics.unique_correct(texts[sl], rewards[sl].tolist(), threshold=CORRECT))
    return dict(reward=float(rewards.mean()), reward_std=float(rewards.std()),
                frac_correct=float((rewards >= CORRECT).mean()), distinct=float(np.mean(distinct)),
                distinct_correct=float(np.mean(distinct_ok)),
                answer_space=float(np.mean([task.answer_space_size(p) for p in prompts])),
                frac_malformed=float(malformed.mean()), frac_truncated=float(1.0 - finished.mean()),
                mean_length=float(np.concatenate(lengths).mean()), n_prompts=len(prompts), samples=int(samples))


# ----------------------------------------------------------------------------- CLI


def add_arguments(p):
    p.add_argument("--task", default=_tasks.DEFAULT_TASK, help=f"task name, one of {_tasks.names()}")
    p.add_argument("--out", required=True, help="output directory (Hugging Face model dir + sft logs)")
    p.add_argument("--family", default=DEFAULTS["family"], choices=FAMILIES)
    p.add_argument("--size", default=DEFAULTS["size"], choices=SIZES)
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="peak learning rate (AdamW, cosine decay)")
    p.add_argument("--warmup", type=int, default=DEFAULTS["warmup"], help="linear warmup steps")
    p.add_argument("--correct-frac", type=float, default=DEFAULTS["correct_frac"],
                   help="share of SFT answers that are correct (the rest are near misses)")
    p.add_argument("--clean-frac", type=float, default=DEFAULTS["clean_frac"],
                   help="share of the steps, at the start, trained on correct answers only")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--eval-prompts", type=int, default=DEFAULTS["eval_prompts"],
                   help="held-out prompts of the final evaluation (0: none)")
    p.add_argument("--eval-samples", type=int, default=DEFAULTS["eval_samples"], help="samples per prompt")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_cli(args) -> int:
    try:
        lm = train(args.task, args.out, family=args.family, size=args.size, steps=args.steps,
                   batch_size=args.batch_size, lr=args.lr, warmup=args.warmup, seed=args.seed, correct_frac=args.correct_frac, clean_frac=args.clean_frac,
                   eval_prompts=args.eval_prompts, eval_samples=args.eval_samples, progress=not args.no_progress)
    except ValueError as e:
        print(f"ntkdyn sft: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {os.path.abspath(args.out)} ({lm.num_params:,} parameters)")
    ev = _last_eval(args.out)
    if ev is not None:
        print(f"held-out evaluation ({ev['n_prompts']} prompts x {ev['samples']} samples, temperature 1):")
        print(json.dumps(ev, indent=2))
    return 0


def _last_eval(out_dir):
    ev = None
    with open(os.path.join(out_dir, "sft_log.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            ev = rec.get("eval", ev)
    return ev
