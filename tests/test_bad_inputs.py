"""Bad input, table-driven: every case must raise a clear error (ValueError / TypeError / FileNotFoundError or one of
ntkdyn's own error types) whose message names the culprit, and leave the watched directories exactly as they were
(no half-written file, no temporary left behind, the user's files untouched).

Each case is (id, function(env) -> None, expected exception type(s), regex the message must match, watched dirs)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import ntkdyn as nd
from ntkdyn import dynamics, ntk
from ntkdyn.models.config import CheckpointError
from ntkdyn.rl import ConfigError, RLConfig, train

CFG = nd.ModelConfig(family="llama", vocab_size=53, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                     max_positions=32, bos_token_id=1, eos_token_id=2, pad_token_id=0)


# ----------------------------------------------------------------------------------------------- environment
class Env:
    """A tiny model saved to disk, corrupted copies of it made on demand, and a scratch directory."""

    def __init__(self, root):
        self.root = str(root)
        self.lm = nd.LM.init(CFG, seed=0, tokenizer=nd.tasks.CharTokenizer())
        self.good = self.lm.save(os.path.join(self.root, "good"))
        self.scratch = os.path.join(self.root, "scratch")
        os.makedirs(self.scratch)

    def copy(self, name):
        dst = os.path.join(self.root, name)
        if not os.path.exists(dst):
            shutil.copytree(self.good, dst)
        return dst

    def with_config(self, name, edit):
        d = self.copy(name)
        path = os.path.join(d, "config.json")
        cfg = json.load(open(os.path.join(self.good, "config.json")))
        out = edit(cfg)
        with open(path, "w") as f:
            f.write(out if isinstance(out, str) else json.dumps(out if out is not None else cfg))
        return d

    def with_file(self, name, fname, text):
        d = self.copy(name)
        with open(os.path.join(d, fname), "w" if isinstance(text, str) else "wb") as f:
            f.write(text)
        return d

    def sharded(self, name, index_text=None, drop_shard=False):
        d = os.path.join(self.root, name)
        if not os.path.exists(d):
            from ntkdyn.models import hf

            hf.write_model_dir(d, self.lm.config, self.lm.params, self.lm.tokenizer, max_shard_bytes=20_000)
        idx = os.path.join(d, "model.safetensors.index.json")
        assert os.path.exists(idx)
        if index_text is not None:
            with open(idx, "w") as f:
                f.write(index_text)
        if drop_shard:
            shard = sorted(f for f in os.listdir(d) if f.startswith("model-"))[0]
            os.remove(os.path.join(d, shard))
        return d


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return Env(tmp_path_factory.mktemp("bad"))


def snapshot(path):
    """{relative path: sha256} of every file and directory under path (or of the file itself)."""
    if not os.path.exists(path):
        return None
    if os.path.isfile(path):
        return {"": hashlib.sha256(open(path, "rb").read()).hexdigest()}
    out = {}
    for dirpath, dirnames, filenames in os.walk(path):
        rel = os.path.relpath(dirpath, path)
        out[rel + "/"] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.join(rel, f)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


IDS = np.array([[1, 5, 6, 7], [1, 8, 9, 10]], np.int32)


def _ids():
    return IDS.copy()


def _regular_file(env, name="user_file.txt"):
    p = os.path.join(env.scratch, name)
    with open(p, "w") as f:
        f.write("precious user data\n")
    return p


def _one_step(env, **kw):
    ids = np.array([[1, 5, 6, 7, 8], [1, 9, 10, 11, 12]], np.int32)
    mask = np.array([[0, 0, 1, 1, 1], [0, 0, 1, 1, 1]], np.int32)
    args = dict(ids=ids, completion_mask=mask, advantages=np.array([1.0, -1.0]), probe_ids=ids,
                probe_pos=np.array([3, 3]), lr=1e-2)
    args.update(kw)
    return dynamics.one_step(env.lm, args.pop("ids"), args.pop("completion_mask"), args.pop("advantages"),
                             args.pop("probe_ids"), args.pop("probe_pos"), **args)


def _cli(*argv):
    """Run the ntkdyn CLI in a subprocess: (returncode, stderr)."""
    p = subprocess.run([sys.executable, "-m", "ntkdyn.cli", *argv], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, NTKDYN_NO_COMPILE_CACHE="1"))
    return p.returncode, p.stderr


class CliExit(Exception):
    pass


def cli_case(*argv, match):
    """A CLI case: exit code 2, exactly one stderr line `ntkdyn <cmd>: error: ...` matching `match`, no traceback."""

    def run(env):
        argv2 = [a.format(scratch=env.scratch, good=env.good) for a in argv]
        code, err = _cli(*argv2)
        lines = [x for x in err.strip().splitlines() if x.strip()]
        assert "Traceback" not in err, err
        assert code == 2, (code, err)
        assert lines and lines[-1].startswith(f"ntkdyn {argv2[0]}: error:") or "usage:" in err, err
        import re
        assert re.search(match, err), (match, err)
        raise CliExit()

    return run


# ----------------------------------------------------------------------------------------------- the table
V = CFG.vocab_size
CASES = [
    # --- loading: config.json
    ("config-not-object", lambda e: nd.load(e.with_config("c1", lambda c: "[1, 2, 3]")), CheckpointError,
     r"config\.json.*JSON object"),
    ("config-malformed-json", lambda e: nd.load(e.with_config("c2", lambda c: "{not json")), CheckpointError,
     r"config\.json"),
    ("config-str-where-int", lambda e: nd.load(e.with_config("c3", lambda c: {**c, "hidden_size": "32"})),
     CheckpointError, r"hidden_size"),
    ("config-zero-heads", lambda e: nd.load(e.with_config("c4", lambda c: {**c, "num_attention_heads": 0})),
     CheckpointError, r"num_attention_heads"),
    ("config-negative-layers", lambda e: nd.load(e.with_config("c5", lambda c: {**c, "num_hidden_layers": -1})),
     CheckpointError, r"num_hidden_layers"),
    ("config-d-not-divisible", lambda e: nd.load(e.with_config("c6", lambda c: {**c, "num_attention_heads": 5,
                                                                               "num_key_value_heads": 5,
                                                                               "head_dim": None})),
     CheckpointError, r"hidden_size|num_attention_heads"),
    ("config-zero-vocab", lambda e: nd.load(e.with_config("c7", lambda c: {**c, "vocab_size": 0})),
     CheckpointError, r"vocab_size"),
    ("config-unknown-model-type", lambda e: nd.load(e.with_config("c8", lambda c: {**c, "model_type": "mamba"})),
     CheckpointError, r"mamba"),
    ("config-bool-as-int", lambda e: nd.load(e.with_config("c9", lambda c: {**c, "num_hidden_layers": True})),
     CheckpointError, r"num_hidden_layers"),
    ("config-missing", lambda e: (os.remove(os.path.join(e.copy("c10"), "config.json")), nd.load(e.copy("c10"))),
     CheckpointError, r"config\.json"),
    # --- loading: weights
    ("weights-missing", lambda e: (os.remove(os.path.join(e.copy("w1"), "model.safetensors")), nd.load(e.copy("w1"))),
     CheckpointError, r"safetensors"),
    ("weights-truncated", lambda e: nd.load(e.with_file(
        "w2", "model.safetensors", open(os.path.join(e.good, "model.safetensors"), "rb").read()[:1000])),
     CheckpointError, r"model\.safetensors"),
    ("index-corrupt", lambda e: nd.load(e.sharded("s1", index_text="{\"weight_map\": ")), CheckpointError,
     r"model\.safetensors\.index\.json"),
    ("index-no-weight-map", lambda e: nd.load(e.sharded("s2", index_text="{\"metadata\": {}}")), CheckpointError,
     r"model\.safetensors\.index\.json.*weight_map"),
    ("index-missing-shard", lambda e: nd.load(e.sharded("s3", drop_shard=True)), CheckpointError,
     r"model-0000"),
    # --- loading: tokenizer
    ("tokenizer-corrupt", lambda e: nd.load(e.with_file("t1", "tokenizer.json", "{\"version\": ")),
     (CheckpointError, ValueError), r"tokenizer\.json"),
    ("tokenizer-config-corrupt", lambda e: nd.load(e.with_file("t2", "tokenizer_config.json", "[")),
     (CheckpointError, ValueError), r"tokenizer_config\.json"),
    # --- loading: paths
    ("load-missing-path", lambda e: nd.load(os.path.join(e.scratch, "nope")), (CheckpointError, FileNotFoundError,
                                                                               ValueError), r"nope"),
    ("load-regular-file", lambda e: nd.load(_regular_file(e, "weights.txt")), (CheckpointError, ValueError),
     r"weights\.txt"),
    # --- model calls
    ("logits-empty-rows", lambda e: e.lm.logits(np.zeros((0, 4), np.int32)), ValueError, r"ids.*empty"),
    ("logits-empty-time", lambda e: e.lm.logits(np.zeros((2, 0), np.int32)), ValueError, r"ids.*empty"),
    ("features-float-ids", lambda e: e.lm.features(_ids().astype(np.float32)), ValueError, r"integer"),
    ("logits-1d", lambda e: e.lm.logits(np.array([1, 2, 3])), ValueError, r"2-D"),
    ("logits-out-of-vocab", lambda e: e.lm.logits(np.array([[1, V]])), ValueError, rf"\[{V}\].*vocabulary"),
    ("logits-negative-id", lambda e: e.lm.logits(np.array([[1, -3]])), ValueError, r"\[-3\].*vocabulary"),
    ("logits-too-long", lambda e: e.lm.logits(np.ones((1, 33), np.int32)), ValueError, r"max_positions=32"),
    # --- sampling
    ("generate-negative-temperature", lambda e: e.lm.generate(_ids(), 4, temperature=-1.0), ValueError,
     r"temperature"),
    ("generate-nan-temperature", lambda e: e.lm.generate(_ids(), 4, temperature=float("nan")), ValueError,
     r"temperature"),
    ("generate-top-p-zero", lambda e: e.lm.generate(_ids(), 4, top_p=0.0), ValueError, r"top_p"),
    ("generate-top-p-above-one", lambda e: e.lm.generate(_ids(), 4, top_p=1.5), ValueError, r"top_p"),
    ("generate-top-k-zero", lambda e: e.lm.generate(_ids(), 4, top_k=0), ValueError, r"top_k"),
    ("generate-zero-new-tokens", lambda e: e.lm.generate(_ids(), 0), ValueError, r"max_new_tokens"),
    ("generate-empty-prompts", lambda e: e.lm.generate([], 4), ValueError, r"prompt"),
    ("generate-empty-prompt-array", lambda e: e.lm.generate(np.zeros((0, 3), np.int32), 4), ValueError, r"empty"),
    ("generate-past-max-positions", lambda e: e.lm.generate(_ids(), 30), ValueError, r"max_positions"),
    # --- saving
    ("save-onto-regular-file", lambda e: e.lm.save(_regular_file(e, "model_out")), ValueError, r"model_out"),
    ("save-under-regular-file", lambda e: e.lm.save(os.path.join(_regular_file(e, "parent_file"), "m")),
     (ValueError, NotADirectoryError), r"parent_file"),
    # --- kernels
    ("ntk-unknown-output", lambda e: ntk.decompose(e.lm, _ids(), np.array([3, 3]), output="diag"), ValueError,
     r"diag"),
    ("ntk-pos-wrong-count", lambda e: ntk.decompose(e.lm, _ids(), np.array([3]), output="trace"), ValueError,
     r"pos_a"),
    ("ntk-pos-out-of-range", lambda e: ntk.decompose(e.lm, _ids(), np.array([3, 4]), output="trace"), ValueError,
     r"\[4\]"),
    ("ntk-subset-without-tokens", lambda e: ntk.decompose(e.lm, _ids(), np.array([3, 3]), output="subset"),
     ValueError, r"tokens"),
    ("ntk-tokens-out-of-vocab", lambda e: ntk.decompose(e.lm, _ids(), np.array([3, 3]), output="subset",
                                                        tokens=[1, V + 4]), ValueError, rf"{V + 4}"),
    ("ntk-empty-ids", lambda e: ntk.decompose(e.lm, np.zeros((0, 4), np.int32), np.zeros(0, np.int32)),
     ValueError, r"empty"),
    # --- dynamics
    ("one-step-string-lr", lambda e: _one_step(e, lr="0.01"), (TypeError, ValueError), r"lr"),
    ("one-step-nan-advantage", lambda e: _one_step(e, advantages=np.array([np.nan, 1.0])), ValueError,
     r"advantages.*finite|finite.*advantages"),
    ("one-step-inf-advantage", lambda e: _one_step(e, advantages=np.array([np.inf, 1.0])), ValueError,
     r"advantages"),
    ("one-step-advantage-shape", lambda e: _one_step(e, advantages=np.array([1.0, 2.0, 3.0])), ValueError,
     r"advantages"),
    ("one-step-mask-shape", lambda e: _one_step(e, completion_mask=np.ones((2, 3), np.int32)), ValueError,
     r"completion_mask"),
    ("one-step-negative-lr", lambda e: _one_step(e, lr=-1.0), ValueError, r"lr"),
    ("one-step-unknown-optimizer", lambda e: _one_step(e, optimizer="rmsprop"), ValueError, r"rmsprop"),
    # --- RL config and training
    ("rl-negative-lr", lambda e: RLConfig(out=e.scratch, lr=-1.0), ConfigError, r"lr"),
    ("rl-unknown-key", lambda e: RLConfig.from_dict({"out": e.scratch, "learning_rate": 1e-3}), ConfigError,
     r"learning_rate"),
    ("rl-unknown-task", lambda e: RLConfig(out=e.scratch, task="chess"), ConfigError, r"chess"),
    ("rl-string-steps", lambda e: RLConfig(out=e.scratch, steps="10"), ConfigError, r"steps"),
    ("rl-resume-empty-dir", lambda e: train(RLConfig(out=os.path.join(e.scratch, "empty_run"), resume=True,
                                                     model=e.good), progress=False),
     ConfigError, r"empty_run.*(no run|nothing to resume)"),
    ("rl-resume-without-checkpoint", lambda e: train(RLConfig(out=_run_without_checkpoint(e), resume=True,
                                                              model=e.good), progress=False),
     ConfigError, r"checkpoint"),
    ("rl-out-is-file", lambda e: train(RLConfig(out=_regular_file(e, "run_file"), model=e.good), progress=False),
     ConfigError, r"run_file"),
    ("rl-model-missing", lambda e: train(RLConfig(out=os.path.join(e.scratch, "r_missing"),
                                                  model=os.path.join(e.scratch, "no_model")), progress=False),
     (ConfigError, CheckpointError, FileNotFoundError), r"no_model"),
    # --- CLI: one line, exit 2, no traceback
    ("cli-info-missing", cli_case("info", "{scratch}/nothing_here", match=r"nothing_here"), CliExit, ""),
    ("cli-one-step-missing-model", cli_case("one-step", "--model", "{scratch}/no_model", "--out",
                                            "{scratch}/os_out", match=r"no_model"), CliExit, ""),
    ("cli-sft-unknown-task", cli_case("sft", "--task", "chess", "--out", "{scratch}/sft_out", match=r"chess"),
     CliExit, ""),
    ("cli-rl-bad-lr", cli_case("rl", "--lr", "-1", "--out", "{scratch}/rl_out", match=r"lr"), CliExit, ""),
    ("cli-reproduce-missing-model", cli_case("reproduce", "--quick", "--model", "{scratch}/no_model", "--out",
                                             "{scratch}/rep_out", match=r"no_model"), CliExit, ""),
]


def _run_without_checkpoint(env):
    d = os.path.join(env.scratch, "run_no_ckpt")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"step": 0}) + "\n")
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({"config": RLConfig(out=d, model=env.good).to_dict()}, f)
    return d


def test_at_least_forty_cases():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(env, case):
    name, fn, exc, pattern = case
    watched = [env.root]
    before = {w: snapshot(w) for w in watched}
    with pytest.raises(exc) as info:
        fn(env)
    if exc is not CliExit:
        assert info.type not in (AssertionError, KeyError, IndexError, AttributeError), info.value
        import re
        assert re.search(pattern, str(info.value)), f"{name}: message {str(info.value)!r} does not match {pattern!r}"
    after = {w: snapshot(w) for w in watched}
    for w in watched:
        new = {k for k in after[w] if k not in before[w]}
        # the case's own inputs (corrupted copies, the user's file) may be new; nothing the code wrote may be
        stray = [k for k in new if ".tmp" in k or ".old" in k or k.startswith("scratch/") and not _is_input(k)]
        assert not stray, f"{name}: left behind {stray}"
        changed = [k for k in before[w] if k in after[w] and after[w][k] != before[w][k]]
        assert not changed, f"{name}: modified {changed}"


def _is_input(rel):
    """Files the cases create themselves as inputs."""
    base = rel.split("/")[1] if rel.count("/") else rel
    return base.rstrip("/") in {"user_file.txt", "weights.txt", "model_out", "parent_file", "run_file",
                                "run_no_ckpt", "empty_run", ""} or rel.startswith("scratch/run_no_ckpt")
