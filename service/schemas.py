"""Request and response bodies of the HTTP API (pydantic), with the examples shown in /docs.

Item ids are strings in the API; integers in requests are accepted and mean their decimal string.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from service.settings import ID_MAX_LENGTH, SCHEMA_MAX_ITEMS, SCHEMA_MAX_K, SESSION_ID_PATTERN


def _item_id(value: str | int) -> str:
    text = str(value)
    if len(text) > ID_MAX_LENGTH:
        raise ValueError(f"item ids are at most {ID_MAX_LENGTH} characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("item id is not valid Unicode (lone surrogate)") from None
    return text


ItemId = Annotated[
    Annotated[StrictStr, Field(min_length=1, max_length=ID_MAX_LENGTH)] | StrictInt,
    AfterValidator(_item_id),
    Field(description="an item id as in the training data (integers are read as their decimal string)"),
]
# The one rule for session ids, in request bodies and in URL paths alike.
SESSION_ID_RULE: dict[str, Any] = dict(
    min_length=1, max_length=128, pattern=SESSION_ID_PATTERN,
    description="the caller's session id: 1-128 printable ASCII characters, no spaces",
)
SessionId = Annotated[StrictStr, Field(**SESSION_ID_RULE)]


class TopKOptions(BaseModel):
    """What to return: how many, and which items may or may not appear."""

    model_config = ConfigDict(extra="forbid")

    k: StrictInt = Field(
        20, ge=1, le=SCHEMA_MAX_K,
        description="how many items to return (an integer; at most the service's GRU4REC_MAX_K and the catalogue size)",
    )
    exclude_seen: StrictBool = Field(
        False, description="leave out items the session has already clicked (for a stored session: its last "
        "GRU4REC_MAX_SESSION_CLICKS clicks, 200 by default)",
    )
    exclude: list[ItemId] = Field(
        default_factory=list, max_length=SCHEMA_MAX_ITEMS, description="block list; ids unknown to the model are ignored"
    )
    include: list[ItemId] | None = Field(
        None, max_length=SCHEMA_MAX_ITEMS,
        description="allow list: only these items may be returned; ids unknown to the model are ignored",
    )
    exact: StrictBool = Field(
        False, description="score every item even where the service finds the top-k with an approximate index "
        "(slower on large catalogues; for comparisons and tests)",
    )


class RecommendRequest(TopKOptions):
    """Stateless with `items` only; stateful with `session_id` (then `items` may be left out)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"items": ["214536502", "214536500", "214836765"], "k": 5},
                {"session_id": "s-42", "items": ["214536502", 214536500], "k": 10, "exclude_seen": True},
                {"session_id": "s-42", "k": 10, "exclude": ["214577561"]},
            ]
        },
    )

    session_id: SessionId | None = Field(None, description="keep this session's state in the service between requests")
    items: list[ItemId] | None = Field(
        None, max_length=SCHEMA_MAX_ITEMS,
        description="the session's clicks so far, oldest first; with a known session_id only the new tail is "
        "processed, and it may be left out to ask again",
    )


class EventRequest(TopKOptions):
    """One click of a session."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"item_id": "214536502", "k": 5}, {"item_id": 214536500, "k": 10, "exclude_seen": True}]},
    )

    item_id: ItemId


class RecommendedItem(BaseModel):
    item_id: str = Field(description="item id from the model's catalogue")
    score: float = Field(
        description="model score (higher is better); for popularity answers, the item's share of training clicks"
    )


class RecommendResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [{"item_id": "214536502", "score": 7.31}, {"item_id": "214840762", "score": 6.02}],
                    "model_version": "20240101T000000.000000Z",
                    "unknown_items": ["999999999"],
                    "source": "model",
                }
            ]
        }
    )

    items: list[RecommendedItem] = Field(description="best first; fewer than k when filters leave fewer items")
    model_version: str
    unknown_items: list[str] = Field(description="clicked ids the model does not know; they did not change the session state")
    source: str = Field(description="'model', or 'popularity' when the session has no item the model knows")


class RetrievalIndex(BaseModel):
    type: str = Field(description="index layout (faiss inverted file, 8-bit codes, over item vectors with their bias)")
    lists: int = Field(description="cells of the inverted file")
    nprobe: int = Field(description="cells searched per request")
    candidates: int = Field(description="candidates re-scored exactly per request (at least k, plus excluded items)")
    build_s: float | None = Field(description="seconds the build took; null when loaded from the cache")
    source: str = Field(description="built, or the cache file it was loaded from")


class Retrieval(BaseModel):
    mode: str = Field(description="'exact' (every item scored) or 'index' (approximate candidates, re-scored exactly)")
    reason: str = Field(description="why this mode")
    index: RetrievalIndex | None = Field(description="the index in use; null for exact scoring")


class ModelInfo(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model_version": "20240101T000000.000000Z", "n_items": 37483, "created": "20240101T000000.000000Z",
                    "format_version": 1, "hyperparameters": {"loss": "cross-entropy", "layers": [100]},
                    "training": {"events": 1000000, "sessions": 250000, "items": 37483, "epochs": [{"epoch": 1, "loss": 7.1}]},
                    "libraries": {"torch": "2.13.0"}, "loaded_at": 1704067200.0,
                    "retrieval": {"mode": "exact", "reason": "exact (catalogue under 200000 items)", "index": None},
                }
            ]
        }
    )

    model_version: str
    n_items: int
    created: str | None = None
    format_version: int | None = None
    hyperparameters: dict[str, Any]
    training: dict[str, Any]
    libraries: dict[str, Any]
    loaded_at: float = Field(description="Unix time this process loaded the model")
    retrieval: Retrieval = Field(description="how the top-k items are found")


class ReloadResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"previous_version": "20240101T000000.000000Z", "model_version": "20240102T000000.000000Z", "changed": True}
            ]
        }
    )

    previous_version: str
    model_version: str
    changed: bool


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Readiness(BaseModel):
    status: str = Field(examples=["ready"])
    model_version: str | None = None
    session_store: str = Field(examples=["memory"])


class ErrorMessage(BaseModel):
    detail: Any = Field(description="a message, or a list of {loc, msg, type} for invalid fields")


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorMessage, "description": "malformed request"},
    413: {"model": ErrorMessage, "description": "request body too large"},
    422: {"model": ErrorMessage, "description": "invalid field or over a limit"},
}
