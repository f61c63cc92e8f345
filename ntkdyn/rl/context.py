"""What a run is, resolved and checked before any work: the run directory's state, the model and its tokenizer, the
train / evaluation / probe prompts, the fixed shapes, the stage plan. `resolve` raises ConfigError on anything
that would fail later; it writes nothing.

    ctx = resolve(config, mesh=None, reward_fn=None)   # RunContext (frozen)
    ctx = on_devices(ctx)                              # + base params, probe arrays and features h0 on the mesh
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from .. import tasks as _tasks
from ..evaluation import held_out_prompts
from ..examples import make_examples
from ..io import read_json
from ..models.tokenizer import chat_enabled, encode_prompt, eos_ids_of
from ..models.transformer import graphdef_for
from ..tasks.rewards import text_reward_function
from . import checkpoint, rundir
from .config import RESUMABLE_CHANGES, ConfigError, RLConfig
from .recipes import Stage, plan
from .sharding import Sharding
from ..models.lm import features_of
from .step import LossSpec

__all__ = ["RunContext", "resolve", "reference_answer", "on_devices", "EVAL_PROMPT_SEED", "RUN_FILES"]

EVAL_PROMPT_SEED = 0  # the held-out evaluation prompts and the probe set are the same for every run seed
RUN_FILES = rundir.FILES  # any of them: `out` holds a run


@dataclasses.dataclass(frozen=True)
class RunContext:
    """Everything fixed for the whole run (the changing part is trainer.RunState)."""

    c: RLConfig
    out: str  # absolute run directory
    saved: dict | None  # the run's config.json when resuming
    task: Any
    lm: Any  # the starting model (LM; its graphdef is graphdef_for(cfg)); π_ref
    model_dir: str
    train_pool: list[dict]  # train rows {"prompt": ..., **columns} (the columns go to the reward functions)
    eval_prompts: list  # held-out prompts (text or chat messages)
    eval_rows: list[dict]  # the same with their columns
    reward_set: Any  # tasks.RewardSet: the run's reward functions and weights (rollout.rewards calls it)
    stages: list[Stage]
    Tp: int  # prompt length: the longest encoded prompt (one fixed shape, one compilation)
    T_lp: int  # LP-stage teacher-forcing length: prompt + reference answer + EOS
    B: int  # rollouts per step: prompts_per_step * group_size
    B_eval: int  # evaluation samples: eval prompts * eval_samples
    probe_ids: np.ndarray  # (probe_prompts, T) encode_prompt(prompt) + reference answer + [eos], right-padded
    probe_mask: np.ndarray  # (probe_prompts, T) float32, 1 on real tokens
    probe_pos: np.ndarray  # (n, 2) int32 contexts (row, t) predicting an answer token or EOS
    sh: Sharding
    key: Any  # jax.random.key(seed): every draw is fold_in(key, stage id / EVAL_ID, step)
    loss_spec: LossSpec
    eos: tuple  # every id that ends a completion (the config's eos_token_id and the tokenizer's EOS ids)
    pad: int
    reward_fn: Callable[[str, str], float] | None = None  # the legacy reward_fn(prompt, text): NaN is an error
    # on the devices (on_devices)
    base_params: Any = None
    probe_ids_dev: Any = None
    probe_mask_dev: Any = None
    h0: Any = None  # probe features of the starting model

    @property
    def tok(self):
        return self.lm.tokenizer

    @property
    def cfg(self):
        return self.lm.config

    @property
    def gd(self) -> dict:
        """The static model arguments of the jitted functions."""
        return dict(graphdef=self.lm.graphdef, cfg=self.lm.config)


def _saved_config(c: RLConfig, out: str) -> dict | None:
    """The run directory's state: refuse a file or an unasked-for existing run; when resuming, the saved config
    (whose keys must match, except RESUMABLE_CHANGES)."""
    has_run = rundir.holds_run(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"RLConfig.out={c.out!r}: exists and is not a directory")
    if has_run and not (c.resume or c.overwrite):
        raise ConfigError(f"RLConfig.out={c.out!r}: already holds a run; expected resume=True to continue it, "
                          "overwrite=True to replace it, or a fresh directory")
    if c.resume and not has_run:
        raise ConfigError(f"RLConfig.out={c.out!r}: resume=True, but the directory holds no run (no config.json, "
                          "metrics.jsonl or checkpoint): nothing to resume; expected the directory of an earlier "
                          "run, or resume=False to start a fresh one")
    if not c.resume:
        return None
    if not checkpoint.exists(out):
        raise ConfigError(f"RLConfig.out={c.out!r}: resume=True, but the run has no checkpoint (it stopped before "
                          "its first one): nothing to resume from; expected overwrite=True to start it again")
    path = os.path.join(out, "config.json")
    try:
        saved = read_json(path, what="run config", expect=None)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot resume, the run's config is unreadable: {e}") from None
    old = saved.get("config", {})
    diff = {k: (old.get(k), v) for k, v in c.to_dict().items()
            if k not in RESUMABLE_CHANGES and old.get(k) != v and k in old}
    if diff:
        raise ConfigError(f"{path}: cannot resume with a different config; differing keys (saved, given): {diff}")
    return saved


def _load_model(c: RLConfig, saved: dict | None):
    """(lm, model_dir): RLConfig.model (a directory, a .gguf file or a known name, fetched once), else the resumed
    run's, else the default base model; a model without tokenizer files gets the task tokenizer when the
    vocabularies agree."""
    from ..models.known import resolve as resolve_model
    from ..models.config import CheckpointError
    from ..models.lm import load, with_char_tokenizer

    model_dir = c.model
    if model_dir is None and saved is not None:
        model_dir = saved.get("model_dir")
    if model_dir is None:
        from ..default import default_model_dir

        model_dir = default_model_dir(task=c.task)  # the shipped base model of the task ("plus"), else "sum"'s
    if not os.path.isdir(os.fspath(model_dir)):
        try:
            model_dir = resolve_model(os.fspath(model_dir))
        except ValueError as e:  # CheckpointError: the real cause (an unreadable .gguf, an unknown name, ...)
            raise ConfigError(f"RLConfig.model={c.model!r}: {e}") from None
    model_dir = os.path.abspath(os.fspath(model_dir))
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise ConfigError(f"RLConfig.model={c.model!r}: {model_dir} is not a Hugging Face model directory "
                          "(no config.json)")
    try:
        lm = with_char_tokenizer(load(model_dir), f"RLConfig.model={model_dir}")
    except CheckpointError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None
    lm.graphdef = graphdef_for(lm.config)  # one graphdef per config: every run shares the compiled programs
    return lm, model_dir


def _task(c: RLConfig, reward_fn=None, reward_funcs=None):
    """(task, reward set) of the config: tasks.resolve(c.task) and the run's reward functions (`reward_funcs`
    callables from Python, else c.rewards specs, else the task's own; a legacy reward_fn(prompt, text) replaces
    them); ConfigError naming the key on a bad dataset, spec or weight."""
    specs = list(reward_funcs) if reward_funcs else (list(c.rewards) if c.rewards else None)
    if reward_fn is not None and specs:
        raise ConfigError("train: reward_fn and reward_funcs / RLConfig.rewards both given; expected one of them")
    if reward_fn is not None:
        specs = [text_reward_function(reward_fn)]
    try:
        task = _tasks.resolve(c.task, eval_dataset=c.eval_dataset, eval_fraction=c.eval_fraction, seed=c.seed,
                              rewards=specs)
    except (ValueError, OSError, TypeError, _tasks.RewardError) as e:
        raise ConfigError(f"RLConfig.task={c.task!r}: {e}") from None
    try:
        return task, _tasks.reward_set(task, specs, c.reward_weights)
    except (ValueError, OSError, TypeError, _tasks.RewardError) as e:
        key = "reward_weights" if "weight" in str(e) else "rewards"
        raise ConfigError(f"RLConfig.{key}={getattr(c, key)!r}: {e}") from None


def _prompts(c: RLConfig, task):
    """(train rows, evaluation prompts, evaluation rows): the train split (or `train_prompts` of it, or 4096
    drawn ones) and the held-out test prompts, each row {"prompt": ..., **columns}."""
    pool = task.split_rows("train")
    if pool is None or c.train_prompts is not None and c.train_prompts < len(pool):
        n = c.train_prompts or 4096
        pool = task.rows("train", n, seed=0) if pool is None else pool[:n]
    if not pool:
        raise ConfigError(f"RLConfig.task={c.task!r}: no train prompts")
    eval_prompts = held_out_prompts(task, c.eval_prompts, EVAL_PROMPT_SEED, "test")
    return list(pool), eval_prompts, [{"prompt": p, **task.columns(p)} for p in eval_prompts]


def reference_answer(task, prompt, rng) -> str | None:
    """A correct reference answer of `prompt` (the LP stage, the probe set): task.sample_answer with `rng` (the
    generated tasks), else the task's reference (a dataset's `completion` column), else None."""
    try:
        return task.sample_answer(prompt, rng, correct=True)
    except (ValueError, NotImplementedError):
        return task.reference(prompt)


def _shapes(c: RLConfig, task, tok, cfg, stages, train_pool, eval_prompts, sh: Sharding) -> dict:
    train_prompts = [r["prompt"] for r in train_pool]
    try:
        chat_enabled(tok, c.chat_template)
    except ValueError as e:  # chat_template=True without a template
        raise ConfigError(f"RLConfig.chat_template={c.chat_template!r}: {e}") from None
    Tp = max(len(_encode(c, tok, p, split)) for split, ps in (("train", train_prompts), ("test", eval_prompts))
             for p in ps)
    # Tp: the longest encoded prompt ([bos] + prompt for the character tokenizer): one fixed length, one compile
    if Tp + c.max_new_tokens > cfg.max_positions:
        raise ConfigError(f"RLConfig.max_new_tokens={c.max_new_tokens}: prompts of up to {Tp} tokens plus "
                          f"{c.max_new_tokens} new tokens exceed the model's max_positions={cfg.max_positions}")
    T_lp = Tp + max(c.max_new_tokens, 9)  # prompt + answer (<= 8 characters in every character task) + EOS
    if any(s.kind == "lp" for s in stages):
        T_lp = max(T_lp, _reference_len(c, task, tok, train_prompts) + Tp)
    if any(s.kind == "lp" for s in stages) and T_lp > cfg.max_positions:
        raise ConfigError(f"RLConfig.recipe='lp-ft': reference sequences of {T_lp} tokens exceed the "
                          f"model's max_positions={cfg.max_positions}")
    B, B_eval = c.prompts_per_step * c.group_size, len(eval_prompts) * c.eval_samples
    if sh.size > 1:
        for what, b in (("prompts_per_step * group_size", B), ("eval prompts * eval_samples", B_eval)):
            if b % sh.size:
                raise ConfigError(f"RLConfig: {what} = {b} is not divisible by the mesh's {sh.size} devices the "
                                  f"batch is split over (axes {sh.axis!r}); expected a multiple of {sh.size}")
    return dict(Tp=Tp, T_lp=T_lp, B=B, B_eval=B_eval)


def _encode(c: RLConfig, tok, prompt, split: str) -> list[int]:
    """encode_prompt of one prompt of the task; ConfigError naming the prompt when the model's tokenizer cannot
    encode it (characters outside a character tokenizer's set, chat messages without a chat template)."""
    try:
        return encode_prompt(tok, prompt, chat=c.chat_template)
    except (ValueError, TypeError) as e:
        model = f"RLConfig.model={c.model!r}" if c.model is not None else "the default base model"
        shown = repr(prompt) if len(repr(prompt)) <= 100 else repr(prompt)[:97] + "..."
        raise ConfigError(f"RLConfig.task={c.task!r}: the {split} prompt {shown} cannot be encoded by the "
                          f"tokenizer of {model}: {e}") from None


def _reference_len(c: RLConfig, task, tok, prompts) -> int:
    """Tokens of the longest reference answer + EOS over `prompts` (+ 8 tokens of margin for generated tasks,
    whose LP stage draws other correct answers); 0 for a character task (its answers are <= 8 characters).
    ConfigError when a prompt has no reference (recipe lp-ft needs one: a dataset's `completion` column)."""
    if c.task in _tasks.names():
        return 0
    rng, longest = np.random.default_rng(0), 0
    for p in prompts:
        ref = reference_answer(task, p, rng)
        if ref is None:
            raise ConfigError(f"RLConfig.recipe={c.recipe!r}: the LP stage needs a reference answer for every train "
                              f"prompt; task {c.task!r} has none for {p!r} (a dataset needs a 'completion' column)")
        longest = max(longest, len(tok.encode(ref)) + 1)
    return longest + (0 if isinstance(task, _tasks.DatasetTask) else 8)


def _probe_set(c: RLConfig, task, tok, cfg, eval_prompts) -> dict:
    """The probe set: the first `probe_prompts` evaluation prompts, each with one correct reference answer."""
    probe_prompts = eval_prompts[: c.probe_prompts]
    rng = np.random.default_rng([EVAL_PROMPT_SEED, 7])
    answers = [reference_answer(task, p, rng) or "" for p in probe_prompts]  # none: the probe predicts EOS alone
    ids, loss_mask, real = make_examples(task, tok, probe_prompts, answers, chat=c.chat_template, real_mask=True)
    if ids.shape[1] > cfg.max_positions:
        raise ConfigError(f"probe sequences of {ids.shape[1]} tokens exceed max_positions")
    r, t = np.nonzero(loss_mask[:, 1:])  # contexts (row, t) predicting an answer token or EOS
    return dict(probe_ids=ids, probe_mask=real, probe_pos=np.stack([r, t], 1).astype(np.int32))


def resolve(c: RLConfig, mesh=None, reward_fn=None, reward_funcs=None, model=None) -> RunContext:
    """The RunContext of config `c` (ConfigError on anything that would fail later; nothing is written). model:
    (lm, model_dir) already loaded for an identical RLConfig.model (the other lanes of a batched run share it)."""
    out = os.path.abspath(os.fspath(c.out))
    task, reward_set = _task(c, reward_fn, reward_funcs)
    saved = _saved_config(c, out)
    lm, model_dir = _load_model(c, saved) if model is None else model
    sh = Sharding(mesh)
    train_pool, eval_prompts, eval_rows = _prompts(c, task)
    stages = plan(c, len(train_pool))
    if saved is not None:
        checkpoint.check_resumable(out, stages)
    cfg = lm.config
    return RunContext(
        c=c, out=out, saved=saved, task=task, lm=lm, model_dir=model_dir, train_pool=train_pool,
        eval_prompts=eval_prompts, eval_rows=eval_rows, reward_set=reward_set, stages=stages,
        **_shapes(c, task, lm.tokenizer, cfg, stages, train_pool, eval_prompts, sh),
        **_probe_set(c, task, lm.tokenizer, cfg, eval_prompts), sh=sh, key=jax.random.key(c.seed),
        loss_spec=LossSpec.of(c), eos=eos_ids_of(lm.tokenizer, cfg), pad=int(cfg.pad_token_id or 0),
        reward_fn=reward_fn)


def on_devices(ctx: RunContext, like: RunContext | None = None) -> RunContext:
    """ctx with the starting params, the probe arrays and the probe features h0 placed on the devices; `like`: a
    context already placed whose model and probe set are ctx's (the lanes of a batched run share them)."""
    if like is not None and like.lm is ctx.lm and np.array_equal(like.probe_ids, ctx.probe_ids):
        return dataclasses.replace(ctx, base_params=like.base_params, probe_ids_dev=like.probe_ids_dev,
                                   probe_mask_dev=like.probe_mask_dev, h0=like.h0)
    base = ctx.sh.place(jax.tree.map(jnp.asarray, ctx.lm.params))
    probe_ids = ctx.sh.replicate(jnp.asarray(ctx.probe_ids))
    return dataclasses.replace(ctx, base_params=base, probe_ids_dev=probe_ids,
                               probe_mask_dev=ctx.sh.replicate(jnp.asarray(ctx.probe_mask)),
                               h0=features_of(ctx.lm.graphdef, ctx.cfg, base, probe_ids))
