"""One RL step, predicted and measured (paper/spec.md §2-3; claims 3 and 4 of §5).

On a base model and a task: sample a group of G completions for a few training prompts, score them, compute GRPO
advantages, take ONE plain SGD step of the sequence-mean-token-mean policy gradient with a small learning rate, and
at held-out probe contexts (test-split prompts: the last prompt position and some completion positions) compare

  * the first-order prediction Δz = η Σ_u Θ(c_o, c_u) g_u (a JVP, no kernel) with the real z⁺ − z,
  * its split into the representation part Δz_R = η Σ_u s(c_o, c_u) g_u and the gradient part Δz_G (and, tied
    heads, the cross term Δz_X),

and check Proposition 2 (§3) on single-sample updates: for one sampled (c_u, y_u) with A > 0, at unrelated probe
contexts c_o, (i) argmax_k Δz_R(c_o)_k = y_u and (ii) Δ log π(y_u | c_o) > 0 after the real step; both are expected
where s(c_o, c_u) > 0.

Writes OUT/one_step.json, OUT/one_step_scatter.png (+ .pdf) (predicted vs real Δ log π) and OUT/one_step_split.png
(per-probe ‖Δz_R‖, ‖Δz_G‖ (, ‖Δz_X‖) and the Prop-2 panel).

    python -m ntkdyn.experiments.one_step --model DIR --out runs/one_step      # or: ntkdyn one-step ...
    from ntkdyn.experiments.one_step import run; run(lm, "sum", "runs/one_step")   # -> dict of the numbers
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from ..dynamics import one_step as dynamics_one_step
from ..dynamics import split_update
from ..io import write_json
from ..metrics import dz_share, pairwise_cosine
from .. import tasks as _tasks
from ..evaluation import MAX_NEW_TOKENS, Completions, held_out_prompts, score, split_completions
from ..examples import prompt_ids
from ..models.padding import pad_right
from ..models.tokenizer import CHAT_CHOICES, CharTokenizer, eos_ids_of, pad_id_of
from ..options import add_options, build, given, option
from ..rl.objectives import advantages as _advantages
from ..tasks import DEFAULT_TASK
from ..tasks.rewards import text_reward_function

__all__ = ["OneStepConfig", "run", "main", "add_arguments", "run_cli"]

# x64=None (auto): float64 up to this many parameters (the toolkit's own models), float32 above (a real
# checkpoint: float64 doubles memory and costs several times the time on a CPU, for no visible change at lr 3e-3)
X64_MAX_PARAMS = 20_000_000


@dataclasses.dataclass(frozen=True)
class OneStepConfig:
    """The experiment's settings (`run`'s keywords; `ntkdyn one-step` is generated from the fields)."""

    model: str | None = option(None, "a Hugging Face model directory, a .gguf file or a known name such as "
                               "smollm2-135m-instruct (default: the embedded default base model)")
    task: str = option(DEFAULT_TASK, "a built-in task or a dataset file (as ntkdyn rl's --task)")
    rewards: list | None = option(None, "a reward function in TRL's signature (repeatable; as ntkdyn rl's --reward): "
                                  "package.module:function, path/file.py:function, a task name or a reward-model "
                                  "directory; default: the task's own", flag="--reward", type=str, append=True,
                                  metavar="SPEC")
    out: str = option("runs/one_step", "output directory")
    seed: int = option(0, "seed of the prompts, the samples and the single-sample updates")
    lr: float = option(3e-3, "SGD learning rate of the step")
    n_prompts: int = option(4, "training prompts", flag="--prompts")
    group: int = option(8, "samples per prompt (GRPO group)")
    probe_prompts: int = option(8, "held-out probe prompts")
    completion_positions: int = option(3, "completion positions probed per held-out prompt (besides the last "
                                       "prompt position)")
    prop2_samples: int = option(6, "single-sample updates for the Proposition-2 check")
    max_new_tokens: int = option(MAX_NEW_TOKENS, "tokens per sample")
    temperature: float = option(1.0, "sampling temperature")
    x64: bool | None = option(None, f"float64, float32, or auto: float64 up to {X64_MAX_PARAMS:,} parameters, "
                              "float32 above", flag="--precision", choices={"auto": None, "float64": True,
                                                                            "float32": False})
    chat: bool | None = option(None, "prompts through the tokenizer's chat template (auto: when it has one)",
                               flag="--chat-template", choices=CHAT_CHOICES)
    score_truncated: bool = option(False, "score completions cut at max_new_tokens with the reward too (default: "
                                   "they score 0)")
    plots: bool = option(True, "no figures (only one_step.json)", flag="--no-plots")


# ----------------------------------------------------------------------------- data


def _sample_all(lm, tok, prompts, seed, max_new_tokens, temperature, chat=None):
    """One sampler call (one compile) for all prompts: rows prompt+completion (incl. EOS; the prompt as
    encode_prompt makes it: [bos]+prompt, or the chat template's rendering), the prompt lengths, the completions
    (evaluation.split_completions) and the model's log-prob of every completion token (a list per row)."""
    heads = prompt_ids(tok, prompts, chat=chat)
    eos = eos_ids_of(tok, lm.config)
    gen = lm.generate(heads, max_new_tokens, temperature=temperature, seed=seed, stop_token=eos)
    tokens, gmask, lpm = np.asarray(gen.tokens), np.asarray(gen.mask), np.asarray(gen.logp_model)
    comps = split_completions(tok, tokens, gmask, eos)
    rows = [list(h) + t[m.astype(bool)].tolist() for h, t, m in zip(heads, tokens, gmask)]
    logps = [lp[m.astype(bool)].tolist() for lp, m in zip(lpm, gmask)]
    return rows, [len(h) for h in heads], comps, logps


def _part(sampled, sl):
    """The rows `sl` of `_sample_all`'s output."""
    rows, starts, comps, logps = sampled
    return rows[sl], starts[sl], Completions(*(f[sl] for f in comps)), logps[sl]


def _rollouts(task, tok, prompts, group, sampled, rewards, score_truncated=False):
    """G samples per prompt -> ids (B, T) right-padded [bos]+prompt+completion, completion mask, texts, rewards
    (evaluation.score with the RewardSet `rewards`), and token_logp (B, T):
    log π(ids[b, t] | ids[b, <t]) at the completion tokens."""
    rows, starts, comps, logps = sampled
    out = score(rewards, [{"prompt": p, **task.columns(p)} for p in prompts], comps, group, score_truncated)
    ids = pad_right(rows, pad_id_of(tok))[0]
    mask = np.zeros(ids.shape, np.int32)
    token_logp = np.zeros(ids.shape, np.float64)
    for i, (r, s, lp) in enumerate(zip(rows, starts, logps)):
        mask[i, s: len(r)] = 1  # trained tokens: the generated ones (predicted from the previous position)
        token_logp[i, s: len(r)] = lp
    return dict(prompts=[p for p in prompts for _ in range(group)], ids=ids, mask=mask, texts=comps.texts,
                rewards=np.nan_to_num(out.rewards, nan=0.0), starts=np.asarray(starts),
                lengths=np.asarray([len(r) for r in rows]), token_logp=token_logp)


def _probes(tok, sampled, completion_positions):
    """Held-out probe contexts from test-split prompts with one sampled completion each: per row the last prompt
    position and up to `completion_positions` completion positions (each predicts the next completion token)."""
    rows, starts = sampled[:2]
    pos, kind = [], []
    for i, (row, start) in enumerate(zip(rows, starts)):
        last = start - 1
        pos.append((i, last))
        kind.append("prompt")
        for k in range(1, completion_positions + 1):
            if last + k <= len(row) - 2:  # a completion position whose next token is still a completion token
                pos.append((i, last + k))
                kind.append("completion")
    return pad_right(rows, pad_id_of(tok))[0], np.asarray(pos, np.int32), kind


# ----------------------------------------------------------------------------- the experiment


def _relative(predicted, actual) -> float:
    """‖predicted − actual‖ / ‖actual‖, NaN when actual is 0."""
    n = float(np.linalg.norm(actual))
    return float(np.linalg.norm(predicted - actual)) / n if n > 0 else float("nan")


def _norms(x):
    return np.linalg.norm(np.asarray(x), axis=-1)


def run(lm, task="sum", out_dir="runs/one_step", *, model_name: str | None = None, reward_fn=None,
        allow_zero_step: bool = False, **options) -> dict:
    """Run the one-step experiment on `lm` (an ntkdyn LM with a tokenizer) and `task` (a Task or its name); write
    OUT/one_step.json and the figures (plots=True) and return the numbers (the JSON's content).

    options: the fields of OneStepConfig but model, task and out (seed, lr, n_prompts, group, probe_prompts, ...).
    x64: float64 (True), float32 (False) or None: float64 up to X64_MAX_PARAMS parameters, float32 above. chat:
    prompts through the chat template (None: when the tokenizer has one). rewards (reward specs, as ntkdyn rl's) and
    reward_fn(prompt, text) replace the task's reward; score_truncated scores completions without EOS too (else they score 0). When every group's
    rewards are equal the GRPO step is zero and there is nothing to predict: ValueError before anything is written,
    unless `allow_zero_step` (the reproduction, whose claims then read "cannot show on this setting" from
    dz_norm = 0; the relative errors are then NaN)."""
    o = build(OneStepConfig, options, exclude=("model", "task", "out"), what="one-step option")
    seed, n_prompts, group, lr, probe_prompts = o.seed, o.n_prompts, o.group, o.lr, o.probe_prompts
    max_new_tokens, temperature, x64, chat = o.max_new_tokens, o.temperature, o.x64, o.chat
    t0 = time.perf_counter()
    task = _tasks.resolve(task)
    specs = list(o.rewards or []) + ([] if reward_fn is None else [text_reward_function(reward_fn)])
    rewards = _tasks.reward_set(task, specs or None)  # resolved (files read, names checked) before any sampling
    tok = lm.tokenizer if lm.tokenizer is not None else CharTokenizer()
    if tok.vocab_size > lm.config.vocab_size:
        raise ValueError(f"the tokenizer has {tok.vocab_size} tokens but the model's vocabulary is "
                         f"{lm.config.vocab_size}; pass a model trained on the task's tokenizer")
    if n_prompts < 1 or group < 2 or lr <= 0 or probe_prompts < 1:
        raise ValueError(f"need n_prompts >= 1, group >= 2, lr > 0, probe_prompts >= 1; got {n_prompts}, "
                         f"{group}, {lr}, {probe_prompts}")
    if x64 is None:
        x64 = lm.num_params <= X64_MAX_PARAMS

    # rollouts (float32, the model as it is) and GRPO advantages per group
    prompts = task.prompts("train", n_prompts, seed)
    probe_prompt_list = held_out_prompts(task, probe_prompts, seed)
    flat = [p for p in prompts for _ in range(group)]
    sampled = _sample_all(lm, tok, flat + probe_prompt_list, seed, max_new_tokens, temperature, chat)
    B = len(flat)
    roll = _rollouts(task, tok, prompts, group, _part(sampled, slice(None, B)), rewards, o.score_truncated)
    adv = np.asarray(_advantages(roll["rewards"].reshape(n_prompts, group), "grpo")[0], np.float64).ravel()
    if not np.any(adv) and not allow_zero_step:  # every group's rewards are equal: the GRPO step is zero
        raise ValueError(
            f"every one of the {n_prompts} groups of {group} samples got equal rewards (mean reward "
            f"{roll['rewards'].mean():.3f}), so every advantage and the update are zero; expected at least one group "
            "with different rewards: try more prompts or a larger group, --score-truncated (completions cut at "
            "--max-new-tokens score 0 without it), a larger --max-new-tokens, or a task the model can solve")
    os.makedirs(out_dir, exist_ok=True)
    probe_ids, probe_pos, probe_kind = _probes(tok, _part(sampled, slice(B, None)), o.completion_positions)

    with jax.enable_x64(bool(x64)):
        dtype = jnp.float64 if x64 else jnp.float32
        params = jax.tree.map(lambda x: jnp.asarray(x, dtype), lm.params)
        # --- the group step (claim 4: first-order prediction vs the real step)
        r = dynamics_one_step(lm, roll["ids"], roll["mask"], adv, probe_ids, probe_pos, lr=lr, params=params)
        cheap = split_update(lm, params, r.params_after, probe_ids, probe_pos)
        # --- Proposition 2: single-sample updates with A > 0 at unrelated (held-out) probe contexts
        prop2 = _proposition2(lm, tok, params, roll, adv, probe_ids, probe_pos, lr, o.prop2_samples, seed)
        result = {
            "model": model_name, "family": lm.config.family, "tied_head": bool(lm.config.tie_word_embeddings),
            "num_params": lm.num_params, "task": task.name, "seed": seed, "lr": lr, "optimizer": "sgd",
            "precision": "float64" if x64 else "float32",
            "n_prompts": n_prompts, "group": group, "n_samples": int(len(adv)),
            "n_trained_tokens": int(roll["mask"].sum()),
            "reward_mean": float(roll["rewards"].mean()),
            "frac_reward_zero_std": float(np.mean(roll["rewards"].reshape(n_prompts, group).std(1) == 0)),
            "n_probes": int(len(probe_pos)), "probe_prompts": probe_prompt_list,
            **_step_numbers(r, cheap, probe_kind, probe_pos),
            # claim 3
            "prop2": prop2,
        }
    result["seconds"] = round(time.perf_counter() - t0, 2)
    if o.plots:
        result["figures"] = _figures(r, result, out_dir)
    write_json(os.path.join(out_dir, "one_step.json"), result)
    return result


def _step_numbers(r, cheap, probe_kind, probe_pos) -> dict:
    """The numbers of the group step: the first-order prediction against the real step (claim 4), the R/G(/X)
    split of Δz in the kernel convention and in the trainer's parameter-group convention (`cheap`, from
    split_update), per-probe values, and the feature similarity s behind R (claim 1)."""
    share = dz_share(r.dz_gradient + (0 if r.dz_cross is None else r.dz_cross), r.dz_representation)
    share_cheap = dz_share(cheap["dz_gradient"], cheap["dz_representation"])
    rel_per_probe = _norms(r.dz_predicted - r.dz_actual) / np.maximum(_norms(r.dz_actual), 1e-300)
    s_all = np.asarray(r.s)
    return {
        "objective": r.objective,
        # claim 4
        "rel_error": float(r.rel_error) if np.any(np.asarray(r.dz_actual)) else float("nan"),  # NaN: a zero step
        "rel_error_per_probe_median": float(np.median(rel_per_probe)),
        "rel_error_per_probe_max": float(np.max(rel_per_probe)),
        # NaN when the step changed nothing (every advantage 0): no relative error to speak of
        "rel_error_dlogp": _relative(np.asarray(r.dlogp_predicted), np.asarray(r.dlogp_actual)),
        "dz_norm": float(jnp.linalg.norm(r.dz_predicted)),
        "dH_predicted_mean": float(jnp.mean(r.dH_predicted)), "dH_actual_mean": float(jnp.mean(r.dH_actual)),
        # the split (kernel convention; for a tied head the cross term X is counted with the gradient part)
        "share_representation": float(share["representation"]), "share_gradient": float(share["gradient"]),
        "share_cross": (None if r.dz_cross is None
                        else float(jnp.linalg.norm(r.dz_cross) / jnp.linalg.norm(r.dz_predicted))),
        # what the trainer logs (split_update: parameter-group convention)
        "share_cheap_representation": float(share_cheap["representation"]),
        "share_cheap_gradient": float(share_cheap["gradient"]),
        "per_probe": {
            "kind": probe_kind, "pos": probe_pos.tolist(),
            "norm_dz_R": _norms(r.dz_representation).tolist(), "norm_dz_G": _norms(r.dz_gradient).tolist(),
            "norm_dz_X": None if r.dz_cross is None else _norms(r.dz_cross).tolist(),
            "norm_dz_actual": _norms(r.dz_actual).tolist(), "rel_error": rel_per_probe.tolist(),
            "dH_predicted": np.asarray(r.dH_predicted).tolist(), "dH_actual": np.asarray(r.dH_actual).tolist(),
        },
        # feature similarity behind R (claim 1): s = h_o·h_u between probes and trained contexts
        "s_mean": float(s_all.mean()), "s_std": float(s_all.std()), "frac_s_positive": float(np.mean(s_all > 0)),
        "probe_cosine_mean": float(pairwise_cosine(jnp.asarray(np.asarray(r.h)))),
    }


def _token_name(tok, y):
    if y == tok.eos_id:
        return "<eos>"
    try:
        return tok.decode([y])
    except Exception:  # a tokenizer without a decoder for single ids
        return str(y)


def _proposition2(lm, tok, params, roll, adv, probe_ids, probe_pos, lr, n_samples, seed, max_prob=0.95):
    """Single-sample steps on up to n_samples sampled tokens (c_u, y_u) of positively-advantaged completions, drawn
    among those with π(y_u | c_u) <= max_prob (a near-certain token has g_u = A (e_y − π_u) ≈ 0 and moves
    nothing; all tokens when none qualifies). At every probe c_o: s(c_o, c_u) > 0?, argmax_k Δz_R(c_o) = y_u?,
    real Δ log π(y_u | c_o) > 0?  Fractions over all (sample, probe) pairs."""
    rng = np.random.default_rng([seed, 2])
    synthetic = not np.any(adv > 0)  # no A > 0 sampled: use A = +1 on any sample
    rows_ok = (adv > 0) if not synthetic else np.ones(len(adv), bool)
    trained = (roll["mask"] != 0) & rows_ok[:, None]
    eligible = np.argwhere(trained & (roll["token_logp"] <= np.log(max_prob)))
    if eligible.size == 0:
        eligible = np.argwhere(trained)
    # distinct samples first (one token per sample), then more tokens when there are fewer samples than asked
    order = rng.permutation(len(eligible))
    _, first = np.unique(eligible[order, 0], return_index=True)  # first (random) token of every sample
    is_first = np.zeros(len(order), bool)
    is_first[first] = True
    pick = eligible[np.concatenate([order[is_first], order[~is_first]])[:n_samples]]
    B, T = roll["ids"].shape
    per = []
    for b, t in pick:
        b, t = int(b), int(t)  # the trained token y_u = ids[b, t], context c_u = ids[b, :t]
        # the single-sample objective J_u = (1/B) A log π(y_u | c_u): this token's term in a batch objective of
        # B samples, written on the whole batch (same shapes, so no recompile) with only (b, t) trained and only
        # A_b nonzero; stepped with the same lr, it stays in the first-order regime of the group step
        mask = np.zeros((B, T), np.int32)
        mask[b, t] = 1
        a = np.zeros(B)
        a[b] = 1.0 if synthetic else float(adv[b])
        r = dynamics_one_step(lm, roll["ids"], mask, a, probe_ids, probe_pos, lr=lr, params=params)
        y = int(roll["ids"][b, t])
        s = np.asarray(r.s)[:, 0]
        argmax_R = np.asarray(jnp.argmax(r.dz_representation, -1))
        up = np.asarray(r.dlogp_actual)[:, y] > 0
        per.append(dict(row=b, t=t, y=y, token=_token_name(tok, y), advantage=float(a[b]),
                        prob_y=float(np.exp(roll["token_logp"][b, t])), s=s.tolist(),
                        argmax_is_y=(argmax_R == y).tolist(),
                        dlogp_y_actual=np.asarray(r.dlogp_actual)[:, y].tolist(),
                        dlogp_y_predicted=np.asarray(r.dlogp_predicted)[:, y].tolist(), logp_y_up=up.tolist(),
                        rel_error=r.rel_error))
    s = np.concatenate([p["s"] for p in per])
    am = np.concatenate([p["argmax_is_y"] for p in per])
    up = np.concatenate([p["logp_y_up"] for p in per])
    pos = s > 0
    return {
        "n_samples": len(per), "n_pairs": int(s.size), "synthetic_advantage": synthetic, "max_prob": max_prob,
        "frac_s_positive": float(pos.mean()),
        "frac_argmax_dzR_is_y": float(am.mean()),
        "frac_logp_y_up": float(up.mean()),
        "frac_logp_y_up_given_s_positive": float(up[pos].mean()) if pos.any() else None,
        "frac_argmax_dzR_is_y_given_s_positive": float(am[pos].mean()) if pos.any() else None,
        "samples": per,
    }


# ----------------------------------------------------------------------------- figures


def _figures(r, res, out_dir):
    """(a) predicted vs real Δ log π over every (probe, token) entry; (b) the R/G split per probe and Prop. 2."""
    from ..plots import plot_one_step, plot_one_step_split

    return (plot_one_step(r.dlogp_predicted, r.dlogp_actual, os.path.join(out_dir, "one_step_scatter"))
            + plot_one_step_split(res, os.path.join(out_dir, "one_step_split")))


# ----------------------------------------------------------------------------- command line


def add_arguments(p):
    add_options(p, OneStepConfig)


def run_cli(args) -> int:
    from ..models import load

    o = given(args, OneStepConfig)
    model, task, out = o.pop("model", None), o.pop("task", DEFAULT_TASK), o.pop("out", OneStepConfig.out)
    if model:
        lm, name = load(model), model
    else:
        from ..default import default_model_dir

        name = default_model_dir(task=task)
        lm = load(name)
    res = run(lm, task, out, model_name=name, **o)
    p2 = res["prop2"]
    print(f"model {name} ({res['family']}, {res['num_params']:,} params), task {res['task']}, lr {res['lr']:g}, "
          f"{res['n_samples']} samples (reward {res['reward_mean']:.3f}), {res['n_probes']} held-out probes")
    print(f"relative error of the first-order prediction: {100 * res['rel_error']:.2f}% "
          f"(Δ log π: {100 * res['rel_error_dlogp']:.2f}%)")
    print(f"share of Δz: representation {res['share_representation']:.3f}, gradient {res['share_gradient']:.3f}"
          + ("" if res["share_cross"] is None else f" (cross {res['share_cross']:.3f})"))
    print(f"Prop. 2 over {p2['n_pairs']} (sample, probe) pairs: s>0 {p2['frac_s_positive']:.2f}, "
          f"argmax Δz_R = y_u {p2['frac_argmax_dzR_is_y']:.2f}, Δ log π(y_u) > 0 {p2['frac_logp_y_up']:.2f}")
    print(f"wrote {os.path.join(out, 'one_step.json')} in {res['seconds']:.1f}s")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="one_step", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_cli(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
