"""ntkdyn: learning dynamics of RL post-training of causal LMs, through the empirical NTK split into its
representation (R) and gradient (G) components. See README.md and docs/spec.md.

    import ntkdyn as nd
    lm = nd.load(path); k = nd.ntk.decompose(lm, ids, pos); r = nd.dynamics.one_step(...); nd.tasks.get("sum")
"""
import importlib

from . import dynamics, metrics, ntk, tasks
from .models import LM, CheckpointError, Generation, ModelConfig, load

__version__ = "0.1.0"
__all__ = ["LM", "CheckpointError", "Generation", "ModelConfig", "load", "ntk", "dynamics", "metrics", "tasks",
           "rl", "sft", "plots", "default", "reproduce"]
_LAZY = ("rl", "sft", "plots", "default", "reproduce")  # heavier imports (optax, matplotlib) on first use


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'ntkdyn' has no attribute {name!r}")
