"""The kernel methods against each other on the same contexts, through the public API only: for each case
`ntk.decompose` runs with each requested method ("jacobian", "structured", or "default" for the method `decompose`
picks by itself), a first call in a fresh process (compilation included) and a warm second call, in rounds whose
order alternates; the table shows the median of the rounds, k.plan.predicted_seconds (the cost model's diagnostic)
and the load average. Because it uses only the public API it also runs against another checkout of ntkdyn
(`PYTHONPATH=/path/to/other/checkout python benchmarks/methods_bench.py ...`), which is how the default method was
compared with an earlier release's automatic choice (benchmarks/RESULTS.md, "methods_bench").

    python benchmarks/methods_bench.py --cases default-trace-2,default-trace-8 --methods default,jacobian
    python benchmarks/methods_bench.py --predict-only          # the plans only (ntk.plan), nothing run
    python benchmarks/methods_bench.py --cases default-trace-16 --methods structured --devices 1,2,4

--devices D1,D2,...: each method also on a mesh of D forced CPU devices (XLA_FLAGS
--xla_force_host_platform_device_count=D in the child process, jax.make_mesh((D,), ("ctx",)) passed as mesh=; 1: no
mesh), a column per (method, D).

Cases: the embedded default base model (gpt_neox, 0.8M parameters), SmolLM2-135M-Instruct (cached known model) and
random Llama models of a few sizes; N contexts of T random tokens analysed at their last position.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

try:
    import ntkdyn  # noqa: F401  (an installed or PYTHONPATH checkout wins)
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _llama(d, layers, V, seed=0):
    import ntkdyn as nd
    from ntkdyn.models.transformer import init_params

    cfg = nd.ModelConfig(family="llama", vocab_size=V, d_model=d, n_layers=layers, n_heads=max(2, d // 64),
                         n_kv_heads=max(2, d // 64), d_ff=int(2.75 * d), max_positions=256, tie_word_embeddings=True,
                         activation="silu")
    return nd.LM(cfg, init_params(cfg, seed)[1])


def _default():
    import ntkdyn as nd
    from ntkdyn.default import default_model_dir

    return nd.load(default_model_dir(progress=False))


def _smollm2():
    import ntkdyn as nd

    return nd.load("smollm2-135m-instruct")


SUBSET = 16  # tokens of the "subset" cases: the first SUBSET ids of the contexts
# name: (model builder, N contexts, T tokens, output, extra decompose keywords)
CASES = {
    "tiny-trace-4": (lambda: _llama(16, 2, 97), 4, 8, "trace", {}),
    "tiny-full-4": (lambda: _llama(16, 2, 97), 4, 8, "full", {}),
    "tiny-hutch-4": (lambda: _llama(16, 2, 97), 4, 8, "hutchinson", {"num_probes": 16}),
    "default-trace-2": (_default, 2, 16, "trace", {}),
    "default-trace-8": (_default, 8, 16, "trace", {}),
    "default-trace-16": (_default, 16, 16, "trace", {}),
    "default-subset-2": (_default, 2, 16, "subset", {}),
    "default-subset-8": (_default, 8, 16, "subset", {}),
    "default-full-4": (_default, 4, 16, "full", {}),
    "default-hidden-4": (_default, 4, 16, "hidden", {}),
    "default-hutch-4": (_default, 4, 16, "hutchinson", {"num_probes": 16}),
    "llama-d128x2-trace-4": (lambda: _llama(128, 2, 1024), 4, 16, "trace", {}),
    "llama-d256x4-hutch-4": (lambda: _llama(256, 4, 2048), 4, 16, "hutchinson", {"num_probes": 16}),
    "smollm2-trace-2": (_smollm2, 2, 16, "trace", {}),
    "smollm2-trace-8": (_smollm2, 8, 16, "trace", {}),
    "smollm2-subset-2": (_smollm2, 2, 16, "subset", {}),
    "smollm2-subset-8": (_smollm2, 8, 16, "subset", {}),
}


def _inputs(name):
    build, N, T, output, kw = CASES[name]
    lm = build()
    ids = np.random.default_rng(0).integers(3, lm.config.vocab_size, (N, T)).astype(np.int32)
    if output == "subset":
        kw = dict(kw, tokens=np.unique(ids)[:SUBSET])
    return lm, ids, np.full(N, T - 1), output, kw


def one_process(name, method, devices="1"):
    """First and warm call of one case and method in this (fresh) process, on a mesh of `devices` devices (> 1)."""
    import jax

    from ntkdyn import ntk

    lm, ids, pos, output, kw = _inputs(name)
    if method != "default":
        kw = dict(kw, method=method)
    if int(devices) > 1:
        assert len(jax.devices()) == int(devices), jax.devices()
        kw = dict(kw, mesh=jax.make_mesh((int(devices),), ("ctx",)))

    def call():
        t = time.perf_counter()
        k = ntk.decompose(lm, ids, pos, output=output, **kw)
        jax.block_until_ready(jax.tree.leaves((k.representation, k.gradient, k.cross)))
        return time.perf_counter() - t, k

    first, k = call()
    warm, _ = call()
    return {"first_s": round(first, 3), "warm_s": round(warm, 3), "method": k.plan.method, "devices": k.plan.devices,
            "predicted_s": dict(k.plan.predicted_seconds), "load_average": round(os.getloadavg()[0], 1)}


def predict(name):
    """The plan of the default method (ntk.plan), without running a kernel."""
    from ntkdyn import ntk

    lm, ids, pos, output, kw = _inputs(name)
    kp = ntk.plan(lm, ids, pos, output=output, **kw)
    return {"case": name, "params": lm.num_params, "method": kp.method, "reason": kp.reason,
            "predicted_s": kp.predicted_seconds, "predicted_bytes": kp.predicted_bytes}


def _child(name, method, devices=1):
    env = dict(os.environ)
    if devices > 1:
        env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, __file__, "--child", name, method, str(devices)], capture_output=True,
                         text=True, env=env, timeout=3600)
    if out.returncode:
        raise RuntimeError(f"{name} {method} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(c for c in CASES if not c.startswith("smollm2")),
                    help="comma-separated case names (default: all but the SmolLM2 ones)")
    ap.add_argument("--methods", default="jacobian,structured", help="comma-separated: jacobian, structured, default")
    ap.add_argument("--devices", default="1", help="comma-separated device counts: 1 (no mesh) or a mesh of D "
                    "forced CPU devices")
    ap.add_argument("--rounds", type=int, default=1, help="rounds per case and method (order alternates)")
    ap.add_argument("--predict-only", action="store_true", help="print the default method's plans, run nothing")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(one_process(*args.child)), flush=True)
        return
    if args.predict_only:
        for name in args.cases.split(","):
            print(json.dumps(predict(name)), flush=True)
        return
    import ntkdyn

    devices = [int(d) for d in args.devices.split(",")]
    columns = [f"{m}@{d}" if len(devices) > 1 else m for m in args.methods.split(",") for d in devices]
    rows = []
    for name in args.cases.split(","):
        runs = {m: [] for m in columns}
        for r in range(args.rounds):
            for m in (columns if r % 2 == 0 else columns[::-1]):
                method, _, d = m.partition("@")
                runs[m].append(_child(name, method, int(d or 1)))
        row = {"case": name, "ntkdyn": os.path.dirname(ntkdyn.__file__), "rounds": args.rounds}
        for m, rs in runs.items():
            med = {k: round(statistics.median(x[k] for x in rs), 3) for k in ("first_s", "warm_s")}
            row[m] = {"method": rs[0]["method"], **med, "predicted_s": rs[0]["predicted_s"],
                      "load_average": [x["load_average"] for x in rs]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| case | " + " | ".join(f"{m}: ran / first / warm (s)" for m in columns) + " | load |")
    print("|---|" + "---|" * (len(columns) + 1))
    for r in rows:
        cells = [f"{r[m]['method']} / {r[m]['first_s']} / {r[m]['warm_s']}" for m in columns]
        loads = sorted(x for m in columns for x in r[m]["load_average"])
        print(f"| {r['case']} | " + " | ".join(cells) + f" | {loads[0]}-{loads[-1]} |")


if __name__ == "__main__":
    main()
