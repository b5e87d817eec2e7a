"""The field's standard semi-supervised image benchmarks, read from their official distribution files.

- ``cifar10``, ``cifar100``: the "python version" tarballs (``cifar-10-python.tar.gz``,
  ``cifar-100-python.tar.gz``) or their extracted folders: pickled batches holding
  ``b"data"``, an ``(N, 3072)`` uint8 array of 32x32 images stored one colour plane after
  another (R, G, B, each row-major), the labels (``b"labels"``; CIFAR-100's ``b"fine_labels"``),
  and a meta file with the class names.
- ``svhn``: ``train_32x32.mat`` and ``test_32x32.mat`` (``extra_32x32.mat`` with ``extra=True``),
  MATLAB v5 files holding ``X``, ``(32, 32, 3, N)`` uint8, and ``y``, ``(N, 1)`` with 10 for the digit 0.
- ``stl10``: ``stl10_binary.tar.gz`` or its folder ``stl10_binary/``: ``{train,test,unlabeled}_X.bin``,
  raw uint8 96x96 images of 3 planes each stored column-major, ``{train,test}_y.bin`` with labels
  1..10, and ``class_names.txt``. The 100,000 unlabeled images become ``Dataset.x_unlabeled``,
  from which semi-supervised runs draw their unlabeled batches too (``Dataset.unlabeled_in_pool``).

Each is looked for, in order, in ``data_dir`` when given (and only there), else in
``$LAB_DATA/<name>`` (``cifar10`` or ``cifar-10``, ...) and ``cache_dir()/<name>``; in a folder,
the official archive, its extracted folder, or the files themselves all count. ``download=True``
fetches what is missing from the official host (or ``mirror=`` / ``$LAB_MIRROR_<NAME>``) into
``data_dir`` or the cache, and refuses any file whose SHA-256 differs from the published one.

Images are returned as every image dataset of :mod:`lab.data` returns them, float32 ``(N, H, W, C)``
in ``[0, 1]``: models and augmentations take them as they are, with no per-dataset scaling to forget.
That costs 4 bytes a pixel: CIFAR's 60,000 images take 0.7 GB, SVHN's extra split 6.5 GB and
STL-10's unlabeled split 11 GB (2.8 GB in the file), which is why ``stl10(unlabeled=...)`` can keep
only the first N of them (or none), and ``svhn`` reads the extra split only when asked.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tarfile
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np

from lab import files, validate
from lab.cache import cache_dir
from lab.dataset import DIGIT_NAMES, DataNotFoundError, Dataset, PathLike

__all__ = ["BENCHMARKS", "FormatError", "cifar10", "cifar100", "stl10", "svhn"]

log = logging.getLogger(__name__)

# A reader turns one file (its open stream, its size in bytes, and a name for messages) into arrays.
Reader = Callable[[IO[bytes], int, str], Any]


class FormatError(ValueError):
    """A file is not in the official format of its benchmark: the message names the file and what was expected."""


@dataclass(frozen=True)
class Download:
    """One official file: where it is served and its published SHA-256."""

    url: str
    sha256: str
    size: int  # bytes, as published next to the checksum; for the log only


@dataclass(frozen=True)
class Benchmark:
    name: str  # the DATASET_ENTRIES key and the folder under $LAB_DATA and the cache
    title: str
    lab_data_dirs: tuple[str, ...]  # folder names accepted under $LAB_DATA
    archive: str | None  # the official tarball; the files are its members
    folder: str | None  # the folder the tarball extracts to
    downloads: dict[str, Download]  # by file name (the archive, or each file)
    class_names: tuple[str, ...]  # in label order

    @property
    def mirror_variable(self) -> str:
        return f"LAB_MIRROR_{self.name.upper()}"


# The standard semi-supervised benchmarks' names, in label order, as their official meta files give them
# (CIFAR-10's batches.meta, CIFAR-100's meta "fine_label_names", STL-10's class_names.txt; SVHN's digits).
_CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_CIFAR100_CLASSES = tuple("""
    apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can castle
    caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin elephant
    flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree
    motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate
    poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake spider
    squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle
    wardrobe whale willow_tree wolf woman worm
""".split())
_STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")


# Checksums are those published by TensorFlow Datasets (tensorflow_datasets/url_checksums/<name>.txt,
# URL, size and SHA-256 per line) and by torchvision's datasets (torchvision/prototype/datasets/_builtin/
# cifar.py and svhn.py, `_SHA256` / `_CHECKSUMS`); Keras' cifar10.py / cifar100.py pin the same CIFAR digests.
_CIFAR_HOST = "https://www.cs.toronto.edu/~kriz/"
CIFAR10 = Benchmark(
    "cifar10", "CIFAR-10", ("cifar10", "cifar-10"), "cifar-10-python.tar.gz", "cifar-10-batches-py",
    # torchvision cifar.py, Keras cifar10.py
    {"cifar-10-python.tar.gz": Download(
        _CIFAR_HOST + "cifar-10-python.tar.gz",
        "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce", 170_498_071)},
    _CIFAR10_CLASSES,
)  # fmt: skip
CIFAR100 = Benchmark(
    "cifar100", "CIFAR-100", ("cifar100", "cifar-100"), "cifar-100-python.tar.gz", "cifar-100-python",
    # torchvision cifar.py, Keras cifar100.py
    {"cifar-100-python.tar.gz": Download(
        _CIFAR_HOST + "cifar-100-python.tar.gz",
        "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7", 169_001_437)},
    _CIFAR100_CLASSES,
)  # fmt: skip
_SVHN_HOST = "http://ufldl.stanford.edu/housenumbers/"
SVHN = Benchmark(
    "svhn", "SVHN", ("svhn",), None, None,
    # TFDS url_checksums/svhn_cropped.txt, torchvision svhn.py
    {
        "train_32x32.mat": Download(
            _SVHN_HOST + "train_32x32.mat",
            "435e94d69a87fde4fd4d7f3dd208dfc32cb6ae8af2240d066de1df7508d083b8", 182_040_794),
        "test_32x32.mat": Download(
            _SVHN_HOST + "test_32x32.mat",
            "cdce80dfb2a2c4c6160906d0bd7c68ec5a99d7ca4831afa54f09182025b6a75b", 64_275_384),
        "extra_32x32.mat": Download(
            _SVHN_HOST + "extra_32x32.mat",
            "a133a4beb38a00fcdda90c9489e0c04f900b660ce8a316a5e854838379a71eb3", 1_329_278_602),
    },
    DIGIT_NAMES,  # label 0 is the digit 0 (the files say 10)
)  # fmt: skip
STL10 = Benchmark(
    "stl10", "STL-10", ("stl10", "stl-10"), "stl10_binary.tar.gz", "stl10_binary",
    # TFDS url_checksums/stl10.txt
    {"stl10_binary.tar.gz": Download(
        "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
        "f31fd99273a1acb8609c8db427cebb1de3f71de77758cdc0e22956e1289b9866", 2_640_397_119)},
    _STL10_CLASSES,
)  # fmt: skip
BENCHMARKS = {benchmark.name: benchmark for benchmark in (CIFAR10, CIFAR100, SVHN, STL10)}


# --------------------------------------------------------------------------- the loaders


def cifar10(*, data_dir: PathLike | None = None, download: bool = False, mirror: str | None = None) -> Dataset:
    """Krizhevsky's CIFAR-10: 50,000 train / 10,000 test 32x32 colour images of 10 classes."""
    return _load_cifar(CIFAR10, data_dir, download, mirror)


def cifar100(*, data_dir: PathLike | None = None, download: bool = False, mirror: str | None = None) -> Dataset:
    """Krizhevsky's CIFAR-100: 50,000 train / 10,000 test 32x32 colour images of 100 classes (the fine labels)."""
    return _load_cifar(CIFAR100, data_dir, download, mirror)


def svhn(
    *, data_dir: PathLike | None = None, download: bool = False, extra: bool = False, mirror: str | None = None
) -> Dataset:
    """Netzer et al.'s Street View House Numbers, cropped digits: 73,257 train / 26,032 test 32x32 colour images.

    With ``extra=True`` the 531,131 labeled images of ``extra_32x32.mat`` follow the training split
    (the "SVHN + extra" setting of the semi-supervised papers).
    """
    if not isinstance(extra, bool):
        raise ValueError(f"extra must be true or false, got {extra!r}")
    names = ["train_32x32.mat", "test_32x32.mat"] + (["extra_32x32.mat"] if extra else [])
    source = _find(SVHN, names, data_dir, download, mirror)
    arrays = source.read({name: _read_svhn_mat for name in names})
    train = [arrays["train_32x32.mat"]] + ([arrays["extra_32x32.mat"]] if extra else [])
    x_test, y_test = arrays["test_32x32.mat"]
    return Dataset(
        "svhn",
        x_train=np.concatenate([x for x, _ in train]),
        y_train=np.concatenate([y for _, y in train]),
        x_test=x_test,
        y_test=y_test,
        class_names=SVHN.class_names,
        source=str(source.path),
    )


def stl10(
    *,
    data_dir: PathLike | None = None,
    download: bool = False,
    unlabeled: int | str = "all",
    mirror: str | None = None,
) -> Dataset:
    """Coates et al.'s STL-10: 5,000 train / 8,000 test 96x96 colour images of 10 classes, and 100,000 unlabeled.

    ``unlabeled`` says how many of the unlabeled images to keep in ``x_unlabeled``: ``"all"``
    (11 GB as float32), the first N, or 0 for none (``x_unlabeled`` is then None and
    ``unlabeled_X.bin`` is not needed). Reading straight from the 2.6 GB tarball decompresses it
    each time; extract it once (``tar xzf stl10_binary.tar.gz``) for faster loads.
    """
    limit = None if unlabeled == "all" else validate.integer("unlabeled", unlabeled, minimum=0, wording='>= 0 or "all"')
    readers: dict[str, Reader] = {
        "train_X.bin": _read_stl10_images,
        "train_y.bin": _read_stl10_labels,
        "test_X.bin": _read_stl10_images,
        "test_y.bin": _read_stl10_labels,
        "class_names.txt": _read_text,
    }
    if limit != 0:
        readers["unlabeled_X.bin"] = lambda stream, size, origin: _read_stl10_images(stream, size, origin, limit)
    source = _find(STL10, list(readers), data_dir, download, mirror)
    arrays = source.read(readers)
    _check_class_names(arrays["class_names.txt"].split(), source.origin("class_names.txt"), "stl10")
    split = {}
    for name in ("train", "test"):
        x, y = arrays[f"{name}_X.bin"], arrays[f"{name}_y.bin"]
        if len(x) != len(y):
            raise FormatError(
                f"{source.origin(f'{name}_X.bin')} has {len(x)} images but "
                f"{source.origin(f'{name}_y.bin')} has {len(y)} labels"
            )
        split[f"x_{name}"], split[f"y_{name}"] = x, y
    return Dataset(
        "stl10", **split, class_names=STL10.class_names, source=str(source.path),
        x_unlabeled=arrays.get("unlabeled_X.bin"), unlabeled_in_pool=True,
    )  # fmt: skip


@dataclass(frozen=True)
class _CifarFiles:
    """The files of a CIFAR python version and the keys of their dicts."""

    batches: dict[str, tuple[str, ...]]  # by split
    meta: str
    names_key: bytes
    labels_key: bytes


_CIFAR_FILES = {
    "cifar10": _CifarFiles(
        {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        "batches.meta", b"label_names", b"labels"),
    "cifar100": _CifarFiles({"train": ("train",), "test": ("test",)}, "meta", b"fine_label_names", b"fine_labels"),
}  # fmt: skip


def _load_cifar(benchmark: Benchmark, data_dir: PathLike | None, download: bool, mirror: str | None) -> Dataset:
    layout = _CIFAR_FILES[benchmark.name]
    num_classes = len(benchmark.class_names)

    def read_batch(stream: IO[bytes], size: int, origin: str) -> tuple[np.ndarray, np.ndarray]:
        return _read_cifar_batch(stream, origin, layout.labels_key, num_classes)

    def read_meta(stream: IO[bytes], size: int, origin: str) -> list[str]:
        names = _unpickle(stream, origin, (layout.names_key,))[layout.names_key]
        return [name.decode() if isinstance(name, bytes) else name for name in names]

    readers: dict[str, Reader] = {name: read_batch for names in layout.batches.values() for name in names}
    readers[layout.meta] = read_meta
    source = _find(benchmark, list(readers), data_dir, download, mirror)
    arrays = source.read(readers)
    _check_class_names(arrays[layout.meta], source.origin(layout.meta), benchmark.name)
    split = {}
    for name, batches in layout.batches.items():
        split[f"x_{name}"] = _to_float(np.concatenate([arrays[batch][0] for batch in batches]))
        split[f"y_{name}"] = np.concatenate([arrays[batch][1] for batch in batches])
    return Dataset(benchmark.name, **split, class_names=benchmark.class_names, source=str(source.path))


# --------------------------------------------------------------------------- the official formats

_CIFAR_PIXELS = 3 * 32 * 32
_STL10_SHAPE = (3, 96, 96)  # channel, then column, then row: the files are column-major
_STL10_PIXELS = int(np.prod(_STL10_SHAPE))
_STL10_CHUNK = 1024  # images converted at a time, so that no uint8 copy of a whole split is kept


class _ArrayUnpickler(pickle.Unpickler):
    """CIFAR's batches are Python 2 pickles; a pickle can run any code, so load only what numpy arrays need."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): np.empty(0).__reduce__()[0],  # named as numpy 1 named it
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR batch holds only numpy arrays")
        return self._ALLOWED[module, name]


def _unpickle(stream: IO[bytes], origin: str, keys: tuple[bytes, ...]) -> dict:
    try:
        # encoding="bytes": Python 2 strings (the keys, the names, the arrays' raw data) stay bytes.
        content = _ArrayUnpickler(stream, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise FormatError(f"{origin}: not a readable CIFAR python pickle ({type(err).__name__}: {err})") from err
    missing = [key for key in keys if not isinstance(content, dict) or key not in content]
    if missing:
        found = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise FormatError(f"{origin}: expected a dict with keys {list(keys)}, found {found}")
    return content


def _read_cifar_batch(
    stream: IO[bytes], origin: str, labels_key: bytes, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """One batch as ``(N, 32, 32, 3)`` uint8 images and int32 labels."""
    content = _unpickle(stream, origin, (b"data", labels_key))
    pixels = content[b"data"]
    if not (isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and pixels.shape[1:] == (_CIFAR_PIXELS,)):
        found = f"{pixels.shape} {pixels.dtype}" if isinstance(pixels, np.ndarray) else type(pixels).__name__
        raise FormatError(
            f"{origin}: expected b'data' of shape (N, {_CIFAR_PIXELS}) uint8 (32x32 RGB planes), found {found}"
        )
    labels = _labels(content[labels_key], origin, len(pixels), first=0, num_classes=num_classes)
    # Each row holds the red plane, then green, then blue, each row-major: (N, C, H, W) -> (N, H, W, C).
    return pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _read_svhn_mat(stream: IO[bytes], size: int, origin: str) -> tuple[np.ndarray, np.ndarray]:
    import scipy.io  # ~0.3 s; only SVHN needs it

    expected = "X (32, 32, 3, N) uint8 and y (N, 1) labels 1..10"
    try:
        content = scipy.io.loadmat(stream, variable_names=["X", "y"])
    except (ValueError, TypeError, OSError, NotImplementedError, scipy.io.matlab.MatReadError) as err:
        raise FormatError(f"{origin}: not a readable MATLAB v5 file ({err}); expected {expected}") from err
    missing = [name for name in ("X", "y") if name not in content]
    if missing:
        raise FormatError(f"{origin}: no variable {' or '.join(missing)}; expected {expected}")
    x, y = content["X"], content["y"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise FormatError(f"{origin}: X has shape {x.shape} of {x.dtype}; expected {expected}")
    if y.ndim != 2 or y.shape[1] != 1:
        raise FormatError(f"{origin}: y has shape {y.shape}; expected {expected}")
    # SVHN writes the digit 0 as label 10.
    labels = _labels(y[:, 0], origin, x.shape[3], first=1, num_classes=10) % 10
    return _to_float(x.transpose(3, 0, 1, 2)), labels


def _read_stl10_images(stream: IO[bytes], size: int, origin: str, limit: int | None = None) -> np.ndarray:
    if size % _STL10_PIXELS:
        raise FormatError(
            f"{origin}: {size} bytes is not a whole number of 3x96x96 uint8 images ({_STL10_PIXELS} bytes each)"
        )
    count = size // _STL10_PIXELS if limit is None else min(limit, size // _STL10_PIXELS)
    images = np.empty((count, 96, 96, 3), np.float32)
    for start in range(0, count, _STL10_CHUNK):
        n = min(_STL10_CHUNK, count - start)
        raw = stream.read(n * _STL10_PIXELS)
        if len(raw) != n * _STL10_PIXELS:
            raise FormatError(f"{origin}: truncated: {size} bytes announced, the data ends early")
        # The official reader: reshape to (N, 3, 96, 96), then transpose(0, 3, 2, 1) to (N, row, column, channel).
        planes = np.frombuffer(raw, np.uint8).reshape(n, *_STL10_SHAPE)
        images[start : start + n] = _to_float(planes.transpose(0, 3, 2, 1))
    return images


def _read_stl10_labels(stream: IO[bytes], size: int, origin: str) -> np.ndarray:
    return _labels(np.frombuffer(stream.read(), np.uint8), origin, size, first=1, num_classes=10) - 1


def _read_text(stream: IO[bytes], size: int, origin: str) -> str:
    return stream.read().decode()


def _labels(values: Any, origin: str, count: int, *, first: int, num_classes: int) -> np.ndarray:
    """``values`` as int32 labels: exactly ``count`` of them, each in ``first..first + num_classes - 1``."""
    labels = np.asarray(values)
    if labels.shape != (count,) or not (labels.size == 0 or np.issubdtype(labels.dtype, np.integer)):
        raise FormatError(f"{origin}: expected {count} integer labels, found shape {labels.shape} of {labels.dtype}")
    last = first + num_classes - 1
    outside = np.flatnonzero((labels < first) | (labels > last))
    if outside.size:
        raise FormatError(f"{origin}: label {labels[outside[0]]} at index {outside[0]} is outside {first}..{last}")
    return labels.astype(np.int32)


def _check_class_names(names: list[str], origin: str, dataset: str) -> None:
    """Refuse a meta file naming other classes (another dataset's files, or another version)."""
    expected = list(BENCHMARKS[dataset].class_names)
    if names != expected:
        first = next((i for i, (a, b) in enumerate(zip(names, expected)) if a != b), min(len(names), len(expected)))
        raise FormatError(
            f"{origin}: expected {dataset}'s {len(expected)} class names {expected[:3]}..., "
            f"found {len(names)} that differ at position {first}"
        )


def _to_float(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) / 255.0


# --------------------------------------------------------------------------- where the files are


@dataclass(frozen=True)
class _Source:
    """A folder holding a benchmark's files, or its official tarball (whose members are looked up by name)."""

    path: Path

    @property
    def is_archive(self) -> bool:
        return self.path.is_file()

    def origin(self, name: str) -> str:
        return f"{self.path}:{name}" if self.is_archive else str(self.path / name)

    def read(self, readers: dict[str, Reader]) -> dict[str, Any]:
        """``readers[name]`` applied to each file ``name``; a tarball is read in one pass, in its own order."""
        if not self.is_archive:
            results = {}
            for name, reader in readers.items():
                with open(self.path / name, "rb") as stream:
                    results[name] = reader(stream, os.fstat(stream.fileno()).st_size, self.origin(name))
            return results
        results = {}
        try:
            with tarfile.open(self.path, mode="r|*") as archive:
                for member in archive:
                    name = PurePosixPath(member.name).name
                    if member.isfile() and name in readers and name not in results:
                        stream = archive.extractfile(member)
                        results[name] = readers[name](stream, member.size, f"{self.path}:{member.name}")
        except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
            raise FormatError(f"{self.path}: not a readable .tar.gz archive ({type(err).__name__}: {err})") from err
        missing = [name for name in readers if name not in results]
        if missing:
            raise FormatError(f"{self.path}: the archive holds no {', '.join(missing)}")
        return results


def _find(
    benchmark: Benchmark, names: list[str], data_dir: PathLike | None, download: bool, mirror: str | None
) -> _Source:
    """Where the files ``names`` are; with ``download``, fetch what is missing first."""
    # An explicit data_dir is the only place looked at: silently reading another copy would hide a wrong path.
    directories = [Path(data_dir).expanduser()] if data_dir is not None else _search_dirs(benchmark)
    for directory in directories:
        source = _source_in(benchmark, directory, names)
        if source is not None:
            return source
    if not download:
        raise DataNotFoundError(_not_found_message(benchmark, directories, names, data_dir is not None))
    target = directories[0] if data_dir is not None else cache_dir() / benchmark.name
    base = mirror or os.environ.get(benchmark.mirror_variable)
    wanted = [benchmark.archive] if benchmark.archive else [name for name in names if not (target / name).is_file()]
    for name in wanted:
        _download(benchmark, name, target / name, base)
    return _source_in(benchmark, target, names)


def _search_dirs(benchmark: Benchmark) -> list[Path]:
    lab_data = os.environ.get("LAB_DATA")
    from_env = [Path(lab_data).expanduser() / name for name in benchmark.lab_data_dirs] if lab_data else []
    return [*from_env, cache_dir() / benchmark.name]


def _source_in(benchmark: Benchmark, directory: Path, names: list[str]) -> _Source | None:
    """The extracted folder, the files themselves, or the archive in ``directory``, the first that is complete."""
    folders = [directory / benchmark.folder] if benchmark.folder else []
    for folder in [*folders, directory]:
        if all((folder / name).is_file() for name in names):
            return _Source(folder)
    if benchmark.archive and (directory / benchmark.archive).is_file():
        return _Source(directory / benchmark.archive)
    return None


def _not_found_message(benchmark: Benchmark, directories: list[Path], names: list[str], explicit: bool) -> str:
    wanted = f"{benchmark.archive} or its folder {benchmark.folder}/" if benchmark.archive else ", ".join(names)
    lines = [f"{benchmark.title} not found: looked for {wanted} in:"]
    for directory in directories:
        if not directory.is_dir():
            status = "no such directory"
        else:
            extracted = directory / benchmark.folder if benchmark.folder else None
            folder = extracted if extracted is not None and extracted.is_dir() else directory
            missing = ", ".join(name for name in names if not (folder / name).is_file())
            status = f"{folder.name}/ lacks {missing}" if folder != directory else f"missing {missing}"
        lines.append(f"  - {directory}  ({status})")
    loader = f"lab.data.load({benchmark.name!r}, {'data_dir=..., ' if explicit else ''}download=True)"
    if explicit:
        lines.append(f"Put {wanted} there, or download into it: {loader}.")
        return "\n".join(lines)
    if not os.environ.get("LAB_DATA"):
        lines.append(f"  - $LAB_DATA/{benchmark.name}  (LAB_DATA is not set)")
    hosts = sorted({download.url.rsplit("/", 1)[0] + "/" for download in benchmark.downloads.values()})
    lines += [
        "To get it, do one of:",
        f"  - put {wanted} (from {', '.join(hosts)}) in <dir>/{benchmark.name}/ and set LAB_DATA=<dir>",
        f"  - download it into {cache_dir() / benchmark.name}: {loader} or lab data download {benchmark.name}",
    ]
    return "\n".join(lines)


def _download(benchmark: Benchmark, name: str, target: Path, base: str | None) -> None:
    """Stream ``name`` into ``target``, keeping it only if its SHA-256 is the published one."""
    official = benchmark.downloads[name]
    url = f"{base.rstrip('/')}/{name}" if base else official.url
    log.info("downloading %s (%.0f MB) to %s", url, official.size / 1e6, target)
    digest = hashlib.sha256()
    with files.atomic_path(target) as temporary:
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(temporary, "wb") as out:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        except OSError as err:
            raise DataNotFoundError(f"could not download {benchmark.title} from {url}: {err}") from err
        if digest.hexdigest() != official.sha256:
            raise FormatError(
                f"checksum mismatch for {url}: expected SHA-256 {official.sha256}, got {digest.hexdigest()}; "
                f"not saved. Check the mirror (mirror=, ${benchmark.mirror_variable}) or retry."
            )
