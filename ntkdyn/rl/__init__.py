"""RL post-training with the learning dynamics tracked: RL, classifier-first RL (CF-RL) and LP-FT.

    from ntkdyn.rl import RLConfig, train, train_batch
    summary = train(RLConfig(recipe="cf-rl", task="sum", steps=60, head_steps=8, seed=0, out="runs/cf-rl"))
    summaries = train_batch([RLConfig(..., seed=s, out=f"runs/cf-rl-{s}") for s in range(10)])  # one program

Modules, following the data: `config` (RLConfig, its validation and errors), `recipes` (the stage plans),
`objectives` (the pure pieces: advantages, teacher-forced log-probs, clipped policy-gradient loss, KL estimators),
`step` (the jit-compiled updates and their static specs), `context` (a run resolved and checked before any work),
`rollout` (prompts, rollouts, rewards: one step on the host), `packing` (the plan of the packed update,
RLConfig.pack), `evaluate` (held-out evaluation, probes),
`trackers/` (the dz share, claim 6, the eNTK drift), `lanes` (several seeds as one program), `checkpoint` and
`rundir` (the run directory's files), `trainer` (the loop), `cli` (`ntkdyn rl`).
"""
from . import objectives, recipes
from .config import ConfigError, RLConfig, TrainingError
from .objectives import advantages, completion_logp, kl_penalty, make_optimizer, pg_loss
from .recipes import RECIPES, Stage, plan
from .rundir import TIMING_KEYS, read_metrics
from .trainer import enable_compile_cache, train, train_batch

__all__ = ["RLConfig", "train", "train_batch", "ConfigError", "TrainingError", "RECIPES", "Stage", "plan", "read_metrics",
           "TIMING_KEYS", "enable_compile_cache", "advantages", "completion_logp", "kl_penalty", "pg_loss",
           "make_optimizer", "objectives", "recipes"]
