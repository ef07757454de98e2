"""OpenWebText as GPT-2 tokens, following nanoGPT's recipe.

    pip install datasets    # optional: not in requirements.txt
    python data/openwebtext/prepare.py [--num-proc 8]

Downloads OpenWebText from the Hugging Face hub (~54 GB of cache), holds out 0.05% of the documents
(seed 2357) as val, tokenizes with GPT-2's BPE in --num-proc processes and writes
data/openwebtext/gpt2/ (~9B train tokens in ~90 shards of 100M tokens, ~18 GB), each document
followed by <|endoftext|>. The tokenize-and-shard step is data/prepare_text.py's write_dataset().
"""
import argparse
import os
import sys
from itertools import chain
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for `import data`
from data.prepare_text import write_dataset
from data.tokenizer import GPT2Tokenizer
from util.args import at_least, check_args

HERE = Path(__file__).resolve().parent


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default="openwebtext", help="dataset name on the Hugging Face hub")
    parser.add_argument("--num-proc", type=int, default=os.cpu_count() or 1, help="tokenizer processes")
    parser.add_argument("--val-fraction", type=float, default=0.0005)
    args = parser.parse_args(argv)
    check_args([at_least("--num-proc", args.num_proc, 1),  # before the 54 GB download
                ("--val-fraction", args.val_fraction, 0 < args.val_fraction < 1, "must be in (0, 1)")])

    try:
        from datasets import load_dataset
    except ImportError:
        raise SystemExit("openwebtext needs Hugging Face datasets: pip install datasets") from None

    dataset = load_dataset(args.name, num_proc=args.num_proc)
    split = dataset["train"].train_test_split(test_size=args.val_fraction, seed=2357, shuffle=True)
    train, val = split["train"], split["test"]
    docs = chain((("train", row["text"]) for row in train), (("val", row["text"]) for row in val))
    summary = write_dataset(docs, HERE / "gpt2", GPT2Tokenizer(), args.num_proc, total=len(train) + len(val))
    for name, counts in summary.items():
        print(f"{name}: {counts['docs']:,} docs, {counts['tokens']:,} tokens in {counts['shards']} shards")


if __name__ == "__main__":
    main()
