"""A kernel request: what `decompose` (and `plan`) are asked, validated once. Every method reads its inputs from a
`Request` and nothing else.

A side (a or b) is the token rows, the row of every context and its analysed position (ntk.contexts); b is a when
the kernel is symmetric (`sym`). The options are checked here with errors that name the argument.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..models.transformer import require_linear_head
from .contexts import kernel_contexts
from .kernel import OUTPUTS

__all__ = ["Request", "Contexts", "make_request", "params_of", "METHODS", "DEFAULT_MEMORY_BUDGET"]

METHODS = ("auto", "jacobian", "structured")
DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes a method may hold at once (Jacobian blocks, sweep outputs, probe states)


class Contexts(NamedTuple):
    """One side of a kernel: token rows ids (B, T) int32, and per context its row and analysed position (N,)."""

    ids: np.ndarray
    rows: np.ndarray
    pos: np.ndarray


@dataclasses.dataclass(frozen=True)
class Request:
    """A validated kernel request (`make_request`)."""

    graphdef: Any
    cfg: Any  # ModelConfig
    params: dict  # {"backbone", "head"}
    a: Contexts
    b: Contexts  # is `a` when sym
    sym: bool
    output: str  # one of OUTPUTS
    tokens: Any  # S (|S|,) int32 for output="subset", else None
    untied: bool  # report the untied view of a tied head (no cross term)
    memory_budget: int  # bytes held at once (DEFAULT_MEMORY_BUDGET unless given)
    batch_size: int | None  # contexts per chunk (Jacobian) or per sweep (structured); None: from the budget
    chunk: int | None  # cotangents or probes per structured sweep; None: from the budget
    num_probes: int
    seed: int
    mesh: Any  # a jax.sharding.Mesh or None

    @property
    def kind(self) -> str:
        """"probes" for the Hutchinson estimates, "exact" for every other output."""
        return "probes" if self.output == "hutchinson" else "exact"

    @property
    def tied(self) -> bool:
        """Whether the tied cross term X is reported (a tied head, not viewed untied)."""
        return bool(self.cfg.tie_word_embeddings and not self.untied)

    @property
    def na(self) -> int:
        return len(self.a.rows)

    @property
    def nb(self) -> int:
        return len(self.b.rows)

    @property
    def has_bias(self) -> bool:
        return "b" in self.params["head"]

    @property
    def itemsize(self) -> int:
        """Bytes per float of the computation (float32 at least)."""
        return jnp.dtype(jnp.result_type(*jax.tree.leaves(self.params), jnp.float32)).itemsize


def _is_int(x) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, np.integer))


def _check_options(output, method, batch_size, chunk, memory_budget, num_probes, mesh) -> None:
    if output not in OUTPUTS:
        raise ValueError(f"unknown output {output!r}; expected one of {', '.join(OUTPUTS)}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if batch_size is not None and (not _is_int(batch_size) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer (contexts per chunk); got {batch_size!r}")
    if chunk is not None and (not _is_int(chunk) or chunk < 1):
        raise ValueError(f"chunk must be a positive integer (cotangents or probes per sweep); got {chunk!r}")
    if chunk is not None and method == "jacobian":
        raise ValueError("chunk= is an option of method='structured' (cotangents per sweep); the Jacobian method "
                         "takes batch_size= and memory_budget=")
    if mesh is not None and not isinstance(mesh, jax.sharding.Mesh):
        raise ValueError(f"mesh must be a jax.sharding.Mesh or None; got {type(mesh).__name__}")
    if memory_budget is not None and (not _is_int(memory_budget) or memory_budget < 1):
        raise ValueError(f"memory_budget must be a positive number of bytes; got {memory_budget!r}")
    if output == "hutchinson" and (not _is_int(num_probes) or num_probes < 2):
        raise ValueError(f"num_probes must be an integer >= 2 for output='hutchinson'; got {num_probes!r}")


def _subset_tokens(output, tokens, V):
    """The token subset S (int32, (|S|,)) for output="subset"; None otherwise."""
    if output != "subset":
        if tokens is not None:
            raise ValueError(f"tokens is only used with output='subset'; got output={output!r}")
        return None
    if tokens is None:
        raise ValueError("output='subset' needs tokens=S, a 1-D array of token ids")
    S = np.asarray(tokens)
    if S.ndim != 1 or S.size == 0 or not np.issubdtype(S.dtype, np.integer):
        raise ValueError(f"tokens must be a non-empty 1-D array of integer token ids; got shape {S.shape} "
                         f"dtype {S.dtype}")
    if S.min() < 0 or S.max() >= V:
        bad = sorted(set(S[(S < 0) | (S >= V)].tolist()))[:5]
        raise ValueError(f"tokens holds id(s) {bad} outside the vocabulary [0, {V})")
    return jnp.asarray(S, jnp.int32)


def params_of(lm, params):
    """`params`, or lm.params when None; ValueError unless it has the two top-level keys backbone and head."""
    params = lm.params if params is None else params
    if not (isinstance(params, dict) and "backbone" in params and "head" in params):
        raise ValueError("params must be a pytree with the two top-level keys 'backbone' and 'head' "
                         "(like lm.params)")
    return params


def make_request(lm, ids_a, pos_a, ids_b=None, pos_b=None, *, output="full", tokens=None, params=None,
                 batch_size=None, mesh=None, num_probes=64, seed=0, untied=False, memory_budget=None,
                 method="auto", chunk=None) -> Request:
    """The validated Request of `decompose`'s arguments (ValueError naming the argument otherwise)."""
    _check_options(output, method, batch_size, chunk, memory_budget, num_probes, mesh)
    require_linear_head(lm.config, "the eNTK split (ntk.decompose)")
    S = _subset_tokens(output, tokens, lm.config.vocab_size)
    params = params_of(lm, params)
    a, b, sym = kernel_contexts(lm.config, ids_a, pos_a, ids_b, pos_b)
    return Request(graphdef=lm.graphdef, cfg=lm.config, params=params, a=Contexts(*a), b=Contexts(*b), sym=sym,
                   output=output, tokens=S, untied=bool(untied), memory_budget=int(memory_budget or
                                                                                   DEFAULT_MEMORY_BUDGET),
                   batch_size=batch_size, chunk=chunk, num_probes=int(num_probes), seed=int(seed), mesh=mesh)
