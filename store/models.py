"""Database tables: every stage of the data's journey has its rows here.

Schema changes go through Alembic (store/migrations); never create tables by hand.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # DreamBooth identifier and class word, used by kohya export and training captions
    identifier: Mapped[str | None] = mapped_column(String(100))
    class_word: Mapped[str | None] = mapped_column(String(100))
    repeats: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Image(Base):
    """One original file, by content. Shared across datasets; never modified."""

    __tablename__ = "images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    phash: Mapped[str] = mapped_column(String(16), index=True)
    width: Mapped[int] = mapped_column(Integer)  # after EXIF orientation
    height: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(16))  # PNG, JPEG, WEBP, ...
    ext: Mapped[str] = mapped_column(String(8))  # blob file extension
    byte_size: Mapped[int] = mapped_column(BigInteger)
    mode: Mapped[str] = mapped_column(String(16))  # Pillow mode of the original
    exif_orientation: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Member(Base):
    """An image in a dataset: the unit curators review. `revision` guards concurrent edits."""

    __tablename__ = "members"
    __table_args__ = (
        UniqueConstraint("dataset_id", "image_id"),
        Index("ix_members_dataset_status_id", "dataset_id", "status", "id"),  # the dashboard grid's walk
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    source_path: Mapped[str] = mapped_column(Text)  # relative to the SRC it came from
    # active | duplicate (near duplicate of duplicate_of_id) | excluded (by a rule or a curator)
    status: Mapped[str] = mapped_column(String(16), default="active", index=True)
    duplicate_of_id: Mapped[int | None] = mapped_column(ForeignKey("members.id"))
    excluded_reason: Mapped[str | None] = mapped_column(Text)
    # the newest artifact of the prepare pipeline (what a version commits); None = the original
    current_artifact_id: Mapped[int | None] = mapped_column(ForeignKey("artifacts.id"))
    caption: Mapped[str | None] = mapped_column(Text)
    caption_source: Mapped[str | None] = mapped_column(String(100))
    # prepare flow: step id → id of the step_results row last applied to this member (so a
    # re-run applies only what changed, and never re-adds a tag a curator removed since)
    prepared: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, server_default=text("'{}'"))
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reviewed_by: Mapped[str | None] = mapped_column(String(100))
    revision: Mapped[int] = mapped_column(Integer, default=1)
    # the member revision at which the caption / the status (exclusion) last changed: an edit made on
    # an older revision conflicts only when the part it touches changed since (field-level conflicts)
    caption_revision: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    status_revision: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    image: Mapped[Image] = relationship(foreign_keys=[image_id])
    tags: Mapped[list["Tag"]] = relationship(back_populates="member", cascade="all, delete-orphan")


class Artifact(Base):
    """A derived image (or a generated sample), named by content hash, with its lineage."""

    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    ext: Mapped[str] = mapped_column(String(8))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id"), index=True)  # root original
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("artifacts.id"))
    step: Mapped[str] = mapped_column(String(50))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    params_hash: Mapped[str] = mapped_column(String(64))
    backend: Mapped[str] = mapped_column(String(100))
    model_id: Mapped[str | None] = mapped_column(String(200))
    model_hash: Mapped[str | None] = mapped_column(String(64))
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # boxes, landmarks, masks
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class StepResult(Base):
    """Cache of the prepare flow: one row per (input, step, params, model) ever computed."""

    __tablename__ = "step_results"
    __table_args__ = (
        UniqueConstraint("input_sha256", "step", "params_hash", "model_hash", name="uq_step_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    input_sha256: Mapped[str] = mapped_column(String(64))
    step: Mapped[str] = mapped_column(String(50))
    params_hash: Mapped[str] = mapped_column(String(64))
    model_hash: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[str] = mapped_column(String(16))  # done | failed
    output_artifact_id: Mapped[int | None] = mapped_column(ForeignKey("artifacts.id"))
    output: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # tags, scores, metadata
    backend: Mapped[str | None] = mapped_column(String(100))
    error: Mapped[str | None] = mapped_column(Text)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Tag(Base):
    __tablename__ = "tags"
    __table_args__ = (
        UniqueConstraint("member_id", "text"),
        Index("ix_tags_text", "text"),
        Index("ix_tags_text_member_status", "text", "member_id", "status"),  # tag filters read only the index
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"), index=True)
    text: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(100))  # model:<name> | human:<user>
    category: Mapped[str] = mapped_column(String(20), default="general")  # general|character|rating
    confidence: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(12), default="suggested")  # suggested|accepted|rejected
    position: Mapped[int] = mapped_column(Integer, default=0)  # order in the caption
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_by: Mapped[str | None] = mapped_column(String(100))
    revision: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # member revision of its last change

    member: Mapped[Member] = relationship(back_populates="tags")


class Caption(Base):
    """Captions by source (a captioner model or a sidecar file); the member's caption is the chosen one."""

    __tablename__ = "captions"
    __table_args__ = (UniqueConstraint("member_id", "source"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"), index=True)
    text: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Score(Base):
    __tablename__ = "scores"
    __table_args__ = (UniqueConstraint("member_id", "name"), Index("ix_scores_name_value", "name", "value"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(50))  # aesthetic, sharpness, exposure, noise, brisque, faces
    value: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(100))
    artifact_sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RejectedInput(Base):
    __tablename__ = "rejected_inputs"
    __table_args__ = (UniqueConstraint("dataset_id", "source_path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    source_path: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TagRule(Base):
    """Per-dataset tag rules curators set: blacklist entries and renames, applied to later model runs."""

    __tablename__ = "tag_rules"
    __table_args__ = (UniqueConstraint("dataset_id", "kind", "text"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # blacklist | rename
    text: Mapped[str] = mapped_column(String(200))
    replacement: Mapped[str | None] = mapped_column(String(200))
    created_by: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DatasetVersion(Base):
    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("dataset_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    message: Mapped[str] = mapped_column(Text, default="")
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    entries: Mapped[list["VersionEntry"]] = relationship(
        back_populates="version", order_by="VersionEntry.position"
    )


class VersionEntry(Base):
    """One immutable manifest line: the blob to train on, its caption and accepted tags."""

    __tablename__ = "version_entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    image_sha256: Mapped[str] = mapped_column(String(64))  # the original
    blob_sha256: Mapped[str] = mapped_column(String(64))  # what is trained on (original or artifact)
    blob_ext: Mapped[str] = mapped_column(String(8))
    source_path: Mapped[str] = mapped_column(Text)
    caption: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    weight: Mapped[float] = mapped_column(Float, default=1.0)

    version: Mapped[DatasetVersion] = relationship(back_populates="entries")


class TrainingRun(Base):
    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), index=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id"))
    method: Mapped[str] = mapped_column(String(32))  # lora | dreambooth | dreambooth-lora
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    base_model: Mapped[str] = mapped_column(Text)
    base_model_hash: Mapped[str | None] = mapped_column(String(64))
    # queued | running | cancelling | succeeded | failed | cancelled
    status: Mapped[str] = mapped_column(String(16), default="queued")
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    outputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # name -> {path, sha256}
    output_dir: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # the last time it began training
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SlotLock(Base):
    """A model slot held by one nightly run: a second night on the slot waits or refuses (no double promotion)."""

    __tablename__ = "slot_locks"

    slot: Mapped[str] = mapped_column(String(128), primary_key=True)
    holder: Mapped[str] = mapped_column(Text)  # host:pid and the flow run, for the refusal message
    acquired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Evaluation(Base):
    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("training_runs.id"), index=True)
    preset: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # overall, trained and base
    per_prompt: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    grid_sha256: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="succeeded")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Sample(Base):
    __tablename__ = "samples"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), index=True)
    artifact_id: Mapped[int] = mapped_column(ForeignKey("artifacts.id"))
    model: Mapped[str] = mapped_column(String(16))  # trained | base
    prompt: Mapped[str] = mapped_column(Text)
    seed: Mapped[int] = mapped_column(BigInteger)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    scores: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class EmbeddingCache(Base):
    __tablename__ = "embeddings"
    __table_args__ = (UniqueConstraint("image_sha256", "model_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_sha256: Mapped[str] = mapped_column(String(64))
    model_hash: Mapped[str] = mapped_column(String(64))
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # float32 little-endian
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Champion(Base):
    """The model in service for a slot. One row per slot."""

    __tablename__ = "champions"

    slot: Mapped[str] = mapped_column(String(100), primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("training_runs.id"))
    evaluation_id: Mapped[int | None] = mapped_column(ForeignKey("evaluations.id"))
    published_path: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PromotionDecision(Base):
    __tablename__ = "promotion_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slot: Mapped[str] = mapped_column(String(100), index=True)
    challenger_run_id: Mapped[int | None] = mapped_column(ForeignKey("training_runs.id"))
    champion_run_id: Mapped[int | None] = mapped_column(ForeignKey("training_runs.id"))
    action: Mapped[str] = mapped_column(String(16))  # promoted | kept | manual | rollback
    reason: Mapped[str] = mapped_column(Text)
    numbers: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    decided_by: Mapped[str] = mapped_column(String(100), default="auto")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # viewer | curator | admin
    password_hash: Mapped[str] = mapped_column(Text)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditEntry(Base):
    """Every change a person made: who, when, what, before and after (enough to undo it)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user: Mapped[str] = mapped_column(String(100), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    action: Mapped[str] = mapped_column(String(50))
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"))
    target: Mapped[str] = mapped_column(String(200))  # e.g. member:12, tag:1girl
    before: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    after: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    undone_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class LoginSession(Base):
    """A dashboard login, kept on the server so that logout, disabling and password changes end it.

    The cookie carries only the random id; `id` stores its SHA-256, so a leaked database holds no
    usable session.
    """

    __tablename__ = "login_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user: Mapped[str] = mapped_column(String(100), index=True)
    client: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_why: Mapped[str | None] = mapped_column(String(50))


class LoginThrottle(Base):
    """Failed-login counters per key (user:NAME, client:ADDRESS, device:ID), shared by every worker."""

    __tablename__ = "login_throttle"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ReviewSession(Base):
    """A curator's walk through a snapshot of filtered member ids: order fixed at start, resumable."""

    __tablename__ = "review_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user: Mapped[str] = mapped_column(String(100), index=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # the grid filter it was made from
    member_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)
    position: Mapped[int] = mapped_column(Integer, default=0)  # where the curator last was
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
