"""Drives the fixed-shape step through epochs with nothing but the step itself on the host's side.

The epoch schedule, the item sequence and a block of the sampler's negatives live on the device; two
step counters on the device say which schedule row and which negative row the next step reads, and
the step advances them itself. The host only launches steps (and refills the negative block every
BLOCK steps), so on CUDA the whole step, counters included, is captured once as a CUDA graph and each
mini-batch is one graph launch. Capture needs warm-up steps first (the caller runs them, checked, as
ordinary steps on a side stream) and may fail on a PyTorch version or driver that cannot capture
some op; the caller then falls back to the eager step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gru4rec.model.network import Hidden
from gru4rec.training.eager import Batch
from gru4rec.training.fixed_step import FixedStep
from gru4rec.training.sampling import NegativeSampler
from gru4rec.training.schedule import EpochSchedule

BLOCK = 1024  # steps of negatives moved into the device block at a time (8 B x n_sample each)


class FixedEpoch:
    def __init__(self, step: FixedStep, schedule: EpochSchedule, items: Tensor, sampler: NegativeSampler) -> None:
        device = items.device
        self.step, self.items, self.sampler = step, items, sampler
        self.schedule = schedule.to(device)
        self.t = torch.zeros(1, dtype=torch.long, device=device)  # schedule row of the next step
        self.k = torch.zeros(1, dtype=torch.long, device=device)  # negative-block row of the next step
        self.block = torch.zeros(max(1, min(BLOCK, schedule.n_steps)), sampler.n_sample, dtype=torch.long, device=device)
        self.loss_sum = torch.zeros((), device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.side = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.capturable = device.type == "cuda"  # a CPU runs the body itself: nothing to launch at once
        self.host_t = self.host_k = self.in_block = 0
        self.warmed = 0  # steps run without the graph
        self.block_origin: dict = {}  # where the sampler's stream stood before the current block

    @property
    def n_steps(self) -> int:
        return self.schedule.n_steps

    def begin(self) -> None:
        """A new epoch: first schedule row, zero state in every slot, no loss yet."""
        self.t.zero_()
        self.loss_sum.zero_()
        for h in self.step.hidden:
            h.zero_()
        self.host_t = self.host_k = self.in_block = 0

    def body(self) -> None:
        """One step, reading everything from the device: what a CUDA graph records."""
        s = self.schedule
        pos = s.positions.index_select(0, self.t).view(-1)
        valid, reset = s.valid.index_select(0, self.t).view(-1), s.reset.index_select(0, self.t).view(-1)
        negatives = self.block.index_select(0, self.k).view(-1)
        inputs, targets = self.items.index_select(0, pos), self.items.index_select(0, pos + 1)
        self.loss_sum += self.step.run(inputs, targets, valid, reset, negatives)
        self.t += 1
        self.k += 1

    def prepare(self, one: bool = False) -> None:
        """Make sure the negative block holds the next step's row (`one`: move just that row)."""
        if self.host_k < self.in_block:
            return
        n = 1 if one else min(len(self.block), self.n_steps - self.host_t)
        self.block_origin = self.sampler.state_dict()
        self.block[:n].copy_(self.sampler.take(n))
        self.k.zero_()
        self.host_k, self.in_block = 0, n

    def advance(self) -> None:
        """Run the next step: a graph replay once captured, else the body (on a side stream on CUDA)."""
        self.prepare()
        if self.graph is not None:
            self.graph.replay()
        elif self.side is None:
            self.body()
        else:
            self.side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side):
                self.body()
            torch.cuda.current_stream().wait_stream(self.side)
        self.warmed += self.graph is None
        self.host_t += 1
        self.host_k += 1

    def wants_capture(self, warmup: int) -> bool:
        return self.capturable and self.graph is None and self.warmed >= warmup

    def capture(self) -> None:
        """Record the body as a CUDA graph (after warm-up steps); raises what capture raises."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.body()
        self.graph = graph

    def peek(self) -> Batch:
        """The next step's mini-batch as the eager step takes it (call prepare(one=True) first)."""
        t = self.host_t
        pos = self.schedule.positions[t].long()
        valid = self.schedule.valid[t]
        negatives = self.block[self.host_k]
        targets = self.items.index_select(0, pos + 1)
        return Batch(self.items.index_select(0, pos), targets, negatives, self.step.log_q(targets, negatives), valid)

    def rewind_negatives(self) -> None:
        """Put the sampler back to where the next step's negatives come from (the rest of the block
        unused), so that another step can take over the stream exactly."""
        if self.block_origin and self.host_k < self.in_block:
            self.sampler.load_state_dict(self.block_origin)
            self.sampler.take(self.host_k)
        self.in_block = self.host_k = 0

    def live_hidden(self, t: int) -> Hidden:
        """The slots' state after step t, compacted to the rows step t fed (as the variable-size steps keep it)."""
        rows = self.schedule.valid[t].nonzero().squeeze(1)
        return [h.index_select(0, rows) for h in self.step.hidden]
