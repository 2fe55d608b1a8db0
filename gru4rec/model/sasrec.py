"""SASRec: causal self-attention over a session's last `max_len` clicks (Kang & McAuley, ICDM 2018).

    x_0   = dropout(E[item_t] + P[t])                      item embedding + learned position
    x_l+1 = x_l + attn(LN(x_l));  x_l+1 += ffn(LN(x_l+1))   n_blocks pre-LayerNorm blocks
    h_t   = LN(x_L)[t]                                     the session vector after click t
    score = h_t · E[item]                                  the item table doubles as output weights

Attention is causal: position t sees clicks 0..t only, so one forward pass over a session predicts
every next click at once (training), and the last position of a prefix predicts its next click
(evaluation, serving). Positions count from the first click of the window (0 = oldest), the same in
training and in evaluation, where the state is the session's last `max_len` clicks.

Sequences are padded on the right with the row E[n_items] (kept at zero, never trained). Causality
keeps padding out of every real position's view; the padded positions' outputs are ignored, and
`score` ranks only the n_items real rows, so padding can never be recommended.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gru4rec.model.config import check_param

ARCHITECTURE = "sasrec"


@dataclass(frozen=True)
class SASRecConfig:
    """The network: sizes, context length and dropout (probability of DROPPING a unit)."""

    hidden_size: int = 64  # width of item/position embeddings and of every block
    n_blocks: int = 2  # self-attention blocks
    n_heads: int = 2  # attention heads (hidden_size must divide by it)
    ff_size: int = 256  # hidden width of each block's feed-forward layer
    max_len: int = 50  # clicks of context: a longer session is seen through its last max_len
    dropout_p: float = 0.2  # on the input embedding, attention weights and each residual branch

    def __post_init__(self) -> None:
        for name in ("hidden_size", "n_blocks", "n_heads", "ff_size", "max_len"):
            value = getattr(self, name)
            check_param(isinstance(value, int) and value >= 1, name, value, "a positive integer")
        check_param(self.hidden_size % self.n_heads == 0, "n_heads", self.n_heads, f"a divisor of hidden_size={self.hidden_size}")
        check_param(0.0 <= self.dropout_p < 1.0, "dropout_p", self.dropout_p, "a drop probability in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SASREC_FIELDS = tuple(f.name for f in dataclasses.fields(SASRecConfig))


class CausalSelfAttention(nn.Module):
    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.dropout_p = config.dropout_p
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.drop = nn.Dropout(config.dropout_p)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in self.qkv(x).split(C, dim=2))
        p = self.dropout_p if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        return self.drop(self.proj(y.transpose(1, 2).reshape(B, T, C)))


class FeedForward(nn.Module):
    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.ff_size)
        self.proj = nn.Linear(config.ff_size, config.hidden_size)
        self.drop = nn.Dropout(config.dropout_p)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.proj(F.gelu(self.up(x))))


class Block(nn.Module):
    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(config.hidden_size)
        self.attn = CausalSelfAttention(config)
        self.ln_ff = nn.LayerNorm(config.hidden_size)
        self.ff = FeedForward(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_attn(x))
        return x + self.ff(self.ln_ff(x))


class SASRec(nn.Module):
    def __init__(self, n_items: int, config: SASRecConfig) -> None:
        super().__init__()
        if n_items < 2:
            raise ValueError("SASRec needs at least two items")
        self.n_items = n_items
        self.config = config
        self.pad = n_items  # the padding row of the item table
        self.item_emb = nn.Embedding(n_items + 1, config.hidden_size, padding_idx=n_items)
        self.pos_emb = nn.Embedding(config.max_len, config.hidden_size)
        self.drop = nn.Dropout(config.dropout_p)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_blocks))
        self.ln_out = nn.LayerNorm(config.hidden_size)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # residual projections scaled by depth, as in GPT-2
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_blocks))
        with torch.no_grad():
            self.item_emb.weight[self.pad].zero_()

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def device(self) -> torch.device:
        return self.item_emb.weight.device

    def forward(self, items: Tensor) -> Tensor:
        """Hidden states [batch, T, hidden] of right-padded item sequences [batch, T <= max_len]."""
        T = items.shape[1]
        if T > self.config.max_len:
            raise ValueError(f"sequence of {T} clicks is longer than max_len={self.config.max_len}")
        pos = torch.arange(T, device=items.device)
        x = self.drop(self.item_emb(items) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        return self.ln_out(x)

    def last_hidden(self, items: Tensor, lengths: Tensor) -> Tensor:
        """Session vectors [batch, hidden]: the output at each row's last real click (lengths >= 1)."""
        h = self.forward(items)
        return h[torch.arange(len(items), device=items.device), lengths - 1]

    def score(self, hidden: Tensor, item_indices: Tensor | None = None) -> Tensor:
        """Scores [batch, columns] of the given items, or of the whole catalogue (never padding)."""
        weight = self.item_emb.weight[: self.n_items] if item_indices is None else self.item_emb(item_indices)
        return hidden @ weight.T
