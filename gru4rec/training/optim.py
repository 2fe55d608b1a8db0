"""The reference optimiser: Adagrad (eps 1e-6) with heavy-ball momentum on the scaled step.

    acc += g^2;   step = -lr * g / sqrt(acc + eps);   mom = momentum * mom + step;   w += mom

Sparse gradients (item embedding rows) touch only their rows: duplicate ids of a step are summed
first, then accumulator, momentum and weights are updated for those rows alone.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from gru4rec.foundation.memory import advise_huge_pages, zeros_on_huge_pages
from gru4rec.training import native


@dataclass
class Gradients:
    """One step's gradients, kept apart from the update so they can be reduced across ranks first.

    dense:  (parameter, gradient) pairs.
    sparse: (parameter, rows, row gradients); `unique` says the rows do not repeat.
    """

    dense: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    sparse: list[tuple[Tensor, Tensor, Tensor]] = field(default_factory=list)
    unique: bool = False

    @classmethod
    def from_autograd(cls, params: Iterable[Tensor]) -> Gradients:
        """What backward() left in the parameters' .grad: sparse ones (item rows) as rows + row values."""
        grads = cls()
        for p in params:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                grads.sparse.append((p, p.grad._indices()[0], p.grad._values()))
            else:
                grads.dense.append((p, p.grad))
        return grads


def sparse_parameters(model: torch.nn.Module) -> list[Tensor]:
    """The item tables (sparse embeddings): their gradients are rows, and they are updated by row."""
    return [p for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.sparse for p in m.parameters()]


class AdagradMomentum:
    """The reference optimiser, with torch.optim.Optimizer's interface and state_dict format.

    Not a torch.optim.Optimizer subclass on purpose: that class's constructor, zero_grad and
    state_dict import torch._dynamo on first use (about 3 s, a quarter of the start of training on
    a YooChoose-size file) for nothing this optimiser needs. The hyperparameters are the
    run's settings; a loaded state brings the accumulators and momenta, not other hyperparameters.
    """

    def __init__(self, params: Iterable[Tensor], lr: float = 0.05, momentum: float = 0.0, eps: float = 1e-6) -> None:
        if lr <= 0:
            raise ValueError("lr must be positive")
        self.lr, self.momentum, self.eps = lr, momentum, eps
        self.defaults = dict(lr=lr, momentum=momentum, eps=eps)
        self.param_groups = [dict(self.defaults, params=list(params))]
        self.state: defaultdict[Tensor, dict[str, Tensor]] = defaultdict(dict)

    @property
    def params(self) -> list[Tensor]:
        return self.param_groups[0]["params"]

    def zero_grad(self, set_to_none: bool = True) -> None:  # noqa: D102 - torch API
        for p in self.params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_().zero_()

    def state_dict(self) -> dict[str, Any]:
        """torch.optim.Optimizer's format: state by parameter position, one parameter group."""
        position = {id(p): i for i, p in enumerate(self.params)}
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        return {"state": {position[id(p)]: dict(s) for p, s in self.state.items() if s},
                "param_groups": [dict(group, params=list(range(len(self.params))))]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Accumulators and momenta of a state_dict() (also one written by the torch.optim.Optimizer
        subclass of earlier releases), moved to each parameter's device and dtype."""
        groups = state_dict["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError("loaded state dict does not match the optimizer's parameters")
        self.state = defaultdict(dict)
        for position, values in state_dict["state"].items():
            p = self.params[int(position)]
            self.state[p] = {k: v.to(device=p.device, dtype=p.dtype) for k, v in values.items()}
            for loaded in self.state[p].values():
                advise_huge_pages(loaded)  # as state_for places fresh state

    def state_for(self, p: Tensor) -> dict:
        """p's accumulator (and momentum), created at zero on first use."""
        state = self.state[p]
        if "acc" not in state:  # item tables' state is updated by random rows: see advise_huge_pages
            state["acc"] = zeros_on_huge_pages(p)
            if self.momentum > 0:
                state["mom"] = zeros_on_huge_pages(p)
        return state

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch API
        self.apply(Gradients.from_autograd(self.params))
        return None

    @torch.no_grad()
    def apply(self, grads: Gradients) -> None:
        """The update for a step whose gradients were collected (and maybe reduced) beforehand."""
        if grads.dense:
            self.dense_update([p for p, _ in grads.dense], [g for _, g in grads.dense])
        for p, rows, values in grads.sparse:
            if grads.unique:
                self.unique_rows_update(p, rows, values)
            else:
                self.sparse_update(p, rows, values)

    @torch.no_grad()
    def dense_update(self, params: Sequence[Tensor], grads: Sequence[Tensor]) -> None:
        """Update whole tensors, all at once with the multi-tensor (_foreach) kernels."""
        states = [self.state_for(p) for p in params]
        if native.usable(*params):
            for p, g, s in zip(params, grads, states):
                native.adagrad_rows(p, s["acc"], s.get("mom"), None, g.contiguous(), self.lr, self.momentum, self.eps)
            return
        accs = [s["acc"] for s in states]
        torch._foreach_addcmul_(accs, grads, grads)
        denom = torch._foreach_add(accs, self.eps)
        torch._foreach_sqrt_(denom)
        update = torch._foreach_div(grads, denom)
        torch._foreach_mul_(update, -self.lr)
        if self.momentum > 0:
            moms = [s["mom"] for s in states]
            torch._foreach_mul_(moms, self.momentum)
            torch._foreach_add_(moms, update)
            update = moms
        torch._foreach_add_(list(params), update)

    @torch.no_grad()
    def sparse_update(self, p: Tensor, rows: Tensor, values: Tensor) -> None:
        """Update rows `rows` of p by gradient rows `values`; repeated rows are summed first."""
        unique, inverse = torch.unique(rows, return_inverse=True)
        grad = torch.zeros(len(unique), *p.shape[1:], dtype=p.dtype, device=p.device).index_add_(0, inverse, values)
        self.unique_rows_update(p, unique, grad)

    @torch.no_grad()
    def unique_rows_update(self, p: Tensor, rows: Tensor, grad: Tensor) -> None:
        """Update rows `rows` (no repeats) of p by their summed gradient `grad` (consumed)."""
        state = self.state_for(p)
        if native.usable(p, rows):
            grad = grad.contiguous()
            native.adagrad_rows(p, state["acc"], state.get("mom"), rows, grad, self.lr, self.momentum, self.eps)
            return
        acc = state["acc"].index_select(0, rows).addcmul_(grad, grad)
        state["acc"].index_copy_(0, rows, acc)
        update = grad.div_(acc.add_(self.eps).sqrt_()).mul_(-self.lr)
        if self.momentum > 0:
            update = state["mom"].index_select(0, rows).mul_(self.momentum).add_(update)
            state["mom"].index_copy_(0, rows, update)
        p.index_add_(0, rows, update)


Optimizer = AdagradMomentum | torch.optim.Optimizer  # the reference optimiser, or torch's Adam pair


def make_optimizer(model: torch.nn.Module, name: str, lr: float, momentum: float) -> list[Optimizer]:
    """Optimisers for a model: the reference's Adagrad+momentum, or Adam (SparseAdam for item rows)."""
    if name == "adagrad":
        return [AdagradMomentum(model.parameters(), lr=lr, momentum=momentum)]
    sparse = sparse_parameters(model)
    sparse_ids = {id(p) for p in sparse}
    dense = [p for p in model.parameters() if id(p) not in sparse_ids]
    optimizers: list[Optimizer] = [torch.optim.SparseAdam(sparse, lr=lr)]
    if dense:
        optimizers.append(torch.optim.Adam(dense, lr=lr))
    return optimizers
