"""ntkdyn: learning dynamics of RL post-training of causal LMs, through the empirical NTK split into its
representation (R) and gradient (G) components. See README.md and paper/spec.md."""
from .models import LM, CheckpointError, Generation, ModelConfig, load

__version__ = "0.1.0"
__all__ = ["LM", "CheckpointError", "Generation", "ModelConfig", "load"]
