"""Placement of a run's arrays on a jax.sharding.Mesh: the batch axis over the mesh's "data" axis (or its first
axis), everything else (params, optimizer state, keys) replicated; a batched run's arrays carry a lane axis first
(rl/lanes.py), which stays whole on every device. Without a mesh, plain device arrays."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Sharding"]


class Sharding:
    """batch(x): x with its batch axis (the leading one, or the second after a lane axis) split over the data axis;
    replicate(tree): the tree on every device."""

    def __init__(self, mesh=None):
        self.mesh = mesh
        self.axis, self.size = None, 1
        if mesh is not None:
            from jax.sharding import NamedSharding, PartitionSpec as P

            self.axis = "data" if "data" in mesh.axis_names else mesh.axis_names[0]
            self.size = int(mesh.shape[self.axis])
            self._batch = NamedSharding(mesh, P(self.axis))
            self._lanes_batch = NamedSharding(mesh, P(None, self.axis))
            self._repl = NamedSharding(mesh, P())

    def batch(self, x, lanes: bool = False):
        if self.mesh is None:
            return jnp.asarray(x)
        return jax.device_put(np.asarray(x), self._lanes_batch if lanes else self._batch)

    def replicate(self, tree):
        return tree if self.mesh is None else jax.device_put(tree, self._repl)
