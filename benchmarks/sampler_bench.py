"""Tokens per second of ntkdyn's jit KV-cache sampler vs transformers' `generate` (PyTorch, CPU) on the same
weights and prompts. Prints one ratio from one run.

    python benchmarks/sampler_bench.py [--batch 32] [--new 64] [--repeats 3]          # a random small gpt_neox
    python benchmarks/sampler_bench.py --model smollm2-135m-instruct --batch 8         # a real checkpoint
    python benchmarks/sampler_bench.py --model smollm2-135m-instruct --batch 8 --narrow  # weight types at decode
    python benchmarks/sampler_bench.py --model smollm2-135m-instruct --batch 8 --weights int8   # the int8 sampler

--weights int8: ntkdyn's sampler reads int8 weights (models/quantize.py; lm.generate(weights="int8")); the float32
sampler is timed beside it, and the int8 model's next-token distributions are compared with float32's on the
float32 sampler's sequences (teacher-forced, every prompt and completion position): the share of positions whose
argmax agrees, and KL(float32 || int8) in nats (mean, 99th percentile, max).

--narrow (no transformers side): what a decode step's weight reads cost in each weight type on this backend, at the
model's own matrix shapes and --batch rows: one jitted pass of x (batch, n_in) @ W over every matrix of the model
(the weight-bound part of a decode step) with W in float32, bfloat16 (x too), bfloat16 converted to float32 in
the program, int8 with per-column float32 scales (converted to float32 in the program), int8 with the activations
quantized to int8 too (the int8 sampler's product, models/quantize.int8_matmul); and one sum over every float32
weight (a pure read: the bandwidth bound of float32 decoding). Each as ms per step, GB/s of weights read, and the
ratio to float32 — a narrower weight type helps the sampler only where this ratio is well below 1.

With --model (a directory, a .gguf file or a known name), both sides load the same converted Hugging Face
directory (transformers opens it with AutoModelForCausalLM, float32); prompts are random ids of the vocabulary.
"""
import argparse
import os
import tempfile
import time

import jax
import numpy as np
import torch
import transformers

import ntkdyn as nd


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=8)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default=None, help="a real checkpoint (directory, .gguf or known name) instead of "
                    "the random gpt_neox of --d-model / --layers")
    ap.add_argument("--narrow", action="store_true", help="time a decode step's weight reads per weight type "
                    "(float32, bfloat16, int8) at the model's shapes instead of the sampler comparison")
    ap.add_argument("--weights", default="float32", choices=("float32", "int8"),
                    help="the weights ntkdyn's sampler reads (int8: also times float32 and compares distributions)")
    args = ap.parse_args(argv)

    lm, path = _models(args)
    if args.narrow:
        return narrow_types(lm, args.batch, args.repeats)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    V = lm.config.vocab_size
    prompts = np.random.RandomState(0).randint(3, V, (args.batch, args.prompt_len)).astype(np.int32)
    n_tokens = args.batch * args.new

    def ours(seed, weights=args.weights):
        g = lm.generate(prompts, args.new, temperature=1.0, seed=seed, stop_token=-1, weights=weights)
        jax.block_until_ready(g.tokens)
        return g

    def theirs(seed):
        torch.manual_seed(seed)
        with torch.no_grad():
            hf.generate(torch.tensor(prompts, dtype=torch.long), attention_mask=torch.ones_like(
                torch.tensor(prompts)), do_sample=True, temperature=1.0, top_k=0, max_new_tokens=args.new,
                min_new_tokens=args.new, pad_token_id=0, eos_token_id=None)

    def timed(fn):
        fn(0)  # warm-up (and jit compile for ours)
        ts = []
        for r in range(args.repeats):
            t = time.perf_counter()
            fn(r + 1)
            ts.append(time.perf_counter() - t)
        return float(np.median(ts))

    t_ours, t_hf = timed(ours), timed(theirs)
    t_f32 = timed(lambda seed: ours(seed, "float32")) if args.weights != "float32" else t_ours
    c = lm.config
    print(f"model: {args.model or c.family} d={c.d_model} L={c.n_layers} V={V} params={lm.num_params:,}; "
          f"batch {args.batch}, "
          f"prompt {args.prompt_len}, {args.new} new tokens; torch threads {torch.get_num_threads()}, "
          f"jax devices {jax.devices()}")
    print(f"ntkdyn ({args.weights}) {n_tokens / t_ours:10.0f} tokens/s  ({t_ours * 1e3:.1f} ms)")
    if args.weights != "float32":
        print(f"ntkdyn (float32) {n_tokens / t_f32:10.0f} tokens/s  ({t_f32 * 1e3:.1f} ms)")
    print(f"transformers {n_tokens / t_hf:10.0f} tokens/s  ({t_hf * 1e3:.1f} ms)")
    print(f"ratio ntkdyn ({args.weights}) / transformers: {t_hf / t_ours:.2f}x")
    if args.weights != "float32":
        print(f"ratio ntkdyn (float32) / transformers: {t_hf / t_f32:.2f}x; {args.weights} / float32: "
              f"{t_f32 / t_ours:.2f}x")
        agree, kl = distribution_gap(lm, prompts, ours(0, "float32").tokens)
        print(f"{args.weights} vs float32 next-token distributions on {kl.size} positions of the float32 samples: "
              f"argmax agrees at {agree:.4f}; KL(float32 || {args.weights}) mean {kl.mean():.2e}, 99th percentile "
              f"{np.percentile(kl, 99):.2e}, max {kl.max():.2e} nats")


def distribution_gap(lm, prompts, tokens):
    """(share of positions where the int8 model's argmax equals float32's, KL(float32 || int8) per position) over
    every position of prompts + tokens, teacher-forced through both models."""
    from ntkdyn.models.transformer import features, head_logits

    ids = jax.numpy.asarray(np.concatenate([prompts, np.asarray(tokens)], 1), jax.numpy.int32)
    qgraphdef, qparams = lm.int8_weights()
    lp32 = jax.nn.log_softmax(lm.logits(ids), -1)
    lp8 = jax.nn.log_softmax(head_logits(lm.config, qparams["head"], features(qgraphdef, lm.config, qparams, ids)[0]),
                             -1)
    kl = np.asarray(jax.numpy.sum(jax.numpy.exp(lp32) * (lp32 - lp8), -1), np.float64).ravel()
    agree = float(np.mean(np.asarray(lp32.argmax(-1) == lp8.argmax(-1))))
    return agree, kl


def narrow_types(lm, batch, repeats):
    """Print ms per pass of x @ W over every weight matrix of `lm` (see the module docstring) per weight type."""
    import jax.numpy as jnp

    from ntkdyn.models.quantize import int8_matmul, quantize_columns

    mats = [np.asarray(w, np.float32) for w in jax.tree.leaves(lm.params) if np.ndim(w) == 2]
    nbytes = sum(m.size for m in mats) * 4
    rng = np.random.default_rng(0)
    x = {n: jnp.asarray(rng.standard_normal((batch, n)), jnp.float32) for n in {m.shape[0] for m in mats}}

    def f32(ws, xs):
        return sum(jnp.sum(xs[w.shape[0]] @ w) for w in ws)

    def bf16(ws, xs):
        return sum(jnp.sum(xs[w.shape[0]].astype(jnp.bfloat16) @ w, dtype=jnp.float32) for w in ws)

    def bf16_to_f32(ws, xs):
        return sum(jnp.sum(xs[w.shape[0]] @ w.astype(jnp.float32)) for w in ws)

    def int8(ws, xs):
        return sum(jnp.sum((xs[q.shape[0]] @ q.astype(jnp.float32)) * s) for q, s in ws)

    def int8_int8(ws, xs):  # the int8 sampler's product: activations quantized per row (two levels), s8 x s8 -> s32
        return sum(jnp.sum(int8_matmul(xs[q.shape[0]], q, s)) for q, s in ws)

    def read(ws, xs):
        return sum(jnp.sum(w) for w in ws)

    cases = [("float32 weights", f32, [jnp.asarray(m) for m in mats], 4),
             ("bfloat16 weights and x", bf16, [jnp.asarray(m, jnp.bfloat16) for m in mats], 2),
             ("bfloat16 weights -> float32", bf16_to_f32, [jnp.asarray(m, jnp.bfloat16) for m in mats], 2),
             ("int8 weights + scales", int8, [quantize_columns(m) for m in mats], 1),
             ("int8 weights, int8 x (sampler)", int8_int8, [quantize_columns(m) for m in mats], 1),
             ("read float32 weights (sum)", read, [jnp.asarray(m) for m in mats], 4)]
    print(f"{len(mats)} weight matrices, {nbytes / 1e6:.0f} MB in float32; {batch} rows; jax {jax.__version__} on "
          f"{jax.devices()[0].platform}")
    base = None
    for name, fn, ws, width in cases:
        g = jax.jit(fn)
        jax.block_until_ready(g(ws, x))
        ts = []
        for _ in range(max(repeats, 5)):
            t = time.perf_counter()
            jax.block_until_ready(g(ws, x))
            ts.append(time.perf_counter() - t)
        t = float(np.median(ts))
        base = base or t
        print(f"{name:30s} {t * 1e3:9.2f} ms/step  {nbytes * width / 4 / t / 1e9:6.1f} GB/s of weights  "
              f"{t / base:6.2f}x float32")


def _models(args):
    """(ntkdyn LM, the Hugging Face directory transformers loads): a known / given checkpoint, else a random
    gpt_neox saved to a temporary directory."""
    if args.model:
        from ntkdyn.models.known import resolve

        path = resolve(args.model)
        return nd.load(path), path
    cfg = nd.ModelConfig(family="gpt_neox", vocab_size=64, d_model=args.d_model, n_layers=args.layers, n_heads=4,
                         n_kv_heads=4, d_ff=4 * args.d_model, max_positions=128, rotary_pct=0.25,
                         parallel_residual=True, qkv_bias=True, out_bias=True, eos_token_id=2, pad_token_id=0,
                         bos_token_id=1)
    lm = nd.LM.init(cfg, seed=0)
    return lm, lm.save(os.path.join(tempfile.mkdtemp(), "model"))


if __name__ == "__main__":
    main()
