"""Exclusion rules on scores: "exclude when aesthetic < 4.5" written in a pipeline config.

A rule names a score (as the steps write it: aesthetic, sharpness, exposure, clipping, noise,
resolution, brisque) and a range the score must stay in. In YAML either form works:

    exclude_when:
      - {score: aesthetic, min: 4.5}      # excluded when aesthetic < 4.5
      - "sharpness < 60"                  # the same as {score: sharpness, min: 60}
      - "clipping > 0.2"                  # the same as {score: clipping, max: 0.2}
      - {score: faces, min: 1, reason: "no face found"}   # the reason a curator reads first

An image without the named score (the step did not run on it) is not excluded by that rule.
Excluding only sets a member's status and reason; nothing is deleted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, model_validator

_SHORTHAND = re.compile(r"^\s*([A-Za-z_][\w.-]*)\s*(<=|>=|<|>)\s*(-?\d+(?:\.\d+)?(?:[eE]-?\d+)?)\s*$")


class Rule(BaseModel):
    """Keep an image only while `min <= scores[score] <= max` (either bound may be left out)."""

    model_config = ConfigDict(extra="forbid")

    score: str
    min: float | None = None
    max: float | None = None
    reason: str | None = None  # said before the numbers: "no face found (faces 0 < 1)"

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        match = _SHORTHAND.match(value)
        if not match:
            raise ValueError(f"{value!r}: expected '<score> < <number>' or '<score> > <number>'")
        name, op, number = match.groups()
        # "x < 4.5" excludes below 4.5, so the kept range starts there
        return {"score": name, ("min" if op.startswith("<") else "max"): float(number)}

    @model_validator(mode="after")
    def _has_a_bound(self) -> Rule:
        if self.min is None and self.max is None:
            raise ValueError(f"rule on {self.score!r} needs min or max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"rule on {self.score!r}: min {self.min} > max {self.max}")
        return self

    def excludes(self, scores: dict[str, float]) -> str | None:
        """The reason this rule excludes an image with these scores, or None."""
        value = scores.get(self.score)
        if value is None:
            return None
        if self.min is not None and value < self.min:
            numbers = f"{self.score} {value:.4g} < {self.min:g}"
        elif self.max is not None and value > self.max:
            numbers = f"{self.score} {value:.4g} > {self.max:g}"
        else:
            return None
        return f"{self.reason} ({numbers})" if self.reason else numbers


def parse_rules(raw: Iterable[Any] | None, where: str = "exclude_when") -> list[Rule]:
    """Rules from config values (dicts or shorthand strings); a bad one fails naming `where[index]`."""
    rules = []
    for index, value in enumerate(raw or []):
        try:
            rules.append(TypeAdapter(Rule).validate_python(value))
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            message = first["msg"].removeprefix("Value error, ")
            raise ValueError(f"{where}[{index}]{'.' + field if field else ''}: {message}") from None
    return rules


def rule_excludes(scores: dict[str, float], rules: Iterable[Rule | dict | str]) -> str | None:
    """The reason the first failing rule gives ("aesthetic 3.9 < 4.5"), or None to keep the image."""
    for rule in rules:
        rule = rule if isinstance(rule, Rule) else TypeAdapter(Rule).validate_python(rule)
        if reason := rule.excludes(scores):
            return reason
    return None
