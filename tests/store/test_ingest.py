"""Given real photos and planted bad files, ingest keeps what is usable and says why it refused the rest."""

from __future__ import annotations

import io
import os
import shutil
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from flows.ingest import ingest
from store.models import Image as ImageRow, Member, RejectedInput, Tag


def _jpeg_bytes(image: Image.Image, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **kw)
    return buffer.getvalue()


@pytest.fixture
def planted(tmp_path, photos) -> Path:
    """A source folder: real photos, odd-but-valid formats, and bad files."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    shutil.copy(photos / "messi5.jpg", src / "messi5.jpg")
    shutil.copy(photos / "HappyFish.jpg", src / "sub" / "HappyFish.jpg")
    leuven = Image.open(photos / "leuvenB.jpg")
    # valid but unusual encodings
    leuven.convert("CMYK").save(src / "cmyk.jpg")
    gray16 = (np.asarray(Image.open(photos / "ellipses.jpg").convert("L"), dtype=np.uint16) * 257)
    Image.fromarray(gray16).save(src / "gray16.png")
    leuven.convert("P", palette=Image.Palette.ADAPTIVE).resize((300, 200)).save(src / "palette.png")
    shutil.copy(photos / "FlyingKonqui_2560x1600.png", src / "alpha.png")
    leuven.convert("RGB").resize((400, 300)).save(src / "photo.webp", "WEBP")
    rotated = Image.open(photos / "messi5.jpg").transpose(Image.Transpose.FLIP_LEFT_RIGHT).rotate(30)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: the viewer rotates 90° clockwise
    rotated.save(src / "rotated.jpg", exif=exif)
    frames = [Image.new("RGB", (96, 96), c) for c in ("red", "green", "blue")]
    frames[0].save(src / "animated.gif", save_all=True, append_images=frames[1:], duration=100)
    # bad files
    (src / "empty.jpg").write_bytes(b"")
    (src / "notes.png").write_text("this is text, not a picture")
    full = (photos / "leuvenB.jpg").read_bytes()
    (src / "truncated.jpg").write_bytes(full[: len(full) // 3])
    Image.new("1", (12000, 9000)).save(src / "bomb.png")  # 108 Mpx, a few KB on disk
    Image.new("RGB", (32, 32), "white").save(src / "tiny.png")
    (src / "readme.md").write_text("not an image")
    # caption sidecars
    (src / "messi5.txt").write_text("football, 1boy, grass field")
    (src / "sub" / "HappyFish.caption").write_text("a small yellow fish in an aquarium")
    # a symlink that points out of the source
    outside = tmp_path / "outside.jpg"
    shutil.copy(photos / "leuvenB.jpg", outside)
    os.symlink(outside, src / "escape.jpg")
    return src


def _reasons(report) -> dict[str, str]:
    return {r["path"]: r["reason"] for r in report["rejected"]}


def test_bad_files_are_rejected_with_reasons_and_the_rest_is_kept(store, planted):
    report = ingest(store, [planted], "people")
    reasons = _reasons(report)
    assert reasons["empty.jpg"] == "empty file"
    assert "not an image" in reasons["notes.png"]
    assert "truncated" in reasons["truncated.jpg"]
    assert "decompression bomb" in reasons["bomb.png"]
    assert "too small" in reasons["tiny.png"]
    assert "outside the source" in reasons["escape.jpg"]
    assert report["ignored"] == ["readme.md"]
    kept = {"messi5.jpg", "sub/HappyFish.jpg", "cmyk.jpg", "gray16.png", "palette.png", "alpha.png", "photo.webp",
            "rotated.jpg", "animated.gif"}
    with store.session() as session:
        members = {m.source_path: m for m in session.scalars(select(Member))}
        images = {m.source_path: m.image for m in members.values()}
        assert set(members) == kept
        assert session.scalar(select(func.count()).select_from(RejectedInput)) == 6
        # EXIF orientation applied to the recorded size; 16-bit, CMYK, palette, alpha all decoded
        assert (images["rotated.jpg"].width, images["rotated.jpg"].height) == (342, 548)
        assert images["rotated.jpg"].exif_orientation == 6
        assert images["gray16.png"].mode.startswith("I")
        assert images["cmyk.jpg"].mode == "CMYK"
        assert images["animated.gif"].format == "GIF"
        # originals are kept byte for byte
        original = store.blobs.get(images["messi5.jpg"].sha256, "jpg")
        assert original == (planted / "messi5.jpg").read_bytes()
        # sidecars: a tag list becomes accepted human tags, prose becomes the caption
        tags = session.scalars(select(Tag.text).where(Tag.member_id == members["messi5.jpg"].id).order_by(Tag.position)).all()
        assert tags == ["football", "1boy", "grass field"]
        assert members["sub/HappyFish.jpg"].caption == "a small yellow fish in an aquarium"
    assert not (planted.parent / "outside.jpg").is_symlink()


def test_animated_images_can_be_refused(store, planted):
    report = ingest(store, [planted], "strict", animated="reject")
    assert "animated image with 3 frames" in _reasons(report)["animated.gif"]


def test_reingest_adds_nothing(store, planted):
    first = ingest(store, [planted], "people")
    again = ingest(store, [planted], "people")
    assert first["added"] == 9
    assert again["added"] == 0 and again["unchanged"] == 9
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(Member)) == 9
        assert session.scalar(select(func.count()).select_from(RejectedInput)) == 6


def test_concurrent_ingests_of_one_folder_leave_no_duplicate_rows(store, planted):
    from store.db import Store

    errors = []

    def run():
        other = Store(store.settings)
        try:
            ingest(other, [planted], "people", batch_size=3)
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)
        finally:
            other.dispose()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(Member)) == 9
        assert session.scalar(select(func.count()).select_from(ImageRow)) == 9
        assert session.scalar(select(func.count()).select_from(Tag)) == 3


def test_exact_and_near_duplicates(store, tmp_path, photos):
    src = tmp_path / "dups"
    src.mkdir()
    original = Image.open(photos / "leuvenB.jpg")
    shutil.copy(photos / "leuvenB.jpg", src / "a_original.jpg")
    shutil.copy(photos / "leuvenB.jpg", src / "b_same_bytes.jpg")
    (src / "c_small.jpg").write_bytes(_jpeg_bytes(original.resize((375, 281))))
    (src / "d_recompressed.jpg").write_bytes(_jpeg_bytes(original, quality=60))
    w, h = original.size
    original.crop((int(w * 0.03), int(h * 0.03), w - int(w * 0.03), h - int(h * 0.03))).save(src / "e_cropped.png")
    shutil.copy(photos / "messi5.jpg", src / "f_other.jpg")
    report = ingest(store, [src], "dups")
    assert report["exact_duplicates"] == 1
    assert report["exact_duplicate_pairs"] == [["a_original.jpg", "b_same_bytes.jpg"]]
    # the original (largest) stays; the resized, recompressed and cropped copies are its duplicates
    near = sorted(report["near_duplicates"])
    assert [pair[1] for pair in near] == ["c_small.jpg", "d_recompressed.jpg", "e_cropped.png"]
    kept = {pair[0] for pair in near}
    assert len(kept) == 1 and kept <= {"a_original.jpg", "d_recompressed.jpg"}  # same pixel count: first stays
    with store.session() as session:
        active = session.scalars(select(Member.source_path).where(Member.status == "active")).all()
        assert sorted(active) == ["a_original.jpg", "f_other.jpg"]


def test_a_larger_copy_arriving_later_takes_the_place_of_the_smaller(store, tmp_path, photos):
    small, big = tmp_path / "small", tmp_path / "big"
    small.mkdir()
    big.mkdir()
    original = Image.open(photos / "leuvenB.jpg")
    (small / "thumb.jpg").write_bytes(_jpeg_bytes(original.resize((300, 225))))
    shutil.copy(photos / "leuvenB.jpg", big / "full.jpg")
    ingest(store, [small], "grow")
    report = ingest(store, [big], "grow")
    assert report["near_duplicates"] == [["full.jpg", "thumb.jpg"]]
    with store.session() as session:
        rows = dict(session.execute(select(Member.source_path, Member.status)).all())
    assert rows == {"full.jpg": "active", "thumb.jpg": "duplicate"}


def test_zip_sources_are_read_in_memory_and_zip_slip_is_refused(store, tmp_path, photos):
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(photos / "messi5.jpg", "inside/messi5.jpg")
        zf.writestr("inside/messi5.txt", "football, grass")
        # ZipInfo keeps the names as given (ZipFile.write would sanitise them)
        zf.writestr(zipfile.ZipInfo("../../evil.jpg"), (photos / "HappyFish.jpg").read_bytes())
        zf.writestr(zipfile.ZipInfo("/etc/absolute.jpg"), (photos / "leuvenB.jpg").read_bytes())
    report = ingest(store, [archive], "zipped")
    reasons = _reasons(report)
    assert "zip-slip" in reasons["../../evil.jpg"] and "zip-slip" in reasons["/etc/absolute.jpg"]
    assert report["added"] == 1
    assert not (tmp_path.parent / "evil.jpg").exists() and not Path("/etc/absolute.jpg").exists()
    with store.session() as session:
        assert session.scalars(select(Tag.text).order_by(Tag.position)).all() == ["football", "grass"]


def _with_scan(jpeg: bytes, scan: bytes) -> bytes:
    """The JPEG's headers (up to and including the start-of-scan segment) + `scan` + end-of-image."""
    sos = jpeg.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(jpeg[sos + 2:sos + 4], "big")
    return jpeg[:start] + scan + b"\xff\xd9"


def test_a_jpeg_with_a_valid_header_and_garbage_scan_data_is_rejected(store, tmp_path, photos):
    src = tmp_path / "src"
    src.mkdir()
    good = (photos / "messi5.jpg").read_bytes()
    sos = good.index(b"\xff\xda")
    scan = good[sos + 2 + int.from_bytes(good[sos + 2:sos + 4], "big"):good.rindex(b"\xff\xd9")]
    noise = np.random.default_rng(0).integers(0, 255, len(scan), dtype=np.uint8)  # 0xFF never: no markers
    (src / "garbage_scan.jpg").write_bytes(_with_scan(good, noise.tobytes()))
    (src / "short_scan.jpg").write_bytes(_with_scan(good, scan[: len(scan) // 5]))
    shutil.copy(photos / "messi5.jpg", src / "messi5.jpg")
    leuven = Image.open(photos / "leuvenB.jpg")
    (src / "progressive.jpg").write_bytes(_jpeg_bytes(leuven, progressive=True, quality=80))
    leuven.convert("CMYK").save(src / "cmyk.jpg")
    # what Pillow makes of them: no error, a picture — which is why ingest asks libjpeg-turbo
    assert Image.open(src / "short_scan.jpg").convert("RGB").load() is not None
    report = ingest(store, [src], "scans")
    reasons = _reasons(report)
    assert set(reasons) == {"garbage_scan.jpg", "short_scan.jpg"}
    assert reasons["garbage_scan.jpg"].startswith("corrupt JPEG scan data: Corrupt JPEG data")
    assert "premature end of data segment" in reasons["short_scan.jpg"]
    with store.session() as session:
        assert set(session.scalars(select(Member.source_path))) == {"messi5.jpg", "progressive.jpg", "cmyk.jpg"}
