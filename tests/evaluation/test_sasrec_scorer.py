"""SASRec through the shared evaluation harness: the prefix state, metrics equal to a brute-force
replay, and `gru4rec evaluate` / `compare` / `tune` on a SASRec model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from gru4rec.cli import main
from gru4rec.data.sessions import Sessions
from gru4rec.evaluation.protocol import ModelScorer, evaluate, metrics_from_ranks
from gru4rec.evaluation.sasrec import PrefixState, SASRecScorer
from gru4rec.evaluation.scorers import model_scorer
from gru4rec.model.config import ModelConfig
from gru4rec.model.network import GRU4Rec
from gru4rec.model.sasrec import SASRec, SASRecConfig
from gru4rec.training.sasrec_params import SASRecParams
from gru4rec.tuning.search import load_space

N_ITEMS = 9


def model(max_len: int = 3) -> SASRec:
    torch.manual_seed(0)
    return SASRec(N_ITEMS, SASRecConfig(hidden_size=8, n_heads=2, ff_size=8, max_len=max_len)).eval()


def test_prefix_keeps_the_last_max_len_clicks_and_drops_ended_rows():
    state = PrefixState.empty(3, torch.device("cpu"))
    state = state.append(torch.tensor([1, 2, 3]), max_len=2, pad=9)
    state = state.append(torch.tensor([4, 5]), max_len=2, pad=9)  # row 2's session ended
    state = state.append(torch.tensor([6]), max_len=2, pad=9)
    assert state.items.tolist() == [[4, 6]] and state.lengths.tolist() == [2]


def test_rows_of_different_lengths_score_as_if_alone():
    m = model(max_len=4)
    scorer = SASRecScorer(m)
    mixed = PrefixState(torch.tensor([[1, 2, 3], [4, m.pad, m.pad]]), torch.tensor([3, 1]))
    alone = [scorer.score(PrefixState(torch.tensor([[1, 2, 3]]), torch.tensor([3]))),
             scorer.score(PrefixState(torch.tensor([[4]]), torch.tensor([1])))]
    with torch.no_grad():
        assert torch.allclose(scorer.score(mixed), torch.cat(alone), atol=1e-5)


def test_evaluate_equals_a_brute_force_replay():
    """Every prediction of evaluate() is the model's score of the last max_len clicks before it."""
    m = model(max_len=3)
    lengths = [2, 6, 3, 5, 2]
    rng = np.random.default_rng(0)
    items = rng.integers(0, N_ITEMS, sum(lengths))
    offsets = np.r_[0, np.cumsum(lengths)]
    sessions = Sessions(items.astype(np.int64), offsets.astype(np.int64), np.arange(len(lengths)).astype(str))
    ranks = []
    with torch.no_grad():
        for s in range(len(lengths)):
            clicks = items[offsets[s] : offsets[s + 1]]
            for t in range(1, len(clicks)):
                prefix = torch.tensor(clicks[max(0, t - 3) : t]).unsqueeze(0)
                scores = m.score(m(prefix)[:, -1])[0]
                ranks.append(int((scores >= scores[clicks[t]]).sum()))  # conservative ties
    result = evaluate(SASRecScorer(m), sessions, cutoffs=(1, 3, 5), batch_size=2)
    expected = metrics_from_ranks(np.array(ranks), (1, 3, 5), ndcg=True)
    assert result.n_events == len(ranks)
    for key, value in expected.items():
        assert result.metrics[key] == pytest.approx(value)


def test_model_scorer_picks_the_scorer_of_the_architecture():
    assert isinstance(model_scorer(model()), SASRecScorer)
    assert isinstance(model_scorer(GRU4Rec(N_ITEMS, ModelConfig(layers=(4,)))), ModelScorer)


def write_sessions(path, n_sessions: int, seed: int, first_id: int = 0) -> None:
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(first_id, first_id + n_sessions):
        start, length = rng.integers(15), rng.integers(2, 6)
        rows += [(s, f"i{(start + j) % 15}", 1e6 + s * 100 + j) for j in range(length)]
    pd.DataFrame(rows, columns=["SessionId", "ItemId", "Time"]).to_csv(path, sep="\t", index=False)


def test_cli_trains_evaluates_and_compares_a_sasrec_model(tmp_path, capsys, one_torch_thread):
    write_sessions(tmp_path / "train.tsv", 80, 0)
    write_sessions(tmp_path / "test.tsv", 20, 1, first_id=1000)
    rc = main([
        "train", str(tmp_path / "train.tsv"), "--out", str(tmp_path / "m"), "--params", "sasrec", "-q",
        "--set", "hidden_size=8", "--set", "n_heads=1", "--set", "ff_size=8", "--set", "n_epochs=2", "--set", "batch_size=16",
    ])
    assert rc == 0
    assert main(["evaluate", str(tmp_path / "m"), str(tmp_path / "test.tsv"), "--json", str(tmp_path / "e.json"),
                 "--cutoffs", "1", "5", "-q"]) == 0
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["architecture"] == "sasrec" and report["n_events"] > 0 and report["train_seconds"] > 0
    rc = main([
        "compare", str(tmp_path / "test.tsv"), "--model", f"sasrec={tmp_path / 'm'}", "--baseline", "pop",
        "--train", str(tmp_path / "train.tsv"), "--out", str(tmp_path / "cmp"), "--cutoffs", "1", "5", "-q",
    ])
    assert rc == 0
    entries = json.loads((tmp_path / "cmp" / "comparison.json").read_text())["entries"]
    assert set(entries) == {"sasrec", "pop"}
    assert entries["sasrec"]["n_events"] == entries["pop"]["n_events"]  # one protocol for both


def test_tune_runs_a_sasrec_space(tmp_path, one_torch_thread):
    write_sessions(tmp_path / "train.tsv", 60, 0)
    write_sessions(tmp_path / "valid.tsv", 15, 1, first_id=1000)
    space = tmp_path / "space.toml"
    space.write_text(
        'architecture = "sasrec"\nhidden_size = 8\nn_heads = 1\nff_size = 8\nn_epochs = 1\nbatch_size = 16\n'
        '[learning_rate]\ntype = "float"\nlow = 0.001\nhigh = 0.01\nlog = true\n'
    )
    assert main(["tune", str(tmp_path / "train.tsv"), str(tmp_path / "valid.tsv"), "--space", str(space),
                 "--trials", "2", "--metric", "mrr@5", "--out", str(tmp_path / "tune"), "-q"]) == 0
    best = (tmp_path / "tune" / "best_params.toml").read_text()
    assert 'architecture = "sasrec"' in best
    assert main(["train", str(tmp_path / "train.tsv"), "--params", str(tmp_path / "tune" / "best_params.toml"),
                 "--out", str(tmp_path / "again"), "-q"]) == 0


def test_builtin_sasrec_space_and_mismatched_base():
    space = load_space("sasrec")
    assert isinstance(space.base, SASRecParams) and space.fixed["architecture"] == "sasrec"
    from gru4rec.foundation.errors import UserError
    from gru4rec.training.params import HyperParams

    with pytest.raises(UserError, match="sasrec space"):
        load_space("sasrec", HyperParams())
    with pytest.raises(UserError, match="unknown parameter"):
        load_space("xe", None).base.replace(hidden_size=3)

