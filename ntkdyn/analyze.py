"""`ntkdyn analyze`: the learning dynamics of a run trained elsewhere (TRL, verl, OpenRLHF, ntkdyn itself), measured
on its series of checkpoints, with the metric names of ntkdyn's own RL runs.

    ntkdyn analyze trl-out/ --base HuggingFaceTB/... --task sum --out runs/analysis [--figures]
    ntkdyn analyze runs/my-rl-run --out runs/my-rl-run-analysis        # an ntkdyn run trained with --save-every K
    ntkdyn analyze m0/ m1/ m2.gguf --out runs/a                         # an explicit series of models

    from ntkdyn.analyze import analyze, AnalyzeConfig
    summary = analyze(["trl-out"], out="runs/analysis", base="base-model/", task="sum")

Inputs (`discover`):
  * a TRL output directory: its checkpoint-N/ subdirectories (Hugging Face layout), the step of each read from its
    trainer_state.json ("global_step"); a checkpoint without one falls back to its directory number N (said, and
    kept in config.json's "notes");
  * an ntkdyn run directory trained with RLConfig.save_every: its snapshots/step-N, the base model of the run at step
    0, and the run's own settings (task, evaluation prompts and samples, seed, probe set, drift contexts) as the
    defaults of every option, so that the analysis repeats the trainer's own measurements;
  * an explicit list of model directories / .gguf files / known names: steps from their trainer_state.json or a
    checkpoint-N / step-N name when every one has it, else their positions in the list (said).
The base model (step 0: the reference of the feature change and the eNTK drift) is `base`, else the run's base
(ntkdyn), else the first of the series. Every checkpoint must have the base's architecture and vocabulary.

Per checkpoint (one line of OUT/metrics.jsonl, keyed by its step), through the RL trainer's own functions on a
RunContext resolved from the equivalent RLConfig (rl/context.py), so names and values are the trainer's:
  eval/*          rl/evaluate.evaluate: held-out reward, pass@k (k up to `pass_k` = RLConfig.eval_samples), unique
                  answers, distinct-2, entropy, max-prob, log-prob; sampled with the key (seed, EVAL_ID, step), as
                  the trainer does at that step
  head_norm, feature_change   rl/evaluate.probe_metrics: ‖W‖_F, mean ‖h_t − h_0‖ over the probe tokens
  feature_cosine  mean cos(h_t, h_0) over the same tokens
  ntk/*           rl/trackers/drift: trace kernels R, G, K at the drift contexts, their alignment with and relative
                  change from the base's (K0 kept in OUT/ntk0.npz), mean traces
Between consecutive checkpoints (θ₀ → θ₁, logged on θ₁'s line), at every probe context c (`split_change`):
  Δz = z₁ − z₀ = (W₁h₁ + b₁) − (W₀h₀ + b₀) = [ΔW·h₀ + Δb] + [W₀·Δh] + [ΔW·Δh]      (exact)
  head part ΔW·h₀ + Δb, backbone part W₀·Δh (Δh = h₁ − h₀: everything that moves the features, a tied head's
  input use included), cross term ΔW·Δh. This before-anchored form is chosen over the symmetric
  ΔW·(h₀+h₁)/2 + (W₀+W₁)/2·Δh (exact without a cross term) because its head part is exactly the trainer's Δz_R
  (dynamics.split_update) and its backbone part is the finite version of the trainer's first-order Δz_G = W₀·JVP:
  the cross term, second order in the change, is then reported on its own, and its size says how far the
  checkpoints are apart from the one-step (linear) regime. Logged: dz/actual = ‖Δz‖_F, dz/head, dz/backbone,
  dz/cross (Frobenius norms) and dz/head_frac, dz/backbone_frac, dz/cross_frac = ⟨part, Δz⟩/‖Δz‖² (they sum to 1).
  The linearized prediction: Δz_lin = J(θ₀)·Δθ = ΔW·h₀ + Δb + W₀·JVP_ψ(h₀; Δψ) (dynamics.split_update: the
  first-order change through the eNTK's Jacobian for the real parameter change, whatever optimizer made it),
  logged as dz/linear = ‖Δz_lin‖_F, dz/linear_error = ‖Δz_lin − Δz‖_F/‖Δz‖_F, dz/linear_cosine, and its split
  as the trainer's dz_share/gradient, dz_share/representation (metrics.dz_share).

Output: OUT is a run directory (rl/rundir.py: config.json, metrics.jsonl, summary.json, ntk0.npz) that the plots
(ntkdyn.plots) draw; `figures` writes OUT/figures/fig_*.{png,pdf} (plots.training.plot_all). At most two
checkpoints are in memory at a time (the previous and the current; the base's params besides). A rerun with the
same settings analyses only the steps not yet in metrics.jsonl (a TRL run that saved more checkpoints since);
other settings are refused unless `overwrite`. Bad input raises ConfigError before anything is written.
"""
from __future__ import annotations

import dataclasses
import os
import re
import sys
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .rl.config import ConfigError
from .options import add_options, build, given, option

__all__ = ["AnalyzeConfig", "Checkpoint", "Series", "analyze", "discover", "split_change", "change_metrics",
           "add_arguments", "run_cli"]

_CKPT = re.compile(r"^(?:checkpoint|step)-(\d+)$")
# AnalyzeConfig fields passed to the RLConfig that resolves the evaluation (None: the analysed ntkdyn run's value,
# else RLConfig's default); pass_k is RLConfig.eval_samples
_RL_KEYS = ("task", "eval_dataset", "eval_fraction", "rewards", "reward_weights", "max_new_tokens", "eval_prompts",
            "eval_temperature", "probe_prompts", "ntk_contexts", "ntk_method", "ntk_probes", "seed", "chat_template",
            "score_truncated", "train_prompts")
_DERIVED = ("recipe", "steps")  # config.json's "config" keys besides the settings (for the plots)
class _Inherited:
    """The default shown in the help of the fields shared with RLConfig."""

    def __repr__(self):
        return "the analysed ntkdyn run's, else ntkdyn rl's"


@dataclasses.dataclass(frozen=True)
class AnalyzeConfig:
    """What an analysis depends on (validated on construction; ConfigError names the key). The fields shared with
    RLConfig default to None: the analysed ntkdyn run's value, else RLConfig's default."""

    inputs: list = option(None, "a TRL output dir, an ntkdyn run dir, or model dirs / .gguf files", cli=False)
    out: str | None = option(None, "the analysis's run directory (metrics.jsonl, summary.json); required")
    base: str | None = option(None, "the base model at step 0 (a directory, a .gguf file or a known name; None: "
                              "an ntkdyn run's base, else the first of the series)")
    task: str | None = option(None, "a built-in task or a dataset path: the held-out prompts and their reward"
                             )
    eval_dataset: str | None = option(None, "held-out prompts of a dataset task")
    eval_fraction: float | None = option(None, "share of a dataset's rows held out")
    rewards: list | None = option(None, "a reward function in TRL's signature (repeatable), as in ntkdyn rl"
                                 , flag="--reward", type=str, append=True, metavar="SPEC")
    reward_weights: list | None = option(None, "one weight per reward", type=float, nargs="+",
                                         metavar="W")
    pass_k: int | None = option(None, "samples per held-out prompt: pass@k for k up to it (RLConfig.eval_samples)"
                               )
    eval_prompts: int | None = option(None, "held-out prompts")
    eval_temperature: float | None = option(None, "evaluation sampling temperature")
    max_new_tokens: int | None = option(None, "tokens sampled per completion at most")
    probe_prompts: int | None = option(None, "the fixed probe set (test prompts with a reference answer)"
                                      )
    ntk_contexts: int | None = option(None, "probe contexts of the eNTK drift kernels")
    ntk_method: str | None = option(None, "the drift's trace kernels: exact | hutchinson",
                                    choices=("exact", "hutchinson"))
    ntk_probes: int | None = option(None, "Rademacher probes per drift kernel (hutchinson)")
    train_prompts: int | None = option(None, "train-prompt pool of the task (only the prompt length depends on "
                                       "it)")
    seed: int | None = option(None, "the evaluation's sampling seed (keyed by step, as the trainer's)")
    chat_template: bool | None = option(None, "prompts through the tokenizer's chat template",
                                        choices={"auto": None, "on": True, "off": False})
    score_truncated: bool | None = option(None, "score completions cut at max_new_tokens too (TRL)")
    ntk: bool = option(True, "skip the eNTK drift (the costliest measurement)", flag="--no-ntk")
    figures: bool = option(False, "write OUT/figures/fig_*.{png,pdf} with the run plots")
    overwrite: bool = option(False, "replace an analysis with other settings already in out")

    def __post_init__(self):
        if (not isinstance(self.inputs, (list, tuple)) or not self.inputs
                or not all(isinstance(p, (str, os.PathLike)) and str(p) for p in self.inputs)):
            raise ConfigError(f"AnalyzeConfig.inputs={self.inputs!r}: expected a non-empty list of paths (a TRL "
                              "output directory, an ntkdyn run directory, or model directories / .gguf files)")
        if not isinstance(self.out, (str, os.PathLike)) or not str(self.out):
            raise ConfigError(f"AnalyzeConfig.out={self.out!r}: expected the analysis's run directory (a path)")
        for key in ("ntk", "figures", "overwrite"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"AnalyzeConfig.{key}={getattr(self, key)!r}: expected True or False")
        # the shared fields are validated by RLConfig when the analysis resolves them (rl_config)


class Checkpoint(NamedTuple):
    """One model of the series: its global step and where it is (a HF directory, a .gguf file or a known name)."""

    step: int
    path: str


class Series(NamedTuple):
    """What `discover` found: the base (step 0 or the first checkpoint's step), the checkpoints after it (steps
    ascending), the analysed ntkdyn run's config.json (None for other inputs) and notes (fallbacks taken)."""

    base: Checkpoint
    checkpoints: list
    run: dict | None
    notes: list


# ============================================================================================== discovery


def _step_of(path: str, notes: list | None) -> int | None:
    """The step of a checkpoint directory: trainer_state.json's global_step, else its checkpoint-N / step-N number
    (with a note when `notes` is given), else None."""
    from .io import read_json

    state = os.path.join(path, "trainer_state.json")
    if os.path.isfile(state):
        try:
            step = read_json(state, what="trainer state").get("global_step")
        except (OSError, ValueError) as e:
            raise ConfigError(f"{state}: unreadable ({e}); expected TRL's trainer_state.json") from None
        if isinstance(step, int) and not isinstance(step, bool) and step >= 0:
            return step
        raise ConfigError(f"{state}: global_step={step!r}; expected an integer >= 0")
    m = _CKPT.match(os.path.basename(os.path.normpath(path)))
    if m is None:
        return None
    if notes is not None and m.group(0).startswith("checkpoint-"):
        notes.append(f"{path}: no trainer_state.json; its step is taken from the directory name ({m.group(1)})")
    return int(m.group(1))


def _numbered(d: str, prefix: str) -> list[str]:
    return sorted((os.path.join(d, n) for n in os.listdir(d)
                   if n.startswith(prefix) and _CKPT.match(n) and os.path.isdir(os.path.join(d, n))),
                  key=lambda p: int(_CKPT.match(os.path.basename(p)).group(1)))


def discover(inputs, base: str | None = None) -> Series:
    """The series of models `inputs` stands for (module docstring). ConfigError: a directory with no checkpoints,
    an ntkdyn run without snapshots, a path that is no model, two models at one step."""
    from .rl import rundir

    inputs = [os.fspath(p) for p in inputs]
    notes: list = []
    run = None
    single = inputs[0] if len(inputs) == 1 and os.path.isdir(inputs[0]) else None
    if single is not None and (rundir.is_run_dir(single) or not os.path.isfile(os.path.join(single, "config.json"))):
        d = inputs[0]
        if rundir.is_run_dir(d):  # an ntkdyn run: snapshots/step-N and the run's base
            snaps = _numbered(os.path.join(d, rundir.SNAPSHOTS), "step-") if os.path.isdir(
                os.path.join(d, rundir.SNAPSHOTS)) else []
            if not snaps:
                raise ConfigError(f"{d}: an ntkdyn run directory without model snapshots (no {rundir.SNAPSHOTS}/"
                                  "step-N); expected a run trained with --save-every K (RLConfig.save_every)")
            from .io import read_json

            run = read_json(os.path.join(d, "config.json"), what="run config")
            ckpts = [Checkpoint(int(_CKPT.match(os.path.basename(p)).group(1)), p) for p in snaps]
            base_path = base or run.get("model_dir")
            if base_path is None:
                raise ConfigError(f"{d}/config.json names no model_dir; expected --base, the run's base model")
            return _ordered(Checkpoint(0, os.fspath(base_path)), ckpts, run, notes)
        found = _numbered(d, "checkpoint-")
        if not found:
            raise ConfigError(f"{d}: no checkpoints in this directory; expected checkpoint-N/ subdirectories "
                              "(a TRL output directory), an ntkdyn run trained with --save-every, or a model "
                              "directory (config.json + *.safetensors)")
        ckpts = [Checkpoint(_step_of(p, notes), p) for p in found]
    else:  # an explicit series
        for p in inputs:
            if not (os.path.isdir(p) or os.path.isfile(p) or _is_known(p)):
                raise ConfigError(f"{p!r}: not a directory, a .gguf file or a known model name; expected a model "
                                  "of the series")
        steps = [_step_of(p, None) if os.path.isdir(p) else None for p in inputs]
        if all(s is not None for s in steps):
            ckpts = [Checkpoint(s, p) for s, p in zip(steps, inputs)]
        else:
            first = 1 if base else 0
            ckpts = [Checkpoint(first + i, p) for i, p in enumerate(inputs)]
            notes.append(f"the models have no steps of their own (trainer_state.json or a checkpoint-N / step-N "
                         f"name); their positions in the list are used: {first}..{first + len(inputs) - 1}")
    ckpts.sort(key=lambda c: c.step)
    if base:
        return _ordered(Checkpoint(0, os.fspath(base)), ckpts, run, notes)
    return _ordered(ckpts[0], ckpts[1:], run, notes)


def _is_known(name: str) -> bool:
    from .models.known import KNOWN

    return name in KNOWN


def _ordered(base: Checkpoint, ckpts: list, run, notes) -> Series:
    steps = [base.step] + [c.step for c in ckpts]
    for a, b in zip(steps, steps[1:]):
        if b <= a:
            twice = [c.path for c in [base] + ckpts if c.step == b]
            raise ConfigError(f"two models at step {b} ({twice}); expected one model per step"
                              if a == b else f"step {b} comes before the base's step {a}")
    for n in notes:
        print(f"ntkdyn analyze: note: {n}", file=sys.stderr)
    return Series(base, list(ckpts), run, notes)


def _model_dir(path: str) -> str:
    """The HF directory of a model of the series (a .gguf converted once, a known name fetched once)."""
    from .models.config import CheckpointError
    from .models.known import resolve

    try:
        return resolve(path)
    except (CheckpointError, ValueError) as e:
        raise ConfigError(str(e)) from None


def _check_compatible(base_cfg, ckpts: list) -> list[str]:
    """The checkpoints' HF directories after checking that each has the base's architecture and vocabulary
    (ConfigError naming the differing fields)."""
    from .models.config import CheckpointError, read_config

    dirs = []
    want = dataclasses.asdict(base_cfg)
    for c in ckpts:
        d = _model_dir(c.path)
        try:
            got = dataclasses.asdict(read_config(d))
        except (CheckpointError, ValueError) as e:
            raise ConfigError(f"{c.path}: {e}") from None
        diff = {k: (want.get(k), v) for k, v in got.items() if want.get(k) != v}
        if diff:
            raise ConfigError(f"{c.path} (step {c.step}): another architecture or vocabulary than the base model; "
                              f"differing config fields (base, checkpoint): {diff}; expected checkpoints of one "
                              "training run of the base")
        dirs.append(d)
    return dirs


# ============================================================================================== the Δz split


def _parts(h0, h1, head0, head1) -> dict:
    """float64 parts of Δz (module docstring) from the features h0, h1 (P, d) and heads {W (V, d)[, b (V,)]}."""
    f = lambda x: np.asarray(jax.device_get(x), np.float64)  # noqa: E731
    h0, h1, W0, W1 = f(h0), f(h1), f(head0["W"]), f(head1["W"])
    b0, b1 = (f(head0["b"]), f(head1["b"])) if "b" in head0 else (0.0, 0.0)
    dW, dh = W1 - W0, h1 - h0
    return {"dz": (h1 @ W1.T + b1) - (h0 @ W0.T + b0), "head": h0 @ dW.T + (b1 - b0), "backbone": dh @ W0.T,
            "cross": dh @ dW.T}


def split_change(lm, params0, params1, probe_ids, probe_pos) -> dict:
    """The change of the logits between two checkpoints θ₀ → θ₁ at the probe contexts (module docstring):
    {"dz": z₁ − z₀, "head": ΔW·h₀ + Δb, "backbone": W₀·Δh, "cross": ΔW·Δh} (P, V) float64, exact: head +
    backbone + cross = dz (to float64 rounding of float32 features); and the linearized prediction
    {"linear": J(θ₀)Δθ, "linear_head": ΔW·h₀ + Δb, "linear_backbone": W₀·JVP_ψ(h₀; Δψ)} (P, V) float32 from
    dynamics.split_update. probe_pos: (P,) or (P, 2) contexts as dynamics.probe_index reads them."""
    from .dynamics import probe_index, split_update
    from .models.lm import features_of

    lin = split_update(lm, params0, params1, probe_ids, probe_pos)  # checks the linear head and the ids
    rows, pos = probe_index(probe_ids, probe_pos)
    ids = jnp.asarray(probe_ids)
    h0 = features_of(lm.graphdef, lm.config, params0, ids)[rows, pos]
    h1 = features_of(lm.graphdef, lm.config, params1, ids)[rows, pos]
    return {**_parts(h0, h1, params0["head"], params1["head"]), "linear": np.asarray(lin["dz_total_first_order"]),
            "linear_head": np.asarray(lin["dz_representation"]),
            "linear_backbone": np.asarray(lin["dz_gradient"])}


def change_metrics(parts: dict) -> dict:
    """The dz/* and dz_share/* metrics of `split_change`'s parts (module docstring)."""
    from . import metrics as M

    dz = parts["dz"]
    n2 = float(np.sum(dz * dz))
    norm = np.sqrt(n2)
    out = {"dz/actual": norm}
    for k in ("head", "backbone", "cross"):
        out[f"dz/{k}"] = float(np.linalg.norm(parts[k]))
    for k in ("head", "backbone", "cross"):
        out[f"dz/{k}_frac"] = float(np.sum(parts[k] * dz) / n2) if n2 > 0 else 0.0
    lin = parts["linear"].astype(np.float64)
    ln = float(np.linalg.norm(lin))
    out["dz/linear"] = ln
    out["dz/linear_error"] = float(np.linalg.norm(lin - dz) / norm) if norm > 0 else 0.0
    out["dz/linear_cosine"] = float(np.sum(lin * dz) / (ln * norm)) if ln > 0 and norm > 0 else 0.0
    s = jax.device_get(M.dz_share(parts["linear_backbone"], parts["linear_head"]))
    out["dz_share/gradient"] = float(s["gradient"])
    out["dz_share/representation"] = float(s["representation"])
    return out


@jax.jit
def _feature_cosine(h, h0, mask):
    """Mean over the masked tokens of cos(h_t, h_0)."""
    num = jnp.sum(h * h0, -1)
    den = jnp.linalg.norm(h, axis=-1) * jnp.linalg.norm(h0, axis=-1)
    cos = jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)
    m = mask != 0
    return jnp.sum(jnp.where(m, cos, 0.0)) / jnp.maximum(jnp.sum(m), 1)


# ============================================================================================== the analysis


def rl_config(c: AnalyzeConfig, series: Series, out: str):
    """The RLConfig whose RunContext (rl/context.resolve) evaluates the series: the analysed ntkdyn run's config
    (else RLConfig's defaults) with the AnalyzeConfig fields that are set, model = the base, out = OUT. ConfigError
    (naming the AnalyzeConfig key) on a bad value."""
    from .rl.config import RLConfig

    d = dict(series.run.get("config", {})) if series.run else {}
    d = {k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(RLConfig)}}
    for k in _RL_KEYS:
        if getattr(c, k) is not None:
            d[k] = getattr(c, k)
    if c.pass_k is not None:
        d["eval_samples"] = c.pass_k
    d.update(model=_model_dir(series.base.path), out=out, resume=False, overwrite=True, save_every=0,
             ntk_every=0, claim6=False)
    if c.rewards is not None and c.reward_weights is None and d.get("reward_weights") is not None and len(
            d["reward_weights"]) != len(c.rewards):
        d["reward_weights"] = None
    try:
        return RLConfig.from_dict(d, source="ntkdyn analyze")
    except ConfigError as e:
        msg = str(e).replace("RLConfig.eval_samples", "AnalyzeConfig.pass_k").replace("RLConfig.", "AnalyzeConfig.")
        raise ConfigError(msg) from None


def _config_record(c: AnalyzeConfig, rlc) -> dict:
    """config.json's "config": the analysis's settings (what a rerun must repeat) as resolved (seed: the
    evaluation's, which the plots group by)."""
    d = dataclasses.asdict(c)
    d.update(inputs=[os.path.abspath(os.fspath(p)) if os.path.exists(os.fspath(p)) else os.fspath(p)
                     for p in c.inputs], out=os.path.abspath(os.fspath(c.out)), figures=False, overwrite=False,
             base=None if c.base is None else os.fspath(c.base))
    d["resolved"] = {k: getattr(rlc, k) for k in _RL_KEYS + ("eval_samples",)}
    d["seed"] = rlc.seed  # the seed the plots group by
    return d


def _stage_of(stages, step: int) -> tuple[str, int]:
    """(stage name, stage step) of global `step` in the analysed run's stage plan (else "rl", step)."""
    if not stages:
        return "rl", step
    done = 0
    for s in stages:
        if step <= done + s["steps"] or s is stages[-1]:
            return s["name"], step - done
        done += s["steps"]
    return "rl", step


def analyze(inputs=None, *, out=None, progress: bool = True, reward_funcs: list | None = None,
            config: AnalyzeConfig | None = None, **options) -> dict:
    """Analyse the series `inputs` into the run directory `out` (module docstring) and return its summary (also
    OUT/summary.json). options: the other AnalyzeConfig fields (base, task, rewards, pass_k, ...). reward_funcs:
    reward callables in TRL's signature (they replace `rewards` and the task's own). progress: one line per
    checkpoint on stderr. ConfigError before anything is written on bad input."""
    if config is None:
        try:
            config = build(AnalyzeConfig, dict(options, inputs=list(inputs or []), out=out),
                           what="analyze option")
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return _analyze(config, progress, reward_funcs)


def _analyze(c: AnalyzeConfig, progress: bool, reward_funcs) -> dict:
    from .rl import rundir
    from .rl.context import on_devices, resolve
    from .rl.evaluate import evaluate, probe_metrics
    from .rl.lanes import Lanes
    from .rl.trackers.drift import drift_contexts, drift_metrics, trace_kernels
    from .evaluation import pass_ks
    from .io import read_json, write_json
    from .models.lm import features_of, load

    say: Callable = (lambda m: print(f"ntkdyn analyze: {m}", file=sys.stderr, flush=True)) if progress else (
        lambda m: None)
    t_start = time.perf_counter()
    out = os.path.abspath(os.fspath(c.out))
    for p in c.inputs:
        if os.path.exists(os.fspath(p)) and os.path.abspath(os.fspath(p)) == out:
            raise ConfigError(f"AnalyzeConfig.out={c.out!r} is an input of the analysis; expected another directory")
    series = discover(c.inputs, c.base)
    rlc = rl_config(c, series, out)
    ctx = resolve(rlc, reward_funcs=reward_funcs)  # validates task, rewards, base model, shapes; writes nothing
    dirs = _check_compatible(ctx.lm.config, series.checkpoints)
    record = _config_record(c, rlc)
    with rundir.lock(out):
        if rundir.is_run_dir(out):
            try:
                saved = read_json(os.path.join(out, "config.json"), what="run config").get("config")
                saved = {k: v for k, v in saved.items() if k not in _DERIVED}
            except (OSError, ValueError, AttributeError):
                saved = None
            if saved != record and not c.overwrite:
                diff = sorted(k for k in set(record) | set(saved or {})
                              if (saved or {}).get(k, "<absent>") != record.get(k))
                raise ConfigError(f"AnalyzeConfig.out={c.out!r}: already holds a run or an analysis with other "
                                  f"settings (differing keys: {diff}); expected the same settings (a rerun "
                                  "analyses the new checkpoints only), overwrite=True (--overwrite) or another "
                                  "directory")
        elif rundir.holds_run(out) and not c.overwrite:
            raise ConfigError(f"AnalyzeConfig.out={c.out!r}: holds part of a run; expected overwrite=True or "
                              "another directory")
        fresh = c.overwrite or not rundir.is_run_dir(out)
        rundir.prepare(out, c.overwrite)
        ctx = on_devices(ctx)
        lanes = Lanes(1)
        run_cfg = (series.run or {}).get("config", {})
        stages = (series.run or {}).get("stages")
        points = [series.base] + [Checkpoint(s.step, d) for s, d in zip(series.checkpoints, dirs)]
        write_json(os.path.join(out, "config.json"), dict(
            config={**record, **dict(zip(_DERIVED, (run_cfg.get("recipe", "rl"), points[-1].step)))},
            stages=stages, model_dir=ctx.model_dir, eval_prompts=ctx.eval_prompts, pass_at_k=pass_ks(rlc.eval_samples),
            model_config=ctx.cfg.to_hf(), num_params=ctx.lm.num_params, rl_config=rlc.to_dict(),
            checkpoints=[[p.step, p.path] for p in points], notes=series.notes, analysed_run=series.run is not None))
        if fresh:
            rundir.start_metrics(out)
        done = {r.get("step") for r in rundir.read_metrics(out)}
        contexts = drift_contexts(ctx.probe_pos, rlc.ntk_contexts)
        K0 = None
        if c.ntk:
            saved = rundir.read_arrays(out, rundir.NTK0_FILE)
            if (saved is not None and np.array_equal(saved.get("contexts"), contexts)
                    and str(saved.get("method")) == rlc.ntk_method):
                K0 = {k: saved[k] for k in ("R", "G", "K")}
            else:
                K0 = trace_kernels(ctx.lm, ctx.probe_ids, contexts, ctx.base_params, rlc.ntk_method,
                                   rlc.ntk_probes, ctx.sh.mesh)
                rundir.write_arrays(out, rundir.NTK0_FILE, method=np.asarray(rlc.ntk_method), contexts=contexts,
                                    **K0)

        def params_of(i):
            if i == 0:
                return ctx.base_params
            return ctx.sh.replicate(jax.tree.map(jnp.asarray, load(points[i].path, tokenizer=False).params))

        prev = None  # (index, params) of the previous checkpoint, loaded when the current one needs it
        todo = [i for i, p in enumerate(points) if p.step not in done]
        say(f"{len(points)} models (steps {points[0].step}..{points[-1].step}); {len(points) - len(todo)} already "
            f"analysed in {out}")
        for n, i in enumerate(todo):
            t0 = time.perf_counter()
            p = points[i]
            params = params_of(i)
            stage, stage_step = _stage_of(stages, p.step)
            rec = {"step": p.step, "stage": stage, "stage_step": stage_step}
            if i > 0:
                if prev is None or prev[0] != i - 1:
                    prev = (i - 1, params_of(i - 1))
                rec.update(change_metrics(split_change(ctx.lm, prev[1], params, ctx.probe_ids, ctx.probe_pos)))
                rec["dz/steps"] = p.step - points[i - 1].step
            rec.update(probe_metrics(ctx, lanes, params)[0])
            h = features_of(ctx.lm.graphdef, ctx.cfg, params, ctx.probe_ids_dev)
            rec["feature_cosine"] = float(_feature_cosine(h, ctx.h0, ctx.probe_mask_dev))
            if c.ntk:
                rec.update(drift_metrics(K0, trace_kernels(ctx.lm, ctx.probe_ids, contexts, params,
                                                           rlc.ntk_method, rlc.ntk_probes, ctx.sh.mesh)))
            rec.update(evaluate([ctx], lanes, params, p.step)[0])
            rec["analyze_time"] = time.perf_counter() - t0
            rundir.log(out, rec)
            prev = (i, params)
            say(f"step {p.step} ({n + 1}/{len(todo)}) in {rec['analyze_time']:.1f}s: eval/reward "
                f"{rec['eval/reward']:.3f}" + (f", ntk/align_K {rec['ntk/align_K']:.4f}" if c.ntk else ""))
        records = sorted((r for r in rundir.read_metrics(out) if isinstance(r.get("step"), int)),
                         key=lambda r: r["step"])
        evals = [r for r in records if "eval/reward" in r]
        summary = dict(
            out=out, inputs=record["inputs"], base=series.base.path, task=rlc.task, seed=rlc.seed,
            steps=[r["step"] for r in records], analysed_now=[points[i].step for i in todo], notes=series.notes,
            first_eval={k: v for k, v in evals[0].items() if k.startswith("eval/")} if evals else None,
            final_eval={k: v for k, v in evals[-1].items() if k.startswith("eval/")} if evals else None,
            final_metrics={k: v for k, v in (records[-1] if records else {}).items() if not k.startswith("eval/")},
            time_s=time.perf_counter() - t_start)
        if c.figures:
            from .plots.training import plot_all

            summary["figures"] = plot_all(out, os.path.join(out, "figures"))
        return rundir.write_summary(out, summary)


# ============================================================================================== command line


def add_arguments(p):
    """`ntkdyn analyze INPUT... --out DIR`: the AnalyzeConfig fields (options.add_options), then --dataset and
    --reward-model as in `ntkdyn rl`."""
    p.add_argument("inputs", nargs="+", metavar="RUN_OR_CHECKPOINTS",
                   help="a TRL output directory (checkpoint-N/), an ntkdyn run directory trained with --save-every, "
                        "or model directories / .gguf files in training order")
    add_options(p, AnalyzeConfig, defaults={k: _Inherited() for k in _RL_KEYS + ("pass_k",)})
    p.add_argument("--dataset", dest="dataset", default=None, help="a dataset of prompts; the same as --task PATH")
    p.add_argument("--reward-model", dest="reward_models", action="append", default=None, metavar="NAME_OR_DIR",
                   help="a reward model (repeatable), after the --reward functions")
    p.add_argument("--no-progress", action="store_true", help="no progress lines")


def config_from_args(args) -> AnalyzeConfig:
    from .rl.cli import fold_dataset_and_reward_models

    d = given(args, AnalyzeConfig)
    fold_dataset_and_reward_models(args, d, dict(d))
    return AnalyzeConfig(inputs=list(args.inputs), **d)


def run_cli(args) -> int:
    summary = _analyze(config_from_args(args), not args.no_progress, None)
    print(f"wrote {summary['out']} (steps {summary['steps']}; analysed now {summary['analysed_now']}, "
          f"{summary['time_s']:.1f}s)")
    for name in ("first_eval", "final_eval"):
        ev = summary.get(name)
        if ev:
            print(f"{name}: " + ", ".join(f"{k}={v:.4g}" for k, v in ev.items() if isinstance(v, float)))
    for f in summary.get("figures", []):
        print(f"figure: {f}")
    return 0
