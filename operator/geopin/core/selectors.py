"""metav1.LabelSelector: parsed once, matched against label maps (same semantics as the API server)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["LabelSelector", "SelectorError"]

_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


class SelectorError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: str
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.operator == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels  # DoesNotExist


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """An empty selector matches everything, as in Kubernetes."""

    requirements: tuple[Requirement, ...] = ()

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> LabelSelector:
        if not spec:
            return cls()
        requirements: list[Requirement] = []
        match_labels = spec.get("matchLabels") or {}
        if not isinstance(match_labels, Mapping):
            raise SelectorError("matchLabels: must be an object of key: value")
        for key, value in sorted(match_labels.items()):
            requirements.append(Requirement(str(key), "In", frozenset([str(value)])))
        expressions = spec.get("matchExpressions") or []
        if not isinstance(expressions, list):
            raise SelectorError("matchExpressions: must be a list")
        for index, expression in enumerate(expressions):
            if not isinstance(expression, Mapping):
                raise SelectorError(f"matchExpressions[{index}]: must be an object with key and operator")
            if not expression.get("key") or not isinstance(expression.get("key"), str):
                raise SelectorError(f"matchExpressions[{index}].key: required")
            if not isinstance(expression.get("values") or [], list):
                raise SelectorError(f"matchExpressions[{index}].values: must be a list")
            operator = expression.get("operator")
            values = frozenset(str(v) for v in expression.get("values") or [])
            if operator not in _OPERATORS:
                raise SelectorError(f"matchExpressions[{index}].operator: {operator!r} is not one of {_OPERATORS}")
            if operator in ("In", "NotIn") and not values:
                raise SelectorError(f"matchExpressions[{index}].values: must be non-empty for {operator}")
            if operator in ("Exists", "DoesNotExist") and values:
                raise SelectorError(f"matchExpressions[{index}].values: must be empty for {operator}")
            requirements.append(Requirement(str(expression.get("key", "")), operator, values))
        return cls(tuple(requirements))

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(requirement.matches(labels) for requirement in self.requirements)
