"""`gru4rec serve`: help, start-up errors, and a real server process answering over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
from service_helpers import REDIS_URL, model_a, redis_client

from gru4rec.cli import main

GRU4REC = [sys.executable, "-m", "gru4rec.cli"]


def test_serve_help(capsys):
    try:
        main(["serve", "--help"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    for text in ("MODEL_DIR", "--host", "--port", "--workers", "GRU4REC_REDIS_URL", "GRU4REC_API_KEY"):
        assert text in out


def test_serve_errors_are_one_line(tmp_path, capsys, monkeypatch):
    for name in ("GRU4REC_MODEL_DIR", "GRU4REC_WORKERS", "PROMETHEUS_MULTIPROC_DIR"):
        monkeypatch.setenv(name, "-")  # `serve` exports its options; restore the environment afterwards
        monkeypatch.delenv(name)
    assert main(["serve"]) == 2
    assert "no model" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "model directory not found" in capsys.readouterr().err
    assert main(["serve", str(model_a()), "--workers", "2"]) == 2
    assert "GRU4REC_REDIS_URL" in capsys.readouterr().err
    monkeypatch.setenv("GRU4REC_REDIS_URL", "redis://127.0.0.1:1/0")
    assert main(["serve", str(model_a())]) == 2
    assert "cannot reach Redis" in capsys.readouterr().err
    monkeypatch.delenv("GRU4REC_REDIS_URL")
    monkeypatch.setenv("GRU4REC_MAX_K", "zero")
    assert main(["serve", str(model_a())]) == 2
    assert "GRU4REC_MAX_K" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_runs_a_real_server_with_two_workers_sharing_redis():
    redis_client()
    port = _free_port()
    env = {**os.environ, "GRU4REC_REDIS_URL": REDIS_URL, "GRU4REC_REDIS_PREFIX": f"gru4rec-cli-{port}:"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen(
        [*GRU4REC, "serve", str(model_a()), "--port", str(port), "--workers", "2", "-q"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.2)
        with httpx.Client(base_url=url, timeout=10) as http:
            for item in ("1001", "1002", "1003"):  # new connections: the clicks spread over both workers
                r = httpx.post(f"{url}/v1/sessions/cli-1/events", json={"item_id": item, "k": 5}, timeout=10)
                assert r.status_code == 200, r.text
            stateless = http.post("/v1/recommend", json={"items": ["1001", "1002", "1003"], "k": 5}).json()
            assert r.json()["items"] == stateless["items"]
            metrics = http.get("/metrics").text
            series = 'gru4rec_http_requests_total{endpoint="/v1/sessions/{session_id}/events",method="POST",status="200"}'
            assert f"{series} 3.0" in metrics  # summed over both workers
        redis = redis_client()
        redis.delete(*redis.scan_iter(match=f"gru4rec-cli-{port}:*"))
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
