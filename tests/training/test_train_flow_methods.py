"""Textual inversion and hypernetworks are methods of the same train flow: a recorded run in a subprocess,
outputs and metrics on the run, `atelier runs` side by side, promotion into a slot; bad input fails before
a run is recorded."""

import pytest

from tests.training.conftest import tiny_config
from tests.training.test_train_flow import committed  # noqa: F401 (fixture)


@pytest.mark.slow
def test_ti_and_hypernetwork_runs_are_recorded_side_by_side_and_promote(committed, tmp_path):  # noqa: F811
    from evaluation.config import Slot
    from evaluation.promotion import promote_by_hand
    from evaluation.run_table import list_runs
    from flows.train import run_train
    from store.models import TrainingRun
    from training.export import sha256_file

    ti = run_train(committed, "dogs", 1, tiny_config("sd15", method="textual_inversion", max_train_steps=2,
                                                     textual_inversion={"placeholder_token": "<sks>",
                                                                        "initializer_token": "a"}), log=lambda s: None)
    hn = run_train(committed, "dogs", 1, tiny_config("sd15", method="hypernetwork", max_train_steps=2), log=lambda s: None)
    with committed.session() as session:
        rows = {run.method: run for run in (session.get(TrainingRun, ti), session.get(TrainingRun, hn))}
        assert all(run.status == "succeeded" and run.metrics["steps"] == 2 for run in rows.values())
        embedding = rows["textual_inversion"].outputs["embedding"]
        hypernetwork = rows["hypernetwork"].outputs["hypernetwork"]
        assert rows["textual_inversion"].config["textual_inversion"]["placeholder_token"] == "<sks>"
    assert sha256_file(embedding["path"]) == embedding["sha256"] and embedding["token"] == "<sks>"
    assert hypernetwork["path"].endswith("dogs-v1.pt") and sha256_file(hypernetwork["path"]) == hypernetwork["sha256"]
    listing = list_runs(committed, "dogs")
    assert [(r["run_id"], r["hyperparameters"]["method"]) for r in listing] == [(hn, "hypernetwork"), (ti, "textual_inversion")]

    published = tmp_path / "embeddings" / "subject.safetensors"
    promote_by_hand(committed, "subject", Slot(publish_path=str(published)), ti)
    assert published.read_bytes() == open(embedding["path"], "rb").read()


def test_bad_method_input_fails_before_a_run_is_recorded(committed):  # noqa: F811
    from sqlalchemy import func, select

    from store.config_files import ConfigError
    from store.models import TrainingRun
    from flows.train import create_run

    with pytest.raises(ConfigError, match="textual_inversion.initializer_token: 'dog' is 3 tokens"):
        create_run(committed, "dogs", 1, tiny_config("sd15", method="textual_inversion",
                                                     textual_inversion={"initializer_token": "dog"}), log=lambda s: None)
    with pytest.raises(ConfigError, match="hypernetwork.layer_structure"):
        create_run(committed, "dogs", 1, tiny_config("sd15", method="hypernetwork",
                                                     hypernetwork={"layer_structure": [1, 2]}), log=lambda s: None)
    with committed.session() as session:
        assert session.scalar(select(func.count()).select_from(TrainingRun)) == 0
