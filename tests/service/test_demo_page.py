"""The demo page at `/` and its `GET /v1/items` listing: API checks, then the page end to end in headless Chromium.

The browser test needs /usr/bin/chromium and /usr/bin/chromedriver (`make browser` installs them) and
FAILS without them: it is the only check that the page's JS works against the real service.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from service_helpers import client, model_a, settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
STATIC = REPO / "service" / "static"
WAIT_S = 15


@pytest.fixture(scope="module")
def catalogue() -> dict:
    meta = json.loads((model_a() / "metadata.json").read_text())
    counts = np.asarray(meta["item_counts"])
    order = np.lexsort((np.arange(len(counts)), -counts))
    return {
        "ids": meta["item_ids"],
        "version": meta["model_version"],
        "ranked": [(str(meta["item_ids"][i]), int(counts[i])) for i in order],
    }


@pytest.fixture(scope="module")
def api():
    with client(model_a()) as c:
        yield c


# -- GET /v1/items -------------------------------------------------------------------------------------
def test_items_most_popular_first(api, catalogue):
    r = api.get("/v1/items")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == catalogue["version"]
    assert body["matches"] == 60
    assert [(x["item_id"], x["count"]) for x in body["items"]] == catalogue["ranked"][:20]  # default limit 20
    assert [x["item_id"] for x in api.get("/v1/items", params={"limit": 1}).json()["items"]] == [catalogue["ranked"][0][0]]
    everything = api.get("/v1/items", params={"limit": 100}).json()["items"]
    assert [(x["item_id"], x["count"]) for x in everything] == catalogue["ranked"]  # the whole catalogue (60 < 100)


def test_items_query_filters_by_substring(api, catalogue):
    body = api.get("/v1/items", params={"query": "105", "limit": 100}).json()
    expected = [(i, c) for i, c in catalogue["ranked"] if "105" in i]
    assert len(expected) == 10
    assert [(x["item_id"], x["count"]) for x in body["items"]] == expected and body["matches"] == 10
    limited = api.get("/v1/items", params={"query": "105", "limit": 3}).json()
    assert [x["item_id"] for x in limited["items"]] == [i for i, _ in expected[:3]] and limited["matches"] == 10
    assert api.get("/v1/items", params={"query": "no such item"}).json()["items"] == []
    assert api.get("/v1/items", params={"query": ""}).json()["matches"] == 60  # empty query: everything


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 101}, {"limit": -1}, {"limit": "ten"}, {"limit": 2.5}, {"query": "x" * 257}],
)
def test_items_invalid_parameters_are_422(api, params):
    r = api.get("/v1/items", params=params)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][0] == "query"


def test_openapi_documents_items_but_not_the_page(api):
    schema = api.get("/openapi.json").json()
    assert "/" not in schema["paths"] and not any(p.startswith("/static") for p in schema["paths"])
    op = schema["paths"]["/v1/items"]["get"]
    params = {p["name"]: p for p in op["parameters"]}
    assert params["limit"]["schema"]["minimum"] == 1 and params["limit"]["schema"]["maximum"] == 100
    assert params["query"]["required"] is False
    assert "422" in op["responses"] and "200" in op["responses"]


def test_page_and_assets_are_served_self_contained(api):
    page = api.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/static/demo.js" in page.text and "/static/demo.css" in page.text
    for name, kind in (("demo.js", "javascript"), ("demo.css", "text/css")):
        asset = api.get(f"/static/{name}")
        assert asset.status_code == 200 and kind in asset.headers["content-type"]
    for name in ("index.html", "..%2Fapp.py", "nope.js"):
        assert api.get(f"/static/{name}").status_code == 404
    for file in STATIC.iterdir():  # no CDN or any other outside resource; data only ever as text
        text = file.read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, file.name
    assert "innerHTML" not in (STATIC / "demo.js").read_text()


# -- the page in a real browser ----------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    """The real app under uvicorn on a free localhost port, in a background thread."""
    import uvicorn

    from service.app import create_app

    port = _free_port()
    config = uvicorn.Config(create_app(settings(model_a())), host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, name="demo-uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not srv.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                pytest.fail("uvicorn did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)


@pytest.fixture
def browser(tmp_path):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: run `make browser` (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1200,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.set_page_load_timeout(20)
        driver.set_script_timeout(20)
        yield driver
    finally:
        driver.quit()


def _ids(driver, list_id: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [b.get_attribute("data-item-id") for b in driver.find_elements(By.CSS_SELECTOR, f"#{list_id} button.item")]


def _session_known(base: str, session_id: str) -> bool:
    """Asks without creating: POST /v1/recommend with only a session_id is 404 for an unknown session."""
    req = urllib.request.Request(
        f"{base}/v1/recommend", data=json.dumps({"session_id": session_id, "k": 1}).encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=5):
            return True
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False
        raise


def test_click_through_a_session_in_the_browser(server, browser, catalogue):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT_S)
    known = set(map(str, catalogue["ids"]))
    k = 10
    browser.get(server + "/")

    # the popular list, most clicked first, and the model version
    wait.until(lambda d: d.find_element(By.ID, "items").get_attribute("data-loaded") == "1")
    popular = _ids(browser, "items")
    assert popular == [i for i, _ in catalogue["ranked"][:20]]
    wait.until(lambda d: d.find_element(By.ID, "n-items").text == "60")
    assert browser.find_element(By.ID, "model-version").text == catalogue["version"]
    session_id = browser.find_element(By.ID, "session-id").text
    assert session_id.startswith("demo-")

    # first click: k recommendations, all from the catalogue
    first = popular[3]
    browser.find_element(By.CSS_SELECTOR, f'#items button[data-item-id="{first}"]').click()
    wait.until(lambda d: d.find_element(By.ID, "recs").get_attribute("data-clicks") == "1")
    recs1 = _ids(browser, "recs")
    scores1 = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#recs .score")]
    assert len(recs1) == k and set(recs1) <= known and first not in recs1  # the page asks with exclude_seen
    assert [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#clicks li")] == [first]
    assert _session_known(server, session_id)

    # click a recommendation: two clicks in the session, new recommendations
    second = recs1[0]
    browser.find_element(By.CSS_SELECTOR, f'#recs button[data-item-id="{second}"]').click()
    wait.until(lambda d: d.find_element(By.ID, "recs").get_attribute("data-clicks") == "2")
    assert browser.find_element(By.ID, "click-count").text == "2"
    assert [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#clicks li")] == [first, second]
    recs2 = _ids(browser, "recs")
    scores2 = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#recs .score")]
    assert len(recs2) == k and set(recs2) <= known and second not in recs2 and first not in recs2
    assert (recs2, scores2) != (recs1, scores1)

    # search by substring; what is typed is shown as text, never parsed as HTML
    box = browser.find_element(By.ID, "search")
    box.send_keys("105")
    wait.until(lambda d: d.find_element(By.ID, "items").get_attribute("data-query") == "105")
    assert _ids(browser, "items") == [i for i, _ in catalogue["ranked"] if "105" in i]
    box.clear()
    box.send_keys("<b>x</b>")
    wait.until(lambda d: d.find_element(By.ID, "items").get_attribute("data-query") == "<b>x</b>")
    assert _ids(browser, "items") == []
    assert "<b>x</b>" in browser.find_element(By.ID, "items-title").text
    assert browser.find_elements(By.CSS_SELECTOR, "#items-title b") == []

    # new session: empty on the page, forgotten by the service
    browser.find_element(By.ID, "new-session").click()
    wait.until(lambda d: d.find_element(By.ID, "session-id").text != session_id)
    assert browser.find_element(By.ID, "click-count").text == "0"
    assert browser.find_elements(By.CSS_SELECTOR, "#clicks li") == []
    assert _ids(browser, "recs") == []
    WebDriverWait(browser, WAIT_S).until(lambda d: not _session_known(server, session_id))
    assert not browser.find_element(By.ID, "error").is_displayed()
