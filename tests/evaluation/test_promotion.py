"""Champion vs challenger: the rule for better / worse / within-margin / guard-regression challengers,
the published file replaced atomically, and rollback restoring the previous champion's weights."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from evaluation.config import ConfigError, Slot, load_slots
from evaluation.promotion import (
    challenge,
    champion_of,
    decide,
    decisions,
    promote_by_hand,
    rollback,
)
from evaluation.publish import publish_file

SLOT = Slot(primary_metric="dino", min_margin=0.02, guards={"clip_t": {"tolerance": 0.01}, "faces_missing": {"tolerance": 1}})
CHAMPION = {"dino": 0.60, "clip_t": 0.30, "faces_missing": 2}


def test_a_better_challenger_is_promoted():
    decision = decide(SLOT, {"dino": 0.65, "clip_t": 0.295, "faces_missing": 3}, CHAMPION)
    assert decision.action == "promoted" and "beats champion 0.6000 by +0.0500" in decision.reason
    assert decision.numbers["guards"]["clip_t"]["ok"] and decision.numbers["guards"]["faces_missing"]["ok"]


def test_a_worse_challenger_is_kept_out():
    decision = decide(SLOT, {"dino": 0.55, "clip_t": 0.35, "faces_missing": 0}, CHAMPION)
    assert decision.action == "kept" and "gain -0.0500 is below the margin 0.02" in decision.reason


def test_a_challenger_within_the_margin_is_kept_out():
    decision = decide(SLOT, {"dino": 0.615, "clip_t": 0.30, "faces_missing": 2}, CHAMPION)
    assert decision.action == "kept" and "below the margin" in decision.reason
    assert decision.numbers["primary_gain"] == pytest.approx(0.015)


def test_a_guard_regression_blocks_a_better_primary_metric():
    decision = decide(SLOT, {"dino": 0.70, "clip_t": 0.25, "faces_missing": 2}, CHAMPION)
    assert decision.action == "kept" and "guard clip_t fell 0.0500 (0.3000 → 0.2500)" in decision.reason
    # lower is better for faces_missing: 2 → 4 is a loss of 2, beyond its tolerance of 1
    decision = decide(SLOT, {"dino": 0.70, "clip_t": 0.30, "faces_missing": 4}, CHAMPION)
    assert decision.action == "kept" and "faces_missing fell 2.0000" in decision.reason


def test_no_champion_promotes_and_a_missing_primary_metric_does_not():
    assert decide(SLOT, {"dino": 0.1}, None).action == "promoted"
    assert decide(SLOT, {"clip_t": 0.9}, None).action == "kept"


def test_slot_config_errors_name_file_and_field(tmp_path):
    path = tmp_path / "slots.yaml"
    path.write_text("slots:\n  s:\n    primary_metric: fid\n")
    with pytest.raises(ConfigError, match=r"slots.yaml: slots.s: .*unknown metric 'fid'"):
        load_slots(path)
    path.write_text("slots:\n  s:\n    min_margn: 0.1\n")
    with pytest.raises(ConfigError, match=r"slots.s.min_margn: unknown field"):
        load_slots(path)
    assert load_slots()["subject-lora"].primary_metric == "dino"  # the shipped configs/slots.yaml


def test_publish_replaces_the_file_atomically(tmp_path, monkeypatch):
    target = tmp_path / "loras" / "subject.safetensors"
    old, new = tmp_path / "old.bin", tmp_path / "new.bin"
    old.write_bytes(b"old" * 1000)
    new.write_bytes(b"new" * 100000)
    publish_file(old, target)
    seen = []
    real_replace = os.replace

    def watch(src, dst):
        # at the moment of the swap: the full new file sits beside the target, the target is still whole
        seen.append((Path(src).parent == target.parent, Path(src).read_bytes() == new.read_bytes(), target.read_bytes()))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", watch)
    publish_file(new, target)
    assert seen == [(True, True, b"old" * 1000)] and target.read_bytes() == new.read_bytes()
    assert sorted(p.name for p in target.parent.iterdir()) == ["subject.safetensors"]  # no temp left behind

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        publish_file(old, target)
    assert target.read_bytes() == new.read_bytes()  # a failed publish leaves the champion file as it was
    assert sorted(p.name for p in target.parent.iterdir()) == ["subject.safetensors"]


def _evaluated_run(store, version_id, base, lora, metrics, preset=None) -> tuple[int, int]:
    from store.models import Evaluation
    from tests.evaluation.conftest import add_run

    run_id = add_run(store, version_id, base, lora)
    with store.session() as session:
        row = Evaluation(run_id=run_id, preset=preset or {"prompts": ["p"], "seeds": [1]},
                         metrics={"trained": metrics, "base": {}}, status="succeeded")
        session.add(row)
        session.flush()
        return run_id, row.id


def test_champion_history_publish_and_rollback(store, photos, tmp_path, tiny_sd_dir, tiny_loras):
    from tests.evaluation.conftest import add_subject

    version_id = add_subject(store, photos, tmp_path, names=["HappyFish.jpg"])
    slot = SLOT.model_copy(update={"publish_path": str(tmp_path / "ComfyUI" / "models" / "loras") + "/"})
    published = tmp_path / "ComfyUI" / "models" / "loras" / "subject.safetensors"
    first, e1 = _evaluated_run(store, version_id, tiny_sd_dir, tiny_loras[0], CHAMPION)
    worse, e2 = _evaluated_run(store, version_id, tiny_sd_dir, tiny_loras[1], {**CHAMPION, "dino": 0.5})
    better, e3 = _evaluated_run(store, version_id, tiny_sd_dir, tiny_loras[2], {**CHAMPION, "dino": 0.7})

    assert challenge(store, "subject", slot, e1).action == "promoted"
    assert published.read_bytes() == Path(tiny_loras[0]["path"]).read_bytes()
    assert challenge(store, "subject", slot, e2).action == "kept"
    assert champion_of(store, "subject")["run_id"] == first
    assert published.read_bytes() == Path(tiny_loras[0]["path"]).read_bytes()
    assert challenge(store, "subject", slot, e3).action == "promoted"
    assert published.read_bytes() == Path(tiny_loras[2]["path"]).read_bytes()

    restored = rollback(store, "subject", slot, user="ana")
    assert restored["run_id"] == first and restored["replaced_run_id"] == better
    assert published.read_bytes() == Path(tiny_loras[0]["path"]).read_bytes()
    assert champion_of(store, "subject")["evaluation_id"] == e1
    with pytest.raises(LookupError, match="no earlier champion"):
        rollback(store, "subject", slot)

    manual = promote_by_hand(store, "subject", slot, worse, user="ana")
    assert manual.action == "manual" and champion_of(store, "subject")["run_id"] == worse
    assert published.read_bytes() == Path(tiny_loras[1]["path"]).read_bytes()
    log = decisions(store, "subject")
    assert [d["action"] for d in log] == ["manual", "rollback", "promoted", "kept", "promoted"]
    assert log[3]["champion_run_id"] == first and "below the margin" in log[3]["reason"]
    assert log[0]["decided_by"] == "ana"


def test_a_challenger_sampled_with_other_prompts_is_not_compared(store, photos, tmp_path, tiny_sd_dir, tiny_loras):
    from tests.evaluation.conftest import add_subject

    version_id = add_subject(store, photos, tmp_path, names=["HappyFish.jpg"])
    _, e1 = _evaluated_run(store, version_id, tiny_sd_dir, tiny_loras[0], CHAMPION)
    _, e2 = _evaluated_run(store, version_id, tiny_sd_dir, tiny_loras[1], {**CHAMPION, "dino": 0.9},
                           preset={"prompts": ["other"], "seeds": [1]})
    challenge(store, "s", SLOT, e1)
    decision = challenge(store, "s", SLOT, e2)
    assert decision.action == "kept" and "not comparable" in decision.reason


def test_a_pivotal_tuning_champion_publishes_its_embedding_and_its_lora(store, photos, tmp_path, tiny_sd_dir, tiny_loras):
    from store.models import TrainingRun
    from tests.evaluation.conftest import add_subject

    version_id = add_subject(store, photos, tmp_path, names=["HappyFish.jpg"])
    embedding = tmp_path / "run" / "sks.safetensors"
    embedding.parent.mkdir()
    embedding.write_bytes(b"embedding" * 10)
    run_id, evaluation_id = _evaluated_run(store, version_id, tiny_sd_dir, tiny_loras[0], CHAMPION)
    with store.session() as session:
        run = session.get(TrainingRun, run_id)
        run.method, run.outputs = "textual_inversion", {"embedding": {"path": str(embedding)}, "lora": tiny_loras[0]}
    comfy = tmp_path / "ComfyUI" / "models"
    slot = SLOT.model_copy(update={"publish_path": f"{comfy}/embeddings/", "publish_lora_path": f"{comfy}/loras/"})
    decision = challenge(store, "subject", slot, evaluation_id)
    assert decision.action == "promoted" and decision.numbers["published_path"] == str(comfy / "embeddings" / "subject.safetensors")
    assert (comfy / "embeddings" / "subject.safetensors").read_bytes() == embedding.read_bytes()
    assert (comfy / "loras" / "subject.safetensors").read_bytes() == Path(tiny_loras[0]["path"]).read_bytes()

    beside = SLOT.model_copy(update={"publish_path": str(tmp_path / "a1111" / "subject.safetensors")})
    promote_by_hand(store, "subject", beside, run_id)  # no publish_lora_path: the LoRA goes beside the embedding
    assert (tmp_path / "a1111" / "subject.lora.safetensors").read_bytes() == Path(tiny_loras[0]["path"]).read_bytes()
