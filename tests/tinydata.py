"""A tiny random character dataset in the shard format, for the tests that train tiny models."""

import json

import numpy as np

from data.shards import write_shard


def write_random_chars(data_dir, chars, n_train, n_val, seed=0):
    """Uniformly random tokens over `chars`: one train and one val shard, and a char meta.json."""
    data_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    write_shard(data_dir / "train_000000.bin", rng.integers(0, len(chars), n_train), len(chars))
    write_shard(data_dir / "val_000000.bin", rng.integers(0, len(chars), n_val), len(chars))
    (data_dir / "meta.json").write_text(json.dumps({"tokenizer": "char", "vocab_size": len(chars), "chars": chars}))
    return data_dir
