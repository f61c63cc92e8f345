"""ntkdyn.rl.sharding: the placement rule of a parameter leaf and the mesh string (the placements on real devices:
tests/test_rl_trainer.py::test_meshes_equal_one_device_and_resume_exactly, tests/test_distributed.py)."""
from __future__ import annotations

import pytest

from ntkdyn.placement import param_axis
from ntkdyn.rl.sharding import parse_mesh


def test_param_axis_splits_one_axis_of_a_matrix_never_the_lane_axis():
    assert param_axis((64, 192), 4) == 1 and param_axis((192, 64), 4) == 0  # the largest divisible axis
    assert param_axis((52, 64), 4) == 1 and param_axis((52, 63), 4) == 0  # the largest axis not divisible: next
    assert param_axis((63, 65), 4) is None  # no divisible axis: whole on every device
    assert param_axis((64,), 4) is None and param_axis((), 4) is None  # biases, norms, step counts: whole
    assert param_axis((64, 64), 1) is None  # no fsdp axis
    assert param_axis((8, 64), 8) == 1
    assert param_axis((8, 64, 32), 8, lanes=True) == 1  # 8 lanes: the lane axis is never split
    assert param_axis((8, 64), 8, lanes=True) is None  # a 1-D leaf of each lane


def test_parse_mesh():
    assert parse_mesh("data=2,fsdp=4") == {"data": 2, "fsdp": 4}
    assert parse_mesh(" fsdp = 8 ") == {"data": 1, "fsdp": 8}
    assert parse_mesh("data=3") == {"data": 3, "fsdp": 1}
    for bad in ("data=2,model=2", "data=-1", "data=1.5", "data", "data=2,data=1", None):
        with pytest.raises(ValueError, match="mesh="):
            parse_mesh(bad)
