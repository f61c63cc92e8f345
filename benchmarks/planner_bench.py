"""The kernel planner's cost model (ntkdyn/ntk/method.py) against measurements: for each case, `ntk.decompose` is
run with method="jacobian" and with method="structured" (fresh programs: jax.clear_caches() before each), the first
call (compilation included) and a second, warm call are timed, and the seconds the cost model predicted for both
methods (k.plan.predicted_seconds) are printed beside them, with the method "auto" picks and whether it is the one
that measured faster on the first call.

    python benchmarks/planner_bench.py             # every case, one JSON line each, then a table
    python benchmarks/planner_bench.py --cases default-trace-8

Cases: the embedded default base model (gpt_neox, 0.8M parameters) and random Llama models of a few sizes,
N contexts of T random tokens analysed at their last position, outputs "trace", "full", "hidden", "hutchinson".
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ntkdyn as nd  # noqa: E402
from ntkdyn import ntk  # noqa: E402


def _llama(d, layers, V, seed=0):
    from ntkdyn.models.transformer import init_params

    cfg = nd.ModelConfig(family="llama", vocab_size=V, d_model=d, n_layers=layers, n_heads=max(2, d // 64),
                         n_kv_heads=max(2, d // 64), d_ff=int(2.75 * d), max_positions=256, tie_word_embeddings=True,
                         activation="silu")
    return nd.LM(cfg, init_params(cfg, seed)[1])


def _default():
    from ntkdyn.default import default_model_dir

    return nd.load(default_model_dir(progress=False))


# name: (model builder, N contexts, T tokens, output, extra decompose keywords)
CASES = {
    "tiny-trace-4": (lambda: _llama(16, 2, 97), 4, 8, "trace", {}),
    "tiny-full-4": (lambda: _llama(16, 2, 97), 4, 8, "full", {}),
    "tiny-hutch-4": (lambda: _llama(16, 2, 97), 4, 8, "hutchinson", {"num_probes": 16}),
    "default-trace-2": (_default, 2, 16, "trace", {}),
    "default-trace-8": (_default, 8, 16, "trace", {}),
    "default-full-4": (_default, 4, 16, "full", {}),
    "default-hidden-4": (_default, 4, 16, "hidden", {}),
    "default-hutch-4": (_default, 4, 16, "hutchinson", {"num_probes": 16}),
    "llama-d256x4-trace-4": (lambda: _llama(256, 4, 2048), 4, 16, "trace", {}),
    "llama-d256x4-hutch-4": (lambda: _llama(256, 4, 2048), 4, 16, "hutchinson", {"num_probes": 16}),
    "llama-d128x2-trace-4": (lambda: _llama(128, 2, 1024), 4, 16, "trace", {}),
}


def _time(fn):
    """(seconds until every array of the Kernel is computed, the Kernel)."""
    t = time.perf_counter()
    k = fn()
    jax.block_until_ready(jax.tree.leaves((k.representation, k.gradient, k.cross)))
    return time.perf_counter() - t, k


def predict(name):
    """The cost model's seconds for both methods and the method auto picks, without running a kernel."""
    from ntkdyn.ntk.contexts import kernel_contexts
    from ntkdyn.ntk.engine import Engine
    from ntkdyn.ntk.method import choose_exact, choose_probes
    from ntkdyn.ntk.plan import exact_plan, probe_chunks, sizing
    from ntkdyn.ntk.structured_plan import make_plan
    from ntkdyn.ntk.structured_probes import probe_sizes

    build, N, T, output, kw = CASES[name]
    lm = build()
    ids = np.random.default_rng(0).integers(3, lm.config.vocab_size, (N, T)).astype(np.int32)
    p, cfg = lm.params, lm.config
    a, b, sym = kernel_contexts(cfg, ids, np.full(N, T - 1), None, None)
    sz = sizing(cfg, Engine(lm.graphdef, cfg, p, None).sp, a, b, None, None, None)
    if output == "hutchinson":
        npr = kw["num_probes"]
        kp = choose_probes("auto", cfg, p, sz, N, N, npr, None, probe_sizes(cfg, p, T, N, npr, sz.budget),
                           probe_chunks(sz, cfg.d_model, N, N, npr))
    else:
        kp = choose_exact("auto", cfg, p, sz, exact_plan(sz, cfg.d_model, N, N, True),
                          lambda: make_plan(cfg, p, *a, output=output), N, N, True, output, None, False)
    return {"case": name, "params": lm.num_params, "auto": kp.method, "predicted_s": kp.predicted_seconds}


def run_case(name):
    build, N, T, output, kw = CASES[name]
    lm = build()
    rng = np.random.default_rng(0)
    ids = rng.integers(3, lm.config.vocab_size, (N, T)).astype(np.int32)
    pos = np.full(N, T - 1)
    res = {"case": name, "params": lm.num_params, "N": N, "T": T, "output": output}
    for method in ("jacobian", "structured"):
        jax.clear_caches()
        call = lambda: ntk.decompose(lm, ids, pos, output=output, method=method, **kw)  # noqa: E731
        first, k = _time(call)
        warm, _ = _time(call)
        res[method] = {"first_s": round(first, 2), "warm_s": round(warm, 3),
                       "predicted_s": k.plan.predicted_seconds[method]}
    res["auto"] = ntk.decompose(lm, ids, pos, output=output, **kw).plan.method
    res["faster_first"] = min(("jacobian", "structured"), key=lambda m: res[m]["first_s"])
    res["faster_warm"] = min(("jacobian", "structured"), key=lambda m: res[m]["warm_s"])
    res["load_average"] = round(os.getloadavg()[0], 1)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    ap.add_argument("--predict-only", action="store_true", help="print the cost model's plans, run nothing")
    args = ap.parse_args(argv)
    if args.predict_only:
        for name in args.cases.split(","):
            print(json.dumps(predict(name)), flush=True)
        return
    rows = []
    for name in args.cases.split(","):
        r = run_case(name)
        rows.append(r)
        print(json.dumps(r), flush=True)
    print("\n| case | params | jacobian predicted / first / warm (s) | structured predicted / first / warm (s) | "
          "auto | faster (first call) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        j, s = r["jacobian"], r["structured"]
        print(f"| {r['case']} | {r['params']:,} | {j['predicted_s']} / {j['first_s']} / {j['warm_s']} | "
              f"{s['predicted_s']} / {s['first_s']} / {s['warm_s']} | {r['auto']} | {r['faster_first']} |")
    ok = sum(r["auto"] == r["faster_first"] for r in rows)
    print(f"\nauto picked the faster method (first call) in {ok} of {len(rows)} cases")


if __name__ == "__main__":
    main()
