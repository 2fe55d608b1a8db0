"""Hyper-parameters: defaults, built-in sets, TOML/JSON files, --set overrides and validation."""

from __future__ import annotations

import json

import pytest

from gru4rec.training.params import HyperParams, builtin_names, from_mapping, load_params, save_params
from gru4rec.foundation.errors import UserError

RSC15_XE = dict(
    loss="cross-entropy", constrained_embedding=True, embedding=0, layers=(100,), batch_size=32,
    dropout_p_embed=0.0, dropout_p_hidden=0.4, learning_rate=0.2, momentum=0.2, n_sample=2048,
    sample_alpha=0.5, logq=1.0, n_epochs=10,
)
RETAILROCKET_BPRMAX = dict(
    loss="bpr-max", constrained_embedding=True, embedding=0, elu_param=0.5, layers=(224,), batch_size=80,
    dropout_p_embed=0.5, dropout_p_hidden=0.05, learning_rate=0.05, momentum=0.4, n_sample=2048,
    sample_alpha=0.4, bpreg=1.95, n_epochs=10,
)


def test_reference_defaults():
    p = HyperParams()
    assert p.layers == (100,) and p.batch_size == 64 and p.learning_rate == 0.05 and p.momentum == 0.0
    assert p.n_sample == 2048 and p.sample_alpha == 0.5 and p.constrained_embedding is True
    assert p.embedding_mode == "shared" and p.n_epochs == 10 and p.bpreg == 1.0 and p.elu_param == 0.5
    assert p.logq == 0.0 and p.dropout_p_embed == 0.0 and p.dropout_p_hidden == 0.0
    assert p.loss == "cross-entropy" and p.optimizer == "adagrad"


def test_builtin_sets_listed():
    assert {"rsc15-xe", "retailrocket-bprmax"} <= set(builtin_names())


@pytest.mark.parametrize("name,expected", [("rsc15-xe", RSC15_XE), ("retailrocket-bprmax", RETAILROCKET_BPRMAX)])
def test_builtin_sets_exact_values(name, expected):
    p = load_params(name)
    for key, value in expected.items():
        assert getattr(p, key) == value, key
    assert p.embedding_mode == "shared"


def test_set_overrides_win_and_parse_types():
    p = load_params("rsc15-xe", ["layers=[200, 50]", "loss=bpr-max", "momentum=0", "constrained_embedding=false",
                                "embedding=32", "batch_size = 16", "learning_rate=1e-2"])
    assert p.layers == (200, 50) and p.loss == "bpr-max" and p.momentum == 0.0
    assert p.constrained_embedding is False and p.embedding == 32 and p.embedding_mode == "separate"
    assert p.batch_size == 16 and p.learning_rate == 0.01
    assert p.dropout_p_hidden == 0.4  # untouched values of the set remain
    assert load_params(None, ["layers=64"]).layers == (64,)
    assert load_params(None, ["loss=xe"]).loss == "cross-entropy"  # aliases
    assert load_params(None, ["loss=bprmax"]).loss == "bpr-max"
    assert load_params(None, ["loss=\"top1-max\""]).loss == "top1-max"
    assert load_params(None, ["constrained_embedding=0", "embedding=0"]).embedding_mode == "none"


@pytest.mark.parametrize("bad", ["layers", "=3", "layers=[10,x]", "batch_size=2.5", "constrained_embedding=maybe",
                                 "learning_rate=fast"])
def test_set_malformed(bad):
    with pytest.raises(UserError):
        load_params(None, [bad])


def test_unknown_parameter_with_suggestion():
    with pytest.raises(UserError, match=r"unknown parameter.*'learnig_rate'.*did you mean 'learning_rate'"):
        load_params(None, ["learnig_rate=0.1"])
    with pytest.raises(UserError, match="unknown parameter.*'dropout_p_hiden'.*dropout_p_hidden"):
        from_mapping({"dropout_p_hiden": 0.1})
    with pytest.raises(UserError, match="unknown parameter.*'zzzz'"):
        from_mapping({"zzzz": 1})


@pytest.mark.parametrize(
    "key,value",
    [
        ("loss", "hinge"), ("optimizer", "sgd"), ("layers", ()), ("layers", (10, 0)), ("batch_size", 0),
        ("dropout_p_embed", 1.0), ("dropout_p_hidden", -0.2), ("learning_rate", 0.0), ("momentum", 1.0),
        ("momentum", -0.1), ("n_sample", -1), ("sample_alpha", 1.5), ("sample_alpha", -0.1), ("bpreg", -1.0),
        ("elu_param", -0.5), ("logq", -1.0), ("embedding", -3), ("n_epochs", 0), ("sample_cache_size", 0),
    ],
)
def test_out_of_range_values_rejected(key, value):
    with pytest.raises(UserError, match=key):
        HyperParams(**{key: value})
    with pytest.raises(UserError, match=key):
        from_mapping({key: list(value) if isinstance(value, tuple) else value})


def test_boundary_values_accepted():
    HyperParams(dropout_p_embed=0.0, dropout_p_hidden=0.999, momentum=0.0, n_sample=0, sample_alpha=0.0)
    HyperParams(sample_alpha=1.0, bpreg=0.0, elu_param=0.0, logq=0.0, batch_size=1)


def test_toml_and_json_files(tmp_path):
    toml = tmp_path / "p.toml"
    toml.write_text('loss = "bpr-max"\nlayers = [48, 24]\nbatch_size = 12\nbpreg = 2.5\n')
    p = load_params(str(toml), ["batch_size=7"])
    assert p.loss == "bpr-max" and p.layers == (48, 24) and p.bpreg == 2.5 and p.batch_size == 7
    js = tmp_path / "p.json"
    js.write_text(json.dumps({"loss": "xe", "layers": [33], "logq": 0.5, "constrained_embedding": False, "embedding": 8}))
    q = load_params(str(js))
    assert q.loss == "cross-entropy" and q.layers == (33,) and q.logq == 0.5 and q.embedding_mode == "separate"


def test_parameter_file_errors(tmp_path):
    with pytest.raises(UserError, match="neither a built-in"):
        load_params(str(tmp_path / "missing.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("loss = = 3\n")
    with pytest.raises(UserError, match="bad.toml"):
        load_params(str(bad))
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    with pytest.raises(UserError, match="bad.json"):
        load_params(str(bad_json))
    lst = tmp_path / "list.json"
    lst.write_text("[1, 2]")
    with pytest.raises(UserError, match="list.json"):
        load_params(str(lst))
    unknown = tmp_path / "u.toml"
    unknown.write_text("batchsize = 3\n")
    with pytest.raises(UserError, match="batch_size"):
        load_params(str(unknown))


def test_save_params_round_trip(tmp_path):
    p = load_params("retailrocket-bprmax", ["layers=[30, 20]", "optimizer=adam"])
    save_params(p, tmp_path / "saved.toml")
    assert load_params(str(tmp_path / "saved.toml")) == p
    assert from_mapping(p.to_dict()) == p
    assert p.replace(batch_size=3).batch_size == 3
    with pytest.raises(UserError):
        p.replace(batch_size=0)


def test_bools_and_ints_are_strict():
    with pytest.raises(UserError):
        from_mapping({"batch_size": True})
    with pytest.raises(UserError):
        from_mapping({"learning_rate": True})
    assert from_mapping({"batch_size": 32.0}).batch_size == 32
    assert from_mapping({"constrained_embedding": "no"}).constrained_embedding is False
