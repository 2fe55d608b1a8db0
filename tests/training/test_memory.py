"""The memory a training run needs is estimated and checked before the model is allocated."""

from __future__ import annotations

import pytest
import torch

from gru4rec.cli import main
from gru4rec.foundation.errors import UserError
from gru4rec.model.network import GRU4Rec
from gru4rec.training.memory import check_training_memory, estimate_training_memory, model_sizes
from gru4rec.training.params import HyperParams


@pytest.mark.parametrize(
    "params",
    [
        dict(layers=(16,)),
        dict(layers=(16, 8), constrained_embedding=False, embedding=6),
        dict(layers=(12, 10, 4), constrained_embedding=False, embedding=0),
        dict(layers=(7,), constrained_embedding=False, embedding=0),
    ],
)
def test_model_sizes_are_the_networks(params):
    config = HyperParams(**params).model
    model = GRU4Rec(53, config)
    item_tables = {"Wy.weight", "By.weight", "E.weight", "onehot.Wx.weight"}
    named = dict(model.named_parameters())
    item = sum(p.numel() for name, p in named.items() if name in item_tables)
    other = sum(p.numel() for name, p in named.items() if name not in item_tables)
    assert model_sizes(53, config) == (item, other)


def test_optimiser_state_and_sampler_scale_with_the_settings():
    base = HyperParams(layers=(100,), momentum=0.0, n_sample=2048)
    plain = estimate_training_memory(1_800_000, base.model, base.training)
    weights = plain.parts["item tables"] + plain.parts["GRU weights"]
    assert plain.parts["item tables"] == 1_800_000 * 101 * 4
    assert plain.parts["optimiser state"] == weights  # Adagrad's accumulator
    with_momentum = HyperParams(layers=(100,), momentum=0.2)
    assert estimate_training_memory(1_800_000, with_momentum.model, with_momentum.training).parts["optimiser state"] == 2 * weights
    validating = estimate_training_memory(1_800_000, base.model, base.training, validating=True)
    assert validating.parts["best-epoch copy"] == weights
    no_negatives = HyperParams(layers=(100,), n_sample=0)
    assert estimate_training_memory(10, no_negatives.model, no_negatives.training).parts["negative sampler"] == 0


def test_a_run_that_cannot_fit_is_one_line_error():
    params = HyperParams(layers=(100_000_000,))
    estimate = estimate_training_memory(500, params.model, params.training, loaded=10_000)
    with pytest.raises(UserError, match=r"training needs about .* PB more memory on cpu besides the 10 kB") as err:
        check_training_memory(estimate, torch.device("cpu"), available=20 * 10**9)
    assert "\n" not in str(err.value) and "but only 20 GB is available" in str(err.value)
    check_training_memory(estimate_training_memory(500, HyperParams().model, HyperParams().training),
                          torch.device("cpu"), available=20 * 10**9)  # the defaults fit


def test_train_refuses_a_model_too_large_before_allocating_it(tmp_path, capsys):
    data = tmp_path / "t.tsv"
    data.write_text("SessionId\tItemId\tTime\n" + "".join(f"{i // 3}\t{i % 7}\t{i}\n" for i in range(60)))
    code = main(["train", str(data), "--set", "layers=[100000000]", "--out", str(tmp_path / "m"), "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err
    assert "training needs about" in err and "Traceback" not in err
    assert not (tmp_path / "m").exists()
