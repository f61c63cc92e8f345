"""The model layer against transformers' PyTorch models: logits, save round trip, greedy generation, gradients,
checkpoint dialects and dtypes, and the errors on bad input."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import ntkdyn as nd
from ntkdyn.models import pad_left
from ntkdyn.models.config import CheckpointError

import hf_models

NAMES = list(hf_models.SPECS) + list(hf_models.SOFTCAP)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {name: hf_models.build(name, str(root)) for name in NAMES}


def torch_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(np.asarray(ids), dtype=torch.long)).logits.numpy()


def rand_ids(shape, seed=0):
    return np.random.RandomState(seed).randint(0, hf_models.V, shape).astype(np.int32)


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_transformers(built, name):
    path, model = built[name]
    lm = nd.load(path)
    ids = rand_ids((3, 13))
    ours = np.asarray(lm.logits(ids))
    assert ours.shape == (3, 13, hf_models.V) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, torch_logits(model, ids), atol=1e-4, rtol=0)
    # features are what the head reads
    h = lm.features(ids)
    np.testing.assert_allclose(np.asarray(lm.head(h)), ours, atol=1e-5)
    assert set(lm.params) == {"backbone", "head"}


@pytest.mark.parametrize("name", NAMES)
def test_save_roundtrip_opens_in_transformers(built, name, tmp_path):
    path, model = built[name]
    lm = nd.load(path)
    out = lm.save(str(tmp_path / "saved"))
    ids = rand_ids((2, 9), seed=1)
    back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    np.testing.assert_allclose(torch_logits(back, ids), torch_logits(model, ids), atol=1e-5)
    np.testing.assert_allclose(np.asarray(nd.load(out).logits(ids)), np.asarray(lm.logits(ids)), atol=0)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


@pytest.mark.parametrize("name", NAMES)
def test_greedy_generation_matches_transformers(built, name):
    path, model = built[name]
    lm = nd.load(path)
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [14, 15, 16, 17]]  # different lengths: left padding
    g = lm.generate(prompts, 10, temperature=0, stop_token=-1)
    ids, mask = pad_left(prompts, 0)
    ref = model.generate(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
                         max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=None)
    np.testing.assert_array_equal(np.asarray(g.tokens), ref[:, ids.shape[1]:].numpy())
    assert np.asarray(g.mask).all()


def test_sampler_logprobs_and_mask(built):
    lm = nd.load(built["neox_parallel"][0])
    prompts = [[3, 4, 5], [6, 7, 8, 9, 10]]
    g = lm.generate(prompts, 12, temperature=0.7, top_k=20, seed=3, stop_token=2)
    toks, mask = np.asarray(g.tokens), np.asarray(g.mask)
    # logp_model is the model's own log-prob of the sampled token: recompute by teacher forcing row by row
    for b, p in enumerate(prompts):
        n = int(mask[b].sum())
        seq = np.array([p + toks[b, :n].tolist()])
        lp = jax.nn.log_softmax(lm.logits(seq)[0], -1)
        want = [float(lp[len(p) - 1 + t, toks[b, t]]) for t in range(n)]
        np.testing.assert_allclose(np.asarray(g.logp_model)[b, :n], want, atol=2e-5)
        # after a stop token nothing is generated
        if n < toks.shape[1]:
            assert toks[b, n - 1] == 2 and not mask[b, n:].any() and (toks[b, n:] == 0).all()
    # same seed, same sample; other seed, other sample
    g2 = lm.generate(prompts, 12, temperature=0.7, top_k=20, seed=3, stop_token=2)
    np.testing.assert_array_equal(np.asarray(g2.tokens), toks)
    g3 = lm.generate(prompts, 12, temperature=0.7, top_k=20, seed=4, stop_token=2)
    assert not np.array_equal(np.asarray(g3.tokens), toks)
    # several stop ids: a row ends at the first of them (jnp.isin inside the scan)
    stops = [2, int(toks[0, 0])]
    g4 = lm.generate(prompts, 12, temperature=0.7, top_k=20, seed=3, stop_token=stops)
    m4 = np.asarray(g4.mask)
    assert m4[0].tolist() == [1] + [0] * 11
    n1 = next((i + 1 for i, t in enumerate(toks[1]) if t in stops), 12)
    assert m4[1].sum() == n1 and (np.asarray(g4.tokens)[1, :n1] == toks[1, :n1]).all()
    assert lm.generate(prompts, 12, temperature=0.7, top_k=20, seed=3, stop_token=[]).mask.sum() == 24  # never


def test_top_k_and_top_p_truncate():
    from ntkdyn.models.sampling import process_logits

    z = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    keep_k = np.asarray(process_logits(z, 1.0, 2, 1.0)) > -1e30
    np.testing.assert_array_equal(keep_k, [[True, True, False, False]])
    keep_p = np.asarray(process_logits(z, 1.0, None, 0.7)) > -1e30  # 0.5 < 0.7, 0.5+0.3 >= 0.7
    np.testing.assert_array_equal(keep_p, [[True, True, False, False]])
    keep_p1 = np.asarray(process_logits(z, 1.0, None, 0.4)) > -1e30
    np.testing.assert_array_equal(keep_p1, [[True, False, False, False]])


def test_gradient_matches_finite_difference(built):
    lm = nd.load(built["llama_gqa"][0])
    ids = rand_ids((2, 7), seed=2)

    def loss(params):
        z = lm.logits(ids, params=params)
        return jnp.mean(jax.nn.log_softmax(z, -1)[..., 3]) + 0.1 * jnp.mean(z ** 2)

    g = jax.grad(loss)(lm.params)
    rng = np.random.RandomState(0)
    direction = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), lm.params)
    eps = 1e-3
    plus = jax.tree.map(lambda p, d: p + eps * d, lm.params, direction)
    minus = jax.tree.map(lambda p, d: p - eps * d, lm.params, direction)
    fd = (float(loss(plus)) - float(loss(minus))) / (2 * eps)
    an = sum(float(jnp.vdot(a, b)) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(direction)))
    assert abs(fd - an) <= 1e-2 * abs(an) + 1e-4, (fd, an)
    # jvp works through the same function
    _, t = jax.jvp(lambda p: lm.logits(ids, params=p), (lm.params,), (direction,))
    assert t.shape == (2, 7, hf_models.V)


def test_sharded_checkpoint_and_bf16(built, tmp_path):
    path, model = built["qwen2"]
    lm = nd.load(path)
    from ntkdyn.models.hf import write_model_dir

    sharded = write_model_dir(str(tmp_path / "sharded"), lm.config, lm.params, max_shard_bytes=20_000)
    assert os.path.isfile(os.path.join(sharded, "model.safetensors.index.json"))
    ids = rand_ids((2, 5))
    np.testing.assert_array_equal(np.asarray(nd.load(sharded).logits(ids)), np.asarray(lm.logits(ids)))
    back = transformers.AutoModelForCausalLM.from_pretrained(sharded).eval()
    np.testing.assert_allclose(torch_logits(back, ids), np.asarray(lm.logits(ids)), atol=1e-4)
    # a bf16 checkpoint loads (computed in float32) and matches the bf16-rounded torch model
    bf = tmp_path / "bf16"
    model.to(torch.bfloat16).save_pretrained(bf)
    model.to(torch.float32)
    lmb = nd.load(str(bf))
    assert jax.tree.leaves(lmb.params)[0].dtype == jnp.float32
    ref = transformers.AutoModelForCausalLM.from_pretrained(bf, dtype=torch.float32).eval()
    np.testing.assert_allclose(np.asarray(lmb.logits(ids)), torch_logits(ref, ids), atol=1e-4)


def test_classic_config_dialect(built, tmp_path):
    """Published Pythia checkpoints: rotary_pct, rotary_emb_base, top-level rope_theta, torch_dtype."""
    path, model = built["neox_parallel"]
    d = str(tmp_path / "classic")
    shutil.copytree(path, d)
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    rp = cfg.pop("rope_parameters")
    cfg.pop("dtype", None)
    cfg.update(rotary_pct=rp["partial_rotary_factor"], rotary_emb_base=rp["rope_theta"], torch_dtype="float32",
               architectures=["GPTNeoXForCausalLM"])
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    lm = nd.load(d)
    assert lm.config.rotary_pct == 0.25 and lm.config.parallel_residual
    ids = rand_ids((2, 6))
    np.testing.assert_allclose(np.asarray(lm.logits(ids)), torch_logits(model, ids), atol=1e-4)


def test_llama_classic_rope_theta(built, tmp_path):
    path, model = built["llama_gqa"]
    d = str(tmp_path / "classic")
    shutil.copytree(path, d)
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    theta = cfg.pop("rope_parameters")["rope_theta"]
    cfg["rope_theta"] = theta
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    assert nd.load(d).config.rope_theta == theta


def _copy_with(path, tmp_path, edit_config=None, edit_state=None):
    from safetensors.numpy import save_file

    from ntkdyn.models.hf import read_weights

    d = str(tmp_path / "bad")
    shutil.copytree(path, d)
    if edit_config:
        with open(os.path.join(d, "config.json")) as f:
            cfg = json.load(f)
        edit_config(cfg)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f)
    if edit_state:
        state = {k: np.array(v) for k, v in read_weights(d).items()}
        edit_state(state)
        save_file(state, os.path.join(d, "model.safetensors"))
    return d


def test_checkpoint_errors(built, tmp_path):
    path, _ = built["gpt2"]
    with pytest.raises(CheckpointError, match="no config.json"):
        nd.load(str(tmp_path))
    with pytest.raises(CheckpointError, match="not a directory"):
        nd.load(str(tmp_path / "nope"))
    d = _copy_with(path, tmp_path, edit_config=lambda c: c.update(model_type="mamba"))
    with pytest.raises(CheckpointError, match="unknown model_type 'mamba'"):
        nd.load(d)
    shutil.rmtree(d)
    d = _copy_with(path, tmp_path, edit_state=lambda s: s.pop("transformer.h.1.mlp.c_fc.weight"))
    with pytest.raises(CheckpointError, match="missing tensor.*h.1.mlp.c_fc.weight"):
        nd.load(d)
    shutil.rmtree(d)
    d = _copy_with(path, tmp_path, edit_state=lambda s: s.update({"transformer.ln_f.weight": np.ones(31, np.float32)}))
    with pytest.raises(CheckpointError, match=r"ln_f.weight.*shape \(31,\), expected \(32,\)"):
        nd.load(d)
    shutil.rmtree(d)
    d = _copy_with(path, tmp_path, edit_config=lambda c: c.update(n_layer=3))
    with pytest.raises(CheckpointError, match="missing tensor.*h.2"):
        nd.load(d)
    shutil.rmtree(d)
    d = _copy_with(path, tmp_path)
    with open(os.path.join(d, "model.safetensors"), "r+b") as f:
        f.truncate(1000)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        nd.load(d)
    shutil.rmtree(d)
    d = _copy_with(path, tmp_path)
    os.remove(os.path.join(d, "model.safetensors"))
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        nd.load(d)


def test_input_errors(built):
    lm = nd.load(built["gpt2"][0])
    with pytest.raises(ValueError, match=r"token id\(s\) \[97\] out of vocabulary \[0, 97\)"):
        lm.logits(np.array([[1, 97]]))
    with pytest.raises(ValueError, match="out of vocabulary"):
        lm.features(np.array([[-1, 3]]))
    with pytest.raises(ValueError, match="longer than the model's max_positions=64"):
        lm.logits(np.zeros((1, 65), np.int32))
    with pytest.raises(ValueError, match="2-D"):
        lm.logits(np.zeros((5,), np.int32))
    with pytest.raises(ValueError, match="exceeds max_positions"):
        lm.generate([[1, 2, 3]], 62)


def test_failed_save_leaves_nothing(built, tmp_path):
    lm = nd.load(built["llama_tied"][0])

    class Broken:
        def save(self, d):
            raise OSError("disk full")

    lm.tokenizer = Broken()
    with pytest.raises(OSError, match="disk full"):
        lm.save(str(tmp_path / "out"))
    assert os.listdir(tmp_path) == []
    # an existing directory is replaced only when the new one is complete
    lm.tokenizer = None
    lm.save(str(tmp_path / "out"))
    lm.tokenizer = Broken()
    with pytest.raises(OSError):
        lm.save(str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path)) == ["out"] and os.path.isfile(tmp_path / "out" / "model.safetensors")


def test_random_init_round_trip(tmp_path):
    cfg = nd.ModelConfig(family="gpt_neox", vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, d_ff=64,
                         max_positions=32, rotary_pct=0.25, parallel_residual=True, qkv_bias=True, out_bias=True)
    lm = nd.LM.init(cfg, seed=0)
    out = lm.save(str(tmp_path / "m"))
    ids = rand_ids((2, 8)) % 50
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    np.testing.assert_allclose(torch_logits(hf, ids), np.asarray(lm.logits(ids)), atol=1e-5)


def test_categorical_draws_equal_jax_random_categorical():
    """The sampler's categorical / first_argmax (two plain reductions instead of argmax's variadic one) draw
    exactly what jax.random.categorical / jnp.argmax give, on ordinary, masked (-inf), tied (+inf) and NaN logits."""
    from ntkdyn.models.sampling import categorical, first_argmax

    z = jax.random.normal(jax.random.key(0), (6, 97)) * 3.0
    cases = [z, z.at[:, 10:].set(-jnp.inf), z.at[2, 5].set(jnp.nan).at[2, 9].set(jnp.nan),
             jnp.full_like(z, -jnp.inf), z.at[4, 7].set(jnp.inf).at[4, 8].set(jnp.inf), jnp.zeros_like(z)]
    keys = jax.random.split(jax.random.key(1), 64)
    for zz in cases:
        want = jax.vmap(lambda k: jax.random.categorical(k, zz, -1))(keys)
        got = jax.jit(jax.vmap(lambda k: categorical(k, zz)))(keys)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        np.testing.assert_array_equal(np.asarray(jax.jit(first_argmax)(zz)), np.asarray(jnp.argmax(zz, -1)))
