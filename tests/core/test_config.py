"""Typed configs: YAML values are checked key by key, with errors that name the key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest
import yaml

from ssl_domains.config import (
    OptimConfig,
    TrainerConfig,
    describe_fields,
    from_mapping,
    merge,
    option,
    parse_overrides,
    to_mapping,
)
from ssl_domains.errors import ConfigError


@dataclass
class Inner:
    depth: int = option(2, doc="layers")


@dataclass
class Example:
    rate: float = option(0.5, doc="a rate")
    name: Literal["a", "b"] = option("a", doc="a choice")
    sizes: list[int] = option(default_factory=lambda: [1, 2], doc="sizes")
    pair: tuple[float, float] = option((0.9, 0.99), doc="pair")
    maybe: float | None = option(None, doc="optional")
    flag: bool = option(False, doc="a flag")
    inner: Inner = option(default_factory=Inner, doc="nested")


def test_defaults_round_trip_through_yaml():
    cfg = Example()
    assert from_mapping(Example, yaml.safe_load(yaml.safe_dump(to_mapping(cfg)))) == cfg


def test_values_are_converted_and_checked():
    cfg = from_mapping(Example, {"rate": 1, "pair": [0.8, 0.9], "maybe": 3, "inner": {"depth": 4}})
    assert cfg.rate == 1.0 and isinstance(cfg.rate, float)
    assert cfg.pair == (0.8, 0.9) and cfg.maybe == 3.0 and cfg.inner.depth == 4


def test_yaml_scientific_notation_string_is_a_float():
    # YAML 1.1 reads 1e-3 (no dot) as a string; it is obviously a number
    assert from_mapping(Example, yaml.safe_load("rate: 1e-3")).rate == pytest.approx(1e-3)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"rate": "fast"}, "rate must be a number"),
        ({"name": "c"}, "name must be one of 'a', 'b'"),
        ({"sizes": [1, "x"]}, "sizes[1] must be an integer"),
        ({"flag": "yes"}, "flag must be true or false"),
        ({"pair": [1.0]}, "pair must have 2 items"),
        ({"inner": {"depht": 3}}, "did you mean 'inner.depth'"),
        ({"rat": 0.1}, "did you mean 'rate'"),
        ({"inner": 5}, "inner must be a mapping"),
    ],
)
def test_bad_values_name_the_key(data, message):
    with pytest.raises(ConfigError, match=None) as info:
        from_mapping(Example, data)
    assert message in str(info.value)


def test_bool_is_not_an_int():
    with pytest.raises(ConfigError, match="must be an integer"):
        from_mapping(Inner, {"depth": True})


def test_parse_overrides_builds_nested_mapping_with_yaml_values():
    assert parse_overrides(["optim.lr=1e-3", "graphmae.sizes=[1, 2]", "trainer.progress_bar=false"]) == {
        "optim": {"lr": "1e-3"},
        "graphmae": {"sizes": [1, 2]},
        "trainer": {"progress_bar": False},
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["optim.lr"])


def test_merge_is_deep_and_later_wins():
    assert merge({"a": {"b": 1, "c": 2}, "d": 1}, {"a": {"b": 3}}) == {"a": {"b": 3, "c": 2}, "d": 1}


def test_describe_fields_lists_nested_fields_with_docs():
    fields = {name: (default, doc) for name, _, default, doc in describe_fields(Example)}
    assert fields["inner.depth"] == (2, "layers")
    assert fields["pair"] == ([0.9, 0.99], "pair")


def test_core_configs_have_documented_fields():
    for cls in (TrainerConfig, OptimConfig):
        for name, _, _, doc in describe_fields(cls):
            assert doc, f"{cls.__name__}.{name} lacks a doc"
