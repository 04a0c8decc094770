"""More than one process (`accelerate launch`, `torchrun`): which process this is, and the few collective steps
the pipeline needs.

The trainers (trl / transformers) are data-parallel on their own through accelerate once the launcher's
environment is set. What no library does for this pipeline is here: generation split across the ranks and
gathered back in order, one agreement check, and a barrier. Everything reads the launcher's environment
(torchrun and accelerate set RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE), so one process is the
default with no set-up at all.
"""

from __future__ import annotations

import datetime
import os
from typing import Sequence, TypeVar

import torch

from .errors import InputError

T = TypeVar("T")
# a rank waits at a barrier while the main process exports and benchmarks alone (export/bench/report):
# gloo's default 30 minutes is shorter than a real model's export
BARRIER_TIMEOUT = datetime.timedelta(hours=12)
_OBJECT_GROUP = None


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_world_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size())))


def is_main() -> bool:
    return rank() == 0


def cpu_launch_left_to_mpi() -> list[str] | None:
    """The command that starts what `accelerate launch --cpu --num_processes N` asked for, when accelerate did not.

    accelerate 1.15 sets MASTER_ADDR for N CPU processes but starts one unless mpirun starts them
    (`--mpirun_hostfile`; `utils/launch.py` prepare_simple_launcher_cmd_env), so the run would go on alone while
    looking parallel. Here that one process hands itself to torchrun's launcher (the one `--multi_gpu` uses, gloo
    on a CPU) with N read from accelerate's command line, its parent. None when there is nothing to do; an
    InputError when N cannot be read or the launch spans machines."""
    env = os.environ
    mpi = any(k in env for k in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"))
    if env.get("ACCELERATE_USE_CPU", "").lower() != "true" or "MASTER_ADDR" not in env or "WORLD_SIZE" in env or mpi:
        return None
    launch = _accelerate_arguments()
    processes, machines = launch.get("num_processes"), launch.get("num_machines", "1")
    if not (processes or "").isdigit() or machines != "1":
        raise InputError("accelerate launch", "--cpu --num_processes",
                         "accelerate starts one process for --cpu unless MPI runs them (--mpirun_hostfile); start "
                         "the processes with torchrun's launcher instead: `accelerate launch --multi_gpu "
                         "--num_processes N -m edge_tailor.cli run ...` (gloo on a CPU) or `torchrun "
                         "--nproc_per_node N -m edge_tailor.cli run ...`")
    import sys

    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", processes, "--master_addr",
            env["MASTER_ADDR"], "--master_port", env.get("MASTER_PORT", "29500"), "-m", "edge_tailor.cli",
            *sys.argv[1:]]


def _accelerate_arguments() -> dict[str, str]:
    """`--key value` / `--key=value` options of the parent process's command line (`accelerate launch`)."""
    try:
        import psutil

        words = psutil.Process(os.getppid()).cmdline()
    except Exception:  # no parent to read (a container's init, a permission): nothing known
        return {}
    found = {}
    for i, word in enumerate(words):
        if word == "-m" or word.endswith(".py"):  # the script and its own arguments follow
            break
        if word.startswith("--"):
            key, _, value = word[2:].partition("=")
            found[key.replace("-", "_")] = value or (words[i + 1] if i + 1 < len(words) else "")
    return found


def check_launcher() -> None:
    """Read MPI's rank variables where MPI started the processes (accelerate's `--mpirun_hostfile`)."""
    env = os.environ
    mpi = any(k in env for k in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"))
    if mpi and "WORLD_SIZE" not in env:  # accelerate's own MPI mapping, so rank() and world_size() read one place
        env["WORLD_SIZE"] = env.get("OMPI_COMM_WORLD_SIZE") or env.get("PMI_SIZE") or env["MV2_COMM_WORLD_SIZE"]
        env["RANK"] = env.get("OMPI_COMM_WORLD_RANK") or env.get("PMI_RANK") or env.get("MV2_COMM_WORLD_RANK", "0")
        env["LOCAL_RANK"] = env.get("OMPI_COMM_WORLD_LOCAL_RANK") or env.get("MPI_LOCALRANKID", "0")


def init() -> None:
    """Join the launcher's process group (gloo on CPU, NCCL on CUDA); the trainers' accelerate state reuses it.
    A no-op in one process."""
    global _OBJECT_GROUP
    import torch.distributed as dist

    if world_size() == 1 or dist.is_initialized():
        return
    cuda = torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "").lower() != "true"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=BARRIER_TIMEOUT)
    # Python objects (generated text, fingerprints) travel over gloo even beside NCCL: no tensor copies to a GPU
    _OBJECT_GROUP = dist.new_group(backend="gloo", timeout=BARRIER_TIMEOUT) if cuda else None


def _active() -> bool:
    import torch.distributed as dist

    return world_size() > 1 and dist.is_initialized()


def mine(items: Sequence[T]) -> list[tuple[int, T]]:
    """This rank's share of ``items`` (every world_size-th, from its rank), with their indices."""
    if not _active():
        return list(enumerate(items))
    return [(i, item) for i, item in enumerate(items) if i % world_size() == rank()]


def gather_in_order(done: list[tuple[int, T]], total: int) -> list[T]:
    """Every rank's ``mine`` results, back in index order, on every rank."""
    if not _active():
        return [item for _, item in sorted(done, key=lambda pair: pair[0])]
    import torch.distributed as dist

    parts: list = [None] * world_size()
    dist.all_gather_object(parts, done, group=_OBJECT_GROUP)
    merged = dict(pair for part in parts for pair in part)
    assert sorted(merged) == list(range(total)), "a rank's share went missing"
    return [merged[i] for i in range(total)]


def agree(value, what: str) -> None:
    """Every rank holds the same ``value``, or a clear error on all of them (a config or a file that differs
    between nodes would otherwise train different things under one run)."""
    if not _active():
        return
    import torch.distributed as dist

    values: list = [None] * world_size()
    dist.all_gather_object(values, value, group=_OBJECT_GROUP)
    differing = [r for r, v in enumerate(values) if v != values[0]]
    if differing:
        raise InputError("distributed run", what, f"rank(s) {differing} differ from rank 0: every process must see "
                         "the same config, models and run directory (a shared folder on every node)")


def barrier() -> None:
    if _active():
        import torch.distributed as dist

        dist.barrier(group=_OBJECT_GROUP)


def shutdown() -> None:
    """Leave the process group; gloo's threads must be joined before exit or a rank can abort at teardown."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def per_device_batch(batch_size: int, field: str) -> int:
    """The per-process batch that keeps the global batch at ``batch_size`` (what one process trains with)."""
    n = world_size()
    if batch_size % n:
        raise InputError("config", field, f"{batch_size} does not split over {n} processes: the global batch must "
                         f"be a multiple of the process count, so that {n} processes train what one does")
    return batch_size // n
