"""Masks through the prepare flow: stored as artifacts with lineage, carried by later steps, exported beside the image."""

from __future__ import annotations

import shutil

import numpy as np
import yaml
from PIL import Image
from sqlalchemy import select

from flows.ingest import ingest
from flows.prepare import prepare
from store.db import open_store
from store.masks import masks_of_blob
from store.models import Artifact, Member
from store.versions import commit_version, export_version
from training.data import scan_kohya_folder


def test_outpaint_mask_is_an_artifact_carried_through_upscale_and_exported(atelier_env, photos, prefect_harness,
                                                                          tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(photos / "messi5.jpg", src)  # 548×342: outpainted to 548², then upscaled to 640² (Lanczos: the test is about masks, ncnn took minutes)
    store = open_store()
    ingest(store, [src], "masked")
    pipeline = tmp_path / "pipe.yaml"
    pipeline.write_text(yaml.safe_dump({"name": "square", "steps": [
        {"step": "outpaint"}, {"step": "upscale", "params": {"target": 640, "fallback": "lanczos"}, "when": "short_side < 640"}]}))
    first = prepare("masked", str(pipeline))
    assert [c["done"] for c in first["steps"]] == [1, 1]
    with store.session() as session:
        member = session.scalar(select(Member))
        current = session.get(Artifact, member.current_artifact_id)
        assert current.step == "upscale" and (current.width, current.height) == (640, 640)
        masks = session.scalars(select(Artifact).where(Artifact.step == "mask").order_by(Artifact.id)).all()
        # one mask made by outpaint (child of its square), carried (resized) onto upscale's output
        assert [(m.params["name"], m.params["step"], session.get(Artifact, m.parent_id).step) for m in masks] == \
            [("generated", "outpaint", "outpaint"), ("generated", "upscale", "upscale")]
        assert (masks[1].width, masks[1].height) == (640, 640)
        found = masks_of_blob(session, current.sha256, member.image.sha256)
        assert found["generated"]["artifact_id"] == masks[1].id
    again = prepare("masked", str(pipeline))  # cached: no new mask rows
    assert [c["cached"] for c in again["steps"]] == [1, 1]
    with store.session() as session:
        assert len(session.scalars(select(Artifact).where(Artifact.step == "mask")).all()) == 2

    commit_version(store, "masked", "squared")
    out = export_version(store, "masked", None, "kohya", tmp_path / "export")
    folder = tmp_path / "export" / out["folder"]
    (image,) = [p for p in folder.glob("*.png") if not p.name.endswith(".mask.png")]
    learn = np.asarray(Image.open(image.with_suffix(".mask.png")))
    assert learn.shape == (640, 640)
    # 342/548 of the side is the photo (255 = learn); the outpainted bands above and below are 0
    box_top = round((548 - 342) / 2 * 640 / 548)
    assert (learn[box_top + 2:640 - box_top - 2] == 255).all() and (learn[:box_top - 2] == 0).all()
    assert (learn[640 - box_top + 2:] == 0).all()
    # a trainer reading the folder sees one image, not the mask
    assert [e.path.name for e in scan_kohya_folder(tmp_path / "export")] == [image.name]
