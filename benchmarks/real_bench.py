"""Kernels at real-model scale (SmolLM2-135M-Instruct: 134.5M parameters, d 576, 30 layers, V 49,152, tied head).

Sections (`--only NAME`; this first version has one):
  (a) trace: the exact tr G (and the tied tr X) for 2 contexts of ~6 tokens by structured derivatives
      (ntkdyn/structured.py: one backward through the activations per cotangent, no weight gradient), against
      the time of 2·d plain VJPs of h w.r.t. all parameters (what materialising J_h costs at least; one VJP timed
      after compilation, multiplied). Target: time / (2·d VJPs) <= 0.5, compilation included.

The model is read from `<cache>/models/smollm2-135m-instruct` when it exists (NTKDYN_CACHE or ~/.cache/ntkdyn),
else a random Llama of SmolLM2's shape is built (the timings depend on the shape only). Peak RSS is the process's
maximum resident set size (getrusage), before and after the kernel. Heavy: run it once, not in a loop.

    python benchmarks/real_bench.py --only trace            # prints a JSON line per section
    python benchmarks/real_bench.py --only trace --check    # also one tr G_S entry against plain VJPs
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ntkdyn as nd  # noqa: E402
from ntkdyn import structured  # noqa: E402
from ntkdyn.models.transformer import features  # noqa: E402

NAME = "smollm2-135m-instruct"
SHAPE = dict(family="llama", vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, d_ff=1536,
             max_positions=2048, tie_word_embeddings=True, activation="silu", norm_eps=1e-5, rope_theta=100000.0)
PROMPTS = ("The capital of France is", "Two plus three equals")


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
    return np.asarray(rows, np.int32), np.array([0, 1], np.int32), np.array([T - 1, T - 1], np.int32)


def plain_vjp_seconds(lm, ids, pos, repeats=3):
    """Seconds of one backward pass of h(c) w.r.t. all parameters (the weight gradients written), after compile;
    the forward (residuals) is done once outside. Also one inner product of two such gradients."""
    def h_at(params):
        return features(lm.graphdef, lm.config, params, jnp.asarray(ids[:1]))[0][0, int(pos[0])]

    _, vjp = jax.vjp(h_at, lm.params)
    back = jax.jit(lambda f, v: f(v)[0])
    dot = jax.jit(lambda g, k: sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(k))))
    v = jnp.ones((lm.config.d_model,), jnp.float32)
    g = jax.block_until_ready(back(vjp, v))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(back(vjp, v))
        times.append(time.perf_counter() - t)
    jax.block_until_ready(dot(g, g))
    t = time.perf_counter()
    jax.block_until_ready(dot(g, g))
    return statistics.median(times), time.perf_counter() - t, g


def check_entry(lm, ids, rows, pos, token):
    """tr G_S for S = {token} (= w_kᵀ M(a, b) w_k) by structured derivatives vs two plain VJPs' inner product."""
    W = lm.params["head"]["W"]

    def h_at(params, i):
        return features(lm.graphdef, lm.config, params, jnp.asarray(ids[i:i + 1]))[0][0, int(pos[i])]

    gs = [jax.vjp(lambda p: h_at(p, i), lm.params)[1](W[token])[0] for i in range(2)]
    plain = float(sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(gs[0]), jax.tree.leaves(gs[1]))))
    k = structured.structured_kernel(lm.graphdef, lm.config, lm.params, ids, rows, pos, output="subset",
                                     tokens=np.array([token]))
    return float(k.gradient[0, 1, 0, 0]), plain


def section_trace(lm, source, check, budget):
    ids, rows, pos = contexts(lm)
    d = lm.config.d_model
    rss0 = rss_mb()
    t = time.perf_counter()
    k = structured.structured_kernel(lm.graphdef, lm.config, lm.params, ids, rows, pos, output="trace",
                                     memory_budget=budget)
    G = np.asarray(jax.block_until_ready(k.gradient))
    t_struct = time.perf_counter() - t
    rss1 = rss_mb()
    t2 = time.perf_counter()
    structured.structured_kernel(lm.graphdef, lm.config, lm.params, ids, rows, pos, output="trace",
                                 memory_budget=budget).gradient.block_until_ready()
    t_warm = time.perf_counter() - t2
    t_vjp, t_dot, _ = plain_vjp_seconds(lm, ids, pos)
    out = {"section": "trace", "model": source, "params": lm.num_params, "contexts": ids.tolist(),
           "positions": pos.tolist(), "trace_G": G.tolist(),
           "trace_X": None if k.cross is None else np.asarray(k.cross).tolist(),
           "seconds_structured_first_call": round(t_struct, 2), "seconds_structured_second_call": round(t_warm, 2),
           "seconds_one_vjp": round(t_vjp, 4), "seconds_one_grad_dot": round(t_dot, 4),
           "seconds_2d_vjps": round(2 * d * t_vjp, 1),
           "ratio_first_call_vs_2d_vjps": round(t_struct / (2 * d * t_vjp), 4),
           "ratio_second_call_vs_2d_vjps": round(t_warm / (2 * d * t_vjp), 4),
           "peak_rss_mb_before": round(rss0), "peak_rss_mb_after_kernel": round(rss1),
           "plan": k.plan._asdict(), "load_average": os.getloadavg()}
    if check:
        s, p = check_entry(lm, ids, rows, pos, token=int(ids[0, -1]))
        out["check_subset_entry"] = {"structured": s, "plain_vjps": p, "rel_err": abs(s - p) / abs(p)}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["trace"], default=None, help="run one section")
    ap.add_argument("--check", action="store_true", help="also check one kernel entry against plain VJPs")
    ap.add_argument("--memory-budget", type=int, default=None, help="bytes (default: structured's default)")
    args = ap.parse_args(argv)
    lm, source = load_model()
    for name in [args.only] if args.only else ["trace"]:
        print(json.dumps({"trace": section_trace}[name](lm, source, args.check, args.memory_budget)), flush=True)


if __name__ == "__main__":
    main()
