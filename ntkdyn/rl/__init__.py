"""RL post-training with the learning dynamics tracked: RL, classifier-first RL (CF-RL) and LP-FT.

    from ntkdyn.rl import RLConfig, train
    summary = train(RLConfig(recipe="cf-rl", task="sum", steps=60, head_steps=8, seed=0, out="runs/cf-rl"))

`objectives` holds the pure pieces (advantages, teacher-forced log-probs, clipped policy-gradient loss, KL
estimators, parameter-group optimizers); `recipes` the stage plans; `trainer` the loop, logging and checkpoints.
"""
from . import objectives, recipes
from .objectives import advantages, completion_logp, kl_penalty, make_optimizer, pg_loss
from .recipes import RECIPES, Stage, plan
from .trainer import TIMING_KEYS, ConfigError, RLConfig, TrainingError, enable_compile_cache, read_metrics, train

__all__ = ["RLConfig", "train", "ConfigError", "TrainingError", "RECIPES", "Stage", "plan", "read_metrics",
           "TIMING_KEYS", "enable_compile_cache", "advantages", "completion_logp", "kl_penalty", "pg_loss", "make_optimizer", "objectives",
           "recipes"]
