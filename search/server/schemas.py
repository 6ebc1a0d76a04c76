"""What the HTTP API returns, as pydantic models: they validate the answers and make the
OpenAPI schema (errors included, as ErrorOut under each status a route can answer)."""

from typing import Any

from pydantic import BaseModel, Field


class ErrorOut(BaseModel):
    error: str = Field(description="One readable message that says what went wrong and what to do.")


def error_responses(*statuses: int) -> dict:
    """The OpenAPI `responses` of a route for these error statuses."""
    return {s: {"model": ErrorOut} for s in statuses}


class HitOut(BaseModel):
    rank: int
    id: int
    key: str
    score: float = Field(description="Cosine similarity (3CosAdd/3CosMul score for analogies; BM25 for keyword "
                                     "search; the reciprocal-rank-fusion score for hybrid search).")
    kind: str = Field(description="text, word, image or vector")
    text: str | None
    metadata: dict[str, Any]
    thumbnail: str | None = Field(description="URL path of the item's thumbnail (images), else null.")


class HitsOut(BaseModel):
    hits: list[HitOut]
    took_ms: float


class MemberOut(BaseModel):
    id: int
    key: str
    score: float = Field(description="Cosine similarity to the group's representative (1 for itself).")
    kind: str
    text: str | None
    metadata: dict[str, Any]
    thumbnail: str | None


class GroupOut(BaseModel):
    representative: str = Field(description="Key of the member nearest to the group's mean; items[0].")
    size: int
    min_score: float = Field(description="The lowest similarity of a pair that links the group.")
    items: list[MemberOut]


class DuplicatesOut(BaseModel):
    groups: list[GroupOut] = Field(description="Largest first; at most the server's max_dupes_groups.")
    total_groups: int
    items_in_groups: int
    took_ms: float


class IndexOut(BaseModel):
    name: str
    count: int
    encoder: str
    dim: int
    modalities: list[str]
    index_type: str
    generation: int
    kinds: dict[str, int] = Field(description="Items per kind (text, word, image, vector).")


class IndexDetailOut(IndexOut):
    directory: str | None = Field(None, description="Where the index lives; not shown by a --public server.")
    encoder_version: str | None = None
    runtime: str | None = Field(None, description="What ran the bundled network that made the vectors: onnx or torch.")
    metric: str
    faiss_factory: str | None = None
    search_params: dict[str, Any]
    vectors_generation: int | None = None
    size_bytes: int
    skipped_inputs: int
    created: str | None = None
    format_version: int | None = None


class IndexesOut(BaseModel):
    indexes: list[IndexOut]


class StepOut(BaseModel):
    t: float = Field(description="0 at A, 1 at B (the first step of a folded run).")
    first: int
    last: int
    id: int
    key: str
    score: float
    kind: str
    text: str | None
    metadata: dict[str, Any]
    thumbnail: str | None


class StepsOut(BaseModel):
    steps: list[StepOut]
    took_ms: float


class PointOut(BaseModel):
    id: int
    key: str
    x: float = Field(ge=0, le=1)
    y: float = Field(ge=0, le=1)
    kind: str
    text: str | None
    label: str = Field(description="A short label: the text, or the key of words and images.")
    thumbnail: str | None


class MapOut(BaseModel):
    method: str
    generation: int = Field(description="The store generation the map was computed from.")
    count: int = Field(description="Points on the map.")
    total: int = Field(description="Items that could be mapped (a larger index is sampled).")
    explained_variance: list[float] | None
    seconds: float
    points: list[PointOut]


class ItemOut(BaseModel):
    id: int
    key: str
    kind: str
    text: str | None
    metadata: dict[str, Any]
    thumbnail: str | None
