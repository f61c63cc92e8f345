"""Placement of a run's arrays on a jax.sharding.Mesh — the one place of the placement rules — and the mesh string.

    mesh = make_mesh("data=2,fsdp=2")      # over jax.devices() (every process's devices in a multi-process run)
    sh = Sharding(mesh)
    params = sh.place(params)              # params / optimizer state: FSDP placement (below)
    ids = sh.batch(ids)                    # a host batch split along its batch axis
    host = sh.gather(tree)                 # numpy on the host, whatever the placement (and the process)

The rules (a mesh has the axes "data" and/or "fsdp"; a mesh given from Python with other names uses its first axis
as the data axis and has no FSDP):
- parameters and optimizer state: ntkdyn.placement's rule (shared with the kernels and the memory plan): a leaf of
  ndim >= 2 (not counting a batched run's lane axis, rl/lanes.py, which is never split) is split over "fsdp" along
  ONE axis: its largest axis divisible by F = mesh.shape["fsdp"] (the first of equal ones); a leaf with no such
  axis, and every 0-D / 1-D leaf (biases, norms, step counts), is replicated. So each device holds ≈ 1/F of the parameters and of the optimizer state; a jitted step all-gathers
  a weight where it is used (XLA's SPMD partitioner inserts the collectives) and its gradient is reduce-scattered
  back to the leaf's placement.
- the batch (rollouts, prompts, reference sequences): its batch axis (the leading one, or the second after a lane
  axis) split over ("data", "fsdp") together, i.e. over all D·F devices. This is standard FSDP (ZeRO-3): the FSDP
  devices are data-parallel workers too, each computing on its own slice of the batch with gathered weights;
  splitting the batch over "data" alone would make the F devices of an FSDP group compute the same rows F times.
  The batch must therefore be divisible by D·F (`size`; context._shapes checks it before any work).
- everything else (PRNG keys, probe arrays, the starting model's features) replicated.
Without a mesh, plain device arrays.

In a run of several processes (jax.distributed) the mesh spans every process's devices and its arrays are not fully
addressable: every process holds the same host data (the same seeds, the same prompts), so `batch`, `place` and
`replicate` build the global array from each process's own slices (jax.make_array_from_callback), and `gather`
brings a global array back to every process's host (multihost_utils.process_allgather).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..placement import param_spec

__all__ = ["Sharding", "parse_mesh", "make_mesh", "MESH_AXES", "to_host", "is_writer", "sync",
           "device_bytes"]

MESH_AXES = ("data", "fsdp")  # the axis names a mesh string may use, in mesh order


def parse_mesh(spec: str, what: str = "mesh") -> dict:
    """{"data": D, "fsdp": F} of a mesh string "data=D,fsdp=F" (either part may be left out: it is 1). ValueError
    naming `what` on anything else: an unknown or repeated name, a size that is not a positive integer."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"{what}={spec!r}: expected a mesh string such as 'data=2,fsdp=2' (axes {list(MESH_AXES)})")
    sizes = {}
    for part in spec.split(","):
        name, eq, value = part.strip().partition("=")
        name = name.strip()
        if not eq or name not in MESH_AXES:
            raise ValueError(f"{what}={spec!r}: {part.strip()!r} is not NAME=SIZE with NAME one of "
                             f"{list(MESH_AXES)}; expected e.g. 'data=2,fsdp=2'")
        if name in sizes:
            raise ValueError(f"{what}={spec!r}: axis {name!r} given twice")
        try:
            n = int(value.strip())
        except ValueError:
            n = 0
        if n < 1 or value.strip() != str(n):
            raise ValueError(f"{what}={spec!r}: the size of axis {name!r} is {value.strip()!r}; expected a "
                             "positive integer")
        sizes[name] = n
    return {a: sizes.get(a, 1) for a in MESH_AXES}


def make_mesh(spec: str, devices=None, what: str = "mesh"):
    """The jax.sharding.Mesh of a mesh string over `devices` (default jax.devices(): every process's devices),
    with the axes ("data", "fsdp"). ValueError when D·F is not the number of devices."""
    from jax.sharding import Mesh

    sizes = parse_mesh(spec, what)
    devices = list(jax.devices() if devices is None else devices)
    n = int(np.prod(list(sizes.values())))
    if n != len(devices):
        raise ValueError(f"{what}={spec!r}: {' x '.join(f'{a}={s}' for a, s in sizes.items())} = {n} devices, but "
                         f"there are {len(devices)} ({jax.process_count()} process(es), {devices[0].platform}); "
                         f"expected sizes whose product is {len(devices)}")
    return Mesh(np.array(devices, dtype=object).reshape(tuple(sizes.values())), MESH_AXES)


class Sharding:
    """The placements of a run on `mesh` (None: one device); see the module docstring. `size`: the devices the
    batch is split over (D·F); `fsdp`: F."""

    def __init__(self, mesh=None):
        self.mesh = mesh
        self.axis, self.size, self.fsdp = None, 1, 1
        if mesh is not None:
            from jax.sharding import NamedSharding, PartitionSpec as P

            names = tuple(mesh.axis_names)
            batch_axes = tuple(a for a in MESH_AXES if a in names) or names[:1]
            self.axis = batch_axes if len(batch_axes) > 1 else batch_axes[0]  # the PartitionSpec entry
            self.size = int(np.prod([mesh.shape[a] for a in batch_axes]))
            self.fsdp = int(mesh.shape["fsdp"]) if "fsdp" in names else 1
            self._P, self._NS = P, NamedSharding
            self._repl = NamedSharding(mesh, P())

    @property
    def devices(self) -> int:
        return 1 if self.mesh is None else int(self.mesh.size)

    # ------------------------------------------------------------------ placements
    def _put(self, x, sharding):
        """x (host or device) as a global array of `sharding`: device_put when this process addresses every device
        (a no-op when x is already there), else from this process's slices of the same host data."""
        if sharding.is_fully_addressable:
            return jax.device_put(x, sharding)
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.jit(lambda a: a, out_shardings=sharding)(x)  # re-placed on the devices
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):  # a typed PRNG key
            return jax.random.wrap_key_data(self._put(jax.random.key_data(x), sharding), impl=jax.random.key_impl(x))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    def param_sharding(self, shape, lanes: bool = False):
        """The NamedSharding of a parameter / optimizer-state leaf of `shape` (ntkdyn.placement's rule)."""
        return self._NS(self.mesh, param_spec(self.mesh, shape, lanes)) if self.fsdp > 1 else self._repl

    def place(self, tree, lanes: bool = False):
        """Parameters or optimizer state on the mesh by the FSDP rule (with a leading lane axis when `lanes`)."""
        if self.mesh is None:
            return tree
        return jax.tree.map(lambda x: self._put(x, self.param_sharding(np.shape(x), lanes)), tree)

    def pinned(self, update, params, opt_state, n_out: int, lanes: bool = False, donate: tuple = (1,)):
        """A jitted update fn(params, opt_state, ...) -> (params, opt_state, *n_out-2 more) whose returned params
        and optimizer state keep the placement of `place` (XLA would otherwise choose its own for some leaves, e.g.
        split a bias it could have kept whole, and the next step would move them back); the arguments at positions
        `donate` are donated (default: the optimizer state). `update` itself without a mesh."""
        if self.mesh is None:
            return update
        ps = jax.tree.map(lambda x: self.param_sharding(np.shape(x), lanes), params)
        os_ = jax.tree.map(lambda x: self.param_sharding(np.shape(x), lanes), opt_state)
        return jax.jit(update, out_shardings=(ps, os_) + (None,) * (n_out - 2), donate_argnums=donate)

    def batch(self, x, lanes: bool = False, micro: bool = False):
        """x with its batch axis split over the batch axes: the leading one, or the one after a lane axis
        (`lanes`) and/or a micro-batch axis (`micro`: a packing plan per micro-batch, rl/rollout._packing)."""
        if self.mesh is None:
            return jnp.asarray(x)
        spec = self._P(*(None,) * (int(lanes) + int(micro)), self.axis)
        return self._put(np.asarray(x), self._NS(self.mesh, spec))

    def replicate(self, tree):
        """The tree on every device."""
        return tree if self.mesh is None else jax.tree.map(lambda x: self._put(x, self._repl), tree)

    def gather(self, tree):
        """The tree as numpy arrays on this process's host (to_host)."""
        return to_host(tree)


def to_host(tree):
    """jax.device_get of a tree whose arrays may span several processes: such an array (not fully addressable) is
    gathered from every process (multihost_utils.process_allgather, a collective: every process must call it)."""
    if all(getattr(x, "is_fully_addressable", True) for x in jax.tree.leaves(tree)):
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True))
                        if isinstance(x, jax.Array) and not x.is_fully_addressable else jax.device_get(x), tree)


def is_writer() -> bool:
    """Whether this process writes files (the run directory, checkpoints): process 0 of a multi-process run, or the
    only process."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Every process waits here for the others (a no-op in a one-process run): before a process reads what process
    0 writes."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def device_bytes(tree) -> int:
    """The bytes of `tree`'s arrays held by the fullest of this process's devices (a replicated array counts whole
    on every device, an FSDP-split one by its shard)."""
    per: dict = {}
    for x in jax.tree.leaves(tree):
        if isinstance(x, jax.Array):
            for s in x.addressable_shards:
                per[s.device] = per.get(s.device, 0) + s.data.nbytes
    return max(per.values(), default=0)
