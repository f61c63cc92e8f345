"""Causal LMs in JAX/Flax NNX (GPT-2, GPT-NeoX/Pythia, Llama/Qwen2) with Hugging Face checkpoints in and out."""
from .config import CheckpointError, ModelConfig
from .lm import LM, load, pad_left
from .sampling import Generation

__all__ = ["CheckpointError", "ModelConfig", "LM", "load", "pad_left", "Generation"]
