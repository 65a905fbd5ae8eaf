"""Deployments the tests create by hand run from this checkout, as `prefect deploy` makes them."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# the checkout as the working directory (what `prefect deploy` writes when prefect.yaml has no pull
# section): a deployment `path` instead has every flow run copy the whole checkout, .venv included,
# before it starts — 40 s and more per run on this machine
PULL_FROM_CHECKOUT = [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]
