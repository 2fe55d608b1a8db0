"""SASRec network: causal masking, padding never scored, and model directories (format 2) round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gru4rec.data.sessions import ItemMap
from gru4rec.foundation.errors import ModelUnavailable, UserError
from gru4rec.model.architectures import ALL, architecture_of
from gru4rec.model.checkpoint import METADATA_FILE, load_checkpoint, save_checkpoint
from gru4rec.model.sasrec import SASRec, SASRecConfig

N_ITEMS = 11


def build(seed: int = 0, **overrides) -> SASRec:
    torch.manual_seed(seed)
    config = SASRecConfig(**{"hidden_size": 16, "n_blocks": 2, "n_heads": 2, "ff_size": 24, "max_len": 8, **overrides})
    return SASRec(N_ITEMS, config).eval()


def test_no_position_sees_its_future():
    """Changing the clicks after position t leaves the outputs at positions 0..t unchanged, in
    training mode too (attention dropout must not leak the future either)."""
    model = build()
    x = torch.randint(0, N_ITEMS, (3, 8))
    for t in range(7):
        y = x.clone()
        y[:, t + 1 :] = torch.randint(0, N_ITEMS, (3, 7 - t))
        with torch.no_grad():
            assert torch.allclose(model(x)[:, : t + 1], model(y)[:, : t + 1], atol=1e-6)
    model.train()
    y = torch.cat([x[:, :4], torch.randint(0, N_ITEMS, (3, 4))], dim=1)
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(1)
    b = model(y)
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-6)


def test_gradient_of_an_early_position_ignores_later_inputs():
    model = build()
    x = torch.randint(0, N_ITEMS, (1, 6))
    emb = model.item_emb(x).detach().requires_grad_(True)
    h = emb + model.pos_emb(torch.arange(6))
    for block in model.blocks:
        h = block(h)
    out = model.ln_out(h)[0, 2]
    # a weighted sum: the plain sum of a layer norm's outputs (unit weight) is constant in its input, so its
    # gradient is zero up to rounding, which some processors round to exactly zero
    (out * torch.linspace(-1.0, 1.0, out.shape[0])).sum().backward()
    assert emb.grad[0, 3:].abs().max() == 0
    assert emb.grad[0, :3].abs().max() > 0


def test_padding_is_never_scored_and_never_seen():
    model = build()
    with torch.no_grad():
        model.item_emb.weight[model.pad] = 1e3  # a padding row that would win every ranking if scored
        hidden = model.last_hidden(torch.tensor([[1, 2, model.pad, model.pad]]), torch.tensor([2]))
        scores = model.score(hidden)
        unpadded = model.last_hidden(torch.tensor([[1, 2]]), torch.tensor([2]))
    assert scores.shape == (1, N_ITEMS)  # the padding row is not a column
    assert torch.allclose(hidden, unpadded, atol=1e-5)  # right padding is invisible to real positions


def test_padding_row_gets_no_gradient():
    model = build().train()
    x = torch.tensor([[1, 2, model.pad, model.pad]])
    loss = model.score(model(x).reshape(-1, 16)).logsumexp(1).sum()
    loss.backward()
    assert model.item_emb.weight.grad[model.pad].abs().max() == 0


def test_longer_than_max_len_is_refused():
    model = build()
    with pytest.raises(ValueError, match="max_len"):
        model(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize("bad", [{"n_heads": 3}, {"hidden_size": 0}, {"dropout_p": 1.0}, {"max_len": 0}])
def test_config_checks(bad):
    with pytest.raises(UserError):
        SASRecConfig(**{"hidden_size": 16, **bad})


def test_checkpoint_round_trip(tmp_path):
    model = build(dropout_p=0.1)
    ids = ItemMap.from_ids([f"i{k}" for k in range(N_ITEMS)])
    counts = np.arange(1, N_ITEMS + 1)
    save_checkpoint(tmp_path / "m", model, ids, counts, {"epochs": [], "complete": True})
    meta = json.loads((tmp_path / "m" / METADATA_FILE).read_text())
    assert meta["model"] == {"architecture": "sasrec", **model.config.to_dict()}
    loaded = load_checkpoint(tmp_path / "m", architectures=ALL)
    assert architecture_of(loaded.model) == loaded.architecture == "sasrec"
    assert loaded.config == model.config and not loaded.model.training
    x, lengths = torch.tensor([[3, 1, 4, 1], [5, 9, 2, model.pad]]), torch.tensor([4, 3])
    with torch.no_grad():
        assert torch.equal(model.score(model.last_hidden(x, lengths)), loaded.model.score(loaded.model.last_hidden(x, lengths)))
    state = torch.load(tmp_path / "m" / "model.pt", weights_only=True)  # tensors only
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_gru_only_commands_refuse_a_sasrec_model(tmp_path):
    """The service, export and warm starts load with the default architectures: a clear refusal."""
    model = build()
    save_checkpoint(tmp_path / "m", model, ItemMap.from_ids(range(N_ITEMS)), np.ones(N_ITEMS), {})
    with pytest.raises(ModelUnavailable, match="'sasrec' model"):
        load_checkpoint(tmp_path / "m")


def test_damaged_sasrec_metadata_is_a_clear_error(tmp_path):
    model = build()
    save_checkpoint(tmp_path / "m", model, ItemMap.from_ids(range(N_ITEMS)), np.ones(N_ITEMS), {})
    path = tmp_path / "m" / METADATA_FILE
    meta = json.loads(path.read_text())
    meta["model"]["layers"] = [100]
    path.write_text(json.dumps(meta))
    with pytest.raises(ModelUnavailable, match="unknown model setting"):
        load_checkpoint(tmp_path / "m", architectures=ALL)
    meta["model"].pop("layers")
    meta["model"]["architecture"] = "bert4rec"
    path.write_text(json.dumps(meta))
    with pytest.raises(ModelUnavailable, match="bert4rec"):
        load_checkpoint(tmp_path / "m", architectures=ALL)
