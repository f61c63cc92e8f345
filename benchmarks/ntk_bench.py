"""Speed of ntkdyn's decomposed eNTK (ntk.decompose) against generic empirical-NTK methods, same model and contexts.

Peers (each computes the same kernel Θ = R + G of the next-token logits, or its trace):
  (a) jax-jacobian: jax.jacrev of the logits at each context w.r.t. all parameters (vmapped over contexts), then
      contracted over the parameters (neural-tangents' "jacobian contraction").
  (b) jax-ntvp: NTK-vector products over the full logits: jax.vjp at the b contexts for each of the N_b·V basis
      cotangents, then jax.jvp at the a contexts, vmapped (neural-tangents' "ntk_vector_products").
  (c) torch.func: the PyTorch NTK tutorial (torch.func.functional_call + vmap(jacrev) + per-parameter einsum) on
      the transformers model with the same weights (lm.save -> AutoModelForCausalLM).
Where a peer's V×P Jacobians or basis products do not fit in memory at once they are taken in chunks of the
output dimension (same arithmetic). JAX peers are compiled ahead of time (not timed); every timing is the
median of a few repeats (one run when a run takes more than 10 s), after block_until_ready.

    python benchmarks/ntk_bench.py            # full benchmark, writes the `## ntk_bench` section of RESULTS.md
    python benchmarks/ntk_bench.py --quick    # tiny sizes, a smoke test (seconds); nothing written
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ntkdyn as nd  # noqa: E402
from ntkdyn import ntk  # noqa: E402
from ntkdyn.models.transformer import apply_head, features  # noqa: E402

MEM_LIMIT = 4e9  # bytes a peer may hold at once (Jacobians / basis products); larger ones are taken in chunks
SLOW = 10.0  # a run slower than this is timed once


# ----------------------------------------------------------------------------------------------- setup
def make_lm(V, d, L, T, seed=0):
    cfg = nd.ModelConfig(family="llama", vocab_size=V, d_model=d, n_layers=L, n_heads=max(1, d // 32),
                         n_kv_heads=max(1, d // 32), d_ff=2 * d, max_positions=T, tie_word_embeddings=False)
    return nd.LM.init(cfg, seed)


def n_params(tree):
    return int(sum(x.size for x in jax.tree.leaves(tree)))


def timeit(fn, repeats=3):
    """Median wall time of fn() (which blocks until its result is ready)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
        if times[-1] > SLOW:
            break
    return statistics.median(times), out


def block(x):
    return jax.block_until_ready(x)


# ----------------------------------------------------------------------------------------------- ours
def ours(lm, ids, pos, output):
    def run():
        k = ntk.decompose(lm, ids, pos, output=output, memory_budget=int(MEM_LIMIT))
        return block(k.total())

    run()  # warm-up: compiles
    return timeit(run)


# ----------------------------------------------------------------------------------------------- (a), (b) JAX
def z_single(lm):
    """Next-token logits of one context (a row whose last token is the analysed position)."""
    gd, cfg = lm.graphdef, lm.config

    def z(params, row):
        h = features(gd, cfg, params, row[None])[0][0, -1]
        return apply_head(params["head"], h)

    return z


def jax_jacobian(lm, ids, output):
    z, params = z_single(lm), lm.params
    N, V = ids.shape[0], lm.config.vocab_size
    P = n_params(params)
    chunks = max(1, math.ceil(N * V * P * 4 * 1.5 / MEM_LIMIT))
    while V % chunks:
        chunks += 1
    cs = V // chunks

    def jac(params, rows, c):  # J over the logits c*cs .. (c+1)*cs: leaves (N, cs, *leaf)
        zc = lambda p, r: jax.lax.dynamic_slice_in_dim(z(p, r), c * cs, cs)  # noqa: E731
        return jax.vmap(jax.jacrev(zc), in_axes=(None, 0))(params, rows)

    if output == "full":
        if chunks > 1:
            return None, f"skipped: its N×V×P Jacobian ({N * V * P * 4 / 1e9:.1f} GB) exceeds the memory limit"

        def f(params, rows):
            J = jac(params, rows, 0)
            return sum(jnp.einsum("avp,bwp->abvw", j.reshape(N, V, -1), j.reshape(N, V, -1))
                       for j in jax.tree.leaves(J))
    else:
        def f(params, rows):
            def body(c, acc):
                J = jac(params, rows, c)
                return acc + sum(jnp.einsum("avp,bvp->ab", j.reshape(N, cs, -1), j.reshape(N, cs, -1))
                                 for j in jax.tree.leaves(J))
            return jax.lax.fori_loop(0, chunks, body, jnp.zeros((N, N), jnp.float32))

    compiled = jax.jit(f).lower(params, ids).compile()
    return timeit(lambda: block(compiled(params, ids))), f"V-chunks: {chunks}" if chunks > 1 else ""


def jax_ntvp(lm, ids, output):
    z, params = z_single(lm), lm.params
    N, V = ids.shape[0], lm.config.vocab_size
    P = n_params(params)
    n_basis = N * V
    chunk = n_basis
    while chunk * P * 4 * 2 > MEM_LIMIT and chunk % 2 == 0:
        chunk //= 2

    def f(params, rows):
        fb = lambda p: jax.vmap(z, in_axes=(None, 0))(p, rows)  # noqa: E731  (N, V): the b side
        _, vjp = jax.vjp(fb, params)

        def products(E):  # E (n, N, V) basis cotangents -> Θ(a, ·) E: (n, N, V)
            def one(e):
                (g,) = vjp(e)
                return jax.jvp(fb, (params,), (g,))[1]
            return jax.vmap(one)(E)

        basis = jnp.eye(n_basis, dtype=jnp.float32).reshape(n_basis // chunk, chunk, N, V)
        out = jax.lax.map(products, basis).reshape(N, V, N, V)  # [b, w, a, v] = Θ(a, b)[v, w]
        K = jnp.transpose(out, (2, 0, 3, 1))  # (a, b, v, w)
        return K if output == "full" else jnp.trace(K, axis1=2, axis2=3)

    compiled = jax.jit(f).lower(params, ids).compile()
    return timeit(lambda: block(compiled(params, ids))), f"basis chunks: {n_basis // chunk}" if chunk < n_basis else ""


# ----------------------------------------------------------------------------------------------- (c) torch.func
def torch_func(lm, ids, output, tmp):
    import torch
    import transformers
    from torch.func import functional_call, jacrev, vmap

    torch.set_num_threads(os.cpu_count() or 1)
    path = os.path.join(tmp, f"hf_{lm.config.vocab_size}_{lm.config.d_model}_{lm.config.n_layers}")
    if not os.path.isdir(path):
        lm.save(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager",
                                                              dtype=torch.float32).eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    N, V = ids.shape[0], lm.config.vocab_size
    P = sum(p.numel() for p in params.values())
    chunk = V
    while N * chunk * P * 4 * 1.5 > MEM_LIMIT and chunk % 2 == 0:
        chunk //= 2
    if output == "full" and chunk < V:
        return None, f"skipped: its N×V×P Jacobian ({N * V * P * 4 / 1e9:.1f} GB) exceeds the memory limit"
    x = torch.as_tensor(np.array(ids), dtype=torch.long)

    def fnet_single(params, row):  # the tutorial's per-example function
        return functional_call(model, params, (row.unsqueeze(0),)).logits[0, -1]

    def jac(lo, hi):  # (N, hi - lo, P) Jacobian of the logits lo..hi-1, per parameter
        f = fnet_single if (lo, hi) == (0, V) else (lambda p, r: fnet_single(p, r)[lo:hi])
        return [j.flatten(2) for j in vmap(jacrev(f), (None, 0))(params, x).values()]

    def run():
        with torch.no_grad():
            if output == "full":
                J = jac(0, V)
                return sum(torch.einsum("Naf,Mbf->NMab", j, j) for j in J)
            out = 0
            for lo in range(0, V, chunk):
                out = out + sum(torch.einsum("Naf,Maf->NM", j, j) for j in jac(lo, lo + chunk))
            return out

    with torch.no_grad():  # warm-up
        vmap(jacrev(lambda p, r: fnet_single(p, r)[:8]), (None, 0))(params, x[:1])
    try:
        return timeit(run), f"V-chunks: {V // chunk}" if chunk < V else ""
    except Exception as e:  # noqa: BLE001 - report, do not hide
        return None, f"failed: {type(e).__name__}: {str(e)[:120]}"


# ----------------------------------------------------------------------------------------------- driver
def rel_diff(x, ref):
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(x - ref).max() / np.abs(ref).max())


def label(r):
    return f"{r['output']} V={r['V']} d={r['d']} L={r['L']} T={r['T']} N={r['N']}"


def bench_case(case, tmp, log, done=()):
    V, d, L, T, N, output = case["V"], case["d"], case["L"], case["T"], case["N"], case["output"]
    lm = make_lm(V, d, L, T)
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, V, size=(N, T)), jnp.int32)
    pos = np.full((N,), T - 1)
    P = n_params(lm.params)
    row = dict(case, P=P)
    (t_ours, K_ours) = ours(lm, ids, pos, output)
    row["ours"] = t_ours
    K_ours = np.asarray(K_ours)
    log(f"  ours: {t_ours:.3f} s")
    for name, fn in (("jax-jacobian", lambda: jax_jacobian(lm, ids, output)),
                     ("jax-ntvp", lambda: jax_ntvp(lm, ids, output)),
                     ("torch.func", lambda: torch_func(lm, ids, output, tmp))):
        if name in case.get("skip", {}):
            ref, factor, law = case["skip"][name]
            t_ref = done[ref].get(name, (None,))[0] if ref < len(done) else None
            note = (f"skipped for time: predicted ≈ {factor * t_ref:,.0f} s ({factor}x its {t_ref:.1f} s at "
                    f"{label(done[ref])}, {law})" if t_ref else f"skipped for time ({law})")
            row[name] = (None, None, note)
            log(f"  {name}: {note}")
            continue
        res, note = fn()
        if res is None:
            row[name] = (None, None, note)
            log(f"  {name}: {note}")
            continue
        t, K = res
        if hasattr(K, "detach"):
            K = K.detach().numpy()
        diff = rel_diff(K_ours, K)
        row[name] = (t, diff, note)
        log(f"  {name}: {t:.3f} s ({t / t_ours:.1f}x ours), max rel diff {diff:.1e} {note}")
    return row


def table(rows):
    peers = ("jax-jacobian", "jax-ntvp", "torch.func")
    head = ("| output | V | d | layers | T | N | params | ntkdyn (s) | " + " | ".join(f"{p} (s)" for p in peers)
            + " | fastest peer / ntkdyn | max rel diff vs peers |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    notes = []
    for r in rows:
        cells, diffs, best = [], [], math.inf
        for p in peers:
            t, diff, note = r.get(p, (None, None, "not run"))
            if t is None:
                cells.append("—")
                notes.append(f"{label(r)}: {p} {note}")
            else:
                cells.append(f"{t:.2f}")
                diffs.append(diff)
                best = min(best, t)
                if note:
                    notes.append(f"{label(r)}: {p} {note}")
        ratio = f"**{best / r['ours']:.0f}x**" if best < math.inf else "—"
        dstr = f"{max(diffs):.1e}" if diffs else "—"
        lines.append(f"| {r['output']} | {r['V']} | {r['d']} | {r['L']} | {r['T']} | {r['N']} | {r['P']:,} | "
                     f"{r['ours']:.3f} | " + " | ".join(cells) + f" | {ratio} | {dstr} |")
    return "\n".join(lines), notes


# skipped peers: (index of a measured case, cost factor relative to it, scaling law) -> a predicted time
P3 = ("jax-jacobian", "jax-ntvp", "torch.func")
CASES = [
    dict(output="full", V=1024, d=64, L=2, T=16, N=2),
    dict(output="full", V=1024, d=128, L=2, T=16, N=2),
    dict(output="full", V=1024, d=128, L=2, T=64, N=2),
    dict(output="full", V=1024, d=64, L=2, T=16, N=16, skip={p: (0, 64, "cost ∝ N²") for p in P3}),
    dict(output="trace", V=4096, d=64, L=2, T=16, N=2),
    dict(output="trace", V=8192, d=64, L=4, T=16, N=2,
         skip={p: (4, 4, "cost ∝ V × depth") for p in ("jax-jacobian", "torch.func")}),
    dict(output="trace", V=8192, d=64, L=4, T=16, N=64,
         skip={"jax-jacobian": (4, 4 * 32, "cost ∝ V × depth × N"), "jax-ntvp": (5, 1024, "cost ∝ N²"),
               "torch.func": (4, 4 * 32, "cost ∝ V × depth × N")}),
]
QUICK = [
    dict(output="full", V=256, d=32, L=1, T=8, N=2),
    dict(output="trace", V=512, d=32, L=1, T=8, N=2),
]


def write_results(text, path):
    """Replace (or append) the `## ntk_bench` section of RESULTS.md, leaving the other sections untouched."""
    old = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
    start = old.find("\n## ntk_bench")
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + 1)
        new = old[:start].rstrip("\n") + "\n\n" + text + ("" if end < 0 else "\n" + old[end:])
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(new.rstrip("\n") + "\n")
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test that runs in seconds")
    ap.add_argument("--no-write", action="store_true", help="do not write benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    cases = QUICK if args.quick else CASES
    load0 = os.getloadavg()[0]
    t0 = time.time()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            print(label(case), flush=True)
            rows.append(bench_case(case, tmp, lambda s: print(s, flush=True), rows))
    total = time.time() - t0
    load1 = os.getloadavg()[0]
    tab, notes = table(rows)
    print()
    print(tab)
    for n in notes:
        print("-", n)
    print(f"total {total:.0f} s; 1-min load average {load0:.1f} at the start, {load1:.1f} at the end")
    if args.quick or args.no_write:
        return rows
    import torch
    import transformers
    largest = max((r for r in rows if any(r.get(p, (None,))[0] for p in ("jax-jacobian", "jax-ntvp", "torch.func"))),
                  key=lambda r: (r["V"], r["d"]))
    best = min(r[0] for p, r in largest.items() if p in ("jax-jacobian", "jax-ntvp", "torch.func") and r[0])
    text = f"""## ntk_bench

The decomposed eNTK (`ntk.decompose`, R + G from d reverse passes per context and a d×d contraction) against
generic empirical-NTK methods on the same model and contexts: (a) jax-jacobian = jax.jacrev of the logits w.r.t.
all parameters, vmapped over contexts, then contracted (neural-tangents' "jacobian contraction"); (b) jax-ntvp =
NTK-vector products, jax.vjp + jax.jvp for every one of the N·V output basis vectors, vmapped (neural-tangents'
"ntk_vector_products"); (c) torch.func = the PyTorch NTK tutorial (functional_call + vmap(jacrev) + per-parameter
einsum) on the transformers model with the same weights. "full": the (N, N, V, V) kernel Θ = R + G; "trace": the
(N, N) traces tr Θ. Model: Llama family (RMSNorm, RoPE, SwiGLU, untied head), float32, random init; contexts: N
rows of T random tokens, analysed at their last position. Times: median of up to 3 runs after a warm-up
(JAX peers compiled ahead of time; ntkdyn's time includes everything it does after its first call); a run over
{SLOW:.0f} s is timed once. Memory: peers whose Jacobians exceed {MEM_LIMIT / 1e9:.0f} GB take them in chunks of
the output dimension (trace) or are skipped (full); ntkdyn runs with memory_budget={MEM_LIMIT / 1e9:.0f} GB.
Costs: ntkdyn needs d reverse passes per context plus an N²d²P ("full": then G = W M Wᵀ) or N²dP ("trace") contraction; jax-jacobian and
torch.func need V reverse passes per context plus an N²V²P contraction; jax-ntvp needs N²V reverse + forward passes.
Machine: {platform.machine()} CPU with {os.cpu_count()} cores, 1-min load average {load0:.1f} at the start and
{load1:.1f} at the end (other processes shared the cores); total {total / 60:.1f} min.
jax {jax.__version__}, torch {torch.__version__}, transformers {transformers.__version__}.

{tab}

Notes:
""" + "\n".join(f"- {n}" for n in notes) + f"""

**At the largest V with peers ({largest['output']}, V={largest['V']}, d={largest['d']}): ntkdyn is
{best / largest['ours']:.0f}x faster than the fastest peer** (target >= 10x). The max relative difference column
compares ntkdyn's kernel with each peer's (float32).

Command: `python benchmarks/ntk_bench.py` (smoke test: `python benchmarks/ntk_bench.py --quick`).
"""
    write_results(text, os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md"))
    return rows


if __name__ == "__main__":
    main()
