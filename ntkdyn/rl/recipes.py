"""The three post-training recipes as stage plans (spec section 4).

* "rl":    full-parameter RL for `steps` steps.
* "cf-rl": classifier-first RL. Stage 1: head-only RL (group "head": the backbone ψ stays bit-identical) with the
           same objective, for `head_steps` steps or `head_epochs` epochs over the train prompts (one epoch by
           default, as the paper); stage 2: full RL for `steps` steps.
* "lp-ft": linear probing then fine-tuning. Stage 1: the head fitted by supervised cross-entropy
           (`sft.sequence_ce`) on correct reference answers (`task.sample_answer(correct=True)`), for the same
           stage-1 budget; stage 2: full RL for `steps` steps.

Stage-1 steps come BEFORE the `steps` full-RL steps (global step numbers continue across stages); `steps=0` runs
stage 1 alone. Stage 1 uses `head_lr` (default: `lr`).
"""
from __future__ import annotations

import dataclasses
import math

__all__ = ["RECIPES", "Stage", "plan", "stage1_steps"]

RECIPES = ("rl", "cf-rl", "lp-ft")

# stage ids fold into the PRNG key: a stage's rollouts depend only on (seed, stage id, stage step)
STAGE1_ID, RL_ID, EVAL_ID = 1, 2, 3


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a recipe: `kind` "rl" (policy gradient on rollouts) or "lp" (supervised CE on references);
    `group` the trained parameters ("all", "head", "backbone"); `steps`; `lr`; `stage_id` for the PRNG."""

    name: str  # "stage1" | "rl" (the `stage` field of metrics.jsonl)
    kind: str  # "rl" | "lp"
    group: str
    steps: int
    lr: float
    stage_id: int


def stage1_steps(config, n_train_prompts: int) -> int:
    """Stage-1 length: `head_steps` when given, else ceil(head_epochs · n_train_prompts / prompts_per_step) with
    head_epochs = 1 by default (0 for the "rl" recipe)."""
    if config.recipe == "rl":
        return 0
    if config.head_steps is not None:
        return int(config.head_steps)
    epochs = 1.0 if config.head_epochs is None else float(config.head_epochs)
    return int(math.ceil(epochs * n_train_prompts / config.prompts_per_step))


def plan(config, n_train_prompts: int) -> list[Stage]:
    """The stages of `config.recipe` (stages with 0 steps are dropped, except that a run always has >= 1)."""
    head_lr = config.lr if config.head_lr is None else config.head_lr
    k = stage1_steps(config, n_train_prompts)
    rl = Stage("rl", "rl", "all", int(config.steps), float(config.lr), RL_ID)
    if config.recipe == "rl":
        stages = [rl]
    elif config.recipe == "cf-rl":
        stages = [Stage("stage1", "rl", "head", k, float(head_lr), STAGE1_ID), rl]
    elif config.recipe == "lp-ft":
        stages = [Stage("stage1", "lp", "head", k, float(head_lr), STAGE1_ID), rl]
    else:
        raise ValueError(f"unknown recipe {config.recipe!r}; expected one of {RECIPES}")
    kept = [s for s in stages if s.steps > 0]
    return kept or [stages[-1]]
