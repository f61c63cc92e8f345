"""ntkdyn.rl.step: the jitted RL update trains exactly its parameter group (the other group bit-identical); the
plain optax route of ntkdyn.optim.make_optimizer does the same; the update over completions cut to
rollout.update_length equals the padded update (a fixed-seed run) to float rounding."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from rl_helpers import SMALL, assert_records_close, base_dir, easy_reward, leaves_equal  # noqa: F401 (fixture)

import ntkdyn as nd
from ntkdyn.models.tokenizer import encode_prompt
from ntkdyn.models.transformer import graphdef_for
from ntkdyn.optim import make_optimizer
from ntkdyn.rl import RLConfig, Stage, read_metrics, rollout, train
from ntkdyn.rl import objectives as O
from ntkdyn.rl.step import LossSpec, opt_init, rl_update, stage_optimizer


def test_group_backbone_keeps_head_and_group_head_keeps_backbone(base_dir):
    lm = nd.load(base_dir)
    tok = lm.tokenizer
    assert lm.graphdef is graphdef_for(lm.config)  # one graphdef per config: the trainer's compiled programs
    gd = dict(graphdef=lm.graphdef, cfg=lm.config)
    ids, mask = nd.models.pad_left([encode_prompt(tok, p) for p in ["sum 47:", "sum 31:"] * 8])
    g = lm.generate(ids, 8, prompt_mask=mask, seed=0)
    batch = dict(prompt_ids=jnp.asarray(ids), prompt_mask=jnp.asarray(mask), completion=g.tokens, mask=g.mask,
                 adv=jnp.asarray(np.tile([1.0, -1.0, 0.5, -0.5], 4), jnp.float32))
    ls = LossSpec(1.0, 0.2, "seq_mean_token_mean", 0.01, "k3")
    zeros = jnp.zeros(g.tokens.shape, jnp.float32)
    config = RLConfig(out="x", optimizer="adam", max_grad_norm=1.0, weight_decay=0.0)
    for group, frozen, trained in (("backbone", "head", "backbone"), ("head", "backbone", "head")):
        tx = stage_optimizer(config, Stage("s", "rl", group, 1, 3e-3, 2))
        assert tx is make_optimizer("adam", 3e-3, group, max_grad_norm=1.0, weight_decay=0.0)  # built once
        p, st = lm.params, opt_init(lm.params, tx=tx)
        for it in range(2):
            p, st, m, _ = rl_update(p, st, batch, zeros, jnp.asarray(it == 0), g.logp_model, tx=tx, ls=ls,
                                    group=group, **gd)
        assert leaves_equal(lm.params[frozen], p[frozen]), group
        assert not leaves_equal(lm.params[trained], p[trained]), group
        assert set(k for k in m if k.startswith("grad_norm/")) == {f"grad_norm/{trained}"}
    tx = O.make_optimizer("sgd", 0.1, "head")  # the plain optax route: set_to_zero on the frozen leaves
    grads = jax.tree.map(jnp.ones_like, lm.params)
    upd, _ = tx.update(grads, tx.init(lm.params), lm.params)
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(upd["backbone"]))
    assert all(float(jnp.abs(x).max()) > 0.0 for x in jax.tree.leaves(upd["head"]))


def test_update_length_is_the_longest_completion_rounded_up_to_the_bucket():
    mask = np.zeros((2, 3, 32), np.int32)  # a lane axis: the longest over every lane counts
    mask[0, 1, :5] = 1
    assert rollout.update_length(mask, 32, 8) == 8
    mask[1, 2, :17] = 1
    assert rollout.update_length(mask, 32, 8) == 24
    assert rollout.update_length(mask, 20, 8) == 20  # never past max_new_tokens
    assert rollout.update_length(np.zeros((4, 32)), 32, 8) == 8  # nothing generated: one bucket
    assert rollout.update_length(mask, 32, 1) == 17


def test_update_over_cut_completions_equals_the_padded_update(base_dir, tmp_path, monkeypatch):
    """A fixed-seed run (num_iterations 2 and beta > 0: the PPO ratio against logp_old and the KL against
    logp_ref run on the cut batch too) whose updates run over completions cut to 2-token buckets has the records
    and final parameters of the same run with the padded update (bucket = max_new_tokens: no column cut, the
    update before the cut) to float rounding."""
    seen, real = [], rollout.update_length

    def spy(mask, n, bucket):
        seen.append(real(mask, n, bucket))
        return seen[-1]

    monkeypatch.setattr(rollout, "update_length", spy)
    N = SMALL["max_new_tokens"]
    cfg = RLConfig(recipe="rl", model=base_dir, out=str(tmp_path / "run"), steps=3, seed=1,
                   **dict(SMALL, eval_every=0, probe_every=0))
    outs = {}
    for bucket in (N, 2):
        monkeypatch.setattr(rollout, "UPDATE_BUCKET", bucket)
        outs[bucket] = str(tmp_path / f"bucket{bucket}")
        train(cfg.replace(out=outs[bucket]), progress=False, reward_fn=easy_reward)
    assert seen[:3] == [N] * 3 and len(seen) == 6 and min(seen[3:]) < N, seen  # the cut happened
    a, b = (read_metrics(outs[k]) for k in (N, 2))
    assert len(a) == 4
    assert_records_close(a, b)
    # the final models: in function space to rounding, and every weight within 0.2 lr (Adam turns rounding-level
    # differences of gradients that are ~0 into lr-sized steps, as in test_rl_trainer's lane test)
    a, b = (nd.load(f"{outs[k]}/final") for k in (N, 2))
    ids = np.array([[1] + a.tokenizer.encode("sum 47:12+35"), [1] + a.tokenizer.encode("sum 81:40+41")])
    za, zb = np.asarray(a.logits(ids)), np.asarray(b.logits(ids))
    assert np.abs(za - zb).max() <= 1e-3 * np.abs(za).max()
    worst = max(float(np.abs(np.asarray(u) - np.asarray(v)).max())
                for u, v in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)))
    assert worst <= 0.2 * SMALL["lr"], worst


def test_ref_logp_and_confidence_run_each_prompt_once_equal_to_the_plain_pass(base_dir):
    """rl_step's reference log-probs and the evaluation's confidence with shared_prompts = G (each group's prompt
    run once) equal the pass over every row's own prompt to float rounding."""
    from ntkdyn.rl.step import confidence, ref_logp

    lm = nd.load(base_dir)
    gd = dict(graphdef=lm.graphdef, cfg=lm.config)
    ids, mask = nd.models.pad_left([encode_prompt(lm.tokenizer, p) for p in ["sum 47:", "sum 3:"] for _ in range(4)])
    g = lm.generate(ids, 8, prompt_mask=mask, seed=0)
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    plain, shared = (ref_logp(lm.params, ids, mask, g.tokens, temperature=0.7, shared_prompts=s, **gd) for s in (1, 4))
    np.testing.assert_allclose(np.asarray(shared), np.asarray(plain), rtol=1e-5, atol=1e-5)
    a, b = (confidence(lm.params, ids, mask, g.tokens, g.mask, shared_prompts=s, **gd) for s in (1, 4))
    for k in a:
        np.testing.assert_allclose(float(b[k]), float(a[k]), rtol=1e-5, atol=1e-6, err_msg=k)
