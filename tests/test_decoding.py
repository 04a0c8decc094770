"""The decode loop (edge_tailor.decoding) writes what `model.generate` writes, while it drops ended rows
from the batch and runs a prefix the prompts share once."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessorList

from edge_tailor.decoding import MIN_SHARED_PREFIX, decode_batch, sampling_warpers, shared_prefix_length
from edge_tailor.generation import PREFIX_KEY, similar_batches


@pytest.fixture(scope="module")
def tiny_llama():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(config).eval()


def _prompts(lengths, prefix=0, seed=1):
    g = torch.Generator().manual_seed(seed)
    shared = torch.randint(3, 96, (prefix,), generator=g).tolist()
    return [shared + torch.randint(3, 96, (n,), generator=g).tolist() for n in lengths]


def _generate(model, prompts, eos, max_new_tokens):
    """transformers' generate on the left-padded batch: the reference."""
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=eos, pad_token_id=0)
    return [row[:row.index(eos)] if eos in row else row for row in out[:, width:].tolist()]


def _early_eos(model, prompts, max_new_tokens):
    """A token that rows write at different steps: as end of sequence, rows leave the batch one by one."""
    steps = {}
    for row in _generate(model, prompts, 2, max_new_tokens):
        for step, token in enumerate(row):
            steps.setdefault(token, set()).add(step)
    return max(steps, key=lambda t: (len(steps[t]), -min(steps[t])))


@pytest.mark.parametrize("prefix", [0, 40])
def test_greedy_rows_equal_generate_when_rows_end_at_different_steps(tiny_llama, prefix):
    prompts = _prompts([5, 9, 3, 12, 7, 9], prefix=prefix)
    assert shared_prefix_length(prompts) == (prefix if prefix >= MIN_SHARED_PREFIX else 0)
    eos = _early_eos(tiny_llama, prompts, 20)
    want = _generate(tiny_llama, prompts, eos, 20)
    assert len({len(r) for r in want}) > 1 and min(map(len, want)) < 20  # the case under test
    assert decode_batch(tiny_llama, prompts, pad_id=0, max_new_tokens=20, eos_ids=[eos]) == want


def test_a_shared_prefix_leaves_every_prompt_a_token_of_its_own():
    same = [list(range(3, 40))] * 3
    assert shared_prefix_length(same) == len(same[0]) - 1
    assert shared_prefix_length([list(range(3, 40))]) == 0  # one prompt: nothing to share
    assert shared_prefix_length([[5] * 10 + [6], [5] * 10 + [7]]) == 0  # shorter than worth a second pass


def test_a_stop_check_ends_only_its_row(tiny_llama):
    prompts = _prompts([4, 6, 8], prefix=20)
    full = decode_batch(tiny_llama, prompts, pad_id=0, max_new_tokens=12, eos_ids=[2])
    stopped = decode_batch(tiny_llama, prompts, pad_id=0, max_new_tokens=12, eos_ids=[2],
                           ends=lambda row, new: row == 1 and len(new) == 3)
    assert stopped[1] == full[1][:3]
    assert stopped[0] == full[0] and stopped[2] == full[2]
    assert all(len(r) == 12 for r in full)  # the length limit holds


class _RowTagger:
    """A stateful processor: forces each row's own token at every step, so a row mix-up shows."""

    def __init__(self, forced):
        self.forced = list(forced)

    def select_rows(self, keep):
        self.forced = [self.forced[i] for i in keep]

    def __call__(self, input_ids, scores):
        scores = torch.full_like(scores, float("-inf"))
        scores[torch.arange(len(self.forced)), torch.tensor(self.forced)] = 0.0
        return scores


def test_stateful_processors_follow_the_rows_that_stay(tiny_llama):
    got = decode_batch(tiny_llama, _prompts([3, 5, 7, 4]), pad_id=0, max_new_tokens=6, eos_ids=[2],
                       processors=LogitsProcessorList([_RowTagger([10, 11, 12, 13])]),
                       ends=lambda row, new: row in (0, 2) and len(new) == 2)
    assert got == [[10, 10], [11] * 6, [12, 12], [13] * 6]


def test_sampling_is_seeded(tiny_llama):
    prompts = _prompts([5, 5])
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append(decode_batch(tiny_llama, prompts, pad_id=0, max_new_tokens=10, eos_ids=[2],
                                 warpers=sampling_warpers(1.0, 0.9)))
    assert runs[0] == runs[1]
    assert runs[0] != decode_batch(tiny_llama, prompts, pad_id=0, max_new_tokens=10, eos_ids=[2])  # it sampled


def test_batches_keep_prompts_with_the_same_demonstrations_together():
    demo_a, demo_b = [7] * PREFIX_KEY, [8] * PREFIX_KEY
    encoded = [demo_a + [1] * n for n in (3, 1, 2)] + [demo_b + [1] * n for n in (2, 5)] + [[9] * 4, [9, 3]]
    batches = similar_batches(encoded, batch_size=2)
    assert sorted(i for b in batches for i in b) == list(range(len(encoded)))  # every prompt once
    assert all(len(b) <= 2 for b in batches)
    for batch in batches:  # no batch mixes two demonstrations
        assert len({tuple(encoded[i][:PREFIX_KEY]) for i in batch}) == 1 or all(len(encoded[i]) < PREFIX_KEY
                                                                                 for i in batch)
    assert batches == [[1, 2], [0], [3, 4], [6, 5]]  # shortest first within a group


def test_nothing_to_generate_is_no_completions_rather_than_a_tokenizer_error(tiny_llama):
    """A teacher whose drafts all fail the filter leaves generation an empty list (tests/test_real_models.py hit
    this in CI: the fast tokenizer raises IndexError on an empty batch)."""
    from edge_tailor.generation import generate

    class RefusesEmptyBatches:
        def __call__(self, texts, **kwargs):
            raise AssertionError("the tokenizer was called with " + repr(texts))

    assert generate(tiny_llama, RefusesEmptyBatches(), [], max_new_tokens=4) == []
