"""Pipeline configs (`configs/pipeline/*.yaml`): the ordered steps of the prepare flow.

    task_runner: threads          # threads | processes | dask (prefect-dask; `dask_address` for a cluster)
    workers: 2
    batch_size: 16
    steps:
      - step: align               # a step of preprocess/steps.py
        params: {mode: focal}
      - step: restore
        model: gfpgan-v1.4        # registry name or local path (same as params.model)
        when: "faces > 0"         # run only on images where the condition holds
      - step: aesthetic
        exclude_when: ["aesthetic < 4.5"]
      - step: tag
        accept_above: 0.9         # confident tags go straight into versions; the rest wait for review

`when` conditions read facts of the image as it reaches the step: width, height, short_side,
long_side, aspect_ratio (long / short side, ≥ 1), faces (count found by align), and any score
an earlier step wrote. Errors name the file, the step and the field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from preprocess.rules import Rule, parse_rules
from preprocess.steps import STEP_MODULES
from store.config_files import read_yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
PIPELINES = REPO_ROOT / "configs" / "pipeline"
_CONDITION = re.compile(r"^\s*([A-Za-z_][\w.-]*)\s*(<=|>=|==|!=|<|>)\s*(-?\d+(?:\.\d+)?)\s*$")


class Condition(BaseModel):
    fact: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> "Condition":
        match = _CONDITION.match(text)
        if not match:
            raise ValueError(f"{text!r}: expected '<fact> <op> <number>', e.g. 'aspect_ratio > 1.25'")
        return cls(fact=match[1], op=match[2], value=float(match[3]))

    def holds(self, facts: dict[str, float]) -> bool:
        value = facts.get(self.fact)
        if value is None:
            return False
        return {"<": value < self.value, "<=": value <= self.value, ">": value > self.value,
                ">=": value >= self.value, "==": value == self.value, "!=": value != self.value}[self.op]

    def __str__(self) -> str:
        return f"{self.fact} {self.op} {self.value:g}"


class StepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step: str
    id: str = ""  # unique name in this pipeline; defaults to the step name
    params: dict[str, Any] = Field(default_factory=dict)
    model: str | None = None
    when: list[Condition] = Field(default_factory=list)  # all must hold
    exclude_when: list[Rule] = Field(default_factory=list)
    # tag steps: suggestions at least this confident are accepted without review (None: all wait for a curator)
    accept_above: float | None = Field(None, ge=0, le=1)

    @field_validator("step")
    @classmethod
    def _known_step(cls, value: str) -> str:
        if value not in STEP_MODULES:
            raise ValueError(f"unknown step {value!r}; steps: {', '.join(STEP_MODULES)}")
        return value

    @field_validator("when", mode="before")
    @classmethod
    def _conditions(cls, value: Any) -> Any:
        items = [value] if isinstance(value, str) else (value or [])
        return [Condition.parse(v) if isinstance(v, str) else v for v in items]

    @field_validator("exclude_when", mode="before")
    @classmethod
    def _rules(cls, value: Any) -> Any:
        return parse_rules([value] if isinstance(value, str) else value)

    @model_validator(mode="after")
    def _defaults(self) -> "StepConfig":
        self.id = self.id or self.step
        if self.model is not None:
            self.params = {**self.params, "model": self.model}
        return self


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "pipeline"
    description: str = ""
    task_runner: Literal["threads", "processes", "dask", "pool"] = "threads"
    dask_address: str | None = None
    # task_runner pool: each batch is a flow run of this deployment on its work pool (flows/prepare_pool.py)
    pool_deployment: str = "prepare-batch/prepare-batch"
    batch_timeout_s: float = Field(120, gt=0)  # a pool batch silent this long (no heartbeat) goes to another worker
    workers: int = Field(2, ge=1, le=256)
    batch_size: int = Field(16, ge=1, le=4096)
    steps: list[StepConfig]
    contact_sheet: int = Field(16, ge=0, le=256)  # images in the run's contact sheet

    @model_validator(mode="after")
    def _unique_ids(self) -> "PipelineConfig":
        seen = set()
        for step in self.steps:
            if step.id in seen:
                raise ValueError(f"two steps with id {step.id!r}: give one an `id:`")
            seen.add(step.id)
        return self


def steps_without_weights(config: PipelineConfig, registry) -> dict[str, str]:
    """Step id → why it will be skipped: a registry model it needs is missing and it has no fallback."""
    from preprocess.steps import missing_weights

    found = {}
    for step in config.steps:
        if reason := missing_weights(step.step, step.params, registry):
            found[step.id] = reason
    return found


def _describe(error: ValidationError, raw: dict) -> str:
    first = error.errors()[0]
    loc = list(first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
        steps = raw.get("steps") or []
        name = steps[loc[1]].get("id") or steps[loc[1]].get("step") if loc[1] < len(steps) and isinstance(steps[loc[1]], dict) else None
        field = ".".join(str(p) for p in loc[2:]) or "(step)"
        return f"step {loc[1] + 1} ({name or '?'}): {field}: {message}"
    return f"{'.'.join(str(p) for p in loc) or '(top level)'}: {message}"


def load_pipeline(path: Path | str | None = None, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Read a pipeline file (default configs/pipeline/default.yaml) with `--set step.key=value` overrides.

    An override `upscale.scale=2` sets params.scale of the step with id `upscale`; top-level
    fields (`batch_size=8`) set the pipeline's own fields.
    """
    path = Path(path) if path else PIPELINES / "default.yaml"
    if not path.exists() and not path.suffix and (PIPELINES / f"{path}.yaml").exists():
        path = PIPELINES / f"{path}.yaml"
    raw = read_yaml(path)
    raw = _apply_overrides(raw, overrides or {}, path)
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as error:
        raise ValueError(f"{path}: {_describe(error, raw)}") from None


def _apply_overrides(raw: dict, overrides: dict[str, Any], path: Path) -> dict:
    steps = {(s.get("id") or s.get("step")): s for s in raw.get("steps") or [] if isinstance(s, dict)}
    for key, value in overrides.items():
        if key in steps and isinstance(value, dict):
            step = steps[key]
            for field, inner in value.items():
                if field in ("when", "exclude_when", "model"):
                    step[field] = inner
                else:
                    step.setdefault("params", {})[field] = inner
        elif key in PipelineConfig.model_fields:
            raw[key] = value
        else:
            known = ", ".join(list(steps) + [f for f in PipelineConfig.model_fields if f != "steps"])
            raise ValueError(f"{path}: --set {key}: no step or field of that name ({known})")
    return raw
