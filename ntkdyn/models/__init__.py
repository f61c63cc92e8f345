"""Causal LMs in JAX/Flax NNX (GPT-2, GPT-NeoX/Pythia, Llama/Qwen2) with Hugging Face checkpoints in and out."""
from .config import CheckpointError, ModelConfig
from .lm import LM, check_ids, load
from .padding import pad_left, pad_right
from .sampling import Generation

__all__ = ["CheckpointError", "ModelConfig", "LM", "load", "check_ids", "pad_left", "pad_right", "Generation"]
