"""The grid filter: a plain dataclass, read from a query string by `grid_filter_from_params`, so the
pages, the JSON API and scripts all speak the same filter language (store/queries.py runs it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

STATUSES = ("active", "excluded", "duplicate", "all")
TAG_STATUSES = ("suggested", "accepted", "rejected")
SORTS = ("date", "confidence", "score")
MAX_PER_PAGE = 200


class QueryError(ValueError):
    """A filter or sort the store does not understand (the message names the field)."""


class NotFound(LookupError):
    pass


@dataclass
class GridFilter:
    """What a curator asks the grid for. Tag lists: all must match (and), any (or), none (not)."""

    tags_all: list[str] = field(default_factory=list)
    tags_any: list[str] = field(default_factory=list)
    tags_none: list[str] = field(default_factory=list)
    tag_source: str | None = None  # model | human
    tag_status: str | None = None  # suggested | accepted | rejected; default: anything but rejected
    scores: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    face: bool | None = None
    status: str = "active"  # active | excluded | duplicate | all
    unreviewed: bool = False
    sort: str = "date"  # date | confidence | score:<name>
    descending: bool = True
    page: int = 1
    per_page: int = 48

    def to_params(self) -> dict[str, str]:
        """The query-string form (inverse of grid_filter_from_params), without defaults."""
        out: dict[str, str] = {}
        for name in ("tags_all", "tags_any", "tags_none"):
            if getattr(self, name):
                out[name] = ", ".join(getattr(self, name))
        for name in ("tag_source", "tag_status"):
            if getattr(self, name):
                out[name] = getattr(self, name)
        for score, (low, high) in self.scores.items():
            if low is not None:
                out[f"min_{score}"] = str(low)
            if high is not None:
                out[f"max_{score}"] = str(high)
        if self.face is not None:
            out["face"] = "yes" if self.face else "no"
        if self.status != "active":
            out["status"] = self.status
        if self.unreviewed:
            out["unreviewed"] = "1"
        if self.sort != "date":
            out["sort"] = self.sort
        if not self.descending:
            out["order"] = "asc"
        if self.per_page != 48:
            out["per_page"] = str(self.per_page)
        return out


def _split_tags(value: str | None) -> list[str]:
    return [t.strip() for t in (value or "").split(",") if t.strip()]


def _number(params: Mapping[str, str], key: str) -> float | None:
    raw = (params.get(key) or "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise QueryError(f"{key}: not a number: {raw!r}") from None


def grid_filter_from_params(params: Mapping[str, str]) -> GridFilter:
    """Read a GridFilter from query parameters (tags comma-separated, min_<score>/max_<score>)."""
    f = GridFilter(
        tags_all=_split_tags(params.get("tags_all")),
        tags_any=_split_tags(params.get("tags_any")),
        tags_none=_split_tags(params.get("tags_none")),
        tag_source=params.get("tag_source") or None,
        tag_status=params.get("tag_status") or None,
        status=params.get("status") or "active",
        unreviewed=(params.get("unreviewed") or "") in ("1", "true", "yes", "on"),
        sort=params.get("sort") or "date",
        descending=(params.get("order") or "desc") != "asc",
    )
    if f.tag_source not in (None, "model", "human"):
        raise QueryError(f"tag_source: expected model or human, got {f.tag_source!r}")
    if f.tag_status not in (None, *TAG_STATUSES):
        raise QueryError(f"tag_status: expected one of {', '.join(TAG_STATUSES)}, got {f.tag_status!r}")
    if f.status not in STATUSES:
        raise QueryError(f"status: expected one of {', '.join(STATUSES)}, got {f.status!r}")
    if f.sort.split(":", 1)[0] not in SORTS or (f.sort.startswith("score") and ":" not in f.sort):
        raise QueryError(f"sort: expected date, confidence or score:<name>, got {f.sort!r}")
    face = (params.get("face") or "").lower()
    if face not in ("", "any", "yes", "no"):
        raise QueryError(f"face: expected yes, no or any, got {face!r}")
    f.face = {"yes": True, "no": False}.get(face)
    for key in params:
        if key.startswith(("min_", "max_")) and params.get(key, "").strip():
            name = key[4:]
            low, high = f.scores.get(name, (None, None))
            value = _number(params, key)
            f.scores[name] = (value, high) if key.startswith("min_") else (low, value)
    for key, default in (("page", 1), ("per_page", 48)):
        raw = params.get(key) or str(default)
        if not raw.isdigit() or int(raw) < 1:
            raise QueryError(f"{key}: expected a positive whole number, got {raw!r}")
        setattr(f, key, min(int(raw), MAX_PER_PAGE) if key == "per_page" else int(raw))
    return f
