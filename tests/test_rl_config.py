"""ntkdyn.rl.config: bad values and keys are rejected before any work, naming the key and what is expected."""
from __future__ import annotations

import json

import pytest

from ntkdyn.rl import ConfigError, RLConfig, train


def test_bad_config_rejected_before_work(tmp_path):
    with pytest.raises(ConfigError, match=r"lr=-1.*finite number > 0"):
        RLConfig(out="x", lr=-1)
    with pytest.raises(ConfigError, match=r"advantage='ppo'.*grpo"):
        RLConfig(out="x", advantage="ppo")
    with pytest.raises(ConfigError, match=r"group_size=1"):
        RLConfig(out="x", group_size=1)
    with pytest.raises(ConfigError, match=r"task='nope'"):
        RLConfig(out="x", task="nope")
    with pytest.raises(ConfigError, match=r"steps=2.5"):
        RLConfig(out="x", steps=2.5)
    with pytest.raises(ConfigError, match=r"out=None"):
        RLConfig()
    with pytest.raises(ConfigError, match=r"unknown key.*learning_rate"):
        RLConfig.from_dict({"out": "x", "learning_rate": 1e-3})
    with pytest.raises(ConfigError, match="head_steps.*head_epochs"):
        RLConfig(out="x", recipe="cf-rl", head_steps=2, head_epochs=1.0)
    out = tmp_path / "never"
    with pytest.raises(ConfigError, match=r"missing': not a directory, a .gguf file or a known model name"):
        train(RLConfig(model=str(tmp_path / "missing"), out=str(out)), progress=False)
    assert not out.exists()  # nothing was written
    p = tmp_path / "cfg.json"
    p.write_text(json.dumps({"out": "x", "stepz": 3}))
    with pytest.raises(ConfigError, match=r"cfg.json: unknown key.*stepz"):
        RLConfig.from_json(str(p))


def test_chat_template_and_score_truncated_keys():
    import argparse

    from ntkdyn.rl.cli import add_arguments, config_from_args

    assert RLConfig(out="x").chat_template is None and RLConfig(out="x").score_truncated is False
    with pytest.raises(ConfigError, match=r"chat_template='on'.*None \(auto"):
        RLConfig(out="x", chat_template="on")
    with pytest.raises(ConfigError, match=r"score_truncated=1.*True or False"):
        RLConfig(out="x", score_truncated=1)
    p = argparse.ArgumentParser()
    add_arguments(p)
    for flag, want in (("auto", None), ("on", True), ("off", False)):
        c = config_from_args(p.parse_args(["--out", "x", "--chat-template", flag, "--score-truncated"]))
        assert c.chat_template is want and c.score_truncated is True
    assert config_from_args(p.parse_args(["--out", "x"])).score_truncated is False


def test_chat_template_on_without_a_template_is_a_config_error(tmp_path):
    out = tmp_path / "never"
    with pytest.raises(ConfigError, match=r"chat_template=True.*has none"):
        train(RLConfig(out=str(out), chat_template=True), progress=False)
    assert not out.exists()


def test_bad_mesh_rejected_before_work(tmp_path):
    """RLConfig.mesh / --mesh: the names, the sizes, their product against the devices, mesh= beside it."""
    import argparse

    import jax
    from jax.sharding import Mesh

    from ntkdyn.rl.cli import add_arguments, config_from_args

    for bad, why in (("data=0", r"size of axis 'data' is '0'; expected a positive integer"),
                     ("gpu=2", r"'gpu=2' is not NAME=SIZE with NAME one of \['data', 'fsdp'\]"),
                     ("data=2,data=2", "axis 'data' given twice"), ("fsdp=x", "'x'; expected a positive"),
                     ("", "expected a mesh string")):
        with pytest.raises(ConfigError, match=r"RLConfig.mesh=.*" + why):
            RLConfig(out="x", mesh=bad)
    p = argparse.ArgumentParser()
    add_arguments(p)
    assert config_from_args(p.parse_args(["--out", "x", "--mesh", "data=2,fsdp=4"])).mesh == "data=2,fsdp=4"
    out = tmp_path / "never"
    n = len(jax.devices())
    with pytest.raises(ConfigError, match=rf"data=1 x fsdp={n + 1} = {n + 1} devices, but there are {n}"):
        train(RLConfig(out=str(out), mesh=f"fsdp={n + 1}"), progress=False)
    with pytest.raises(ConfigError, match=r"mesh= and RLConfig.mesh='data=1' both given"):
        train(RLConfig(out=str(out), mesh="data=1"), mesh=Mesh(jax.devices()[:1], ("data",)), progress=False)
    assert not out.exists()
