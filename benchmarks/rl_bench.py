"""RL steps per second and generated tokens per second: ntkdyn's trainer vs TRL's GRPOTrainer, on the same model
(an HF-layout directory, loaded by TRL with transformers), the same task and reward functions (ntkdyn.tasks, loaded by
path in TRL's process; truncated completions score 0 unless --score-truncated), the same prompts (the task's train
pool in ntkdyn's order: step s of each side trains on the same P prompts, checked in TRL's reward calls; chat
prompts through the model's chat template: TRL's own tokenization of the first rows is checked equal to ntkdyn's
encode_prompt, else the run stops), the same batch shape (prompts x G samples, max_new_tokens) and the same
objective (GRPO advantages, sequence-mean-token-mean loss, beta 0, one gradient step per rollout batch, Adam(W) at
one constant lr, grad-norm clip 1), on this machine's CPU, in one run. Each side runs in its own process (ntkdyn:
this script with --worker; TRL: its own virtual environment, it cannot live beside jax in the main one), one after
the other, so that each peak resident memory (VmHWM) is its own:

    python -m venv .benchvenv && .benchvenv/bin/pip install trl torch==2.13.0 transformers
    python benchmarks/rl_bench.py [--model DIR] [--task sum] [--steps 30] [--trl-steps 12] [--rounds 2] [--prompts 8]
                                  [--group 8] [--new 12] [--score-truncated]
                                  [--record]      # also write the `## rl_bench[: MODEL]` section of RESULTS.md
    python benchmarks/real_bench.py --only rl     # SmolLM2, the issue's settings (real_bench.RL_ARGS)

A step = one rollout of prompts x G completions + rewards + one optimizer step. Steady-state numbers skip the
first `--warmup` steps of each (ntkdyn: jit compilation; TRL: first-call overheads); both are timed per step by
wall clock. ntkdyn's step also computes its tracked metrics (entropy, max-prob, head norm, feature change).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_PY = os.path.join(ROOT, ".benchvenv", "bin", "python")
SIMD_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
              "amx_tile", "amx_bf16", "amx_int8")


ALLOCATOR_ENV = ("LD_PRELOAD", "MALLOC_CONF", "GLIBC_TUNABLES")  # the process's memory allocator and its settings


def machine(cpuinfo: str = "/proc/cpuinfo"):
    """The CPU model, its vendor's family / model / stepping numbers (a virtual machine may show only "AMD EPYC" as
    the model name, which hides the generation: family 25 is Zen 3/4, 26 Zen 5), its SIMD flags (of SIMD_FLAGS, from
    /proc/cpuinfo), the core count, the 1/5/15-min load average and the allocator settings in the environment
    (ALLOCATOR_ENV, inherited by every child process: both sides of a comparison), for every benchmark record.
    The first processor's lines of `cpuinfo` are read."""
    info, flags = {}, []
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model", "stepping") and key not in info:
                    info[key] = value.strip()
                elif key == "flags":
                    have = set(value.split())
                    flags = [x for x in SIMD_FLAGS if x in have]
                    break
    except OSError:
        pass
    return {"cpu": info.get("model name") or platform.processor() or platform.machine(),
            "cpu_id": "family {} model {} stepping {}".format(*(info.get(k, "?") for k in ("cpu family", "model",
                                                                                          "stepping"))),
            "cpu_flags": flags, "cores": os.cpu_count(), "load_average": os.getloadavg(),
            "allocator": {k: os.environ[k] for k in ALLOCATOR_ENV if k in os.environ}}


TRL_SCRIPT = r'''
import importlib, json, os, resource, sys, time, types
import numpy as np, torch
torch.manual_seed(0)
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer
import trl, transformers

a = json.loads(sys.argv[1])
# ntkdyn.tasks is plain Python + numpy; the package __init__s import jax: stub them so that only the task modules load
for name, sub in (("ntkdyn", "ntkdyn"), ("ntkdyn.tasks", os.path.join("ntkdyn", "tasks"))):
    m = types.ModuleType(name)
    m.__path__ = [os.path.join(a["root"], sub)]
    sys.modules[name] = m
registry = importlib.import_module("ntkdyn.tasks.registry")
task = registry.resolve(a["task"])
tok = AutoTokenizer.from_pretrained(a["model"])
tok.padding_side = "left"
model = AutoModelForCausalLM.from_pretrained(a["model"], dtype=torch.float32)
bos = "" if a["chat"] else (tok.bos_token or "")
def as_prompt(p):  # chat: messages (TRL renders the chat template); else [bos] + text, as ntkdyn's encode_prompt
    if a["chat"]:
        return [{"role": "user", "content": p}] if isinstance(p, str) else p
    return bos + p
pool = task.split_rows("train") or task.rows("train", 4096, seed=0)  # ntkdyn's train pool (rl/context._prompts)
# the rows ntkdyn's run draws, in its order (P per step); unshuffled, TRL's step s takes the same P prompts
ds = Dataset.from_list([{**pool[i], "prompt": as_prompt(pool[i]["prompt"])} for i in a["order"]])
funcs = task.reward_funcs()

seen = []  # the prompts of each reward call (one per step), to check the order against ntkdyn's
def reward(prompts, completions, completion_ids, **cols):
    prompts = [p[len(bos):] if isinstance(p, str) and bos and p.startswith(bos) else p for p in prompts]
    seen.append([json.dumps(p) for p in prompts[::a["group"]]])
    out = np.zeros(len(prompts))
    for f in funcs:
        out += np.asarray([np.nan if v is None else v for v in f(prompts, completions, completion_ids, **cols)], float)
    if not a["score_truncated"]:  # ntkdyn's rule: a completion without EOS inside max_new_tokens scores 0
        out = np.where([any(e in ids for e in eos_ids) for ids in completion_ids], out, 0.0)
    return out.tolist()

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
                 dataloader_num_workers=0, shuffle_dataset=False)
timer = Timer()
tr = GRPOTrainer(model=model, reward_funcs=reward, args=cfg, train_dataset=ds, processing_class=tok,
                 callbacks=[timer])
eos_ids = list(tr.eos_token_ids)
def vmhwm_mb():  # this process's own peak (ru_maxrss would include the forking parent's)
    return round(int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]) / 1024)
# the prompt ids TRL generates from (its own tokenization path) against ntkdyn's encode_prompt ids of the same rows
theirs = [list(map(int, x)) for x in tr._tokenize_prompts([as_prompt(r["prompt"]) for r in pool[:len(a["expect_ids"])]])[0]]
t0 = time.perf_counter()
tr.train()
total = time.perf_counter() - t0
logs = [h for h in tr.state.log_history if "completions/mean_length" in h]
P = a["prompts"]
want = [[json.dumps(as_prompt(pool[i]["prompt"]) if a["chat"] else pool[i]["prompt"])
         for i in a["order"][k * P:(k + 1) * P]] for k in range(len(a["order"]) // P)]
print("RESULT " + json.dumps(dict(step_times=timer.times, total_s=total,
                                  mean_length=[h["completions/mean_length"] for h in logs],
                                  reward=[h.get("reward") for h in logs], torch_threads=torch.get_num_threads(),
                                  prompt_ids_match=theirs == a["expect_ids"], prompt_ids_first=theirs[0],
                                  eos_ids=eos_ids, peak_rss_mb=vmhwm_mb(),
                                  order_match=seen == want[:len(seen)] and len(seen) == a["steps"],
                                  versions=dict(trl=trl.__version__, torch=torch.__version__,
                                                transformers=transformers.__version__))))
'''


def ntkdyn_worker(a) -> dict:
    """One ntkdyn run (in its own process: its memory is freed before TRL runs and its peak is its own), with the
    encode_prompt ids of the first 8 rows of the train pool both sides draw from (what TRL's tokenization of the
    same rows must equal), the chat-template switch and the EOS ids."""
    import ntkdyn as nd
    from ntkdyn import tasks
    from ntkdyn.models.tokenizer import chat_enabled, encode_prompt, eos_ids_of
    from ntkdyn.rl import RLConfig, read_metrics, train
    from ntkdyn.rl.recipes import RL_ID
    from ntkdyn.rl.rollout import stage_row_indices

    lm = nd.load(a.model)
    task = tasks.resolve(a.task)
    pool = task.split_rows("train") or task.rows("train", 4096, seed=0)
    ids = [list(map(int, encode_prompt(lm.tokenizer, r["prompt"]))) for r in pool[:8]]
    # the pool rows of each RL step of this run (recipe "rl": one stage), for TRL to take in the same order
    order = [i for s in range(1, max(a.steps, a.trl_steps) + 1)
             for i in stage_row_indices(a.seed, RL_ID, s, a.prompts, len(pool))]
    info = dict(chat=chat_enabled(lm.tokenizer), eos_ids=list(eos_ids_of(lm.tokenizer, lm.config)), expect_ids=ids,
                params=lm.num_params, order=order)
    del lm
    out = tempfile.mkdtemp(prefix="rl_bench_")
    cfg = RLConfig(recipe="rl", task=a.task, model=a.model, steps=a.steps, group_size=a.group,
                   prompts_per_step=a.prompts, max_new_tokens=a.new, lr=a.lr, optimizer="adam", advantage="grpo",
                   loss_agg="seq_mean_token_mean", beta=0.0, num_iterations=1, eval_every=0, eval_prompts=2,
                   eval_samples=2, probe_every=0, checkpoint_every=0, seed=a.seed, out=out,
                   score_truncated=a.score_truncated, remat=bool(getattr(a, "remat", False)),
                   micro_batches=int(getattr(a, "micro_batches", 1)), pack=bool(getattr(a, "pack", False)))
    t0 = time.perf_counter()
    train(cfg, progress=False)
    total = time.perf_counter() - t0
    recs = [r for r in read_metrics(out) if "step_time" in r]
    shutil.rmtree(out, ignore_errors=True)  # the run's checkpoint (3 x the parameters)
    return dict(info, step_times=[r["step_time"] for r in recs], total_s=total,
                mean_length=[r["completions/mean_length"] for r in recs], reward=[r["reward"] for r in recs],
                peak_rss_mb=peak_rss_mb())


def run_ntkdyn(a) -> dict:
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(vars(a))],
                       capture_output=True, text=True)
    line = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
    if p.returncode != 0 or not line:
        raise SystemExit(f"ntkdyn run failed (exit {p.returncode}):\n{p.stderr[-4000:]}")
    return json.loads(line[-1][len("RESULT "):])


def run_trl(a, chat, expect_ids, order):
    if not os.path.exists(BENCH_PY):
        raise SystemExit(f"{BENCH_PY} not found: python -m venv .benchvenv && "
                         ".benchvenv/bin/pip install trl torch==2.13.0 transformers")
    out = tempfile.mkdtemp(prefix="rl_bench_trl_")
    args = dict(root=ROOT, model=a.model, task=a.task, steps=a.trl_steps, prompts=a.prompts, group=a.group,
                new=a.new, lr=a.lr, seed=a.seed, out=out, chat=chat, expect_ids=expect_ids,
                score_truncated=a.score_truncated, order=order)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    p = subprocess.run([BENCH_PY, "-c", TRL_SCRIPT, json.dumps(args)], capture_output=True, text=True, env=env)
    shutil.rmtree(out, ignore_errors=True)
    line = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
    if p.returncode != 0 or not line:
        raise SystemExit(f"TRL run failed (exit {p.returncode}):\n{p.stderr[-4000:]}")
    res = json.loads(line[-1][len("RESULT "):])
    if not res["order_match"]:
        raise SystemExit("TRL's steps did not train on ntkdyn's prompts in ntkdyn's order")
    if not res["prompt_ids_match"]:
        raise SystemExit(f"TRL's prompt ids differ from ntkdyn's encode_prompt: first row {res['prompt_ids_first']} "
                         f"vs {expect_ids[0]}")
    return res


def summarize(runs, batch, warmup):
    """Median step time over the timed steps of all rounds (robust to other processes' bursts on a shared machine);
    tokens/s = median over steps of (generated tokens of the step / its time)."""
    st = np.concatenate([np.asarray(r["step_times"][warmup:]) for r in runs])
    ln = np.concatenate([np.asarray(r["mean_length"][warmup:len(r["step_times"])]) for r in runs])
    med = float(np.median(st))
    return dict(steps_per_s=1.0 / med, step_s=med, step_s_mean=float(st.mean()),
                tokens_per_s=float(np.median(ln * batch / st)), mean_length=float(ln.mean()),
                first_step_s=float(runs[0]["step_times"][0]), steps=int(st.size), rounds=len(runs))


def peak_rss_mb() -> int:
    """VmHWM of this process in MB."""
    with open("/proc/self/status") as f:
        return round(int([x for x in f if x.startswith("VmHWM")][0].split()[1]) / 1024)


def parser():
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
    ap.add_argument("--score-truncated", action="store_true",
                    help="score completions without EOS too (TRL's default); else they score 0 on both sides")
    ap.add_argument("--remat", action="store_true",
                    help="ntkdyn's update rematerialises each layer (RLConfig.remat); TRL keeps its default")
    ap.add_argument("--micro-batches", type=int, default=1,
                    help="ntkdyn's update in this many micro-batches (RLConfig.micro_batches); TRL keeps its default")
    ap.add_argument("--pack", action="store_true",
                    help="ntkdyn's update over packed completions (RLConfig.pack); TRL keeps its padded batch")
    ap.add_argument("--record", action="store_true", help="write the `## rl_bench` section of benchmarks/RESULTS.md")
    return ap


def measure(a) -> dict:
    """Both sides, `a.rounds` interleaved rounds; the summary of each, their ratios, load averages, peaks."""
    if a.model is None:
        from ntkdyn.default import default_model_dir

        a.model = default_model_dir()
    a.model = os.path.abspath(a.model)
    batch = a.prompts * a.group
    print(f"model {a.model}; batch {a.prompts} prompts x {a.group} = {batch}, max_new_tokens {a.new}; task {a.task}; "
          f"cpu {os.cpu_count()} cores", flush=True)
    load0, host = os.getloadavg()[0], machine()
    ours_raw, trl_raws = [], []
    for r in range(a.rounds):  # interleaved, so that both see the same machine load on average
        ours_raw.append(run_ntkdyn(a))
        chat, eos, expect_ids, n_params = (ours_raw[0][k] for k in ("chat", "eos_ids", "expect_ids", "params"))
        trl_raws.append(run_trl(a, chat, expect_ids, ours_raw[0]["order"]))
        print(f"round {r + 1}: ntkdyn {np.median(ours_raw[-1]['step_times'][a.warmup:]):.3f} s/step, "
              f"TRL {np.median(trl_raws[-1]['step_times'][a.warmup:]):.3f} s/step", flush=True)
    ours, theirs = summarize(ours_raw, batch, a.warmup), summarize(trl_raws, batch, a.warmup)
    return dict(machine=host, model=a.model, params=n_params, chat=chat, eos_ids=eos,
                trl_eos_ids=trl_raws[0]["eos_ids"], prompt_ids_match=True, ntkdyn=ours, trl=theirs,
                versions=trl_raws[0]["versions"],
                ratio_steps=ours["steps_per_s"] / theirs["steps_per_s"],
                ratio_tokens=ours["tokens_per_s"] / theirs["tokens_per_s"], load=(load0, os.getloadavg()[0]),
                peak_rss_mb_ntkdyn=max(r["peak_rss_mb"] for r in ours_raw),
                peak_rss_mb_trl=max(r["peak_rss_mb"] for r in trl_raws),
                raw=dict(ntkdyn=[{k: v for k, v in r.items() if k not in ("expect_ids", "order")} for r in ours_raw],
                         trl=[{k: v for k, v in r.items() if k != "prompt_ids_first"} for r in trl_raws]))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:  # run_ntkdyn's subprocess
        print("RESULT " + json.dumps(ntkdyn_worker(argparse.Namespace(**json.loads(argv[1])))), flush=True)
        return 0
    a = parser().parse_args(argv)
    m = measure(a)
    print("ntkdyn:", json.dumps(m["ntkdyn"]))
    print(f"TRL {m['versions']['trl']}:", json.dumps(m["trl"]))
    print(f"ratio ntkdyn / TRL: {m['ratio_steps']:.2f}x RL steps/s, {m['ratio_tokens']:.2f}x generated tokens/s; "
          f"1-min load average {m['load'][0]:.1f} -> {m['load'][1]:.1f}; peak RSS ntkdyn {m['peak_rss_mb_ntkdyn']} MB, "
          f"TRL {m['peak_rss_mb_trl']} MB")
    if a.record:
        cmd = "python benchmarks/rl_bench.py " + " ".join(argv)
        record(a, cmd.strip(), m)
    return 0


def record(a, cmd, m):
    import jax

    ours, theirs, versions, load = m["ntkdyn"], m["trl"], m["versions"], m["load"]
    path = os.path.join(ROOT, "benchmarks", "RESULTS.md")
    from ntkdyn.default import default_model_dir

    default = os.path.realpath(a.model) == os.path.realpath(default_model_dir())
    model = "the embedded default base model" if default else os.path.basename(a.model)
    heading = "## rl_bench" if default else f"## rl_bench: {model}"
    section = f"""{heading}

RL post-training throughput, ntkdyn (`ntkdyn.rl.train`, recipe "rl") vs TRL `GRPOTrainer`, same model ({model},
{m['params']:,} parameters, the same HF directory on both sides), task "{a.task}" (chat template
{'on' if m['chat'] else 'off'}; TRL's own tokenization of the prompts checked equal to ntkdyn's `encode_prompt`; EOS
ids ntkdyn {m['eos_ids']}, TRL {m['trl_eos_ids']}; {'completions without EOS scored too' if a.score_truncated else 'truncated completions score 0'}), batch {a.prompts} prompts x G={a.group} =
{a.prompts * a.group} completions per step, the same prompts in the same order on both sides (checked in TRL's reward
calls), max_new_tokens {a.new}, temperature 1, GRPO advantages,
seq-mean-token-mean loss, beta 0, one optimizer step per batch (Adam / AdamW, lr {a.lr}, constant, grad clip 1),
{m['machine']['cpu']} CPU ({m['machine']['cpu_id']}; {' '.join(m['machine']['cpu_flags'])}) with {os.cpu_count()} cores, float32, {a.rounds} interleaved round(s) of
each in one run (1-min load average {load[0]:.1f} at the start, {load[1]:.1f} at the end; the benchmark alone makes
about 1-2 on this machine, more means other processes shared the cores). Steady state: median over the steps after
the first {a.warmup} of each round.
jax {jax.__version__}; TRL {versions['trl']}, torch {versions['torch']}, transformers {versions['transformers']}.
Peak resident memory: ntkdyn {m['peak_rss_mb_ntkdyn']:,} MB (its process), TRL {m['peak_rss_mb_trl']:,} MB.

| | RL steps/s | s/step (median) | s/step (mean) | generated tokens/s | mean completion length | first step (s) | steps timed |
|---|---|---|---|---|---|---|---|
| ntkdyn | {ours['steps_per_s']:.3f} | {ours['step_s']:.3f} | {ours['step_s_mean']:.3f} | {ours['tokens_per_s']:.0f} | {ours['mean_length']:.2f} | {ours['first_step_s']:.1f} | {ours['steps']} |
| TRL GRPOTrainer | {theirs['steps_per_s']:.3f} | {theirs['step_s']:.3f} | {theirs['step_s_mean']:.3f} | {theirs['tokens_per_s']:.0f} | {theirs['mean_length']:.2f} | {theirs['first_step_s']:.1f} | {theirs['steps']} |

**ntkdyn / TRL: {m['ratio_steps']:.2f}x RL steps per second, {m['ratio_tokens']:.2f}x generated tokens per second**.
ntkdyn's first step includes jit compilation (or a persistent-cache load); its steps also compute the tracked metrics
(entropy, max-prob, head norm, feature change on the probe set).

Command: `{cmd}` (TRL runs in `.benchvenv`: `python -m venv .benchvenv && .benchvenv/bin/pip install trl torch==2.13.0 transformers`).
"""
    text = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
    start = text.find(heading + "\n")
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
