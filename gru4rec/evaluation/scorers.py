"""The SessionScorer of a trained network, whatever its architecture."""

from __future__ import annotations

from torch import nn

from gru4rec.evaluation.protocol import ModelScorer, SessionScorer
from gru4rec.evaluation.sasrec import SASRecScorer
from gru4rec.model.sasrec import SASRec


def model_scorer(model: nn.Module) -> SessionScorer:
    """SASRecScorer for a SASRec (state: the item prefix), ModelScorer for a GRU4Rec (state: hidden vectors)."""
    if isinstance(model, SASRec):
        return SASRecScorer(model)
    return ModelScorer(model)
