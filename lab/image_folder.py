"""Your own images: a folder of class folders (the common ImageFolder layout), decoded with Pillow.

Either one folder per class, the class names being the folder names (sorted)::

    PATH/cat/001.jpg, PATH/cat/002.png, ..., PATH/dog/...   (images at any depth below a class folder)
    PATH/unlabeled/...                                       (optional: images without a label)

where :data:`TEST_FRACTION` of each class's images (rounded, at least one) are drawn into the test
split with a fixed seed, or a test split of your own, with the same class folders in both::

    PATH/train/cat/..., PATH/train/dog/..., PATH/test/cat/..., PATH/test/dog/..., PATH/unlabeled/...

Image files are those with a suffix of :data:`IMAGE_SUFFIXES` (any case); hidden files and folders
(``.name``) are not read, other files are counted in the dataset's ``source``. Every image is decoded
by Pillow to 8 bits per channel (16-bit grayscale too), turned upright as its EXIF orientation says,
kept with 1 channel when every image of the folder is grayscale and as RGB otherwise (alpha dropped),
resized to ``image_size`` (default: the most common size in the folder; the aspect ratio is not kept)
with Pillow's antialiased bilinear filter, and returned as every image dataset of lab is, float32
``(N, H, W, C)`` in ``[0, 1]``, in memory; a size that would take more than :data:`MEMORY_FRACTION`
of the machine's memory is refused before decoding. The rows follow the files: class by class, by
path within a class (the unlabeled images by path).

A file Pillow cannot read is skipped, never silently: it is named in a logged warning and, with the
count, in the returned ``Dataset.source``. The decoded arrays are cached in ``cache_dir()/image_folder``,
keyed by the SHA-256 of every file's content and path, the settings and the code that decodes them
(:func:`lab.cache.fingerprint`, Pillow's version): an edited image makes them again, an unchanged
folder is read from the cache.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from lab import cache
from lab.dataset import DataNotFoundError, Dataset, PathLike

__all__ = [
    "IMAGE_SUFFIXES",
    "TEST_FRACTION",
    "UNLABELED",
    "FolderContents",
    "content_digest",
    "describe",
    "load",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
UNLABELED = "unlabeled"  # the optional folder of images without a label, beside the class folders
SPLITS = ("train", "test")  # the optional folders of a split of your own
TEST_FRACTION = 0.25  # of each class, when the folder gives no split (as digits' test_size)
SPLIT_SEED = 0
# Pillow modes read as one channel; the 16- and 32-bit integer ones are brought to 8 bits first.
_GRAYSCALE_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N"}
_WIDE_GRAYSCALE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
_TURNED_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations shown a quarter turn from the stored pixels
MEMORY_FRACTION = 0.5  # of the machine's memory, at most, for the decoded images (other processes share it)
_NAMED_AT_MOST = 10  # unreadable files named in a message; the count says how many more
# What Pillow raises for a file it cannot read: not an image (UnidentifiedImageError, an OSError),
# truncated or damaged data (OSError, SyntaxError, EOFError, ValueError), or a decompression bomb.
_UNREADABLE = (OSError, SyntaxError, EOFError, ValueError, Image.DecompressionBombError)


@dataclass(frozen=True)
class FolderContents:
    """What an image folder holds, from its listing alone (nothing is decoded): see :func:`describe`."""

    path: Path
    class_names: tuple[str, ...]
    train: tuple[tuple[Path, int], ...]  # (image file, label), in row order
    test: tuple[tuple[Path, int], ...]
    unlabeled: tuple[Path, ...]
    ignored: tuple[Path, ...]  # files without an image suffix, not read
    split_given: bool  # the folder has train/ and test/

    @property
    def train_counts(self) -> dict[str, int]:
        """Training images per class name (those that Pillow will fail to read included)."""
        return _counts(self.train, self.class_names)

    @property
    def test_counts(self) -> dict[str, int]:
        return _counts(self.test, self.class_names)

    def class_folder(self, name: str) -> Path:
        """The folder of class ``name``'s training images."""
        return self.path / "train" / name if self.split_given else self.path / name

    def check_labels_per_class(self, per_class: int) -> None:
        """Refuse, in one line naming the class folder, ``per_class`` labels of a class with fewer training images."""
        for name, count in self.train_counts.items():
            if count < per_class:
                raise ValueError(
                    f"{self.class_folder(name)}: {count} training image{'s' if count != 1 else ''}, but "
                    f"labels_per_class={per_class} draws {per_class} of each class; lower labels_per_class or "
                    f"add images"
                )

    def files(self) -> list[Path]:
        """Every image file read, in row order: training, test, then unlabeled images."""
        return [path for path, _ in self.train] + [path for path, _ in self.test] + list(self.unlabeled)


def _counts(examples: tuple[tuple[Path, int], ...], class_names: tuple[str, ...]) -> dict[str, int]:
    counts = np.bincount([label for _, label in examples], minlength=len(class_names))
    return {name: int(count) for name, count in zip(class_names, counts, strict=True)}


def describe(path: PathLike) -> FolderContents:
    """The class names, the images of each split and the unlabeled images of the folder ``path``,
    from its listing alone (fast: nothing is decoded). Refuses, in one line naming the folder, a
    missing folder, one without class folders or image files, a single class, a class folder without
    images, and (without train/ and test/) a class of one image, which cannot give a test image too."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DataNotFoundError(
            f"{root}: no such folder; an image dataset is a folder with a subfolder of images per class"
        )
    if not root.is_dir():
        raise ValueError(f"{root}: is a file; an image dataset is a folder with a subfolder of images per class")
    given = [split for split in SPLITS if (root / split).is_dir()]
    if len(given) == 1:
        missing = next(split for split in SPLITS if split not in given)
        raise ValueError(
            f"{root}: has {given[0]}/ but no {missing}/; give both (with the same class folders), or put the "
            f"class folders in {root} itself for a {TEST_FRACTION:.0%} test split"
        )
    unlabeled, ignored_unlabeled = _images_under(root / UNLABELED)
    if given:
        class_names, train, ignored_train = _classes(root / "train")
        test_names, test, ignored_test = _classes(root / "test")
        if test_names != class_names:
            raise ValueError(
                f"{root}: train/ has the class folders {list(class_names)} but test/ has {list(test_names)}; "
                f"give both the same class folders"
            )
        ignored = ignored_train + ignored_test
    else:
        class_names, examples, ignored = _classes(root, reserved=(UNLABELED,))
        train, test = _test_split(root, examples, class_names)
    return FolderContents(
        root, class_names, train, test, unlabeled, ignored + ignored_unlabeled, split_given=bool(given)
    )


def _classes(
    folder: Path, reserved: tuple[str, ...] = ()
) -> tuple[tuple[str, ...], tuple[tuple[Path, int], ...], tuple[Path, ...]]:
    """The class names (the sorted subfolders of ``folder``), every (image, label) and the files not read."""
    class_names = tuple(
        sorted(child.name for child in folder.iterdir() if child.is_dir() and not _hidden(child) and
               child.name not in reserved)
    )  # fmt: skip
    if not class_names:
        raise ValueError(
            f"{folder}: holds no class folders; put each class's images in a subfolder named after the class "
            f"({folder}/<class>/<image>)"
        )
    listed = [_images_under(folder / name) for name in class_names]
    if not any(images for images, _ in listed):
        others = sum(len(ignored) for _, ignored in listed)
        raise ValueError(
            f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) in its class folders"
            + (f"; {others} other file{'s' if others != 1 else ''} found" if others else "")
        )
    if len(class_names) < 2:
        raise ValueError(f"{folder}: holds one class folder ({class_names[0]}); a classifier needs at least 2")
    for name, (images, _) in zip(class_names, listed, strict=True):
        if not images:
            raise ValueError(f"{folder / name}: holds no image files; add images or remove the folder")
    examples = tuple((image, label) for label, (images, _) in enumerate(listed) for image in images)
    return class_names, examples, tuple(path for _, ignored in listed for path in ignored)


def _images_under(folder: Path) -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    """The image files at any depth below ``folder`` (none if it is absent), by path, and the other files."""
    if not folder.is_dir():
        return (), ()
    found = sorted(
        path for path in folder.rglob("*")
        if path.is_file() and not any(_hidden(part) for part in path.relative_to(folder).parts)
    )  # fmt: skip
    images = tuple(path for path in found if path.suffix.lower() in IMAGE_SUFFIXES)
    return images, tuple(path for path in found if path.suffix.lower() not in IMAGE_SUFFIXES)


def _hidden(part: Path | str) -> bool:
    return (part.name if isinstance(part, Path) else part).startswith(".")


def _test_split(
    root: Path, examples: tuple[tuple[Path, int], ...], class_names: tuple[str, ...]
) -> tuple[tuple[tuple[Path, int], ...], tuple[tuple[Path, int], ...]]:
    """(train, test): a fixed-seed draw of :data:`TEST_FRACTION` of each class (at least one image) for test."""
    rng = np.random.default_rng(SPLIT_SEED)
    train, test = [], []
    for label, name in enumerate(class_names):
        members = [example for example in examples if example[1] == label]
        if len(members) < 2:
            raise ValueError(
                f"{root / name}: holds 1 image, but the {TEST_FRACTION:.0%} test split needs at least 2 of each "
                f"class (one to train on, one to test); add images, or give train/ and test/ folders"
            )
        chosen = set(rng.permutation(len(members))[: max(1, round(TEST_FRACTION * len(members)))].tolist())
        test += [example for i, example in enumerate(members) if i in chosen]
        train += [example for i, example in enumerate(members) if i not in chosen]
    return tuple(train), tuple(test)


def content_digest(contents: FolderContents) -> str:
    """The SHA-256 of every image file read (its path below the folder, then its content), in row order:
    it changes when an image is edited, added, removed, renamed or moved to another class or split."""
    digest = hashlib.sha256()
    for path in contents.files():
        digest.update(f"{path.relative_to(contents.path).as_posix()}\0{cache.sha256_file(path)}\0".encode())
    return digest.hexdigest()


def load(path: PathLike, *, image_size: int | list[int] | tuple[int, int] | None = None) -> Dataset:
    """The images of the folder ``path`` (see the module's description) as a :class:`Dataset`.

    ``image_size``: the ``height = width`` or the ``[height, width]`` every image is resized to;
    None keeps the most common size in the folder. The unlabeled images become ``x_unlabeled``,
    which semi-supervised runs draw their unlabeled batches from too (``unlabeled_in_pool``).
    """
    size = _checked_size(image_size)
    contents = describe(path)
    settings = {"image_size": size, "test_fraction": TEST_FRACTION, "split_seed": SPLIT_SEED}
    entry_key = cache.key(content_digest(contents), settings, cache.fingerprint(__name__), Image.__version__)
    entry = cache.cache_dir() / "image_folder" / f"{contents.path.name or 'images'}-{entry_key}.npz"
    what = f"the decoded images of {contents.path}"
    arrays = cache.read_checked(entry, cache.read_npz, what)
    if arrays is None:
        arrays = _decode(contents, size)
        cache.write_checked(entry, cache.npz_bytes(**arrays), what)
    skipped = [str(reason) for reason in arrays["skipped"]]
    if skipped:
        log.warning("%s: skipped %s", contents.path, _named(skipped))
    return Dataset(
        f"images:{contents.path}",
        x_train=arrays["x_train"],
        y_train=arrays["y_train"],
        x_test=arrays["x_test"],
        y_test=arrays["y_test"],
        class_names=contents.class_names,
        source=_source(contents, arrays, skipped),
        x_unlabeled=arrays["x_unlabeled"] if len(arrays["x_unlabeled"]) else None,
        unlabeled_in_pool=True,
    )


def _checked_size(image_size: Any) -> tuple[int, int] | None:
    if image_size is None:
        return None
    pair = [image_size, image_size] if isinstance(image_size, int) and not isinstance(image_size, bool) else image_size
    valid = (
        isinstance(pair, list | tuple)
        and len(pair) == 2
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in pair)
    )
    if not valid:
        raise ValueError(
            f"image_size must be a positive integer or a [height, width] pair of them, got {image_size!r}"
        )
    return int(pair[0]), int(pair[1])


def _decode(contents: FolderContents, size: tuple[int, int] | None) -> dict[str, np.ndarray]:
    """Every image of ``contents`` decoded, converted and resized, in one array filled in place; the files
    Pillow cannot read are skipped, each named in ``skipped`` with the reason."""
    files = contents.files()
    skipped: dict[int, str] = {}
    sizes, modes = [], set()
    for i, path in enumerate(files):  # the headers: the common size and mode, without decoding the pixels
        try:
            with Image.open(path) as image:
                sizes.append(_upright_size(image))
                modes.add(image.mode)
        except _UNREADABLE as error:
            skipped[i] = _reason(error)
    if not sizes:
        unreadable = _named(_skips(skipped, files, contents))
        raise ValueError(f"{contents.path}: none of its image files can be read: {unreadable}")
    # The most common size; among equally common ones, the largest, so that the choice does not depend on order.
    height, width = size or max(collections.Counter(sizes).items(), key=lambda item: (item[1], item[0]))[0]
    mode = "L" if modes <= _GRAYSCALE_MODES else "RGB"
    shape = (len(files), height, width, 1 if mode == "L" else 3)
    _check_memory(contents.path, shape, chosen=size is not None)
    rows = np.zeros(shape, np.float32)
    for i, path in enumerate(files):
        if i not in skipped:
            try:
                rows[i] = _read(path, mode, (height, width))
            except _UNREADABLE as error:
                skipped[i] = _reason(error)
    readable = np.array([i not in skipped for i in range(len(files))])
    labels = np.array([label for _, label in contents.train + contents.test], np.int32)
    ends = np.cumsum([len(contents.train), len(contents.test)])

    def part(array: np.ndarray, start: int, stop: int | None) -> np.ndarray:  # a view when nothing was skipped
        keep = readable[start:stop]
        return array[start:stop] if keep.all() else array[start:stop][keep]

    return {
        "x_train": part(rows, 0, ends[0]),
        "y_train": part(labels, 0, ends[0]),
        "x_test": part(rows, ends[0], ends[1]),
        "y_test": part(labels, ends[0], ends[1]),
        "x_unlabeled": part(rows, ends[1], None),
        "skipped": np.array(_skips(skipped, files, contents), dtype=str),
    }


def _check_memory(folder: Path, shape: tuple[int, ...], *, chosen: bool) -> None:
    """Refuse, before decoding, images that would take more than :data:`MEMORY_FRACTION` of the machine's
    memory as float32 (a folder of full-size photos at their own size), saying what size to choose."""
    needed, available = 4 * int(np.prod(shape)), _physical_memory()
    if needed > MEMORY_FRACTION * available:
        size = "the image_size chosen" if chosen else "the most common size in the folder"
        raise ValueError(
            f"{folder}: {shape[0]} images of {shape[1]}x{shape[2]} ({size}) take {needed / 1e6:,.1f} MB as float32, "
            f"more than {MEMORY_FRACTION:.0%} of this machine's {available / 1e6:,.1f} MB; choose a smaller "
            f"image_size, e.g. dataset_kwargs={{image_size: 64}}"
        )


def _physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _upright_size(image: Image.Image) -> tuple[int, int]:
    """(height, width) as the image is shown: turned a quarter when its EXIF orientation says so (a phone's photo)."""
    width, height = image.size
    # The EXIF block is read with the header (JPEG, TIFF, WebP, a PNG's eXIf chunk); without one, nothing is decoded.
    turned = "exif" in image.info and image.getexif().get(ExifTags.Base.Orientation) in _TURNED_ORIENTATIONS
    return (width, height) if turned else (height, width)


def _read(path: Path, mode: str, size: tuple[int, int]) -> np.ndarray:
    """One image, upright, as float32 ``(height, width, channels)`` in [0, 1]."""
    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened)  # decodes it; a copy, turned as its EXIF orientation says
    if image.mode in _WIDE_GRAYSCALE_MODES:  # Pillow's own conversion to "L" clips at 255
        wide = np.clip(np.asarray(image, np.int64), 0, 65535)
        image = Image.fromarray((wide // 257).astype(np.uint8))
    image = image.convert(mode)
    if image.size != size[::-1]:
        image = image.resize(size[::-1], Image.Resampling.BILINEAR)
    pixels = np.asarray(image, np.float32) / 255.0
    return pixels[..., None] if pixels.ndim == 2 else pixels


def _reason(error: BaseException) -> str:
    if isinstance(error, UnidentifiedImageError):  # its message repeats the file's path
        return "not an image Pillow can read"
    return f"{type(error).__name__}: {error}".splitlines()[0]


def _skips(skipped: dict[int, str], files: list[Path], contents: FolderContents) -> list[str]:
    """``skipped`` (reasons by index in ``files``) as "<path below the folder> (<reason>)", by path."""
    return sorted(f"{files[i].relative_to(contents.path).as_posix()} ({reason})" for i, reason in skipped.items())


def _named(skips: list[str]) -> str:
    more = len(skips) - _NAMED_AT_MOST
    named = "; ".join(skips[:_NAMED_AT_MOST]) + (f"; and {more} more" if more > 0 else "")
    return f"{len(skips)} unreadable image file{'s' if len(skips) != 1 else ''}: {named}"


def _source(contents: FolderContents, arrays: dict[str, np.ndarray], skipped: list[str]) -> str:
    counts = f"{len(arrays['y_train'])} train / {len(arrays['y_test'])} test"
    if contents.unlabeled:
        counts += f" / {len(arrays['x_unlabeled'])} unlabeled"
    notes = [f"{counts} images of {arrays['x_train'].shape[1:]}"]
    if skipped:
        notes.append(f"skipped {_named(skipped)}")
    if contents.ignored:
        notes.append(f"{len(contents.ignored)} files without an image suffix not read")
    return f"{contents.path} ({'; '.join(notes)})"
