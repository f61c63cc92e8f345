"""ntkdyn: learning dynamics of RL post-training of causal LMs, through the empirical NTK split into its
representation (R) and gradient (G) components. See README.md and docs/spec.md.

    import ntkdyn as nd
    lm = nd.load("smollm2-135m-instruct")    # a known name, a Hugging Face directory or a .gguf file
    k = nd.ntk.decompose(lm, ids, pos); r = nd.dynamics.one_step(...); nd.tasks.get("sum")
"""
import importlib

from . import dynamics, metrics, ntk, tasks
from .models import LM, CheckpointError, Generation, ModelConfig, load

__version__ = "0.1.0"
# heavier imports (optax, matplotlib, datasets) on first use
_LAZY = ("rl", "sft", "plots", "default", "reproduce", "experiments", "evaluation", "optim", "io", "cache")
__all__ = ["LM", "CheckpointError", "Generation", "ModelConfig", "load", "load_reward_model", "ntk", "dynamics",
           "metrics", "tasks", *_LAZY]


def load_reward_model(name_or_path, **kw):
    """A sequence-classification reward model (see ntkdyn.models.classifier.load_reward_model)."""
    from .models.classifier import load_reward_model as _load

    return _load(name_or_path, **kw)


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'ntkdyn' has no attribute {name!r}")
