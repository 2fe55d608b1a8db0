"""GRU4Rec: a GRU over the clicks of a session, scoring every item as the next click.

    h_t    = GRU(embed(x_t), h_{t-1})            (one or more stacked layers)
    score  = h_t · W_y[item] + b_y[item]          (no feed-forward layer after the GRU)

Input embedding modes (ModelConfig.embedding_mode):
  shared   the input embedding *is* W_y (the reference's "constrained" embedding, its default);
  separate a learned table E of width `embedding`;
  none     one-hot input: the first GRU layer's input weights are themselves an item lookup table.
Dropout follows the reference: `dropout_p_embed` on the input embedding (in the `none` mode on the
first layer's output, which takes the embedding's place) and `dropout_p_hidden` on every other GRU
layer's output. The dropped-out output is what is carried as the hidden state to the next step.
Dropout is active only in training mode; p is the probability of dropping a unit.

Two calls make the whole public API, shared by training, evaluation and serving:
  step(item_indices, hidden) -> hidden      advance every row by one click
  score(hidden, item_indices=None)          scores of the given columns (all items when None)
(step_packed is step on the state packed into one tensor, as the service and exports keep it.)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from gru4rec.model.config import ModelConfig

Hidden = list[Tensor]  # one [batch, layer_size] tensor per GRU layer


def dropout_mask(x: Tensor, p: float) -> Tensor | None:
    """Inverted-dropout mask shaped like x: 0 with probability p, else 1 / (1 - p); None for p = 0.

    Training's eager and fused paths both draw their masks here, so from one seed they drop the
    same units. (uniform < 1 - p costs a fifth of bernoulli_ on a CPU at mini-batch sizes.)
    """
    if p <= 0:
        return None
    keep = 1.0 - p
    return torch.rand_like(x).lt_(keep).div_(keep)


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    mask = dropout_mask(x, p) if training else None
    return x if mask is None else x * mask


def _uniform_(weight: Tensor, fan_in: int, fan_out: int) -> None:
    """The reference's init: U(±sqrt(6 / (fan_in + fan_out)))."""
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        weight.uniform_(-bound, bound)


class OneHotGRUCell(nn.Module):
    """First GRU layer of the `none` embedding mode: the input projection is a sparse row lookup.

    Feeding a one-hot vector through a [n_items, 3H] input matrix is the same as selecting its row,
    so only the clicked rows are read and updated. Same gate equations as the reference's version.
    """

    def __init__(self, n_items: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.Wx = nn.Embedding(n_items, 3 * hidden_size, sparse=True)  # [candidate | reset | update]
        self.Wrz = nn.Parameter(torch.empty(hidden_size, 2 * hidden_size))
        self.Wh = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.zeros(3 * hidden_size))
        for block in self.Wx.weight.data.chunk(3, dim=1):
            _uniform_(block, n_items, hidden_size)
        for block in self.Wrz.data.chunk(2, dim=1):
            _uniform_(block, hidden_size, hidden_size)
        _uniform_(self.Wh, hidden_size, hidden_size)

    def forward(self, items: Tensor, h: Tensor) -> Tensor:
        vx_h, vx_r, vx_z = (self.Wx(items) + self.bias).chunk(3, dim=1)
        vh_r, vh_z = (h @ self.Wrz).chunk(2, dim=1)
        r = torch.sigmoid(vx_r + vh_r)
        z = torch.sigmoid(vx_z + vh_z)
        candidate = torch.tanh((r * h) @ self.Wh + vx_h)
        return (1.0 - z) * h + z * candidate


class GRU4Rec(nn.Module):
    def __init__(self, n_items: int, config: ModelConfig) -> None:
        super().__init__()
        if n_items < 2:
            raise ValueError("GRU4Rec needs at least two items")
        self.n_items = n_items
        self.config = config
        self.layer_sizes = tuple(config.layers)
        self.mode = config.embedding_mode
        last = self.layer_sizes[-1]

        # Output weights and biases per item; in the shared mode W_y is also the input embedding.
        self.Wy = nn.Embedding(n_items, last, sparse=True)
        self.By = nn.Embedding(n_items, 1, sparse=True)
        _uniform_(self.Wy.weight, n_items, last)
        nn.init.zeros_(self.By.weight)

        self.E: nn.Embedding | None = None
        self.onehot: OneHotGRUCell | None = None
        if self.mode == "shared":
            input_size = last
        elif self.mode == "separate":
            self.E = nn.Embedding(n_items, config.embedding, sparse=True)
            _uniform_(self.E.weight, n_items, config.embedding)
            input_size = config.embedding
        else:
            self.onehot = OneHotGRUCell(n_items, self.layer_sizes[0])
            input_size = self.layer_sizes[0]

        first_cell = 1 if self.mode == "none" else 0
        self.cells = nn.ModuleList()
        for size in self.layer_sizes[first_cell:]:
            cell = nn.GRUCell(input_size, size)
            for block in cell.weight_ih.data.chunk(3, dim=0):  # gate blocks scaled separately
                _uniform_(block, input_size, size)
            for block in cell.weight_hh.data.chunk(3, dim=0):
                _uniform_(block, size, size)
            nn.init.zeros_(cell.bias_ih)
            nn.init.zeros_(cell.bias_hh)
            self.cells.append(cell)
            input_size = size

    def init_hidden(self, batch_size: int, device: torch.device | str | None = None) -> Hidden:
        """Zero state for `batch_size` fresh sessions."""
        device = device if device is not None else self.Wy.weight.device
        return [torch.zeros(batch_size, size, device=device) for size in self.layer_sizes]

    def step(self, item_indices: Tensor, hidden: Hidden) -> Hidden:
        """Feed one click per row; returns the new state (the last layer's is the session vector)."""
        p_embed, p_hidden = self.config.dropout_p_embed, self.config.dropout_p_hidden
        new: Hidden = []
        if self.onehot is not None:
            x = dropout(self.onehot(item_indices, hidden[0]), p_embed, self.training)
            new.append(x)
        else:
            table = self.Wy if self.E is None else self.E
            x = dropout(table(item_indices), p_embed, self.training)
        for cell, h in zip(self.cells, hidden[len(new) :]):
            x = dropout(cell(x, h), p_hidden, self.training)
            new.append(x)
        return new

    def step_packed(self, item_indices: Tensor, state: Tensor) -> Tensor:
        """`step` on a state packed as one [batch, sum(layer sizes)] tensor, layer 0 first.

        That packing is how a session's state travels outside training: the service stores it, and
        exported models take and return it. The last layer_sizes[-1] columns are the session vector.
        """
        hidden = list(torch.split(state, self.layer_sizes, dim=1))
        return torch.cat(self.step(item_indices, hidden), dim=1)

    def score(self, hidden: Hidden | Tensor, item_indices: Tensor | None = None) -> Tensor:
        """Scores [batch, columns] for the given item columns, or for the whole catalog when None."""
        h = hidden[-1] if isinstance(hidden, list) else hidden
        if item_indices is None:
            return torch.addmm(self.By.weight.T, h, self.Wy.weight.T)
        return torch.addmm(self.By(item_indices).T, h, self.Wy(item_indices).T)
