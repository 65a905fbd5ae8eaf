"""Data-parallel training: N processes (one per GPU, or per CPU core), one model, one output.

`num_processes: N` starts N copies of `training.run` through `accelerate launch` (which starts them
with torch.distributed's launcher; accelerate's PartialState joins the process group: NCCL on GPUs,
gloo on CPU). `train_batch_size` is per process, so the global batch is train_batch_size × N:

- every process computes the same epoch order (training.data.epoch_batches with the global batch
  size, so a global batch never mixes buckets) and takes its shard: positions rank·B … rank·B+B-1;
  the last batch of a bucket may be short, so a shard may be short or empty;
- every sample's randomness (latent sample, noise, noise offset, timestep, caption shuffle and
  dropout, its prior-preservation partner's draws) comes from a generator seeded by (seed, step,
  micro-batch, its position in the global batch), so it is the same whatever N;
- each process scales its shard's mean loss by shard size / global batch size, and the gradients
  are summed over processes (one all-reduce per optimizer step): the sum is the gradient of the
  global batch's mean loss, also when shards are uneven — which is why this sums the gradients
  itself instead of wrapping the model in DistributedDataParallel (which averages over processes
  and needs every process to run a forward pass);
- rank 0 alone writes checkpoints, samples, logs and exports; every rank restores the same checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import socket
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

BUCKET_BYTES = 64 << 20  # gradients are summed in flat chunks of at most this size


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes."""

    rank: int
    count: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.count > 1


def device_limit() -> tuple[int, str]:
    """How many training processes this machine can hold: CUDA devices, or CPU cores when there is no GPU."""
    if torch.cuda.is_available():
        return torch.cuda.device_count(), "CUDA devices"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores, "CPU cores and no CUDA device (on CPU, one process per core at most)"


def check_num_processes(num_processes: int, source: str = "config") -> None:
    """Fail at once, naming the field, when num_processes is more than this machine has devices for."""
    if num_processes <= 1:
        return
    have, what = device_limit()
    if num_processes > have:
        from store.config_files import ConfigError

        raise ConfigError(f"{source}: num_processes: {num_processes} is more than this machine has — {have} {what}")


def start(num_processes: int) -> Processes:
    """Join the process group the launcher set up (or run alone); the count must be what the config asks."""
    started = int(os.environ.get("WORLD_SIZE", "1"))
    if started != num_processes:
        raise ValueError(
            f"num_processes: {num_processes}, but {started} training process{'es were' if started > 1 else ' was'} "
            f"started — train through `atelier train` (which launches them), or "
            f"`accelerate launch --multi_gpu --num_processes {num_processes} -m training.run JOB.json`")
    if num_processes == 1:
        return Processes(0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    check_num_processes(num_processes)
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # cpu=True: gloo across CPU processes
    return Processes(state.process_index, state.num_processes, torch.device(state.device))


def leave_process_group() -> None:
    """After a successful run: wait for every rank (rank 0 exports last), then leave the group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def barrier(processes: Processes) -> None:
    if processes.distributed:
        torch.distributed.barrier()


@contextlib.contextmanager
def main_first(processes: Processes) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. generates class images), then the others (which then find them)."""
    if not processes.is_main:
        barrier(processes)
    yield
    if processes.is_main:
        barrier(processes)


def shard(global_batch: Sequence[int], batch_size: int, processes: Processes) -> range:
    """Positions in the global batch that this process trains on (rank·B … rank·B+B-1, clipped)."""
    start_at = processes.rank * batch_size
    return range(min(start_at, len(global_batch)), min(start_at + batch_size, len(global_batch)))


def sample_seed(seed: int, step: int, micro: int, position: int, stream: str) -> int:
    """A seed for one sample of one micro-batch: the same whatever the number of processes."""
    return int(hashlib.sha256(f"{seed}:{step}:{micro}:{position}:{stream}".encode()).hexdigest()[:15], 16)


def sample_generators(seed: int, step: int, micro: int, positions: Sequence[int], stream: str) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(sample_seed(seed, step, micro, p, stream)) for p in positions]


def sample_rngs(seed: int, step: int, micro: int, positions: Sequence[int], stream: str) -> list[random.Random]:
    return [random.Random(sample_seed(seed, step, micro, p, stream)) for p in positions]


def broadcast_parameters(parameters: Sequence[torch.Tensor], processes: Processes) -> None:
    """Every rank starts from rank 0's trainable weights (they are seeded alike; this makes sure)."""
    if processes.distributed:
        for p in parameters:
            torch.distributed.broadcast(p.data, src=0)


def sum_gradients(parameters: Sequence[torch.Tensor], processes: Processes) -> None:
    """Sum every trainable parameter's gradient over the processes (a missing gradient counts as zero)."""
    if not processes.distributed:
        return
    for p in parameters:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    for chunk in _chunks([p.grad for p in parameters]):
        flat = torch.cat([g.reshape(-1) for g in chunk])
        torch.distributed.all_reduce(flat)
        for grad, part in zip(chunk, flat.split([g.numel() for g in chunk])):
            grad.copy_(part.view_as(grad))


def _chunks(tensors: Sequence[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """Runs of tensors of one dtype and device, at most BUCKET_BYTES each (a bigger tensor goes alone)."""
    chunk: list[torch.Tensor] = []
    size = 0
    for tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if chunk and (size + nbytes > BUCKET_BYTES or (tensor.dtype, tensor.device) != (chunk[0].dtype, chunk[0].device)):
            yield chunk
            chunk, size = [], 0
        chunk.append(tensor)
        size += nbytes
    if chunk:
        yield chunk


def sum_value(value: float, processes: Processes) -> float:
    """A float summed over the processes (the step's loss, each rank holding its shard's share)."""
    if not processes.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=processes.device)
    torch.distributed.all_reduce(tensor)
    return float(tensor.item())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(num_processes: int) -> list[str]:
    """`accelerate launch` of N `training.run` processes on this machine (append the job file).

    `--multi_gpu` makes accelerate start them through torch.distributed's launcher on CPU too (its
    `--cpu` path would need MPI); each process then joins with gloo when there is no GPU. A free
    port each time, so that two runs on one machine do not meet on accelerate's default 29500.
    """
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), "-m", "training.run"]
