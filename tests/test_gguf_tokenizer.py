"""The SentencePiece-BPE tokenizer rebuilt from a GGUF's pieces, scores and types (edge_tailor.gguf_tokenizer):
it must merge as SentencePiece does (the best-scored adjacent pair first), which a Unigram model reading the
same scores does not."""

import random

from tokenizers import Tokenizer, models

from edge_tailor.gguf_tokenizer import CONTROL, NORMAL, USER_DEFINED, spm_bpe_tokenizer

PIECES = ["<pad>", "<eos>", "<bos>", "<unk>", "\n", "\n\n", "  ", "a", "b", "c", "▁", "ab", "bc", "ca", "abc", "▁a",
          "▁ab", "▁abc", "cab", "bca", "▁c", "▁ca", "▁cab", "aa", "aaa"]
TYPES = [CONTROL] * 4 + [USER_DEFINED] * 3 + [NORMAL] * (len(PIECES) - 7)


def _scores(order: list[str]) -> list[float]:
    # a score is minus the merge rank, as a GGUF stores them: earlier in `order` merges first
    return [0.0 if t != NORMAL else -float(order.index(p)) for p, t in zip(PIECES, TYPES)]


def spm_reference(text: str, scores: dict[str, float]) -> list[str]:
    """SentencePiece BPE as its paper and llama.cpp's llm_tokenizer_spm describe it: user-defined pieces cut out
    first (longest match), then from characters merge the adjacent pair whose concatenation is the best-scored
    piece (leftmost on a tie), until none."""
    text = text.replace(" ", "▁")
    if "▁▁" in text:  # the user-defined run of two spaces
        head, _, tail = text.partition("▁▁")
        return spm_reference(head, scores) + ["▁▁"] + spm_reference(tail.replace("▁", " "), scores)
    symbols = list(text)
    while True:
        best = None
        for i in range(len(symbols) - 1):
            joined = symbols[i] + symbols[i + 1]
            if joined in scores and (best is None or scores[joined] > scores[symbols[best] + symbols[best + 1]]):
                best = i
        if best is None:
            return symbols
        symbols[best:best + 2] = [symbols[best] + symbols[best + 1]]


def test_merges_follow_the_scores_as_sentencepiece_does():
    rng = random.Random(0)
    for trial in range(20):
        order = [p for p, t in zip(PIECES, TYPES) if t == NORMAL]
        rng.shuffle(order)
        scores = _scores(order)
        tok = spm_bpe_tokenizer(PIECES, scores, TYPES, unk_id=3)
        normal = {p: s for p, s, t in zip(PIECES, scores, TYPES) if t == NORMAL}
        for _ in range(50):
            text = "".join(rng.choice("abc ") for _ in range(rng.randint(1, 12)))
            assert tok.encode(text).tokens == spm_reference(text, normal), (order, text)
            assert tok.decode(tok.encode(text).ids) == text


def test_long_pieces_win_where_unigram_on_the_same_scores_splits_them():
    order = ["a", "b", "c", "▁", "ab", "bc", "ca", "▁a", "aa", "▁c", "abc", "▁ab", "▁abc", "cab", "bca", "▁ca",
             "▁cab", "aaa"]
    scores = _scores(order)
    tok = spm_bpe_tokenizer(PIECES, scores, TYPES, unk_id=3)
    assert tok.encode("abc abc").tokens == ["abc", "▁abc"]
    # what transformers 4.57 built from a Gemma GGUF: the same scores read as Unigram log-probabilities
    unigram = Tokenizer(models.Unigram([(p, s) for p, s in zip(PIECES, scores)], unk_id=3, byte_fallback=False))
    assert unigram.encode("▁abc").tokens != ["▁abc"]


def test_user_defined_pieces_are_atomic_and_controls_are_special():
    tok = spm_bpe_tokenizer(PIECES, _scores([p for p, t in zip(PIECES, TYPES) if t == NORMAL]), TYPES, unk_id=3)
    assert tok.encode("ab\n\nab").tokens == ["ab", "\n\n", "ab"]
    assert tok.encode("a  b").tokens == ["a", "▁▁", "b"]  # a run of spaces is one piece, as in SentencePiece
    enc = tok.encode("<bos>ab<eos>")
    assert enc.tokens == ["<bos>", "ab", "<eos>"] and tok.decode(enc.ids) == "ab"
    assert tok.decode(tok.encode("x").ids) == ""  # no byte pieces in this vocabulary: unknown, skipped as special
