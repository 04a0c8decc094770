"""Trainers get the sequence length their data needs (toolkit/seq_length.py): a fixed cap made trl drop every
real-model DPO pair whose prompt held the task's worked demonstrations."""

import pytest

from edge_tailor.errors import InputError
from edge_tailor.seq_length import fitting_length


class WordTokenizer:
    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": list(range(len(text.split())))}


def test_the_longest_prompt_plus_its_longest_completion_sets_the_length():
    examples = [("a b c", ("d", "e f g h")), ("a " * 600, ("x y",))]
    assert fitting_length(WordTokenizer(), examples, context=2048, what="align", advice="-") == 600 + 2 + 2


def test_an_example_beyond_the_context_is_refused_naming_the_stage_and_the_way_out():
    with pytest.raises(InputError, match=r"align \(DPO pairs\).*needs 702 tokens.*context of 512.*rationale_demos"):
        fitting_length(WordTokenizer(), [("w " * 600, ("c " * 100,))], context=512, what="align (DPO pairs)",
                       advice="lower elicit.rationale_demos")
