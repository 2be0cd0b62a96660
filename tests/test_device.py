"""Device and precision checks before any trial starts: one sentence for what cannot work."""

from __future__ import annotations

import pytest
import torch

from mnist_hpo.errors import HpoError, UsageError
from mnist_hpo.families import FAMILIES, cnn, perceptron, simple_mlp
from mnist_hpo.ml import device
from mnist_hpo.ml.device import pick_precision


def test_bf16_is_refused_where_the_hardware_would_emulate_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(device, "bf16_native", lambda device: False)
    with pytest.raises(HpoError, match="no native bfloat16.*use --precision auto or fp32"):
        device.check_precision("bf16", torch.device("cpu"))
    device.check_precision("auto", torch.device("cpu"))  # auto falls back to fp32 by itself
    device.check_precision("fp32", torch.device("cpu"))


def test_devices_this_machine_lacks_are_one_sentence() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(HpoError, match="no CUDA GPU is visible here; use --device cpu"):
        device.resolve_device("cuda")
    with pytest.raises(UsageError, match="is not a device"):
        device.resolve_device("tpu:0")
    assert device.resolve_device("auto") == torch.device("cpu")


def test_auto_precision_picks_bf16_only_where_it_was_measured_faster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cpu = torch.device("cpu")
    tiny = perceptron.build(perceptron.Config())  # 7,850 parameters
    mlp = simple_mlp.build(simple_mlp.Config(hidden=128, dropout=0.0))  # 101,770 parameters
    conv = FAMILIES["cnn"].build(cnn.Config((8,), 3, (32,), 0.0, False))
    monkeypatch.setattr(device, "bf16_native", lambda d: True)
    assert pick_precision("auto", mlp, 64, cpu) == "bf16"  # 6.5 M parameter-samples per step
    assert pick_precision("auto", mlp, 32, cpu) == "fp32"  # 3.3 M: the casts cost more
    assert pick_precision("auto", tiny, 256, cpu) == "fp32"  # 2.0 M
    assert pick_precision("auto", tiny, 512, cpu) == "bf16"  # 4.0 M
    assert pick_precision("auto", conv, 16, cpu) == "bf16"
    assert pick_precision("auto", mlp, 512, torch.device("cuda")) == "fp32"  # not measured yet
    assert pick_precision("fp32", mlp, 512, cpu) == "fp32"
    monkeypatch.setattr(device, "bf16_native", lambda d: False)
    assert pick_precision("auto", mlp, 512, cpu) == "fp32"
    assert pick_precision("bf16", tiny, 16, cpu) == "bf16"  # asked for explicitly
    with pytest.raises(ValueError, match="unknown precision"):
        pick_precision("half", mlp, 64, cpu)
