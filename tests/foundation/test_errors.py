"""One exception type per kind of failure, each with one exit code (CLI) and one HTTP status (service)."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from gru4rec.foundation.errors import GRU4RecError, ModelUnavailable, UserError
from gru4rec.model.export import ExportError
from service import errors as service_errors
from service.errors import InvalidField, LimitExceeded, MissingField, SessionConflict, SessionStoreError, UnknownSession

KINDS = [  # (exception, exit code, HTTP status)
    (UserError("bad parameter"), 2, 400),
    (ModelUnavailable("models/x: model directory not found"), 2, 409),
    (ExportError("model.pt: differs"), 2, 400),
    (InvalidField("k", "k is wrong"), 2, 422),
    (MissingField("items", "give items"), 2, 422),
    (LimitExceeded("k", "k over the limit"), 2, 422),
    (UnknownSession("s-1"), 2, 404),
    (SessionStoreError("cannot reach Redis"), 2, 503),
    (SessionConflict("session changed"), 2, 409),
]


@pytest.mark.parametrize("exc,exit_code,status", KINDS, ids=[type(k[0]).__name__ for k in KINDS])
def test_each_kind_has_one_exit_code_and_one_status(exc, exit_code, status):
    assert isinstance(exc, GRU4RecError)
    assert exc.exit_code == exit_code and exc.http_status == status


def _app_raising(exc: Exception) -> TestClient:
    app = FastAPI()
    service_errors.install(app)

    @app.get("/boom")
    async def boom():
        raise exc

    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize("exc,exit_code,status", KINDS, ids=[type(k[0]).__name__ for k in KINDS])
def test_the_service_answers_each_kind_with_its_status(exc, exit_code, status):
    answer = _app_raising(exc).get("/boom")
    assert answer.status_code == status
    detail = answer.json()["detail"]
    if isinstance(exc, InvalidField):
        assert detail == [{"loc": ["body", exc.field], "msg": str(exc), "type": exc.kind}]
    else:
        assert detail == str(exc)


def test_a_missing_field_is_not_reported_as_a_limit():
    assert MissingField("items", "x").detail()[0]["type"] == "missing"
    assert LimitExceeded("k", "x").detail()[0]["type"] == "limit"


def test_store_outages_ask_the_client_to_retry():
    assert _app_raising(SessionStoreError("down")).get("/boom").headers["retry-after"] == "1"


def test_a_bug_is_a_500_without_its_traceback():
    answer = _app_raising(RuntimeError("secret internals")).get("/boom")
    assert answer.status_code == 500 and "secret" not in answer.text


def test_the_command_line_exits_with_the_kind_s_code(monkeypatch, caplog):
    from gru4rec import cli

    def fail(args):
        raise ModelUnavailable("models/x: model directory not found")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["export"].set_defaults(func=fail)
    assert cli.main(["export", "x", "--format", "onnx", "--out", "y"]) == 2
    assert "model directory not found" in caplog.text
