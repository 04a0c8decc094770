"""Batched generation with optional arithmetic tools applied at decoding time.

Tools (both are logits processors, so any Hugging Face causal LM can use them):
- calculator: after the model writes `a op b=`, the correct result is written for it, the
  way GSM8K's sampling filled `<<a*b=c>>` annotations; after `#### ` the last result is
  written. The model still decides *whether* and *where* to compute.
- grounding: for tasks that can solve a question step by step (the embedded world), when
  the model starts a number inside its working (with the probability it gives to starting
  one), the next equation of the question's solution is written, and an answer given with
  no working gets the solution's result. Needed for a tiny teacher that cannot copy operands
  from the question or add; a real model needs only the calculator.
No library offers decode-time tool forcing for `generate`, hence this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList

# One calculator rule for training and the device: the edge runtime (export/runtime.py) must stay a
# single self-contained file (onnxruntime, numpy, tokenizers only) that a bundle ships, so it keeps
# the only implementation of `calculator_next` and the toolkit imports it from there, never the reverse.
from . import distributed
from .decoding import decode_batch, sampling_warpers
from .export.runtime import calculator_next, glued_digit_ids, result_complete
from .progress import track
from .prompt_format import render_all

_RESULT = re.compile(r"=\s*(-?\d+)")
_FINAL_TAG = "#### "
BATCH_SEED_STRIDE = 7919  # batch k samples from seed + k * this: no two batches of one call share a stream
PREFIX_KEY = 64  # tokens of a prompt that group it with the prompts sharing its demonstrations


@dataclass
class ToolSettings:
    calculator: bool = True
    grounding: bool = False


class ArithmeticTools(LogitsProcessor):
    """Force tool-written tokens into each row of a batched `generate` call."""

    def __init__(self, tokenizer, prompt_length: int, settings: ToolSettings,
                 solutions: Sequence[Sequence[str]] | None = None, sample: bool = True,
                 generator: torch.Generator | None = None):
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.settings = settings
        self.solutions = solutions
        self.sample = sample
        self.generator = generator
        vocab = tokenizer.get_vocab()
        self.digit_ids = torch.tensor(sorted({i for t, i in vocab.items()
                                              if tokenizer.convert_tokens_to_string([t]).strip().isdigit()}))
        self.glued_digits = torch.from_numpy(glued_digit_ids(
            lambda ids: tokenizer.decode(ids, skip_special_tokens=True), len(tokenizer)))
        self.queues: list[list[int]] = []
        self.used_steps: list[int] = []
        self.closed: list[bool] = []  # the tools just wrote a whole number: no digit may lengthen it

    def select_rows(self, keep: list[int]) -> None:
        """Rows that ended left the batch (edge_tailor.decoding): keep the state of those that stay."""
        if self.solutions is not None:
            self.solutions = [self.solutions[i] for i in keep]
        if self.queues:
            self.queues = [self.queues[i] for i in keep]
            self.used_steps = [self.used_steps[i] for i in keep]
            self.closed = [self.closed[i] for i in keep]

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _row_text(self, ids: torch.Tensor) -> str:
        return self.tokenizer.decode(ids[self.prompt_length:], skip_special_tokens=True)

    @staticmethod
    def _last_result(text: str) -> int | None:
        found = _RESULT.findall(text)
        return int(found[-1]) if found else None

    def _plan(self, row: int, text: str, scores: torch.Tensor) -> list[int] | None:
        """Tokens the tools write next for this row, or None to let the model choose."""
        if self.settings.calculator:
            remaining = calculator_next(text)
            if remaining:
                return self._encode(remaining)
        if self.settings.grounding and self.solutions is not None and text.endswith(_FINAL_TAG):
            # an answer with no working (terse): the grounded teacher knows the solution's result, as a strong
            # model answers an easy question directly; after written working the calculator already answered
            steps = self.solutions[row]
            last = self._last_result(steps[-1]) if steps else None
            return self._encode(str(last)) if last is not None and self._last_result(text) is None else None
        if self.settings.grounding and self.solutions is not None:
            prev = text[-1:] if text else " "
            if not prev.isdigit() and prev not in "=+-*/" and self._starts_number(scores):
                steps = self.solutions[row]
                if self.used_steps[row] < len(steps):
                    self.used_steps[row] += 1
                    return self._encode(steps[self.used_steps[row] - 1])
                last = self._last_result(text)
                if last is not None:
                    return self._encode(str(last))
        return None

    def _starts_number(self, scores: torch.Tensor) -> bool:
        probs = torch.softmax(scores.float(), dim=-1)
        if self.sample:
            p_digit = probs[self.digit_ids].sum()
            return bool(torch.rand((), generator=self.generator) < p_digit)
        return bool(torch.isin(probs.argmax(), self.digit_ids))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not self.queues:
            self.queues = [[] for _ in range(input_ids.shape[0])]
            self.used_steps = [0] * input_ids.shape[0]
            self.closed = [False] * input_ids.shape[0]
        for row in range(input_ids.shape[0]):
            text = None
            if not self.queues[row]:
                text = self._row_text(input_ids[row])
                planned = self._plan(row, text, scores[row])
                if planned:
                    self.queues[row] = planned
            if self.queues[row]:
                forced = self.queues[row].pop(0)
                scores[row] = torch.full_like(scores[row], float("-inf"))
                scores[row, forced] = 0.0
                self.closed[row] = not self.queues[row] and self.tokenizer.decode([forced])[-1:].isdigit()
            elif self.closed[row] or (self.settings.calculator and result_complete(text)):
                # the calculator's rule, as on the device (export/runtime.py): a whole result ends its number;
                # so does a number the grounding tool wrote
                scores[row, self.glued_digits] = float("-inf")
                self.closed[row] = False
        return scores


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
             top_p: float = 1.0, batch_size: int = 32, tools: ToolSettings | None = None,
             solutions: Sequence[Sequence[str]] | None = None, seed: int = 0,
             stop: Sequence[str] = (), description: str = "generating") -> list[str]:
    """Generate one completion per prompt (greedy when temperature is 0), in batches of similar length."""
    if not prompts:
        # a teacher that drafted no usable question leaves nothing to write; the tokenizer refuses an empty batch
        return []
    sample = temperature > 0
    # rendered once here for every stage (edge_tailor.prompt_format: chat template, BOS once)
    encoded = tokenizer(render_all(tokenizer, list(prompts)), add_special_tokens=False)["input_ids"]
    warpers = sampling_warpers(temperature, top_p) if sample else None
    ends = _stop_check(tokenizer, stop) if stop else None
    batches = similar_batches(encoded, batch_size)
    done = []
    # with several processes each decodes its share of the batches (edge_tailor.distributed); a batch's sampling
    # is seeded by its index, so the texts are the same whichever process, and however many, decode it
    share = distributed.mine(batches)
    for index, batch in track(share, description, total=len(share)):
        generator = torch.Generator().manual_seed(seed + BATCH_SEED_STRIDE * index)
        torch.manual_seed(seed + BATCH_SEED_STRIDE * index)
        processors = LogitsProcessorList()
        if tools and (tools.calculator or tools.grounding):
            rows = [solutions[i] for i in batch] if solutions is not None else None
            width = max(len(encoded[i]) for i in batch)
            processors.append(ArithmeticTools(tokenizer, width, tools, rows, sample, generator))
        new = decode_batch(model, [encoded[i] for i in batch], pad_id=tokenizer.pad_token_id,
                           max_new_tokens=max_new_tokens, eos_ids=[tokenizer.eos_token_id],
                           processors=processors, warpers=warpers, ends=ends)
        done.append((index, [cut_at_stop(tokenizer.decode(ids, skip_special_tokens=True), stop) for ids in new]))
    outputs: list[str] = [""] * len(prompts)
    for batch, texts in zip(batches, distributed.gather_in_order(done, len(batches))):
        for i, text in zip(batch, texts):
            outputs[i] = text
    return outputs


def similar_batches(encoded: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Prompt indices in batches: prompts that open with the same PREFIX_KEY tokens (the same demonstrations)
    batch together, so a batch shares its prefix's KV cache (edge_tailor.decoding), and by length, so a batch
    holds little padding."""
    keys = [tuple(ids[:PREFIX_KEY]) for ids in encoded]
    order = sorted(range(len(encoded)), key=lambda i: (keys[i], len(encoded[i])))
    groups: list[list[int]] = []
    for i in order:
        if groups and keys[groups[-1][0]] == keys[i]:
            groups[-1].append(i)
        else:
            groups.append([i])
    alone = sorted((g[0] for g in groups if len(g) == 1), key=lambda i: len(encoded[i]))
    runs = [g for g in groups if len(g) > 1] + ([alone] if alone else [])
    return [run[start:start + batch_size] for run in runs for start in range(0, len(run), batch_size)]


def _stop_check(tokenizer, stop: Sequence[str]):
    """Whether a row's newest tokens hold a stop string (a stop string spans a few tokens at most)."""
    tail = max(len(s) for s in stop) + 2

    def ends(row: int, ids: list[int]) -> bool:
        text = tokenizer.decode(ids[-tail:], skip_special_tokens=True)
        return any(s in text for s in stop)
    return ends


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """End a completion at its first stop string; a closing tag such as </ans> is kept."""
    for marker in stop:
        index = text.find(marker)
        if index >= 0:
            keep = marker if marker.strip() and not marker.startswith("\n") else ""
            text = text[:index] + keep
    return text
