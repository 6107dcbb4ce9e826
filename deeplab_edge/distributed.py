"""One process or many: what ``torchrun`` sets, and the few collective steps training and eval need.

Under ``torchrun`` (PyTorch's launcher: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...)
the process group is PyTorch's own (gloo on CPUs, NCCL on GPUs); multi-node runs use torchrun's
rendezvous options. Without it everything here is a no-op, so the same code runs on one process.
"""

from __future__ import annotations

import datetime as dt
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as tdist

from .errors import DeepLabEdgeError
from .inference import evaluate
from .metrics import ConfusionMatrix

__all__ = ["DistInfo", "launched", "init", "shutdown", "all_reduce_sum", "evaluate_sharded",
           "evaluate_launched", "on_main", "peer_failures"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only this process writes files and prints results."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def launched() -> DistInfo:
    """This process's place in the job as torchrun set it (one process: rank 0 of 1), without joining the group:
    a command asks it to know whether it is the process that shows progress and prints."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def init(device: torch.device, timeout_s: int = 600) -> DistInfo:
    """Join torchrun's process group when launched by it (gloo on CPUs, NCCL on CUDA GPUs)."""
    info = launched()
    if not info.distributed:
        return info
    if not tdist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(info.local_rank)
        tdist.init_process_group(backend, timeout=dt.timedelta(seconds=timeout_s))
    return info


def shutdown() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def all_reduce_sum(x: np.ndarray | torch.Tensor | float, info: DistInfo, device: torch.device | None = None):
    """The sum over all processes (the value itself on one process), same type as given."""
    if not info.distributed:
        return x
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).clone()
    # gloo reduces int64 and float64 exactly; NCCL needs the tensor on the process's GPU
    t = t.to(device) if device is not None and device.type == "cuda" else t
    tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    if isinstance(x, torch.Tensor):
        return t
    out = t.cpu().numpy()
    return out if isinstance(x, np.ndarray) else out.item()


def evaluate_sharded(segmenter, dataset, info: DistInfo, device: torch.device | None = None, **kw):
    """:func:`deeplab_edge.inference.evaluate` with each process taking every world-th image and the
    confusion matrices summed over processes, so the metrics equal one process's; ``per_image`` and
    ``timing`` are this process's shard. On one process, plain ``evaluate``."""
    if not info.distributed:
        return evaluate(segmenter, dataset, **kw)
    shard = dataset.take(_shard(len(dataset), info))  # the caller's dataset keeps all its samples
    n = segmenter.num_classes
    res = evaluate(segmenter, shard, **kw) if len(shard) else {"confusion": np.zeros((n, n), np.int64)}
    cm = all_reduce_sum(np.asarray(res["confusion"], np.int64), info, device)
    res.update(ConfusionMatrix.summarize(cm), confusion=cm.tolist(), images=len(dataset), processes=info.world,
               shard_images=len(shard))
    return res


def evaluate_launched(segmenter, dataset, device: torch.device, on_start: Callable[[int], None] | None = None,
                      **kw) -> dict[str, Any] | None:
    """:func:`evaluate_sharded` as a command runs it, on one process or under torchrun: joins torchrun's group
    when launched by it, tells ``on_start`` how many images this process evaluates (the main process only: it
    alone shows progress), evaluates (``kw`` as ``evaluate``'s, e.g. ``on_image``), and leaves the group. Another
    process's failure is one line (:func:`peer_failures`). The result on the main process, None on the others."""
    info = init(device)
    try:
        with peer_failures(info):
            if on_start is not None and info.is_main:
                on_start(len(_shard(len(dataset), info)))
            res = evaluate_sharded(segmenter, dataset, info, device, **kw)
    finally:
        shutdown()
    return res if info.is_main else None


def _shard(n: int, info: DistInfo) -> range:
    """The indices of the ``n`` images this process takes: every world-th, from its rank."""
    return range(info.rank, n, info.world)


def on_main(fn: Callable[[], object], info: DistInfo) -> None:
    """Run ``fn`` on the main process only (a check of what only it writes); every process learns whether it
    refused, with one all-reduce, so that all stop together instead of the others waiting in a collective."""
    err = None
    if info.is_main:
        try:
            fn()
        except DeepLabEdgeError as e:
            err = e
    if all_reduce_sum(1.0 if err is not None else 0.0, info) and err is None:
        raise DeepLabEdgeError("the main process (rank 0) refused the run (its error says why); this process stopped "
                               "with it")
    if err is not None:
        raise err


@contextmanager
def peer_failures(info: DistInfo) -> Iterator[None]:
    """Under torchrun: when another process fails (its own error line says why), the collective this one waits
    in breaks with gloo's or NCCL's "Connection closed by peer"; that becomes one line here instead of a
    traceback. This process's own errors pass unchanged."""
    try:
        yield
    except DeepLabEdgeError:
        raise
    except RuntimeError as e:
        if not info.distributed or not _is_peer_failure(e):
            raise
        raise DeepLabEdgeError(f"another process of this torchrun job failed (its error line says why); process "
                               f"{info.rank} stopped with it") from e


def _is_peer_failure(e: BaseException) -> bool:
    """A broken collective: torch.distributed's own error types, or the transport's words for a lost peer."""
    kinds = tuple(k for k in (getattr(tdist, "DistError", None),) if k is not None)
    text = str(e).lower()
    return (bool(kinds) and isinstance(e, kinds)) or any(w in text for w in (
        "connection closed by peer", "connection reset by peer", "broken pipe", "socket timeout", "gloo",
        "nccl communicator was aborted"))
