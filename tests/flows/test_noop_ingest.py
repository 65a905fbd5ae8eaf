"""A re-ingest that changes nothing answers without running the flow engine: the same report as the
flow, and a Completed `ingest` run in the Prefect UI saying why nothing ran; anything new or changed
goes through the flow as before."""

from __future__ import annotations

import shutil

from tests.flows.cli_runs import command_json, latest_run


def _ingest(*args: str) -> dict:
    return command_json("ingest", *args)


def _latest_ingest_run():
    return latest_run("ingest")


def test_a_no_op_reingest_records_a_completed_run_with_the_flows_report(atelier_env, prefect_harness, photos, tmp_path):
    from flows.ingest import ingest_flow

    src = tmp_path / "src"
    shutil.copytree(photos, src)
    first = _ingest(str(src), "--dataset", "d")
    assert first["added"] >= 7 and "no-op" not in _latest_ingest_run().tags

    again = _ingest(str(src), "--dataset", "d")
    run = _latest_ingest_run()
    assert run.state.is_completed() and run.tags == ["no-op"] and run.parameters["dataset"] == "d"
    assert run.state.message == f"nothing to do: {first['added']} files already in d at the same paths"
    assert again == ingest_flow([str(src)], "d")  # what the flow itself says of the same re-ingest

    shutil.copy(photos / "messi5.jpg", src / "messi5-copy.jpg")  # one more path (same bytes): the flow decides
    third = _ingest(str(src), "--dataset", "d")
    assert third["exact_duplicates"] == 1 and "no-op" not in _latest_ingest_run().tags
    (src / "messi5-copy.jpg").unlink()
    assert _ingest(str(src), "--dataset", "d", "--identifier", "sks")["unchanged"] == first["added"]
    assert "no-op" not in _latest_ingest_run().tags  # a dataset setting given: the flow applies it
    assert _ingest(str(src), "--dataset", "d")["unchanged"] == first["added"]
    assert _latest_ingest_run().tags == ["no-op"]
