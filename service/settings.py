"""Service settings, read from GRU4REC_* environment variables so every uvicorn worker sees the same."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Hard ceilings that are part of the API contract (and of the OpenAPI schema); the settings below
# can only tighten them.
ID_MAX_LENGTH = 256
SESSION_ID_PATTERN = r"^[\x21-\x7e]{1,128}$"  # printable ASCII, no spaces: safe in URLs and keys
SCHEMA_MAX_ITEMS = 10_000
SCHEMA_MAX_K = 10_000


class Settings(BaseSettings):
    """Everything configurable about `gru4rec serve`; env names are GRU4REC_ + the field name."""

    model_config = SettingsConfigDict(env_prefix="GRU4REC_", extra="ignore", frozen=True)

    model_dir: Path | None = Field(None, description="checkpoint directory written by `gru4rec train`")
    redis_url: str | None = Field(None, description="redis://host:port/db; sessions live in this process when unset")
    redis_prefix: str = Field("gru4rec:", description="prefix of every key the service writes to Redis")
    api_key: SecretStr | None = Field(None, description="enables POST /v1/admin/reload for callers sending it as X-API-Key")
    session_ttl_s: float = Field(1800.0, gt=0, description="a session not touched for this long is forgotten")
    max_sessions: int = Field(100_000, ge=1, description="in-process store: most sessions kept (LRU beyond)")
    max_session_memory_mb: float = Field(256.0, gt=0, description="in-process store: memory bound (LRU beyond)")
    max_session_clicks: int = Field(200, ge=1, description="clicks remembered per session (for rebuilds after a model change)")
    max_items_per_request: int = Field(1000, ge=1, le=SCHEMA_MAX_ITEMS)
    max_k: int = Field(1000, ge=1, le=SCHEMA_MAX_K)
    max_body_bytes: int = Field(1_048_576, ge=1024, description="larger request bodies get 413")
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads per worker (default: 1)")
    reload_poll_s: float = Field(10.0, ge=0, description="how often to look for a new checkpoint; 0 disables")
    warmup_steps: int = Field(3, ge=0, description="dummy requests run at start-up so the first real one is fast")
    body_timeout_s: float = Field(10.0, gt=0, description="a request body not received within this time gets 408")
    switch_interval_ms: float = Field(
        0.5, gt=0, le=50, description="Python's thread switch interval: how long the batcher may wait for the GIL"
    )
    workers: int = Field(1, ge=1, description="worker processes of this server (set by `gru4rec serve --workers`)")
    model_thread: bool | None = Field(
        None, description="run the batched model work in a thread beside the event loop (default: with one worker "
        "process; with several, on each worker's event loop)",
    )
    batch_max_size: int = Field(64, ge=1, le=4096, description="most requests served by one batched model call")
    batch_wait_ms: float = Field(
        1.0, ge=0, le=100,
        description="longest wait for other requests to batch with, while requests arrive that often (model thread only)",
    )
    retrieval: Literal["auto", "index", "exact"] = Field(
        "auto", description="top-k by an approximate index (index), by scoring every item (exact), or auto: "
        "an index from GRU4REC_INDEX_MIN_ITEMS items on",
    )
    index_min_items: int = Field(200_000, ge=2, description="catalogue size from which `auto` uses the index")
    index_nprobe: int | None = Field(
        None, ge=1, description="index cells searched per request (more: better recall, slower); default an eighth of them"
    )
    index_candidates: int = Field(
        500, ge=1, le=100_000, description="candidates per request re-scored exactly (at least k, plus excluded items)"
    )
    index_cache_dir: Path | None = Field(
        None, description="where indexes are cached when the model directory is read-only (default ~/.cache/gru4rec/indexes)"
    )

    @field_validator("redis_url", "api_key", "index_cache_dir", "index_nprobe", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """An exported-but-empty variable means 'not configured', not 'configured as empty'."""
        return None if value == "" else value

    @property
    def effective_model_thread(self) -> bool:
        """A thread of its own for the model work gives one worker a second core; with several workers
        the cores are taken, and the thread would only add hand-overs."""
        return self.model_thread if self.model_thread is not None else self.workers == 1

    @property
    def effective_torch_threads(self) -> int:
        """One thread per worker unless told otherwise: batch-1 inference gains little from more,
        and several workers (or the threadpool running requests side by side) would oversubscribe."""
        return self.torch_threads or 1
