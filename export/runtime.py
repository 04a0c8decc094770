"""Edge runtime: decode an edge-tailor bundle with onnxruntime, numpy and tokenizers only.

This file is self-contained on purpose (no torch, no transformers, no edge_tailor imports):
every bundle carries a copy as ``edge_runtime.py``, and a factory device needs only
``pip install onnxruntime numpy tokenizers`` to run it::

    python edge_runtime.py BUNDLE --prompt "Order 12 ..." --max-new-tokens 32

From Python::

    model = EdgeModel.load("bundle/")           # session options from bundle/target.toml
    out = model.generate("Order 12 ...", max_new_tokens=32)
    out.text, out.tokens, out.ttft_ms, out.per_token_ms

Loading a bundle first checks its files (``verify_files``): ``manifest.sha256`` against
``manifest.json``, every listed file's sha256, and no unlisted file anywhere; a mismatch raises
``BundleError`` naming the file (the command line prints it as one ``error:`` line, exit code 2).
``--no-verify`` / ``verify=False`` skips it, for devices that verify once at install; a model or
tokenizer file that will not load is still a ``BundleError`` naming it, never a traceback.

A request that cannot run as asked raises ``RequestError`` (a ``ValueError``; exit code 2 on the command
line) before any work: ``max_new_tokens`` below 1, a temperature or ``top_p`` out of range, an empty
prompt, or a prompt whose tokens plus ``max_new_tokens`` exceed the model's context
(``max_position_embeddings`` in its config.json). ``truncate="left"`` (``--truncate left``) keeps the
prompt's last tokens that fit instead (a chat template's opening is then cut with the rest). A prompt
longer than the context times the tokenizer's longest token, in characters, cannot fit at all: it is
refused (or, with ``truncate="left"``, cut to that many characters) before it is tokenized.

The loop keeps the KV cache inside ONNX Runtime: each step's ``present.*`` outputs are bound
as the next step's ``past_key_values.*`` inputs (IOBinding, no copy through numpy), and the
decode logits land in one preallocated buffer. A graph whose attention is ONNX Runtime's
``GroupQueryAttention`` (metadata ``edge_tailor.kv_cache = shared``, from the exporter's attention
fusion) gets one cache buffer per layer, sized for prompt plus new tokens and bound once as both
past and present: the operator appends each step's keys and values in place, with no per-step
concatenation or re-binding.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

_OPT_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
             "tensor(int32)": np.int32}
_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_KV_CACHE_META = "edge_tailor.kv_cache"  # "shared": past and present may be one preallocated buffer
MANIFEST = "manifest.json"
# how the toolkit rendered prompts for this model (edge_tailor.prompt_format): {mode, bos, prefix, suffix};
# a folder without it takes prompts as they are, tokenized with the tokenizer's defaults
PROMPT_FORMAT = "prompt_format.json"
MANIFEST_SHA = "manifest.sha256"  # "<hex>  manifest.json\n", as sha256sum writes it; written last
# base64 of an Ed25519 signature over manifest.json's bytes (`tailor sign`), detached: signing changes no
# other file, and a bundle without it is unsigned; checked only against a public key the caller gives
MANIFEST_SIG = "manifest.sig"
SEALS = (MANIFEST, MANIFEST_SHA, MANIFEST_SIG)  # the files the manifest cannot list: they cover it
_CHUNK = 1 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# (new tokens of each row so far, scores [batch, vocab]) -> scores
LogitsProcessor = Callable[[list[list[int]], np.ndarray], np.ndarray]

_EQUATION_TAIL = re.compile(r"(\d+)\s*([+\-*/x])\s*(\d+)\s*=\s?(-?\d*)$")
_FINAL_TAIL = re.compile(r"####\s(-?\d*)$")
_RESULT = re.compile(r"=\s*(-?\d+)")


def evaluate_op(a: int, op: str, b: int) -> int | None:
    """Exact integer result of ``a op b``; None for a division that does not come out even."""
    if op in "*x":
        return a * b
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "/" and b != 0 and a % b == 0:
        return a // b
    return None


def calculator_next(text: str) -> str | None:
    """What a calculator still has to write at the end of ``text``, or None to let the model choose.

    After ``a op b=`` it is the result (minus the digits already written); after ``#### `` it is the
    last result computed. Stateless, so one instance serves every row and batch.
    """
    match = _EQUATION_TAIL.search(text)
    if match:
        result = evaluate_op(int(match.group(1)), match.group(2), int(match.group(3)))
        written = match.group(4)
        if result is not None and str(result).startswith(written) and str(result) != written:
            return str(result)[len(written):]
        return None
    match = _FINAL_TAIL.search(text)
    if match:
        found = _RESULT.findall(text[:match.start()])
        if found and found[-1].startswith(match.group(1)) and found[-1] != match.group(1):
            return found[-1][len(match.group(1)):]
    return None


def result_complete(text: str) -> bool:
    """Whether ``text`` ends with a whole calculator result (after ``a op b=`` or ``#### ``): a digit may not
    follow it, or ``4*2=8`` could become ``4*2=87``."""
    match = _EQUATION_TAIL.search(text)
    if match:
        result = evaluate_op(int(match.group(1)), match.group(2), int(match.group(3)))
        return result is not None and match.group(4) == str(result)
    match = _FINAL_TAIL.search(text)
    if match:
        found = _RESULT.findall(text[:match.start()])
        return bool(found) and match.group(1) == found[-1]
    return False


def glued_digit_ids(decode: Callable[[list[int]], str], vocab_size: int) -> np.ndarray:
    """Token ids whose text starts with a digit: the tokens that would lengthen a number just written."""
    return np.array([i for i in range(vocab_size) if decode([i])[:1].isdigit()], dtype=np.int64)


class Calculator:
    """A decode-time calculator for ``EdgeModel``: writes the results of the model's own equations.

    The model decides whether and which equation to write; this tool only fills in ``r`` after
    ``a op b=`` and the final answer after ``#### ``, as GSM8K's ``<<a*b=c>>`` annotations were
    filled, and lets no digit follow a whole result. A bundle records in its manifest whether its
    student was trained and scored this way.
    """

    def __init__(self, model: "EdgeModel"):
        self.model = model
        self._digits: np.ndarray | None = None

    def __call__(self, new: list[list[int]], scores: np.ndarray) -> np.ndarray:
        for row, tokens in enumerate(new):
            text = self.model.decode(tokens)
            remaining = calculator_next(text)
            if remaining:
                forced = self.model.encode(remaining)[0]
                scores[row, :] = -np.inf
                scores[row, forced] = 0.0
            elif result_complete(text):
                if self._digits is None:
                    self._digits = glued_digit_ids(self.model.decode, scores.shape[-1])
                scores[row, self._digits] = -np.inf
        return scores


class BundleError(RuntimeError):
    """A bundle file that fails verification or will not load: changed, missing, unlisted, a bad manifest."""

    def __init__(self, path: Path, where: str | None, problem: str):
        self.path, self.where, self.problem = Path(path), where, problem
        super().__init__(f"{path}: {where}: {problem}" if where else f"{path}: {problem}")


class RequestError(ValueError):
    """A generation request the runtime refuses before running it: an argument out of range, or a prompt
    that does not fit the model's context. ``where`` names the argument."""

    def __init__(self, where: str, problem: str):
        self.where, self.problem = where, problem
        super().__init__(f"{where}: {problem}")


TRUNCATE = ("error", "left")  # what a prompt too long for the context gets: refused, or its oldest tokens cut


def check_request(max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                  truncate: str = "error") -> None:
    """The arguments of a generation request, in range; ``RequestError`` otherwise."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise RequestError("max_new_tokens", f"{max_new_tokens!r}: must be a whole number of at least 1")
    if not (isinstance(temperature, (int, float)) and 0 <= temperature < float("inf")):
        raise RequestError("temperature", f"{temperature!r}: must be a finite number >= 0 (0 = greedy)")
    if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise RequestError("top_p", f"{top_p!r}: must lie in (0, 1]")
    if truncate not in TRUNCATE:
        raise RequestError("truncate", f"{truncate!r}: must be one of {', '.join(TRUNCATE)}")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def load_public_key(path: str | Path):
    """An Ed25519 public key from a PEM file (``tailor keygen`` writes one); ``BundleError`` naming the file."""
    path = Path(path)
    try:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        from cryptography.hazmat.primitives.serialization import load_pem_public_key
    except ImportError:
        raise BundleError(path, None, "checking a signature needs the cryptography package "
                                      "(pip install cryptography)") from None
    try:
        key = load_pem_public_key(path.read_bytes())
    except OSError as e:
        raise BundleError(path, None, f"cannot read the public key: {e.strerror}") from None
    except ValueError:
        raise BundleError(path, None, "not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(path, None, f"not an Ed25519 public key ({type(key).__name__})")
    return key


def check_signature(bundle: Path, manifest_bytes: bytes, public_key: str | Path) -> None:
    """``manifest.sig`` must be a signature of ``manifest_bytes`` under ``public_key``; BundleError otherwise."""
    import base64
    import binascii

    key = load_public_key(public_key)  # first: it says so when cryptography is not installed
    from cryptography.exceptions import InvalidSignature

    sig_path = bundle / MANIFEST_SIG
    if sig_path.is_symlink() or not sig_path.is_file():
        raise BundleError(sig_path, None, "missing: the bundle is not signed (tailor sign BUNDLE --key KEY)")
    try:
        signature = base64.b64decode(sig_path.read_text(encoding="ascii", errors="replace").strip(), validate=True)
        key.verify(signature, manifest_bytes)
    except (binascii.Error, InvalidSignature):
        raise BundleError(bundle / MANIFEST, "signature", f"does not match {MANIFEST_SIG} under {public_key}: "
                                                          "changed after signing, or signed with another key") from None


def _plain_file_inside(bundle: Path, path: Path) -> None:
    """A bundle holds plain files only: a symbolic link could point anywhere, and its target is not covered
    by the hash of what it pointed to when it was checked."""
    if path.is_symlink():
        raise BundleError(path, None, f"a symbolic link (to {os.readlink(path)}): a bundle holds plain files only")
    if not path.resolve().is_relative_to(bundle.resolve()):
        raise BundleError(path, None, "resolves outside the bundle")


def verify_files(bundle: str | Path, digest: str | None = None,
                 public_key: str | Path | None = None) -> tuple[str, dict]:
    """Check a bundle's files; return (sha256 of manifest.json, the parsed manifest).

    ``manifest.sha256`` must hold the hash of ``manifest.json`` (and ``digest``, when given, must
    equal it: a digest pinned outside the bundle also catches a manifest rewritten together with
    its sha file); with ``public_key`` (a PEM file), ``manifest.sig`` must be its Ed25519 signature of
    manifest.json; every file listed in the manifest must exist, as a plain file inside the bundle (no
    symbolic link), with its sha256; any other file, ``__pycache__/`` included, is refused. Raises
    ``BundleError`` naming the file.
    """
    bundle = Path(bundle)
    manifest_path, sha_path = bundle / MANIFEST, bundle / MANIFEST_SHA
    if not bundle.is_dir():
        raise BundleError(bundle, None, "no such bundle folder")
    if not manifest_path.is_file():
        raise BundleError(manifest_path, None, "missing: not a bundle, or bundling did not finish")
    if not sha_path.is_file():
        raise BundleError(sha_path, None, "missing: bundling did not finish, or the bundle predates it: rebuild it")
    for seal in SEALS:
        if (bundle / seal).is_symlink():
            _plain_file_inside(bundle, bundle / seal)
    raw = manifest_path.read_bytes()
    actual = hashlib.sha256(raw).hexdigest()
    fields = sha_path.read_text(encoding="utf-8", errors="replace").split()
    if len(fields) != 2 or not _HEX64.match(fields[0]) or fields[1].lstrip("*") != MANIFEST:
        raise BundleError(sha_path, None, f"not a sha256sum line for {MANIFEST} ('<64 hex digits>  {MANIFEST}')")
    if fields[0] != actual:
        raise BundleError(manifest_path, "sha256", f"hash mismatch: {MANIFEST_SHA} says {fields[0][:16]}..., "
                                                   f"file is {actual[:16]}... (changed after bundling)")
    if digest is not None and digest.strip().lower() != actual:
        raise BundleError(manifest_path, "sha256", f"digest {actual} is not the pinned {digest.strip().lower()}")
    if public_key is not None:
        check_signature(bundle, raw, public_key)
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(manifest_path, None, f"not valid JSON: {e}") from None
    listed = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(listed, dict):
        raise BundleError(manifest_path, "files", "missing: no file list")

    for name in listed:
        parts = Path(name).parts
        if not parts or Path(name).is_absolute() or ".." in parts or name in SEALS:
            raise BundleError(manifest_path, "files", f"{name!r} is not a file inside the bundle")
    for root, dirs, files in os.walk(bundle):  # symlinked folders are not followed: they count as entries
        for entry in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            path = Path(root, entry)
            name = path.relative_to(bundle).as_posix()
            if os.path.islink(path):
                _plain_file_inside(bundle, path)
            if name in listed or name in SEALS:
                continue
            if "__pycache__" in path.relative_to(bundle).parts:
                raise BundleError(path, None, "not listed in manifest.json: __pycache__/ appears when edge_runtime.py "
                                              "is imported from inside the bundle; delete it, or import with `python -B`")
            raise BundleError(path, None, "not listed in manifest.json (added after bundling)")
    for name, entry in listed.items():
        path = bundle / name
        if not path.is_file():
            raise BundleError(path, None, "missing: listed in manifest.json")
        _plain_file_inside(bundle, path)  # a symlinked folder above it, too
        expected = entry.get("sha256") if isinstance(entry, dict) else None
        found = sha256_file(path)
        if found != expected:
            raise BundleError(path, "sha256", f"hash mismatch: manifest says {str(expected)[:16]}..., "
                                              f"file is {found[:16]}... (changed after bundling)")
    return actual, manifest


@dataclass(frozen=True)
class RuntimeSettings:
    """The ``[runtime]`` block of a target file; ONNX Runtime's defaults where a bundle has none."""

    execution_provider: str = "CPUExecutionProvider"
    intra_op_threads: int = 0  # 0: ONNX Runtime picks (one per physical core)
    inter_op_threads: int = 1
    allow_spinning: bool = True
    graph_optimization: str = "all"

    @classmethod
    def from_target_file(cls, path: Path) -> RuntimeSettings:
        try:
            runtime = tomllib.loads(path.read_text(encoding="utf-8")).get("runtime", {})
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise BundleError(path, None, f"not a valid target file: {e}") from None
        known = {k: runtime[k] for k in cls.__dataclass_fields__ if k in runtime}
        for key, value in known.items():
            if type(value) is not type(getattr(cls, key)):
                raise BundleError(path, f"runtime.{key}", f"{value!r}: expected {type(getattr(cls, key)).__name__}")
        if known.get("graph_optimization", cls.graph_optimization) not in _OPT_LEVELS:
            raise BundleError(path, "runtime.graph_optimization", f"must be one of {', '.join(_OPT_LEVELS)}")
        return cls(**known)

    def session_options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = self.inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = _OPT_LEVELS[self.graph_optimization]
        # Spinning keeps worker threads hot between the many small per-token kernels (measured
        # ~1.5 ms/token); targets turn it off where busy-waiting heats or steals the CPU.
        spin = "1" if self.allow_spinning else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        options.add_session_config_entry("session.inter_op.allow_spinning", spin)
        return options


@dataclass
class GenerationResult:
    tokens: list[int]  # new tokens only, stop token excluded
    text: str
    ttft_ms: float  # prompt in, first new token chosen (the prefill pass)
    per_token_ms: list[float] = field(default_factory=list)  # each later token, one decode step each
    stop_reason: str = "length"  # "eos", "stop" (a stop token or string) or "length"
    prompt_tokens: int = 0


class EdgeModel:
    def __init__(self, session: ort.InferenceSession, tokenizer: Tokenizer, eos_ids: Sequence[int], pad_id: int,
                 settings: RuntimeSettings, prompt_format: dict | None = None, context: int | None = None):
        self.session = session
        self.context = context  # prompt + new tokens at most (max_position_embeddings); None: unknown, unchecked
        self._longest_token: int | None = None
        self.prompt_format = prompt_format  # PROMPT_FORMAT's contents; None: prompts as they are
        self.tokenizer = tokenizer
        self.eos_ids = list(eos_ids)
        self.pad_id = pad_id
        self.settings = settings
        inputs = {i.name: i for i in session.get_inputs()}
        self.past_names = sorted((n for n in inputs if _PAST.match(n)),
                                 key=lambda n: (int(_PAST.match(n)[1]), _PAST.match(n)[2]))
        if not self.past_names or "input_ids" not in inputs:
            raise ValueError("the model has no past_key_values inputs: export it with task text-generation-with-past")
        self.present_names = [n.replace("past_key_values", "present") for n in self.past_names]
        first = inputs[self.past_names[0]]
        self.kv_heads, self.head_dim = first.shape[1], first.shape[3]
        self.kv_dtype = _NP_TYPES[first.type]
        self.has_position_ids = "position_ids" in inputs
        logits = next(o for o in session.get_outputs() if o.name == "logits")
        self.vocab_size = logits.shape[-1]
        self.logits_dtype = _NP_TYPES[logits.type]
        self.shared_kv = session.get_modelmeta().custom_metadata_map.get(_KV_CACHE_META) == "shared"

    @classmethod
    def load(cls, bundle_dir: str | Path, threads: int | None = None, provider: str | None = None,
             model_file: str = "model.onnx", verify: bool | None = None,
             public_key: str | Path | None = None) -> EdgeModel:
        """Open a bundle (or any Optimum ONNX export folder with tokenizer.json).

        ``verify``: None checks the files (``verify_files``) when the folder has a manifest.json
        (a bundle), True requires a bundle that passes, False skips the check. ``public_key`` (a PEM
        file) also requires ``manifest.sig`` to be its signature of the manifest, and implies the check.
        """
        bundle = Path(bundle_dir)
        if public_key is not None or verify or (verify is None and (bundle / MANIFEST).is_file()):
            _, manifest = verify_files(bundle, public_key=public_key)
            if model_file not in manifest["files"]:
                raise BundleError(bundle / model_file, None, "not listed in manifest.json: not a model of this bundle")
        target = bundle / "target.toml"
        settings = RuntimeSettings.from_target_file(target) if target.is_file() else RuntimeSettings()
        if threads is not None:
            settings = dataclasses.replace(settings, intra_op_threads=threads)
        if provider is not None:
            settings = dataclasses.replace(settings, execution_provider=provider)
        if settings.intra_op_threads < 0:
            raise RequestError("threads", f"{settings.intra_op_threads}: must be >= 0 (0 = one per physical core)")
        available = ort.get_available_providers()
        if settings.execution_provider not in available:
            raise BundleError(bundle, None, f"execution provider {settings.execution_provider} is not available in "
                              f"this onnxruntime (available: {', '.join(available)})")
        session = _open(bundle / model_file, lambda path: ort.InferenceSession(
            str(path), sess_options=settings.session_options(), providers=[settings.execution_provider]))
        tokenizer = _open(bundle / "tokenizer.json", lambda path: Tokenizer.from_file(str(path)))
        tokenizer.no_padding()
        tokenizer.no_truncation()
        eos_ids, pad_id = _special_ids(bundle, tokenizer)
        try:
            return cls(session, tokenizer, eos_ids, pad_id, settings, _prompt_format(bundle), _context_length(bundle))
        except (ValueError, KeyError, IndexError) as e:  # a graph without the decoder's inputs and outputs
            raise BundleError(bundle / model_file, None, f"not a decoder this runtime can drive: {e}") from None

    def encode(self, text: str) -> list[int]:
        """Text as it is, with the tokenizer's own special tokens."""
        return self.tokenizer.encode(text).ids

    def render(self, prompt: str) -> str:
        """The prompt as the toolkit showed it to this model in training (chat template, BOS once)."""
        f = self.prompt_format
        if f is None:
            return prompt
        user, _, answer = prompt.partition("\x1e")  # edge_tailor.prompt_format.ANSWER_START: opens the reply
        return f"{f['bos']}{f['prefix']}{user}{f['suffix']}{answer}"

    def encode_prompt(self, prompt: str) -> list[int]:
        """A prompt's ids: rendered, then tokenized with no special tokens added (the rendering holds them)."""
        if self.prompt_format is None:
            return self.encode(prompt)
        return self.tokenizer.encode(self.render(prompt), add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def generate(self, prompt_or_ids: str | Sequence[int], max_new_tokens: int = 32, temperature: float = 0.0,
                 top_p: float = 1.0, stop: Sequence[int | str] | None = None, seed: int = 0,
                 logits_processor: LogitsProcessor | None = None, truncate: str = "error") -> GenerationResult:
        """Greedy decoding at ``temperature=0``, else sampling with temperature and nucleus ``top_p``.

        ``stop`` holds extra stop token ids and/or stop strings; the eos ids always stop (a stop
        string is cut from ``text``; its tokens stay in ``tokens``). ``logits_processor(new_tokens,
        scores)`` may rewrite each step's ``[batch, vocab]`` scores before the choice (decode-time tools).
        ``truncate``: what a prompt too long for the context gets (``TRUNCATE``; the module's docstring).
        """
        check_request(max_new_tokens, temperature, top_p, truncate)
        ids = self._prompt_ids(prompt_or_ids, max_new_tokens, truncate)
        rng = np.random.default_rng(seed)
        pick = _greedy if temperature <= 0 else (lambda logits: _sample(logits, temperature, top_p, rng))
        return self._decode([ids], max_new_tokens, pick, stop, logits_processor)[0]

    def generate_batch(self, prompts: Sequence[str | Sequence[int]], max_new_tokens: int = 32,
                       stop: Sequence[int | str] | None = None, batch_size: int = 16,
                       logits_processor: LogitsProcessor | None = None) -> list[GenerationResult]:
        """Greedy decoding of many prompts, left-padded in batches of similar length (for scoring a test split).

        Results come back in the order of ``prompts``; timings are per batch. A ``logits_processor``
        sees the rows of one batch, in that batch's order.
        """
        check_request(max_new_tokens)
        rows = [self._prompt_ids(p, max_new_tokens) for p in prompts]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        results: list[GenerationResult | None] = [None] * len(rows)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = self._decode([rows[i] for i in chunk], max_new_tokens, _greedy, stop, logits_processor)
            for i, result in zip(chunk, batch):
                results[i] = result
        return results  # type: ignore[return-value]

    @property
    def max_prompt_chars(self) -> int | None:
        """Characters beyond which no prompt fits the context: the context times the longest token's length."""
        if self.context is None:
            return None
        if self._longest_token is None:
            self._longest_token = max(map(len, self.tokenizer.get_vocab(with_added_tokens=True)), default=1)
        return self.context * max(1, self._longest_token)

    def _prompt_ids(self, prompt: str | Sequence[int], max_new_tokens: int, truncate: str = "error") -> list[int]:
        """A prompt's ids, checked against the context (cut from the left with ``truncate="left"``)."""
        if isinstance(prompt, str):
            limit = self.max_prompt_chars
            if limit is not None and len(prompt) > limit:
                if truncate != "left":
                    raise RequestError("prompt", f"{len(prompt)} characters cannot fit the context of {self.context} "
                                       f"tokens (at most {limit} characters); shorten it, or truncate it from the left")
                prompt = prompt[-limit:]
            ids = self.encode_prompt(prompt)
        else:
            ids = [int(i) for i in prompt]
        if not ids:
            raise RequestError("prompt", "empty: nothing to condition on")
        if self.context is None or len(ids) + max_new_tokens <= self.context:
            return ids
        room = self.context - max_new_tokens
        if truncate != "left" or room < 1:
            raise RequestError("prompt", f"{len(ids)} prompt tokens + {max_new_tokens} new tokens exceed the context "
                               f"of {self.context} tokens; shorten the prompt, lower max_new_tokens"
                               + (", or truncate the prompt from the left" if room >= 1 else ""))
        return ids[-room:]

    def _decode(self, rows: list[list[int]], max_new_tokens: int, pick, stop,
                processor: LogitsProcessor | None = None) -> list[GenerationResult]:
        check_request(max_new_tokens)
        if any(not r for r in rows):
            raise RequestError("prompt", "empty: nothing to condition on")
        stop_ids = set(self.eos_ids) | {s for s in stop or () if isinstance(s, int)}
        stop_strings = [s for s in stop or () if isinstance(s, str)]
        batch, width = len(rows), max(len(r) for r in rows)
        input_ids, mask, binding, past = self._start(rows, max_new_tokens)
        prefill_logits = np.empty((batch, width, self.vocab_size), dtype=self.logits_dtype)
        step_logits = np.empty((batch, 1, self.vocab_size), dtype=self.logits_dtype)

        new = [[] for _ in rows]
        reasons = ["length"] * batch
        done = np.zeros(batch, dtype=bool)
        times: list[float] = []
        step_ids = input_ids
        for step in range(max_new_tokens):
            t0 = time.perf_counter()
            logits_buf = prefill_logits if step == 0 else step_logits
            past = self._run(binding, step_ids, mask, past, logits_buf)
            scores = logits_buf[:, -1, :]
            chosen = pick(processor(new, scores.copy()) if processor else scores)
            for b in np.flatnonzero(~done):
                token = int(chosen[b])
                if token in stop_ids:
                    done[b], reasons[b] = True, "eos" if token in self.eos_ids else "stop"
                    continue
                new[b].append(token)
                if stop_strings and any(s in self.decode(new[b]) for s in stop_strings):
                    done[b], reasons[b] = True, "stop"
            times.append((time.perf_counter() - t0) * 1000)
            if done.all():
                break
            # Finished rows keep feeding the pad id (attended, as Hugging Face generate does):
            # rows never see each other, so this only keeps the batch rectangular.
            step_ids = np.where(done, self.pad_id, chosen).astype(np.int64)[:, None]
            mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)

        results = []
        for b, r in enumerate(rows):
            text = self.decode(new[b])
            for s in stop_strings:
                if s in text:
                    text = text[:text.index(s)]
            results.append(GenerationResult(new[b], text, times[0], times[1:], reasons[b], len(r)))
        return results

    def _start(self, rows: list[list[int]], max_new_tokens: int):
        """Left-padded ids and mask, an IOBinding, and the empty KV cache (preallocated when shared)."""
        batch, width = len(rows), max(len(r) for r in rows)
        input_ids = np.full((batch, width), self.pad_id, dtype=np.int64)
        mask = np.zeros((batch, width), dtype=np.int64)
        for b, r in enumerate(rows):
            input_ids[b, width - len(r):] = r
            mask[b, width - len(r):] = 1
        binding = self.session.io_binding()
        if self.shared_kv:
            past = None  # bound once: every step reads and extends the same buffers
            shape = [batch, self.kv_heads, width + max_new_tokens, self.head_dim]
            for name, present in zip(self.past_names, self.present_names):
                cache = ort.OrtValue.ortvalue_from_shape_and_type(shape, self.kv_dtype, "cpu", 0)
                binding.bind_ortvalue_input(name, cache)
                binding.bind_ortvalue_output(present, cache)
        else:
            empty = np.zeros((batch, self.kv_heads, 0, self.head_dim), dtype=self.kv_dtype)
            past = {name: ort.OrtValue.ortvalue_from_numpy(empty) for name in self.past_names}
        return input_ids, mask, binding, past

    def prefill_logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits ``[len(ids), vocab]`` of one pass over ``ids`` from an empty cache (teacher-forced scoring)."""
        input_ids, mask, binding, past = self._start([list(ids)], 0)
        logits = np.empty((1, len(ids), self.vocab_size), dtype=self.logits_dtype)
        self._run(binding, input_ids, mask, past, logits)
        return logits[0]

    def _run(self, binding: ort.IOBinding, step_ids: np.ndarray, mask: np.ndarray, past: dict | None,
             logits_buf: np.ndarray) -> dict | None:
        binding.bind_cpu_input("input_ids", step_ids)
        binding.bind_cpu_input("attention_mask", mask)
        if self.has_position_ids:
            # Hugging Face's rule for left padding: count real tokens; padded slots get 1 (never attended).
            if step_ids.shape[1] == 1:  # a decode step: the count so far (a finished row's pad is attended)
                positions = mask.sum(axis=1, keepdims=True) - 1
            else:
                positions = np.cumsum(mask, axis=1) - 1
                positions[mask == 0] = 1
                positions = np.ascontiguousarray(positions[:, -step_ids.shape[1]:])
            binding.bind_cpu_input("position_ids", positions)
        if past is None:  # shared cache: only the logits buffer changes (prompt, then one token)
            binding.bind_output("logits", "cpu", 0, logits_buf.dtype, list(logits_buf.shape), logits_buf.ctypes.data)
            self.session.run_with_iobinding(binding)
            return None
        for name, value in past.items():
            binding.bind_ortvalue_input(name, value)
        binding.clear_binding_outputs()
        binding.bind_output("logits", "cpu", 0, logits_buf.dtype, list(logits_buf.shape), logits_buf.ctypes.data)
        for name in self.present_names:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        presents = binding.get_outputs()[1:]
        return dict(zip(self.past_names, presents))


def _greedy(logits: np.ndarray) -> np.ndarray:
    return np.argmax(logits, axis=-1)


def _sample(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> np.ndarray:
    scaled = logits.astype(np.float64) / temperature
    probs = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    out = np.empty(len(probs), dtype=np.int64)
    for b, p in enumerate(probs):
        order = np.argsort(-p, kind="stable")
        cumulative = np.cumsum(p[order])
        # keep the smallest prefix whose mass reaches top_p (always at least the top token)
        keep = order[: int(np.searchsorted(cumulative, top_p)) + 1] if top_p < 1 else order
        kept = p[keep] / p[keep].sum()
        out[b] = keep[rng.choice(len(keep), p=kept)]
    return out


def _open(path: Path, load: Callable[[Path], object]):
    """``load(path)``, or a BundleError naming the file: a missing, truncated or corrupt model or tokenizer file."""
    if not path.is_file():
        raise BundleError(path, None, "missing")
    try:
        return load(path)
    except Exception as e:  # onnxruntime and tokenizers raise their own types (InvalidProtobuf, Exception)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BundleError(path, None, f"cannot be loaded: {reason[:300]}") from None


def _context_length(bundle: Path) -> int | None:
    """The model's context (config.json's max_position_embeddings); None where the folder does not say."""
    path = bundle / "config.json"
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("max_position_embeddings")
    except (ValueError, UnicodeDecodeError, AttributeError) as e:
        raise BundleError(path, None, f"not a JSON object: {e}") from None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _prompt_format(bundle: Path) -> dict | None:
    path = bundle / PROMPT_FORMAT
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise BundleError(path, None, f"not JSON: {e}") from None
    if not isinstance(data, dict) or data.get("mode") not in ("chat", "plain") or \
            not all(isinstance(data.get(k), str) for k in ("bos", "prefix", "suffix")):
        raise BundleError(path, "mode", "must be {mode: chat|plain, bos, prefix, suffix} (strings)")
    return data


def _special_ids(bundle: Path, tokenizer: Tokenizer) -> tuple[list[int], int]:
    def read(name: str) -> dict:
        path = bundle / name
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise BundleError(path, None, f"not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise BundleError(path, None, "not a JSON object")
        return data

    generation, config, tok_config = read("generation_config.json"), read("config.json"), read("tokenizer_config.json")

    def token_id(value) -> int | None:
        if isinstance(value, dict):
            value = value.get("content")
        return tokenizer.token_to_id(value) if isinstance(value, str) else None

    eos = generation.get("eos_token_id", config.get("eos_token_id"))
    if eos is None:
        eos = token_id(tok_config.get("eos_token"))
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    pad = generation.get("pad_token_id", config.get("pad_token_id"))
    if pad is None:
        pad = token_id(tok_config.get("pad_token"))
    if pad is None:
        pad = eos_ids[0] if eos_ids else 0
    return eos_ids, int(pad)


def bundle_uses_calculator(bundle: str | Path) -> bool:
    """Whether the bundle's student decodes with the calculator (``manifest.json`` ``decoding``)."""
    manifest = Path(bundle) / MANIFEST
    if not manifest.is_file():
        return False
    return bool(json.loads(manifest.read_text()).get("decoding", {}).get("calculator", False))



def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run an edge-tailor bundle (onnxruntime + numpy + tokenizers). "
                                                 "The bundle's files are checked against its manifest first: "
                                                 "a bad one stops with exit code 2.")
    parser.add_argument("bundle", help="the bundle folder")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
    parser.add_argument("--threads", type=int, default=None, help="override the target's intra_op_threads")
    parser.add_argument("--provider", default=None, help="override the target's execution provider")
    parser.add_argument("--model-file", default="model.onnx")
    parser.add_argument("--calculator", choices=("auto", "on", "off"), default="auto",
                        help="fill in the results of the model's equations (auto: as the bundle's manifest says)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--raw-prompt", action="store_true",
                        help="send --prompt as it is, without the bundle's prompt format (chat template, BOS)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the sha256 check of the bundle's files (for devices that verify once at install)")
    parser.add_argument("--public-key", metavar="PEM",
                        help="also require manifest.sig to be this Ed25519 key's signature of manifest.json "
                             "(`tailor sign`; needs the cryptography package); implies the file check")
    parser.add_argument("--truncate", choices=TRUNCATE, default="error",
                        help="a prompt whose tokens plus --max-new-tokens exceed the model's context: error (exit 2, "
                             "the default) or left (keep its last tokens that fit)")
    args = parser.parse_args(argv)
    try:
        out = _run_cli(args)
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RequestError as e:  # named by its flag: --max-new-tokens, --prompt, ...
        print(f"error: --{e.where.replace('_', '-')}: {e.problem}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(out.__dict__))
    else:
        print(out.text)
        per_token = float(np.median(out.per_token_ms)) if out.per_token_ms else float("nan")
        print(f"[{len(out.tokens)} tokens, stop: {out.stop_reason}, ttft {out.ttft_ms:.1f} ms, "
              f"{per_token:.2f} ms/token median]", file=sys.stderr)
    return 0


def _run_cli(args: argparse.Namespace) -> GenerationResult:
    check_request(args.max_new_tokens, args.temperature, args.top_p, args.truncate)  # before the model loads
    model = EdgeModel.load(args.bundle, threads=args.threads, provider=args.provider, model_file=args.model_file,
                           verify=not args.no_verify, public_key=args.public_key)
    use_calculator = bundle_uses_calculator(args.bundle) if args.calculator == "auto" else args.calculator == "on"
    if args.raw_prompt:
        model.prompt_format = None
    return model.generate(args.prompt, args.max_new_tokens, args.temperature, args.top_p, args.stop, args.seed,
                          logits_processor=Calculator(model) if use_calculator else None, truncate=args.truncate)


if __name__ == "__main__":
    sys.exit(main())
