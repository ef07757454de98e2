"""Turn local text files into token shards that train.py can read.

    python data/prepare_text.py "notes/*.txt" "dump/*.jsonl" --out data/notes/gpt2
    python data/prepare_text.py "books/**/*.txt" --out data/books/char --tokenizer char
    python data/prepare_text.py "notes/*.txt" --out data/notes/smollm2 --tokenizer pretrained:smollm2-135m

A .txt file is one document; each line of a .jsonl file is one document (its --field, default "text").
Whole documents go to val (--val-fraction of them, chosen with --seed), so no document is split
between train and val. Each document is followed by an end-of-document marker (<|endoftext|> for
gpt2, a blank line for char). write_dataset() is the tokenize-and-shard path that
data/openwebtext/prepare.py and data/shakespeare/prepare.py use too.
"""
import argparse
import glob
import json
import multiprocessing
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

if __package__ in (None, ""):  # run as a script: make `data` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data.shards import SHARD_TOKENS, ShardWriter, remove_stale_shards, shard_dtype, write_meta
from data.tokenizer import CharTokenizer, GPT2Tokenizer
from util.args import at_least, check_args, in_range

_tokenizer = None  # the tokenizer of this (worker) process, set by _init_worker


def _init_worker(tokenizer):
    global _tokenizer
    _tokenizer = tokenizer


def _tokenize(item):
    split, text = item
    ids = _tokenizer.encode(text)
    ids.extend(_tokenizer.end_of_document_ids)
    return split, np.array(ids, dtype=shard_dtype(_tokenizer.vocab_size))


def write_dataset(docs, out_dir, tokenizer, num_proc=1, shard_tokens=SHARD_TOKENS, total=None):
    """Tokenize (split, text) pairs in num_proc processes and write them, in order, as shards of out_dir.

    Also writes out_dir/meta.json and removes shards of an earlier run that this one did not rewrite.
    Returns {split: {"docs": n, "tokens": n, "shards": n}}.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    writers, doc_counts = {}, {}
    pool = multiprocessing.Pool(num_proc, _init_worker, (tokenizer,)) if num_proc > 1 else None
    try:
        if pool is None:
            _init_worker(tokenizer)
            tokenized = map(_tokenize, docs)
        else:
            tokenized = pool.imap(_tokenize, docs, chunksize=16)  # imap keeps the documents' order
        progress = tqdm(tokenized, total=total, unit="doc", desc=f"tokenizing ({tokenizer.name})")
        for split, ids in progress:
            if split not in writers:
                writers[split] = ShardWriter(out_dir, split, tokenizer.vocab_size, shard_tokens)
            writers[split].add(ids)
            doc_counts[split] = doc_counts.get(split, 0) + 1
    finally:
        if pool is not None:
            pool.terminate()
    paths = {split: writer.close() for split, writer in writers.items()}
    remove_stale_shards(out_dir, keep=[p for split_paths in paths.values() for p in split_paths])
    write_meta(out_dir, tokenizer.meta())
    return {
        split: {"docs": doc_counts[split], "tokens": writers[split].num_tokens, "shards": len(paths[split])}
        for split in writers
    }


def expand_patterns(patterns):
    """Files matching the glob patterns (** recurses), sorted within each pattern, without repeats."""
    files = []
    for pattern in patterns:
        matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
        if not matches:
            raise ValueError(f"no files match {pattern!r}")
        files.extend(p for p in matches if p not in files)
    return files


def iter_documents(files, field="text"):
    """The documents of .txt files (one each) and .jsonl files (one per non-empty line)."""
    for path in files:
        try:
            yield from _file_documents(path, field)
        except UnicodeDecodeError as e:  # a ValueError that would not name the file
            raise ValueError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x}: {e.reason}): "
                             "save it as UTF-8") from None


def _file_documents(path, field):
    with open(path, encoding="utf-8", newline="") as f:  # newline="": the text exactly as it is on disk
        if path.suffix != ".jsonl":
            yield f.read()
            return
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(f"{path}:{line_number}: not a JSON object") from None
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                raise ValueError(f"{path}:{line_number}: no string field {field!r}: pass --field NAME")
            yield record[field]


def choose_val_docs(num_docs, val_fraction, seed):
    """Indices of the documents that go to val: round(val_fraction * num_docs), at least one if val_fraction > 0."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0:
        return set()
    if num_docs < 2:
        raise ValueError(f"a val split needs at least 2 documents, found {num_docs}: add files or pass --val-fraction 0")
    num_val = min(max(1, round(val_fraction * num_docs)), num_docs - 1)
    return set(np.random.default_rng(seed).choice(num_docs, size=num_val, replace=False).tolist())


def prepare_text(patterns, out_dir, tokenizer="gpt2", field="text", val_fraction=0.05, seed=0,
                 num_proc=1, shard_tokens=SHARD_TOKENS):
    """Read the files matching patterns and write train/val shards of out_dir; returns write_dataset's summary."""
    for name, value in (("shard_tokens", shard_tokens), ("num_proc", num_proc)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    files = expand_patterns(patterns)
    num_docs = with_text = 0  # a first pass, so huge files need not fit in memory
    for doc in iter_documents(files, field):
        num_docs, with_text = num_docs + 1, with_text + bool(doc.strip())
    if not with_text:  # a char vocabulary of one blank: a model would learn it at loss 0
        raise ValueError(f"{' '.join(patterns)}: no text in {len(files)} file(s), every document is empty or "
                         "whitespace: give files that hold text")
    val_docs = choose_val_docs(num_docs, val_fraction, seed)
    if tokenizer == "char":
        tok = CharTokenizer.from_texts(iter_documents(files, field))
    elif tokenizer == "gpt2":
        tok = GPT2Tokenizer()
    elif tokenizer.startswith("pretrained:"):
        from pretrained import load_tokenizer
        tok = load_tokenizer(tokenizer.split(":", 1)[1])
    else:
        raise ValueError(f"unknown tokenizer {tokenizer!r}: use gpt2, char or pretrained:SOURCE")
    docs = (("val" if i in val_docs else "train", text) for i, text in enumerate(iter_documents(files, field)))
    return write_dataset(docs, out_dir, tok, num_proc=num_proc, shard_tokens=shard_tokens, total=num_docs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("patterns", nargs="+", help="glob patterns of .txt / .jsonl files (quote them)")
    parser.add_argument("--out", required=True, help="dataset dir to write, e.g. data/notes/gpt2")
    parser.add_argument("--tokenizer", default="gpt2", help="gpt2 | char | pretrained:SOURCE, a pretrained model's "
                        "tokenizer (pretrained.py: pretrained:smollm2-135m, a .gguf file or an HF folder)")
    parser.add_argument("--field", default="text", help="the text field of .jsonl records")
    parser.add_argument("--val-fraction", type=float, default=0.05, help="fraction of documents that go to val")
    parser.add_argument("--seed", type=int, default=0, help="chooses the val documents")
    parser.add_argument("--num-proc", type=int, default=os.cpu_count() or 1, help="tokenizer processes")
    parser.add_argument("--shard-tokens", type=int, default=SHARD_TOKENS, help="tokens per shard file")
    args = parser.parse_args(argv)
    check_args([at_least("--num-proc", args.num_proc, 1), at_least("--shard-tokens", args.shard_tokens, 1),
                at_least("--seed", args.seed, 0), in_range("--val-fraction", args.val_fraction, 0, 1, closed=False)])
    try:
        summary = prepare_text(args.patterns, args.out, args.tokenizer, args.field, args.val_fraction,
                               args.seed, args.num_proc, args.shard_tokens)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    for split, counts in summary.items():
        print(f"{split}: {counts['docs']:,} docs, {counts['tokens']:,} tokens in {counts['shards']} shards")
    print(f"wrote {args.out} ({args.tokenizer} tokens)")


if __name__ == "__main__":
    main()
