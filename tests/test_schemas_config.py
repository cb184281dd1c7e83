from dataclasses import dataclass, field

import pyarrow as pa
import pytest

from interest import config, schemas as S
from interest.config import ConfigError


def test_conform_orders_casts_and_fills_optional_columns():
    t = pa.table({"price": [1, 2], "ts": pa.array([0, 1], pa.int64()).cast(S.TS_TYPE),
                  "behavior": ["view", "buy"], "item_id": ["a", "b"], "user_id": ["u", "v"]})
    out = S.conform(t, S.EVENTS)
    assert out.schema == S.EVENTS
    assert out.column("price").type == pa.float64()
    assert out.column("session_id").null_count == 2


def test_conform_names_missing_required_column():
    with pytest.raises(S.SchemaError, match="required column 'item_id' is missing"):
        S.conform(pa.table({"user_id": ["u"]}), S.EVENTS, what="events")


def test_conform_rejects_nulls_in_required_column():
    t = pa.table({"item_id": ["a", None]})
    with pytest.raises(S.SchemaError, match="'item_id' has 1 nulls"):
        S.conform(t, S.ITEMS)


def test_behavior_codes_are_funnel_order():
    assert S.BEHAVIORS == ("view", "click", "fav", "cart", "buy")
    assert S.BEHAVIOR_ALIASES["pv"] == "view" and S.BEHAVIOR_ALIASES["purchase"] == "buy"


@dataclass
class Inner:
    lr: float = 0.1
    name: str | None = None


@dataclass
class Outer:
    epochs: int = 1
    flags: list[str] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)
    on: bool = False


def test_from_dict_builds_nested_dataclasses_with_types():
    cfg = config.from_dict(Outer, {"epochs": "3", "inner": {"lr": "0.5"}, "on": "true", "flags": "a,b"})
    assert cfg == Outer(epochs=3, flags=["a", "b"], inner=Inner(lr=0.5), on=True)


def test_unknown_key_fails_naming_the_key_and_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown config key 'inner.lrr'.*inner.lr"):
        config.from_dict(Outer, {"inner": {"lrr": 1}})


def test_wrong_type_fails_naming_the_key():
    with pytest.raises(ConfigError, match="'epochs' must be int"):
        config.from_dict(Outer, {"epochs": "many"})
    with pytest.raises(ConfigError, match="'epochs' must be int"):
        config.from_dict(Outer, {"epochs": 1.5})


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 2\ninner:\n  lr: 0.01\n")
    cfg = config.load(Outer, path, ["inner.name=x", "epochs=5"])
    assert cfg.epochs == 5 and cfg.inner.lr == 0.01 and cfg.inner.name == "x"
    assert config.from_dict(Outer, config.to_dict(cfg)) == cfg


def test_bad_override_and_missing_file():
    with pytest.raises(ConfigError, match="key=value"):
        config.load(Outer, None, ["epochs"])
    with pytest.raises(ConfigError, match="cannot read config file"):
        config.load(Outer, "/nonexistent.yaml")


def test_overrides_keep_yaml_syntax_characters_as_typed():
    # "|" and "#" are separators users pass (genres "Action|Comedy"); YAML alone reads them
    # as a block scalar ("") and a comment (None).
    for raw in ("|", "#", ">", "*"):
        assert config.load(Outer, None, [f"inner.name={raw}"]).inner.name == raw
    cfg = config.load(Outer, None, ["inner.name=null", "epochs=3", "on=true", "flags=[a, b]"])
    assert cfg.inner.name is None and cfg.epochs == 3 and cfg.on and cfg.flags == ["a", "b"]


def test_a_date_given_to_a_string_key_stays_the_date_as_typed(tmp_path):
    # YAML reads an unquoted 2026-12-01 as a date; `--set dt=2026-12-01` must still work.
    assert config.load(Outer, None, ["inner.name=2026-12-01"]).inner.name == "2026-12-01"
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  name: 2026-12-01\n")
    assert config.load(Outer, path).inner.name == "2026-12-01"
