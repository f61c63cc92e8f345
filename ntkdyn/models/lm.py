"""The LM facade: config, params {"backbone", "head"}, pure jit-compiled logits/features, sampler, load/save."""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from . import hf
from .config import ModelConfig, read_config
from .padding import pad_left
from .quantize import WEIGHT_TYPES, int8_weights
from .sampling import Generation, sample
from .tokenizer import CharTokenizer, eos_ids_of, load_tokenizer
from .transformer import features, graphdef_for, head_logits, init_params


@partial(jax.jit, static_argnames=("graphdef", "cfg"))
def features_of(graphdef, cfg, params, ids):
    """h (B, T, d) of token rows `ids` (transformer.features without caches), jit-compiled once per shape: what
    lm.features, the kernels' forward passes and the trainer's probe features all call."""
    return features(graphdef, cfg, params, ids)[0]


@partial(jax.jit, static_argnames=("graphdef", "cfg"))
def _logits(graphdef, cfg, params, ids):
    return head_logits(cfg, params["head"], features(graphdef, cfg, params, ids)[0])


class LM:
    """A causal LM: `lm.logits(ids, params=None)` (B,T,V) and `lm.features(ids, params=None)` (B,T,d) are pure
    functions of `params` (jax.grad / jacrev / jvp work through them); `lm.params` = {"backbone", "head"}."""

    def __init__(self, config: ModelConfig, params, tokenizer=None, graphdef=None):
        self.config = config
        self.params = params
        self.tokenizer = tokenizer
        self.graphdef = graphdef if graphdef is not None else graphdef_for(config)

    # ------------------------------------------------------------------ construction
    @classmethod
    def init(cls, config: ModelConfig, seed: int = 0, tokenizer=None) -> "LM":
        _, params = init_params(config, seed)
        return cls(config, params, tokenizer)

    def replace(self, params) -> "LM":
        """The same model with other parameters (shares config, graphdef, tokenizer)."""
        return LM(self.config, params, self.tokenizer, self.graphdef)

    @property
    def num_params(self) -> int:
        return int(sum(x.size for x in jax.tree.leaves(self.params)))

    # ------------------------------------------------------------------ pure functions
    def check_ids(self, ids, name: str = "ids"):
        """Validate token ids against this model (see :func:`check_ids`); a traced value passes through."""
        return check_ids(self.config, ids, name)

    def logits(self, ids, params=None):
        """z = W h + b for every position (soft-capped when the config says so): (B, T, V) float32."""
        return _logits(self.graphdef, self.config, self.params if params is None else params, self.check_ids(ids))

    def features(self, ids, params=None):
        """h: the output of the final norm, what the head reads: (B, T, d)."""
        return features_of(self.graphdef, self.config, self.params if params is None else params, self.check_ids(ids))

    def head(self, h, params=None):
        """Apply the head (W, b, and the config's final soft-capping) to features h (..., d)."""
        return head_logits(self.config, (self.params if params is None else params)["head"], h)

    # ------------------------------------------------------------------ sampling
    def generate(self, prompt_ids, max_new_tokens: int, *, prompt_mask=None, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float = 1.0, stop_token=None, seed: int = 0,
                 key=None, params=None, shared_prompts: int = 1, weights: str = "float32") -> Generation:
        """Sample continuations with a KV cache. `prompt_ids`: (B, Tp) left-padded array (with `prompt_mask`, 1 on
        real tokens) or a list of token lists of different lengths (left-padded here). temperature=0 is greedy.
        stop_token: an id or a sequence of ids (a row stops at the first of them; -1 or [] never stops); default:
        the config's eos_token_id plus the tokenizer's EOS ids (tokenizer.eos_ids_of). shared_prompts = G > 1:
        the rows come in consecutive groups of G identical prompts (several samples per prompt), and each prompt
        is prefilled once (checked here; the samples equal G = 1's up to float rounding of the logits).
        weights="int8": the sampler reads int8 weights with per-column scales (models/quantize.py: up to ~2x the
        float32 decode on an AVX-512 VNNI CPU, an approximation of the float32 policy: its logp and logp_model are
        the int8 model's); the conversion is cached for the LM's own params. Returns Generation(tokens, logp,
        logp_model, mask)."""
        _check_sampling(max_new_tokens, temperature, top_k, top_p)
        if weights not in WEIGHT_TYPES:
            raise ValueError(f"weights={weights!r}; expected one of {WEIGHT_TYPES}")
        if not isinstance(prompt_ids, (np.ndarray, jax.Array)) and not len(prompt_ids):
            raise ValueError("prompt_ids holds no prompt; expected at least one list of token ids")
        ids, mask = pad_left(prompt_ids, self.config.pad_token_id or 0) if prompt_mask is None else (
            np.asarray(prompt_ids), np.asarray(prompt_mask))
        self.check_ids(ids, "prompt_ids")
        _check_groups(ids, mask, shared_prompts)
        if ids.shape[1] + max_new_tokens > self.config.max_positions:
            raise ValueError(f"prompt ({ids.shape[1]}) + max_new_tokens ({max_new_tokens}) exceeds "
                             f"max_positions={self.config.max_positions}")
        stops = np.asarray(eos_ids_of(self.tokenizer, self.config) if stop_token is None else stop_token,
                           np.int64).reshape(-1)
        stops = jnp.asarray(stops if stops.size else [-1], jnp.int32)  # (S,)
        key = jax.random.key(seed) if key is None else key
        graphdef, params = self.graphdef, self.params if params is None else params
        if weights == "int8":
            graphdef, params = self.int8_weights(params)
        return sample(graphdef, self.config, params, jnp.asarray(ids),
                      jnp.asarray(mask), key, max_new_tokens=int(max_new_tokens),
                      temperature=float(temperature), top_k=top_k, top_p=float(top_p), stop_token=stops,
                      pad_id=int(self.config.pad_token_id or 0), greedy=temperature == 0,
                      shared_prompts=int(shared_prompts))

    def int8_weights(self, params=None):
        """(graphdef, params) with int8 weights for sampling (quantize.int8_weights), converted once per params
        object (the last one is kept)."""
        params = self.params if params is None else params
        cached = getattr(self, "_int8", None)
        if cached is None or cached[0] is not params:
            self._int8 = cached = (params, int8_weights(self.config, params))
        return cached[1]

    # ------------------------------------------------------------------ files
    def save(self, path: str, params=None) -> str:
        """Hugging Face layout (config.json + model.safetensors [+ tokenizer]), written atomically."""
        return hf.write_model_dir(path, self.config, self.params if params is None else params, self.tokenizer)


def _check_groups(ids, mask, group) -> None:
    """shared_prompts = group: an integer >= 1 dividing the rows, each run of `group` rows one prompt."""
    if isinstance(group, bool) or not isinstance(group, (int, np.integer)) or group < 1:
        raise ValueError(f"shared_prompts must be an integer >= 1; got {group!r}")
    B = ids.shape[0]
    if B % group:
        raise ValueError(f"shared_prompts={group} must divide the number of prompt rows ({B})")
    if group > 1:
        for name, a in (("prompt_ids", np.asarray(ids)), ("prompt_mask", np.asarray(mask))):
            g = a.reshape(B // group, group, -1)
            bad = np.flatnonzero(~(g == g[:, :1]).all(axis=(1, 2)))
            if bad.size:
                raise ValueError(f"shared_prompts={group}: rows {bad[0] * group}..{bad[0] * group + group - 1} of "
                                 f"{name} are not one prompt repeated; expected consecutive groups of {group} "
                                 "identical rows")


def _check_sampling(max_new_tokens, temperature, top_k, top_p) -> None:
    """Sampler settings in range (no silent clamping): ValueError/TypeError naming the argument."""
    def number(name, v):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name} must be a number; got {v!r} ({type(v).__name__})")
        if not np.isfinite(v):
            raise ValueError(f"{name} must be finite; got {v!r}")

    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)):
        raise TypeError(f"max_new_tokens must be an integer >= 1; got {max_new_tokens!r}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1; got {max_new_tokens}")
    number("temperature", temperature)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0: greedy); got {temperature!r}")
    number("top_p", top_p)
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1]; got {top_p!r}")
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)):
            raise TypeError(f"top_k must be None or an integer >= 1; got {top_k!r}")
        if top_k < 1:
            raise ValueError(f"top_k must be None or an integer >= 1; got {top_k}")


def check_ids(cfg: ModelConfig, ids, name: str = "ids", *, allow_traced: bool = True):
    """Token ids for a model of config `cfg`: a non-empty 2-D integer array inside the vocabulary and the position
    range, returned as int32 (ValueError naming `name` otherwise). A traced value passes through unchecked when
    `allow_traced` (inside jit/grad), else it is refused."""
    if isinstance(ids, jax.core.Tracer):
        if allow_traced:
            return ids
        raise ValueError(f"{name} must be a concrete array of token ids, not a traced value")
    a = np.asarray(ids)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (batch, time) array of token ids; got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must hold integer token ids; got dtype {a.dtype}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {a.shape}); expected at least one row and one token")
    V = cfg.vocab_size
    if a.min() < 0 or a.max() >= V:
        bad = sorted(set(a[(a < 0) | (a >= V)].tolist()))[:5]
        raise ValueError(f"{name} holds token id(s) {bad} out of vocabulary [0, {V})")
    if a.shape[1] > cfg.max_positions:
        raise ValueError(f"{name}: context of {a.shape[1]} tokens is longer than the model's "
                         f"max_positions={cfg.max_positions}")
    return jnp.asarray(a, jnp.int32)


def load(name_or_path: str, dtype=jnp.float32, tokenizer: bool = True) -> LM:
    """Open a model: a Hugging Face directory (config.json + safetensors [+ tokenizer files]), a .gguf file
    (converted once into the cache) or a known model name such as "smollm2-135m-instruct" (fetched and converted
    on first use; see ntkdyn.models.known). Weights stored in bf16/fp16 are computed in `dtype` (float32 by
    default)."""
    from .known import resolve  # known -> gguf -> hf: imported on use, the directory path needs none of it

    path = resolve(name_or_path)
    cfg = read_config(path)
    params = hf.from_hf_state(cfg, hf.read_weights(path), source=path, dtype=dtype)
    tok = load_tokenizer(path) if tokenizer else None
    return LM(cfg, params, tok)


def with_char_tokenizer(lm: LM, source: str = "model") -> LM:
    """`lm` with a tokenizer: a model saved without tokenizer files gets ntkdyn's character tokenizer when the
    vocabularies agree (ValueError otherwise). Training on the synthetic tasks needs one."""
    if lm.tokenizer is None:
        tok = CharTokenizer()
        if tok.vocab_size != lm.config.vocab_size:
            raise ValueError(f"{source}: no tokenizer files, and the model's vocabulary ({lm.config.vocab_size}) is not the "
                             f"character tokenizer's ({tok.vocab_size})")
        lm.tokenizer = tok
    return lm
