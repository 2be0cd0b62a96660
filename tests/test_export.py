"""export-best and predict: retraining reproduces the trial, files load safely, inputs checked."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from mnist_hpo.cli import app
from mnist_hpo.errors import UsageError
from mnist_hpo.families import FAMILIES
from mnist_hpo.ml import data
from mnist_hpo.ml.hyperparams import sample_training
from mnist_hpo.ml.space import Fixed, Hyper
from mnist_hpo.outputs import export, model_file, predict
from mnist_hpo.resilience import storage as storage_mod
from mnist_hpo.search import study as study_mod
from mnist_hpo.search.build import build_trial
from mnist_hpo.search.spec import StudySpec


@pytest.fixture(scope="module")
def exported(
    finished_study: tuple[str, str], mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> export.Exported:
    url, name = finished_study
    out = tmp_path_factory.mktemp("export") / "best.safetensors"
    return export.export_best(url, name, out, data_dir=mnist_dir)


def test_retraining_reproduces_the_best_trial_exactly(
    exported: export.Exported, finished_study: tuple[str, str]
) -> None:
    url, name = finished_study
    study, _ = study_mod.load(storage_mod.open_storage(url), name)
    best = study_mod.best_trial(study)
    assert best is not None
    m = exported.meta
    assert m["trial"] == best.number and m["params"] == best.params
    assert m["seed"] == best.user_attrs["seed"]
    # CPU training is deterministic: the same params and seed give the same weights, so the
    # exported model scores exactly what the worker recorded, on validation and on test.
    assert m["validation_accuracy"] == best.value
    assert m["test_accuracy"] == best.user_attrs["test_accuracy"]
    assert exported.reproduced
    assert m["n_params"] == best.user_attrs["n_params"]
    assert m["weights_from"].startswith("retrained")


def test_export_applies_the_training_normalisation(
    exported: export.Exported, raw_mnist: data.RawData
) -> None:
    # predict on the raw test IDX bytes must score what export measured on the split's
    # standardised tensors: only true if predict scales inputs exactly as training did.
    loaded = model_file.load_model(exported.path)
    images = raw_mnist.test_images
    preds = predict.classify(loaded, images, [str(i) for i in range(len(images))])
    correct = sum(p.digit == int(y) for p, y in zip(preds, raw_mnist.test_labels, strict=True))
    assert correct / len(images) == exported.meta["test_accuracy"]
    assert all(0.0 <= p.confidence <= 1.0 for p in preds)


def test_a_saved_checkpoint_is_used_instead_of_retraining(
    exported: export.Exported, finished_study: tuple[str, str], mnist_dir: Path, tmp_path: Path
) -> None:
    url, name = finished_study
    weights = model_file.load_model(exported.path).model.state_dict()
    done = export.export_best(
        url, name, tmp_path / "ckpt.safetensors", data_dir=mnist_dir, weights=weights
    )
    assert done.meta["weights_from"] == "the trial's final checkpoint"
    assert done.meta["validation_accuracy"] == exported.meta["validation_accuracy"]


def _random_params(family: str, seed: int) -> dict[str, object]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    trial = study.ask()
    hp = Hyper(trial)
    FAMILIES[family].sample(hp)
    sample_training(hp, epochs=1, seed=0)
    return dict(trial.params)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_round_trips_through_the_file(family: str, tmp_path: Path) -> None:
    params = _random_params(family, 1)
    if family == "cnn":
        params["batch_norm"] = True  # int64 num_batches_tracked buffers must survive too
    spec = StudySpec(name="t", family=family, epochs=1, n_trials=1)
    built = build_trial(spec, Fixed(params), 0, torch.device("cpu"))
    model, cfg = built.model.eval(), built.cfg
    meta = {
        "format": model_file.FORMAT,
        "format_version": model_file.FORMAT_VERSION,
        "family": family,
        "params": params,
        "spec": spec.to_dict(),
        "normalisation": {"mean": 0.13, "std": 0.31},
        "outputs": "logits" if cfg.loss == "cross_entropy" else "scores",
    }
    path = tmp_path / "m.safetensors"
    model_file.save(path, model, meta)
    loaded = model_file.load_model(path)
    x = torch.randn(5, 1, 28, 28)
    with torch.inference_mode():
        assert torch.equal(loaded.model(x), model(x))
    # The file is plain tensors plus a JSON header: nothing to unpickle.
    assert b"torch._utils" not in path.read_bytes()


def _expect_invalid(path: Path, fragment: str) -> None:
    with pytest.raises(UsageError, match="is not a valid mnist-hpo model export") as e:
        model_file.load_model(path)
    assert fragment in str(e.value)


def test_files_that_are_not_exports_are_refused(exported: export.Exported, tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x80\x04 not a model at all" * 10)
    _expect_invalid(junk, "not a safetensors file")
    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, str(bare))
    _expect_invalid(bare, "without mnist-hpo metadata")

    loaded = model_file.load_model(exported.path)
    tensors = dict(loaded.model.state_dict())
    future = tmp_path / "future.safetensors"
    save_file(tensors, str(future), {"mnist_hpo": json.dumps({**loaded.meta, "format_version": 9})})
    _expect_invalid(future, "format version 9")
    tensors.popitem()
    short = tmp_path / "short.safetensors"
    save_file(tensors, str(short), {"mnist_hpo": json.dumps(loaded.meta)})
    _expect_invalid(short, "Missing key")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(exported.path.read_bytes()[:-100])
    _expect_invalid(truncated, "not a safetensors file")


def cli(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    """The CLI in this process (a fresh process costs ~4 s of imports on 2 cores)."""
    return CliRunner().invoke(app, list(args), env=env)


def _png(path: Path, pixels: torch.Tensor, mode: str = "L") -> Path:
    Image.fromarray(pixels.numpy()).convert(mode).save(path)
    return path


def test_predict_cli_on_pngs(
    exported: export.Exported, raw_mnist: data.RawData, tmp_path: Path
) -> None:
    loaded = model_file.load_model(exported.path)
    digits = raw_mnist.test_images[:6]
    expected = [p.digit for p in predict.classify(loaded, digits, ["x"] * 6)]
    files = [_png(tmp_path / f"{i}.png", d) for i, d in enumerate(digits)]
    rgb = _png(tmp_path / "rgb.png", digits[0], "RGB")
    r = cli("predict", str(exported.path), *map(str, files), str(rgb))
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"model: trial {exported.meta['trial']} of finished")
    assert lines[-1].startswith("latency: ") and "ms per image (7 image(s)" in lines[-1]
    got = [int(line.split(": ")[1].split()[0]) for line in lines[1:-1]]
    assert got == [*expected, expected[0]]  # RGB is converted to the same grayscale digit
    assert "%)" in lines[1] and "warning" not in r.stderr

    r = cli("predict", str(exported.path), str(files[0]), "--json")
    record = json.loads(r.stdout)
    assert record["digit"] == expected[0] and 0 < record["confidence"] <= 1


def test_dark_on_light_images_are_flagged_and_invert_fixes_them(
    exported: export.Exported, raw_mnist: data.RawData, tmp_path: Path
) -> None:
    loaded = model_file.load_model(exported.path)
    digit = raw_mnist.test_images[:1]
    expected = predict.classify(loaded, digit, ["x"])[0].digit
    dark = _png(tmp_path / "dark.png", 255 - digit[0])
    r = cli("predict", str(exported.path), str(dark))
    assert "pass --invert" in r.stderr
    r = cli("predict", str(exported.path), str(dark), "--invert")
    assert r.stdout.splitlines()[1].startswith(f"dark.png: {expected} ") and not r.stderr


def test_predict_reads_an_idx_file(exported: export.Exported, mnist_dir: Path) -> None:
    images, names = predict.read_images(mnist_dir / "t10k-images-idx3-ubyte.gz")
    assert images.shape == (10_000, 28, 28) and names[3] == "t10k-images-idx3-ubyte.gz[3]"


def _one_line_error(r, code: int, fragment: str) -> None:  # type: ignore[no-untyped-def]
    assert r.exit_code == code, (r.stdout, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], r.stderr


def test_bad_inputs_are_one_line_errors(
    exported: export.Exported, raw_mnist: data.RawData, mnist_dir: Path, tmp_path: Path
) -> None:
    model = str(exported.path)
    big = tmp_path / "big.png"
    Image.new("L", (32, 32)).save(big)
    _one_line_error(cli("predict", model, str(big)), 2, "is 32x32; the model takes 28x28")
    text = tmp_path / "notes.txt"
    text.write_text("seven")
    _one_line_error(cli("predict", model, str(text)), 2, "neither an image")
    labels = str(mnist_dir / "t10k-labels-idx1-ubyte.gz")
    _one_line_error(cli("predict", model, labels), 2, "not 28x28 images")
    _one_line_error(cli("predict", str(text), str(big)), 2, "not a valid mnist-hpo model")
    _one_line_error(cli("predict", model, str(tmp_path / "nope.png")), 2, "cannot read")


def test_export_best_cli(finished_study: tuple[str, str], mnist_dir: Path, tmp_path: Path) -> None:
    url, name = finished_study
    env = {"MNIST_HPO_STORAGE": url, "MNIST_HPO_DATA": str(mnist_dir)}
    out = tmp_path / "m.safetensors"
    r = cli("export-best", name, "-o", str(out), env=env)
    assert r.exit_code == 0, r.stderr
    assert f"wrote {out}: trial" in r.stdout and "warning" not in r.stderr
    assert model_file.load_model(out).meta["study"] == name
    _one_line_error(cli("export-best", name, "--trial", "99", env=env), 2, "has no trial 99")
    study, _ = study_mod.load(storage_mod.open_storage(url), name)
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert pruned, "the finished study is expected to prune some trials"
    r = cli("export-best", name, "--trial", str(pruned[0].number), env=env)
    _one_line_error(r, 2, "is PRUNED, not COMPLETE")


def test_predict_imports_neither_optuna_nor_sqlalchemy(
    exported: export.Exported, raw_mnist: data.RawData, tmp_path: Path
) -> None:
    import subprocess
    import sys

    png = _png(tmp_path / "d.png", raw_mnist.test_images[0])
    code = (
        "import sys\n"
        "from mnist_hpo.cli import app\n"
        f"sys.argv = ['mnist-hpo', 'predict', {str(exported.path)!r}, {str(png)!r}]\n"
        "try:\n    app()\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "print(sorted(m for m in ('optuna', 'sqlalchemy') if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout
