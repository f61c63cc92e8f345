"""Synthetic run directories for the plots and claims tests: 3 recipes x 2 seeds, stage 1 for cf-rl / lp-ft, eval
lines every few steps, keys missing here and there (the layout ntkdyn.rl writes: config.json + metrics.jsonl)."""
import json

STEPS, HEAD, EVAL_EVERY = 10, 4, 3
SEED_OFFSET = {0: 1.0, 1: 3.0}  # train reward = 0.1 * rl_step + offset  ->  mean 2 + 0.1 x, std 1 (ddof 0)


def curve(recipe, seed, after, fmt):
    ks = [1, 2, 4, 8, 16]
    base = 0.2 + 0.1 * seed + (0.2 if after else 0.0)
    vals = [min(1.0, base + 0.1 * i * (0.5 if after else 1.0)) for i in range(len(ks))]
    if fmt == "pairs":
        return [[k, v] for k, v in zip(ks, vals)]
    return {k: v for k, v in zip(ks, vals)}  # json turns the keys into strings


def write_run(root, recipe, seed, head_steps=HEAD, config_head_steps="same", drop=(), garbage_tail=False,
              curve_fmt="pairs", no_dz=False):
    d = root / f"{recipe}_s{seed}"
    d.mkdir(parents=True)
    k1 = head_steps if recipe != "rl" else 0
    cfg = {"recipe": recipe, "seed": seed, "steps": STEPS,
           "head_steps": (k1 if config_head_steps == "same" else config_head_steps)}
    (d / "config.json").write_text(json.dumps(cfg))
    lines = []
    off = SEED_OFFSET[seed]
    for g in range(k1 + STEPS):
        stage1 = g < k1
        x = g - k1
        st = "stage1" if stage1 else "rl"
        ss = g if stage1 else g - k1
        if (stage1 and g == 0) or (not stage1 and (ss % EVAL_EVERY == 0 or ss == STEPS - 1)):
            ev = {"step": g, "stage": st, "stage_step": ss,
                  "eval/reward": 0.5 + 0.05 * x + 0.1 * seed,
                  "eval/entropy": 2.0 - 0.05 * x, "eval/max_prob": 0.3 + 0.02 * x,
                  "eval/unique_answers": 6 - 0.2 * x, "eval/unique_correct": 3 - 0.1 * x + seed}
            if g == 0 or ss == STEPS - 1:
                ev["eval/pass_at_k_curve"] = curve(recipe, seed, after=(ss == STEPS - 1 and not stage1), fmt=curve_fmt)
            lines.append(ev)
        rec = {"step": g, "stage": st, "stage_step": ss, "reward": 0.1 * x + off, "reward_std": 0.2,
               "entropy": 2.0 - 0.04 * x, "max_prob": 0.3 + 0.01 * x, "loss": 0.1,
               "head_norm": 10.0 + (0.5 * (g + 1) if (recipe == "lp-ft" and stage1) else 0.05 * g),
               "feature_change": 0.0 if stage1 else 0.01 * ss * (0.5 if recipe == "lp-ft" else 1.0)}
        if not no_dz and (not stage1) and ss % 2 == 0:
            rec["dz_share/gradient"] = 0.6 - 0.01 * ss
            rec["dz_share/representation"] = 0.5 + 0.01 * ss
        if (seed, x) in drop:
            del rec["reward"]
        lines.append(rec)
    text = "\n".join(json.dumps(r) for r in lines) + "\n"
    if garbage_tail:
        text += '{"step": 99, "reward": '  # partial last line of a run still being written
    (d / "metrics.jsonl").write_text(text)
    return d


def write_runs(root):
    """The standard set: rl seed 1 lacks reward at x = 5 and ends with a partial line; cf-rl writes its pass@k
    curves as dicts; lp-ft logs no dz_share and seed 1's config lacks head_steps (the shift comes from the logs);
    plus a directory that is not a run."""
    for seed in (0, 1):
        write_run(root, "rl", seed, drop={(1, 5)}, garbage_tail=(seed == 1))
        write_run(root, "cf-rl", seed, curve_fmt="dict")
        write_run(root, "lp-ft", seed, no_dz=True, config_head_steps=("same" if seed == 0 else None))
    (root / "not_a_run").mkdir()
    (root / "not_a_run" / "notes.txt").write_text("hi")
    return root


def check_figure_files(files, n):
    """`files` are n non-empty PNG / PDF files, half of each."""
    import os

    assert len(files) == n
    for f in files:
        assert os.path.isfile(f) and os.path.getsize(f) > 0, f
    assert sorted(os.path.splitext(f)[1] for f in files) == sorted([".pdf", ".png"] * (n // 2))
    for f in files:
        with open(f, "rb") as fh:
            head = fh.read(8)
        assert head.startswith(b"\x89PNG") if f.endswith(".png") else head.startswith(b"%PDF")
