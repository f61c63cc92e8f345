"""Kernels and one-step dynamics at real-model scale (SmolLM2-135M-Instruct: 134.5M parameters, d 576, 30 layers,
V 49,152, tied head), each figure a ratio to its own lower bound measured in the same process.

Sections (`--only NAME` runs one in this process; without it every section runs in its own subprocess, so that each
peak resident memory (VmHWM) is its own):
  trace    (a) exact tr G (and the tied tr X) of 2 contexts by `ntk.decompose(output="trace")` (the default
           method: structured derivatives), against 2·d plain VJPs of h w.r.t. all parameters (the weight
           gradients written) with their inner products accumulated: the first call (compilation) and a few warm
           calls are timed and the rest extrapolated. Target <= 0.5, compilation included on both sides.
  budget   (e) the same with memory_budget = 2 GB: peak resident memory against 2 GB + the model.
  hutch    (b) `output="hutchinson"`, 16 probes, one a and one b context (rectangular): against 16 × (one plain VJP +
           one plain JVP of h w.r.t. all parameters), compilation included on both sides. Target <= 1.5.
  subset   `output="subset"` over 300 tokens for 2 contexts against 2·300 plain VJPs (same extrapolation as trace).
  onestep  (c) `dynamics.one_step` (Adam) on a batch of 8 sequences with 8 probe contexts, against one optimizer step
           (the same objective's value_and_grad + Adam update, jitted) on the same batch. Target <= 5.
  rl       (d) RL steps/s and generated tokens/s of `ntkdyn.rl.train` against TRL `GRPOTrainer` (benchmarks/rl_bench.py,
           TRL in .benchvenv) on the same checkpoint directory: task "mul", 8 prompts x 4 samples, 32 new tokens, one
           optimizer step per batch (RL_ARGS), ntkdyn's update over packed completions in 4 micro-batches
           (RL_NTKDYN: RLConfig.pack, RLConfig.micro_batches; TRL pads, as it does). Target >= 2x.
  memory   the peak resident memory of (d)'s RL steps, each in its own process: ntkdyn plain, with `--remat`
           (each layer rematerialised in the update's backward pass), with `--micro-batches 8` (the update in 8
           micro-batches) and with both, and TRL's GRPOTrainer; each peak's ratio to TRL's, and s/step.
  profile  RL steps of (d)'s settings phase by phase (rl_step's phases: sampling, transfer, rewards, reference
           log-probs, update = forward/backward + optimizer, metrics), each with its FLOPs (op_flops, update_ops:
           projections, MLP, attention, head) and achieved GFLOP/s, every op class beside the standalone rate of its
           matmul shape; before (update over all max_new_tokens columns) and after (rollout.update_length; and
           packed in micro-batches, RL_NTKDYN), each step against the compute bound measured in the same run
           (bound_flops over the best float32 matmul rate). Also prints a markdown table.
  ops      the update of (d)'s settings XLA op by XLA op: one execution of the compiled rl_update traced with
           jax.profiler on one core and one XLA thread (a subprocess pinned to one CPU, OPS_FLAGS), every op's
           seconds beside its FLOPs read from the module's HLO (hlo_table, op_profile), the matmuls' achieved rate
           against the best single-core float32 matmul measured in the same process. Prints a markdown table.
  xlaflags the XLA CPU dot settings of jaxlib 0.10 (XLA_CANDIDATES), each in its own process: GFLOP/s at the
           step's matmul shapes and the error against float64.
  pages    what writing freshly allocated memory costs on this machine (no model): 1 GiB allocated, written,
           written again and freed, after pauses of 0, 0, 1, 3 and 6 s. On a virtual machine whose balloon driver
           reports free pages to the host, memory freed a few seconds ago is no longer backed and its first write
           pays a host-level fault per page (~9 us against ~0.7 us measured on the 2-core Xeon of issue 28): the
           RL update's temporaries (one ~1.5 GB buffer per XLA execution, mapped and unmapped every call) and
           PyTorch's pay it every step. Records the allocator settings of the environment (rl_bench.machine).
  scaling  RL steps/s of `ntkdyn rl` on meshes (issue 24): the embedded default model (a tiny one: a real model's
           compilations on 4 forced devices would take most of the time; SCALING_ARGS) on 1 device without a mesh
           and with `--mesh data=1` (the cost of a mesh over one device), on 2 and 4 forced CPU devices
           (XLA_FLAGS=--xla_force_host_platform_device_count) with data, fsdp and both, and on 2 processes of one
           CPU device each (jax.distributed on 127.0.0.1); each run its own `ntkdyn rl` process, steps/s the
           median over the steps after the first two (compilation), and its ratio to the one-device run. The CPU
           devices of one host share its cores: this measures the cost of the collectives, not a speed-up.
Every section reports VmHWM (peak resident memory, /proc/self/status) and VmRSS after loading the model; the rl,
profile and xlaflags sections also the CPU model, its SIMD flags and the load average (rl_bench.machine), and rl the
compute bound beside the ratio.

The model is read from `<cache>/models/smollm2-135m-instruct` when it exists (NTKDYN_CACHE or ~/.cache/ntkdyn),
else a random Llama of SmolLM2's shape is built (the timings depend on the shape only). Heavy: run it once.

    python benchmarks/real_bench.py                  # all sections, one JSON line each
    python benchmarks/real_bench.py --only trace     # one section in this process
    python benchmarks/real_bench.py --only profile   # the RL step's profile (SmolLM2; heavy: ~8 min on 2 cores)
    python benchmarks/real_bench.py --only ops       # the update op by op (SmolLM2; ~3 min)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ntkdyn as nd  # noqa: E402
from ntkdyn import dynamics, ntk  # noqa: E402
from ntkdyn.models.transformer import features  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rl_bench import machine  # noqa: E402

NAME = "smollm2-135m-instruct"
SHAPE = dict(family="llama", vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, d_ff=1536,
             max_positions=2048, tie_word_embeddings=True, activation="silu", norm_eps=1e-5, rope_theta=100000.0)
PROMPTS = ("The capital of France is", "Two plus three equals")
SECTIONS = ("trace", "budget", "hutch", "subset", "onestep", "rl", "memory", "profile", "ops", "xlaflags",
            "pages", "scaling")
# (d): rl_bench's machinery with the settings (8 prompts x 4 samples, 32 new tokens, one step per batch)
RL_ARGS = ["--task", "mul", "--prompts", "8", "--group", "4", "--new", "32", "--steps", "6", "--trl-steps", "5",
           "--warmup", "2", "--rounds", "2", "--lr", "1e-5", "--score-truncated"]
RL_NTKDYN = ["--pack", "--micro-batches", "4"]  # section rl: ntkdyn's settings beyond the shared ones (the fastest
# exact update measured on the 2-core Xeon: each micro-batch of 2 groups packed on its own)


def mem_mb():
    """(VmHWM, VmRSS) of this process in MB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmHWM", "VmRSS")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return round(out["VmHWM"]), round(out["VmRSS"])


def run_child(argv, **kw):
    """Run this script again with `argv` (capture_output, text; kw as subprocess.run's): (the last JSON line it
    printed, parsed, or None when it printed none, and the CompletedProcess)."""
    res = subprocess.run([sys.executable, os.path.abspath(__file__), *argv], capture_output=True, text=True, **kw)
    lines = [x for x in res.stdout.splitlines() if x.startswith("{")]
    return (json.loads(lines[-1]) if lines else None), res


def load_model():
    root = os.environ.get("NTKDYN_CACHE", os.path.expanduser("~/.cache/ntkdyn"))
    path = os.path.join(root, "models", NAME)
    if os.path.isdir(path):
        return nd.load(path), path
    return nd.LM.init(nd.ModelConfig(**SHAPE), 0), "random init (SmolLM2 shape)"


def contexts(lm, T=6):
    """Two rows of T tokens (the prompts' tokens, cut or padded with a repeated token), analysed at the last."""
    rows = []
    for p in PROMPTS:
        ids = list(lm.tokenizer.encode(p)) if lm.tokenizer is not None else [17 + 3 * len(rows) + i for i in range(T)]
        rows.append((ids + ids[-1:] * T)[:T])
    return np.asarray(rows, np.int32), np.array([T - 1, T - 1], np.int32)


def _timed(f, *args, warm=3):
    """(seconds of the first call (compilation included), median seconds of `warm` further calls)."""
    t = time.perf_counter()
    jax.block_until_ready(f(*args))
    first = time.perf_counter() - t
    times = []
    for _ in range(warm):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t)
    return first, statistics.median(times)


def _h(lm, ids, p):
    return lambda params: features(lm.graphdef, lm.config, params, jnp.asarray(ids)[None])[0][0, p]


def plain_vjp_pairs(lm, ids, pos):
    """One call = the plain VJPs of h at both contexts along one cotangent row (weight gradients written) and their
    three inner products: (first call seconds, warm median seconds)."""
    ha, hb = _h(lm, ids[0], int(pos[0])), _h(lm, ids[1], int(pos[1]))

    @jax.jit
    def pair(params, u):
        ga = jax.vjp(ha, params)[1](u)[0]
        gb = jax.vjp(hb, params)[1](u)[0]
        dot = lambda x, y: sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y)))  # noqa: E731
        return jnp.stack([dot(ga, ga), dot(ga, gb), dot(gb, gb)])

    u = jax.random.normal(jax.random.key(0), (lm.config.d_model,))
    return _timed(pair, lm.params, u)


def plain_vjp_jvp(lm, ids, pos):
    """A plain VJP of h at context 1 (weight gradient written) and a plain JVP of h at context 0 along it:
    (first call seconds, warm median seconds) of the pair, the lower bound of one Hutchinson probe."""
    ha, hb = _h(lm, ids[0], int(pos[0])), _h(lm, ids[1], int(pos[1]))

    @jax.jit
    def probe(params, u):
        g = jax.vjp(hb, params)[1](u)[0]
        return jax.jvp(ha, (params,), (g,))[1]

    u = jax.random.normal(jax.random.key(0), (lm.config.d_model,))
    return _timed(probe, lm.params, u)


def _decompose_timed(lm, *args, **kw):
    t = time.perf_counter()
    k = ntk.decompose(lm, *args, **kw)
    jax.block_until_ready((k.representation, k.gradient, k.cross))
    return k, time.perf_counter() - t


def _plan(k):
    p = k.plan._asdict()
    p["detail"] = p["detail"]._asdict() if hasattr(p["detail"], "_asdict") else str(p["detail"])
    return p


def section_trace(lm, budget=None):
    ids, pos = contexts(lm)
    d = lm.config.d_model
    k, t = _decompose_timed(lm, ids, pos, output="trace", memory_budget=budget)
    mem = mem_mb()
    out = {"trace_G": np.asarray(k.gradient).tolist(), "trace_X": np.asarray(k.cross).tolist(),
           "seconds": round(t, 2), "plan": _plan(k), "vmhwm_mb_after_kernel": mem[0]}
    if budget is None:
        first, warm = plain_vjp_pairs(lm, ids, pos)
        bound = first + (d - 1) * warm
        out.update(seconds_vjp_pair_first_call=round(first, 3), seconds_vjp_pair_warm=round(warm, 3),
                   seconds_2d_vjps_extrapolated=round(bound, 1), ratio=round(t / bound, 4),
                   bound="2·d plain VJPs (d calls of a jitted pair of VJPs + 3 inner products; first call timed, "
                         "3 warm calls timed, the other d-1 extrapolated from their median)")
    return out


def section_budget(lm):
    return section_trace(lm, budget=2 * 10 ** 9)


def section_hutch(lm, num_probes=16):
    ids, pos = contexts(lm)
    pairs = np.array([[0, pos[0]]]), np.array([[1, pos[1]]])
    k, t = _decompose_timed(lm, ids, pairs[0], ids, pairs[1], output="hutchinson", num_probes=num_probes)
    mem = mem_mb()
    first, warm = plain_vjp_jvp(lm, ids, pos)
    bound = first + (num_probes - 1) * warm
    g = k.gradient
    return {"trace_G": float(g.trace[0, 0]), "trace_G_se": float(g.trace_se[0, 0]), "fro2_G": float(g.fro2[0, 0]),
            "fro2_G_se": float(g.fro2_se[0, 0]), "trace_X": float(k.cross.trace[0, 0]),
            "trace_X_se": float(k.cross.trace_se[0, 0]), "seconds": round(t, 2), "plan": _plan(k),
            "vmhwm_mb_after_kernel": mem[0], "seconds_vjp_jvp_first_call": round(first, 3),
            "seconds_vjp_jvp_warm": round(warm, 3), "seconds_bound": round(bound, 1), "ratio": round(t / bound, 4),
            "bound": f"{num_probes} × (plain VJP + plain JVP) (first call timed, 3 warm timed, the rest extrapolated)"}


def section_subset(lm, n_tokens=300):
    ids, pos = contexts(lm)
    S = np.unique(np.concatenate([ids.ravel(), np.arange(100, 100 + n_tokens)]))[:n_tokens]
    k, t = _decompose_timed(lm, ids, pos, output="subset", tokens=S)
    mem = mem_mb()
    first, warm = plain_vjp_pairs(lm, ids, pos)
    bound = first + (len(S) - 1) * warm
    return {"tokens": len(S), "shape": list(k.gradient.shape), "seconds": round(t, 2), "plan": _plan(k),
            "vmhwm_mb_after_kernel": mem[0], "seconds_bound": round(bound, 1), "ratio": round(t / bound, 4),
            "trace_G_S": float(np.trace(np.asarray(k.gradient)[0, 1])),
            "bound": "2·|S| plain VJPs (pairs, as in trace)"}


def _batch(lm, B=8, T=16):
    """B sequences of T tokens (prompt + completion), completion = the last 8, advantages ±1, 8 probe contexts."""
    rng = np.random.default_rng(0)
    ids = rng.integers(10, lm.config.vocab_size, (B, T)).astype(np.int32)
    mask = np.zeros((B, T), np.int32)
    mask[:, T - 8:] = 1
    adv = np.where(np.arange(B) % 2 == 0, 1.0, -1.0)
    return ids, mask, adv, ids, np.full(B, T - 9, np.int32)


def section_onestep(lm):
    import optax
    ids, mask, adv, pids, ppos = _batch(lm)
    t = time.perf_counter()
    r = dynamics.one_step(lm, ids, mask, adv, pids, ppos, lr=1e-5, optimizer="adam")
    jax.block_until_ready(r.dz_actual)
    first = time.perf_counter() - t
    t = time.perf_counter()
    r = dynamics.one_step(lm, ids, mask, adv, pids, ppos, lr=1e-5, optimizer="adam")
    jax.block_until_ready(r.dz_actual)
    second = time.perf_counter() - t
    mem = mem_mb()
    tx = optax.adam(1e-5)
    w = np.asarray(mask, np.float32) / mask.sum(1, keepdims=True) / len(ids)

    @jax.jit
    def step(params, state, ids, w, adv):
        def loss(p):
            z = lm.head(features(lm.graphdef, lm.config, p, ids)[0], p)
            return -dynamics.policy_gradient_objective(z, ids, w, adv)[0]
        g = jax.grad(loss)(params)
        u, state = tx.update(g, state, params)
        return optax.apply_updates(params, u), state

    sfirst, swarm = _timed(step, lm.params, tx.init(lm.params), jnp.asarray(ids), jnp.asarray(w),
                           jnp.asarray(adv, jnp.float32))
    return {"batch": list(ids.shape), "probes": len(ppos), "seconds_first_call": round(first, 2),
            "seconds_second_call": round(second, 2), "seconds_step_first_call": round(sfirst, 2),
            "seconds_step_warm": round(swarm, 3), "ratio_first_calls": round(first / sfirst, 3),
            "ratio_warm": round(second / swarm, 3), "rel_error": r.rel_error, "vmhwm_mb_after_one_step": mem[0]}


def section_rl(path):
    """(d) RL steps/s and generated tokens/s of `ntkdyn.rl.train` vs TRL GRPOTrainer (benchmarks/rl_bench.py, TRL
    in .benchvenv) on the cached checkpoint directory (TRL reads it with transformers)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import rl_bench

    if not os.path.isdir(path):
        raise SystemExit(f"section rl needs the real checkpoint directory {path}: ntkdyn fetch {NAME}")
    a = rl_bench.parser().parse_args(RL_ARGS + RL_NTKDYN + ["--model", path])
    m = rl_bench.measure(a)
    raw = m.pop("raw")
    out = {"args": " ".join(RL_ARGS + RL_NTKDYN), **m, "ratio": round(m["ratio_steps"], 3),
           "ntkdyn_step_s_per_round": [round(statistics.median(r["step_times"][a.warmup:]), 3) for r in raw["ntkdyn"]],
           "trl_step_s_per_round": [round(statistics.median(r["step_times"][a.warmup:]), 3) for r in raw["trl"]]}
    out.update(compute_bound(path))
    out["ntkdyn_step_over_bound"] = round(m["ntkdyn"]["step_s"] / out["bound_s"], 3)
    out["trl_step_over_bound"] = round(m["trl"]["step_s"] / out["bound_s"], 3)
    return out


def compute_bound(path) -> dict:
    """The compute bound of an RL step of (d)'s settings on this machine, measured now: bound_flops at the run's
    shapes (Tp from the run's own context) over the best float32 matmul rate (matmul_rates), with the machine."""
    from ntkdyn.rl.context import resolve

    c = _profile_config(path, 1)
    ctx = resolve(c)
    rates = matmul_rates()
    peak = peak_rate(rates)
    fl = bound_flops(ctx.lm.num_params, c.prompts_per_step * c.group_size, ctx.Tp, c.max_new_tokens)
    return {"machine": machine(), "matmul_rates": rates, "peak_gflops": peak, "Tp": ctx.Tp,
            "bound_gflop": round(fl / 1e9, 1), "bound_s": round(fl / 1e9 / peak, 3),
            "bound": "6·params·B·(Tp+N) + 2·params·B·N FLOPs (update forward+backward over the padded batch, "
                     "decode of B·N tokens) at the best float32 matmul rate measured in this run"}


MEMORY_SETTINGS = {"plain": [], "remat": ["--remat"], "micro8": ["--micro-batches", "8"],
                   "remat_micro8": ["--remat", "--micro-batches", "8"]}


def section_memory(path):
    """(d)'s RL steps, each setting of MEMORY_SETTINGS and TRL in its own process (rl_bench.run_ntkdyn / run_trl,
    4 and 3 steps): VmHWM, the median s/step after the warm-up steps, each peak's ratio to TRL's, and the load
    average around each run (the step times share the machine with whatever else runs; the peaks do not)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import rl_bench

    if not os.path.isdir(path):
        raise SystemExit(f"section memory needs the real checkpoint directory {path}: ntkdyn fetch {NAME}")
    args = RL_ARGS + ["--model", path, "--steps", "4", "--trl-steps", "3"]  # later flags win in argparse
    out, info = {"args": " ".join(args), "machine": rl_bench.machine()}, None
    for key, extra in MEMORY_SETTINGS.items():
        a = rl_bench.parser().parse_args(args + extra)
        load0 = os.getloadavg()[0]
        r = rl_bench.run_ntkdyn(a)
        info = info or r
        out[key] = {"flags": " ".join(extra), "peak_rss_mb": r["peak_rss_mb"],
                    "step_s_median": round(statistics.median(r["step_times"][a.warmup:]), 3),
                    "load": [load0, os.getloadavg()[0]]}
    a = rl_bench.parser().parse_args(args)
    load0 = os.getloadavg()[0]
    t = rl_bench.run_trl(a, info["chat"], info["expect_ids"], info["order"])
    out["trl"] = {"peak_rss_mb": t["peak_rss_mb"], "step_s_median": round(statistics.median(
        t["step_times"][a.warmup:]), 3), "load": [load0, os.getloadavg()[0]]}
    for key in MEMORY_SETTINGS:
        out[key]["peak_over_trl"] = round(out[key]["peak_rss_mb"] / out["trl"]["peak_rss_mb"], 3)
    return out


# ----------------------------------------------------------------------------- the machine, the compute bound

# the reference matmuls: the update's token count of (d) (32 rows x ~72 tokens) through d x d_ff and d x V
MATMUL_SHAPES = ((2304, 576, 1536), (2304, 576, 49152))
def matmul_rates(shapes=MATMUL_SHAPES, reps=3) -> list[dict]:
    """GFLOP/s of a float32 (m, k) @ (k, n) by a jitted XLA dot and by NumPy (its BLAS), the best of `reps` timed
    calls after one warm-up call, for each (m, k, n)."""
    rng = np.random.default_rng(0)
    f = jax.jit(jnp.matmul)
    out = []
    for m, k, n in shapes:
        a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
        A, B = jnp.asarray(a), jnp.asarray(b)
        rates = {}
        for name, call in (("xla", lambda: jax.block_until_ready(f(A, B))), ("numpy", lambda: np.matmul(a, b))):
            call()
            best = float("inf")
            for _ in range(reps):
                t = time.perf_counter()
                call()
                best = min(best, time.perf_counter() - t)
            rates[name] = 2.0 * m * k * n / best / 1e9
        out.append({"shape": [m, k, n], "xla_gflops": round(rates["xla"], 1), "numpy_gflops": round(rates["numpy"], 1)})
    return out


def peak_rate(rates) -> float:
    """The machine's float32 matmul rate in GFLOP/s: the best of matmul_rates (XLA or NumPy, any shape)."""
    return max(max(r["xla_gflops"], r["numpy_gflops"]) for r in rates)


def _gated(cfg) -> bool:
    return cfg.activation in ("silu", "gelu_pytorch_tanh") or cfg.family in ("llama", "gemma3")


def op_flops(cfg, tokens: int, key_slots: int, head_tokens: int) -> dict:
    """Matmul FLOPs of one forward pass, per class of op: `tokens` tokens through every layer's projections
    (q, k, v, o), MLP and attention (QKᵀ and AV over `key_slots` key slots each: the compiled program scores every
    slot, masked or not), and the head on `head_tokens` tokens."""
    d, L, hd = cfg.d_model, cfg.n_layers, cfg.head_dim
    q, kv = cfg.n_heads * hd, cfg.n_kv_heads * hd
    return {"projections": 2 * L * tokens * (d * (q + 2 * kv) + q * d),
            "mlp": 2 * L * tokens * (3 if _gated(cfg) else 2) * d * cfg.d_ff,
            "attention": 4 * L * tokens * q * key_slots,
            "head": 2 * head_tokens * d * cfg.vocab_size}


def bound_flops(n_params: int, B: int, Tp: int, N: int) -> float:
    """The issue's FLOP count of an RL step, the work any implementation does at the same batch: the update's
    forward and backward over B rows of Tp + N tokens (6 · params per token) plus the decode of B × N tokens
    (2 · params per token)."""
    return 6.0 * n_params * B * (Tp + N) + 2.0 * n_params * B * N


# ----------------------------------------------------------------------------- profile


def _profile_config(path, steps):
    import tempfile

    from ntkdyn.rl import RLConfig

    kv = dict(zip(RL_ARGS[::2], RL_ARGS[1::2]))
    return RLConfig(recipe="rl", task=kv["--task"], model=path, steps=steps, group_size=int(kv["--group"]),
                    prompts_per_step=int(kv["--prompts"]), max_new_tokens=int(kv["--new"]), lr=float(kv["--lr"]),
                    optimizer="adam", advantage="grpo", loss_agg="seq_mean_token_mean", beta=0.0, num_iterations=1,
                    eval_every=0, eval_prompts=2, eval_samples=2, probe_every=0, checkpoint_every=0, seed=0,
                    out=os.path.join(tempfile.gettempdir(), "ntkdyn_profile"), score_truncated=True)


def update_ops(cfg, P, G, Tp, n_up, chunk, rows=None, micro=1, segments=None):
    """Matmul FLOPs per op class of the update (rl_update's value_and_grad: every product of the forward pass 3x,
    forward and its two backward products) at a batch of P prompts x G completions cut to n_up columns, run in
    `micro` micro-batches of P / micro prompts. Each micro-batch runs its prompts once and then its completions'
    n_up - 1 inputs: padded (rows None: B / micro rows over Tp + n_up - 1 key slots, the prompts into a cache as
    long; objectives._shared_prompt_features) or packed into `rows` rows in all, `rows / micro` per micro-batch
    (rl/packing: `segments` prompts' keys, Tp each, then the row's own n_up - 1 slots; the prompts into a cache of
    Tp; objectives._packed_stats). The head runs over the micro-batch's B / micro first tokens plus its input slots
    (padded: B / micro x n_up), in logprobs.head_stats' equal chunks (padded to a multiple of them) and 4x when it
    runs in chunks (their forward rematerialised), else 3x. segments: None is packing.MAX_SEGMENTS."""
    from ntkdyn.rl.packing import MAX_SEGMENTS

    segments = MAX_SEGMENTS if segments is None else segments
    Pm = P // micro
    Bm, W = Pm * G, n_up - 1
    if rows is None:
        slots = Tp + W
        prompt, comp, n_head = op_flops(cfg, Pm * Tp, slots, 0), op_flops(cfg, Bm * W, slots, 0), Bm * n_up
    else:
        Rm = rows // micro
        prompt, comp, n_head = op_flops(cfg, Pm * Tp, Tp, 0), op_flops(cfg, Rm * W, segments * Tp + W, 0), Bm + Rm * W
    out = {k: 3 * micro * (prompt[k] + comp[k]) for k in prompt}
    if chunk and n_head > chunk:
        k = -(-n_head // chunk)
        out["head"] = 4 * micro * op_flops(cfg, 0, 0, k * -(-n_head // k))["head"]
    else:
        out["head"] = 3 * micro * op_flops(cfg, 0, 0, n_head)["head"]
    return out


def _phase_ops(cfg, P, G, Tp, N, n_up, longest, chunk, rows=None, micro=1):
    """FLOPs per op class of the sampler and of the update (rl_step's work at this batch): the sampler prefills
    P prompts once (shared prompts) and runs `longest` decode steps of B rows over Tp + N cache slots, the head
    at every row of every step (the full loop's work: the decode that drops finished rows, sampling.sample's
    compact, does less, so the sampler's achieved rate overstates); the update: update_ops (padded, or packed into `rows` rows; `micro`
    micro-batches)."""
    B = P * G
    pre = op_flops(cfg, P * Tp, Tp + N, B)
    dec = op_flops(cfg, B * longest, Tp + N, B * longest)
    sample = {k: pre[k] + dec[k] for k in pre}
    return {"sample": sample, "update": update_ops(cfg, P, G, Tp, n_up, chunk, rows, micro)}


def _op_rates(cfg, B, update_tokens, chunk):
    """Standalone GFLOP/s (jitted XLA dot, best of 3) of each op class's dominant matmul shape: in the decode
    (B rows) and in the update (`update_tokens` rows; the head in chunks of `chunk`)."""
    d, hd = cfg.d_model, cfg.head_dim
    q, kv = cfg.n_heads * hd, cfg.n_kv_heads * hd
    shapes = {"sample": {"projections": (B, d, q + 2 * kv), "mlp": (B, d, cfg.d_ff), "head": (B, d, cfg.vocab_size)},
              "update": {"projections": (update_tokens, d, q + 2 * kv), "mlp": (update_tokens, d, cfg.d_ff),
                         "head": (min(chunk or update_tokens, update_tokens), d, cfg.vocab_size)}}
    out = {}
    for phase, ops in shapes.items():
        rates = matmul_rates(tuple(ops.values()))
        out[phase] = {op: (list(shape), r["xla_gflops"]) for (op, shape), r in zip(ops.items(), rates)}
    return out


def _profile_run(ctx, bucket, steps):
    """rl_step `steps` times from the starting model with the update's completion bucket `bucket` (the padded
    update: bucket = max_new_tokens): per step its phases' seconds, the update length, the longest completion and
    the packed rows of the update in all (None: padded); and the last step's rollout batch."""
    import functools

    from ntkdyn.rl import rollout
    from ntkdyn.rl.lanes import Lanes
    from ntkdyn.rl.step import opt_init, rl_update, stage_optimizer

    L, stage = Lanes(1), ctx.stages[0]
    tx = stage_optimizer(ctx.c, stage)
    update = functools.partial(rl_update, tx=tx, ls=ctx.loss_spec, group=stage.group, **ctx.gd)
    params, opt_state, baselines = ctx.base_params, opt_init(ctx.base_params, tx=tx), [np.float32(np.nan)]
    saved, rollout.UPDATE_BUCKET = rollout.UPDATE_BUCKET, int(bucket)
    recs = []
    try:
        for s in range(1, steps + 1):
            ph = {}
            t = time.perf_counter()
            params, opt_state, baselines, outs, (_, batch) = rollout.rl_step(
                [ctx], L, stage, s, s, update, params, opt_state, baselines, phases=ph)
            total = time.perf_counter() - t
            m = np.asarray(batch["mask"])
            pk = batch.get("packing")
            recs.append({"step_s": total, "phases": ph, "n_update": int(m.shape[-1]),
                         "rows": None if pk is None else int(np.prod(pk.rows.shape[:-1])),
                         "longest": int(m.sum(-1).max()), "mean_length": float(outs[0]["completions/mean_length"]),
                         "reward": float(outs[0]["reward"]), "loss": float(outs[0]["loss"])})
    finally:
        rollout.UPDATE_BUCKET = saved
    return recs, batch



def _update_parts(ctx, batch, reps=3) -> dict:
    """The update of rl_step taken apart on one rollout batch (warm seconds, best of `reps`): the forward through
    the layers (the shared-prompt pass of objectives.completion_logp, without the head), the forward with the
    chunked head and the loss, value_and_grad of that loss, one optimizer (Adam) step, and the whole jitted
    rl_update; the difference of the last two is the backward pass."""
    import functools

    import optax

    from ntkdyn.rl import objectives as O
    from ntkdyn.rl.step import opt_init, rl_update, stage_optimizer

    gd, ls, stage = ctx.gd, ctx.loss_spec, ctx.stages[0]
    tx = stage_optimizer(ctx.c, stage)

    def best(f, *args):
        jax.block_until_ready(f(*args))
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            jax.block_until_ready(f(*args))
            ts.append(time.perf_counter() - t)
        return round(min(ts), 3)

    def body(p, b):
        B, Tp = b["prompt_ids"].shape
        N = b["completion"].shape[1]
        valid = jnp.concatenate([b["prompt_mask"].astype(bool), jnp.ones((B, N - 1), bool)], axis=1)
        pos = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0).astype(jnp.int32)
        return O._shared_prompt_features(gd["graphdef"], gd["cfg"], p, b["prompt_ids"], b["completion"], pos, valid,
                                         ls.shared_prompts)

    def loss(p, b):
        st = O.completion_logp(gd["graphdef"], gd["cfg"], p, b["prompt_ids"], b["prompt_mask"], b["completion"],
                               temperature=ls.temperature, shared_prompts=ls.shared_prompts, chunk=ls.logit_chunk)
        return O.pg_loss(st["logp"], None, b["adv"], b["mask"], loss_agg=ls.loss_agg)[0]

    params = ctx.base_params
    state = opt_init(params, tx=tx)
    g = jax.jit(jax.grad(loss))(params, batch)

    @jax.jit
    def adam(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    update = jax.jit(functools.partial(rl_update, tx=tx, ls=ls, group=stage.group, **gd))
    zeros = jnp.zeros(batch["completion"].shape, jnp.float32)
    out = {"forward_layers": best(jax.jit(body), params, batch), "forward_loss": best(jax.jit(loss), params, batch),
           "value_and_grad": best(jax.jit(jax.value_and_grad(loss)), params, batch),
           "optimizer": best(adam, params, state, g),
           "rl_update": best(lambda: update(params, jax.tree.map(jnp.copy, state), batch, zeros, jnp.asarray(True),
                                            None))}
    out["backward"] = round(out["value_and_grad"] - out["forward_loss"], 3)
    return out


def _profile_runs():
    """section_profile's runs: (label, update bucket, RLConfig changes). Before: the update over all
    max_new_tokens columns; the default: over the completions cut to rollout.update_length; the rl section's
    settings (RL_NTKDYN): packed completions in micro-batches."""
    from ntkdyn.rl.rollout import UPDATE_BUCKET

    N = int(dict(zip(RL_ARGS[::2], RL_ARGS[1::2]))["--new"])
    micro = int(RL_NTKDYN[RL_NTKDYN.index("--micro-batches") + 1])
    return [("padded", N, {}), ("bucketed", UPDATE_BUCKET, {}),
            ("packed", UPDATE_BUCKET, {"pack": "--pack" in RL_NTKDYN, "micro_batches": micro})]


def section_profile(path, steps=6):
    """RL steps of (d)'s settings on SmolLM2, phase by phase (rl_step's own phases, each synchronised): seconds,
    FLOPs and achieved GFLOP/s, and per op class of the sampler and the update (FLOPs, the standalone rate of its
    matmul shape, the time at that rate), for each of _profile_runs (before: the update over all max_new_tokens
    columns; after: over the completions cut to rollout.update_length, and packed in micro-batches as the rl
    section runs it); `steps` steps from the starting model each, the first (compiling) left out, medians of the
    rest (a packed row count seen first compiles in its step too); against the compute bound measured here; and
    the bucketed update taken apart on its last batch (_update_parts: forward, backward, optimizer)."""
    import dataclasses

    from ntkdyn.rl.context import on_devices, resolve
    from ntkdyn.rl.trainer import enable_compile_cache

    if not os.path.isdir(path):
        raise SystemExit(f"section profile needs the real checkpoint directory {path}: ntkdyn fetch {NAME}")
    c = _profile_config(path, steps)
    enable_compile_cache()
    rates = matmul_rates()
    peak = peak_rate(rates)
    out = {"machine": machine(), "matmul_rates": rates, "peak_gflops": peak, "steps": steps, "warm_steps": steps - 1,
           "runs": []}
    for label, bucket, changes in _profile_runs():
        ctx = on_devices(resolve(dataclasses.replace(c, **changes)))
        cfg, P, G, N, chunk = ctx.cfg, c.prompts_per_step, c.group_size, c.max_new_tokens, ctx.loss_spec.logit_chunk
        micro = ctx.loss_spec.micro_batches
        out.update(batch=[P, G], Tp=ctx.Tp, max_new_tokens=N, params=ctx.lm.num_params)
        recs, last_batch = _profile_run(ctx, bucket, steps)
        warm = recs[1:]
        step_s = statistics.median(r["step_s"] for r in warm)
        phases = {k: statistics.median(r["phases"].get(k, 0.0) for r in warm) for k in warm[0]["phases"]}
        per_step = [_phase_ops(cfg, P, G, ctx.Tp, N, r["n_update"], r["longest"], chunk, r["rows"], micro)
                    for r in warm]  # each warm step's work, then their mean
        ops = {ph: {op: statistics.mean(o[ph][op] for o in per_step) for op in per_step[0][ph]}
               for ph in per_step[0]}
        n_up = max(r["n_update"] for r in warm)
        rows = statistics.median(P * G if r["rows"] is None else r["rows"] for r in warm)
        op_rates = _op_rates(cfg, P * G, int(rows) * (n_up - 1) // micro, chunk)
        table = []
        for ph, secs in phases.items():
            fl = sum(ops[ph].values()) if ph in ops else 0.0
            row = {"phase": ph, "seconds": round(secs, 3), "share": round(secs / step_s, 3)}
            if fl:
                row.update(gflop=round(fl / 1e9, 1), gflops_achieved=round(fl / secs / 1e9, 1))
                row["ops"] = [{"op": op, "gflop": round(f / 1e9, 1), "shape": op_rates[ph].get(op, (None,))[0],
                               "standalone_gflops": op_rates[ph].get(op, (None, None))[1],
                               "seconds_at_that_rate": (round(f / 1e9 / op_rates[ph][op][1], 3)
                                                        if op in op_rates[ph] else None)}
                              for op, f in sorted(ops[ph].items(), key=lambda x: -x[1])]
            table.append(row)
        work = sum(sum(v.values()) for v in ops.values())
        bound = bound_flops(ctx.lm.num_params, P * G, ctx.Tp, N)
        out["runs"].append(
            {"label": label, "update_bucket": bucket, "changes": changes, "step_s_median": round(step_s, 3),
             "first_step_s": round(recs[0]["step_s"], 2), "step_s": [round(r["step_s"], 2) for r in recs],
             "n_update": [r["n_update"] for r in recs], "rows": [r["rows"] for r in recs],
             "longest": [r["longest"] for r in recs], "mean_length": [r["mean_length"] for r in recs],
             "loss": [r["loss"] for r in recs], "reward": [r["reward"] for r in recs],
             "phases": table, "work_gflop": round(work / 1e9, 1), "work_gflops_achieved": round(work / step_s / 1e9, 1),
             "bound_gflop": round(bound / 1e9, 1), "bound_s": round(bound / 1e9 / peak, 3),
             "step_over_bound": round(step_s / (bound / 1e9 / peak), 3)})
        if label == "bucketed":
            out["update_parts"] = _update_parts(ctx, last_batch)
    out["bound"] = ("the issue's step FLOPs (6·params·B·(Tp+N) for the update + 2·params·B·N for the decode) at "
                    "peak_gflops, the best float32 matmul rate measured in this run (XLA or NumPy)")
    first = out["runs"][0]["step_s_median"]
    out["speedup"] = {r["label"]: round(first / r["step_s_median"], 3) for r in out["runs"][1:]}
    return out


# ----------------------------------------------------------------------------- the update, XLA op by XLA op

OPS_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
_HLO_DEF = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\w+)\[([\d,]*)\]\S* ([\w\-]+)\((.*)$")


def hlo_table(text: str) -> dict:
    """Every instruction of an optimized HLO module's text (compiled.as_text()): name -> {dtype, dims, opcode,
    operands, calls, op_name, flops}; `flops` = 2·(output elements)·(contracted size) for a dot, and for a fusion
    the sum of the dots of the computation it calls (0 for everything else). Names are unique within a module."""
    table, comps, comp = {}, {}, None
    for line in text.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if head and " = " not in line.split("{")[0]:
            comp = head.group(1)
            comps[comp] = []
            continue
        m = _HLO_DEF.match(line)
        if not m:
            continue
        name, dtype, dims, opcode, rest = m.groups()
        args = rest.split("),", 1)[0]
        op = re.search(r'op_name="([^"]*)"', rest)
        calls = re.search(r"(?:calls|body)=%?([\w.\-]+)", rest)
        table[name] = {"dtype": dtype, "dims": [int(x) for x in dims.split(",") if x], "opcode": opcode,
                       "operands": re.findall(r"%([\w.\-]+)", args), "calls": calls.group(1) if calls else None,
                       "op_name": op.group(1) if op else "", "rest": rest, "comp": comp}
        if comp is not None:
            comps[comp].append(name)

    def dot_flops(ins):
        lhs = table.get(ins["operands"][0]) if ins["operands"] else None
        dims = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", ins["rest"])
        if lhs is None or dims is None:
            return 0.0
        k = int(np.prod([lhs["dims"][int(i)] for i in dims.group(1).split(",") if i]))
        return 2.0 * float(np.prod(ins["dims"])) * k

    for ins in table.values():
        ins["flops"] = dot_flops(ins) if ins["opcode"] == "dot" else 0.0
    for ins in table.values():
        if ins["opcode"] == "fusion" and ins["calls"]:
            ins["flops"] = sum(table[n]["flops"] for n in comps.get(ins["calls"], ()) if table[n]["opcode"] == "dot")
    return table


def trace_events(directory: str) -> list[dict]:
    """The complete ("X") events of the perfetto trace that jax.profiler.trace(create_perfetto_trace=True) wrote."""
    import glob
    import gzip

    files = sorted(glob.glob(os.path.join(directory, "**", "perfetto_trace.json.gz"), recursive=True))
    if not files:
        raise RuntimeError(f"no perfetto trace under {directory}")
    with gzip.open(files[-1]) as f:
        tr = json.load(f)
    return [e for e in (tr["traceEvents"] if isinstance(tr, dict) else tr) if e.get("ph") == "X"]


def op_profile(events, table, wall: float, top: int = 25) -> dict:
    """Seconds per XLA op of one traced execution (events named after the HLO instructions of `table`; loop and
    call instructions, which contain their bodies' events, left out), grouped by (kind, output shape, source op):
    kind is the instruction name without its number (ynn_fusion: a dot in YNNPACK; dot: XLA's own; *_fusion:
    elementwise work XLA fused, copy_* / transpose_*: layout changes), FLOPs from the dots, and the totals of
    the matmuls and of the rest."""
    rows, total, mm_s, mm_f = {}, 0.0, 0.0, 0.0
    for e in events:
        ins = table.get(e["name"])
        if ins is None or ins["opcode"] in ("while", "call", "conditional"):
            continue
        s = e.get("dur", 0.0) / 1e6
        kind = re.sub(r"\.\d+$", "", e["name"])
        src = re.sub(r"^(jit\([\w_]+\)/)+", "", ins["op_name"])
        key = (kind, f"{ins['dtype']}[{','.join(map(str, ins['dims']))}]", src)
        r = rows.setdefault(key, {"seconds": 0.0, "events": 0, "gflop": 0.0})
        r["seconds"] += s
        r["events"] += 1
        r["gflop"] += ins["flops"] / 1e9
        total += s
        if ins["flops"]:
            mm_s, mm_f = mm_s + s, mm_f + ins["flops"]
    ranked = sorted(rows.items(), key=lambda kv: -kv[1]["seconds"])
    return {"wall_s": round(wall, 3), "ops_s": round(total, 3), "matmul_s": round(mm_s, 3),
            "matmul_gflop": round(mm_f / 1e9, 1), "matmul_gflops": round(mm_f / 1e9 / mm_s, 1) if mm_s else None,
            "other_s": round(total - mm_s, 3),
            "top": [{"kind": k[0], "shape": k[1], "source": k[2][:100], "seconds": round(v["seconds"], 3),
                     "share": round(v["seconds"] / total, 3), "events": v["events"],
                     **({"gflop": round(v["gflop"], 1), "gflops": round(v["gflop"] / v["seconds"], 1)}
                        if v["gflop"] and v["seconds"] else {})} for k, v in ranked[:top]]}


def section_ops(path):
    """The RL update of (d)'s settings on SmolLM2 (the jitted rl_update on a rollout batch of two rl_steps from the
    starting model), XLA op by XLA op: one execution traced with jax.profiler on ONE core and one XLA thread (so
    the ops run one after the other and their seconds add up to the wall clock; with two threads XLA runs
    independent ops at once and each op's clock holds the other's), every event named after its instruction in
    the compiled module's HLO (op_profile), the dots' FLOPs from their shapes, against the best single-thread
    float32 matmul rate measured in the same process. Runs itself in a subprocess pinned to one CPU with
    OPS_FLAGS in XLA_FLAGS."""
    import functools
    import tempfile

    if os.environ.get("NTKDYN_BENCH_OPS_CHILD") != "1":
        cpu = sorted(os.sched_getaffinity(0))[0]
        env = {**os.environ, "NTKDYN_BENCH_OPS_CHILD": "1",
               "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " " + OPS_FLAGS).strip()}
        child, res = run_child(["--only", "ops"], env=env, preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
        if res.returncode or child is None:
            raise RuntimeError(f"section ops' child failed ({res.returncode}): {res.stderr[-2000:]}")
        child["vmhwm_mb_child"] = child.pop("vmhwm_mb", None)
        return {k: v for k, v in child.items() if k not in ("section", "total_seconds", "load_average", "jax")}
    from ntkdyn.rl.context import on_devices, resolve
    from ntkdyn.rl.rollout import UPDATE_BUCKET
    from ntkdyn.rl.step import opt_init, rl_update, stage_optimizer

    if not os.path.isdir(path):
        raise SystemExit(f"section ops needs the real checkpoint directory {path}: ntkdyn fetch {NAME}")
    ctx = on_devices(resolve(_profile_config(path, 2)))
    _, batch = _profile_run(ctx, UPDATE_BUCKET, 2)
    stage = ctx.stages[0]
    tx = stage_optimizer(ctx.c, stage)
    params = ctx.base_params
    state = opt_init(params, tx=tx)
    zeros = jnp.zeros(batch["completion"].shape, jnp.float32)

    def args():  # rl_update donates the optimizer state: a fresh copy per call
        return jax.block_until_ready((params, jax.tree.map(jnp.copy, state), batch, zeros, jnp.asarray(True), None))

    update = jax.jit(functools.partial(rl_update, tx=tx, ls=ctx.loss_spec, group=stage.group, **ctx.gd))
    compiled = update.lower(*args()).compile()
    table = hlo_table(compiled.as_text())
    warm = []
    for _ in range(3):
        a = args()
        t = time.perf_counter()
        jax.block_until_ready(compiled(*a))
        warm.append(time.perf_counter() - t)
    a = args()
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        with jax.profiler.trace(d, create_perfetto_trace=True):
            jax.block_until_ready(compiled(*a))
        wall = time.perf_counter() - t
        prof = op_profile(trace_events(d), table, wall)
    rates = matmul_rates(((1344, 576, 1536), (992, 1536, 576), (512, 576, 49152)))
    peak = peak_rate(rates)
    return {"machine": machine(), "xla_flags": os.environ.get("XLA_FLAGS", ""), "threads": "1 core, 1 XLA thread",
            "batch": list(batch["completion"].shape), "Tp": int(batch["prompt_ids"].shape[1]),
            "update_warm_s": [round(x, 3) for x in warm], "matmul_rates_1core": rates, "peak_gflops_1core": peak,
            "matmul_s_at_peak": round(prof["matmul_gflop"] / peak, 3), **prof}


def ops_table(res) -> str:
    """A markdown table of section_ops' result."""
    m = res["machine"]
    lines = [f"CPU {m['cpu']} ({m['cpu_id']}), one core and one XLA thread; update over {res['batch'][0]} completions "
             f"x {res['batch'][1]} tokens (prompts Tp {res['Tp']} once per group); traced execution {res['wall_s']} s "
             f"(warm untraced {res['update_warm_s']}), ops {res['ops_s']} s: matmuls {res['matmul_s']} s for "
             f"{res['matmul_gflop']} GFLOP ({res['matmul_gflops']} GFLOP/s; best single-core float32 matmul here "
             f"{res['peak_gflops_1core']} GFLOP/s, so {res['matmul_s_at_peak']} s at that rate), everything else "
             f"{res['other_s']} s", "",
             "| XLA op | output | source (jax op) | seconds | share | events | GFLOP | GFLOP/s |",
             "|---|---|---|---|---|---|---|---|"]
    for o in res["top"]:
        lines.append(f"| {o['kind']} | {o['shape']} | {o['source']} | {o['seconds']:.3f} | {o['share']:.3f} | "
                     f"{o['events']} | {o.get('gflop', '')} | {o.get('gflops', '')} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- XLA CPU settings

# candidate XLA_FLAGS for the CPU's float32 dots (jaxlib 0.10: dots go to YNNPACK by default; the others are what its
# flags offer). Each is measured in its own process (XLA reads XLA_FLAGS once).
XLA_CANDIDATES = {
    "default (YNNPACK dots)": "",
    "Eigen dots": "--xla_cpu_experimental_ynn_fusion_type=",
    "XNNPACK dots": "--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_experimental_xnn_fusion_type=dot",
    "oneDNN": "--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_use_onednn=true",
}
# the dominant matmuls of (d)'s step on SmolLM2: the update's MLP forward and its two backward products at ~1300
# tokens, the head chunk (512 tokens), and the decode's MLP and head at 32 rows
XLA_SHAPES = ((1344, 576, 1536), (576, 1344, 1536), (1344, 1536, 576), (512, 576, 49152), (32, 576, 1536),
              (32, 576, 49152))


def matmul_probe() -> dict:
    """In this process (its XLA_FLAGS): matmul_rates at XLA_SHAPES, the dot kinds of the compiled program and each
    product's largest error relative to a float64 product (max |err| / max |exact|)."""
    rates = matmul_rates(XLA_SHAPES)
    rng = np.random.default_rng(1)
    errs = []
    for m, k, n in XLA_SHAPES:
        a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
        exact = a.astype(np.float64) @ b.astype(np.float64)
        got = np.asarray(jax.jit(jnp.matmul)(a, b), np.float64)
        errs.append(float(np.abs(got - exact).max() / np.abs(exact).max()))
    hlo = jax.jit(jnp.matmul).lower(jnp.ones((64, 64)), jnp.ones((64, 64))).compile().as_text()
    kinds = sorted({w for w in ("ynn_fusion", "xnn_fusion", "onednn", "__onednn") if w in hlo}) or ["xla dot"]
    return {"rates": rates, "rel_errors": errs, "dot_kinds": kinds}


def section_xlaflags(path=None):
    """Each XLA_CANDIDATES setting in its own process (matmul_probe): GFLOP/s at the step's dominant matmul shapes,
    relative errors against float64, and the sum over the shapes of the time of one product at each setting."""
    out = {"machine": machine(), "shapes": [list(x) for x in XLA_SHAPES], "candidates": {}}
    for name, flags in XLA_CANDIDATES.items():
        env = dict(os.environ, XLA_FLAGS=flags)
        r, res = run_child(["--matmul-probe"], env=env)
        if r is None:
            out["candidates"][name] = {"flags": flags, "error": res.stderr[-500:]}
            continue
        secs = sum(2.0 * m * k * n / (x["xla_gflops"] * 1e9) for (m, k, n), x in zip(XLA_SHAPES, r["rates"]))
        out["candidates"][name] = {"flags": flags, "xla_gflops": [x["xla_gflops"] for x in r["rates"]],
                                   "seconds_all_shapes": round(secs, 4), "max_rel_error": max(r["rel_errors"]),
                                   "dot_kinds": r["dot_kinds"]}
    return out



def profile_table(res) -> str:
    """A markdown table of section_profile's result: per run (before: padded; after: bucketed, packed), phase and
    op class, and each run's step time against the compute bound."""
    m = res["machine"]
    lines = [f"CPU {m['cpu']} ({m['cpu_id']}; {m['cores']} cores; {' '.join(m['cpu_flags'])}), "
             f"load average {m['load_average'][0]:.1f} at the start; best float32 matmul "
             f"{res['peak_gflops']} GFLOP/s; Tp {res['Tp']}, N {res['max_new_tokens']}, batch {res['batch'][0]} x "
             f"{res['batch'][1]}", "",
             "| run | phase / op | seconds | share | GFLOP | GFLOP/s achieved | op shape (m, k, n) "
             "| standalone GFLOP/s | s at that rate |", "|---|---|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        label = r["label"]
        for ph in r["phases"]:
            if ph["seconds"] < 0.0005 and "gflop" not in ph:
                continue
            lines.append(f"| {label} | {ph['phase']} | {ph['seconds']:.3f} | {ph['share']:.2f} | {ph.get('gflop', '')} "
                         f"| {ph.get('gflops_achieved', '')} | | | |")
            for o in ph.get("ops", []):
                lines.append(f"| {label} | {ph['phase']}: {o['op']} | | | {o['gflop']} | | {o['shape'] or ''} | "
                             f"{o['standalone_gflops'] or ''} | {o['seconds_at_that_rate'] or ''} |")
        rows = "" if not any(r["rows"]) else f", packed rows {r['rows']}"
        lines.append(f"| {label} | **step** (median of {res['warm_steps']}) | **{r['step_s_median']:.2f}** | | "
                     f"{r['work_gflop']} | {r['work_gflops_achieved']} | update length {r['n_update']}{rows}, "
                     f"longest {r['longest']} | bound {r['bound_gflop']} GFLOP = {r['bound_s']:.2f} s | "
                     f"**step / bound {r['step_over_bound']:.2f}** |")
    u = res.get("update_parts")
    if u:
        lines += ["", "update taken apart (warm seconds, last bucketed batch): " + ", ".join(
            f"{k} {v:.3f}" for k, v in u.items())]
    return "\n".join(lines)


SCALING_ARGS = ["--recipe", "rl", "--task", "sum", "--steps", "8", "--prompts-per-step", "8", "--group-size", "4",
                "--max-new-tokens", "8", "--eval-prompts", "4", "--eval-samples", "4", "--eval-every", "0",
                "--probe-every", "0", "--checkpoint-every", "0", "--seed", "0", "--overwrite", "--no-progress"]
# (label, forced CPU devices per process, processes, mesh or None)
SCALING_RUNS = [("1 device", 1, 1, None), ("1 device, --mesh data=1", 1, 1, "data=1"),
                ("2 devices data=2", 2, 1, "data=2"), ("2 devices fsdp=2", 2, 1, "fsdp=2"),
                ("4 devices data=4", 4, 1, "data=4"), ("4 devices fsdp=4", 4, 1, "fsdp=4"),
                ("4 devices data=2,fsdp=2", 4, 1, "data=2,fsdp=2"),
                ("2 processes data=2", 1, 2, "data=2"), ("2 processes fsdp=2", 1, 2, "fsdp=2")]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scaling_run(out, devices, processes, mesh, timeout=900):
    """One `ntkdyn rl` run of SCALING_ARGS (its processes at once); the step times of process 0's metrics."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               PYTHONPATH=os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    cmd = [sys.executable, "-m", "ntkdyn.cli", "rl", *SCALING_ARGS, "--out", out] + (["--mesh", mesh] if mesh else [])
    if processes > 1:
        port = _free_port()
        cmds = [cmd + ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes), "--process-id",
                       str(i), "--heartbeat-timeout", "30"] for i in range(processes)]
    else:
        cmds = [cmd]
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    errs = [p.communicate(timeout=timeout)[1] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"{cmds[0]}: exit {[p.returncode for p in procs]}: {errs[0][-1500:]}")
    from ntkdyn.rl import read_metrics

    return [r["step_time"] for r in read_metrics(out) if "step_time" in r]


def section_scaling():
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, devices, processes, mesh in SCALING_RUNS:
            times = _scaling_run(os.path.join(tmp, str(len(rows))), devices, processes, mesh)
            warm = statistics.median(times[2:])
            rows.append({"run": label, "steps_per_s": round(1.0 / warm, 3), "first_step_s": round(times[0], 2)})
    for r in rows:
        r["ratio_to_1_device"] = round(r["steps_per_s"] / rows[0]["steps_per_s"], 3)
    return {"model": "the embedded default model", "args": " ".join(SCALING_ARGS), "runs": rows,
            "cpu_count": os.cpu_count()}


def section_pages(gib: float = 1.0, pauses=(0, 0, 1, 3, 6)) -> dict:
    """Seconds to write `gib` GiB of freshly allocated float32 memory (first write: page faults included) and to
    write it again, after each pause in `pauses` (seconds since the previous buffer was freed); the first write's
    cost per 4 KiB page beyond the rewrite's."""
    n = int(gib * 2**30) // 4
    rows = []
    for pause in pauses:
        time.sleep(pause)
        t = time.perf_counter()
        a = np.empty(n, np.float32)
        a.fill(1.0)
        first = time.perf_counter() - t
        t = time.perf_counter()
        a.fill(2.0)
        again = time.perf_counter() - t
        del a
        rows.append({"pause_s": pause, "first_write_s": round(first, 5), "rewrite_s": round(again, 5),
                     "us_per_page": round(max(first - again, 0.0) / (n * 4 / 4096) * 1e6, 2)})
    return {"machine": machine(), "gib": gib, "writes": rows}


def run_section(name):
    t0 = time.perf_counter()
    if name in ("scaling", "pages"):  # no model: every run its own ntkdyn rl process(es), or plain memory
        out = {"section": name, **globals()[f"section_{name}"]()}
        out.update(total_seconds=round(time.perf_counter() - t0, 1), load_average=os.getloadavg(), jax=jax.__version__)
        return out
    if name in ("rl", "memory", "profile", "ops", "xlaflags"):  # these load the model themselves (or need none)
        root = os.environ.get("NTKDYN_CACHE", os.path.expanduser("~/.cache/ntkdyn"))
        out = {"section": name, **globals()[f"section_{name}"](os.path.join(root, "models", NAME))}
        out.update(vmhwm_mb=mem_mb()[0], total_seconds=round(time.perf_counter() - t0, 1),
                   load_average=os.getloadavg(), jax=jax.__version__)
        return out
    lm, source = load_model()
    loaded = mem_mb()
    out = {"section": name, "model": source, "params": lm.num_params, **globals()[f"section_{name}"](lm)}
    out.update(vmhwm_mb=mem_mb()[0], vmrss_mb_after_load=loaded[1], total_seconds=round(time.perf_counter() - t0, 1),
               load_average=os.getloadavg(), jax=jax.__version__)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=SECTIONS, default=None, help="run one section in this process")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated sections (subprocesses)")
    ap.add_argument("--matmul-probe", action="store_true", help=argparse.SUPPRESS)  # section_xlaflags' worker
    args = ap.parse_args(argv)
    if args.matmul_probe:
        print(json.dumps(matmul_probe()), flush=True)
        return
    if args.only:
        res = run_section(args.only)
        print(json.dumps(res), flush=True)
        if args.only == "profile":
            print(profile_table(res), flush=True)
        if args.only == "ops":
            print(ops_table(res), flush=True)
        return
    for name in args.sections.split(","):
        r, res = run_child(["--only", name])
        print(json.dumps(r if r is not None else {"section": name, "error": res.stderr[-2000:]}), flush=True)


if __name__ == "__main__":
    main()
