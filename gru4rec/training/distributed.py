"""Data-parallel training on PyTorch's own distributed engine (gloo on CPU, NCCL on CUDA).

Launched by torchrun (`torchrun --nproc_per_node 2 -m gru4rec.cli train ... --distributed`), each
process trains on every world_size-th session (time order is kept within a shard). After every
mini-batch the gradients are averaged across processes before the same update is applied
everywhere, so all replicas hold identical weights:

  dense  (GRU weights)   one all-reduce of all gradients flattened together;
  sparse (item rows)     each process touched different rows: rows and row gradients are
                         all-gathered (padded to the longest), then summed per row by the update.

Shards differ in their number of mini-batches; a process that has run out joins the remaining
steps with empty gradients so that every collective is matched. Rank 0 writes checkpoints.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from gru4rec.data.sessions import Sessions
from gru4rec.foundation.errors import UserError
from gru4rec.training.optim import Gradients, sparse_parameters

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device_type: str) -> DistContext:
    """Join the process group torchrun describes in the environment."""
    missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise UserError(
            f"--distributed needs the environment torchrun sets ({', '.join(missing)} missing): "
            "launch with `torchrun --nproc_per_node N -m gru4rec.cli train ... --distributed`"
        )
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    ctx = DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    log.info("rank %d of %d joined (%s)", ctx.rank, ctx.world_size, dist.get_backend())
    return ctx


def shard_sessions(sessions: Sessions, rank: int, world_size: int) -> Sessions:
    """Every world_size-th session starting at `rank`, still oldest first."""
    chosen = np.arange(rank, sessions.n_sessions, world_size)
    lengths = sessions.lengths[chosen]
    offsets = np.zeros(len(chosen) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    starts = sessions.offsets[chosen]
    index = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
    return Sessions(sessions.items[index], offsets, sessions.session_ids[chosen])


class GradientReducer:
    """Averages a step's gradients over all processes; structure fixed by the model's parameters."""

    def __init__(self, model: torch.nn.Module, world_size: int) -> None:
        self.world_size = world_size
        sparse_ids = {id(p) for p in sparse_parameters(model)}
        params = list(model.parameters())
        self.dense_params = [p for p in params if id(p) not in sparse_ids]
        self.sparse_params = [p for p in params if id(p) in sparse_ids]

    def empty(self) -> Gradients:
        """The contribution of a process with no mini-batch left in this epoch."""
        return Gradients(
            dense=[(p, torch.zeros_like(p)) for p in self.dense_params],
            sparse=[(p, torch.zeros(0, dtype=torch.long, device=p.device), p.new_zeros((0, *p.shape[1:]))) for p in self.sparse_params],
        )

    @torch.no_grad()
    def reduce(self, grads: Gradients) -> Gradients:
        dense = {id(p): g for p, g in grads.dense}
        sparse = {id(p): (rows, values) for p, rows, values in grads.sparse}
        out = Gradients(unique=False)
        if self.dense_params:
            flat = torch.cat([dense.get(id(p), torch.zeros_like(p)).reshape(-1) for p in self.dense_params])
            dist.all_reduce(flat)
            flat.div_(self.world_size)
            out.dense = list(zip(self.dense_params, flat.split([p.numel() for p in self.dense_params])))
            out.dense = [(p, g.view_as(p)) for p, g in out.dense]
        for p in self.sparse_params:
            rows, values = sparse.get(id(p), (torch.zeros(0, dtype=torch.long, device=p.device), p.new_zeros((0, *p.shape[1:]))))
            rows, values = self._gather_rows(rows, values)
            out.sparse.append((p, rows, values.div_(self.world_size)))
        return out

    def _gather_rows(self, rows: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        size = torch.tensor([len(rows)], device=rows.device)
        sizes = [torch.zeros_like(size) for _ in range(self.world_size)]
        dist.all_gather(sizes, size)
        sizes = [int(s.item()) for s in sizes]
        longest = max(sizes)
        pad = longest - len(rows)
        rows = torch.cat([rows, rows.new_zeros(pad)])
        values = torch.cat([values, values.new_zeros((pad, *values.shape[1:]))])
        all_rows = [torch.empty_like(rows) for _ in range(self.world_size)]
        all_values = [torch.empty_like(values) for _ in range(self.world_size)]
        dist.all_gather(all_rows, rows)
        dist.all_gather(all_values, values)
        return (
            torch.cat([r[:n] for r, n in zip(all_rows, sizes)]),
            torch.cat([v[:n] for v, n in zip(all_values, sizes)]),
        )


def all_reduce_sum(value: float | int, device: torch.device) -> float:
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def all_reduce_max(value: int, device: torch.device) -> int:
    t = torch.tensor([value], dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Start every replica from rank 0's weights."""
    for tensor in model.state_dict().values():
        dist.broadcast(tensor, 0)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
