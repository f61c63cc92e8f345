"""Several processes as one JAX program (jax.distributed): the process-level options of the `ntkdyn` command and
their one call, before anything else touches JAX.

    ntkdyn rl --coordinator 10.0.0.1:1234 --num-processes 2 --process-id 0 --mesh data=2,fsdp=8 --out runs/x
    ntkdyn rl --coordinator 10.0.0.1:1234 --num-processes 2 --process-id 1 --mesh data=2,fsdp=8 --out runs/x

Each process then sees every process's devices in jax.devices(); the run's mesh (RLConfig.mesh) spans them all,
process 0 writes the run directory (rl/sharding.is_writer) and every process reads it when resuming (a directory
every host sees: a shared filesystem across hosts). Without the flags the environment may set them: JAX reads
JAX_COORDINATOR_ADDRESS itself (and detects SLURM, Open MPI and TPU pods), and NTKDYN_NUM_PROCESSES /
NTKDYN_PROCESS_ID stand for --num-processes / --process-id.

Failure is bounded: a process that cannot reach the coordinator gives up after --init-timeout seconds, and when a
process dies the coordination service notices within --heartbeat-timeout seconds and ends the others with an error
naming the lost task, instead of leaving them blocked in a collective.
"""
from __future__ import annotations

import os

__all__ = ["add_arguments", "initialize_from_args", "initialize", "shutdown", "describe_failure", "ENV_NUM_PROCESSES",
           "ENV_PROCESS_ID"]

ENV_NUM_PROCESSES, ENV_PROCESS_ID = "NTKDYN_NUM_PROCESSES", "NTKDYN_PROCESS_ID"


def add_arguments(p) -> None:
    """The process-level options (an argparse parser or group)."""
    g = p.add_argument_group("several processes (jax.distributed)")
    g.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="address of process 0's coordination service (default: $JAX_COORDINATOR_ADDRESS); "
                        "turns on the multi-process run")
    g.add_argument("--num-processes", type=int, default=None, metavar="N",
                   help=f"the run's processes (default: ${ENV_NUM_PROCESSES})")
    g.add_argument("--process-id", type=int, default=None, metavar="I",
                   help=f"this process, 0..N-1 (default: ${ENV_PROCESS_ID}); process 0 writes the run directory")
    g.add_argument("--init-timeout", type=int, default=300, metavar="S",
                   help="seconds to wait for every process to join")
    g.add_argument("--heartbeat-timeout", type=int, default=60, metavar="S",
                   help="seconds after which a silent (dead) process ends the run on every other process")


def _env_int(name: str):
    v = os.environ.get(name)
    if v is None or v == "":
        return None
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"${name}={v!r}: expected an integer") from None


def initialize_from_args(args) -> bool:
    """jax.distributed.initialize from the options of `add_arguments` (and their environment variables) when a
    coordinator is given; False (nothing done) for a one-process run."""
    coordinator = getattr(args, "coordinator", None) or os.environ.get("JAX_COORDINATOR_ADDRESS")
    n = getattr(args, "num_processes", None)
    i = getattr(args, "process_id", None)
    n = _env_int(ENV_NUM_PROCESSES) if n is None else n
    i = _env_int(ENV_PROCESS_ID) if i is None else i
    if coordinator is None and n is None and i is None:
        return False
    initialize(coordinator, n, i, init_timeout=getattr(args, "init_timeout", 300),
               heartbeat_timeout=getattr(args, "heartbeat_timeout", 60))
    return True


def initialize(coordinator: str | None, num_processes: int | None, process_id: int | None, *,
               init_timeout: int = 300, heartbeat_timeout: int = 60) -> None:
    """jax.distributed.initialize with the checks a user needs (ValueError naming the option): call it before any
    other JAX call. CPU devices reduce across processes through gloo."""
    import jax

    if not coordinator or ":" not in coordinator:
        raise ValueError(f"--coordinator {coordinator!r}: expected HOST:PORT of process 0 (or "
                         "$JAX_COORDINATOR_ADDRESS)")
    if num_processes is None or num_processes < 1:
        raise ValueError(f"--num-processes {num_processes!r}: expected the number of processes (>= 1; or "
                         f"${ENV_NUM_PROCESSES})")
    if process_id is None or not 0 <= process_id < num_processes:
        raise ValueError(f"--process-id {process_id!r}: expected an integer in 0..{num_processes - 1} (or "
                         f"${ENV_PROCESS_ID})")
    for name, v in (("--init-timeout", init_timeout), ("--heartbeat-timeout", heartbeat_timeout)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} {v!r}: expected a positive number of seconds")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id, initialization_timeout=init_timeout,
                                   heartbeat_timeout_seconds=heartbeat_timeout,
                                   shutdown_timeout_seconds=max(heartbeat_timeout, 10))
    except RuntimeError as e:
        raise RuntimeError(f"jax.distributed.initialize (coordinator {coordinator}, process {process_id} of "
                           f"{num_processes}) failed: {e}") from None


def shutdown() -> None:
    """Leave the run (every process at its end): jax.distributed.shutdown, so that no process waits at exit for a
    peer that has already gone."""
    import jax

    jax.distributed.shutdown()


def describe_failure(e: BaseException) -> str:
    """The one line a process of a multi-process run prints when its run stops on an exception."""
    import jax

    first = (str(e).strip().splitlines() or [""])[0][:300]
    return (f"process {jax.process_index()} of {jax.process_count()}: the run stopped ({type(e).__name__}: {first}); "
            "when another process of the run has died this process follows it within --heartbeat-timeout seconds "
            "(the other processes' logs say why); the run directory keeps its last checkpoint (--resume)")
