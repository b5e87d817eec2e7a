"""Text: fortune-cookie datasets, your own texts from a file, and a subword tokenizer (a thin layer over
Hugging Face ``tokenizers``).

**The files.** Debian's fortune packages install files of fortunes separated by lines
holding ``%``. A fortune is read as UTF-8 (undecodable bytes become U+FFFD) with the
backspace overstrikes of old files removed and its whitespace collapsed to single spaces
(one line per fortune); empty ones are skipped. Two fortunes are *the same text* when
their lower-cased words (``\\w+``) agree, so a quote with other spacing or punctuation
counts as a repeat. The ROT13 ``off/`` folders are never read.

**The tasks** (both split 25% stratified test, ``random_state=0``, as ``digits``; a class needs at
least 4 distinct fortunes, so that both splits hold it, and a file without any is refused by name):

``fortunes_topics``
    an English fortune's file, one of :data:`FORTUNE_TOPICS` (3,929 fortunes in
    Debian's ``fortunes`` 1:1.99.1). Repeats within a file are kept once; texts found under
    more than one topic are dropped, all their copies (:attr:`Texts.counts` says how many).
    The pretraining corpus is every distinct fortune of the English files
    (:data:`ENGLISH_FILES`: those of Debian's ``fortunes`` and ``fortunes-min``, the ten
    topics included) except the test texts.
``fortunes_language``
    a fortune's language, one of :data:`FORTUNE_LANGUAGES` (:data:`LANGUAGE_SOURCES`
    says from which files). Texts found under more than one language are dropped; then each
    language is subsampled (seed 0) to the size of the smallest. The pretraining corpus is
    every distinct fortune of those files except the test texts: the training texts and the
    fortunes the subsampling left out.

**Your own texts** (:func:`load_file_texts`, :func:`load_file`; ``csv:PATH`` and ``jsonl:PATH`` in
:data:`lab.data.SOURCES`): a CSV or JSON Lines file of a text and a label per row, split, de-duplicated
(:func:`same_text_key`, as above) and tokenized the same way; rows without a label join the corpus.

**Where the files are looked for**: in ``data_dir`` if given (only there), else the first
of ``$LAB_DATA/fortunes``, ``/usr/share/games/fortunes`` (Debian's packages) and
``cache_dir()/fortunes`` that holds them. ``download=True`` fetches fortune-mod's source
release (:data:`FORTUNE_MOD_URL`, checked against :data:`FORTUNE_MOD_SHA256`) and keeps its
English files in the last; it has no other language.

**The tokenizer** (:func:`train_tokenizer`): byte-pair encoding (BPE) over words marked
SentencePiece-style (``▁`` starts a word), trained on a pretraining corpus, never on test
texts, with the special tokens :data:`SPECIAL_TOKENS` at ids 0..3 (``[PAD]`` = 0,
``[CLS]`` = 1, ``[MASK]`` = 2, ``[UNK]`` = 3). Not WordPiece: its trainer gives another
vocabulary from run to run (huggingface/tokenizers#1794), BPE's is the same every time.
Text is NFKC-normalised and lower-cased (accents are kept: they tell languages apart);
characters the corpus lacks become ``[UNK]``. Every encoded sequence
starts with ``[CLS]`` and is cut or padded with ``[PAD]`` to ``max_length``; the
attention mask is ``ids != PAD_ID``. The trained tokenizer is cached as JSON, keyed by
the corpus' content digest (:func:`lab.cache.content_digest`), the vocabulary size and
:func:`lab.cache.fingerprint` of this module; the encoded ids by the texts' digest and the tokenizer.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import io
import json
import logging
import os
import re
import tarfile
import urllib.request
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from lab import cache, files, validate
from lab.dataset import DataNotFoundError, Dataset
from lab.modality import CLS_ID, LAB_SPECIAL_IDS, MASK_ID, PAD_ID, SPECIAL_TOKENS, UNK_ID, SpecialIds

__all__ = [
    "CLS_ID",
    "ENGLISH_FILES",
    "FORTUNE_LANGUAGES",
    "FORTUNE_MOD_SHA256",
    "FORTUNE_MOD_URL",
    "FORTUNE_TOPICS",
    "LANGUAGE_SOURCES",
    "MASK_ID",
    "PAD_ID",
    "SPECIAL_TOKENS",
    "SYSTEM_DIR",
    "TEXT_DATASETS",
    "TEXT_FILE_FORMATS",
    "UNKNOWN_POLICIES",
    "UNK_ID",
    "Texts",
    "Tokenizer",
    "attention_maps",
    "download_fortune_mod",
    "fill_masks",
    "load_dataset",
    "load_texts",
    "load_file",
    "load_file_texts",
    "parse_fortunes",
    "same_text_key",
    "tokenizer",
    "train_tokenizer",
]

log = logging.getLogger(__name__)

UNKNOWN_POLICIES = ("keep", "drop")  # what encoding does with [UNK]: keep it, or leave it out
TEXT_DATASETS = ("fortunes_topics", "fortunes_language")
# The English files of Debian's `fortunes` package whose file is the label of fortunes_topics.
FORTUNE_TOPICS = (
    "computers", "politics", "startrek", "food", "sports", "medicine", "law", "love", "zippy", "science",
)  # fmt: skip
# The labels of fortunes_language (LANGUAGE_SOURCES says which files each is read from).
FORTUNE_LANGUAGES = ("English", "German", "Spanish", "Italian", "Portuguese", "Polish", "Czech", "Russian")

# The English files of Debian's `fortunes` and `fortunes-min` packages (fortune-mod 1.99.1).
ENGLISH_FILES = (
    "art", "ascii-art", "computers", "cookie", "debian", "definitions", "disclaimer", "drugs", "education",
    "ethnic", "food", "fortunes", "goedel", "humorists", "kids", "knghtbrd", "law", "linux", "linuxcookie",
    "literature", "love", "magic", "medicine", "men-women", "miscellaneous", "news", "paradoxum", "people",
    "perl", "pets", "platitudes", "politics", "pratchett", "riddles", "science", "songs-poems", "sports",
    "startrek", "tao", "translate-me", "wisdom", "work", "zippy",
)  # fmt: skip

# Each language of fortunes_language: the files read (English: those of ENGLISH_FILES present),
# a folder's files being all but the .dat indexes and .u8 links; its package; names left out.
LANGUAGE_SOURCES = {
    "English": ("", "fortunes", ()),
    "German": ("de", "fortunes-de", ()),
    "Spanish": ("es", "fortunes-es", ()),
    "Italian": ("it", "fortunes-it", ()),
    "Portuguese": ("brasil", "fortunes-br", ()),
    "Polish": ("pl", "fortunes-pl", ()),
    "Czech": ("cs", "fortunes-cs", ("klasik-sk",)),  # fortunes-cs ships Slovak classics too
    "Russian": ("ru", "fortunes-ru", ()),
}

SYSTEM_DIR = Path("/usr/share/games/fortunes")

# fortune-mod's source release; the digest is the one NixOS/nixpkgs (pkgs/by-name/fo/fortune/package.nix)
# and the Maple Linux package of fortune-mod 3.26.0 both record.
FORTUNE_MOD_URL = (
    "https://github.com/shlomif/fortune-mod/releases/download/fortune-mod-3.26.0/fortune-mod-3.26.0.tar.xz"
)
FORTUNE_MOD_SHA256 = "ac4d1486cac9b999049107136b94106fe98a4aeac00ec635b144c43764bffe4c"

_SPLIT_SEED = 0
_TEST_SIZE = 0.25
# The stratified split gives a class of n texts at least floor(n * _TEST_SIZE) test texts and more training
# texts: with n >= 1 / _TEST_SIZE every class is in both splits (the test metrics need each).
_MIN_PER_CLASS = round(1 / _TEST_SIZE)
_SEPARATOR = re.compile(r"^%[ \t\r]*$", flags=re.M)
_OVERSTRIKE = re.compile(".\x08")  # "_\bx" (underlined) and "x\bx" (bold) print as x


# --------------------------------------------------------------------------- reading fortunes


def parse_fortunes(content: str) -> list[str]:
    """The fortunes of one fortune file's text, in order, each on one line (see the module docstring)."""
    content = _OVERSTRIKE.sub("", content)
    return [" ".join(chunk.split()) for chunk in _SEPARATOR.split(content) if chunk.strip()]


def _read(path: Path) -> list[str]:
    return parse_fortunes(path.read_bytes().decode("utf-8", errors="replace"))


def same_text_key(text: str) -> str:
    """Texts with equal keys are the same text: their lower-cased words agree (pictures: their characters).

    The one rule of de-duplication, for the fortune datasets and text files alike (:func:`load_file_texts`)."""
    return " ".join(re.findall(r"\w+", text.lower())) or text


def _class_source(name: str, directory: Path, class_name: str) -> str:
    """Where the fortunes of class ``class_name`` of dataset ``name`` are read, for messages."""
    if name == "fortunes_topics":
        return str(directory / class_name)
    where = LANGUAGE_SOURCES[class_name][0]
    return str(directory / where) if where else f"the English files of {directory}"


def _english_paths(directory: Path) -> list[Path]:
    return [directory / name for name in ENGLISH_FILES if (directory / name).is_file()]


def _language_paths(directory: Path, language: str) -> list[Path]:
    where, _, left_out = LANGUAGE_SOURCES[language]
    if not where:
        return _english_paths(directory)
    path = directory / where
    if path.is_file():
        return [path]
    if not path.is_dir():
        return []
    return sorted(
        p for p in path.iterdir() if p.is_file() and p.suffix not in (".dat", ".u8") and p.name not in left_out
    )


def _missing(name: str, directory: Path) -> list[str]:
    """What ``directory`` lacks for dataset ``name`` (empty when it has everything)."""
    if name == "fortunes_topics":
        return [topic for topic in FORTUNE_TOPICS if not (directory / topic).is_file()]
    return [
        (LANGUAGE_SOURCES[language][0] or "English files such as computers")
        for language in FORTUNE_LANGUAGES
        if not _language_paths(directory, language)
    ]


# --------------------------------------------------------------------------- the datasets' texts


@dataclasses.dataclass(frozen=True, eq=False)
class Texts:
    """A text dataset before tokenization: the same split as :func:`load_dataset`'s arrays."""

    name: str
    train: tuple[str, ...]
    y_train: np.ndarray  # int32
    test: tuple[str, ...]
    y_test: np.ndarray  # int32
    corpus: tuple[str, ...]  # the pretraining corpus: no test text is in it
    class_names: tuple[str, ...]
    source: str  # where the files were read, and the counts, in words
    counts: dict[str, int]  # fortunes read, repeats merged, texts dropped, split and corpus sizes


def load_texts(name: str, *, data_dir: str | os.PathLike[str] | None = None, download: bool = False) -> Texts:
    """The texts, labels and pretraining corpus of text dataset ``name`` (one of :data:`TEXT_DATASETS`)."""
    validate.choice("text dataset", name, TEXT_DATASETS)
    if not isinstance(download, bool):
        raise ValueError(f"download must be True or False, got {download!r}")
    directory = _find_directory(name, data_dir, download)
    if name == "fortunes_topics":
        classes = FORTUNE_TOPICS
        by_class = {topic: _read(directory / topic) for topic in classes}
        everything = [text for path in _english_paths(directory) for text in _read(path)]
    else:
        classes = FORTUNE_LANGUAGES
        by_class = {
            language: [text for path in _language_paths(directory, language) for text in _read(path)]
            for language in classes
        }
        everything = [text for texts in by_class.values() for text in texts]

    for class_name, class_texts in by_class.items():
        if not class_texts:
            raise ValueError(
                f"{_class_source(name, directory, class_name)} holds no fortune (it is empty or has only '%' lines); "
                f"class {class_name!r} of {name} needs at least {_MIN_PER_CLASS} fortunes"
            )
    key = {text: same_text_key(text) for text in everything}.__getitem__  # every class text is in everything
    texts, labels, counts = _distinct_texts(by_class, key)
    for class_name in classes:
        if counts[f"class:{class_name}"] < _MIN_PER_CLASS:
            raise ValueError(
                f"{name}: class {class_name!r} keeps {counts[f'class:{class_name}']} of its fortunes after merging "
                f"repeats and dropping texts found under other classes ({_class_source(name, directory, class_name)}); "
                f"the stratified {_TEST_SIZE:.0%} test split needs at least {_MIN_PER_CLASS} of every class"
            )
    if name == "fortunes_language":
        texts, labels, counts["subsampled_to"] = _balanced(texts, labels, len(classes))
    from sklearn.model_selection import train_test_split  # ~2 s to import: only for text datasets

    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=_TEST_SIZE, random_state=_SPLIT_SEED, stratify=labels
    )
    test = tuple(texts[i] for i in test_idx)
    test_keys = {key(text) for text in test}
    corpus = tuple(_first_of_each((text for text in everything if key(text) not in test_keys), key))
    counts |= {"train": len(train_idx), "test": len(test_idx), "corpus": len(corpus)}
    source = _describe(name, directory, counts)
    log.info("%s", source)
    return Texts(
        name=name,
        train=tuple(texts[i] for i in train_idx),
        y_train=labels[train_idx],
        test=test,
        y_test=labels[test_idx],
        corpus=corpus,
        class_names=classes,
        source=source,
        counts=counts,
    )


def _first_of_each(texts: Iterable[str], key: Callable[[str], str]) -> list[str]:
    """``texts`` without repeats (equal ``key``), each at its first place."""
    seen: set[str] = set()
    kept = []
    for text in texts:
        if key(text) not in seen:
            seen.add(key(text))
            kept.append(text)
    return kept


def _distinct_texts(
    by_class: dict[str, list[str]], key: Callable[[str], str]
) -> tuple[list[str], np.ndarray, dict[str, int]]:
    """Each class's texts once (equal ``key``, same text), without the texts found under several
    classes; their labels; the counts."""
    distinct = {name: _first_of_each(texts, key) for name, texts in by_class.items()}
    classes_of: dict[str, set[str]] = {}
    for name, texts in distinct.items():
        for text in texts:
            classes_of.setdefault(key(text), set()).add(name)
    shared = {key for key, names in classes_of.items() if len(names) > 1}
    texts, labels = [], []
    for label, class_texts in enumerate(distinct.values()):
        kept = [text for text in class_texts if key(text) not in shared]
        texts += kept
        labels += [label] * len(kept)
    read = sum(map(len, by_class.values()))
    counts = {
        "read": read,
        "repeats_merged": read - sum(map(len, distinct.values())),
        "shared_texts": len(shared),
        "shared_dropped": sum(map(len, distinct.values())) - len(texts),
        "kept": len(texts),
    }
    counts |= {f"class:{name}": labels.count(label) for label, name in enumerate(by_class)}
    return texts, np.asarray(labels, np.int32), counts


def _balanced(texts: list[str], labels: np.ndarray, num_classes: int) -> tuple[list[str], np.ndarray, int]:
    """Subsample every class (seeded) to the size of the smallest, keeping the file order."""
    size = int(np.bincount(labels, minlength=num_classes).min())
    rng = np.random.default_rng(_SPLIT_SEED)
    keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:size] for c in range(num_classes)]))
    return [texts[i] for i in keep], labels[keep], size


def _describe(name: str, directory: Path, counts: dict[str, int]) -> str:
    what = "topic files" if name == "fortunes_topics" else "languages"
    per_class = ", ".join(f"{key.split(':', 1)[1]} {n}" for key, n in counts.items() if key.startswith("class:"))
    subsampled = f"; each class subsampled to {counts['subsampled_to']}" if "subsampled_to" in counts else ""
    return (
        f"{directory}: {counts['read']} fortunes of {sum(k.startswith('class:') for k in counts)} {what}, "
        f"{counts['repeats_merged']} repeats merged, {counts['shared_texts']} texts under several classes "
        f"dropped ({counts['shared_dropped']} fortunes), {counts['kept']} kept ({per_class}){subsampled}; "
        f"{counts['train']} train / {counts['test']} test; pretraining corpus {counts['corpus']} texts "
        "(every distinct fortune read except the test texts)"
    )


# --------------------------------------------------------------------------- your own texts: CSV and JSON Lines

TEXT_FILE_FORMATS = ("csv", "jsonl")
_SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class _Row:
    line: int  # where the row starts in the file, for messages
    text: str  # whitespace collapsed, as a fortune's
    label: str  # "" for an unlabeled row
    split: str  # "" when the file has no split column


def load_file_texts(
    path: str | os.PathLike[str],
    file_format: str,
    *,
    text_column: str = "text",
    label_column: str = "label",
    split_column: str = "split",
) -> Texts:
    """The texts of a CSV file (a header row naming the columns) or a JSON Lines file (one object per line),
    split and de-duplicated as the fortune datasets are.

    Each row holds a text (``text_column``) and a label (``label_column``); rows with an empty label
    are unlabeled and join the pretraining corpus only. The classes are the labels, sorted. Rows
    without text are skipped. Repeats of a text (:func:`same_text_key`) under one label are kept
    once; a text found under several labels is dropped, all its copies. A ``split_column`` holding
    ``train`` or ``test`` for every labeled row decides the split; without that column, a stratified
    25% test split (``random_state=0``) does, as for the fortunes. The corpus is every distinct text
    of the file, labeled or not, except the test texts. The counts are in :attr:`Texts.counts` and
    :attr:`Texts.source` and are logged. Every problem is one ``ValueError`` line naming the file.
    """
    validate.choice("text file format", file_format, TEXT_FILE_FORMATS)
    path = Path(path).expanduser()
    columns = (text_column, label_column, split_column)
    for option, column in zip(("text_column", "label_column", "split_column"), columns, strict=True):
        if not isinstance(column, str) or not column:
            raise ValueError(f"{option} must be a column name (a non-empty string), got {column!r}")
    expected = f"{file_format}:PATH names a {file_format.upper()} file of texts"
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        raise DataNotFoundError(f"{path}: no such file; {expected}") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a folder; {expected}") from None
    return _file_texts(content, str(path), file_format, columns)


@functools.lru_cache(maxsize=4)
def _file_texts(content: bytes, path: str, file_format: str, columns: tuple[str, str, str]) -> Texts:
    # Keyed by the content itself: a config is validated, then run, and both read the same file.
    read, has_split = _READERS[file_format](_decoded(content, path), path, *columns)
    rows = [row for row in read if row.text]
    empty = len(read) - len(rows)
    text_column, label_column, split_column = columns
    labeled = [row for row in rows if row.label]
    class_names = tuple(sorted({row.label for row in labeled}))
    if len(class_names) < 2:
        raise ValueError(
            f"{path}: the label column {label_column!r} holds {len(class_names)} class"
            f"{'' if len(class_names) == 1 else 'es'} {list(class_names)}; a classifier needs at least 2"
        )
    everything = [row.text for row in rows]
    key = {text: same_text_key(text) for text in everything}.__getitem__
    by_class: dict[str, list[str]] = {name: [] for name in class_names}
    for row in labeled:
        by_class[row.label].append(row.text)
    texts, labels, counts = _distinct_texts(by_class, key)
    counts |= {"rows": len(rows) + empty, "no_text": empty, "unlabeled": len(rows) - len(labeled)}
    if has_split:
        train_idx, test_idx = _split_by_column(path, labeled, texts, labels, class_names, key, split_column)
    else:
        for name in class_names:
            if counts[f"class:{name}"] < _MIN_PER_CLASS:
                raise ValueError(
                    f"{path}: class {name!r} has {counts[f'class:{name}']} distinct texts; the stratified "
                    f"{_TEST_SIZE:.0%} test split needs at least {_MIN_PER_CLASS} of every class "
                    f"(or give a {split_column!r} column of train/test)"
                )
        from sklearn.model_selection import train_test_split  # ~2 s to import: only for text datasets

        train_idx, test_idx = train_test_split(
            np.arange(len(labels)), test_size=_TEST_SIZE, random_state=_SPLIT_SEED, stratify=labels
        )
    test = tuple(texts[i] for i in test_idx)
    test_keys = {key(text) for text in test}
    corpus = tuple(_first_of_each((text for text in everything if key(text) not in test_keys), key))
    counts |= {"train": len(train_idx), "test": len(test_idx), "corpus": len(corpus)}
    split = f"split by column {split_column!r}" if has_split else f"stratified {_TEST_SIZE:.0%} test split"
    per_class = ", ".join(f"{name} {counts[f'class:{name}']}" for name in class_names)
    source = (
        f"{path}: {counts['rows']} rows, {counts['read']} labeled, {counts['unlabeled']} unlabeled, "
        f"{empty} without text; {counts['repeats_merged']} duplicates dropped, {counts['shared_texts']} texts under "
        f"several labels dropped ({counts['shared_dropped']} rows); {counts['kept']} kept ({per_class}); "
        f"{counts['train']} train / {counts['test']} test ({split}); pretraining corpus {counts['corpus']} texts "
        "(every distinct text except the test texts)"
    )
    log.info("%s", source)
    return Texts(
        name=f"{file_format}:{path}",
        train=tuple(texts[i] for i in train_idx),
        y_train=labels[train_idx],
        test=test,
        y_test=labels[test_idx],
        corpus=corpus,
        class_names=class_names,
        source=source,
        counts=counts,
    )


def _split_by_column(
    path: str,
    labeled: list[_Row],
    texts: list[str],
    labels: np.ndarray,
    class_names: tuple[str, ...],
    key: Callable[[str], str],
    split_column: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Training and test indices of ``texts`` as the split column says (a repeated text: its first row's split)."""
    split_of: dict[str, str] = {}
    for row in labeled:
        if row.split not in _SPLITS:
            raise ValueError(
                f"{path}, line {row.line}: {split_column} is {row.split!r}; a labeled row's split is train or test"
            )
        split_of.setdefault(key(row.text), row.split)
    in_test = np.array([split_of[key(text)] == "test" for text in texts], bool)
    for split, rows in (("train", ~in_test), ("test", in_test)):
        missing = [name for label, name in enumerate(class_names) if not np.any(labels[rows] == label)]
        if missing:
            raise ValueError(
                f"{path}: the {split} split (column {split_column!r}) has no text of class"
                f"{'es' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}; every class needs "
                "a text in both splits"
            )
    return np.flatnonzero(~in_test), np.flatnonzero(in_test)


def _decoded(content: bytes, path: str) -> str:
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = content[: error.start].count(b"\n") + 1
        raise ValueError(f"{path}, line {line}: not UTF-8 text ({error.reason}); save the file as UTF-8") from None


def _row(path: str, line: int, text: object, label: object, split: object) -> _Row:
    """One row, its values checked (its text empty when it has none)."""
    values = {"text": text, "label": label, "split": split}
    for what, value in values.items():
        if value is not None and not isinstance(value, str | int | float):
            raise ValueError(f"{path}, line {line}: the {what} is a {type(value).__name__}; expected a string")
    label = "" if label is None else str(label).strip()
    return _Row(line, " ".join(str(text or "").split()), label, str(split or "").strip().lower())


def _read_csv(content: str, path: str, *columns: str) -> tuple[list[_Row], bool]:
    """The rows of a CSV file and whether it has the split column."""
    reader = csv.reader(io.StringIO(content, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: the file is empty; a CSV file of texts starts with a header naming its columns")
        where = _column_indices(path, header, *columns)
        rows, start = [], reader.line_num + 1
        for fields in reader:
            if fields and len(fields) != len(header):
                raise ValueError(
                    f"{path}, line {start}: {len(fields)} fields, but the header names {len(header)} columns"
                )
            if fields:
                values = [fields[i] if i is not None else None for i in where]
                rows.append(_row(path, start, *values))
            start = reader.line_num + 1
    except csv.Error as error:
        raise ValueError(f"{path}, line {reader.line_num}: not well-formed CSV ({error})") from None
    return rows, where[2] is not None


def _column_indices(path: str, header: list[str], text: str, label: str, split: str) -> list[int | None]:
    for option, column in (("text_column", text), ("label_column", label)):
        if column not in header:
            raise ValueError(
                f"{path}: no column {column!r} (dataset_kwargs {option}); its columns are: {', '.join(header)}"
            )
    return [header.index(text), header.index(label), header.index(split) if split in header else None]


def _read_jsonl(content: str, path: str, text: str, label: str, split: str) -> tuple[list[_Row], bool]:
    """The rows of a JSON Lines file and whether any has the split key."""
    rows, has_label, has_split = [], False, False
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not valid JSON ({error.msg}, column {error.colno})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}, line {number}: a JSON {type(record).__name__}; each line holds one object")
        if text not in record:
            raise ValueError(
                f"{path}, line {number}: no key {text!r} (dataset_kwargs text_column); its keys are: "
                f"{', '.join(record) or 'none'}"
            )
        has_label |= label in record
        has_split |= split in record
        rows.append(_row(path, number, record[text], record.get(label), record.get(split)))
    if not has_label:
        raise ValueError(f"{path}: no line has the key {label!r} (dataset_kwargs label_column)")
    return rows, has_split


_READERS = {"csv": _read_csv, "jsonl": _read_jsonl}


# --------------------------------------------------------------------------- finding and downloading


def _find_directory(name: str, data_dir: str | os.PathLike[str] | None, download: bool) -> Path:
    # An explicit data_dir is the only place looked at: silently reading another copy would hide a wrong path.
    directories = [Path(data_dir).expanduser()] if data_dir is not None else _search_dirs()
    for directory in directories:
        if directory.is_dir() and not _missing(name, directory):
            return directory
    if not download:
        raise DataNotFoundError(_not_found_message(name, directories))
    if name != "fortunes_topics":
        raise DataNotFoundError(
            f"{name}: download=True can only fetch fortune-mod's English fortunes; the other languages come "
            f"from Debian's packages: {_install_command(name)}"
        )
    target = directories[0] if data_dir is not None else cache.cache_dir() / "fortunes"
    download_fortune_mod(target)
    return target


def _search_dirs() -> list[Path]:
    lab_data = os.environ.get("LAB_DATA")
    from_env = [Path(lab_data).expanduser() / "fortunes"] if lab_data else []
    return [*from_env, SYSTEM_DIR, cache.cache_dir() / "fortunes"]


def _install_command(name: str) -> str:
    languages = FORTUNE_LANGUAGES if name == "fortunes_language" else ("English",)
    return "apt-get install " + " ".join(LANGUAGE_SOURCES[language][1] for language in languages)


def _not_found_message(name: str, directories: list[Path]) -> str:
    looked = "; ".join(
        f"{d} ({'missing ' + ', '.join(_missing(name, d)) if d.is_dir() else 'no such folder'})" for d in directories
    )
    download = (
        f"or download fortune-mod's release: lab.data.load({name!r}, download=True)"
        if name == "fortunes_topics"
        else "(download=True fetches English only)"
    )
    return (
        f"{name}: fortune files not found; looked in {looked}. Install them ({_install_command(name)}), "
        f"put them in <dir>/fortunes with LAB_DATA=<dir>, {download}"
    )


def _fetch(url: str) -> bytes:
    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.read()
    except OSError as err:
        raise DataNotFoundError(f"could not download {url}: {err}") from err


def download_fortune_mod(target: str | os.PathLike[str]) -> Path:
    """Fetch fortune-mod's source release, check its SHA-256, and write its English files into ``target``.

    Nothing is written when the digest differs. Returns ``target``.
    """
    target = Path(target)
    payload = _fetch(FORTUNE_MOD_URL)
    actual = hashlib.sha256(payload).hexdigest()
    if actual != FORTUNE_MOD_SHA256:
        raise ValueError(
            f"checksum mismatch for {FORTUNE_MOD_URL}: expected SHA-256 {FORTUNE_MOD_SHA256}, got {actual}; not saved"
        )
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:*") as archive:
        for member in archive.getmembers():
            parts = PurePosixPath(member.name).parts
            if member.isfile() and parts[-2:-1] == ("datfiles",) and parts[-1] in ENGLISH_FILES:
                files.write_atomic(target / parts[-1], archive.extractfile(member).read())
    missing = _missing("fortunes_topics", target)
    if missing:
        raise DataNotFoundError(f"{FORTUNE_MOD_URL} has no datfiles/ for {', '.join(missing)}")
    return target


# --------------------------------------------------------------------------- tokenizer


class Tokenizer:
    """A trained BPE tokenizer (``backend``, a ``tokenizers.Tokenizer``) with fixed-length encoding.

    ``unknown`` is what encoding does with ``[UNK]`` tokens (pieces the vocabulary lacks):
    ``"keep"`` them, or ``"drop"`` them.
    """

    def __init__(self, backend: tokenizers.Tokenizer, *, max_length: int = 64, unknown: str = "keep") -> None:
        self.backend = backend
        self.max_length = validate.integer("max_length", max_length, minimum=2)
        self.unknown = validate.choice("unknown-token policy", unknown, UNKNOWN_POLICIES)
        found = [backend.id_to_token(i) for i in range(len(SPECIAL_TOKENS))]
        if tuple(found) != SPECIAL_TOKENS:
            raise ValueError(f"the tokenizer's first ids are {found}; lab's text models need {list(SPECIAL_TOKENS)}")

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    @property
    def special_ids(self) -> SpecialIds:
        return LAB_SPECIAL_IDS

    @property
    def fingerprint(self) -> str:
        """A hash of the vocabulary and settings: equal fingerprints, equal ids (e.g. to key a pretrained backbone)."""
        return hashlib.sha256(self.backend.to_str().encode()).hexdigest()[:16]

    @property
    def settings(self) -> dict[str, object]:
        """What encoding depends on besides the fingerprint (part of the key of cached ids)."""
        return {"max_length": self.max_length, "unknown": self.unknown}

    def encode(self, texts: Sequence[str], *, what: str = "") -> np.ndarray:
        """``(len(texts), max_length)`` int32 ids: ``[CLS]``, the text's tokens, ``[PAD]``s.

        Longer texts are cut to ``max_length``, with one warning per call saying how many.
        An empty text is refused. ``what`` names the texts in the warning.
        """
        ids, truncated = self._encode(texts)
        _warn_truncated(what, truncated, len(ids), self.max_length)
        return ids

    def _encode(self, texts: Sequence[str]) -> tuple[np.ndarray, int]:
        texts = _checked_texts(texts)
        ids = np.full((len(texts), self.max_length), PAD_ID, np.int32)
        truncated = 0
        for row, encoding in enumerate(self.backend.encode_batch(texts)):
            sequence = encoding.ids if self.unknown == "keep" else [i for i in encoding.ids if i != UNK_ID]
            truncated += len(sequence) > self.max_length
            sequence = sequence[: self.max_length]
            ids[row, : len(sequence)] = sequence
        return ids, truncated

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """The text of one sequence of ids, without ``[CLS]`` and ``[PAD]`` (``[MASK]`` and ``[UNK]`` show)."""
        kept = [int(i) for i in np.asarray(ids).reshape(-1) if i not in (PAD_ID, CLS_ID)]
        return self.backend.decode(kept, skip_special_tokens=False)

    def tokenize(self, text: str) -> list[str]:
        """The subwords of ``text`` (``▁`` marks the start of a word), without ``[CLS]`` or truncation."""
        (text,) = _checked_texts([text])
        return self.backend.encode(text, add_special_tokens=False).tokens

    def id_to_token(self, token_id: int) -> str:
        token = self.backend.id_to_token(int(token_id))
        if token is None:
            raise ValueError(f"token id {token_id} is not in 0..{self.vocab_size - 1}")
        return token

    def token_to_id(self, token: str) -> int:
        """The id of ``token``, or ``UNK_ID`` if the vocabulary lacks it."""
        found = self.backend.token_to_id(token)
        return UNK_ID if found is None else found

    @staticmethod
    def attention_mask(ids: np.ndarray) -> np.ndarray:
        """True where a token is, False at padding."""
        return np.asarray(ids) != PAD_ID


def _warn_truncated(what: str, truncated: int, total: int, max_length: int) -> None:
    if truncated:
        warnings.warn(
            f"{what + ': ' if what else ''}{truncated} of {total} texts are longer than "
            f"max_length={max_length} tokens ([CLS] included) and were truncated",
            stacklevel=3,
        )


def _checked_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise ValueError("texts must be a sequence of strings, got one string; wrap it in a list")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"texts[{i}] must be a string, got {text!r}")
        if not text.strip():
            raise ValueError(f"texts[{i}] is empty ({text!r}); every text needs at least one token")
    return texts


def train_tokenizer(
    corpus: Sequence[str], *, vocab_size: int = 4000, max_length: int = 64, unknown: str = "keep"
) -> Tokenizer:
    """A BPE tokenizer of at most ``vocab_size`` tokens trained on ``corpus`` (give it no test text).

    Characters of the corpus are always in the vocabulary, so a tiny ``vocab_size`` may be
    exceeded. Cached in ``cache_dir()/tokenizers``, keyed by the corpus' content digest
    (:func:`lab.cache.content_digest`): the same corpus and size train once, one text edited trains again.
    """
    vocab_size = validate.integer("vocab_size", vocab_size, minimum=len(SPECIAL_TOKENS) + 1)
    corpus = _checked_texts(corpus)
    if not corpus:
        raise ValueError("the corpus to train a tokenizer on is empty")
    settings = {"model": "bpe", "vocab_size": vocab_size}
    key = cache.key(cache.content_digest(corpus), settings, cache.fingerprint(__name__))
    path = cache.cache_dir() / "tokenizers" / f"bpe-{key}.json"
    backend = cache.read_checked(path, lambda path: tokenizers.Tokenizer.from_file(str(path)), "the tokenizer")
    if backend is None:
        backend = _train(corpus, vocab_size)
        cache.write_checked(path, backend.to_str(), "the tokenizer")
    return Tokenizer(backend, max_length=max_length, unknown=unknown)


def _train(corpus: list[str], vocab_size: int) -> tokenizers.Tokenizer:
    backend = tokenizers.Tokenizer(models.BPE(unk_token="[UNK]"))
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    # The trainer gives the special tokens the first ids, in this order.
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    backend.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    backend.post_processor = processors.TemplateProcessing(single="[CLS] $A", special_tokens=[("[CLS]", CLS_ID)])
    return backend


# --------------------------------------------------------------------------- token datasets


def tokenizer(
    name: str,
    *,
    vocab_size: int = 4000,
    max_length: int = 64,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
) -> Tokenizer:
    """The tokenizer of ``load_dataset(name)`` with the same arguments (trained on its pretraining corpus)."""
    corpus = load_texts(name, data_dir=data_dir, download=download).corpus
    return train_tokenizer(corpus, vocab_size=vocab_size, max_length=max_length)


def load_dataset(
    name: str,
    *,
    vocab_size: int = 4000,
    max_length: int = 64,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    tokenizer: Tokenizer | None = None,
) -> Dataset:
    """Text dataset ``name`` as token ids: ``x_train``, ``x_test`` and ``x_unlabeled`` (the pretraining
    corpus) of shape ``(N, max_length)``, with the tokenizer trained on the corpus.

    ``tokenizer`` is the one door through which a run chooses other ids: any object with the
    ``encode``, ``vocab_size``, ``fingerprint``, ``settings``, ``max_length`` and ``special_ids`` of :class:`Tokenizer`,
    e.g. a Hugging Face checkpoint's (:class:`lab.checkpoints.CheckpointTokenizer`); then it makes
    the ids (``vocab_size`` and ``max_length`` are its own) and none is trained.
    """
    return _tokenized(load_texts(name, data_dir=data_dir, download=download), vocab_size, max_length, tokenizer)


def load_file(
    path: str | os.PathLike[str],
    file_format: str,
    *,
    text_column: str = "text",
    label_column: str = "label",
    split_column: str = "split",
    vocab_size: int = 4000,
    max_length: int = 64,
    tokenizer: Tokenizer | None = None,
) -> Dataset:
    """Your own texts: a CSV or JSON Lines file (see :func:`load_file_texts`) as token ids, tokenized as
    :func:`load_dataset` tokenizes the fortunes (a tokenizer trained on the file's corpus, or ``tokenizer``)."""
    texts = load_file_texts(
        path, file_format, text_column=text_column, label_column=label_column, split_column=split_column
    )
    return _tokenized(texts, vocab_size, max_length, tokenizer)


def _tokenized(texts: Texts, vocab_size: int, max_length: int, tokenizer: Tokenizer | None) -> Dataset:
    vocab_size = validate.integer("vocab_size", vocab_size, minimum=len(SPECIAL_TOKENS) + 1)
    max_length = validate.integer("max_length", max_length, minimum=2)
    encoder = tokenizer or train_tokenizer(texts.corpus, vocab_size=vocab_size, max_length=max_length)
    # A name fit for a cache file's name: that of a text file's dataset holds its path; keep the file's name.
    short_name = re.sub(r"[^\w.-]+", "_", Path(texts.name).name)
    ids = _cached_ids(short_name, encoder, [*texts.train, *texts.test, *texts.corpus])
    x_train, x_test, x_unlabeled = np.split(ids, np.cumsum([len(texts.train), len(texts.test)]))
    return Dataset(
        name=texts.name,
        x_train=x_train,
        y_train=texts.y_train,
        x_test=x_test,
        y_test=texts.y_test,
        class_names=texts.class_names,
        source=texts.source,
        vocab_size=encoder.vocab_size,
        tokenizer=encoder.fingerprint,
        special_ids=encoder.special_ids,
        x_unlabeled=x_unlabeled,
    )


def _cached_ids(name: str, encoder: Tokenizer, texts: list[str]) -> np.ndarray:
    """``encoder.encode(texts)``, kept in ``cache_dir()/text`` (encoding ~10^5 texts takes seconds), keyed by
    the texts' content digest, the tokenizer's fingerprint and settings, and the code."""
    parts = (
        cache.content_digest(texts),
        encoder.fingerprint,
        encoder.settings,
        cache.fingerprint(__name__),
    )
    path = cache.cache_dir() / "text" / f"{name}-{cache.key(*parts)}.npz"
    cached = cache.read_checked(path, cache.read_npz, f"the token ids of {name}")
    if cached is not None:
        ids, truncated = cached["ids"], int(cached["truncated"])
    else:
        ids, truncated = encoder._encode(texts)
        cache.write_checked(path, cache.npz_bytes(ids=ids, truncated=truncated), f"the token ids of {name}")
    _warn_truncated(name, truncated, len(ids), encoder.max_length)
    return ids


# --------------------------------------------------------------------------- looking into text models


def fill_masks(
    logits_fn: Callable[[np.ndarray], np.ndarray], encoder: Tokenizer, texts: Sequence[str], *, top: int = 3
) -> list[list[list[str]]]:
    """A masked language model's guesses: for each text, for each ``[MASK]`` in it, the ``top``
    tokens ``logits_fn`` ranks first there (most likely first; never a special token).

    ``logits_fn`` maps ``(N, max_length)`` token ids to ``(N, max_length, vocab_size)`` logits, as
    the token predictor of ``pretrain=mlm`` does. ``[MASK]`` is written as it is in the text
    (``"the [MASK] is mightier than the sword"``); a text without one is refused.
    """
    top = validate.integer("top", top, minimum=1)
    ids = encoder.encode(texts, what="fill_masks")
    blanks = ids == MASK_ID
    for i, text in enumerate(texts):
        if not blanks[i].any():
            raise ValueError(f"texts[{i}] has no [MASK] within its first {encoder.max_length} tokens: {text!r}")
    logits = np.array(logits_fn(ids), dtype=np.float64)
    logits[..., : len(SPECIAL_TOKENS)] = -np.inf  # a blank is filled with a word piece
    ranked = np.argsort(-logits, axis=-1, kind="stable")[..., :top]
    return [
        [[encoder.id_to_token(t) for t in ranked[i, position]] for position in np.flatnonzero(blanks[i])]
        for i in range(len(texts))
    ]


def attention_maps(encoder, ids: np.ndarray) -> np.ndarray:
    """The attention weights of a text transformer's encoder (``lab.models.TextEncoder``, the
    ``backbone`` of ``text_transformer``) on ``(N, L)`` token ids: ``(N, layers, heads, L, L)``,
    row ``q`` of a map the weights query ``q`` gives every key (0 for padding). The encoder's
    own forward pass, layer by layer, with each layer's weights kept
    (:func:`lab.models.attention_weights`, the derivations notebook's section 7).
    """
    from lab import models  # text data needs no model code: imported here, not by every data load

    ids = np.asarray(ids)
    mask = ids != PAD_ID
    tokens = encoder.embed(ids) + encoder.position[: ids.shape[1]]
    maps = []
    for block in encoder.blocks.layers:
        attention = block.attention
        n, length, dim = tokens.shape
        # As MultiHeadSelfAttention splits its projection: (N, L, 3, heads, dim / heads).
        qkv = attention.qkv(block.attention_norm(tokens))
        qkv = qkv.reshape(n, length, 3, attention.heads, dim // attention.heads)
        q, k, _ = qkv.transpose(2, 0, 3, 1, 4)
        maps.append(np.asarray(models.attention_weights(q, k, mask[:, None, None, :])))
        tokens = block(tokens, mask)
    return np.stack(maps, axis=1)
