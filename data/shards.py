"""Token shards: the files that prepare scripts write and training memory-maps.

A dataset lives in data/<corpus>/<tokenization>/, e.g. data/shakespeare/char/:
    train_000000.bin, train_000001.bin, ..., val_000000.bin, ..., meta.json
meta.json names the tokenizer: {"tokenizer": "char", "vocab_size": 65, "chars": "..."} or
{"tokenizer": "gpt2", "vocab_size": 50257} (see data/tokenizer.py).

A shard is a 32-byte little-endian header, then the tokens:
    magic b"NFOPETOK" | version u32 | bytes per token u32 | vocab_size u64 | num_tokens u64
Tokens are uint16 (GPT-2's 50257 ids fit, at half the bytes of uint32), or uint32 when
vocab_size > 65535. Shards are memory-mapped, so a split may be larger than memory.
"""
import json
import os
import re
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np

MAGIC = b"NFOPETOK"
VERSION = 1
HEADER = struct.Struct("<8sIIQQ")  # magic, version, bytes per token, vocab_size, num_tokens
SHARD_TOKENS = 100_000_000  # tokens per shard when a prepare script streams a big corpus (200 MB of uint16)
SHARD_NAME = re.compile(r"^(?P<split>\w+?)_(?P<index>\d{6})\.bin$")


class ShardError(ValueError):
    """A dataset that is missing, corrupt, or does not fit the model; the message is one line."""


class ShardHeader(NamedTuple):
    vocab_size: int
    num_tokens: int
    dtype: np.dtype


def shard_dtype(vocab_size):
    """Little-endian uint16 when every id in [0, vocab_size) fits, else uint32."""
    if not 1 <= vocab_size < 2**32:
        raise ValueError(f"vocab_size must be in [1, 2**32), got {vocab_size}")
    return np.dtype("<u2") if vocab_size <= 65535 else np.dtype("<u4")


def shard_path(out_dir, split, index):
    return Path(out_dir) / f"{split}_{index:06d}.bin"


def write_shard(path, tokens, vocab_size):
    """Write token ids (any 1-D integer array-like) as one shard; atomic, so a reader never sees half a file."""
    path = Path(path)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"{path}: tokens must be 1-D, got shape {tokens.shape}")
    dtype = shard_dtype(vocab_size)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        bad = tokens.min() if tokens.min() < 0 else tokens.max()
        raise ValueError(f"{path}: token id {bad} does not fit vocab_size {vocab_size}")
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(HEADER.pack(MAGIC, VERSION, dtype.itemsize, vocab_size, tokens.size))
        f.write(tokens.astype(dtype, copy=False).tobytes())
    os.replace(tmp, path)
    return path


def read_shard_header(path):
    """Validate a shard's header against its file size; any problem is a one-line ShardError naming the file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER.size)
    except OSError as e:
        raise ShardError(f"{path}: cannot read shard ({e.strerror})") from None
    if len(raw) < HEADER.size:
        raise ShardError(f"{path}: truncated shard ({len(raw)} bytes, shorter than its header): rerun the prepare script")
    magic, version, itemsize, vocab_size, num_tokens = HEADER.unpack(raw)
    if magic != MAGIC:
        raise ShardError(f"{path}: not a nanoFoPE token shard (bad magic {magic!r})")
    if version != VERSION:
        raise ShardError(f"{path}: shard version {version}, this code reads version {VERSION}: rerun the prepare script")
    if vocab_size < 1 or vocab_size >= 2**32 or itemsize != shard_dtype(vocab_size).itemsize:
        raise ShardError(f"{path}: vocab_size {vocab_size} does not fit {itemsize}-byte tokens: rerun the prepare script")
    expected, actual = HEADER.size + num_tokens * itemsize, path.stat().st_size
    if actual != expected:
        problem = "truncated shard" if actual < expected else "shard has trailing bytes"
        raise ShardError(f"{path}: {problem} ({actual} bytes, header says {expected}): rerun the prepare script")
    return ShardHeader(vocab_size, num_tokens, shard_dtype(vocab_size))


def read_shard(path):
    """The tokens of a shard as a read-only np.memmap (validated first, see read_shard_header)."""
    header = read_shard_header(path)
    if header.num_tokens == 0:  # mmap cannot map zero bytes
        return np.zeros(0, dtype=header.dtype)
    return np.memmap(path, dtype=header.dtype, mode="r", offset=HEADER.size, shape=(header.num_tokens,))


class ShardWriter:
    """Streams the token ids of one split into shards of shard_tokens tokens each."""

    def __init__(self, out_dir, split, vocab_size, shard_tokens=SHARD_TOKENS):
        if shard_tokens < 1:  # add() would write empty shards forever
            raise ValueError(f"shard_tokens must be >= 1, got {shard_tokens}")
        self.out_dir, self.split, self.vocab_size, self.shard_tokens = Path(out_dir), split, vocab_size, shard_tokens
        self.dtype = shard_dtype(vocab_size)
        self.pending, self.pending_tokens = [], 0
        self.paths, self.num_tokens = [], 0

    def add(self, ids):
        ids = np.asarray(ids)
        self.pending.append(ids)
        self.pending_tokens += ids.size
        self.num_tokens += ids.size
        while self.pending_tokens >= self.shard_tokens:
            tokens = np.concatenate(self.pending)
            self._write(tokens[: self.shard_tokens])
            rest = tokens[self.shard_tokens :]
            self.pending, self.pending_tokens = [rest], rest.size

    def close(self):
        """Write what is left; returns the paths of all shards written."""
        if self.pending_tokens:
            self._write(np.concatenate(self.pending))
        self.pending, self.pending_tokens = [], 0
        return self.paths

    def _write(self, tokens):
        self.paths.append(write_shard(shard_path(self.out_dir, self.split, len(self.paths)), tokens, self.vocab_size))


def split_files(data_dir, split):
    """The shard files of one split, in order."""
    matches = (SHARD_NAME.match(p.name) for p in Path(data_dir).glob(f"{split}_*.bin"))
    return sorted(Path(data_dir) / m.group(0) for m in matches if m and m["split"] == split)


def remove_stale_shards(out_dir, keep):
    """Delete <split>_NNNNNN.bin files of out_dir that a rerun did not write (e.g. a corpus that shrank)."""
    keep = {Path(p).resolve() for p in keep}
    for path in Path(out_dir).glob("*.bin"):
        if SHARD_NAME.match(path.name) and path.resolve() not in keep:
            path.unlink()


def write_meta(out_dir, meta):
    path = Path(out_dir) / "meta.json"
    tmp = path.with_name("meta.json.tmp")
    tmp.write_text(json.dumps(meta, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def prepare_command(data_dir):
    """The command that makes data_dir: the nearest prepare.py at or above it, else data/prepare_text.py."""
    data_dir = Path(data_dir)
    for folder in [data_dir, *list(data_dir.parents)[:2]]:
        if (folder / "prepare.py").is_file():
            return f"python {folder / 'prepare.py'}"
    prepare_text = os.path.relpath(Path(__file__).resolve().parent / "prepare_text.py")
    return f"python {prepare_text} FILES --out {data_dir}"


class TokenShards:
    """All shards of one split of a dataset dir, memory-mapped.

    shards = TokenShards("data/shakespeare/char", "train")
    x, y = shards.get_batch(batch_size, block_size, rng)   # training: random windows
    for window in shards.windows(length): ...                # evaluation: consecutive windows
    """

    def __init__(self, data_dir, split):
        self.data_dir, self.split = Path(data_dir), split
        if not self.data_dir.is_dir():
            raise ShardError(f"no data at {data_dir}: run {prepare_command(data_dir)}")
        self.files = split_files(self.data_dir, split)
        if not self.files:
            splits = sorted({m["split"] for m in map(SHARD_NAME.match, os.listdir(self.data_dir)) if m})
            if splits:  # say what there is: a prepare script need not write every split (a test split)
                raise ShardError(f"{data_dir} has no {split} split, only {', '.join(splits)} (found no "
                                 f"{split}_*.bin; {prepare_command(data_dir)} writes them)")
            raise ShardError(f"no data at {data_dir}: run {prepare_command(data_dir)} (found no {split}_*.bin)")
        meta_path = self.data_dir / "meta.json"
        if not meta_path.is_file():
            raise ShardError(f"{meta_path} is missing: run {prepare_command(data_dir)}")
        self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        self.vocab_size = int(self.meta["vocab_size"])
        self.headers = [read_shard_header(f) for f in self.files]
        for path, header in zip(self.files, self.headers):
            if header.vocab_size != self.vocab_size:
                raise ShardError(f"{path}: vocab_size {header.vocab_size} but meta.json says {self.vocab_size}: rerun the prepare script")
        self.shards = [read_shard(f) for f in self.files]
        self.num_tokens = sum(h.num_tokens for h in self.headers)

    def __repr__(self):
        return f"TokenShards({self.data_dir}, {self.split}: {len(self.files)} shard files, {self.num_tokens:,} tokens)"

    def check_vocab(self, model_vocab_size):
        """Raise if some token id of this split would index past the model's embedding table."""
        for path, header in zip(self.files, self.headers):
            if header.vocab_size > model_vocab_size:
                raise ShardError(
                    f"{path}: token ids go up to {header.vocab_size - 1} but the model's vocab_size is "
                    f"{model_vocab_size}: set vocab_size >= {header.vocab_size}"
                )

    def get_batch(self, batch_size, block_size, rng):
        """batch_size random windows of block_size tokens: x (B, T) and y = x shifted by one, int64.

        Every start position of every shard is equally likely; a window never crosses a shard boundary.
        """
        import torch  # here, so prepare scripts that only write shards do not pay for importing torch

        starts_per_shard = np.array([max(h.num_tokens - block_size, 0) for h in self.headers])
        total = int(starts_per_shard.sum())
        if total == 0:
            longest = max(h.num_tokens for h in self.headers)
            raise ShardError(
                f"no {self.split} shard in {self.data_dir} is longer than block_size + 1 = {block_size + 1} "
                f"tokens (longest: {longest}): use a smaller block_size"
            )
        ends = np.cumsum(starts_per_shard)
        picks = rng.integers(0, total, size=batch_size)
        shard_ids = np.searchsorted(ends, picks, side="right")
        starts = picks - (ends[shard_ids] - starts_per_shard[shard_ids])
        windows = np.stack([self.shards[s][i : i + block_size + 1] for s, i in zip(shard_ids, starts)])
        windows = windows.astype(np.int64)  # (B, T + 1)
        return torch.from_numpy(windows[:, :-1].copy()), torch.from_numpy(windows[:, 1:].copy())

    def windows(self, length):
        """Successive non-overlapping windows of length + 1 tokens (inputs, then the target of the last one).

        The inputs w[:-1] tile each shard from its start; a shard's tail shorter than length + 1 is dropped.
        """
        for shard in self.shards:
            for start in range(0, len(shard) - length, length):
                yield np.asarray(shard[start : start + length + 1], dtype=np.int64)
