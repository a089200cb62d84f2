"""The sweep's grid options for trustworthy errors: test split size, seeds, data difficulty, level normalisation."""

from __future__ import annotations

import argparse

import pytest

from qbench.data.config import SNR_PRESETS, DataConfig
from qbench.errors import ConfigError
from qbench.sweep.config import DEFAULT_TEST_CLIPS, SweepConfig
from qbench.sweep.plan import plan_points
from qbench.sweep.run import sweep_name


def _config(*argv: str) -> SweepConfig:
    from qbench.commands import sweep as sweep_command
    from qbench.sweep.options import config_from_args

    parser = argparse.ArgumentParser()
    sweep_command.add_arguments(parser)
    return config_from_args(parser.parse_args(list(argv)))


def test_the_default_grid_scores_a_test_split_that_resolves_one_point() -> None:
    cfg = _config()
    assert cfg.data.test_clips == DEFAULT_TEST_CLIPS >= 3000
    assert sweep_name(cfg) == "default"  # the CLI's defaults are the config's defaults
    assert sum(cfg.data.split_sizes(cfg.data.clips_per_class, 12).values()) > cfg.data.clips_per_class
    assert cfg.data.split_sizes(cfg.data.clips_per_class, 12)["test"] * 12 >= DEFAULT_TEST_CLIPS


def test_test_clips_is_its_own_option_and_generated_data_only(tmp_path) -> None:
    assert _config("--test-clips", "600").data.test_clips == 600
    with pytest.raises(ConfigError, match="test_clips"):
        DataConfig(kind="csv", path=str(tmp_path), test_clips=100)
    with pytest.raises(ConfigError, match="--data brings its own"):
        _config("--data", str(tmp_path), "--dataset-format", "csv", "--test-clips", "10")


def test_quick_runs_stay_tiny() -> None:
    cfg = _config("--quick")
    assert cfg.data.test_clips is None and cfg.teacher_data == cfg.data and cfg.student_epochs == ()


@pytest.mark.parametrize(("text", "expected"), [("clean", SNR_PRESETS["clean"]), ("hard", (0.0, 20.0)),
                                                 ("5,25", (5.0, 25.0))])
def test_snr_presets_and_ranges(text: str, expected: tuple[float, float]) -> None:
    assert _config("--snr", text).data.snr_db == expected


@pytest.mark.parametrize("text", ["loud", "1,2,3", "30,10"])
def test_bad_snr_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="snr"):
        _config("--snr", text)


def test_seeds_add_fp32_points_per_seed_and_quantize_the_first() -> None:
    cfg = _config("--seeds", "3,1,2", "--bits", "4")
    assert cfg.seed == 3 and cfg.all_seeds == (3, 1, 2)
    points = plan_points(cfg)
    fp32 = [p for p in points if p.method == "fp32" and p.role == "student" and p.backend.value == "torch"]
    assert len(fp32) == len(cfg.models) * len(cfg.distill) * 3
    assert {p.seed for p in fp32} == {None, 1, 2}
    assert all(p.seed is None for p in points if p.method != "fp32")
    ids = [p.id for p in points]
    assert len(ids) == len(set(ids)) and any(i.endswith("@seed2") for i in ids)
    with pytest.raises(ConfigError, match="--seeds"):
        _config("--seeds", "0,1", "--seed", "4")


def test_per_student_epochs_and_the_teachers_own_data() -> None:
    cfg = SweepConfig()
    assert cfg.student_train_for("lstm").epochs > cfg.student_train_for("dscnn").epochs > cfg.student_train.epochs
    assert cfg.student_train_for("crnn") == cfg.student_train  # no override: the shared budget
    # SpecAugment for the DS-CNN only (it overfits without; the LSTM does worse with it)
    assert cfg.student_train_for("dscnn").augment is not None and cfg.student_train_for("lstm").augment is None
    assert _config("--augment", "none").student_train_for("dscnn").augment is None
    assert _config("--models", "lstm,crnn", "--augment", "crnn").student_train_for("crnn").augment is not None
    with pytest.raises(ConfigError, match="--augment gru: not among the students"):
        _config("--augment", "gru")
    assert cfg.teacher_data.clips_per_class > cfg.data.clips_per_class
    assert cfg.teacher_data.seed == cfg.data.seed and cfg.teacher_data.snr_db == cfg.data.snr_db
    assert SweepConfig.from_dict(cfg.to_dict()) == cfg


def test_clip_norm_option_reaches_every_model_and_keeps_default_keys() -> None:
    causal = _config("--clip-norm", "causal")
    assert causal.model_options == {"clip_norm": "causal"}
    assert _config().model_options == {}  # the default adds nothing to cache keys


def test_an_undistilled_grid_trains_no_teacher_and_its_students_ignore_kd_settings(tmp_path) -> None:
    from qbench.distill import DistillConfig, DistillMode
    from qbench.sweep.pipeline import Pipeline

    plain = SweepConfig(distill=("none",), qat_distill=("none",))
    assert not plain.needs_teacher and all(p.role == "student" for p in plan_points(plain))
    assert SweepConfig().needs_teacher and plan_points(SweepConfig())[0].role == "teacher"
    # the undistilled student's cache key holds no KD setting (changing --kd-temperature keeps it);
    # a distilled one's does
    cfg = SweepConfig(distill=("none", "kd"), qat_distill=("kd",))
    hot = cfg.replace(distill_params=DistillConfig(temperature=8.0))
    a, b = Pipeline(cfg, cache_dir=tmp_path, progress=False), Pipeline(hot, cache_dir=tmp_path, progress=False)
    assert a._distill_key(DistillMode.NONE) == b._distill_key(DistillMode.NONE) == DistillConfig().to_dict()
    assert a._distill_key(DistillMode.KD) != b._distill_key(DistillMode.KD)


def test_a_results_document_from_before_augment_reads_as_unmasked() -> None:
    doc = SweepConfig().to_dict()
    del doc["augment"]  # as written before the option existed
    assert SweepConfig.from_dict(doc).student_train_for("dscnn").augment is None
    assert SweepConfig.from_dict(SweepConfig().to_dict()) == SweepConfig()


RESUME_IMPORTS = """
import sys
from qbench.provenance import provenance
from qbench.sweep.config import SweepConfig
from qbench.sweep.plan import plan_points
from qbench.capabilities import LSTM_STUDENT, RECURRENT, capabilities
import models
plan_points(SweepConfig())
provenance()
assert {LSTM_STUDENT, RECURRENT} <= capabilities(models.build_student("lstm", n_mels=40, n_frames=101, n_classes=3))
print(sorted(m for m in ("brevitas", "scipy.signal", "onnxruntime", "openvino") if m in sys.modules))
"""


def test_planning_a_resume_imports_no_quantizer_or_runtime():
    """A resume with nothing left to measure plans the grid and writes provenance: neither needs
    Brevitas (3 s to import), SciPy's signal module (1.4 s) or a runtime, which made a resume of
    the default sweep take 11-13 s against the 10 s it should."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", RESUME_IMPORTS], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
