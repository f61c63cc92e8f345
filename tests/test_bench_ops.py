"""benchmarks/real_bench.py's op-by-op profile (section ops): the FLOPs it reads from a compiled module's HLO and
the seconds it attributes to XLA ops from a jax.profiler trace, checked on small programs against closed forms; and
section pages' record (the first-write timings and the allocator settings of the environment)."""
import os
import sys

import jax
import jax.numpy as jnp
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import real_bench as RB  # noqa: E402


def _dots(table):
    return [ins for ins in table.values() if ins["opcode"] == "dot"]


def test_hlo_table_counts_the_flops_of_every_dot():
    m, k, n, b = 48, 40, 24, 3
    x, w, v = jnp.ones((m, k)), jnp.ones((k, n)), jnp.ones((b, n, k))
    f = jax.jit(lambda x, w, v: (jnp.tanh(x @ w) @ w.T, jnp.einsum("bnk,nk->bk", v, w.T)))
    table = RB.hlo_table(f.lower(x, w, v).compile().as_text())
    flops = sorted(ins["flops"] for ins in _dots(table))
    # x @ w: 2mkn; (m, n) @ (n, k): 2mnk; the batched contraction over n: 2·b·k·n
    assert flops == sorted([2.0 * m * k * n, 2.0 * m * n * k, 2.0 * b * k * n])
    fused = [ins for ins in table.values() if ins["opcode"] == "fusion" and ins["flops"]]
    for ins in fused:  # a fusion's FLOPs are those of the dots of the computation it calls
        inner = [t for t in table.values() if t["comp"] == ins["calls"] and t["opcode"] == "dot"]
        assert ins["flops"] == sum(t["flops"] for t in inner) > 0


def test_op_profile_attributes_the_traced_seconds_to_the_instructions(tmp_path):
    x = jnp.ones((256, 256))
    f = jax.jit(lambda x: jnp.exp(x @ x) @ x)
    compiled = f.lower(x).compile()
    table = RB.hlo_table(compiled.as_text())
    jax.block_until_ready(compiled(x))
    with jax.profiler.trace(str(tmp_path), create_perfetto_trace=True):
        jax.block_until_ready(compiled(x))
    events = RB.trace_events(str(tmp_path))
    prof = RB.op_profile(events, table, wall=1.0)
    # both products ran and were counted once each: 2 · 2 · 256³ FLOPs
    assert prof["matmul_gflop"] == pytest.approx(round(4 * 256 ** 3 / 1e9, 1))
    assert prof["ops_s"] == pytest.approx(prof["matmul_s"] + prof["other_s"], abs=2e-3)
    assert sum(r["events"] for r in prof["top"]) >= 2
    assert all(r["seconds"] >= 0 and r["kind"] for r in prof["top"])
    with pytest.raises(RuntimeError, match="no perfetto trace"):
        RB.trace_events(str(tmp_path / "empty"))


def test_section_pages_times_first_writes_and_records_the_allocator(monkeypatch):
    monkeypatch.setenv("MALLOC_CONF", "dirty_decay_ms:-1")
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    res = RB.section_pages(gib=1 / 64, pauses=(0, 0))
    assert res["machine"]["allocator"] == {"MALLOC_CONF": "dirty_decay_ms:-1"}
    assert [w["pause_s"] for w in res["writes"]] == [0, 0]
    for w in res["writes"]:
        assert w["first_write_s"] > 0 and w["rewrite_s"] > 0 and w["us_per_page"] >= 0


def test_machine_records_the_cpu_its_generation_and_its_simd_flags(tmp_path):
    # a virtual machine's /proc/cpuinfo that names only "AMD EPYC": family and model tell Zen 4 from Zen 5
    info = tmp_path / "cpuinfo"
    processor = ("processor\t: {}\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
                 "model name\t: AMD EPYC\nstepping\t: 1\nflags\t\t: fpu sse avx2 fma avx512f avx512_bf16 vaes\n\n")
    info.write_text(processor.format(0) + processor.format(1).replace("AMD EPYC", "other"))
    m = RB.machine(str(info))
    assert m["cpu"] == "AMD EPYC" and m["cpu_id"] == "family 25 model 17 stepping 1"
    assert m["cpu_flags"] == ["avx2", "fma", "avx512f", "avx512_bf16"]
    assert m["cores"] == os.cpu_count() and len(m["load_average"]) == 3
    assert RB.machine(str(tmp_path / "absent"))["cpu_id"] == "family ? model ? stepping ?"


def test_update_ops_counts_the_products_of_the_compiled_update():
    """section profile's update FLOPs (update_ops) against the dots of the compiled rl_update (hlo_table), on a
    tiny llama: padded and packed in one batch equal exactly; in 2 micro-batches the module holds one scan body
    (its dots counted once: half); with the head in chunks it holds one chunk's four products (forward,
    rematerialised forward, two backward) inside a loop over the chunks."""
    import numpy as np
    from ntk_cases import tiny
    from test_packing import _batch, _micro_plans

    from ntkdyn.optim import make_optimizer
    from ntkdyn.rl import packing
    from ntkdyn.rl.step import LossSpec, opt_init, rl_update

    lm = tiny("llama", True, d=32, n_heads=4, n_kv_heads=2)
    P, G, Tp, N = 4, 2, 5, 6
    b = _batch(np.random.default_rng(1), [6, 1, 2, 6, 3, 4, 2, 2], P=P)
    tx = make_optimizer("sgd", 1e-2)

    def hlo_flops(micro, packed, chunk):
        ls = LossSpec(1.0, 0.2, "seq_mean_token_mean", 0.0, "k3", False, G, micro_batches=micro, logit_chunk=chunk)
        plan = (packing.pack(b["mask"]) if micro == 1 else _micro_plans(b["mask"], micro, G)) if packed else None
        batch = {**b, **({} if plan is None else {"packing": plan})}
        f = jax.jit(lambda p, s, bt: rl_update(p, s, bt, jnp.zeros_like(b["mask"]), True, None, graphdef=lm.graphdef,
                                               cfg=lm.config, tx=tx, ls=ls, group="all"))
        table = RB.hlo_table(f.lower(lm.params, opt_init(lm.params, tx=tx), batch).compile().as_text())
        rows = None if plan is None else int(np.prod(plan.rows.shape[:-1]))
        return sum(i["flops"] for i in _dots(table)), RB.update_ops(lm.config, P, G, Tp, N, chunk, rows, micro)

    for packed in (False, True):
        hlo, ops = hlo_flops(1, packed, 0)
        assert hlo == sum(ops.values())
        hlo2, ops2 = hlo_flops(2, packed, 0)
        assert ops2 == ops and 2 * hlo2 == sum(ops.values())
    hlo, ops = hlo_flops(1, True, 0)
    assert ops["head"] < hlo_flops(1, False, 0)[1]["head"]  # packing: fewer head tokens
    hlo, ops = hlo_flops(1, False, 8)  # 8 x 6 head tokens: 6 chunks of 8
    rest = sum(v for k, v in ops.items() if k != "head")
    assert ops["head"] == 6 * (hlo - rest) > 0
    hlo, ops = hlo_flops(1, False, 10)  # 48 tokens in chunks of <= 10: 5 equal chunks of 10 (2 padding rows)
    assert ops["head"] == 5 * (hlo - rest) and ops["head"] == 4 * 2 * 50 * 32 * lm.config.vocab_size
