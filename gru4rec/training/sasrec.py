"""SASRec training: every session is a sequence, and every position predicts the next click.

A mini-batch holds `batch_size` sequences padded on the right; one causal forward pass gives the
session vector after every click, and the loss averages over all real (non-padding) positions, as
a causal language model trains. Sessions are shuffled every epoch and batched with others of
similar length (pools of 64 batches sorted by length), so little is spent on padding.

A session longer than max_len + 1 clicks is cut into windows of max_len inputs that step forward by
max_len // 2: every next click is predicted exactly once (a window's loss starts where the previous
window's ended) and, past the first window, with at least max_len // 2 clicks of context.

The losses (gru4rec.training.sasrec_params.SASRecSettings) and Adam; a Trainer-like object that
gru4rec.training.run drives like GRU4Rec's (validation, checkpoints, resume).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from gru4rec.data.sessions import Sessions
from gru4rec.foundation.devices import torch_threads
from gru4rec.foundation.errors import UserError
from gru4rec.foundation.logs import progress
from gru4rec.model.sasrec import ARCHITECTURE, SASRec
from gru4rec.training.sampling import NegativeSampler
from gru4rec.training.sasrec_params import SASRecParams
from gru4rec.training.trainer import EpochStats

log = logging.getLogger(__name__)

POOL_BATCHES = 64  # batches whose sequences are sorted by length together


def session_windows(sessions: Sessions, max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training sequences as (start, n_inputs, loss_from) arrays; see the module docstring.

    Sequence w reads inputs items[start[w] : start[w] + n_inputs[w]] and targets shifted by one; its
    first loss_from[w] positions were already predicted by the previous window and carry no loss.
    """
    offsets, n_targets = sessions.offsets[:-1], sessions.lengths - 1
    short = (n_targets >= 1) & (n_targets <= max_len)
    long = n_targets > max_len
    stride = max(1, max_len // 2)
    per_session = 1 + -(-(n_targets[long] - max_len) // stride)  # windows of each long session
    first = np.repeat(np.cumsum(per_session) - per_session, per_session)
    i = np.arange(per_session.sum()) - first  # window number inside its session
    cap = np.repeat(n_targets[long], per_session)
    end = np.minimum(max_len + i * stride, cap)  # clicks consumed as inputs up to this window's end
    prev_end = np.where(i > 0, np.minimum(max_len + (i - 1) * stride, cap), end - max_len)
    start = np.concatenate([offsets[short], np.repeat(offsets[long], per_session) + end - max_len])
    n_inputs = np.concatenate([n_targets[short], np.full(len(end), max_len)])
    loss_from = np.concatenate([np.zeros(short.sum(), dtype=np.int64), prev_end - end + max_len])
    return start.astype(np.int64), n_inputs.astype(np.int64), loss_from.astype(np.int64)


def sampled_softmax(pos: Tensor, neg: Tensor, targets: Tensor, negatives: Tensor, log_expected: Tensor, logq: float) -> Tensor:
    """Mean softmax cross-entropy of each target against shared sampled negatives, logQ-corrected.

    pos [P] are the targets' scores, neg [P, K] the scores of the K negatives. Every score is
    lowered by logq * log(K * q(item)), the item's expected count in the sample (log_expected), so
    that the sampled normaliser estimates the full softmax's; negatives equal to the row's target
    (accidental hits) are left out.
    """
    if logq > 0:
        pos = pos - logq * log_expected[targets]
        neg = neg - logq * log_expected[negatives]
    neg = neg.masked_fill(negatives.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
    logits = torch.cat([pos.unsqueeze(1), neg], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(pos), dtype=torch.long, device=pos.device))


def gbce(pos: Tensor, neg: Tensor, targets: Tensor, negatives: Tensor, n_items: int, t: float) -> Tensor:
    """gSASRec's generalised BCE: -beta * log sigmoid(pos) - sum log(1 - sigmoid(neg)), averaged over rows.

    beta = alpha * (t * (1 - 1/alpha) + 1/alpha) with alpha = K / (n_items - 1), the sampling rate.
    """
    alpha = neg.shape[1] / (n_items - 1)
    beta = alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)
    hits = negatives.unsqueeze(0) == targets.unsqueeze(1)
    negative_part = F.logsigmoid(-neg).masked_fill(hits, 0.0).sum(dim=1)
    return -(beta * F.logsigmoid(pos) + negative_part).mean()


class SASRecTrainer:
    """Model, Adam and sampler of one SASRec run on one device (the interface run._Run drives)."""

    def __init__(
        self,
        params: SASRecParams,
        sessions: Sessions,
        item_counts: np.ndarray,
        device: torch.device,
        seed: int = 42,
        threads: int | None = None,
    ) -> None:
        self.settings = settings = params.training
        self.sessions = sessions
        self.device = device
        self.seed = seed
        # one intra-op thread on a CPU, as for GRU4Rec: at these sizes more threads gain little and
        # collapse (10x slower steps, measured) when other processes share the cores
        self.threads = threads if threads is not None else (1 if device.type == "cpu" else None)
        torch.manual_seed(seed)
        self.model = SASRec(len(item_counts), params.model).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        counts = torch.as_tensor(item_counts, dtype=torch.float64, device=device)
        n_sample = 0 if settings.loss == "cross-entropy" else settings.n_sample
        self.sampler = NegativeSampler(counts, n_sample, settings.sample_alpha, settings.sample_cache_size, self.generator)
        weights = counts.clamp_min(0) ** settings.sample_alpha
        q = weights / weights.sum()
        self.log_expected = torch.log((max(n_sample, 1) * q).clamp_min(1e-30)).float()
        self.items = torch.from_numpy(sessions.items).to(device)
        windows = session_windows(sessions, params.model.max_len)
        self.start, self.n_inputs, self.loss_from = (torch.from_numpy(a).to(device) for a in windows)
        self._lengths = windows[1]
        self._targets_per_window = windows[1] - windows[2]
        self.n_targets = int(self._targets_per_window.sum())
        self._check_score_memory(len(item_counts), int(windows[1].max(initial=1)))

    def _check_score_memory(self, n_items: int, longest: int) -> None:
        """Estimate the largest score matrix up front: full softmax needs one row per position and item."""
        columns = n_items if self.settings.loss == "cross-entropy" else self.settings.n_sample + 1
        positions = self.settings.batch_size * longest
        gib = positions * columns * 4 * 3 / 2**30  # scores, their softmax and its gradient, float32
        log.info("largest score matrix: %d positions x %d columns, about %.2f GiB with its gradient", positions, columns, gib)
        if gib > 4 and self.settings.loss == "cross-entropy":
            log.warning(
                "full-softmax cross-entropy over %d items needs about %.1f GiB per mini-batch; "
                "loss=sampled-softmax (with n_sample negatives) or a smaller batch_size/max_len needs far less",
                n_items, gib,
            )

    def batches(self, epoch: int) -> list[np.ndarray]:
        """This epoch's mini-batches of window indices: shuffled, length-bucketed, in shuffled order."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self._lengths))
        pool = POOL_BATCHES * self.settings.batch_size
        batches = []
        for lo in range(0, len(order), pool):
            chunk = order[lo : lo + pool]
            chunk = chunk[np.argsort(self._lengths[chunk], kind="stable")]
            batches.extend(chunk[i : i + self.settings.batch_size] for i in range(0, len(chunk), self.settings.batch_size))
        return [batches[i] for i in rng.permutation(len(batches))]

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Inputs [B, T] (padded with model.pad), targets [B, T] and the mask of positions with a loss."""
        n_in = self.n_inputs[index]
        offs = torch.arange(int(n_in.max()), device=self.device)
        real = offs < n_in.unsqueeze(1)
        pos = torch.where(real, self.start[index].unsqueeze(1) + offs, 0)
        inputs = torch.where(real, self.items[pos], self.model.pad)
        targets = self.items[torch.where(real, pos + 1, 0)]
        return inputs, targets, real & (offs >= self.loss_from[index].unsqueeze(1))

    def loss(self, inputs: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
        """The configured loss, averaged over the masked positions."""
        h = self.model(inputs)[mask]
        targets = targets[mask]
        if self.settings.loss == "cross-entropy":
            return F.cross_entropy(self.model.score(h), targets)
        negatives = self.sampler.next()
        pos = (h * self.model.item_emb(targets)).sum(dim=1)
        neg = self.model.score(h, negatives)
        if self.settings.loss == "sampled-softmax":
            return sampled_softmax(pos, neg, targets, negatives, self.log_expected, self.settings.logq)
        return gbce(pos, neg, targets, negatives, self.model.n_items, self.settings.gbce_t)

    def train_epoch(self, epoch: int) -> EpochStats:
        with torch_threads(self.threads):
            return self._train_epoch(epoch)

    def _train_epoch(self, epoch: int) -> EpochStats:
        self.model.train()
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=self.device)
        n_steps = done = 0
        bar = progress(total=self.n_targets, desc=f"epoch {epoch}", unit="ev")
        for batch in self.batches(epoch):
            inputs, targets, mask = self.batch(torch.from_numpy(batch).to(self.device))
            loss = self.loss(inputs, targets, mask)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss_sum += loss.detach()
            n_steps += 1
            done += int(self._targets_per_window[batch].sum())
            if n_steps % 64 == 0:
                _check_finite(loss_sum.item(), epoch, done)
                bar.set_postfix(loss=f"{loss_sum.item() / n_steps:.4f}", refresh=False)
            bar.update(done - bar.n)
        bar.close()
        total = loss_sum.item()
        _check_finite(total, epoch, done)
        seconds = time.perf_counter() - start
        return EpochStats(epoch, total / max(n_steps, 1), seconds, done, done / max(seconds, 1e-9))

    def optimizer_state(self) -> list[dict[str, Any]]:
        return [self.optimizer.state_dict()]

    def load_optimizer_state(self, states: list[dict[str, Any]]) -> None:
        self.optimizer.load_state_dict(states[0])


def _check_finite(value: float, epoch: int, events: int) -> None:
    if not math.isfinite(value):
        raise UserError(
            f"training diverged: the loss became {value} in epoch {epoch} after {events} events; "
            "lower learning_rate and train again"
        )


def check_options(opts: Any) -> None:
    """Refuse the `gru4rec train` options that only GRU4Rec's engine has."""
    if opts.distributed:
        raise UserError("--distributed trains GRU4Rec only; train sasrec in one process (it uses a GPU when present)")
    if opts.init_from is not None:
        raise UserError("--init-from warm-starts GRU4Rec only; train sasrec from scratch")
    if opts.step != "auto":
        raise UserError(f"--step {opts.step} selects GRU4Rec's training step; sasrec has one (leave --step auto)")
