"""ntkdyn.rl.step: the jitted RL update trains exactly its parameter group (the other group bit-identical); the
plain optax route of ntkdyn.optim.make_optimizer does the same."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from rl_helpers import base_dir, leaves_equal  # noqa: F401 (fixture)

import ntkdyn as nd
from ntkdyn.models.tokenizer import encode_prompt
from ntkdyn.models.transformer import graphdef_for
from ntkdyn.optim import make_optimizer
from ntkdyn.rl import RLConfig, Stage
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
