import json

import pytest

from pipelines.core import config as configs
from pipelines.lessons.cifar10_darknet import CONFIGS, Config


def test_set_parses_each_field_type():
    cfg = configs.apply(CONFIGS["tiny"], configs.parse_sets(
        ["lr=0.5", "epochs=3", "groups=1,2", "bf16=false", "moms=0.9,0.8"]))
    assert (cfg.lr, cfg.epochs, cfg.groups, cfg.bf16, cfg.moms) == (0.5, 3, (1, 2), False, (0.9, 0.8))


def test_unknown_key_names_the_valid_ones():
    with pytest.raises(configs.ConfigError, match="unknown key.*nope.*valid keys: groups, nf, p, bn_mom, .*seed, bf16, fp16, clip, accum"):
        configs.apply(CONFIGS["tiny"], {"nope": "1"})


@pytest.mark.parametrize("item, msg", [
    ("epochs=three", "expected int"),
    ("lr=fast", "expected float"),
    ("bf16=maybe", "expected bool"),
    ("lr", "expected key=value"),
])
def test_bad_values_are_config_errors(item, msg):
    with pytest.raises(configs.ConfigError, match=msg):
        configs.apply(CONFIGS["tiny"], configs.parse_sets([item]))


def test_config_validation_is_a_config_error():
    with pytest.raises(configs.ConfigError, match="epochs"):
        configs.apply(CONFIGS["tiny"], {"epochs": "0"})


def test_json_config_on_top_of_a_base(tmp_path):
    f = tmp_path / "best.json"
    f.write_text(json.dumps({"base": "sample", "lr": 0.2, "groups": [1, 1]}))
    cfg, label = configs.load(CONFIGS, str(f))
    assert cfg == configs.apply(CONFIGS["sample"], {"lr": "0.2", "groups": "1,1"})
    assert label == str(f)


def test_json_config_defaults_to_default_base(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"epochs": 5}))
    assert configs.load(CONFIGS, str(f))[0] == Config(epochs=5)


@pytest.mark.parametrize("text, msg", [("{not json", "not valid JSON"), ("[1, 2]", "expected a JSON object"),
                                       ('{"base": "huge"}', "base 'huge'"), ('{"lr": "x"}', "expected float")])
def test_bad_json_configs(tmp_path, text, msg):
    f = tmp_path / "c.json"
    f.write_text(text)
    with pytest.raises(configs.ConfigError, match=msg):
        configs.load(CONFIGS, str(f))


def test_missing_config_file():
    with pytest.raises(configs.ConfigError, match="cannot read"):
        configs.load(CONFIGS, "/nonexistent/c.json")
    with pytest.raises(configs.ConfigError, match="not one of tiny, sample, default"):
        configs.load(CONFIGS, "huge")


def test_to_dict_round_trips_through_json(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps(configs.to_dict(CONFIGS["sample"])))
    assert configs.load(CONFIGS, str(f))[0] == CONFIGS["sample"]
