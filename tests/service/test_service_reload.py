"""Hot reload: the admin endpoint (and its auth), a changed checkpoint directory, and no failed
request while models are swapped under load (a real uvicorn server, clients in threads)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import httpx
import pytest
from service_helpers import client, copy_model, model_a, model_b, running_server, settings, swap_model

from service.app import create_app


def version_of(model_dir) -> str:
    return json.loads((model_dir / "metadata.json").read_text())["model_version"]


def test_admin_reload_disabled_without_api_key():
    with client(model_a()) as api:
        r = api.post("/v1/admin/reload", headers={"X-API-Key": "anything"})
        assert r.status_code == 404 and "GRU4REC_API_KEY" in r.json()["detail"]


def test_admin_reload_auth_and_swap(tmp_path):
    served = copy_model(model_a(), tmp_path / "served")
    with client(served, api_key="s3cret") as api:
        assert api.post("/v1/admin/reload").status_code == 401
        assert api.post("/v1/admin/reload", headers={"X-API-Key": ""}).status_code == 401
        assert api.post("/v1/admin/reload", headers={"X-API-Key": "wrong"}).status_code == 403
        same = api.post("/v1/admin/reload", headers={"X-API-Key": "s3cret"})
        assert same.status_code == 200
        va = version_of(model_a())
        assert same.json() == {"previous_version": va, "model_version": va, "changed": False}

        swap_model(model_b(), served)
        r = api.post("/v1/admin/reload", headers={"X-API-Key": "s3cret"})
        assert r.status_code == 200 and r.json()["changed"] is True
        assert api.get("/v1/model").json()["model_version"] == version_of(model_b())
        rec = api.post("/v1/recommend", json={"items": ["1095"], "k": 5}).json()
        assert rec["model_version"] == version_of(model_b()) and rec["unknown_items"] == []

        # a broken checkpoint is refused and the old model stays
        (served / "metadata.json").write_text("{not json")
        r = api.post("/v1/admin/reload", headers={"X-API-Key": "s3cret"})
        assert r.status_code == 409 and "still serving" in r.json()["detail"]
        assert api.get("/v1/model").json()["model_version"] == version_of(model_b())
        assert api.post("/v1/recommend", json={"items": ["1095"]}).status_code == 200
        text = api.get("/metrics").text
        assert 'gru4rec_model_reloads_total{result="failed"} 1.0' in text
        assert f'gru4rec_model_info{{version="{version_of(model_b())}"}} 1.0' in text
        assert f'gru4rec_model_info{{version="{version_of(model_a())}"}} 0.0' in text


@pytest.fixture
def live_server(tmp_path):
    """A real uvicorn server in a thread, serving a copy of model A that the test may replace."""
    served = copy_model(model_a(), tmp_path / "served")
    with running_server(create_app(settings(served, api_key="k", reload_poll_s=0.1))) as url:
        yield url, served


def test_reload_under_concurrent_requests(live_server):
    url, served = live_server
    catalogues = {
        version_of(m): set(json.loads((m / "metadata.json").read_text())["item_ids"]) for m in (model_a(), model_b())
    }
    stop = threading.Event()
    failures: list[str] = []
    versions: Counter[str] = Counter()

    def hammer(worker: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            n = 0
            while not stop.is_set():
                n += 1
                if n % 2:
                    r = http.post("/v1/recommend", json={"items": ["1031", "1032", "1002"], "k": 10})
                else:
                    r = http.post(f"/v1/sessions/w{worker}/events", json={"item_id": str(1030 + n % 30), "k": 10})
                if r.status_code != 200:
                    failures.append(f"{r.status_code}: {r.text}")
                    continue
                body = r.json()
                versions[body["model_version"]] += 1
                if not {x["item_id"] for x in body["items"]} <= catalogues[body["model_version"]]:
                    failures.append(f"items outside the catalogue of {body['model_version']}")

    threads = [threading.Thread(target=hammer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    try:
        with httpx.Client(base_url=url, timeout=30) as admin:

            def wait_for(version: str) -> None:
                deadline = time.monotonic() + 15
                while admin.get("/v1/model").json()["model_version"] != version:
                    assert time.monotonic() < deadline, f"{version} was not picked up"
                    time.sleep(0.05)

            for _ in range(2):
                time.sleep(0.3)
                swap_model(model_b(), served)  # picked up by the directory poller
                wait_for(version_of(model_b()))
                time.sleep(0.3)
                swap_model(model_a(), served)  # and now by the admin endpoint (or the poller, whichever is first)
                r = admin.post("/v1/admin/reload", headers={"X-API-Key": "k"})
                assert r.status_code == 200, r.text
                wait_for(version_of(model_a()))
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not failures, failures[:5]
    assert set(versions) == set(catalogues), versions
    assert sum(versions.values()) > 50
