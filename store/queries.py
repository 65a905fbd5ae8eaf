"""Read queries shared by the dashboard and the CLI: the member grid, one member, the tag table, charts.

The grid filter (store/grid_filter.py) is re-exported here: callers read `queries.GridFilter`."""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy import Select, bindparam, case, exists, func, not_, or_, select
from sqlalchemy.orm import Session

from store.grid_filter import (  # noqa: F401
    MAX_PER_PAGE,
    SORTS,
    STATUSES,
    TAG_STATUSES,
    GridFilter,
    NotFound,
    QueryError,
    grid_filter_from_params,
)
from store.models import Artifact, AuditEntry, Caption, Dataset, Image, Member, Score, Tag

# a filter condition that matches at most this many rows becomes an IN list; more, a per-image EXISTS probe
FEW_ROWS = 3000
# grid totals above this are shown as "10,000+" (counting every match of a common tag costs too much)
COUNT_CAP = 10_000

def dataset_id(session: Session, name: str) -> int:
    found = session.scalar(select(Dataset.id).where(Dataset.name == name))
    if found is None:
        raise NotFound(f"dataset {name!r} not found")
    return found


def list_datasets(session: Session) -> list[dict[str, Any]]:
    counts = dict(session.execute(select(Member.dataset_id, func.count()).group_by(Member.dataset_id)).all())
    return [{"name": d.name, "id": d.id, "members": counts.get(d.id, 0), "created_at": d.created_at}
            for d in session.scalars(select(Dataset).order_by(Dataset.name))]


def _tag_match(f: GridFilter):
    """Conditions on a Tag row that make it count as a match for this filter."""
    conds = []
    if f.tag_source:
        conds.append(Tag.source.like(f"{f.tag_source}:%"))
    conds.append(Tag.status == f.tag_status if f.tag_status else Tag.status != "rejected")
    return conds


def _has_face():
    faces_score = select(Score.member_id).where(Score.name == "faces", Score.value > 0)
    found = Artifact.meta["faces"].as_string()
    aligned = select(Artifact.image_id).where(
        Artifact.step == "align", found.is_not(None), found.not_in(["[]", "0", "null", ""]))
    return or_(Member.id.in_(faces_score), Member.image_id.in_(aligned))


def _semi(session: Session, member_col, conds: list):
    """Members with a matching row: an IN (subquery) when few rows match — built once, cheap — and
    a correlated EXISTS when many do, so the page query walks members in order and stops early."""
    sub = select(member_col).where(*conds)
    few = session.scalar(select(func.count()).select_from(sub.limit(FEW_ROWS + 1).subquery())) <= FEW_ROWS
    return Member.id.in_(sub) if few else exists(select(1).where(member_col == Member.id, *conds))


def member_conditions(session: Session, dataset: int, f: GridFilter) -> list:
    """WHERE clauses on Member for a dataset and a filter (used by the grid and bulk edits)."""
    conds = [Member.dataset_id == dataset]
    if f.status != "all":
        conds.append(Member.status == f.status)
    match = _tag_match(f)
    for text in f.tags_all:
        conds.append(_semi(session, Tag.member_id, [Tag.text == text, *match]))
    if f.tags_any:
        conds.append(_semi(session, Tag.member_id, [Tag.text.in_(f.tags_any), *match]))
    if f.tags_none:
        conds.append(not_(_semi(session, Tag.member_id, [Tag.text.in_(f.tags_none), *match])))
    if not (f.tags_all or f.tags_any) and (f.tag_source or f.tag_status):
        conds.append(_semi(session, Tag.member_id, match))
    for name, (low, high) in f.scores.items():
        score = [Score.name == name]
        if low is not None:
            score.append(Score.value >= low)
        if high is not None:
            score.append(Score.value <= high)
        conds.append(_semi(session, Score.member_id, score))
    if f.face is not None:
        conds.append(_has_face() if f.face else not_(_has_face()))
    if f.unreviewed:
        conds.append(Member.reviewed_at.is_(None))
    return conds


def matching_member_ids(session: Session, dataset: int, f: GridFilter) -> list[int]:
    """Every member id the filter matches (no paging): what a bulk edit 'over the filter' covers."""
    return list(session.scalars(select(Member.id).where(*member_conditions(session, dataset, f)).order_by(Member.id)))


def _ordered(query: Select, f: GridFilter) -> Select:
    direction = (lambda c: c.desc()) if f.descending else (lambda c: c.asc())
    if f.sort == "confidence":
        texts = f.tags_all + f.tags_any
        conf = select(func.max(Tag.confidence) if texts else func.min(Tag.confidence)).where(
            Tag.member_id == Member.id, *(
                [Tag.text.in_(texts)] if texts else [Tag.status == "suggested"])).scalar_subquery()
        return query.order_by(conf.is_(None), direction(conf), direction(Member.id))
    # ids grow with insertion, so id order is date-added order and uses the primary key
    return query.order_by(direction(Member.id))


def _sorted_slice(session: Session, query: Select, conds: list, f: GridFilter, offset: int, limit: int) -> list:
    """Rows `offset`…`offset+limit` of the filtered list (`query` filtered by `conds`) in the filter's order.

    Sorting by a score walks the scores of that name in value order (the (name, value) index)
    and keeps those whose member passes the filter, so the database never sorts every image;
    members without the score follow, by id.
    """
    if not f.sort.startswith("score:"):
        return session.execute(_ordered(query, f).limit(limit).offset(offset)).all()
    name = f.sort[6:]
    direction = (lambda c: c.desc()) if f.descending else (lambda c: c.asc())
    passes = select(Member.id).where(Member.id == Score.member_id, *conds).exists()
    scored = select(Score.member_id).where(Score.name == name, passes)
    ids = list(session.scalars(scored.order_by(direction(Score.value), direction(Score.member_id))
                               .limit(limit).offset(offset)))
    by_id = {row.id: row for row in session.execute(query.where(Member.id.in_(ids)))} if ids else {}
    rows = [by_id[i] for i in ids]
    if len(rows) == limit:
        return rows
    n_scored = offset + len(rows) if rows else session.scalar(select(func.count()).select_from(scored.subquery()))
    has_score = select(Score.id).where(Score.member_id == Member.id, Score.name == name).exists()
    unscored = query.where(~has_score).order_by(direction(Member.id))
    return rows + session.execute(unscored.limit(limit - len(rows)).offset(max(0, offset - n_scored))).all()


_SCORES = Score.__table__.c
_PAGE_SCORES = select(_SCORES.member_id, _SCORES.name, _SCORES.value).where(  # Core: no ORM row loading
    _SCORES.member_id.in_(bindparam("ids", expanding=True)))


def _thumb_of(row) -> tuple[str, str]:
    return (row.art_sha, row.art_ext) if row.art_sha else (row.img_sha, row.img_ext)


def grid_page(session: Session, dataset: int, f: GridFilter) -> dict[str, Any]:
    """One page of members with their thumbnail hash, caption and chosen scores, plus the total."""
    conds = member_conditions(session, dataset, f)
    simple = not (f.tags_all or f.tags_any or f.tags_none or f.tag_source or f.tag_status or f.scores
                  or f.face is not None)
    capped = False
    if simple:  # status and reviewed only: an exact count is cheap
        total = session.scalar(select(func.count()).select_from(Member).where(*conds))
    else:
        total = session.scalar(select(func.count()).select_from(
            select(Member.id).where(*conds).limit(COUNT_CAP + 1).subquery()))
        capped = total > COUNT_CAP
        total = min(total, COUNT_CAP)
    query = (
        select(Member.id, Member.status, Member.caption, Member.revision, Member.reviewed_at,
               Member.source_path, Image.sha256.label("img_sha"), Image.ext.label("img_ext"),
               Artifact.sha256.label("art_sha"), Artifact.ext.label("art_ext"))
        .join(Image, Image.id == Member.image_id)
        .outerjoin(Artifact, Artifact.id == Member.current_artifact_id)
        .where(*conds)
    )
    rows = _sorted_slice(session, query, conds, f, (f.page - 1) * f.per_page, f.per_page)
    ids = [r.id for r in rows]
    scores: dict[int, dict[str, float]] = {}
    for member_id, name, value in session.connection().execute(_PAGE_SCORES, {"ids": ids}) if ids else ():
        scores.setdefault(member_id, {})[name] = value
    items = []
    for position, r in enumerate(rows):
        sha, ext = _thumb_of(r)
        items.append({"id": r.id, "index": (f.page - 1) * f.per_page + position, "status": r.status,
                      "caption": r.caption, "revision": r.revision, "reviewed": r.reviewed_at is not None,
                      "source_path": r.source_path, "sha256": sha, "ext": ext,
                      "scores": scores.get(r.id, {})})
    pages = max(1, -(-total // f.per_page))
    if capped:  # more pages exist than we counted: keep "next" while pages are full
        pages = max(pages, f.page + (len(items) == f.per_page))
    return {"total": total, "capped": capped, "page": f.page, "pages": pages, "per_page": f.per_page, "items": items,
            "filter": asdict(f)}


def sorted_ids(session: Session, dataset: int, f: GridFilter, limit: int) -> list[int]:
    """The first `limit` member ids of the filtered list in the grid's order (a review snapshot)."""
    conds = member_conditions(session, dataset, f)
    return [row.id for row in _sorted_slice(session, select(Member.id).where(*conds), conds, f, 0, limit)]


def neighbour(session: Session, dataset: int, f: GridFilter, index: int) -> int | None:
    """The member id at position `index` of the filtered, sorted list (for next/previous)."""
    if index < 0:
        return None
    conds = member_conditions(session, dataset, f)
    rows = _sorted_slice(session, select(Member.id).where(*conds), conds, f, index, 1)
    return rows[0].id if rows else None


def tag_rows(session: Session, member_id: int) -> list[dict[str, Any]]:
    tags = session.scalars(select(Tag).where(Tag.member_id == member_id)
                           .order_by(Tag.position, Tag.confidence.desc(), Tag.text))
    return [{"text": t.text, "source": t.source, "category": t.category, "confidence": t.confidence,
             "status": t.status, "position": t.position, "updated_by": t.updated_by} for t in tags]


def member_state(session: Session, member_id: int) -> dict[str, Any]:
    """The editable state of one member: what a conflict reply and every write reply carry."""
    m = session.get(Member, member_id, populate_existing=True)
    if m is None:
        raise NotFound(f"member {member_id} not found")
    last = session.execute(select(AuditEntry.user, AuditEntry.action, AuditEntry.at)
                           .where(AuditEntry.target == f"member:{member_id}")
                           .order_by(AuditEntry.id.desc()).limit(1)).first()
    return {"id": m.id, "dataset_id": m.dataset_id, "revision": m.revision, "status": m.status,
            "excluded_reason": m.excluded_reason, "caption": m.caption, "caption_source": m.caption_source,
            "reviewed_at": m.reviewed_at, "reviewed_by": m.reviewed_by, "tags": tag_rows(session, m.id),
            "last_change": dict(last._mapping) if last else None}


def member_detail(session: Session, member_id: int) -> dict[str, Any]:
    """Everything the image view shows: state, original, derived artifacts with lineage, scores."""
    state = member_state(session, member_id)
    m = session.get(Member, member_id)
    image = session.get(Image, m.image_id)
    artifacts = session.scalars(select(Artifact).where(Artifact.image_id == m.image_id).order_by(Artifact.id))
    state["source_path"] = m.source_path
    state["original"] = {"sha256": image.sha256, "ext": image.ext, "width": image.width,
                         "height": image.height, "format": image.format}
    state["artifacts"] = [{"id": a.id, "sha256": a.sha256, "ext": a.ext, "width": a.width, "height": a.height,
                           "step": a.step, "params": a.params, "backend": a.backend, "model_id": a.model_id,
                           "parent_id": a.parent_id, "meta": a.meta, "current": a.id == m.current_artifact_id}
                          for a in artifacts]
    state["scores"] = {s.name: {"value": s.value, "source": s.source}
                       for s in session.scalars(select(Score).where(Score.member_id == member_id))}
    state["captions"] = [{"source": c.source, "text": c.text}
                         for c in session.scalars(select(Caption).where(Caption.member_id == member_id))]
    return state


def tag_table(session: Session, dataset: int, contains: str = "", limit: int = 200,
              offset: int = 0) -> dict[str, Any]:
    """Every tag of a dataset: frequency, model/human counts, acceptance rate (accepted / decided)."""
    accepted = func.sum(case((Tag.status == "accepted", 1), else_=0))
    rejected = func.sum(case((Tag.status == "rejected", 1), else_=0))
    human = func.sum(case((Tag.source.like("human:%"), 1), else_=0))
    query = (select(Tag.text, func.count().label("n"), accepted.label("accepted"), rejected.label("rejected"),
                    human.label("human"), func.avg(Tag.confidence).label("confidence"))
             .join(Member, Member.id == Tag.member_id).where(Member.dataset_id == dataset))
    if contains:
        query = query.where(Tag.text.contains(contains, autoescape=True))
    query = query.group_by(Tag.text)
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    rows = session.execute(query.order_by(func.count().desc(), Tag.text).limit(limit).offset(offset)).all()
    out = []
    for r in rows:
        decided = (r.accepted or 0) + (r.rejected or 0)
        out.append({"text": r.text, "count": r.n, "accepted": r.accepted or 0, "rejected": r.rejected or 0,
                    "human": r.human or 0, "model": r.n - (r.human or 0),
                    "acceptance_rate": (r.accepted / decided) if decided else None,
                    "mean_confidence": r.confidence})
    return {"total": total, "tags": out}


def score_histogram(session: Session, dataset: int, name: str, bins: int = 20) -> dict[str, Any]:
    values = list(session.scalars(select(Score.value).join(Member, Member.id == Score.member_id)
                                  .where(Member.dataset_id == dataset, Score.name == name)))
    if not values:
        return {"name": name, "bins": [], "low": None, "high": None, "count": 0}
    low, high = min(values), max(values)
    width = (high - low) / bins or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(int((v - low) / width), bins - 1)] += 1
    return {"name": name, "low": low, "high": high, "count": len(values),
            "bins": [{"from": low + i * width, "to": low + (i + 1) * width, "count": c}
                     for i, c in enumerate(counts)]}


_SCORE_NAMES: dict[str, tuple[float, list[str]]] = {}
SCORE_NAMES_SECONDS = 30.0  # a new kind of score (a new pipeline step) shows in the filters within this


def score_names(session: Session, dataset: int | None = None) -> list[str]:
    """The names of the scores in the store (aesthetic, sharpness, ...), read at most every
    SCORE_NAMES_SECONDS per database and process: every grid page lists them, and they change only
    when a pipeline gains a step (on PostgreSQL the walk below was a tenth of a grid page's time)."""
    key = session.get_bind().url.render_as_string()
    hit = _SCORE_NAMES.get(key)
    if hit and time.monotonic() - hit[0] < SCORE_NAMES_SECONDS:
        return list(hit[1])
    names = _walk_score_names(session)
    _SCORE_NAMES[key] = (time.monotonic(), names)
    return list(names)


def _walk_score_names(session: Session) -> list[str]:
    """Walks ix_scores_name_value one name at a time (a loose index scan): a handful of index probes
    instead of reading every score row."""
    names: list[str] = []
    while True:
        query = select(func.min(Score.name))
        found = session.scalar(query.where(Score.name > names[-1]) if names else query)
        if found is None:
            return names
        names.append(found)


def audit_entries(session: Session, *, user: str | None = None, action: str | None = None,
                  dataset: int | None = None, target: str | None = None, since: datetime | None = None,
                  limit: int = 100, offset: int = 0) -> dict[str, Any]:
    """The audit log, newest first, filtered by any of user, action, dataset, target prefix, time."""
    conds = []
    if user:
        conds.append(AuditEntry.user == user)
    if action:
        conds.append(AuditEntry.action == action)
    if dataset is not None:
        conds.append(AuditEntry.dataset_id == dataset)
    if target:
        conds.append(AuditEntry.target.startswith(target, autoescape=True))
    if since:
        conds.append(AuditEntry.at >= since)
    total = session.scalar(select(func.count()).select_from(AuditEntry).where(*conds))
    rows = session.scalars(select(AuditEntry).where(*conds).order_by(AuditEntry.id.desc())
                           .limit(limit).offset(offset))
    return {"total": total, "entries": [
        {"id": e.id, "user": e.user, "at": e.at, "action": e.action, "dataset_id": e.dataset_id,
         "target": e.target, "before": e.before, "after": e.after, "undone_at": e.undone_at} for e in rows]}
