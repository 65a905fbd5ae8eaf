"""`atelier deploy`: work pools and deployments from prefect.yaml on a running Prefect server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent


async def _ensure_pools(pools: list[dict]) -> list[dict]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        for pool in pools:
            try:
                await client.read_work_pool(pool["name"])
                await client.update_work_pool(pool["name"], WorkPoolUpdate(concurrency_limit=pool.get("concurrency_limit")))
            except ObjectNotFound:
                await client.create_work_pool(WorkPoolCreate(name=pool["name"], type=pool.get("type", "process"),
                                                             concurrency_limit=pool.get("concurrency_limit")))
        return [{"name": p.name, "type": p.type, "concurrency_limit": p.concurrency_limit}
                for p in [await client.read_work_pool(pool["name"]) for pool in pools]]


async def _read_deployments(names: list[str]) -> list[dict]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        found = []
        for deployment in await client.read_deployments():
            if deployment.name in names:
                crons = [s.schedule.cron for s in deployment.schedules if getattr(s.schedule, "cron", None)]
                found.append({"name": deployment.name, "id": str(deployment.id), "work_pool": deployment.work_pool_name,
                              "cron": crons[0] if crons else None, "entrypoint": deployment.entrypoint})
        return sorted(found, key=lambda d: d["name"])


def deploy_all(prefect_file: Path = REPO_ROOT / "prefect.yaml") -> dict:
    """Create/update the pools in `x-atelier-work-pools`, then `prefect deploy --all` non-interactively."""
    prefect_file = Path(prefect_file).resolve()
    if not prefect_file.exists():
        raise ValueError(f"{prefect_file}: not found")
    spec = yaml.safe_load(prefect_file.read_text()) or {}
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise RuntimeError("PREFECT_API_URL is not set: start `prefect server start` and "
                           "`export PREFECT_API_URL=http://127.0.0.1:4200/api` first")
    pools = asyncio.run(_ensure_pools(spec.get("x-atelier-work-pools") or []))
    result = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file)],
        cwd=prefect_file.parent, capture_output=True, text=True, env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()},
    )
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise RuntimeError("prefect deploy failed: " + " | ".join(tail))
    names = [d["name"] for d in spec.get("deployments") or []]
    return {"pools": pools, "deployments": asyncio.run(_read_deployments(names))}
