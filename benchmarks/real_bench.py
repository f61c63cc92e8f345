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
           optimizer step per batch (RL_ARGS). Target >= 2x.
  remat    ntkdyn's RL steps with the settings of (d), without and with `RLConfig.remat` (each layer rematerialised
           in the update's backward pass), each in its own process: peak resident memory and s/step of both.
  scaling  RL steps/s of `ntkdyn rl` on meshes (issue 24): the embedded default model (a tiny one: a real model's
           compilations on 4 forced devices would take most of the time; SCALING_ARGS) on 1 device without a mesh
           and with `--mesh data=1` (the cost of a mesh over one device), on 2 and 4 forced CPU devices
           (XLA_FLAGS=--xla_force_host_platform_device_count) with data, fsdp and both, and on 2 processes of one
           CPU device each (jax.distributed on 127.0.0.1); each run its own `ntkdyn rl` process, steps/s the
           median over the steps after the first two (compilation), and its ratio to the one-device run. The CPU
           devices of one host share its cores: this measures the cost of the collectives, not a speed-up.
Every section reports VmHWM (peak resident memory, /proc/self/status) and VmRSS after loading the model.

The model is read from `<cache>/models/smollm2-135m-instruct` when it exists (NTKDYN_CACHE or ~/.cache/ntkdyn),
else a random Llama of SmolLM2's shape is built (the timings depend on the shape only). Heavy: run it once.

    python benchmarks/real_bench.py                  # all sections, one JSON line each
    python benchmarks/real_bench.py --only trace     # one section in this process
"""
from __future__ import annotations

import argparse
import json
import os
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

NAME = "smollm2-135m-instruct"
SHAPE = dict(family="llama", vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, d_ff=1536,
             max_positions=2048, tie_word_embeddings=True, activation="silu", norm_eps=1e-5, rope_theta=100000.0)
PROMPTS = ("The capital of France is", "Two plus three equals")
SECTIONS = ("trace", "budget", "hutch", "subset", "onestep", "rl", "remat", "scaling")
# (d): rl_bench's machinery with the settings (8 prompts x 4 samples, 32 new tokens, one step per batch)
RL_ARGS = ["--task", "mul", "--prompts", "8", "--group", "4", "--new", "32", "--steps", "6", "--trl-steps", "5",
           "--warmup", "2", "--rounds", "1", "--lr", "1e-5", "--score-truncated"]


def mem_mb():
    """(VmHWM, VmRSS) of this process in MB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmHWM", "VmRSS")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return round(out["VmHWM"]), round(out["VmRSS"])


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
    a = rl_bench.parser().parse_args(RL_ARGS + ["--model", path])
    m = rl_bench.measure(a)
    m.pop("raw")
    return {"args": " ".join(RL_ARGS), **m, "ratio": round(m["ratio_steps"], 3)}


def section_remat(path):
    """ntkdyn's RL steps with (d)'s settings without and with RLConfig.remat, each run in its own process
    (rl_bench.run_ntkdyn): VmHWM and the median s/step after the warm-up steps."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import rl_bench

    if not os.path.isdir(path):
        raise SystemExit(f"section remat needs the real checkpoint directory {path}: ntkdyn fetch {NAME}")
    out = {"args": " ".join(RL_ARGS)}
    for remat in (False, True):
        a = rl_bench.parser().parse_args(RL_ARGS + ["--model", path] + (["--remat"] if remat else []))
        r = rl_bench.run_ntkdyn(a)
        key = "remat" if remat else "plain"
        out[key] = {"peak_rss_mb": r["peak_rss_mb"], "step_s_median": round(statistics.median(
            r["step_times"][a.warmup:]), 3), "first_step_s": round(r["step_times"][0], 2),
            "mean_length": round(float(np.mean(r["mean_length"])), 2)}
    out["peak_ratio"] = round(out["remat"]["peak_rss_mb"] / out["plain"]["peak_rss_mb"], 3)
    out["step_time_ratio"] = round(out["remat"]["step_s_median"] / out["plain"]["step_s_median"], 3)
    return out


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


def run_section(name):
    t0 = time.perf_counter()
    if name == "scaling":  # every run its own ntkdyn rl process(es)
        out = {"section": name, **section_scaling()}
        out.update(total_seconds=round(time.perf_counter() - t0, 1), load_average=os.getloadavg(), jax=jax.__version__)
        return out
    if name in ("rl", "remat"):  # the trainer and TRL load the model themselves
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
    args = ap.parse_args(argv)
    if args.only:
        print(json.dumps(run_section(args.only)), flush=True)
        return
    for name in args.sections.split(","):
        res = subprocess.run([sys.executable, os.path.abspath(__file__), "--only", name], capture_output=True,
                             text=True)
        lines = [x for x in res.stdout.splitlines() if x.startswith("{")]
        print(lines[-1] if lines else json.dumps({"section": name, "error": res.stderr[-2000:]}), flush=True)


if __name__ == "__main__":
    main()
