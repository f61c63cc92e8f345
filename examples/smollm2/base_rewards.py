"""Base reward of an instruct model on the natural-language tasks (the README's table).

    python examples/smollm2/base_rewards.py                       # add mul two-sum list-multiples, 32 new tokens
    python examples/smollm2/base_rewards.py add mul --max-new-tokens 64 --prompts 20

Every held-out prompt of each task (at most --prompts) x --samples completions at temperature 1, through the
model's chat template (ntkdyn.evaluation.evaluate); prints one markdown row per task and the wall time.
"""
from __future__ import annotations

import argparse
import time

import ntkdyn as nd
from ntkdyn.evaluation import evaluate
from ntkdyn.tasks import natural


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tasks", nargs="*", default=natural.names())
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--prompts", type=int, default=20, help="held-out prompts per task (the whole split if fewer)")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    lm = nd.load(a.model)
    print(f"| task | held-out prompts x {a.samples} | reward | distinct answers / {a.samples} "
          f"| truncated at {a.max_new_tokens} tokens | wall time |")
    print("|---|---|---|---|---|---|")
    for name in a.tasks:
        t0 = time.time()
        ev = evaluate(lm, natural.get(name), n_prompts=a.prompts, samples=a.samples, seed=a.seed,
                      max_new_tokens=a.max_new_tokens, temperature=1.0, chat=True)
        print(f"| `{name}` | {ev['n_prompts']} | {ev['reward']:.3f} | {ev['unique_answers']:.1f} "
              f"| {100 * ev['frac_truncated']:.0f} % | {time.time() - t0:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
