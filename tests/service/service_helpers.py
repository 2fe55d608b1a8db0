"""Shared by the service tests: tiny real models (trained once per test run) and app/Redis helpers."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

REDIS_URL = os.environ.get("GRU4REC_TEST_REDIS_URL", "redis://localhost:6379/15")

_ROOT = Path(tempfile.mkdtemp(prefix="gru4rec-service-tests-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


def write_sessions(path: Path, first_item: int, n_items: int, n_sessions: int = 300, seed: int = 0) -> Path:
    """A small click log in the prepared TSV format: sessions that walk mostly to the next item id."""
    rng = np.random.default_rng(seed)
    rows = ["SessionId\tItemId\tTime"]
    t = 1_600_000_000.0
    for s in range(n_sessions):
        item = int(rng.integers(n_items))
        for _ in range(int(rng.integers(2, 8))):
            rows.append(f"{s}\t{first_item + item}\t{t:.0f}")
            t += 1.0
            item = (item + int(rng.choice([1, 1, 2, 0]))) % n_items
    path.write_text("\n".join(rows) + "\n")
    return path


def _train(name: str, first_item: int, n_items: int, seed: int) -> Path:
    from gru4rec.training.params import load_params
    from gru4rec.training.run import train

    data = write_sessions(_ROOT / f"{name}.tsv", first_item, n_items, seed=seed)
    params = load_params(None, ["layers=[16]", "n_sample=16", "n_epochs=1", "batch_size=8", "sample_cache_size=16000"])
    out = _ROOT / name
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is fastest, and immune to a busy machine
    try:
        train(data, out, params, device="cpu", seed=seed)
    finally:
        torch.set_num_threads(threads)
        # the trainer turns on flush-to-zero for the process's main thread and leaves it on;
        # hypothesis (schemathesis) refuses to generate floats in that state
        torch.set_flush_denormal(False)
    return out


MODEL_A_DIR = _ROOT / "model-a"  # known before model_a() trains it (for apps built at import time)


@functools.cache
def model_a() -> Path:
    """Items '1000'..'1059'. Trained once per test process; copy it before changing anything."""
    return _train(MODEL_A_DIR.name, 1000, 60, seed=1)


@functools.cache
def model_b() -> Path:
    """Another version with items '1030'..'1099' (half shared with model A)."""
    return _train("model-b", 1030, 70, seed=2)


@functools.cache
def model_big() -> Path:
    """A 20,000-item model with random (clustered) item vectors: large enough that the top-k index
    returns only some of the catalogue. Not trained: its ranking need not mean anything."""
    return synthetic_model(_ROOT / "model-big", 20_000, seed=5)


def synthetic_model(out: Path, n_items: int, layers: tuple[int, ...] = (16,), seed: int = 0) -> Path:
    """A model directory with seeded random weights: item vectors around 50 centres, varied biases."""
    import torch

    from gru4rec.data.sessions import ItemMap
    from gru4rec.model.checkpoint import save_checkpoint
    from gru4rec.model.config import ModelConfig
    from gru4rec.model.network import GRU4Rec

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = GRU4Rec(n_items, ModelConfig(layers=layers))
    centres = rng.normal(size=(50, layers[-1])).astype(np.float32)
    vectors = centres[rng.integers(50, size=n_items)] + 0.5 * rng.normal(size=(n_items, layers[-1])).astype(np.float32)
    with torch.no_grad():
        model.Wy.weight.copy_(torch.from_numpy(vectors * rng.uniform(0.2, 1.5, size=(n_items, 1)).astype(np.float32)))
        model.By.weight.copy_(torch.from_numpy(rng.normal(scale=0.5, size=(n_items, 1)).astype(np.float32)))
    item_map = ItemMap.from_ids([f"i{j}" for j in range(n_items)])
    counts = rng.integers(1, 1000, size=n_items)
    save_checkpoint(out, model, item_map, counts, {"events": int(counts.sum())})
    return out


def copy_model(src: Path, dst: Path) -> Path:
    """A copy of the model directory as written by training (without a cached top-k index)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("serving-index-*"))
    return dst


def swap_model(src: Path, dst: Path) -> None:
    """Replace the directory `dst` by a copy of `src` the way the trainer does: atomically."""
    tmp = dst.with_name(f".{dst.name}.incoming")
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("serving-index-*"))
    old = dst.with_name(f".{dst.name}.old")
    os.replace(dst, old)
    os.replace(tmp, dst)
    shutil.rmtree(old)


def settings(model_dir: Path, **overrides):
    from service.settings import Settings

    values = {"model_dir": model_dir, "reload_poll_s": 0, "warmup_steps": 1, **overrides}
    return Settings(**values)


@contextmanager
def client(model_dir: Path, **overrides) -> Iterator:
    """A TestClient around a fresh app (lifespan run: model loaded, store created)."""
    import warnings

    with warnings.catch_warnings():  # starlette would rather have httpx2; httpx is what the project uses
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
        from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(settings(model_dir, **overrides))) as c:
        yield c


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(app) -> Iterator[str]:
    """A real uvicorn server in a thread serving `app`; yields its base URL."""
    import threading
    import time

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def redis_client():
    """A client for the test Redis; FAILS the test (no skip) when Redis is not running."""
    import redis

    r = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        r.ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"Redis is required for the service tests and is not reachable at {REDIS_URL} ({exc}); "
            "run `make redis` or set GRU4REC_TEST_REDIS_URL"
        )
    return r


def top_ids(response) -> list[str]:
    return [x["item_id"] for x in response.json()["items"]]


def top_scores(response) -> list[float]:
    return [x["score"] for x in response.json()["items"]]
