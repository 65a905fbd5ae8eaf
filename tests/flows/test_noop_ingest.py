"""A re-ingest that changes nothing answers without running the flow engine: the same report as the
flow, and a Completed `ingest` run in the Prefect UI saying why nothing ran; anything new or changed
goes through the flow as before."""

from __future__ import annotations

import json
import shutil

from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()


def _ingest(*args: str) -> dict:
    result = runner.invoke(app, ["ingest", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _latest_ingest_run():
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["ingest"])),
                                     sort=FlowRunSort.START_TIME_DESC, limit=1)[0]


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
