"""Strong simple baselines, fitted from the training file and evaluated by the same code as GRU4Rec.

    pop      most popular items                              (popularity.Pop)
    spop     session popularity, then popular                (popularity.SessionPop)
    itemknn  item co-occurrence kNN of the last click        (itemknn.ItemKNN)
    sr       sequential rules                                (rules.SequentialRules)
    vsknn    vector multiplication session kNN (V-SKNN)      (sknn.VSKNN)
    stan     sequence and time aware neighbourhood (STAN)    (sknn.STAN)

A baseline is named `NAME` or `NAME:key=value,key=value` to change its parameters (e.g.
`vsknn:k=200,similarity=vec`); the defaults are the published ones (see each class).
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any

from gru4rec.evaluation.baselines.base import Baseline, TrainSet, load_train_set
from gru4rec.evaluation.baselines.itemknn import ItemKNN
from gru4rec.evaluation.baselines.popularity import Pop, SessionPop
from gru4rec.evaluation.baselines.rules import SequentialRules
from gru4rec.evaluation.baselines.sknn import STAN, VSKNN
from gru4rec.foundation.errors import UserError
from gru4rec.foundation.values import parse_value

BASELINES: dict[str, type[Baseline]] = {
    "pop": Pop,
    "spop": SessionPop,
    "itemknn": ItemKNN,
    "sr": SequentialRules,
    "vsknn": VSKNN,
    "stan": STAN,
}

__all__ = ["BASELINES", "Baseline", "TrainSet", "fit_baseline", "load_train_set", "parse_baseline_spec"]


def parse_baseline_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """`NAME` or `NAME:key=value,...` -> (name, parameters); values are read as TOML scalars."""
    name, _, rest = spec.partition(":")
    name = name.strip()
    if name not in BASELINES:
        close = difflib.get_close_matches(name, BASELINES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"unknown baseline {name!r}{hint}: use one of {', '.join(BASELINES)}")
    params: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"baseline {spec!r}: expected NAME:key=value,key=value, got {item!r}")
        params[key.strip()] = parse_value(raw.strip())
    return name, params


def fit_baseline(spec: str, train: TrainSet) -> Baseline:
    """Fit the baseline named by `spec` (see parse_baseline_spec) on a training set."""
    name, params = parse_baseline_spec(spec)
    cls = BASELINES[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "train")]
    unknown = [k for k in params if k not in accepted]
    if unknown:
        raise UserError(
            f"baseline {name}: unknown parameter(s) {', '.join(unknown)}; "
            f"known: {', '.join(accepted) or 'none'}"
        )
    try:
        return cls(train, **params)
    except TypeError as exc:
        raise UserError(f"baseline {spec!r}: bad parameter value ({exc})") from None
