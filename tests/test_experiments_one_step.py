"""Tests for ntkdyn.experiments.one_step (the `ntkdyn one-step` command). The experiment itself samples and compiles
a real model, too slow for the unit tests: the reproduction and the baseline comparison run it."""
from __future__ import annotations

import argparse

from ntkdyn.experiments import one_step


def test_one_step_experiment_cli_arguments():
    """`ntkdyn one-step` wiring: the experiment exposes add_arguments / run_cli / run (run itself is exercised by
    the reproduction; it samples and compiles a real model, too slow for this module)."""
    p = argparse.ArgumentParser()
    one_step.add_arguments(p)
    from ntkdyn.options import given

    a = one_step.OneStepConfig(**given(p.parse_args(["--model", "m", "--lr", "0.02", "--group", "4", "--reward",
                                                     "r.py:f", "--reward", "add"]), one_step.OneStepConfig))
    assert (a.model, a.lr, a.group, a.task, a.x64, a.rewards) == ("m", 0.02, 4, "sum", None, ["r.py:f", "add"])
    b = given(p.parse_args(["--precision", "float32", "--no-plots", "--prompts", "2"]), one_step.OneStepConfig)
    assert b == {"x64": False, "plots": False, "n_prompts": 2}
    assert callable(one_step.run_cli) and callable(one_step.run) and callable(one_step.main)


def test_relative_error_of_no_change_is_nan_without_warning():
    import warnings

    import numpy as np

    from ntkdyn.experiments.one_step import _relative

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(_relative(np.ones(3), np.zeros(3)))
    assert _relative(np.array([3.0, 4.0]), np.array([0.0, 8.0])) == 5.0 / 8.0


def test_equal_rewards_everywhere_are_refused_before_anything_is_written(tmp_path):
    """A zero GRPO step (every group's rewards equal) has nothing to predict: a clear error, no output directory
    (before, it reported a 0.00 % prediction error of a zero update)."""
    import pytest

    import ntkdyn as nd
    from ntkdyn.default import default_model_dir

    lm = nd.load(default_model_dir(progress=False))
    out = tmp_path / "one_step"
    (tmp_path / "my_rewards.py").write_text("def const(completions, **kw):\n    return [1.0] * len(completions)\n")
    with pytest.raises(ValueError, match=r"groups of 2 samples got equal rewards.*--score-truncated"):
        one_step.run(lm, "sum", str(out), rewards=[f"{tmp_path}/my_rewards.py:const"], n_prompts=1, group=2,
                     probe_prompts=1, max_new_tokens=4, plots=False)
    assert not out.exists()
