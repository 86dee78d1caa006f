"""Multi-process training on torch.distributed, the same code on 8 GPUs or 2 CPU processes (gloo).

`gpus=N` (or `nproc=N`, `nodes=M`) makes the CLI re-launch itself through torchrun; each process
then finds RANK / WORLD_SIZE in its environment. Everything else stays single-process code with
four hooks: shard a list of rows, gather arrays back in order, run on the main rank only, and
slice a global batch so that N processes step through exactly the batches one process would.
"""
from __future__ import annotations

import atexit
import os
import sys
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist


_alone = False  # True while the main process runs an `on_main` block: it acts as a single process


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    if _alone:
        return 1
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def wants_launch(cfg) -> int:
    """Processes per node this command asks for, when it has not been launched by torchrun yet."""
    if "WORLD_SIZE" in os.environ:
        return 0
    nproc = cfg.get("nproc") or (cfg.get("gpus") or 0)
    return int(nproc) if int(nproc) > 1 or int(cfg.get("nodes") or 1) > 1 else 0


def launch(module: str, argv: list[str], cfg) -> int:
    """Re-run `python -m module argv` under torchrun with the configured processes and nodes."""
    from torch.distributed.run import main as torchrun

    nproc, nodes = wants_launch(cfg), int(cfg.get("nodes") or 1)
    d = cfg.dist
    args = [f"--nproc_per_node={nproc}", f"--nnodes={nodes}"]
    if nodes == 1:
        args += ["--standalone"]
    else:
        args += [f"--node_rank={d.node_rank}", f"--master_addr={d.master_addr}", f"--master_port={d.master_port}"]
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from common.core.errors import ConfigError

    gpus_here = torch.cuda.device_count() if torch.cuda.is_available() and cfg.get("gpus") != 0 else 0
    if gpus_here and nproc > gpus_here:
        raise ConfigError(f"nproc={nproc} processes need {nproc} GPUs (one each), this machine has {gpus_here}; "
                          "use gpus=0 for CPU processes")
    print(f"launching {nproc} process(es) per node on {nodes} node(s) with torchrun", flush=True)
    try:
        torchrun(args + ["-m", module, *argv])
    except ChildFailedError as exc:  # each process has printed its own error above
        codes = sorted({failure.exitcode for failure in exc.failures.values()})
        print(f"error: {len(exc.failures)} of {nproc * nodes} processes failed (exit code {', '.join(map(str, codes))})",
              file=sys.stderr)
        return 2 if codes == [2] else 1
    return 0


def init(cfg) -> torch.device:
    """Join the process group when launched by torchrun; return this process's device."""
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and cfg["gpus"] != 0
        backend = cfg.dist.backend if cfg.dist.backend != "auto" else ("nccl" if use_cuda else "gloo")
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend=backend)
        # left to the interpreter's exit, gloo's threads can be torn down while running and abort the
        # process ("terminate called without an active exception") after a finished run
        atexit.register(_leave_process_group)
        if not is_main():  # one voice in the log
            sys.stdout = open(os.devnull, "w")
    if torch.cuda.is_available() and cfg["gpus"] != 0:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _leave_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast(obj: Any) -> Any:
    """The main rank's value of `obj`, on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[..., Any], *args, **kwargs) -> Any:
    """`fn(*args, **kwargs)` on the main process alone, its result on every process.

    Why: work after a fold's training (embedding everything once, writing caches and out-of-fold
    files) is cheap next to training and writes files; one process doing it as if it were alone
    (no sharding, no collectives inside) is simpler and race-free. The others wait.
    """
    global _alone
    result = None
    if is_main():
        previous, _alone = _alone, True
        try:
            result = fn(*args, **kwargs)
        finally:
            _alone = previous
    barrier()
    return broadcast(result)


def shard(n: int) -> np.ndarray:
    """This rank's positions among n items (strided, so shards differ in size by at most one)."""
    return np.arange(rank(), n, world_size())


def gather_rows(part: np.ndarray, n: int) -> np.ndarray:
    """Undo `shard`: every rank's rows back in their original order, on every rank."""
    if world_size() == 1:
        return part
    parts: list = [None] * world_size()
    dist.all_gather_object(parts, part)
    width = next(p.shape[1] for p in parts if p is not None and p.ndim == 2 and len(p))
    out = np.zeros((n, width), dtype=parts[0].dtype)
    for r, p in enumerate(parts):
        out[r::world_size()] = p
    return out


class ShardedBatchSampler(torch.utils.data.Sampler):
    """Each rank takes its slice of every global batch, so N processes see what one process would."""

    def __init__(self, batch_sampler, rank_: int, world: int):
        self.batch_sampler, self.rank, self.world = batch_sampler, rank_, world

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batch_sampler:
            yield list(batch)[self.rank::self.world]


def wrap_model(model: torch.nn.Module, device: torch.device, sync_bn: bool = False,
               find_unused: bool = False) -> torch.nn.Module:
    """DistributedDataParallel when there are several processes; the model itself otherwise.

    SyncBatchNorm (`dist.sync_bn=true`) needs CUDA; on CPU each process normalises its own slice.
    timm's converter keeps the activation of its fused BatchNormAct layers (torch's drops it).
    `find_unused`: some parameters take no part in the loss (`unused_parameters`); DDP must then look
    for them every step.
    """
    if world_size() == 1:
        return model
    if sync_bn and device.type == "cuda":
        from timm.layers import convert_sync_batchnorm

        model = convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)


def unused_parameters(model: torch.nn.Module, frozen_epochs: int = 0) -> bool:
    """Whether DDP must look for parameters outside the loss: a frozen-backbone warm-up, or a timm
    backbone with layers `forward_features` never calls (lcnet's and mobilenetv3's conv_head)."""
    return frozen_epochs > 0 or any(".conv_head." in f".{name}" for name, _ in model.named_parameters())


def sum_over_ranks(sums: dict[str, float], count: int) -> tuple[dict[str, float], int]:
    """Epoch loss sums and image counts added over all processes, for an honest log line."""
    if world_size() == 1:
        return sums, count
    keys = sorted(sums)
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([sums[k] for k in keys] + [float(count)], dtype=torch.float64, device=on)  # NCCL: CUDA only
    dist.all_reduce(t)
    t = t.cpu()
    return {k: float(v) for k, v in zip(keys, t[:-1])}, int(t[-1])


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def shard_indices(indices: Sequence[int]) -> np.ndarray:
    return np.asarray(indices)[shard(len(indices))]
