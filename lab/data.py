"""Datasets as numpy arrays, and the label-efficient splits built on them.

Every loader returns a :class:`Dataset` of float32 inputs and int32 labels:
images are ``(N, H, W, C)`` channels-last in ``[0, 1]``, 1-D signals ``(N, L, 1)``.
Nothing here touches a device; the training code decides what to put where.

- ``digits`` and ``mnist1d`` are built locally (scikit-learn, the ``mnist1d``
  generator), so they always work offline.
- ``fashion_mnist`` and ``mnist`` read the classic IDX files from disk
  (see :func:`fashion_mnist` for where they are looked for) and download them
  only when asked to with ``download=True``, checking SHA-256 digests.
- ``cifar10``, ``cifar100``, ``svhn`` and ``stl10``, the standard semi-supervised
  benchmarks (colour images), are read from their official files by
  :mod:`lab.image_benchmarks`, found and downloaded the same way.
- ``fortunes_topics`` and ``fortunes_language`` are text: fortune cookies from Debian's
  fortune packages, as int32 token ids ``(N, L)`` (0 = padding) with a vocabulary size
  and a pretraining corpus; :mod:`lab.text` reads, splits and tokenizes them.

:data:`DATASET_ENTRIES` names them all, above their loaders: the loaders of other modules
build on :mod:`lab.dataset` (:class:`Dataset`, :class:`DataNotFoundError`, re-exported here),
never on this module. ``DATASETS``, ``CLASS_NAMES`` and ``DATA_DIR_DATASETS`` are read from the
registry each time (see :func:`__getattr__`). :data:`SOURCES` names the kinds of data of your own
(``csv:PATH``, ``jsonl:PATH``, ``images:PATH``): :func:`load`, :func:`check_name`, :func:`modality_of`
and :func:`class_names` take those names as they take the registry's, so every entry point (``lab run``,
sweeps, notebooks, ``experiment.run``) does, and none branches on which it is. The label-efficient splits
(:func:`labeled_split`, :func:`validation_split`) live here too.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import inspect
import logging
import math
import os
import random
import struct
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lab import cache, files, image_benchmarks, text, validate
from lab.cache import cache_dir
from lab.dataset import DIGIT_NAMES, DataNotFoundError, Dataset, PathLike
from lab.text import FORTUNE_LANGUAGES, FORTUNE_TOPICS

__all__ = [
    "DATASET_ENTRIES",
    "FORTUNE_LANGUAGES",
    "FORTUNE_TOPICS",
    "MIRRORS",
    "SHA256",
    "DataNotFoundError",
    "Dataset",
    "DatasetEntry",
    "IDXFormatError",
    "SOURCES",
    "Source",
    "absolute_name",
    "check_labels",
    "check_name",
    "class_names",
    "check_data_dir",
    "digits",
    "fashion_mnist",
    "fortunes_language",
    "fortunes_topics",
    "is_known",
    "labeled_split",
    "load",
    "loader_keywords",
    "mnist",
    "mnist1d",
    "modality_of",
    "read_idx",
    "resize_images",
    "texts",
    "validation_split",
    "write_idx",
]

log = logging.getLogger(__name__)


class IDXFormatError(ValueError):
    """A file is not a well-formed IDX file."""


_FASHION_MNIST_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


# --------------------------------------------------------------------------- small local datasets


def digits(*, test_size: float = 0.25, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits (1797 images), with its usual stratified 25% test split."""
    # scikit-learn takes ~2 s to import; only pay for it when digits are asked for.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[..., None]
    y = bunch.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    return Dataset("digits", x_train, y_train, x_test, y_test, DIGIT_NAMES, "sklearn.datasets.load_digits")


def mnist1d(*, seed: int = 42) -> Dataset:
    """MNIST-1D made by its package's generator with default arguments: 4000 train / 1000 test signals, length 40.

    The arrays are cached in ``cache_dir()/mnist1d``, keyed by the generator's arguments and the
    fingerprint of the code that makes them (:func:`lab.cache.fingerprint`).
    """
    # mnist1d.data imports matplotlib (~1 s); keep it out of `import lab.data`.
    import mnist1d.data

    args = mnist1d.data.get_dataset_args()
    args.seed = seed
    path = cache_dir() / "mnist1d" / f"mnist1d-{cache.key(vars(args), cache.fingerprint(__name__))}.npz"
    arrays = cache.read_checked(path, cache.read_npz, "MNIST-1D")
    if arrays is None:
        # make_dataset reseeds numpy's and Python's global RNGs; don't let that leak to the caller.
        with _global_rng_restored():
            generated = mnist1d.data.make_dataset(args)
        arrays = {
            "x_train": generated["x"].astype(np.float32)[..., None],
            "y_train": generated["y"].astype(np.int32),
            "x_test": generated["x_test"].astype(np.float32)[..., None],
            "y_test": generated["y_test"].astype(np.int32),
        }
        cache.write_checked(path, cache.npz_bytes(**arrays), "MNIST-1D")
    return Dataset("mnist1d", **arrays, class_names=DIGIT_NAMES, source=f"mnist1d.data.make_dataset(seed={seed})")


@contextlib.contextmanager
def _global_rng_restored() -> Iterator[None]:
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)


# --------------------------------------------------------------------------- IDX files

_GZIP_MAGIC = b"\x1f\x8b"
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES = {(dtype.kind, dtype.itemsize): code for code, dtype in _IDX_DTYPES.items()}
_IDX_ALLOWED = ", ".join(f"0x{code:02x} ({dtype.name})" for code, dtype in _IDX_DTYPES.items())


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed, told apart by content) into a native-endian array."""
    path = Path(path)
    data = _gunzip_if_gzip(path.read_bytes(), str(path))
    if len(data) < 4:
        raise IDXFormatError(f"{path}: truncated IDX header ({len(data)} bytes, need at least 4)")
    if data[:2] != b"\0\0":
        raise IDXFormatError(
            f"{path}: bad magic number 0x{data[:4].hex()}; an IDX file starts with two zero bytes, "
            "a type code and the number of dimensions (e.g. 0x00000803 for uint8 images)"
        )
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise IDXFormatError(f"{path}: unknown IDX data type code 0x{code:02x}; allowed: {_IDX_ALLOWED}")
    dtype = _IDX_DTYPES[code]
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise IDXFormatError(f"{path}: truncated IDX header ({len(data)} bytes, {ndim} dimensions need {header_size})")
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    expected, found = math.prod(shape) * dtype.itemsize, len(data) - header_size
    if found != expected:
        problem = "truncated" if found < expected else "has trailing bytes"
        raise IDXFormatError(
            f"{path}: file {problem}: shape {shape} of {dtype.name} needs {expected} data bytes, found {found}"
        )
    return np.frombuffer(data, dtype, offset=header_size).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file, gzip-compressed if ``path`` ends with ``.gz``; atomic."""
    path = Path(path)
    array = np.asarray(array)
    code = _IDX_CODES.get((array.dtype.kind, array.dtype.itemsize))
    if code is None:
        raise ValueError(f"cannot store dtype {array.dtype} in IDX file {path}; allowed: {_IDX_ALLOWED}")
    if array.ndim > 255 or any(n >= 2**32 for n in array.shape):
        raise ValueError(f"cannot store shape {array.shape} in IDX file {path}: at most 255 dimensions below 2**32")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(_IDX_DTYPES[code]).tobytes()
    # mtime=0 makes the .gz bytes depend on the content only.
    files.write_atomic(path, gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)


def _gunzip_if_gzip(data: bytes, origin: str) -> bytes:
    if data[:2] != _GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise IDXFormatError(f"{origin}: corrupt gzip data ({err})") from err




# --------------------------------------------------------------------------- MNIST-style datasets

# The four files of an MNIST-style dataset, by the Dataset field they fill.
_IDX_STEMS = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}

# Base URLs, overridable per call (`mirror=`) or by $LAB_MIRROR_MNIST / $LAB_MIRROR_FASHION_MNIST.
MIRRORS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}

# SHA-256 of the decompressed files: gzip wrappers differ between mirrors, the content does not.
SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}


@dataclass(frozen=True)
class _IDXDataset:
    name: str  # the folder name under $LAB_DATA and the cache, and the key of MIRRORS and SHA256
    title: str
    loader: str  # the public function, for hints in error messages
    class_names: tuple[str, ...]
    lab_data_dirs: tuple[str, ...]  # folder names accepted under $LAB_DATA
    system_dirs: tuple[Path, ...]
    install_hint: str | None


_MNIST = _IDXDataset("mnist", "MNIST", "mnist", DIGIT_NAMES, ("mnist",), (), None)
_FASHION_MNIST = _IDXDataset(
    "fashion-mnist",
    "Fashion-MNIST",
    "fashion_mnist",
    _FASHION_MNIST_NAMES,
    ("fashion-mnist", "fashion_mnist"),
    (Path("/usr/share/datasets/fashion-mnist"),),
    "apt-get install dataset-fashion-mnist  (Debian/Ubuntu; installs /usr/share/datasets/fashion-mnist)",
)


def fashion_mnist(
    *, data_dir: PathLike | None = None, download: bool = False, mirror: str | None = None
) -> Dataset:
    """Zalando's Fashion-MNIST: 60000 train / 10000 test 28x28 images of 10 kinds of clothing.

    With ``data_dir``, the IDX files are read from there (and downloaded into it with
    ``download=True``). Otherwise the first directory holding all four files wins, of:
    ``$LAB_DATA/fashion-mnist``, ``$LAB_DATA/fashion_mnist``, ``/usr/share/datasets/fashion-mnist``
    (Debian's ``dataset-fashion-mnist``), ``cache_dir()/fashion-mnist``; ``download=True`` downloads
    into the last when none does. File names may be ``train-images-idx3-ubyte`` or
    ``train-images.idx3-ubyte``, each raw or ``.gz``.
    """
    return _load_idx_dataset(_FASHION_MNIST, data_dir, download, mirror)


def mnist(*, data_dir: PathLike | None = None, download: bool = False, mirror: str | None = None) -> Dataset:
    """LeCun et al.'s MNIST: 60000 train / 10000 test 28x28 handwritten digits.

    Looked for like :func:`fashion_mnist`, in ``data_dir`` if given, else ``$LAB_DATA/mnist`` then
    ``cache_dir()/mnist``.
    """
    return _load_idx_dataset(_MNIST, data_dir, download, mirror)


def _load_idx_dataset(spec: _IDXDataset, data_dir: PathLike | None, download: bool, mirror: str | None) -> Dataset:
    # An explicit data_dir is the only place looked at: silently reading another copy would hide a wrong path.
    directories = [Path(data_dir).expanduser()] if data_dir is not None else _search_dirs(spec)
    for directory in directories:
        files = _without_damaged_downloads(_find_idx_files(directory))
        if len(files) == len(_IDX_STEMS):
            return _read_idx_dataset(spec, directory, files)
    if not download:
        raise DataNotFoundError(_not_found_message(spec, directories, explicit=data_dir is not None))
    target = directories[0] if data_dir is not None else cache_dir() / spec.name
    _download(spec, target, mirror)
    return _read_idx_dataset(spec, target, _find_idx_files(target))


def _search_dirs(spec: _IDXDataset) -> list[Path]:
    lab_data = os.environ.get("LAB_DATA")
    from_env = [Path(lab_data).expanduser() / name for name in spec.lab_data_dirs] if lab_data else []
    return [*from_env, *spec.system_dirs, cache_dir() / spec.name]


def _find_idx_files(directory: Path) -> dict[str, Path]:
    """Those of the four files present in ``directory``, by stem, under the first name variant found."""
    found = {}
    for stem in _IDX_STEMS.values():
        dotted = stem.replace("-idx", ".idx")  # e.g. train-images.idx3-ubyte
        paths = [directory / name for name in (stem, f"{stem}.gz", dotted, f"{dotted}.gz")]
        path = next((path for path in paths if path.is_file()), None)
        if path is not None:
            found[stem] = path
    return found


def _not_found_message(spec: _IDXDataset, directories: list[Path], explicit: bool) -> str:
    lines = [f"{spec.title} not found. Looked in:"]
    for directory in directories:
        if not directory.is_dir():
            status = "no such directory"
        else:
            present = _find_idx_files(directory)
            missing = [stem for stem in _IDX_STEMS.values() if stem not in present]
            status = f"missing {', '.join(missing)}"
        lines.append(f"  - {directory}  ({status})")
    if explicit:
        lines += [
            "Put the four IDX files there (names like train-images-idx3-ubyte or train-images.idx3-ubyte, raw or .gz),",
            f"or download them into it: lab.data.{spec.loader}(data_dir=..., download=True).",
        ]
        return "\n".join(lines)
    if not os.environ.get("LAB_DATA"):
        lines.append(f"  - $LAB_DATA/{spec.name}  (LAB_DATA is not set)")
    lines.append("To get it, do one of:")
    if spec.install_hint:
        lines.append(f"  - {spec.install_hint}")
    lines += [
        f"  - put the four IDX files in <dir>/{spec.name}/ and set LAB_DATA=<dir>",
        f"  - download it into {cache_dir() / spec.name}: lab.data.{spec.loader}(download=True)"
        f" or lab.data.load({spec.loader!r}, download=True)",
    ]
    return "\n".join(lines)


def _download(spec: _IDXDataset, target: Path, mirror: str | None) -> None:
    """Fetch the files missing from ``target``, refusing any whose content fails its SHA-256 check."""
    env_var = f"LAB_MIRROR_{spec.name.upper().replace('-', '_')}"
    base = mirror or os.environ.get(env_var) or MIRRORS[spec.name]
    present = _find_idx_files(target)
    for stem in _IDX_STEMS.values():
        if stem in present:
            continue
        url = f"{base.rstrip('/')}/{stem}.gz"
        log.info("downloading %s", url)
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                payload = response.read()
        except OSError as err:
            raise DataNotFoundError(f"could not download {spec.title} from {url}: {err}") from err
        actual = hashlib.sha256(_gunzip_if_gzip(payload, url)).hexdigest()
        expected = SHA256[spec.name][stem]
        if actual != expected:
            raise ValueError(
                f"checksum mismatch for {url}: expected SHA-256 {expected}, got {actual} "
                f"(of the decompressed content); not saved. Check the mirror ({base}, ${env_var})."
            )
        # Saved as served: read_idx tells gzip from raw by content, the name just says which it is.
        path = files.write_atomic(target / (f"{stem}.gz" if payload[:2] == _GZIP_MAGIC else stem), payload)
        cache.record_digest(path)  # checked whenever it is read (_without_damaged_downloads)


def _without_damaged_downloads(found: dict[str, Path]) -> dict[str, Path]:
    """``found`` less the files that lab downloaded (they have a digest beside them) and that no longer
    match it; those are removed, saying so, to be downloaded again. Files put there by hand are as they are."""
    intact = {}
    for stem, path in found.items():
        problem = cache.file_damage(path) if cache.has_digest(path) else None
        if problem is None:
            intact[stem] = path
        else:
            cache.notice(f"the downloaded file {path} failed its check ({problem}); removed, to be downloaded again")
            cache.discard(path)
    return intact


def _read_idx_dataset(spec: _IDXDataset, directory: Path, files: dict[str, Path]) -> Dataset:
    arrays: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        images_path, labels_path = files[_IDX_STEMS[f"x_{split}"]], files[_IDX_STEMS[f"y_{split}"]]
        images, labels = read_idx(images_path), read_idx(labels_path)
        _check_uint8(images, 3, "(count, height, width) images", images_path)
        if len(images) == 0:
            raise IDXFormatError(f"{images_path}: holds 0 images; each split of {spec.title} needs at least one")
        _check_uint8(labels, 1, "labels", labels_path)
        if len(images) != len(labels):
            raise ValueError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
        out_of_range = np.flatnonzero(labels >= len(spec.class_names))
        if out_of_range.size:
            first = out_of_range[0]
            raise ValueError(
                f"{labels_path}: label {labels[first]} at index {first} is out of range; "
                f"{spec.title} labels are 0..{len(spec.class_names) - 1}"
            )
        arrays[f"x_{split}"] = (images.astype(np.float32) / 255.0)[..., None]
        arrays[f"y_{split}"] = labels.astype(np.int32)
    return Dataset(spec.name.replace("-", "_"), **arrays, class_names=spec.class_names, source=str(directory))


def _check_uint8(array: np.ndarray, ndim: int, what: str, path: Path) -> None:
    if array.dtype != np.uint8 or array.ndim != ndim:
        raise ValueError(f"{path}: expected {ndim}-D uint8 {what}, found {array.ndim}-D {array.dtype}")


# --------------------------------------------------------------------------- fortune cookies (text)

def fortunes_topics(
    *,
    vocab_size: int = 4000,
    max_length: int = 64,
    data_dir: PathLike | None = None,
    download: bool = False,
    tokenizer: text.Tokenizer | None = None,
) -> Dataset:
    """An English fortune cookie's topic, one of :data:`FORTUNE_TOPICS` (the file it comes from).

    Token ids from a BPE tokenizer of ``vocab_size`` trained on the pretraining corpus
    (``x_unlabeled``: every English fortune except the test texts), sequences of ``max_length``;
    or the ids of ``tokenizer`` (a checkpoint's, see :func:`lab.text.load_dataset`).
    See :func:`lab.text.load_texts` for the texts, the split and where the files are looked for.
    """
    return text.load_dataset(
        "fortunes_topics", vocab_size=vocab_size, max_length=max_length, data_dir=data_dir, download=download,
        tokenizer=tokenizer,
    )


def fortunes_language(
    *,
    vocab_size: int = 4000,
    max_length: int = 64,
    data_dir: PathLike | None = None,
    download: bool = False,
    tokenizer: text.Tokenizer | None = None,
) -> Dataset:
    """A fortune cookie's language, one of :data:`FORTUNE_LANGUAGES`, balanced by subsampling.

    Like :func:`fortunes_topics`; the pretraining corpus is every fortune read except the test
    texts. Needs Debian's language packages (``download=True`` can fetch English only, and refuses).
    """
    return text.load_dataset(
        "fortunes_language", vocab_size=vocab_size, max_length=max_length, data_dir=data_dir, download=download,
        tokenizer=tokenizer,
    )


# --------------------------------------------------------------------------- splits and transforms


def labeled_split(y: np.ndarray, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pick exactly ``per_class`` examples of each class to keep labeled.

    Returns sorted, disjoint ``(labeled_idx, unlabeled_idx)`` covering ``range(len(y))``;
    the same ``seed`` always picks the same examples.
    """
    y = np.asarray(y)
    classes, counts = _class_counts(y)
    smallest = int(np.argmin(counts))
    if not isinstance(per_class, int | np.integer) or not 1 <= per_class <= counts[smallest]:
        raise ValueError(
            f"per_class={per_class} must be between 1 and {counts[smallest]}, the size of the smallest class "
            f"(class {classes[smallest]} has {counts[smallest]} examples)"
        )
    return _take_per_class(y, classes, np.full_like(counts, per_class), seed)


def validation_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``fraction`` of each class (rounded to the nearest count) for validation.

    Returns sorted, disjoint ``(train_idx, val_idx)`` covering ``range(len(y))``.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction={fraction} must be strictly between 0 and 1")
    y = np.asarray(y)
    classes, counts = _class_counts(y)
    val_idx, train_idx = _take_per_class(y, classes, np.rint(fraction * counts).astype(int), seed)
    if val_idx.size == 0 or train_idx.size == 0:
        raise ValueError(
            f"fraction={fraction} of {len(train_idx) + len(val_idx)} examples leaves "
            f"the {'validation' if val_idx.size == 0 else 'training'} set empty"
        )
    return train_idx, val_idx


def _class_counts(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if y.ndim != 1 or y.size == 0 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y must be a non-empty 1-D array of integer labels, got shape {y.shape} of {y.dtype}")
    return np.unique(y, return_counts=True)


def _take_per_class(
    y: np.ndarray, classes: np.ndarray, take: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(taken, rest): ``take[i]`` random indices of class ``classes[i]``, and all the others; both sorted."""
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, take, strict=True)]
    taken = np.sort(np.concatenate(chosen))
    return taken, np.setdiff1d(np.arange(len(y)), taken, assume_unique=True)


def resize_images(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-resize ``(N, H, W, C)`` images to ``size = (height, width)``.

    Each output pixel is the mean of the input area it covers (fractional pixels weighted
    by overlap), so 28x28 MNIST can be shrunk to the 8x8 of ``digits`` without aliasing,
    a constant image stays constant, and values never leave the input's range.
    """
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x must be (N, H, W, C) images, got shape {x.shape}")
    if len(size) != 2 or not all(isinstance(n, int | np.integer) and n >= 1 for n in size):
        raise ValueError(f"size={size} must be a (height, width) pair of positive integers")
    rows, cols = _area_weights(x.shape[1], size[0]), _area_weights(x.shape[2], size[1])
    resized = np.einsum("ih,nhwc,jw->nijc", rows, x.astype(np.float32, copy=False), cols, optimize=True)
    # Weighted means lie within the input's range up to float32 rounding; clip that rounding away.
    return np.clip(resized, x.min(), x.max()) if x.size else resized


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix: output pixel i averages input span [i, i+1) * n_in / n_out."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    pixel = np.arange(n_in)
    overlap = np.minimum(edges[1:, None], pixel + 1) - np.maximum(edges[:-1, None], pixel)
    weights = np.clip(overlap, 0, None)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


# --------------------------------------------------------------------------- by name

@dataclass(frozen=True)
class DatasetEntry:
    """What the lab knows of a dataset without loading it."""

    load: Callable[..., Dataset]
    modality: str  # a key of lab.modality.MODALITIES
    class_names: tuple[str, ...]  # e.g. to validate a class split before a run
    reads_files: bool = False  # takes a ``data_dir``; the others are made locally


DATASET_ENTRIES: dict[str, DatasetEntry] = {
    "digits": DatasetEntry(digits, "image", DIGIT_NAMES),
    "mnist1d": DatasetEntry(mnist1d, "signal", DIGIT_NAMES),
    "fashion_mnist": DatasetEntry(fashion_mnist, "image", _FASHION_MNIST_NAMES, reads_files=True),
    "mnist": DatasetEntry(mnist, "image", DIGIT_NAMES, reads_files=True),
    "cifar10": DatasetEntry(image_benchmarks.cifar10, "image", image_benchmarks.CIFAR10.class_names, reads_files=True),
    "cifar100": DatasetEntry(
        image_benchmarks.cifar100, "image", image_benchmarks.CIFAR100.class_names, reads_files=True
    ),
    "svhn": DatasetEntry(image_benchmarks.svhn, "image", image_benchmarks.SVHN.class_names, reads_files=True),
    "stl10": DatasetEntry(image_benchmarks.stl10, "image", image_benchmarks.STL10.class_names, reads_files=True),
    "fortunes_topics": DatasetEntry(fortunes_topics, "text", FORTUNE_TOPICS, reads_files=True),
    "fortunes_language": DatasetEntry(fortunes_language, "text", FORTUNE_LANGUAGES, reads_files=True),
}


@dataclass(frozen=True)
class Source:
    """A kind of data of your own, named ``SCHEME:PATH`` (``csv:tickets.csv``): how to load it and what it holds.

    ``loader()`` gives the function ``(path, **options) -> Dataset`` (imported when asked for: the image
    loader needs Pillow); its options after ``path`` are the ``dataset_kwargs`` a run may give.
    ``classes(path, options)`` gives the class names and the training examples of each without
    decoding or tokenizing anything, for validation. ``texts``, for text files, reads the texts
    without tokenizing them (:class:`lab.text.Texts`), for validation and the TF-IDF peers.
    """

    loader: Callable[[], Callable[..., Dataset]]
    modality: str
    what: str  # what PATH names, for messages
    classes: Callable[[Path, dict[str, Any]], tuple[tuple[str, ...], list[int]]]
    texts: Callable[..., text.Texts] | None = None


def _image_folder_loader() -> Callable[..., Dataset]:
    from lab import image_folder  # Pillow, only for images

    return image_folder.load


def _image_folder_classes(path: Path, options: dict[str, Any]) -> tuple[tuple[str, ...], list[int]]:
    from lab import image_folder

    contents = image_folder.describe(path)  # the folder's listing: no image is decoded
    return contents.class_names, [contents.train_counts[name] for name in contents.class_names]


def _text_file_source(file_format: str, title: str) -> Source:
    read = functools.partial(text.load_file_texts, file_format=file_format)

    def classes(path: Path, options: dict[str, Any]) -> tuple[tuple[str, ...], list[int]]:
        found = read(path, **_taken_by(read, options))
        return found.class_names, np.bincount(found.y_train, minlength=len(found.class_names)).tolist()

    return Source(
        loader=lambda: functools.partial(text.load_file, file_format=file_format),
        modality="text",
        what=f"a {title} file of texts",
        classes=classes,
        texts=read,
    )


SOURCES: dict[str, Source] = {
    "csv": _text_file_source("csv", "CSV"),
    "jsonl": _text_file_source("jsonl", "JSON Lines"),
    "images": Source(_image_folder_loader, "image", "a folder of class folders of images", _image_folder_classes),
}
SCHEME_SEPARATOR = ":"


def _own(name: str) -> tuple[Source, Path] | None:
    """The source and path that ``name`` names, or None for a dataset of :data:`DATASET_ENTRIES`."""
    if not isinstance(name, str):
        raise ValueError(f"a dataset name is a string, got {name!r}")
    if name in DATASET_ENTRIES or SCHEME_SEPARATOR not in name:
        validate.choice("dataset", name, tuple(DATASET_ENTRIES), wording=_choices())
        return None
    scheme, _, path = name.partition(SCHEME_SEPARATOR)
    if scheme not in SOURCES:
        raise ValueError(f"unknown dataset scheme {scheme!r} in {name!r}; choose one of: {', '.join(_schemes())}")
    if not path:
        raise ValueError(f"dataset {name!r} names no path; {scheme}:PATH names {SOURCES[scheme].what}")
    return SOURCES[scheme], Path(path).expanduser()


def _choices() -> str:
    return f"choose one of: {', '.join(DATASET_ENTRIES)}, or your own data: {', '.join(_schemes())}"


def _schemes() -> list[str]:
    return [f"{scheme}{SCHEME_SEPARATOR}PATH" for scheme in SOURCES]


def check_name(name: str) -> str:
    """``name`` if it names a dataset: a key of :data:`DATASET_ENTRIES`, or ``SCHEME:PATH`` of
    :data:`SOURCES` whose path exists; else one ``ValueError`` line listing what is allowed."""
    own = _own(name)
    if own is not None and not own[1].exists():
        source, path = own
        scheme = name.partition(SCHEME_SEPARATOR)[0]
        raise ValueError(f"{path}: no such file or folder; {scheme}{SCHEME_SEPARATOR}PATH names {source.what}")
    return name


def absolute_name(name: str) -> str:
    """``name`` with its path made absolute (``csv:data/t.csv`` -> ``csv:/home/me/data/t.csv``), so that
    it names the same file from another working directory (a sweep's kernels); other names as they are."""
    own = _own(name)
    if own is None:
        return name
    return f"{name.partition(SCHEME_SEPARATOR)[0]}{SCHEME_SEPARATOR}{own[1].absolute()}"


def is_known(name: object) -> bool:
    """Whether ``name`` is a dataset name (a registered one, or one of your own of a known scheme)."""
    try:
        _own(name)
    except ValueError:
        return False
    return True


def modality_of(name: str) -> str:
    """The modality (a key of :data:`lab.modality.MODALITIES`) of dataset ``name``, without loading it."""
    own = _own(name)
    return DATASET_ENTRIES[name].modality if own is None else own[0].modality


def class_names(name: str, options: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """The class names of dataset ``name``; your own data's are read from it (with its ``options``)."""
    own = _own(name)
    if own is None:
        return DATASET_ENTRIES[name].class_names
    return _own_summary(name, dict(options or {}))[0]


def check_labels(
    name: str, options: Mapping[str, Any] | None, per_class: int, classes: Sequence[int] | None = None
) -> None:
    """Refuse, before anything trains, your own data whose training split has fewer than ``per_class``
    examples of a class (of ``classes``, when a run keeps only those); one line naming the file.
    A registered dataset is checked when it is loaded (:meth:`Dataset.check_classes`)."""
    if _own(name) is None:
        return
    names, counts = _own_summary(name, dict(options or {}))
    kept = range(len(names)) if classes is None else [c for c in classes if 0 <= c < len(names)]
    short = [c for c in kept if counts[c] < per_class]
    if short:
        smallest = min(short, key=lambda c: counts[c])
        raise ValueError(
            f"{name}: class {names[smallest]!r} has {counts[smallest]} training examples, fewer than "
            f"labels_per_class={per_class}; choose labels_per_class <= {min(counts[c] for c in kept)} "
            "or add labeled examples to the file"
        )


def _own_summary(name: str, options: dict[str, Any]) -> tuple[tuple[str, ...], list[int]]:
    """Class names and training examples per class of your own data, read from it without loading it whole."""
    check_name(name)
    source, path = _own(name)
    return source.classes(path, options)


def texts(name: str, options: Mapping[str, Any] | None = None) -> text.Texts:
    """The raw texts of text dataset ``name`` (a fortune dataset, or a text file of your own), in the order
    of the token arrays :func:`load` gives (e.g. for TF-IDF peers on the same labeled sets)."""
    own = _own(name)
    if own is None:
        return text.load_texts(name, **dict(options or {}))
    source, path = own
    if source.texts is None:
        raise ValueError(f"{name} names {source.what}, not texts; text data: {', '.join(_text_schemes())}")
    return source.texts(path, **_taken_by(source.texts, options or {}))


def _text_schemes() -> list[str]:
    return [f"{scheme}{SCHEME_SEPARATOR}PATH" for scheme, source in SOURCES.items() if source.texts is not None]


def _taken_by(function: Callable[..., Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """Those of a dataset's ``options`` that ``function`` takes (reading texts needs no tokenizer's options)."""
    return {key: value for key, value in options.items() if key in _keywords(function)}


def _keywords(function: Callable[..., Any]) -> tuple[str, ...]:
    """The options of a source's function: its parameters after the path, less those bound by a partial."""
    bound = getattr(function, "keywords", {})
    return tuple(key for key in list(inspect.signature(function).parameters)[1:] if key not in bound)


def _reading_files() -> tuple[str, ...]:
    return tuple(name for name, entry in DATASET_ENTRIES.items() if entry.reads_files)


# Views of DATASET_ENTRIES, derived at every read (see __getattr__): the names, name -> class names,
# and the names that read files.
_VIEWS: dict[str, Callable[[], object]] = {
    "DATASETS": lambda: tuple(DATASET_ENTRIES),
    "CLASS_NAMES": lambda: {name: entry.class_names for name, entry in DATASET_ENTRIES.items()},
    "DATA_DIR_DATASETS": _reading_files,
}


def __getattr__(name: str) -> object:
    """``DATASETS``, ``CLASS_NAMES`` and ``DATA_DIR_DATASETS``, derived from :data:`DATASET_ENTRIES`
    at every read (PEP 562), so that an entry registered later (by a benchmark script, a test) is
    seen by every check and choice list."""
    if name in _VIEWS:
        return _VIEWS[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_data_dir(data_dir: PathLike | None, *names: str) -> None:
    """Refuse a ``data_dir`` that none of the datasets ``names`` (those a run loads) would read."""
    reading = _reading_files()
    if data_dir is not None and not set(names) & set(reading):
        raise ValueError(
            f"data_dir={str(data_dir)!r} is read only by {', '.join(reading)}; "
            f"{' and '.join(names)} {'does' if len(names) == 1 else 'do'} not read files"
        )


def loader_keywords(name: str) -> tuple[str, ...]:
    """The keyword arguments that dataset ``name``'s loader takes (e.g. ``extra`` for ``svhn``,
    ``text_column`` for ``csv:PATH``)."""
    own = _own(name)
    if own is None:
        return tuple(inspect.signature(DATASET_ENTRIES[name].load).parameters)
    return _keywords(own[0].loader())


def load(name: str, **kwargs: object) -> Dataset:
    """Load a dataset by name: a key of :data:`DATASET_ENTRIES`, or ``SCHEME:PATH`` of :data:`SOURCES`
    (your own data, e.g. ``csv:tickets.csv``); ``kwargs`` go to its loader."""
    check_name(name)
    check_data_dir(kwargs.get("data_dir"), name)
    own = _own(name)
    if own is None:
        return DATASET_ENTRIES[name].load(**kwargs)
    source, path = own
    return source.loader()(path, **kwargs)
