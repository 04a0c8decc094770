"""A SentencePiece-BPE tokenizer rebuilt from a GGUF's own vocabulary, scores and token types.

Why by hand: transformers 4.57 converts a GGUF whose `tokenizer.ggml.model` is "llama" for Gemma 2/3 into a
*Unigram* model whose log-probabilities are the GGUF scores. Those scores are BPE merge priorities (minus the
piece's rank), so Viterbi prefers many short, high-priority pieces to one long piece: "The capital of France"
became `The ▁c ap it al ▁of ▁Fr an ce` on gemma-3-270m, whose vocabulary holds `▁capital` and `▁France`.
SentencePiece's BPE (and llama.cpp's `llm_tokenizer_spm`, the reference for a GGUF) merges, at every step,
the adjacent pair whose concatenation is the best-scored piece. A `tokenizers` BPE model whose merge list is
every split of every normal piece, ranked by that piece's score (transformers' own `generate_merges`), does
the same; only the merge list has to be derived here. User-defined pieces (newline, tab and space runs) are
atomic in SentencePiece, so they become added tokens; control pieces become special tokens.
"""

from __future__ import annotations

from pathlib import Path

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # sentencepiece's piece types
SPACE = "▁"


def read_vocabulary(file: Path) -> tuple[list[str], list[float], list[int]]:
    """(pieces, scores, types) of a GGUF's tokenizer, in id order."""
    import gguf

    fields = gguf.GGUFReader(str(file)).fields
    return tuple(fields[f"tokenizer.ggml.{key}"].contents() for key in ("tokens", "scores", "token_type"))


def _piece(text: str, kind: int) -> str:
    # a user-defined run of spaces matches the normalized text, in which every space is already "▁"
    return SPACE * len(text) if kind == USER_DEFINED and text.strip(" ") == "" and text else text


def spm_bpe_tokenizer(pieces: list[str], scores: list[float], types: list[int], unk_id: int):
    """The `tokenizers.Tokenizer` that encodes as SentencePiece BPE with these pieces (no BOS: the caller's
    post-processor adds specials as the GGUF says)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
    from transformers.convert_slow_tokenizer import generate_merges

    vocab = {_piece(p, t): i for i, (p, t) in enumerate(zip(pieces, types))}
    normal = {p: i for i, (p, t) in enumerate(zip(pieces, types)) if t == NORMAL}
    merges = generate_merges(normal, [(p, scores[i]) for p, i in normal.items()])
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=pieces[unk_id], fuse_unk=True,
                                     byte_fallback=True))
    tokenizer.normalizer = normalizers.Replace(" ", SPACE)
    tokenizer.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    tokenizer.add_special_tokens([AddedToken(p, special=True, normalized=False)
                                  for p, t in zip(pieces, types) if t in (CONTROL, UNKNOWN)])
    tokenizer.add_tokens([AddedToken(_piece(p, t), special=False, normalized=True)
                          for p, t in zip(pieces, types) if t == USER_DEFINED])
    return tokenizer


def needs_rebuild(meta: dict, backend) -> bool:
    """Whether transformers' conversion of this GGUF's tokenizer scored BPE priorities as Unigram."""
    import json

    model = json.loads(backend.to_str())["model"]["type"]
    return meta.get("tokenizer.ggml.model") == "llama" and model == "Unigram"


def rebuild(file: Path, meta: dict, tokenizer) -> None:
    """Swap a transformers fast tokenizer's backend for the SentencePiece-BPE one, keeping its post-processor
    (the GGUF's BOS/EOS rule) and special-token attributes."""
    pieces, scores, types = read_vocabulary(file)
    unk = meta.get("tokenizer.ggml.unknown_token_id")
    backend = spm_bpe_tokenizer(pieces, scores, types, int(unk) if unk is not None else types.index(UNKNOWN))
    backend.post_processor = tokenizer.backend_tokenizer.post_processor
    tokenizer._tokenizer = backend
