"""One batch of prompts decoded with a KV cache, dropping each row from the batch as soon as it ends.

`model.generate` keeps every row of a batch in every forward pass until the longest row ends: on SmolLM2 and a
BBH test batch of 32, the median completion was 12 tokens and four rows ran to the 160-token limit, so most
of the decode computed rows that had already ended (a CPU is compute-bound at that batch size). Here a row
leaves the batch, and its slice of the KV cache (`DynamicCache.batch_select_indices`) is dropped, at its end
of sequence or its first stop string. transformers' continuous batching (paged attention, a scheduler thread)
is experimental in the pinned 4.57 and takes no logits processors, hence this loop.

Greedy rows decode exactly what `model.generate` decodes (tests/test_decoding.py); sampling applies
generate's own warpers in its order (temperature, top-k 50 as in a default GenerationConfig, top-p).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from transformers import DynamicCache, LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, \
    TopPLogitsWarper
from transformers.cache_utils import DynamicLayer

DEFAULT_TOP_K = 50  # transformers' GenerationConfig default, which every model loaded here keeps


def sampling_warpers(temperature: float, top_p: float) -> LogitsProcessorList:
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature), TopKLogitsWarper(DEFAULT_TOP_K)])
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers


def _select(processors: LogitsProcessorList, keep: list[int]) -> None:
    """Processors that keep state per row (edge_tailor.generation.ArithmeticTools) follow the rows that stay."""
    for processor in processors:
        if hasattr(processor, "select_rows"):
            processor.select_rows(keep)


class ReservedLayer(DynamicLayer):
    """A cache layer that writes into a buffer reserved for the whole decode. DynamicLayer concatenates its
    keys and values at every token: at 16 rows of 600-token few-shot prompts on SmolLM2 that copy was half of
    each decode step (aten::cat 51% of CPU time); with the buffer a step took 164 ms instead of 332."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0

    def lazy_initialization(self, key_states: torch.Tensor):
        super().lazy_initialization(key_states)
        rows, heads, _, dim = key_states.shape
        self.key_buffer = key_states.new_empty((rows, heads, self.capacity, dim))
        self.value_buffer = key_states.new_empty((rows, heads, self.capacity, dim))

    def _views(self):
        self.keys = self.key_buffer[:, :, :self.length]
        self.values = self.value_buffer[:, :, :self.length]
        return self.keys, self.values

    def update(self, key_states, value_states, cache_kwargs=None):
        if not self.is_initialized:
            self.lazy_initialization(key_states)
        n = key_states.shape[-2]
        self.key_buffer[:, :, self.length:self.length + n] = key_states
        self.value_buffer[:, :, self.length:self.length + n] = value_states
        self.length += n
        return self._views()

    def get_seq_length(self) -> int:
        return self.length

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.key_buffer = self.key_buffer.repeat_interleave(repeats, dim=0)
        self.value_buffer = self.value_buffer.repeat_interleave(repeats, dim=0)
        self._views()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
        self._views()


def reserved_cache(capacity: int) -> DynamicCache:
    """A DynamicCache whose layers are ReservedLayers of `capacity` tokens."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = lambda: ReservedLayer(capacity)
    return cache


MIN_SHARED_PREFIX = 16  # tokens: below this, a second prefill pass costs more than it saves


def shared_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """Tokens every prompt starts with, leaving each prompt at least one token of its own."""
    if len(prompts) < 2:
        return 0
    first, shortest = prompts[0], min(len(p) for p in prompts)
    n = 0
    while n < shortest - 1 and all(p[n] == first[n] for p in prompts):
        n += 1
    return n if n >= MIN_SHARED_PREFIX else 0


def _prefill(model, prompts: Sequence[Sequence[int]], pad_id: int, device, max_new_tokens: int) -> tuple:
    """Run the prompts into a KV cache: a prefix they share (the few-shot demonstrations every prompt of a
    stage starts with) once, at batch 1, then each prompt's own tokens, padded between prefix and suffix."""
    cache = reserved_cache(max(map(len, prompts)) + max_new_tokens)
    shared = shared_prefix_length(prompts)
    suffixes = [list(p[shared:]) for p in prompts]
    width = max(len(s) for s in suffixes)
    ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in suffixes], device=device)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in suffixes], device=device)
    if shared:
        prefix = torch.tensor([list(prompts[0][:shared])], device=device)
        model(input_ids=prefix, past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache.batch_repeat_interleave(len(prompts))
        mask = torch.cat([mask.new_ones((len(prompts), shared)), mask], dim=1)
        ids = torch.cat([prefix.expand(len(prompts), -1), ids], dim=1)
    # positions count a row's own tokens: pads between prefix and suffix are masked out and not counted
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
    out = model(input_ids=ids[:, shared:], attention_mask=mask, position_ids=positions[:, shared:],
                past_key_values=cache, use_cache=True, logits_to_keep=1)
    return out, cache, ids, mask, positions[:, -1:]


@torch.no_grad()
def decode_batch(model, prompts: Sequence[Sequence[int]], *, pad_id: int, max_new_tokens: int,
                 eos_ids: Sequence[int], processors: LogitsProcessorList | None = None,
                 warpers: LogitsProcessorList | None = None,
                 ends: Callable[[int, list[int]], bool] | None = None) -> list[list[int]]:
    """New token ids for each prompt (end-of-sequence tokens not included).

    `warpers` given: sample from them; otherwise greedy. `ends(row, new_ids)` says whether a row has reached a
    stop string (checked after each token it writes). Processors see each row as its prompt, left-padded to
    the longest prompt, followed by its new tokens."""
    processors = processors if processors is not None else LogitsProcessorList()
    device = next(model.parameters()).device
    rows = list(range(len(prompts)))  # the original row of each row still in the batch
    new: list[list[int]] = [[] for _ in rows]
    eos = torch.tensor(sorted(set(eos_ids)), device=device)
    out, cache, sequences, mask, last = _prefill(model, prompts, pad_id, device, max_new_tokens)
    for step in range(max_new_tokens):
        scores = processors(sequences, out.logits[:, -1, :].float())
        if warpers is not None:
            probs = torch.softmax(warpers(sequences, scores), dim=-1)
            tokens = torch.multinomial(probs, num_samples=1).squeeze(1)
        else:
            tokens = scores.argmax(dim=-1)
        ended = torch.isin(tokens, eos).tolist()
        keep = []
        for i, (row, token) in enumerate(zip(rows, tokens.tolist())):
            if not ended[i]:
                new[row].append(token)
                if ends is None or not ends(row, new[row]):
                    keep.append(i)
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(rows):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            sequences, mask, tokens, last = sequences[index], mask[index], tokens[index], last[index]
            rows = [rows[i] for i in keep]
            _select(processors, keep)
        sequences = torch.cat([sequences, tokens[:, None]], dim=1)
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        last = last + 1
        out = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=last, past_key_values=cache,
                    use_cache=True)
    return new
