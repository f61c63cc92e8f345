"""The FSDP placement rule of parameter-shaped leaves on a mesh — one rule for training (rl/sharding.py), the
kernels (ntk/shared.place_params) and the memory plan (memory.py):

    a leaf of ndim >= 2 (not counting a batched run's leading lane axis, which is never split) is split over the
    mesh's "fsdp" axis of F devices along ONE axis: its largest axis divisible by F (the first of equal ones); a
    leaf with no such axis, every 0-D / 1-D leaf, and every leaf when F = 1 (or the mesh has no "fsdp" axis) is
    replicated.
"""
from __future__ import annotations

__all__ = ["FSDP", "param_axis", "fsdp_size", "param_spec"]

FSDP = "fsdp"  # the mesh axis parameters are split over


def param_axis(shape, fsdp: int, lanes: bool = False) -> int | None:
    """The axis of a leaf of `shape` split over `fsdp` devices by the rule above (None: replicated); `lanes`: axis
    0 is a lane axis."""
    skip = 1 if lanes else 0
    if fsdp <= 1 or len(shape) - skip < 2:
        return None
    best = None
    for ax in range(skip, len(shape)):
        if shape[ax] % fsdp == 0 and (best is None or shape[ax] > shape[best]):
            best = ax
    return best


def fsdp_size(mesh) -> int:
    """F: the size of the mesh's "fsdp" axis (1 without a mesh or without that axis)."""
    return 1 if mesh is None or FSDP not in mesh.axis_names else int(mesh.shape[FSDP])


def param_spec(mesh, shape, lanes: bool = False):
    """The jax.sharding.PartitionSpec of a leaf of `shape` on `mesh` by the rule above."""
    from jax.sharding import PartitionSpec

    ax = param_axis(shape, fsdp_size(mesh), lanes)
    if ax is None:
        return PartitionSpec()
    return PartitionSpec(*[FSDP if i == ax else None for i in range(len(shape))])
