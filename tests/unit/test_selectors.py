"""metav1.LabelSelector semantics, as the API server applies them."""

from __future__ import annotations

from typing import Any

import pytest

from geopin.core.selectors import LabelSelector, SelectorError


@pytest.mark.parametrize("spec", [None, {}, {"matchLabels": {}}, {"matchExpressions": []}, {"matchLabels": None}])
def test_empty_selector_matches_everything(spec: dict[str, Any] | None) -> None:
    selector = LabelSelector.from_spec(spec)
    assert selector.empty
    assert selector.matches({})
    assert selector.matches(None)
    assert selector.matches({"any": "thing"})


def test_match_labels_are_anded() -> None:
    selector = LabelSelector.from_spec({"matchLabels": {"team": "a", "tier": "web"}})
    assert not selector.empty
    assert selector.matches({"team": "a", "tier": "web"})
    assert selector.matches({"team": "a", "tier": "web", "extra": "x"})
    assert not selector.matches({"team": "a"})
    assert not selector.matches({"team": "a", "tier": "db"})
    assert not selector.matches({"team": "A", "tier": "web"})  # values are case-sensitive
    assert not selector.matches({})
    assert not selector.matches(None)


def test_match_label_value_may_be_empty() -> None:
    selector = LabelSelector.from_spec({"matchLabels": {"flag": ""}})
    assert selector.matches({"flag": ""})
    assert not selector.matches({})
    assert not selector.matches({"flag": "x"})


@pytest.mark.parametrize(
    ("expression", "labels", "matches"),
    [
        ({"key": "env", "operator": "In", "values": ["prod", "stage"]}, {"env": "prod"}, True),
        ({"key": "env", "operator": "In", "values": ["prod", "stage"]}, {"env": "stage"}, True),
        ({"key": "env", "operator": "In", "values": ["prod", "stage"]}, {"env": "dev"}, False),
        ({"key": "env", "operator": "In", "values": ["prod"]}, {}, False),
        ({"key": "env", "operator": "In", "values": ["prod"]}, {"ENV": "prod"}, False),
        ({"key": "env", "operator": "NotIn", "values": ["prod"]}, {"env": "dev"}, True),
        ({"key": "env", "operator": "NotIn", "values": ["prod"]}, {"env": "prod"}, False),
        ({"key": "env", "operator": "NotIn", "values": ["prod"]}, {}, True),  # absent key matches NotIn
        ({"key": "env", "operator": "Exists"}, {"env": ""}, True),
        ({"key": "env", "operator": "Exists"}, {"other": "x"}, False),
        ({"key": "env", "operator": "Exists", "values": []}, {"env": "x"}, True),
        ({"key": "env", "operator": "DoesNotExist"}, {}, True),
        ({"key": "env", "operator": "DoesNotExist"}, {"env": "x"}, False),
        ({"key": "env", "operator": "DoesNotExist", "values": None}, {"other": "x"}, True),
    ],
)
def test_match_expressions(expression: dict[str, Any], labels: dict[str, str], matches: bool) -> None:
    assert LabelSelector.from_spec({"matchExpressions": [expression]}).matches(labels) is matches


def test_labels_and_expressions_are_anded() -> None:
    selector = LabelSelector.from_spec(
        {
            "matchLabels": {"team": "a"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["prod"]},
                {"key": "legacy", "operator": "DoesNotExist"},
            ],
        }
    )
    assert len(selector.requirements) == 3
    assert selector.matches({"team": "a", "env": "prod"})
    assert not selector.matches({"team": "b", "env": "prod"})
    assert not selector.matches({"team": "a", "env": "dev"})
    assert not selector.matches({"team": "a", "env": "prod", "legacy": "true"})


def test_values_are_compared_as_strings() -> None:
    selector = LabelSelector.from_spec({"matchExpressions": [{"key": "n", "operator": "In", "values": [1, "2"]}]})
    assert selector.matches({"n": "1"})
    assert selector.matches({"n": "2"})
    assert not selector.matches({"n": "3"})


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["x"]}]}, "matchExpressions[0].operator"),
        ({"matchExpressions": [{"key": "a", "operator": "in", "values": ["x"]}]}, "matchExpressions[0].operator"),
        ({"matchExpressions": [{"key": "a", "values": ["x"]}]}, "matchExpressions[0].operator"),
        ({"matchExpressions": [{"key": "a", "operator": "In"}]}, "matchExpressions[0].values"),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": []}]}, "matchExpressions[0].values"),
        (
            {
                "matchExpressions": [
                    {"key": "a", "operator": "Exists"},
                    {"key": "b", "operator": "Exists", "values": ["x"]},
                ]
            },
            "matchExpressions[1].values",
        ),
        (
            {"matchExpressions": [{"key": "a", "operator": "DoesNotExist", "values": ["x"]}]},
            "matchExpressions[0].values",
        ),
        # Wrong shapes are selector errors too, never crashes.
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": "prod"}]}, "matchExpressions[0].values"),
        ({"matchExpressions": [{"operator": "Exists"}]}, "matchExpressions[0].key"),
        ({"matchExpressions": [{"key": "", "operator": "Exists"}]}, "matchExpressions[0].key"),
        ({"matchExpressions": ["env"]}, "matchExpressions[0]"),
        ({"matchExpressions": {"key": "a", "operator": "Exists"}}, "matchExpressions"),
        ({"matchLabels": ["a", "b"]}, "matchLabels"),
        ({"matchLabels": "a=b"}, "matchLabels"),
    ],
)
def test_invalid_selectors(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(SelectorError) as info:
        LabelSelector.from_spec(spec)
    assert str(info.value).split(": ", 1)[0] == field
    assert isinstance(info.value, ValueError)
