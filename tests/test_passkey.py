"""passkey.py: documents hit their length exactly, hide the key where asked, and are scored fairly."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from data.tokenizer import CharTokenizer, GPT2Tokenizer
from passkey import FILLER, KEY_DIGITS, KEY_PREFIX, PasskeyDocs, score

CHARS = sorted(set(FILLER + KEY_PREFIX + "0123456789.] "))


@pytest.fixture(scope="module", params=["char", "gpt2"])
def docs(request):
    tok = CharTokenizer(CHARS) if request.param == "char" else GPT2Tokenizer()
    return PasskeyDocs(tok)


@settings(max_examples=40, deadline=None)
@given(extra=st.integers(0, 2000), depth=st.floats(0, 1), key=st.integers(0, 99999))
def test_passkey_document_has_the_exact_length_and_ends_in_the_answer(docs, extra, depth, key):
    key = f"{key:05d}"
    length = docs.min_length + extra
    ids, answer_start, key_start = docs.build(length, depth, key)
    assert len(ids) == length
    tok = docs.tok
    assert tok.decode(ids[answer_start:]).strip() == key
    assert tok.decode(ids[:answer_start]).endswith(KEY_PREFIX)
    # the key sentence sits where the depth says: after round(depth * filler) filler tokens
    sentence = tok.encode(KEY_PREFIX) + tok.encode(key)
    assert ids[key_start:key_start + len(sentence)] == sentence
    n_filler = length - 2 * len(tok.encode(KEY_PREFIX)) - 2 * len(tok.encode(key)) - len(tok.encode("]. "))
    assert key_start == round(depth * n_filler)
    before = tok.decode(ids[:key_start])
    assert before == (FILLER * (len(before) // len(FILLER) + 1))[:len(before)]


def test_passkey_key_is_not_elsewhere_in_the_document(docs):
    ids, answer_start, key_start = docs.build(500, 0.3, "48213")
    text = docs.tok.decode(ids)
    assert text.count("48213") == 2  # the key sentence and the answer


def test_a_length_too_short_for_the_template_is_a_one_line_error(docs):
    with pytest.raises(ValueError, match="needs at least"):
        docs.build(10, 0.5, "12345")


def test_training_docs_fit_the_block_and_cover_every_key_distance(docs):
    rng = np.random.default_rng(0)
    max_length = max(64, docs.min_length + 4)
    lengths = []
    for _ in range(200):
        doc = docs.training_doc(rng, max_length)
        assert docs.min_length <= len(doc) <= max_length
        lengths.append(len(doc))
    full = sum(n == max_length for n in lengths)
    assert 60 < full < 140  # half fill the window: the longest key-to-question distances get trained
    assert len(set(lengths)) > 3  # the rest move the question around the window


@pytest.mark.parametrize("predicted,exact,digits", [
    ("48213", True, 1.0),        # right
    (" 48213", True, 1.0),       # right, with the space the answer starts with
    ("99999", False, 0.0),       # wrong
    ("48299", False, 0.6),       # partly right: three digits
    ("4821", False, 0.8),        # one digit short
    ("The k", False, 0.0),       # not a number at all
])
def test_scorer_on_right_wrong_and_partly_right_outputs(predicted, exact, digits):
    assert score(predicted, "48213") == (exact, pytest.approx(digits))


def test_keys_are_five_distinct_digits(docs):
    rng = np.random.default_rng(0)
    keys = [docs.random_key(rng) for _ in range(300)]
    assert all(len(k) == KEY_DIGITS and k.isdigit() and len(set(k)) == KEY_DIGITS for k in keys)
    assert len(set(keys)) > 290  # random: 30,240 possible keys
    assert {k[0] for k in keys} == set("0123456789")
