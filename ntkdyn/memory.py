"""Memory plans: the predicted peak bytes of an RL step and of a kernel request, from the model config and the
run's shapes, before anything is allocated (`ntkdyn plan-memory`; issue #23).

    p = memory.rl_step(cfg, batch=32, prompt_len=44, new_tokens=32, eval_rows=480, group_size=4)
    p.peak, p.phase, p.parts      # bytes, the phase that sets the peak, {component: bytes}
    print(p.table())
    memory.update_bytes(cfg, ...) # the jitted update alone (what compiled.memory_analysis() reports)
    memory.kernel(lm, ids, contexts, output="trace")  # a kernel request: params + ntk.plan's bytes + the result

An RL step has three phases, each on top of what stays resident for the whole run (the current params θ, the
optimizer state, and the starting params θ₀ when a KL term reads them as π_ref, beta > 0):

* update: the jitted step.rl_update. Its inputs θ and the optimizer state (donated: the new state reuses its
  buffers), its outputs θ⁺, the gradients, the activations the backward pass reads and the head's logits
  (logprobs.head_stats: `chunk` tokens at a time, else all B·N at once). θ⁺ takes over θ's buffers (the trainer
  donates them) unless the step is `tracked`: a tracker reads θ after the update (the dz share, claim 6), so θ⁺ is
  a new array. (At the first step of a run with beta > 0, θ is θ₀ and is kept: the same total as θ, θ₀ and a
  donated θ⁺.)
* rollout / evaluation sampling (models.sampling): the KV cache of every row for prompt + new tokens, and the
  logits of one decoding step.
* evaluation scoring (step.confidence): a forward pass over eval_rows rows; only one layer's arrays live, and
  the head's forward blocks (2 (chunk, V) arrays: the logits and the probabilities). With the full logits this
  was the peak of the RL step on SmolLM2 at 8 × 4 × 32 with its default evaluation (480 rows): XLA accounts
  6.04 GB of temporaries for it with chunk 0 and 0.76 GB with chunk 512.

Activations saved for the backward pass, per layer and token (float elements; d = d_model, f = d_ff, hd =
head_dim, H / KV = query / key-value heads, S = the keys a token attends to):

    a = 4 d + 2 (H + 2 KV) hd + (3 if the MLP is gated else 2) f + 2 H S

(the block's inputs and normed inputs, q/k/v before and after RoPE, the MLP's pre-activations, activations and
products, the attention scores and probabilities). With shared prompts (G > 1, not remat) the prompt runs once
per group and the completions attend to the repeated cache, whose keys and values are saved per layer.

With remat the textbook saving is that only each layer's input (d per token) is kept and one layer's activations
exist again during its recomputation; that is the prediction for accelerator backends (not measured here). XLA:CPU
does not realise it (why was not established; one candidate is a schedule that runs the recomputations early):
the compiled update holds as much as the plain pass over all B·(Tp + N − 1) tokens (remat also turns the
shared-prompt pass off).
Measured with memory_analysis on SmolLM2-135M at 8 × 4 rollouts, 44 + 32 tokens: temporaries 4.66 GB with remat,
4.41 GB without remat at G = 1, 2.45 GB without remat at G = 4. On the CPU the prediction for remat is therefore
the plain pass's.

With micro-batches (RLConfig.micro_batches = K) the update runs B / K rows at a time and sums their gradients
into the one gradient buffer: the activations and head blocks are those of B / K rows, the rest unchanged
(SmolLM2, 8 × 4 × (44 + 32), XLA's accounting: temporaries 2.45, 1.67, 1.10, 0.78 GB at K = 1, 2, 4, 8).

The head holds k_head = 3 (chunk, V) blocks at once in the backward pass (the logits, the probabilities, their
cotangent), 2 in a forward pass; with chunk = 0 a block is all B·N tokens. These constants are checked against
XLA's own accounting (compiled.memory_analysis(): arguments + outputs − aliased + temporaries) on the default
model and SmolLM2-135M (tests/test_memory.py, README), within 25 %.

On a mesh (`mesh="data=D,fsdp=F"`, RLConfig.mesh; the placement rules of rl/sharding.py) the plan is per device:
the parameters, the starting parameters, the optimizer state, the new parameters and the gradients are each
device's shard (a matrix / F, a 1-D leaf whole: `params_per_device`), and the update adds the weights FSDP gathers
to use them (the largest layer and the head / embedding matrices, each whole: "update/gathered"); the batch-sized
parts (activations, head blocks, KV caches, scoring) are those of the device's ceil(B / (D·F)) rows. This part is
a prediction from the placement, not checked against a compiled multi-device program.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np

from .models.config import ModelConfig
from .models.logprobs import DEFAULT_CHUNK
from .models.transformer import abstract_params

__all__ = ["MemoryPlan", "n_params", "params_per_device", "rl_step", "update_bytes", "scoring_bytes", "kernel",
           "PYTHIA", "CPU_RUNTIME_BYTES", "add_arguments", "run_cli"]

_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}
_OPT_SLOTS = {"adam": 2, "adamw": 2, "sgd": 0}  # optimizer-state arrays per parameter
K_HEAD_BACKWARD, K_HEAD_FORWARD = 3, 2
# on the CPU the peak is the process's resident memory, which also holds the Python and XLA runtime, the compiled
# programs and the tokenizer: measured 0.92 GB (peak RSS of `ntkdyn rl` on the embedded default model, whose own
# arrays are a few MB)
CPU_RUNTIME_BYTES = 920_000_000


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Predicted bytes: `parts` {component: bytes}, `peak` (the largest phase's total), `phase` (its name) and
    `phases` {phase: total bytes}."""

    what: str
    parts: dict
    phases: dict
    peak: int
    phase: str

    def table(self) -> str:
        rows = [f"{self.what}: predicted peak {_gb(self.peak)} ({self.phase})"]
        rows += [f"  {k:<28} {_gb(v):>10}" for k, v in self.parts.items()]
        rows += [f"  phase {k:<22} {_gb(v):>10}" for k, v in self.phases.items()]
        return "\n".join(rows)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _gb(n: int) -> str:
    return f"{n / 1e9:.3f} GB"


def n_params(cfg: ModelConfig) -> int:
    """The number of parameters of a model of config `cfg` (from the abstract parameter tree: nothing allocated)."""
    return int(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_params(cfg))))


@functools.lru_cache(maxsize=64)
def params_per_device(cfg: ModelConfig, fsdp: int = 1) -> int:
    """Parameters held by one device when they are split over `fsdp` devices by rl/sharding.py's rule (each matrix
    along one axis / F, 1-D leaves and matrices with no divisible axis whole)."""
    from .placement import param_axis

    return int(sum(int(np.prod(x.shape)) // (1 if param_axis(x.shape, fsdp) is None else fsdp)
                   for x in jax.tree.leaves(abstract_params(cfg))))


@functools.lru_cache(maxsize=64)
def _gathered(cfg: ModelConfig, fsdp: int) -> int:
    """Parameters an FSDP device gathers whole to use them at once: the largest layer's and the largest top-level
    matrix (the head or the embedding), less the shards it holds anyway."""
    if fsdp <= 1:
        return 0
    tree = abstract_params(cfg)
    layers = tree["backbone"].get("layers", {})
    per_layer = [sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v)) for v in
                 (layers.values() if isinstance(layers, dict) else layers)] or [0]
    other = [int(np.prod(x.shape)) for path, x in jax.tree_util.tree_leaves_with_path(tree)
             if len(x.shape) >= 2 and "layers" not in jax.tree_util.keystr(path)] or [0]
    return (max(per_layer) + max(other)) * (fsdp - 1) // fsdp


def _mesh_sizes(mesh) -> tuple[int, int]:
    """(D, F) of a mesh string, a {"data": D, "fsdp": F} dict or None (one device)."""
    if mesh is None:
        return 1, 1
    from .rl.sharding import parse_mesh

    m = parse_mesh(mesh) if isinstance(mesh, str) else dict(mesh)
    return _check("mesh data", m.get("data", 1), 1), _check("mesh fsdp", m.get("fsdp", 1), 1)


def _check(name, v, lo=0):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}; got {v!r}")
    return int(v)


def _check_beta(name, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not v >= 0:
        raise ValueError(f"{name} must be a number >= 0; got {v!r}")
    return float(v)


def _layer_elems(cfg: ModelConfig, S: int) -> int:
    """a: the float elements one layer saves for its backward pass per token attending to S keys."""
    gated = cfg.family in ("llama", "gemma3")
    return (4 * cfg.d_model + 2 * (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
            + (3 if gated else 2) * cfg.d_ff + 2 * cfg.n_heads * S)


def _activations(cfg, B, Tp, N, G, remat, backend) -> int:
    """Float elements of the activations the update's backward pass reads (see the module docstring)."""
    T = Tp + N - 1  # teacher-forced tokens per row
    L = cfg.n_layers
    if remat and backend != "cpu":
        return L * B * T * cfg.d_model + B * T * _layer_elems(cfg, T)
    if G > 1 and B % G == 0 and not remat:
        prompt = (B // G) * Tp * _layer_elems(cfg, Tp)
        completion = B * (N - 1) * _layer_elems(cfg, T)
        cache = 2 * B * T * cfg.n_kv_heads * cfg.head_dim  # the repeated keys and values of the prompt + tokens
        return L * (prompt + completion + cache)
    return L * B * T * _layer_elems(cfg, T)


def _head(cfg, tokens, chunk, k) -> int:
    c = tokens if chunk == 0 else min(chunk, tokens)
    return k * c * cfg.vocab_size


def _sampling(cfg, rows, Tp, N) -> int:
    """Float elements of one sampling call: the KV cache of every row, one step's logits and attention scores."""
    S = Tp + N
    cache = 2 * cfg.n_layers * rows * S * cfg.n_kv_heads * cfg.head_dim
    return cache + 3 * rows * cfg.vocab_size + 2 * rows * cfg.n_heads * S


def _scoring(cfg, rows, Tp, N, chunk) -> int:
    """Float elements of a forward-only scoring pass (step.confidence): a layer's input and output and its MLP's
    hidden arrays over every token (2 d + 2 f per token), and the forward head blocks."""
    T = Tp + N - 1
    return rows * T * (2 * cfg.d_model + 2 * cfg.d_ff) + _head(cfg, rows * N, chunk, K_HEAD_FORWARD)


def scoring_bytes(cfg: ModelConfig, *, rows: int, prompt_len: int, new_tokens: int, chunk: int = DEFAULT_CHUNK,
                  dtype: str = "float32") -> int:
    """The bytes of the jitted scoring pass step.confidence over `rows` rows (its params and its temporaries: what
    compiled.memory_analysis() accounts as arguments + temporaries)."""
    E, Tp, N = _check("rows", rows, 1), _check("prompt_len", prompt_len, 1), _check("new_tokens", new_tokens, 1)
    return n_params(cfg) * _BYTES[dtype] + _scoring(cfg, E, Tp, N, _check("chunk", chunk, 0)) * 4


def update_bytes(cfg: ModelConfig, *, batch: int, prompt_len: int, new_tokens: int, group_size: int = 1,
                 remat: bool = False, chunk: int = DEFAULT_CHUNK, optimizer: str = "adam",
                 dtype: str = "float32", backend: str | None = None, mesh=None, micro_batches: int = 1,
                 donate_params: bool = False) -> dict:
    """The jitted update's own bytes (what compiled.memory_analysis() accounts): {"params", "optimizer",
    "new_params", "grads", "activations", "head", "total"}; total = arguments + outputs − donated + temporaries.
    donate_params: the update takes over θ's buffers for θ⁺ (the trainer's jit at an untracked step): new_params 0.
    dtype: the parameters' (gradients and new params alike; the optimizer state is counted in float32).
    backend: "cpu" or an accelerator's (default: jax.default_backend()); it decides what remat saves. mesh: per
    device of that mesh ("data=D,fsdp=F"; module docstring), with "gathered" added. micro_batches
    (RLConfig.micro_batches): the activations and head blocks are those of one micro-batch's rows."""
    B, Tp, N = _check("batch", batch, 1), _check("prompt_len", prompt_len, 1), _check("new_tokens", new_tokens, 1)
    G, chunk = _check("group_size", group_size, 1), _check("chunk", chunk, 0)
    n_micro = _check("micro_batches", micro_batches, 1)
    if optimizer not in _OPT_SLOTS:
        raise ValueError(f"optimizer must be one of {sorted(_OPT_SLOTS)}; got {optimizer!r}")
    if dtype not in _BYTES:
        raise ValueError(f"dtype must be one of {sorted(_BYTES)}; got {dtype!r}")
    D, F = _mesh_sizes(mesh)
    b, P = _BYTES[dtype], params_per_device(cfg, F)
    B = -(-B // (D * F * n_micro))  # the device's rows of one micro-batch
    act_b = 4  # activations are computed in at least float32 (norms and softmax promote)
    parts = {"params": P * b, "optimizer": _OPT_SLOTS[optimizer] * P * 4, "new_params": 0 if donate_params else P * b,
             "grads": P * b,
             "activations": _activations(cfg, B, Tp, N, min(G, B), bool(remat),
                                         backend or jax.default_backend()) * act_b,
             "head": _head(cfg, B * N, chunk, K_HEAD_BACKWARD) * act_b}
    if F > 1:
        parts["gathered"] = _gathered(cfg, F) * b
    parts["total"] = sum(parts.values())
    return parts


def rl_step(cfg: ModelConfig, *, batch: int, prompt_len: int, new_tokens: int, eval_rows: int = 0,
            group_size: int = 1, remat: bool = False, chunk: int = DEFAULT_CHUNK, optimizer: str = "adam",
            dtype: str = "float32", backend: str | None = None, what: str = "RL step", mesh=None,
            micro_batches: int = 1, beta: float = 0.0, tracked: bool = False) -> MemoryPlan:
    """The predicted peak bytes of an RL step of `batch` rollouts (prompts × group_size) of prompt_len prompt
    tokens and new_tokens sampled tokens, with an evaluation of eval_rows rows (0: none), for a model of config
    cfg in `dtype` on `backend` (module docstring: the phases and the constants); per device of `mesh`
    ("data=D,fsdp=F" or {"data": D, "fsdp": F}; None: one device), the update in `micro_batches` parts. beta > 0
    (a KL term) keeps the starting params resident; tracked: a tracker reads θ after this step's update, which
    then writes θ⁺ beside it instead of into θ's buffers."""
    beta = _check_beta("beta", beta)
    u = update_bytes(cfg, batch=batch, prompt_len=prompt_len, new_tokens=new_tokens, group_size=group_size,
                     remat=remat, chunk=chunk, optimizer=optimizer, dtype=dtype, backend=backend, mesh=mesh,
                     micro_batches=micro_batches, donate_params=not tracked)
    D, F = _mesh_sizes(mesh)
    E = -(-_check("eval_rows", eval_rows, 0) // (D * F))
    batch = -(-batch // (D * F))
    b = _BYTES[dtype]
    resident = {"params": u["params"], **({"start_params": u["params"]} if beta > 0 else {}),
                "optimizer": u["optimizer"]}
    if (backend or jax.default_backend()) == "cpu":
        resident["runtime (CPU process)"] = CPU_RUNTIME_BYTES
    parts = dict(resident)
    if "gathered" in u:
        parts["update/gathered"] = u["gathered"]
    if tracked:
        parts["update/new_params"] = u["new_params"]
    parts.update({"update/grads": u["grads"],
                  "update/activations": u["activations"], "update/head": u["head"],
                  "rollout/sampler": _sampling(cfg, batch, prompt_len, new_tokens) * b})
    if E:
        parts["eval/sampler"] = _sampling(cfg, E, prompt_len, new_tokens) * b
        parts["eval/scoring"] = _scoring(cfg, E, prompt_len, new_tokens, chunk) * 4
    base = sum(resident.values())
    phases = {"update": base + sum(v for k, v in parts.items() if k.startswith("update/")),
              "rollout": base + parts["rollout/sampler"]}
    if E:
        phases["evaluation"] = base + max(parts["eval/sampler"], parts["eval/scoring"])
    phase = max(phases, key=phases.get)
    return MemoryPlan(what, parts, phases, int(phases[phase]), phase)


# ----------------------------------------------------------------------------- kernel requests


def kernel(lm, ids_a, pos_a, ids_b=None, pos_b=None, **kw) -> MemoryPlan:
    """The predicted peak bytes of ntk.decompose(lm, ids_a, pos_a, ids_b, pos_b, **kw): the parameters, what the
    chosen method holds at once (ntk.plan's predicted_bytes, from its own budgeted plan) and the result arrays.
    lm may carry abstract parameters (transformer.abstract_params): nothing is computed."""
    from .ntk.api import plan
    from .ntk.request import make_request

    kp = plan(lm, ids_a, pos_a, ids_b, pos_b, **kw)
    req = make_request(lm, ids_a, pos_a, ids_b, pos_b, **{k: v for k, v in kw.items() if k != "method"})
    b = req.itemsize
    na, nb, V = req.na, req.nb, req.cfg.vocab_size
    per_pair = {"full": V * V, "subset": 0 if req.tokens is None else len(req.tokens) ** 2, "trace": 1,
                "hidden": req.cfg.d_model ** 2, "hutchinson": 2}[req.output]
    result = na * nb * (1 + per_pair * (2 if req.tied and req.output != "hidden" else 1)) * b
    params = int(sum(int(np.prod(x.shape)) * _itemsize(x) for x in jax.tree.leaves(req.params)))
    parts = {"params": params, f"method ({kp.method})": int(kp.predicted_bytes), "result": int(result)}
    total = sum(parts.values())
    return MemoryPlan(f"kernel {req.output} of {na} x {nb} contexts", parts, {"kernel": total}, total, "kernel")


def _itemsize(x) -> int:
    return np.dtype(x.dtype).itemsize


# ----------------------------------------------------------------------------- presets and the command line

def _pythia(d, L, H, f, V=50304):
    return ModelConfig(family="gpt_neox", vocab_size=V, d_model=d, n_layers=L, n_heads=H, n_kv_heads=H, d_ff=f,
                       max_positions=2048, rotary_pct=0.25, parallel_residual=True, qkv_bias=True, out_bias=True,
                       activation="gelu", bos_token_id=0, eos_token_id=0)


# the Pythia suite (EleutherAI/pythia-*: config.json's hidden_size, num_hidden_layers, num_attention_heads,
# intermediate_size, vocab_size); the paper's model is Pythia-2.8B
PYTHIA = {"pythia-410m": _pythia(1024, 24, 16, 4096), "pythia-1b": _pythia(2048, 16, 8, 8192),
          "pythia-2.8b": _pythia(2560, 32, 32, 10240), "pythia-6.9b": _pythia(4096, 32, 32, 16384, V=50432)}


def _model_path(model, task=None) -> str:
    """The directory of `model`: None is the embedded default model of `task`, else a known name, a .gguf file or a
    directory (models.known.resolve)."""
    if model is None:
        from .default import default_model_dir
        return default_model_dir(task=task)
    from .models.known import resolve
    return resolve(model)


def _config_of(model, task=None) -> ModelConfig:
    """A preset's (PYTHIA) or a model's ModelConfig (_model_path; its config.json only, no weights)."""
    from .models.config import read_config

    return PYTHIA[model] if model in PYTHIA else read_config(_model_path(model, task))


def add_arguments(p) -> None:
    from .rl.config import RLConfig

    d = {f.name: f.default for f in dataclasses.fields(RLConfig)}
    p.add_argument("--model", default=None, help="a model directory, a .gguf file, a known name or a preset "
                   f"({', '.join(PYTHIA)}); default: the embedded default model. Only its config is read")
    p.add_argument("--task", default=d["task"], help="the RL task whose prompts set the prompt length "
                   f"(default {d['task']}); see --prompt-len")
    p.add_argument("--prompt-len", type=int, default=None, help="prompt tokens per rollout (default: the longest "
                   "of the task's prompts through the model's tokenizer; required for a preset)")
    for name, help_ in (("prompts_per_step", "prompts per step"), ("group_size", "samples per prompt"),
                        ("max_new_tokens", "new tokens per completion"), ("eval_prompts", "evaluation prompts"),
                        ("eval_samples", "samples per evaluation prompt (0 with --eval-prompts 0: no evaluation)"),
                        ("logit_chunk", "tokens per head chunk (0: the full logits)"),
                        ("micro_batches", "micro-batches of the update (RLConfig.micro_batches)")):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=d[name], help=f"{help_} (default {d[name]})")
    p.add_argument("--remat", action="store_true", help="rematerialised layers (RLConfig.remat)")
    p.add_argument("--beta", type=float, default=d["beta"], help="the KL coefficient (RLConfig.beta): > 0 keeps "
                   f"the starting params resident as π_ref (default {d['beta']})")
    p.add_argument("--tracked", action="store_true", help="a step whose params a tracker reads after the update "
                   "(the dz share, claim 6): the new params are written beside the old instead of into them")
    p.add_argument("--optimizer", default=d["optimizer"], choices=sorted(_OPT_SLOTS))
    p.add_argument("--dtype", default="float32", choices=sorted(_BYTES), help="parameter dtype (default float32)")
    p.add_argument("--backend", default=None, help="cpu, gpu or tpu: what remat saves depends on it (default: this "
                   "machine's JAX backend)")
    p.add_argument("--kernel", type=int, default=None, metavar="N", help="plan an eNTK request instead: N "
                   "contexts (one per row of --seq-len tokens), --output of ntk.decompose")
    p.add_argument("--seq-len", type=int, default=64, help="tokens per row of the kernel request (default 64)")
    p.add_argument("--output", default="trace", help="the kernel's output (full, trace, subset, hidden, hutchinson)")
    p.add_argument("--mesh", default=None, help="per device of the mesh 'data=D,fsdp=F' (RLConfig.mesh): params and "
                   "optimizer state / F, the batch / (D*F) (default: one device)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")


def _prompt_len(model, task) -> tuple[int, int]:
    """(the longest prompt of `task`'s train and test prompts as the RL run encodes them with the model's
    tokenizer, the number of test prompts)."""
    from .models.tokenizer import load_tokenizer
    from .rl.config import RLConfig
    from .rl.context import _encode, _prompts, _task

    if model in PYTHIA:
        raise ValueError(f"--prompt-len is required with the preset {model!r} (no tokenizer is read for it)")
    c = RLConfig(model=model, task=task, out="plan-memory")
    tok = load_tokenizer(_model_path(model, task))
    t, _ = _task(c)
    train, test, _ = _prompts(c, t)
    n = max(len(_encode(c, tok, p, s)) for s, ps in (("train", [r["prompt"] for r in train]), ("test", test))
            for p in ps)
    return n, len(test)


def run_cli(args) -> int:
    import json

    for flag, lo in (("prompts_per_step", 1), ("group_size", 1), ("max_new_tokens", 1), ("eval_prompts", 0),
                     ("eval_samples", 0), ("logit_chunk", 0), ("micro_batches", 1)):
        _check("--" + flag.replace("_", "-"), getattr(args, flag), lo)
    _check_beta("--beta", args.beta)
    if args.prompts_per_step % args.micro_batches:
        raise ValueError(f"--micro-batches {args.micro_batches} must divide --prompts-per-step "
                         f"{args.prompts_per_step} (each micro-batch holds whole groups)")
    cfg = _config_of(args.model, args.task)
    if args.kernel is not None:
        from .models.lm import LM
        from .ntk.contexts import contexts_from_mask

        n, T = _check("--kernel", args.kernel, 1), _check("--seq-len", args.seq_len, 2)
        lm = LM(cfg, abstract_params(cfg))
        ids = np.zeros((n, T), np.int32)
        mask = np.zeros((n, T), np.int32)
        mask[:, -1] = 1
        p = kernel(lm, ids, contexts_from_mask(mask), output=args.output)
    else:
        if args.prompt_len is None:
            Tp, n_test = _prompt_len(args.model, args.task)
        else:
            Tp, n_test = _check("--prompt-len", args.prompt_len, 1), args.eval_prompts
        E = min(args.eval_prompts, n_test) * args.eval_samples
        p = rl_step(cfg, batch=args.prompts_per_step * args.group_size, prompt_len=Tp,
                    new_tokens=args.max_new_tokens, eval_rows=E, group_size=args.group_size, remat=args.remat,
                    chunk=args.logit_chunk, optimizer=args.optimizer, dtype=args.dtype, backend=args.backend,
                    mesh=args.mesh, micro_batches=args.micro_batches, beta=args.beta, tracked=args.tracked,
                    what=f"RL step of {args.model or 'the default model'}: {args.prompts_per_step} x "
                         f"{args.group_size} rollouts, {Tp} + {args.max_new_tokens} tokens, eval {E} rows"
                         + (f", update in {args.micro_batches} micro-batches" if args.micro_batches > 1 else "")
                         + (f", KL beta {args.beta:g}" if args.beta > 0 else "") + (", tracked" if args.tracked else "")
                         + (f", per device of the mesh {args.mesh}" if args.mesh else ""))
    print(json.dumps(p.to_dict(), indent=1) if args.json else p.table())
    return 0
