"""Configs validate when built, name the bad field, and round-trip through JSON."""

import json

import pytest

from qbench.config import KIND_KEY, VERSION_KEY
from qbench.data.config import DataConfig, FeatureConfig
from qbench.distill import DistillConfig
from qbench.errors import ConfigError, QbenchError
from qbench.quant.config import BIT_WIDTHS, QuantConfig
from qbench.sweep.config import SweepConfig, bit_pairs, parse_bits
from qbench.train import TrainConfig

CONFIGS = [
    QuantConfig(weight_bits=3, act_bits=6, granularity="per_channel", scale_type="po2"),
    DataConfig(clip_seconds=1.0, clips_per_class=10, features=FeatureConfig(n_mels=32)),
    DistillConfig(mode="kd+tkd", temperature=2.0),
    TrainConfig(epochs=2, max_train_batches=3),
    SweepConfig(models=("lstm",), bits=((2, 8), (4, 4)), backends=("torch", "engine"), threads=(1,)),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: type(c).__name__)
def test_round_trip_and_key(cfg):
    doc = json.loads(cfg.to_json())
    assert doc[KIND_KEY] == type(cfg).__name__ and doc[VERSION_KEY] == 1
    again = type(cfg).from_json(cfg.to_json())
    assert again == cfg
    assert again.key() == cfg.key()


def test_key_changes_with_any_field():
    assert SweepConfig().key() != SweepConfig(seed=1).key()
    assert SweepConfig().key() != SweepConfig(data=DataConfig(clip_seconds=2.0)).key()


def test_unknown_field_and_wrong_kind_are_rejected():
    doc = QuantConfig().to_dict()
    with pytest.raises(ConfigError, match="expected a TrainConfig"):
        TrainConfig.from_dict(doc)
    with pytest.raises(ConfigError, match="no field"):
        QuantConfig.from_dict({**doc, "wieght_bits": 4})
    with pytest.raises(ConfigError, match="version 99"):
        QuantConfig.from_dict({**doc, VERSION_KEY: 99})


@pytest.mark.parametrize("bad", [0, 1, 9, 2.5, "4", None, True])
@pytest.mark.parametrize("field", ["weight_bits", "act_bits"])
def test_quant_config_rejects_bad_bits_naming_the_field(field, bad):
    with pytest.raises(ConfigError, match=rf"QuantConfig\.{field} must be an integer from 2 to 8") as exc:
        QuantConfig(**{field: bad})
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, QbenchError)


@pytest.mark.parametrize("bits", BIT_WIDTHS)
def test_quant_config_accepts_the_grid_and_names_itself(bits):
    q = QuantConfig(weight_bits=bits, act_bits=8)
    assert q.name("lstm") == f"lstm_w{bits}a8"


def test_cell_state_may_be_16_bits_but_weights_may_not():
    assert QuantConfig(cell_bits=16).cell_bits == 16
    with pytest.raises(ConfigError, match="weight_bits"):
        QuantConfig(weight_bits=16)


def test_quant_config_rejects_unknown_enum_values():
    with pytest.raises(ConfigError, match="scale_type must be one of float, po2"):
        QuantConfig(scale_type="log2")


@pytest.mark.parametrize("text, message", [
    ("1", "1 bits is not supported"), ("9", "9 bits is not supported"),
    ("4,x", "'x' is not an integer"), ("", "comma-separated"), ("2,,4", "comma-separated"),
])
def test_parse_bits_errors_are_one_line(text, message):
    with pytest.raises(ConfigError, match=message) as exc:
        parse_bits("--bits", text)
    assert "\n" not in str(exc.value)


def test_bit_pairs():
    assert bit_pairs(bits=(2, 4), weight_bits=None, act_bits=None) == ((2, 2), (4, 4))
    assert bit_pairs(bits=None, weight_bits=(2, 4), act_bits=None) == ((2, 8), (4, 8))
    assert bit_pairs(bits=None, weight_bits=(4,), act_bits=(4, 8)) == ((4, 4), (4, 8))
    assert bit_pairs(bits=None, weight_bits=None, act_bits=None) is None
    with pytest.raises(ConfigError):
        bit_pairs(bits=(4,), weight_bits=(4,), act_bits=None)


def test_sweep_config_rejects_bad_choices():
    with pytest.raises(ConfigError, match="backends must be one of .*, got 'tensorrt'"):
        SweepConfig(backends=("torch", "tensorrt"))
    with pytest.raises(ConfigError, match="must include torch"):
        SweepConfig(backends=("onnxruntime",))
    with pytest.raises(ConfigError, match="temporal KD needs the transformer"):
        SweepConfig(teacher="resnet", distill=("tkd",), qat_distill=("tkd",))
    with pytest.raises(ConfigError, match="qat_distill: tkd must also be in distill"):
        SweepConfig(distill=("none",))
