"""Tokenizers of nanoFoPE datasets: characters, GPT-2's byte-level BPE through tiktoken, or a pretrained
model's byte-level BPE through HF `tokenizers` (pretrained.load_tokenizer builds it from the model's file).

A dataset's meta.json says which: {"tokenizer": "char", "vocab_size": 65, "chars": "\\n !$&..."},
{"tokenizer": "gpt2", "vocab_size": 50257} or {"tokenizer": "pretrained", "source": "smollm2-135m",
"vocab_size": 49152}; get_tokenizer(meta) gives the matching object.

GPT-2 works offline. tiktoken.get_encoding("gpt2") downloads its ranks on first use; without
internet we build the same Encoding from the ranks file that PyPI's openai-whisper sdist ships
(whisper/assets/gpt2.tiktoken), fetched once with pip into the download cache (data/download.py). That file is
byte-identical to tiktoken's own r50k_base.tiktoken (GPT-2's ranks): load_tiktoken_bpe checks its sha256.
tiktoken is imported only when GPT-2 tokens are encoded or decoded: training on prepared shards needs none
(a bare GPU machine may not have it).
"""
import functools
import os

import numpy as np


GPT2_VOCAB_SIZE = 50257
GPT2_EOT = 50256  # <|endoftext|>
# GPT-2's pre-tokenizer split, as tiktoken defines it (tiktoken_ext/openai_public.py, r50k_pat_str):
# the original r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""", made faster.
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
WHISPER_SDIST = "openai-whisper==20250625"


def gpt2_ranks_file():
    """GPT-2's BPE ranks in tiktoken's format, extracted once from the openai-whisper sdist."""
    from data.download import cache_dir, package_file  # here: a char run loads no download code

    return package_file(WHISPER_SDIST, "whisper/assets/gpt2.tiktoken", cache_dir() / "gpt2.tiktoken")


def import_tiktoken():
    try:
        import tiktoken
        import tiktoken.load
    except ImportError:
        raise SystemExit("GPT-2 tokens need tiktoken, which is not installed: pip install tiktoken (training on "
                         "prepared shards needs none)") from None
    return tiktoken


@functools.cache
def offline_gpt2_encoding():
    tiktoken = import_tiktoken()
    ranks = tiktoken.load.load_tiktoken_bpe(str(gpt2_ranks_file()), expected_hash=GPT2_RANKS_SHA256)
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": GPT2_EOT},
        explicit_n_vocab=GPT2_VOCAB_SIZE,
    )


@functools.cache
def downloaded_gpt2_encoding(timeout=None):
    """tiktoken's own GPT-2 encoding, or None if it cannot be had within timeout seconds (None: data/download.py's
    DOWNLOAD_TIMEOUT; tiktoken's download has no timeout of its own, and hangs on a network that drops packets)."""
    from data.download import DOWNLOAD_TIMEOUT, fetch_within

    tiktoken = import_tiktoken()
    return fetch_within(lambda: tiktoken.get_encoding("gpt2"), DOWNLOAD_TIMEOUT if timeout is None else timeout)


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


class BPETokenizer:
    """A pretrained model's byte-level BPE (GPT-2 style), on HF `tokenizers`. tokens: the vocabulary by id;
    merges: (left, right) pairs by rank; pre: the pre-tokenizer by llama.cpp's name (tokenizer.ggml.pre):
    "smollm" splits digits one by one before GPT-2's regex (llama.cpp's LLAMA_VOCAB_PRE_TYPE_SMOLLM),
    "gpt2"/"default" is GPT-2's regex alone; special: tokens that are never split (control tokens).
    Each document is followed by the end-of-text token eos_id."""

    name = "pretrained"
    PRE = ("default", "gpt2", "smollm")

    def __init__(self, tokens, merges, pre, special, eos_id, source):
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
        if pre not in self.PRE:
            raise ValueError(f"pre-tokenizer {pre!r} is not one nanoFoPE knows ({', '.join(self.PRE)})")
        vocab = {t: i for i, t in enumerate(tokens)}
        tok = Tokenizer(models.BPE(vocab, list(merges), fuse_unk=False))
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                             if pre == "smollm" else byte_level)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
        self._init(tok, eos_id, source)

    @classmethod
    def from_file(cls, path, source):
        """From an HF tokenizer.json; its eos is <|endoftext|> or </s> where it has one."""
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(path))
        eos = next((tok.token_to_id(t) for t in ("<|endoftext|>", "</s>", "<|end_of_text|>") if tok.token_to_id(t) is not None), None)
        self = cls.__new__(cls)
        self._init(tok, eos, source)
        return self

    def _init(self, tok, eos_id, source):
        self.tokenizer, self.source, self.eos_id = tok, source, eos_id
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self.end_of_document_ids = [eos_id] if eos_id is not None else []

    def meta(self):
        return {"tokenizer": "pretrained", "source": self.source, "vocab_size": self.vocab_size}

    def encode(self, text):
        # no special tokens added, and none parsed from plain text by choice of the caller
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids):
        return self.tokenizer.decode(np.asarray(ids).tolist(), skip_special_tokens=False)

    def __getstate__(self):  # tokenizers' objects pickle as JSON, for prepare_text's worker processes
        return {**self.__dict__, "tokenizer": self.tokenizer.to_str()}

    def __setstate__(self, state):
        from tokenizers import Tokenizer
        self.__dict__.update({**state, "tokenizer": Tokenizer.from_str(state["tokenizer"])})


def get_tokenizer(meta):
    """The tokenizer a dataset's meta.json names."""
    name = meta.get("tokenizer")
    if name == "char":
        if "chars" not in meta:
            raise ValueError("meta.json of a char dataset has no 'chars': rerun its prepare script")
        return CharTokenizer(meta["chars"])
    if name == "gpt2":
        return GPT2Tokenizer()
    if name == "pretrained":
        from pretrained import load_tokenizer
        return load_tokenizer(meta["source"])
    raise ValueError(f"unknown tokenizer {name!r} in meta.json: expected 'char', 'gpt2' or 'pretrained'")
