"""ntkdyn.rl.cli: `ntkdyn rl` runs, resumes a finished run, and reports bad flags with exit status 2."""
from __future__ import annotations

from rl_helpers import base_dir  # noqa: F401 (fixture)

from ntkdyn.rl import read_metrics


def test_cli(base_dir, tmp_path, capsys):
    from ntkdyn.cli import main

    out = str(tmp_path / "cli")
    flags = ["--model", base_dir, "--task", "sum", "--group-size", "4", "--prompts-per-step", "4",
             "--max-new-tokens", "8", "--eval-prompts", "4", "--eval-samples", "4", "--probe-prompts", "4",
             "--lr", "3e-3", "--num-iterations", "2", "--beta", "0.01", "--no-progress"]
    assert main(["rl", "--recipe", "cf-rl", "--steps", "1", "--head-steps", "1", "--out", out] + flags) == 0
    assert "final model" in capsys.readouterr().out
    assert [r["step"] for r in read_metrics(out)] == [0, 1, 2]
    assert main(["rl", "--out", out, "--resume", "--no-progress"]) == 0  # a finished run: nothing to do
    assert main(["rl", "--out", str(tmp_path / "bad"), "--lr", "-2", "--model", base_dir]) == 2
    assert "lr=-2" in capsys.readouterr().err
