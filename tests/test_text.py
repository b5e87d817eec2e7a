"""lab.text: reading fortune files, the two fortune datasets, their split and pretraining
corpus, the download, and the tokenizer (specials, round trip, padding, truncation, cache).

Every test reads a small fortune folder written here, never the installed packages; the
tests on Debian's packages at the end skip (saying why) where they are absent.
"""

import hashlib
import io
import re
import struct
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from lab import data, text

DEBIAN_FORTUNES = Path("/usr/share/games/fortunes")
LANGUAGE_FOLDERS = ("de", "es", "it", "brasil", "pl", "cs", "ru")

# Ten fortunes per topic, each naming its topic; repeats and shared texts are added below.
TOPIC_TEXTS = {
    topic: [f"Fortune number {i} about {topic}, with word{i} and more {topic} words." for i in range(10)]
    for topic in data.FORTUNE_TOPICS
}
REPEATED = TOPIC_TEXTS["computers"][3]  # written twice in computers (the second time respaced)
SHARED = "A cookie that both food and love claim."  # under two topics: dropped
EXTRA_ENGLISH = ["Only in the fortunes file.", "Also only there: a second one.", SHARED]
LANGUAGE_TEXTS = {
    "English": None,  # the topic files and fortunes/wisdom
    "German": [f"Ein deutscher Spruch Nummer {i} über Äpfel." for i in range(12)],
    "Spanish": [f"Un refrán español número {i} sobre mañana." for i in range(15)],
    "Italian": [f"Un detto italiano numero {i} sulla città." for i in range(11)],
    "Portuguese": [f"Um ditado português número {i} sobre o coração." for i in range(9)],
    "Polish": [f"Polskie przysłowie numer {i} o żółwiu." for i in range(14)],
    "Czech": [f"České přísloví číslo {i} o řece." for i in range(13)],
    "Russian": [f"Русская пословица номер {i} о море." for i in range(16)],
}


def expected_topic_split():
    """The kept texts and labels in topic order, split as sklearn does with the stated rule."""
    texts, labels = [], []
    for label, topic in enumerate(data.FORTUNE_TOPICS):
        texts += TOPIC_TEXTS[topic]
        labels += [label] * len(TOPIC_TEXTS[topic])
    train, test = train_test_split(np.arange(len(texts)), test_size=0.25, random_state=0, stratify=labels)
    return [texts[i] for i in train], np.asarray(labels)[train], [texts[i] for i in test], np.asarray(labels)[test]


LEAKED = expected_topic_split()[2][0]  # a test text, copied (upper-cased) into the wisdom file


def _fortune_file(texts, newline="\n"):
    return ("\n%\n".join(texts) + "\n%\n").replace("\n", newline)


def write_fortunes(root: Path, *, languages=True) -> Path:
    """A fortunes folder like Debian's: topic files (with .dat/.u8 companions), two more
    English files, a ROT13 off/ folder, and (with ``languages``) one folder per language."""
    root.mkdir(parents=True, exist_ok=True)
    for topic, texts in TOPIC_TEXTS.items():
        written = list(texts)
        if topic == "computers":
            written.append(REPEATED.replace(" ", "  \n  "))
        if topic in ("food", "love"):
            written.append(SHARED)
        (root / topic).write_text(_fortune_file(written, "\r\n" if topic == "law" else "\n"))
        (root / f"{topic}.dat").write_bytes(b"\0\0\0\2 binary index")
    (root / "fortunes").write_text(_fortune_file(EXTRA_ENGLISH[:2]))
    (root / "wisdom").write_text(_fortune_file([EXTRA_ENGLISH[2], LEAKED.upper()]))
    (root / "off").mkdir()
    (root / "off" / "computers").write_text(_fortune_file(["Guvf vf ebg13."]))
    if languages:
        for language, texts in LANGUAGE_TEXTS.items():
            where = text.LANGUAGE_SOURCES[language][0]
            if language == "Portuguese":
                (root / where).write_text(_fortune_file(texts))
            elif texts is not None:
                (root / where).mkdir()
                half = len(texts) // 2
                (root / where / "one").write_text(_fortune_file(texts[:half]))
                (root / where / "two").write_text(_fortune_file(texts[half:]))
                (root / where / "one.dat").write_bytes(b"\0\0\0\2 binary index")
                (root / where / "one.u8").write_text("")
        (root / "cs" / "klasik-sk").write_text(_fortune_file(["Slovenské príslovie."]))
        (root / "de" / "translations").write_text(_fortune_file([TOPIC_TEXTS["sports"][1]]))  # shared with English
        (root / "es" / "off").mkdir()
        (root / "es" / "off" / "varios").write_text(_fortune_file(["Texto ofensivo."]))
    return root


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LAB_DATA", raising=False)
    monkeypatch.setattr(text, "SYSTEM_DIR", tmp_path / "debian" / "fortunes")  # never the machine's packages


@pytest.fixture
def fortunes(tmp_path):
    return write_fortunes(tmp_path / "fortunes")


def key(t):
    return " ".join(re.findall(r"\w+", t.lower()))


# --------------------------------------------------------------------------- parsing


def test_parse_fortunes_splits_at_percent_lines_and_cleans_each_fortune():
    content = (
        "First fortune,\n\tsecond line.\n%\n"
        "Sale: 50% off\n%  \r\n"  # a % inside a line is text; a % line may have trailing blanks
        "\n%\n"  # an empty fortune is skipped
        "_\bu_\bn_\bd_\be_\br_\bl_\bi_\bn_\be_\bd and b\bbo\bol\bld\bd\n%\n"  # overstrikes of old files
        "Last, without a final separator"
    )
    assert text.parse_fortunes(content) == [
        "First fortune, second line.",
        "Sale: 50% off",
        "underlined and bold",
        "Last, without a final separator",
    ]


# --------------------------------------------------------------------------- fortunes_topics


def test_topics_drop_repeats_and_shared_texts_and_split_like_sklearn(fortunes):
    texts = text.load_texts("fortunes_topics", data_dir=fortunes)
    assert texts.class_names == data.FORTUNE_TOPICS == data.CLASS_NAMES["fortunes_topics"]
    # 100 fortunes + the respaced repeat in computers + the shared text in food and in love.
    assert texts.counts["read"] == 103
    assert texts.counts["repeats_merged"] == 1
    assert (texts.counts["shared_texts"], texts.counts["shared_dropped"]) == (1, 2)
    assert texts.counts["kept"] == 100 and texts.counts["class:computers"] == 10
    assert "1 texts under several classes dropped (2 fortunes)" in texts.source

    train, y_train, test, y_test = expected_topic_split()
    assert list(texts.train) == train and list(texts.test) == test
    np.testing.assert_array_equal(texts.y_train, y_train)
    np.testing.assert_array_equal(texts.y_test, y_test)
    assert texts.y_train.dtype == np.int32 and (len(train), len(test)) == (75, 25)
    assert set(np.bincount(texts.y_test, minlength=10)) <= {2, 3}  # stratified: a quarter of 10 per class


def test_topic_corpus_is_every_english_fortune_but_the_test_texts(fortunes):
    texts = text.load_texts("fortunes_topics", data_dir=fortunes)
    test_keys = {key(t) for t in texts.test}
    corpus_keys = [key(t) for t in texts.corpus]
    assert not test_keys & set(corpus_keys)  # no test text, not even respaced or in other case
    assert len(corpus_keys) == len(set(corpus_keys))  # each text once
    every_english = {key(t) for ts in TOPIC_TEXTS.values() for t in ts} | {key(t) for t in EXTRA_ENGLISH}
    assert set(corpus_keys) == every_english - test_keys
    assert SHARED in texts.corpus  # dropped from the task, still English text
    assert "Guvf vf ebg13." not in texts.corpus  # off/ is never read
    assert LEAKED in texts.test and LEAKED.upper() not in texts.corpus  # wisdom's copy of a test text is left out


# --------------------------------------------------------------------------- fortunes_language


def test_language_is_balanced_and_reads_only_each_languages_files(fortunes):
    texts = text.load_texts("fortunes_language", data_dir=fortunes)
    assert texts.class_names == data.FORTUNE_LANGUAGES and len(texts.class_names) == 8
    english = 103 + 2 + 2  # the topic files (their repeat and shared text included), fortunes, wisdom
    others = sum(len(t) for t in LANGUAGE_TEXTS.values() if t) + 1  # + the English text in de/translations
    assert texts.counts["read"] == english + others  # not klasik-sk, es/off, .dat or .u8
    assert texts.counts["shared_texts"] == 1  # the sports fortune, in English and in German
    smallest = len(LANGUAGE_TEXTS["Portuguese"])
    assert texts.counts["subsampled_to"] == smallest
    counts = np.bincount(texts.y_train, minlength=8) + np.bincount(texts.y_test, minlength=8)
    assert counts.tolist() == [smallest] * 8
    assert len(texts.test) == round(0.25 * 8 * smallest)
    every = {t for ts in LANGUAGE_TEXTS.values() if ts for t in ts}
    assert {"Slovenské príslovie.", "Texto ofensivo."}.isdisjoint(every | set(texts.corpus))
    # The corpus: every distinct text read but the test texts (training texts and subsampling leftovers).
    test_keys = {key(t) for t in texts.test}
    assert not test_keys & {key(t) for t in texts.corpus}
    assert {key(t) for t in texts.train} <= {key(t) for t in texts.corpus}
    assert every - set(texts.test) <= set(texts.corpus)


@pytest.mark.parametrize("content", ["", "%\n", "\n%\n  \n%\n"])
def test_an_empty_topic_file_is_named(fortunes, content):
    (fortunes / "computers").write_text(content)
    message = f"{fortunes / 'computers'} holds no fortune (it is empty or has only '%' lines); class 'computers'"
    with pytest.raises(ValueError, match=re.escape(message)):
        text.load_texts("fortunes_topics", data_dir=fortunes)


def test_a_language_without_fortunes_is_named(fortunes):
    for path in (fortunes / "pl").iterdir():
        path.write_text("%\n")
    with pytest.raises(ValueError, match=re.escape(f"{fortunes / 'pl'} holds no fortune (it is empty or has only")):
        text.load_texts("fortunes_language", data_dir=fortunes)


@pytest.mark.parametrize("left", [1, 3])  # 1: scikit-learn's split refused; 3: food could miss the test split
def test_too_few_fortunes_of_a_class_say_which_and_how_many_are_needed(fortunes, left):
    (fortunes / "food").write_text(_fortune_file(TOPIC_TEXTS["food"][:left] + [SHARED]))  # SHARED is dropped
    message = (
        f"fortunes_topics: class 'food' keeps {left} of its fortunes after merging repeats and dropping texts "
        f"found under other classes ({fortunes / 'food'}); the stratified 25% test split needs at least 4 of every class"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        text.load_texts("fortunes_topics", data_dir=fortunes)
    (fortunes / "food").write_text(_fortune_file(TOPIC_TEXTS["food"][:4]))
    texts = text.load_texts("fortunes_topics", data_dir=fortunes)  # 4 are enough: one of them is a test text
    assert np.bincount(texts.y_test, minlength=10)[data.FORTUNE_TOPICS.index("food")] == 1


def test_language_subsample_is_seeded(fortunes):
    first, second = (text.load_texts("fortunes_language", data_dir=fortunes) for _ in range(2))
    assert first.train == second.train and first.test == second.test


# --------------------------------------------------------------------------- datasets of token ids


def test_datasets_are_registered_text_that_reads_files():
    for name in text.TEXT_DATASETS:
        entry = data.DATASET_ENTRIES[name]
        assert entry.modality == "text" and entry.reads_files and name in data.DATA_DIR_DATASETS


def test_topic_dataset_is_the_texts_encoded_by_the_corpus_tokenizer(fortunes):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = data.load("fortunes_topics", data_dir=fortunes, vocab_size=300, max_length=32)
    assert not [w for w in caught if "truncated" in str(w.message)]  # these short texts fit in 32 tokens
    texts = text.load_texts("fortunes_topics", data_dir=fortunes)
    tokenizer = text.tokenizer("fortunes_topics", data_dir=fortunes, vocab_size=300, max_length=32)
    assert ds.input_shape == (32,) and ds.vocab_size == tokenizer.vocab_size and ds.model_inputs == {
        "vocab_size": tokenizer.vocab_size
    }
    for x, texts_of_split in ((ds.x_train, texts.train), (ds.x_test, texts.test), (ds.x_unlabeled, texts.corpus)):
        assert x.dtype == np.int32 and x.shape == (len(texts_of_split), 32)
        np.testing.assert_array_equal(x, tokenizer.encode(texts_of_split))
        assert np.all(x[:, 0] == text.CLS_ID) and x.max() < ds.vocab_size
    np.testing.assert_array_equal(ds.y_train, texts.y_train)
    assert ds.source == texts.source
    # The tokenizer never saw a test text: it is the one trained on the corpus alone.
    assert tokenizer.backend.to_str() == text.train_tokenizer(texts.corpus, vocab_size=300).backend.to_str()
    again = data.load("fortunes_topics", data_dir=fortunes, vocab_size=300, max_length=32)  # from the cache
    np.testing.assert_array_equal(again.x_unlabeled, ds.x_unlabeled)


def test_bad_loader_arguments_are_named(fortunes):
    with pytest.raises(ValueError, match="vocab_size must be an integer >= 5, got 2"):
        data.load("fortunes_topics", data_dir=fortunes, vocab_size=2)
    with pytest.raises(ValueError, match="max_length must be an integer >= 2, got 1"):
        data.load("fortunes_topics", data_dir=fortunes, max_length=1)
    with pytest.raises(ValueError, match="unknown text dataset 'fortunes'; choose one of: fortunes_topics"):
        text.load_texts("fortunes")


# --------------------------------------------------------------------------- missing data and download


def test_missing_files_say_where_they_were_looked_for_and_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_DATA", str(tmp_path / "lab-data"))
    (tmp_path / "lab-data" / "fortunes").mkdir(parents=True)
    (tmp_path / "lab-data" / "fortunes" / "computers").write_text("Only one topic.\n%\n")
    with pytest.raises(data.DataNotFoundError) as caught:
        data.load("fortunes_topics")
    message = str(caught.value)
    assert "\n" not in message
    assert f"{tmp_path / 'lab-data' / 'fortunes'} (missing politics, startrek" in message
    assert f"{text.SYSTEM_DIR} (no such folder)" in message
    assert str(tmp_path / "cache" / "fortunes") in message
    assert "apt-get install fortunes)" in message and "download=True" in message

    with pytest.raises(data.DataNotFoundError, match=r"missing de, es, it, brasil, pl, cs, ru\).*apt-get install "
                       r"fortunes fortunes-de fortunes-es fortunes-it fortunes-br fortunes-pl fortunes-cs fortunes-ru"):
        data.load("fortunes_language", data_dir=write_fortunes(tmp_path / "english", languages=False))


def release_archive(tmp_path) -> bytes:
    """A tiny stand-in for fortune-mod's release: its datfiles/ and an off/ folder."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as archive:
        source = write_fortunes(tmp_path / "release-source", languages=False)
        for path in sorted(source.rglob("*")):
            if path.is_file():
                archive.add(path, arcname=f"fortune-mod-9.9.9/datfiles/{path.relative_to(source)}")
        archive.add(source / "computers", arcname="fortune-mod-9.9.9/README")
    return buffer.getvalue()


def test_download_checks_the_digest_and_keeps_the_english_files(tmp_path, monkeypatch):
    archive = release_archive(tmp_path)
    fetched = []
    monkeypatch.setattr(text, "_fetch", lambda url: fetched.append(url) or archive)
    cached = tmp_path / "cache" / "fortunes"

    with pytest.raises(ValueError, match=f"checksum mismatch for {re.escape(text.FORTUNE_MOD_URL)}.*not saved"):
        text.load_texts("fortunes_topics", download=True)  # the real digest: our archive is refused
    assert not cached.exists()

    monkeypatch.setattr(text, "FORTUNE_MOD_SHA256", hashlib.sha256(archive).hexdigest())
    texts = text.load_texts("fortunes_topics", download=True)
    assert fetched == [text.FORTUNE_MOD_URL] * 2
    assert sorted(p.name for p in cached.iterdir()) == sorted([*data.FORTUNE_TOPICS, "fortunes", "wisdom"])
    assert texts.counts["kept"] == 100 and texts.source.startswith(str(cached))
    text.load_texts("fortunes_topics", download=True)  # found in the cache: not fetched again
    assert len(fetched) == 2

    with pytest.raises(data.DataNotFoundError, match="download=True can only fetch fortune-mod's English.*fortunes-de"):
        text.load_texts("fortunes_language", download=True)


# --------------------------------------------------------------------------- tokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A journey of a thousand miles begins with a single step.",
    "Unbelievable results, unbelievably quick!",
    "Über den Wolken muss die Freiheit wohl grenzenlos sein.",
] * 3


def test_special_tokens_have_the_fixed_ids_and_sequences_start_with_cls():
    tokenizer = text.train_tokenizer(CORPUS, vocab_size=120, max_length=24)
    assert [tokenizer.id_to_token(i) for i in range(4)] == ["[PAD]", "[CLS]", "[MASK]", "[UNK]"]
    assert (text.PAD_ID, text.CLS_ID, text.MASK_ID, text.UNK_ID) == (0, 1, 2, 3)
    ids = tokenizer.encode(["quick fox", "a single step begins"])
    assert ids.shape == (2, 24) and ids.dtype == np.int32
    tokens = [tokenizer.tokenize("quick fox"), tokenizer.tokenize("a single step begins")]
    for row, subwords in zip(ids, tokens):
        length = 1 + len(subwords)
        assert row[0] == text.CLS_ID and np.all(row[length:] == text.PAD_ID) and np.all(row[1:length] > 3)
        assert [tokenizer.id_to_token(i) for i in row[1:length]] == subwords
        np.testing.assert_array_equal(text.Tokenizer.attention_mask(row), np.arange(24) < length)


def test_decode_inverts_encode_up_to_case():
    tokenizer = text.train_tokenizer(CORPUS, vocab_size=120, max_length=40)
    samples = [*CORPUS[:4], "Quick dogs jump, lazy foxes step."]  # new words from known pieces
    for sample, ids in zip(samples, tokenizer.encode(samples)):
        decoded = tokenizer.decode(ids)
        assert decoded == sample.lower()
    masked = tokenizer.encode(["the quick fox"])[0]
    masked[2] = text.MASK_ID
    assert "[MASK]" in tokenizer.decode(masked)  # fill-the-blank prompts show the blank


def test_truncation_is_said_once_with_the_count():
    tokenizer = text.train_tokenizer(CORPUS, vocab_size=120, max_length=6)
    with pytest.warns(UserWarning) as caught:
        ids = tokenizer.encode([CORPUS[0], "fox", CORPUS[1]], what="sample")
    assert [str(w.message) for w in caught] == [
        "sample: 2 of 3 texts are longer than max_length=6 tokens ([CLS] included) and were truncated"
    ]
    assert np.all(ids[[0, 2]] != text.PAD_ID)  # cut to the length: no room left for padding
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tokenizer.encode(["fox"])
    assert not caught


def test_bad_texts_and_settings_are_refused():
    tokenizer = text.train_tokenizer(CORPUS, vocab_size=120)
    with pytest.raises(ValueError, match=r"texts\[1\] is empty \('  '\)"):
        tokenizer.encode(["fox", "  "])
    with pytest.raises(ValueError, match="got one string; wrap it in a list"):
        tokenizer.encode("fox")
    with pytest.raises(ValueError, match=r"texts\[0\] must be a string, got 3"):
        tokenizer.encode([3])
    with pytest.raises(ValueError, match="unknown unknown-token policy 'skip'; choose one of: keep, drop"):
        text.train_tokenizer(CORPUS, unknown="skip")
    with pytest.raises(ValueError, match="the corpus to train a tokenizer on is empty"):
        text.train_tokenizer([])
    with pytest.raises(ValueError, match=r"token id 500 is not in 0\.\.\d+"):
        tokenizer.id_to_token(500)


def test_unknown_pieces_are_kept_as_unk_or_dropped():
    keep = text.train_tokenizer(CORPUS, vocab_size=120, max_length=8)
    drop = text.train_tokenizer(CORPUS, vocab_size=120, max_length=8, unknown="drop")
    sample = ["fox ☃ dog"]  # no snowman in the corpus
    kept, dropped = keep.encode(sample)[0], drop.encode(sample)[0]
    assert text.UNK_ID in kept and text.UNK_ID not in dropped
    np.testing.assert_array_equal(kept[kept != text.UNK_ID], dropped[: np.sum(kept != text.UNK_ID)])


def test_tokenizer_is_cached_by_corpus_and_settings(monkeypatch, tmp_path):
    trained = []
    train = text._train
    monkeypatch.setattr(text, "_train", lambda corpus, size: trained.append(size) or train(corpus, size))
    first = text.train_tokenizer(CORPUS, vocab_size=120, max_length=8)
    again = text.train_tokenizer(CORPUS, vocab_size=120, max_length=16)  # max_length is not a training setting
    assert trained == [120] and again.backend.to_str() == first.backend.to_str()
    assert again.fingerprint == first.fingerprint
    assert len(list((tmp_path / "cache" / "tokenizers").glob("bpe-*.json"))) == 1
    smaller = text.train_tokenizer(CORPUS, vocab_size=100)
    text.train_tokenizer(CORPUS[:-1], vocab_size=120)
    assert trained == [120, 100, 120] and smaller.fingerprint != first.fingerprint
    # Training is deterministic (WordPiece's is not): the cached entry is what training makes again.
    assert train(CORPUS, 120).to_str() == first.backend.to_str()


def _damage_middle(path) -> None:
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0x01
    path.write_bytes(bytes(content))


def test_a_damaged_cached_tokenizer_is_trained_again(monkeypatch, tmp_path, capsys):
    """A damaged tokenizer JSON failed with a bare library error ("key must be a string at line 1 ...")."""
    trained = []
    train = text._train
    monkeypatch.setattr(text, "_train", lambda corpus, size: trained.append(size) or train(corpus, size))
    first = text.train_tokenizer(CORPUS, vocab_size=120)
    (path,) = (tmp_path / "cache" / "tokenizers").glob("bpe-*.json")
    _damage_middle(path)
    again = text.train_tokenizer(CORPUS, vocab_size=120)
    assert trained == [120, 120] and again.backend.to_str() == first.backend.to_str()
    assert capsys.readouterr().err == (
        f"lab: the tokenizer cached in {path} failed its check (damaged: {path.name}); discarded, it is made again\n"
    )


def test_damaged_cached_token_ids_are_encoded_again(fortunes, tmp_path, capsys):
    first = data.load("fortunes_topics", data_dir=fortunes, vocab_size=300, max_length=32)
    (path,) = (tmp_path / "cache" / "text").glob("*.npz")
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0x01  # a token id: failed with a bare "Bad CRC-32 for file 'ids.npy'"
    path.write_bytes(bytes(content))
    again = data.load("fortunes_topics", data_dir=fortunes, vocab_size=300, max_length=32)
    for split in ("x_train", "x_test", "x_unlabeled"):
        np.testing.assert_array_equal(getattr(again, split), getattr(first, split))
    assert "token ids of fortunes_topics cached in" in capsys.readouterr().err


def test_a_pretrained_backbone_is_keyed_by_the_tokenizer_of_its_data(tmp_path, monkeypatch):
    """The stale-cache bug: the backbone's key hashed the config alone, so after the corpus changed, a
    backbone pretrained on the ids of the old tokenizer (same vocabulary size, other tokens) was reused."""
    from lab import train, transfer

    trained = []

    def no_op_fit(model, state, *args, **kwargs):
        trained.append(1)
        return train.FitResult(state=state, history=[], log={}, wall_time_s={})

    monkeypatch.setattr(train, "fit", no_op_fit)
    first = write_fortunes(tmp_path / "first", languages=False)
    second = write_fortunes(tmp_path / "second", languages=False)
    (second / "fortunes").write_text(_fortune_file(["Zebras quietly juggle xylophones.", *EXTRA_ENGLISH[:2]]))

    def loader(folder):
        return lambda name: data.load(name, data_dir=folder, vocab_size=150, max_length=32)

    before, after = loader(first)("fortunes_topics"), loader(second)("fortunes_topics")
    assert before.vocab_size == after.vocab_size and before.tokenizer != after.tokenizer
    assert before.tokenizer == text.tokenizer("fortunes_topics", data_dir=first, vocab_size=150).fingerprint
    config = transfer.PretrainConfig(
        "mlm", "fortunes_topics", model="bag", model_kwargs={"dim": 8}, steps=1, batch_size=8
    )
    assert config.key_for(before) != config.key_for(after)

    cache_dir = tmp_path / "pretrained"
    transfer.pretrain(config, cache_dir=cache_dir, load_dataset=loader(first))
    transfer.pretrain(config, cache_dir=cache_dir, load_dataset=loader(first))  # a cache hit
    assert trained == [1]
    transfer.pretrain(config, cache_dir=cache_dir, load_dataset=loader(second))  # another tokenizer: not a hit
    assert trained == [1, 1]
    assert sorted(path.name for path in cache_dir.iterdir()) == sorted(
        config.key_for(dataset) for dataset in (before, after)
    )


# --------------------------------------------------------------------------- Debian's packages

debian_fortunes = pytest.mark.skipif(
    not (DEBIAN_FORTUNES / "computers").is_file(),
    reason=f"Debian's fortune packages are not installed ({DEBIAN_FORTUNES}); apt-get install fortunes",
)
debian_language_fortunes = pytest.mark.skipif(
    not all((DEBIAN_FORTUNES / where).exists() for where in ("computers", *LANGUAGE_FOLDERS)),
    reason=f"Debian's language fortune packages are not installed in {DEBIAN_FORTUNES}; "
    "apt-get install fortunes fortunes-de fortunes-es fortunes-it fortunes-br fortunes-pl fortunes-cs fortunes-ru",
)


def strfile_count(path: Path) -> int:
    """The number of fortunes strfile recorded in ``path``'s .dat index (version, count, ... as big-endian u32)."""
    version, count = struct.unpack(">II", path.with_name(path.name + ".dat").read_bytes()[:8])
    return count


@debian_fortunes
def test_debian_topics(monkeypatch):
    monkeypatch.setattr(text, "SYSTEM_DIR", DEBIAN_FORTUNES)
    texts = text.load_texts("fortunes_topics")
    # Every fortune strfile indexed is read: 3,929 in Debian's fortunes 1:1.99.1.
    per_topic = {t: len(text.parse_fortunes((DEBIAN_FORTUNES / t).read_text())) for t in data.FORTUNE_TOPICS}
    assert per_topic == {topic: strfile_count(DEBIAN_FORTUNES / topic) for topic in data.FORTUNE_TOPICS}
    assert texts.counts["read"] == sum(per_topic.values()) == 3929
    assert texts.counts["kept"] == len(texts.train) + len(texts.test)
    assert abs(len(texts.test) - 0.25 * texts.counts["kept"]) <= 1
    assert not {key(t) for t in texts.test} & {key(t) for t in texts.corpus}


@debian_language_fortunes
def test_debian_languages(monkeypatch):
    monkeypatch.setattr(text, "SYSTEM_DIR", DEBIAN_FORTUNES)
    texts = text.load_texts("fortunes_language")
    counts = np.bincount(texts.y_train, minlength=8) + np.bincount(texts.y_test, minlength=8)
    assert len(set(counts.tolist())) == 1 and counts[0] == texts.counts["subsampled_to"]
    assert texts.counts["subsampled_to"] == min(texts.counts[f"class:{name}"] for name in data.FORTUNE_LANGUAGES)
    assert any(re.search("[а-я]", t) for t in texts.train) and any("ł" in t for t in texts.train)


# --------------------------------------------------------------- looking into text models


def test_fill_masks_ranks_each_blank_s_word_pieces_best_first():
    tokenizer = text.train_tokenizer(CORPUS, vocab_size=120, max_length=16)
    fox, step = tokenizer.vocab_size - 1, tokenizer.vocab_size - 2  # two ordinary tokens

    def logits_fn(ids):  # a fake model: every position likes [MASK] most, then fox, then step
        logits = np.zeros((*ids.shape, tokenizer.vocab_size))
        logits[..., text.MASK_ID] = 9.0  # special tokens are never a guess
        logits[..., fox], logits[..., step] = 2.0, 1.0
        logits[1, :, step] = 3.0  # the second text prefers step
        return logits

    guesses = text.fill_masks(logits_fn, tokenizer, ["the quick [MASK]", "[MASK] by [MASK]"], top=2)
    fox, step = tokenizer.id_to_token(fox), tokenizer.id_to_token(step)
    assert guesses == [[[fox, step]], [[step, fox], [step, fox]]]
    with pytest.raises(ValueError, match=r"texts\[0\] has no \[MASK\]"):
        text.fill_masks(logits_fn, tokenizer, ["no blank here"])


def test_attention_maps_are_the_weights_the_encoder_averages_its_values_with():
    from lab import models

    tokenizer = text.train_tokenizer(CORPUS, vocab_size=120, max_length=12)
    ids = tokenizer.encode(["the quick fox", "a single step begins a journey"])
    model = models.make_model(
        "text_transformer", (12,), 3, seed=0, vocab_size=tokenizer.vocab_size, dim=16, heads=2, mlp_dim=32, depth=2
    )
    maps = text.attention_maps(model.backbone, ids)
    assert maps.shape == (2, 2, 2, 12, 12)
    np.testing.assert_allclose(maps.sum(-1), 1.0, rtol=1e-5)  # every query's weights are a distribution
    padding = ids == text.PAD_ID
    padded_keys = np.broadcast_to(padding[:, None, None, None, :], maps.shape)
    assert padding.any() and np.all(maps[padded_keys] == 0)  # no query attends to padding
    # Layer 0 by hand: its weights average its values into what the attention module outputs.
    encoder, block = model.backbone, model.backbone.blocks.layers[0]
    x = block.attention_norm(encoder.embed(ids) + encoder.position[...])
    v = block.attention.qkv(x).reshape(2, 12, 3, 2, 8)[:, :, 2].transpose(0, 2, 1, 3)  # (N, heads, L, 8)
    attended = np.einsum("nhqk,nhkd->nqhd", maps[:, 0], v).reshape(2, 12, 16)
    np.testing.assert_allclose(block.attention.out(attended), block.attention(x, ids != text.PAD_ID), atol=1e-5)
