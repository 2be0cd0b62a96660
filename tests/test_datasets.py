"""The MNIST-format datasets: checksum tables, per-dataset verification, cache and mirrors."""

from __future__ import annotations

import gzip
import hashlib
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from conftest import write_spec
from mnist_hpo.errors import HpoError, UsageError
from mnist_hpo.ml import data, datasets
from mnist_hpo.ml.datasets import IdxDataset, IdxFile
from mnist_hpo.search import spec, spec_files
from mnist_hpo.search import study as study_mod

NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
NAMES += ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def test_checksum_tables_are_complete_and_unambiguous() -> None:
    md5s: list[str] = []
    for d in datasets.IDX_DATASETS.values():
        assert [f.name for f in d.files] == list(NAMES)
        assert [f.count for f in d.files] == [60_000, 60_000, 10_000, 10_000]
        assert d.mirrors and all(re.fullmatch(r"https?://[^ ]+/", m) for m in d.mirrors)
        md5s += [f.gz_md5 for f in d.files] + [f.raw_md5 for f in d.files if f.raw_md5]
        assert datasets.TRAIN_IMAGES[d.name] == 60_000 and d.name in datasets.DATASETS
    assert all(re.fullmatch(r"[0-9a-f]{32}", m) for m in md5s)
    assert len(set(md5s)) == len(md5s)  # so a file names exactly one dataset's file
    assert spec.DATASETS is datasets.DATASETS and spec.TRAIN_IMAGES is datasets.TRAIN_IMAGES


@pytest.mark.parametrize("name", ["fashion-mnist", "kmnist"])
def test_spec_accepts_the_new_datasets_with_their_sizes(name: str, tmp_path: Path) -> None:
    body = f'family = "cnn"\nepochs = 1\nn_trials = 1\ndataset = "{name}"\n'
    assert spec_files.load_spec(str(write_spec(tmp_path, "ok", body))).dataset == name
    too_big = write_spec(tmp_path, "big", body + "validation_size = 50000\ntrain_size = 20000\n")
    with pytest.raises(UsageError, match=f"{name} has 60,000 training images"):
        spec_files.load_spec(str(too_big))


def test_unknown_dataset_lists_the_known_ones() -> None:
    with pytest.raises(UsageError, match="use one of mnist, mnist-sample, fashion-mnist, kmnist"):
        data.load("cifar")


# Tiny generated datasets registered beside the real ones: the real tables are only checked
# against real files (Fashion-MNIST below, MNIST in test_data.py).


def _idx(arr: np.ndarray) -> bytes:
    head = b"\x00\x00\x08" + bytes([arr.ndim]) + b"".join(n.to_bytes(4, "big") for n in arr.shape)
    return head + arr.astype(np.uint8).tobytes()


def _official_gz(content: bytes) -> bytes:
    return gzip.compress(content, compresslevel=9, mtime=0)


def _recompressed(content: bytes) -> bytes:
    return gzip.compress(content, compresslevel=1, mtime=12345)


Tiny = Callable[..., tuple[IdxDataset, dict[str, bytes]]]


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> Tiny:
    """make(name, seed, raw_md5s=True, mirrors=()): a registered 12+6 image dataset, contents."""

    def make(
        name: str, seed: int, raw_md5s: bool = True, mirrors: tuple[str, ...] = ()
    ) -> tuple[IdxDataset, dict[str, bytes]]:
        rng = np.random.default_rng(seed)
        arrays = [
            rng.integers(0, 256, (12, 28, 28)),
            rng.integers(0, 10, 12),
            rng.integers(0, 256, (6, 28, 28)),
            rng.integers(0, 10, 6),
        ]
        contents = {n: _idx(a) for n, a in zip(NAMES, arrays, strict=True)}
        files = tuple(
            IdxFile(
                key,
                n,
                hashlib.md5(_official_gz(contents[n])).hexdigest(),
                hashlib.md5(contents[n]).hexdigest() if raw_md5s else None,
                len(a),
            )
            for key, n, a in zip(
                ("train_images", "train_labels", "test_images", "test_labels"),
                NAMES,
                arrays,
                strict=True,
            )
        )
        title = name.title()
        ds = IdxDataset(name, title, f"{title} test set", f"{title}Raw", files, mirrors)
        monkeypatch.setitem(datasets.IDX_DATASETS, name, ds)
        return ds, contents

    return make


def _write(
    folder: Path, contents: dict[str, bytes], how: Callable[[bytes], bytes], suffix: str
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for n, c in contents.items():
        (folder / f"{n}{suffix}").write_bytes(how(c))
    return folder


def test_official_raw_and_recompressed_copies_verify_alike(tiny: Tiny, tmp_path: Path) -> None:
    _, contents = tiny("tiny-a", 1)
    official = data.load_dir(_write(tmp_path / "gz", contents, _official_gz, ".gz"), "tiny-a")
    assert official.kind == "tiny-a" and official.train_images.shape == (12, 28, 28)
    assert "official Tiny-A files" in official.source
    raw = data.load_dir(_write(tmp_path / "raw", contents, bytes, ""), "tiny-a")
    again = data.load_dir(_write(tmp_path / "re", contents, _recompressed, ".gz"), "tiny-a")
    assert raw.fingerprint == again.fingerprint == official.fingerprint


def test_without_a_content_md5_only_the_official_gz_verifies(tiny: Tiny, tmp_path: Path) -> None:
    _, contents = tiny("tiny-k", 2, raw_md5s=False)  # as KMNIST: only .gz md5s are published
    assert data.load_dir(_write(tmp_path / "gz", contents, _official_gz, ".gz"), "tiny-k")
    raw = _write(tmp_path / "raw", contents, bytes, "")
    with pytest.raises(HpoError, match="publishes checksums of its .gz files only, so a decomp"):
        data.load_dir(raw, "tiny-k")
    again = _write(tmp_path / "re", contents, _recompressed, ".gz")
    with pytest.raises(HpoError, match="so a re-compressed copy or a corrupt file cannot be"):
        data.load_dir(again, "tiny-k")


@pytest.mark.parametrize(("how", "suffix"), [(_official_gz, ".gz"), (bytes, "")])
def test_a_file_of_another_dataset_is_refused_naming_both(
    tiny: Tiny,
    tmp_path: Path,
    how: Callable[[bytes], bytes],
    suffix: str,
) -> None:
    _, a = tiny("tiny-a", 1)
    _, b = tiny("tiny-b", 2)
    folder = _write(tmp_path / "d", {**a, NAMES[1]: b[NAMES[1]]}, how, suffix)
    expected = (
        f"{NAMES[1]}{suffix} is Tiny-B's {NAMES[1]}, but Tiny-A \\(dataset tiny-a\\) was "
        "expected; point MNIST_HPO_DATA at the Tiny-A files"
    )
    with pytest.raises(HpoError, match=expected):
        data.load_dir(folder, "tiny-a")


def test_files_swapped_within_a_dataset_are_named(tiny: Tiny, tmp_path: Path) -> None:
    _, a = tiny("tiny-a", 1)
    folder = _write(tmp_path / "d", {**a, NAMES[3]: a[NAMES[1]]}, _official_gz, ".gz")
    with pytest.raises(HpoError, match=f"is Tiny-A's {NAMES[1]}, not its {NAMES[3]}"):
        data.load_dir(folder, "tiny-a")


def test_an_unknown_file_names_the_dataset_expected(tiny: Tiny, tmp_path: Path) -> None:
    _, a = tiny("tiny-a", 1)
    _, other = tiny("tiny-z", 9)
    del datasets.IDX_DATASETS["tiny-z"]  # a valid IDX file that no table knows
    folder = _write(tmp_path / "d", {**a, NAMES[0]: other[NAMES[0]]}, _recompressed, ".gz")
    with pytest.raises(HpoError) as info:
        data.load_dir(folder, "tiny-a")
    message = str(info.value)
    assert "matches no official checksum (MNIST, Fashion-MNIST, Kuzushiji-MNIST" in message
    assert f"Tiny-A's {NAMES[0]} was expected" in message and "replace it" in message


def test_own_subfolders_come_before_the_folder_itself(tiny: Tiny, tmp_path: Path) -> None:
    _, a = tiny("tiny-a", 1)
    _, b = tiny("tiny-b", 2)
    root = _write(tmp_path / "root", b, _official_gz, ".gz")  # tiny-b's files at the top
    _write(root / "tiny-a", a, bytes, "")  # the cache's layout: NAME/
    assert data.load_dir(root, "tiny-a").kind == "tiny-a"
    assert data.load_dir(root, "tiny-b").kind == "tiny-b"
    _write(tmp_path / "tv" / "Tiny-ARaw" / "raw", a, _official_gz, ".gz")  # torchvision's
    assert data.load_dir(tmp_path / "tv", "tiny-a").kind == "tiny-a"


def test_download_uses_the_datasets_mirrors_and_its_own_cache_folder(
    tiny: Tiny,
    tmp_path: Path,
    serve,  # type: ignore[no-untyped-def]
) -> None:
    _, a = tiny("tiny-a", 1)
    mirror = serve(_write(tmp_path / "mirror", a, _official_gz, ".gz"), fail_first=1)
    tiny("tiny-a", 1, mirrors=("http://127.0.0.1:9/", mirror))  # the first one is down
    seen: list[str] = []
    raw = data.load(
        "tiny-a",
        cache_dir=tmp_path / "cache",
        progress=lambda n, done, total: seen.append(n),
        retries=2,
        backoff=0,
    )
    assert sorted((tmp_path / "cache" / "tiny-a").iterdir()) == sorted(
        tmp_path / "cache" / "tiny-a" / f"{n}.gz" for n in NAMES
    )
    assert set(seen) == set(NAMES) and "cache" in raw.source
    cached = data.load("tiny-a", cache_dir=tmp_path / "cache", mirrors=[], download=False)
    assert cached.fingerprint == raw.fingerprint


def test_download_accepts_only_the_official_gz(
    tiny: Tiny,
    tmp_path: Path,
    serve,  # type: ignore[no-untyped-def]
) -> None:
    _, a = tiny("tiny-a", 1)
    mirror = serve(_write(tmp_path / "mirror", a, _recompressed, ".gz"))
    with pytest.raises(HpoError, match="could not download Tiny-A's train-images.*checksum mis"):
        data.load("tiny-a", cache_dir=tmp_path / "cache", mirrors=[mirror], backoff=0)
    assert not list((tmp_path / "cache" / "tiny-a").iterdir())


def test_no_download_names_the_dataset(tmp_path: Path) -> None:
    with pytest.raises(HpoError, match="Kuzushiji-MNIST is not in the cache .*kmnist"):
        data.load("kmnist", cache_dir=tmp_path, download=False)


def test_the_report_pickle_is_mnist_only(tmp_path: Path) -> None:
    (tmp_path / "mnist.pkl.gz").write_bytes(b"x")
    with pytest.raises(HpoError, match="pickle holds MNIST only"):
        data.load_dir(tmp_path / "mnist.pkl.gz", "fashion-mnist")


# Real Fashion-MNIST: Debian's dataset-fashion-mnist re-compressed the official files, so they
# verify by the md5s of their content.


def test_fashion_mnist_loads_from_debians_files(raw_fashion: data.RawData) -> None:
    assert raw_fashion.kind == "fashion-mnist" and "official Fashion-MNIST" in raw_fashion.source
    assert raw_fashion.train_images.shape == (60_000, 28, 28)
    assert raw_fashion.train_images.dtype == torch.uint8
    assert raw_fashion.train_labels.bincount().tolist() == [6000] * 10
    assert raw_fashion.test_labels.bincount().tolist() == [1000] * 10


@pytest.mark.parametrize("study_dataset", ["mnist", "kmnist"])
def test_fashion_files_are_refused_for_another_study(fashion_dir: Path, study_dataset: str) -> None:
    with pytest.raises(
        HpoError, match=f"is Fashion-MNIST's .*\\(dataset {study_dataset}\\) was expected"
    ):
        data.load_dir(fashion_dir, study_dataset)


def test_mnist_files_are_refused_for_a_fashion_study(mnist_dir: Path) -> None:
    with pytest.raises(
        HpoError, match="is MNIST's .*but Fashion-MNIST \\(dataset fashion-mnist\\) was"
    ):
        data.load_dir(mnist_dir, "fashion-mnist")


def test_normalisation_comes_from_each_datasets_training_split(
    raw_mnist: data.RawData, raw_fashion: data.RawData
) -> None:
    # Mean pixel over the 50,000 training images: about 0.131 for MNIST, 0.286 for Fashion-MNIST.
    mnist_mean, _ = data.normalisation(raw_mnist, validation_size=10_000)
    fashion_mean, fashion_std = data.normalisation(raw_fashion, validation_size=10_000)
    assert abs(mnist_mean - 0.131) < 0.005 and abs(fashion_mean - 0.286) < 0.005
    split = data.split(raw_fashion, validation_size=10_000)
    assert abs(float(split.train_x.mean())) < 1e-3 and abs(float(split.train_x.std()) - 1) < 1e-3
    assert abs(float(split.val_x.mean()) * fashion_std) < 0.01  # the same scaling for validation


def test_a_study_run_on_mnist_refuses_a_worker_with_fashion_mnist(
    raw_mnist: data.RawData, raw_fashion: data.RawData
) -> None:
    study = optuna.create_study()
    study_mod.check_data(study, raw_fashion)
    assert study.user_attrs[study_mod.DATA_ATTR]["kind"] == "fashion-mnist"
    study_mod.check_data(study, raw_fashion)  # the same data again: accepted
    with pytest.raises(
        HpoError,
        match="run on other data \\(official Fashion-MNIST files.*"
        "than found here \\(official MNIST files",
    ):
        study_mod.check_data(study, raw_mnist)
