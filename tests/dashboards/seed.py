"""A small real dataset for dashboard tests: the fixture photos as members with tags and scores."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from PIL import Image as PILImage

from store.db import Store
from store.models import Artifact, Dataset, Image, Member, Score, Tag, User
from store.users import hash_password

PASSWORD = "correct horse battery"
USERS = {"viewer": "viewer", "cur1": "curator", "cur2": "curator", "boss": "admin"}

# photo -> (tags with confidence, aesthetic, has a face)
PLAN = {
    "messi5.jpg": ({"1boy": 0.95, "soccer": 0.9, "outdoors": 0.6}, 6.1, True),
    "HappyFish.jpg": ({"fish": 0.97, "underwater": 0.8, "outdoors": 0.3}, 5.2, False),
    "leuvenB.jpg": ({"building": 0.93, "outdoors": 0.88, "sky": 0.7}, 4.4, False),
    "ellipses.jpg": ({"monochrome": 0.99, "abstract": 0.5}, 3.1, False),
    "FlyingKonqui_2560x1600.png": ({"dragon": 0.85, "sky": 0.5, "flying": 0.66}, 7.0, False),
    "MilkyWay_1080x1920.png": ({"sky": 0.98, "night": 0.95, "stars": 0.9}, 8.2, False),
    "Elarun_2560x1600.png": ({"landscape": 0.9, "sky": 0.8, "outdoors": 0.75}, 6.6, False),
}


@lru_cache(maxsize=1)
def password_hash() -> str:
    return hash_password(PASSWORD)  # argon2 is slow on purpose: hash once per test session


def seed(store: Store, photos: Path, dataset: str = "portraits") -> dict[str, int]:
    """Put the photos in the blob store and a dataset; returns {photo name: member id}."""
    ids: dict[str, int] = {}
    with store.session() as session:
        for name, role in USERS.items():
            session.add(User(name=name, role=role, password_hash=password_hash()))
        ds = Dataset(name=dataset)
        session.add(ds)
        session.flush()
        for name, (tags, aesthetic, face) in PLAN.items():
            data = (photos / name).read_bytes()
            ext = name.rsplit(".", 1)[1].lower()
            sha = store.blobs.put(data, ext)
            with PILImage.open(photos / name) as im:
                width, height, fmt, mode = im.width, im.height, im.format, im.mode
            image = Image(sha256=sha, phash="0" * 16, width=width, height=height, format=fmt, ext=ext,
                          byte_size=len(data), mode=mode)
            session.add(image)
            session.flush()
            if face:
                session.add(Artifact(sha256=sha, ext=ext, width=width, height=height, image_id=image.id,
                                     step="align", params={"mode": "face"}, params_hash="p" * 64,
                                     backend="opencv-cascade", meta={"faces": [[10, 10, 50, 50]]}))
            member = Member(dataset_id=ds.id, image_id=image.id, source_path=name, caption=f"a photo: {name}")
            session.add(member)
            session.flush()
            for position, (text, conf) in enumerate(tags.items()):
                session.add(Tag(member_id=member.id, text=text, source="model:wd14", confidence=conf,
                                position=position))
            session.add(Score(member_id=member.id, name="aesthetic", value=aesthetic, source="laion-v2"))
            session.add(Score(member_id=member.id, name="sharpness", value=aesthetic * 10, source="laplacian"))
            ids[name] = member.id
    return ids
