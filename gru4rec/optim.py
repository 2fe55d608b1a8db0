"""The reference optimiser: Adagrad (eps 1e-6) with heavy-ball momentum on the scaled step.

    acc += g^2;   step = -lr * g / sqrt(acc + eps);   mom = momentum * mom + step;   w += mom

Sparse gradients (item embedding rows) touch only their rows: duplicate ids of a step are summed
first, then accumulator, momentum and weights are updated for those rows alone.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


class AdagradMomentum(torch.optim.Optimizer):
    def __init__(self, params: Iterable[Tensor], lr: float = 0.05, momentum: float = 0.0, eps: float = 1e-6) -> None:
        if lr <= 0:
            raise ValueError("lr must be positive")
        super().__init__(params, dict(lr=lr, momentum=momentum, eps=eps))

    def _state(self, p: Tensor, momentum: float) -> dict:
        state = self.state[p]
        if "acc" not in state:
            state["acc"] = torch.zeros_like(p)
            if momentum > 0:
                state["mom"] = torch.zeros_like(p)
        return state

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch API
        for group in self.param_groups:
            lr, momentum, eps = group["lr"], group["momentum"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._state(p, momentum)
                grad = p.grad
                if grad.is_sparse:
                    self._sparse_step(p, grad, state, lr, momentum, eps)
                else:
                    acc = state["acc"].addcmul_(grad, grad)
                    update = grad.div(acc.add(eps).sqrt_()).mul_(-lr)
                    if momentum > 0:
                        update = state["mom"].mul_(momentum).add_(update)
                    p.add_(update)
        return None

    @staticmethod
    def _sparse_step(p: Tensor, grad: Tensor, state: dict, lr: float, momentum: float, eps: float) -> None:
        """Row-sparse update without sorting: duplicate rows are summed through a zeroed scratch
        buffer, every copy of a row then computes the same new value, so index_copy_ is exact."""
        rows, values = grad._indices()[0], grad._values()
        if "scratch" not in state:
            state["scratch"] = torch.zeros_like(p)
        scratch = state["scratch"]
        scratch.index_add_(0, rows, values)
        g = scratch.index_select(0, rows)
        scratch.index_fill_(0, rows, 0.0)
        acc = state["acc"].index_select(0, rows).addcmul_(g, g)
        state["acc"].index_copy_(0, rows, acc)
        update = g.div_(acc.add_(eps).sqrt_()).mul_(-lr)
        if momentum > 0:
            update = state["mom"].index_select(0, rows).mul_(momentum).add_(update)
            state["mom"].index_copy_(0, rows, update)
        p.index_copy_(0, rows, p.index_select(0, rows).add_(update))


def make_optimizer(model: torch.nn.Module, name: str, lr: float, momentum: float) -> list[torch.optim.Optimizer]:
    """Optimisers for a model: the reference's Adagrad+momentum, or Adam (SparseAdam for item rows)."""
    if name == "adagrad":
        return [AdagradMomentum(model.parameters(), lr=lr, momentum=momentum)]
    sparse = [p for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.sparse for p in m.parameters()]
    sparse_ids = {id(p) for p in sparse}
    dense = [p for p in model.parameters() if id(p) not in sparse_ids]
    optimizers: list[torch.optim.Optimizer] = [torch.optim.SparseAdam(sparse, lr=lr)]
    if dense:
        optimizers.append(torch.optim.Adam(dense, lr=lr))
    return optimizers
