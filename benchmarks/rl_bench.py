"""RL steps per second and generated tokens per second: ntkdyn's trainer vs TRL's GRPOTrainer, on the same model
(our HF-layout directory, loaded by TRL with transformers), the same task reward ("sum": truncated completions score
0), the same batch shape (prompts x G samples, max_new_tokens) and the same objective (GRPO advantages,
sequence-mean-token-mean loss, beta 0, one gradient step per rollout batch, Adam(W) at one constant lr, grad-norm
clip 1), on this machine's CPU, in one run. TRL runs in its own virtual environment (it cannot live beside
jax in the main one) as a subprocess:

    python -m venv .benchvenv && .benchvenv/bin/pip install trl torch==2.13.0 transformers
    python benchmarks/rl_bench.py [--model DIR] [--steps 30] [--trl-steps 12] [--rounds 2] [--prompts 8] [--group 8] [--new 12]
                                  [--record]      # also write the `## rl_bench` section of benchmarks/RESULTS.md

A step = one rollout of prompts x G completions + rewards + one optimizer step. Steady-state numbers skip the
first `--warmup` steps of each (ntkdyn: jit compilation; TRL: first-call overheads); both are timed per step by
wall clock. ntkdyn's step also computes its tracked metrics (entropy, max-prob, head norm, feature change).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_PY = os.path.join(ROOT, ".benchvenv", "bin", "python")

TRL_SCRIPT = r'''
import importlib.util, json, os, sys, time
import numpy as np, torch
torch.manual_seed(0)
from datasets import Dataset
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback
from trl import GRPOConfig, GRPOTrainer
import trl, transformers

a = json.loads(sys.argv[1])
# the task module is plain Python + numpy: load it by path (the ntkdyn package itself imports jax)
spec = importlib.util.spec_from_file_location("nt_tasks", os.path.join(a["root"], "ntkdyn", "tasks", "tasks.py"))
tasks = importlib.util.module_from_spec(spec); spec.loader.exec_module(tasks)
task = tasks.get(a["task"])
tok = PreTrainedTokenizerFast.from_pretrained(a["model"])
tok.padding_side = "left"
model = AutoModelForCausalLM.from_pretrained(a["model"], dtype=torch.float32)
eos = tok.convert_tokens_to_ids("<eos>")
prompts = task.split_prompts("train") or task.prompts("train", 4096, seed=0)
ds = Dataset.from_dict({"prompt": ["<bos>" + p for p in prompts]})  # [bos] + prompt, as ntkdyn's rollouts

def reward(prompts, completions, completion_ids, **kw):
    # ntkdyn's rule: a completion without EOS inside max_new_tokens scores 0
    return [task.reward(p.replace("<bos>", ""), c) if eos in ids else 0.0
            for p, c, ids in zip(prompts, completions, completion_ids)]

class Timer(TrainerCallback):
    def __init__(self):
        self.times, self.t = [], None
    def on_step_begin(self, args, state, control, **kw):
        self.t = time.perf_counter()
    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter() - self.t)

cfg = GRPOConfig(output_dir=a["out"], per_device_train_batch_size=a["prompts"] * a["group"],
                 num_generations=a["group"], max_completion_length=a["new"], temperature=1.0, top_k=0, top_p=1.0,
                 beta=0.0, num_iterations=1, loss_type="grpo", scale_rewards="group", learning_rate=a["lr"],
                 lr_scheduler_type="constant", optim="adamw_torch", weight_decay=0.0, max_grad_norm=1.0,
                 max_steps=a["steps"], logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
                 bf16=False, gradient_checkpointing=False, disable_tqdm=True, seed=a["seed"],
                 dataloader_num_workers=0)
timer = Timer()
tr = GRPOTrainer(model=model, reward_funcs=reward, args=cfg, train_dataset=ds, processing_class=tok,
                 callbacks=[timer])
t0 = time.perf_counter()
tr.train()
total = time.perf_counter() - t0
logs = [h for h in tr.state.log_history if "completions/mean_length" in h]
print("RESULT " + json.dumps(dict(step_times=timer.times, total_s=total,
                                  mean_length=[h["completions/mean_length"] for h in logs],
                                  reward=[h.get("reward") for h in logs], torch_threads=torch.get_num_threads(),
                                  versions=dict(trl=trl.__version__, torch=torch.__version__,
                                                transformers=transformers.__version__))))
'''


def run_ntkdyn(a):
    from ntkdyn.rl import RLConfig, read_metrics, train

    out = tempfile.mkdtemp(prefix="rl_bench_")
    cfg = RLConfig(recipe="rl", task=a.task, model=a.model, steps=a.steps, group_size=a.group,
                   prompts_per_step=a.prompts, max_new_tokens=a.new, lr=a.lr, optimizer="adam", advantage="grpo",
                   loss_agg="seq_mean_token_mean", beta=0.0, num_iterations=1, eval_every=0, eval_prompts=4,
                   eval_samples=4, probe_every=0, checkpoint_every=0, seed=a.seed, out=out)
    t0 = time.perf_counter()
    train(cfg, progress=False)
    total = time.perf_counter() - t0
    recs = [r for r in read_metrics(out) if "step_time" in r]
    return dict(step_times=[r["step_time"] for r in recs], total_s=total,
                mean_length=[r["completions/mean_length"] for r in recs], reward=[r["reward"] for r in recs])


def run_trl(a):
    if not os.path.exists(BENCH_PY):
        raise SystemExit(f"{BENCH_PY} not found: python -m venv .benchvenv && "
                         ".benchvenv/bin/pip install trl torch==2.13.0 transformers")
    args = dict(root=ROOT, model=a.model, task=a.task, steps=a.trl_steps, prompts=a.prompts, group=a.group,
                new=a.new, lr=a.lr, seed=a.seed, out=tempfile.mkdtemp(prefix="rl_bench_trl_"))
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    p = subprocess.run([BENCH_PY, "-c", TRL_SCRIPT, json.dumps(args)], capture_output=True, text=True, env=env)
    line = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
    if p.returncode != 0 or not line:
        raise SystemExit(f"TRL run failed (exit {p.returncode}):\n{p.stderr[-4000:]}")
    return json.loads(line[-1][len("RESULT "):])


def summarize(runs, batch, warmup):
    """Median step time over the timed steps of all rounds (robust to other processes' bursts on a shared machine);
    tokens/s = median over steps of (generated tokens of the step / its time)."""
    st = np.concatenate([np.asarray(r["step_times"][warmup:]) for r in runs])
    ln = np.concatenate([np.asarray(r["mean_length"][warmup:len(r["step_times"])]) for r in runs])
    med = float(np.median(st))
    return dict(steps_per_s=1.0 / med, step_s=med, step_s_mean=float(st.mean()),
                tokens_per_s=float(np.median(ln * batch / st)), mean_length=float(ln.mean()),
                first_step_s=float(runs[0]["step_times"][0]), steps=int(st.size), rounds=len(runs))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="HF model dir (default: the embedded default base model)")
    ap.add_argument("--task", default="sum")
    ap.add_argument("--steps", type=int, default=30, help="ntkdyn RL steps")
    ap.add_argument("--trl-steps", type=int, default=12, help="TRL GRPOTrainer steps")
    ap.add_argument("--warmup", type=int, default=2, help="steps of each left out of the steady-state numbers")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--new", type=int, default=12, help="max_new_tokens")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of both (medians over all steps)")
    ap.add_argument("--record", action="store_true", help="write the `## rl_bench` section of benchmarks/RESULTS.md")
    a = ap.parse_args(argv)
    if a.model is None:
        from ntkdyn.default import default_model_dir

        a.model = default_model_dir()
    a.model = os.path.abspath(a.model)
    batch = a.prompts * a.group
    import ntkdyn as nd

    n_params = nd.load(a.model).num_params
    print(f"model {a.model} ({n_params:,} parameters); batch {a.prompts} prompts x {a.group} = {batch}, "
          f"max_new_tokens {a.new}; task {a.task}; cpu {os.cpu_count()} cores")
    load0 = os.getloadavg()[0]
    ours_raw, trl_raws = [], []
    for r in range(a.rounds):  # interleaved, so that both see the same machine load on average
        ours_raw.append(run_ntkdyn(a))
        trl_raws.append(run_trl(a))
        print(f"round {r + 1}: ntkdyn {np.median(ours_raw[-1]['step_times'][a.warmup:]):.3f} s/step, "
              f"TRL {np.median(trl_raws[-1]['step_times'][a.warmup:]):.3f} s/step")
    ours, theirs, trl_raw = summarize(ours_raw, batch, a.warmup), summarize(trl_raws, batch, a.warmup), trl_raws[0]
    print("ntkdyn:", json.dumps(ours))
    print(f"TRL {trl_raw['versions']['trl']}:", json.dumps(theirs))
    ratio_steps = ours["steps_per_s"] / theirs["steps_per_s"]
    ratio_tok = ours["tokens_per_s"] / theirs["tokens_per_s"]
    load = (load0, os.getloadavg()[0])
    print(f"ratio ntkdyn / TRL: {ratio_steps:.1f}x RL steps/s, {ratio_tok:.1f}x generated tokens/s "
          f"(target >= 3x); 1-min load average {load[0]:.1f} -> {load[1]:.1f}")
    if a.record:
        cmd = "python benchmarks/rl_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
        record(a, cmd.strip(), n_params, ours, theirs, trl_raw["versions"], ratio_steps, ratio_tok, load)
    return 0


def record(a, cmd, n_params, ours, theirs, versions, ratio_steps, ratio_tok, load):
    import jax

    path = os.path.join(ROOT, "benchmarks", "RESULTS.md")
    model = "the embedded default base model" if "default-" in os.path.basename(a.model) else a.model
    section = f"""## rl_bench

RL post-training throughput, ntkdyn (`ntkdyn.rl.train`, recipe "rl") vs TRL `GRPOTrainer`, same model ({model},
{n_params:,} parameters, gpt_neox), task "{a.task}", batch {a.prompts} prompts x G={a.group} = {a.prompts * a.group}
completions per step, max_new_tokens {a.new}, temperature 1, GRPO advantages, seq-mean-token-mean loss, beta 0, one
optimizer step per batch (Adam / AdamW, lr {a.lr}, constant, grad clip 1), {platform.processor() or platform.machine()}
CPU with {os.cpu_count()} cores, float32, {a.rounds} interleaved rounds of each in one run (1-min load average
{load[0]:.1f} at the start, {load[1]:.1f} at the end: other processes shared the cores). Steady state: median over
the steps after the first {a.warmup} of each round.
jax {jax.__version__}; TRL {versions['trl']}, torch {versions['torch']}, transformers {versions['transformers']}.

| | RL steps/s | s/step (median) | s/step (mean) | generated tokens/s | mean completion length | first step (s) | steps timed |
|---|---|---|---|---|---|---|---|
| ntkdyn | {ours['steps_per_s']:.2f} | {ours['step_s']:.3f} | {ours['step_s_mean']:.3f} | {ours['tokens_per_s']:.0f} | {ours['mean_length']:.2f} | {ours['first_step_s']:.1f} | {ours['steps']} |
| TRL GRPOTrainer | {theirs['steps_per_s']:.2f} | {theirs['step_s']:.3f} | {theirs['step_s_mean']:.3f} | {theirs['tokens_per_s']:.0f} | {theirs['mean_length']:.2f} | {theirs['first_step_s']:.1f} | {theirs['steps']} |

**ntkdyn / TRL: {ratio_steps:.1f}x RL steps per second, {ratio_tok:.1f}x generated tokens per second** (target >= 3x).
ntkdyn's first step includes jit compilation (or a persistent-cache load); its steps also compute the tracked metrics (entropy, max-prob, head
norm, feature change on the probe set).

Command: `{cmd}` (TRL runs in `.benchvenv`: `python -m venv .benchvenv && .benchvenv/bin/pip install trl torch==2.13.0 transformers`).
"""
    text = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
    start = text.find("## rl_bench")
    if start >= 0:  # replace our own section only
        nxt = text.find("\n## ", start + 1)
        text = text[:start] + section + ("" if nxt < 0 else text[nxt:])
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    print(f"recorded in {path}")


if __name__ == "__main__":
    sys.exit(main())
