"""Property-based tests of the configs: random JSON files and --set items given to every
pipeline's configs load or raise ConfigError, never another exception. Settings and
helpers: tests/fuzzing.py."""
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipelines.core import config as configs
from pipelines.core import registry
from pipelines.lessons.cifar10_darknet import CONFIGS
from tests.fuzzing import FUZZ, scratch, write_file  # noqa: F401 (scratch: a fixture)

JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                           lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
                           max_leaves=6)


def _pipeline_configs():
    return [registry.get(n).configs for n in registry.names()]


@FUZZ
@given(data=st.data())
def test_a_json_config_loads_or_is_a_config_error(scratch, data):
    cfgs = data.draw(st.sampled_from(_pipeline_configs()))
    fields = list(configs.fields(type(cfgs["default"])))
    raw = data.draw(st.one_of(
        st.binary(max_size=80),
        JSON_VALUES.map(lambda v: json.dumps(v).encode()),
        st.dictionaries(st.sampled_from(fields + ["base", "nope"]), JSON_VALUES, max_size=4).map(lambda d: json.dumps(d).encode()),
    ))
    p = write_file(scratch / "cfg", "c.json", raw)
    try:
        cfg, label = configs.load(cfgs, str(p))
    except configs.ConfigError as e:
        assert "\n" not in str(e)
        return
    assert type(cfg) is type(cfgs["default"]) and label == str(p)


@FUZZ
@given(data=st.data())
def test_a_set_override_applies_or_is_a_config_error(data):
    cfgs = data.draw(st.sampled_from(_pipeline_configs()))
    fields = list(configs.fields(type(cfgs["default"])))
    items = data.draw(st.lists(st.one_of(
        st.tuples(st.sampled_from(fields), st.text(max_size=12)).map(lambda kv: f"{kv[0]}={kv[1]}"),
        st.text(max_size=12),
    ), max_size=3))
    try:
        cfg = configs.apply(cfgs["tiny"], configs.parse_sets(items))
    except configs.ConfigError as e:
        assert "\n" not in str(e)
        return
    assert type(cfg) is type(cfgs["tiny"])


@pytest.mark.parametrize("text", ['{"base": [1]}', '{"base": null}', '{"base": {"a": 1}}', '{"bs": [1, 2]}',
                                  '{"groups": {"a": 1}}', '{"lr": Infinity}', '{"lr": NaN}', '{"epochs": 1e400}',
                                  '{"epochs": 10000000000000000000000}', '{"moms": "0.9"}', '"tiny"', 'null'])
def test_json_config_edge_cases_are_config_errors_or_configs(tmp_path, text):
    p = write_file(tmp_path, "c.json", text.encode())
    try:
        configs.load(CONFIGS, str(p))
    except configs.ConfigError as e:
        assert "\n" not in str(e)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_non_finite_float_is_refused(value):
    with pytest.raises(configs.ConfigError, match=rf"--set lr={value}: expected float \(nan and inf are refused\)"):
        configs.apply(CONFIGS["tiny"], configs.parse_sets([f"lr={value}"]))
