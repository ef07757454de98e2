"""Tokenizers of nanoFoPE datasets: characters, or GPT-2's byte-level BPE through tiktoken.

A dataset's meta.json says which: {"tokenizer": "char", "vocab_size": 65, "chars": "\\n !$&..."}
or {"tokenizer": "gpt2", "vocab_size": 50257}; get_tokenizer(meta) gives the matching object.

GPT-2 works offline. tiktoken.get_encoding("gpt2") downloads its ranks on first use; without
internet we build the same Encoding from the ranks file that PyPI's openai-whisper sdist ships
(whisper/assets/gpt2.tiktoken), fetched once with pip into ~/.cache/nanofope/. That file is
byte-identical to tiktoken's own r50k_base.tiktoken (GPT-2's ranks): load_tiktoken_bpe checks its sha256.
"""
import functools
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
from pathlib import Path

import numpy as np
import tiktoken
from tiktoken.load import load_tiktoken_bpe

GPT2_VOCAB_SIZE = 50257
GPT2_EOT = 50256  # <|endoftext|>
# GPT-2's pre-tokenizer split, as tiktoken defines it (tiktoken_ext/openai_public.py, r50k_pat_str):
# the original r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""", made faster.
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
WHISPER_SDIST = "openai-whisper==20250625"
DOWNLOAD_TIMEOUT = 5.0  # seconds tiktoken may spend trying to download before we go offline


def cache_dir():
    """Where downloads are kept: $NANOFOPE_CACHE, else $XDG_CACHE_HOME/nanofope, else ~/.cache/nanofope."""
    if os.environ.get("NANOFOPE_CACHE"):
        return Path(os.environ["NANOFOPE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nanofope"


def pip_download_sdist(requirement, dest):
    """Fetch requirement's source distribution with pip (PyPI is the one thing reachable offline here)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet", requirement, "-d", str(dest)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"`pip download {requirement}` failed ({last}): check that PyPI is reachable")
    sdists = sorted(Path(dest).glob("*.tar.gz"))
    if not sdists:
        raise RuntimeError(f"`pip download {requirement}` wrote no .tar.gz into {dest}")
    return sdists[0]


def gpt2_ranks_file():
    """GPT-2's BPE ranks in tiktoken's format, extracted once from the openai-whisper sdist."""
    path = cache_dir() / "gpt2.tiktoken"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(pip_download_sdist(WHISPER_SDIST, tmp)) as sdist:
            member = next(m for m in sdist.getmembers() if m.name.endswith("whisper/assets/gpt2.tiktoken"))
            data = sdist.extractfile(member).read()
    tmp_path = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp_path.write_bytes(data)
    os.replace(tmp_path, path)  # atomic: concurrent processes never read half a file
    return path


@functools.cache
def offline_gpt2_encoding():
    ranks = load_tiktoken_bpe(str(gpt2_ranks_file()), expected_hash=GPT2_RANKS_SHA256)
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": GPT2_EOT},
        explicit_n_vocab=GPT2_VOCAB_SIZE,
    )


@functools.cache
def downloaded_gpt2_encoding(timeout=DOWNLOAD_TIMEOUT):
    """tiktoken's own GPT-2 encoding, or None if it cannot be had within timeout seconds."""
    result = {}

    def load():
        try:
            result["encoding"] = tiktoken.get_encoding("gpt2")
        except Exception:  # no internet: DNS, connection or HTTP errors of any kind
            pass

    # tiktoken's download has no timeout of its own, and hangs on a network that drops packets
    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(timeout)
    return result.get("encoding")


def gpt2_encoding(offline=None):
    """A tiktoken Encoding equal to GPT-2's: tiktoken's own if it can download, else built offline.

    offline=True (or NANOFOPE_OFFLINE=1 in the environment) skips the download attempt.
    """
    if offline is None:
        offline = os.environ.get("NANOFOPE_OFFLINE", "") not in ("", "0")
    encoding = None if offline else downloaded_gpt2_encoding()
    return encoding or offline_gpt2_encoding()


class CharTokenizer:
    """One token per character of `chars` (the sorted characters of the corpus)."""

    name = "char"
    end_of_document = "\n\n"  # text appended after each document: a blank line

    def __init__(self, chars):
        self.chars = chars
        self.vocab_size = len(chars)
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.end_of_document_ids = self.encode(self.end_of_document) if "\n" in self.stoi else []

    @classmethod
    def from_texts(cls, texts):
        chars = {"\n"}  # the document separator is always in the vocabulary
        for text in texts:
            chars.update(text)
        return cls("".join(sorted(chars)))

    def meta(self):
        return {"tokenizer": "char", "vocab_size": self.vocab_size, "chars": self.chars}

    def encode(self, text):
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in this dataset's char vocabulary") from None

    def decode(self, ids):
        return "".join(self.chars[i] for i in np.asarray(ids).tolist())


class GPT2Tokenizer:
    """GPT-2's BPE; each document is followed by <|endoftext|>, as in nanoGPT's openwebtext."""

    name = "gpt2"
    vocab_size = GPT2_VOCAB_SIZE
    end_of_document_ids = [GPT2_EOT]

    def __init__(self, encoding=None):
        self.encoding = encoding or gpt2_encoding()

    def meta(self):
        return {"tokenizer": "gpt2", "vocab_size": self.vocab_size}

    def encode(self, text):
        # encode_ordinary: a literal "<|endoftext|>" in a document is plain text, not the separator
        return self.encoding.encode_ordinary(text)

    def decode(self, ids):
        return self.encoding.decode(np.asarray(ids).tolist())


def get_tokenizer(meta):
    """The tokenizer a dataset's meta.json names."""
    name = meta.get("tokenizer")
    if name == "char":
        if "chars" not in meta:
            raise ValueError("meta.json of a char dataset has no 'chars': rerun its prepare script")
        return CharTokenizer(meta["chars"])
    if name == "gpt2":
        return GPT2Tokenizer()
    raise ValueError(f"unknown tokenizer {name!r} in meta.json: expected 'char' or 'gpt2'")
