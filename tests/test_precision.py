"""The precision value type (issue 14, item 5): uniform and per-layer widths, their text form,
quantization and export honouring them per layer and per tensor, and cache keys left as they were."""

from __future__ import annotations

from pathlib import Path

import pytest

from qbench.errors import ConfigError, QbenchError
from qbench.export.onnx_cnn import container_summary, pack_weights, write_onnx, WeightContainer
from qbench.quant import QuantConfig
from qbench.quant.precision import LayerBits, Precision
from qbench.quant.quantize import calibrate, quantize
from qbench.sweep.config import SweepConfig
from qbench.sweep.plan import plan_points
from test_quantize import _trained_bn_cnn  # tests/ is on sys.path (it holds conftest.py)


def test_text_form_round_trips_and_names() -> None:
    p = Precision.parse("w8a8:head=w4,body.*=w6a8")
    assert p.layers == (LayerBits("head", 4, None), LayerBits("body.*", 6, 8))
    assert Precision.parse(str(p)) == p and str(p) == "w8a8:head=w4,body.*=w6a8"
    assert p.name.startswith("mixed-w4-8a8-") and p.name != Precision.parse("w8a8:head=w3").name
    assert Precision.parse("w4a8").name == "w4a8" == str(Precision.uniform(4, 8)) and not Precision.uniform(4, 8).mixed
    assert p.widths_of("head") == (4, 8) and p.widths_of("body.0") == (6, 8) and p.widths_of("fc") == (8, 8)
    assert Precision.parse("w8a8:head=a4").widths_of("head") == (8, 4)


@pytest.mark.parametrize("text, message", [
    ("4", "expected w<bits>a<bits>"), ("w4", "expected w<bits>a<bits>"), ("w9a8", "from 2 to 8"),
    ("w8a8:head", "is not layer=w<bits>"), ("w8a8:head=x4", "is not layer=w<bits>"), ("w8a8:head=w1", "from 2 to 8"),
])
def test_bad_precision_is_one_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        Precision.parse(text)
    assert "\n" not in str(err.value)


def test_uniform_configs_keep_their_documents_and_keys() -> None:
    """Per-layer fields are left out when empty: every cached model and results folder stays valid."""
    assert "layers" not in QuantConfig().to_dict() and "mixed" not in SweepConfig().to_dict()
    assert QuantConfig().with_precision(Precision.uniform(8, 8)).key() == QuantConfig().key()
    mixed = QuantConfig().with_precision(Precision.parse("w8a8:head=w4"))
    assert mixed.key() != QuantConfig().key() and QuantConfig.from_dict(mixed.to_dict()) == mixed
    assert mixed.for_layer("head").weight_bits == 4 and mixed.for_layer("body.0").weight_bits == 8


def _weight_widths(qmodel) -> dict[str, int]:
    return {name: int(m.quant_weight().bit_width.item()) for name, m in qmodel.named_modules()
            if hasattr(m, "quant_weight")}


def test_quantize_honours_per_layer_widths() -> None:
    model, _ = _trained_bn_cnn()
    q = quantize(model, QuantConfig().with_precision(Precision.parse("w8a8:head=w4,body.0=w3")))
    assert _weight_widths(q) == {"body.0": 3, "body.4": 8, "head": 4}
    with pytest.raises(QbenchError, match="fc names no quantized layer of TinyCNN"):
        quantize(model, QuantConfig().with_precision(Precision.parse("w8a8:fc=w4")))


def test_packing_is_decided_per_tensor(tmp_path: Path) -> None:
    model, x = _trained_bn_cnn()
    q = quantize(model, QuantConfig().with_precision(Precision.parse("w8a8:head=w4,body.0=w2")))
    calibrate(q, x, batches=2, batch_size=16)
    onnx_path = write_onnx(q, tmp_path / "m.qcdq.onnx", x[:2].numpy())
    counts = pack_weights(onnx_path, (WeightContainer.INT2, WeightContainer.INT4), tmp_path / "m.packed.onnx")
    assert counts == {"int2": 1, "int4": 1, "int8": 1}
    assert container_summary(counts) == "int2+int4+int8"
    counts = pack_weights(onnx_path, (WeightContainer.INT4,), tmp_path / "m.int4.onnx")  # INT2 refused: 2-bit in INT4
    assert counts == {"int4": 2, "int8": 1}


def test_mixed_points_in_the_plan() -> None:
    cfg = SweepConfig(models=("dscnn",), bits=((8, 8),), mixed=("w8a8:fc=w4",), backends=("torch",))
    quantized = [p for p in plan_points(cfg) if p.bits is not None]
    assert [p.precision for p in quantized] == ["w8a8", "w8a8", Precision.parse("w8a8:fc=w4").name,
                                                Precision.parse("w8a8:fc=w4").name]
    assert quantized[-1].fields()["bits"] == "w8a8:fc=w4" and "bits" not in quantized[0].fields()


@pytest.mark.requires_onnxruntime
def test_mixed_lstm_student_runs_on_the_engine_and_exports() -> None:
    """Per-layer widths reach every consumer: the engine extracts a 4-bit head beside 8-bit LSTM
    weights and reproduces Brevitas' hidden codes; the ONNX export packs the head and conforms."""
    import tempfile

    import numpy as np
    import torch

    import kernels
    import models
    from qbench.engine import StudentEngine
    from qbench.export import check_conformance, export

    torch.manual_seed(0)
    x = torch.randn(16, 48, 20)
    m = models.build_student("lstm", n_mels=20, n_frames=48, n_classes=5, hidden=16)
    m.train()
    m(x)
    q = quantize(m.eval(), QuantConfig().with_precision(Precision.parse("w8a8:fc=w4")))
    calibrate(q, x, batches=2, batch_size=8)
    assert _weight_widths(q)["fc"] == 4
    engine = StudentEngine(q)
    codes = kernels.agreement(engine.model, q.lstm, engine.features(x.numpy()), head=q.fc)
    assert codes["hidden_code_agreement"] == 1.0
    assert np.mean(engine(x.numpy()).argmax(1) == q(x).detach().numpy().argmax(1)) == 1.0
    with tempfile.TemporaryDirectory() as d:
        artifact = export(q, "onnxruntime", out_dir=Path(d), example=x[:2].numpy(), lstm_graph="fakequant_unrolled")
        assert artifact.weight_container in ("int4+int8", "int8")  # int8 only when packing would not shrink it
        assert check_conformance(artifact, q, x.numpy()).ok
