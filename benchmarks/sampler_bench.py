"""Tokens per second of ntkdyn's jit KV-cache sampler vs transformers' `generate` (PyTorch, CPU) on the same
weights and prompts. Prints one ratio from one run.

    python benchmarks/sampler_bench.py [--batch 32] [--new 64] [--repeats 3]          # a random small gpt_neox
    python benchmarks/sampler_bench.py --model smollm2-135m-instruct --batch 8         # a real checkpoint

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
    args = ap.parse_args(argv)

    lm, path = _models(args)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    V = lm.config.vocab_size
    prompts = np.random.RandomState(0).randint(3, V, (args.batch, args.prompt_len)).astype(np.int32)
    n_tokens = args.batch * args.new

    def ours(seed):
        g = lm.generate(prompts, args.new, temperature=1.0, seed=seed, stop_token=-1)
        jax.block_until_ready(g.tokens)

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
    c = lm.config
    print(f"model: {args.model or c.family} d={c.d_model} L={c.n_layers} V={V} params={lm.num_params:,}; "
          f"batch {args.batch}, "
          f"prompt {args.prompt_len}, {args.new} new tokens; torch threads {torch.get_num_threads()}, "
          f"jax devices {jax.devices()}")
    print(f"ntkdyn       {n_tokens / t_ours:10.0f} tokens/s  ({t_ours * 1e3:.1f} ms)")
    print(f"transformers {n_tokens / t_hf:10.0f} tokens/s  ({t_hf * 1e3:.1f} ms)")
    print(f"ratio ntkdyn / transformers: {t_hf / t_ours:.2f}x")


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
