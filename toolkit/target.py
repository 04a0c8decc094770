"""Device targets: ``targets/<name>.toml``, the single source of truth for one device.

A target names the runtime and its threads, the one quantization scheme that both QAT
(``distill``) and the exporter use, the benchmark shapes and the budgets the gate checks.
Every budget is an upper bound: a run passes it when ``measured <= limit``.
The files are the data package ``edge_tailor.targets``; this module is ``edge_tailor.target``.

Usage::

    t = load_target("ci-x86")  # a shipped name, or a path to a .toml file
    t.quant.weights.dtype, t.runtime.intra_op_threads, t.budgets.items()
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from edge_tailor.errors import InputError


class _Section(BaseModel):
    # strict: TOML is typed, so "2" for an int or 1 for a bool is a mistake, not a conversion.
    # allow_inf_nan: `inf` is a TOML float, and an infinite budget or scale is never meant.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


MAX_THREADS = 1024  # threads or processes, here and in a run config: more than any device has cores (a typo
# such as 100000 would start that many)


class TargetInfo(_Section):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str
    arch: Literal["x86_64", "arm64"]
    cpu: str
    # The integer-kernel class of the device's CPU (edge_tailor.hostcpu): the INT8 scheme below must be
    # exact on it, and figures measured on a host with another kernel are labelled as such.
    isa: Literal["avx2", "avx512", "avx_vnni", "avx512_vnni", "amx", "neon", "dotprod", "i8mm"]

    @model_validator(mode="after")
    def _isa_fits_arch(self) -> TargetInfo:
        from edge_tailor.hostcpu import ISA_ARCH

        if ISA_ARCH[self.isa] != self.arch:
            raise ValueError(f'isa = "{self.isa}" is an {ISA_ARCH[self.isa]} instruction set, but arch = "{self.arch}"')
        return self


class Runtime(_Section):
    engine: Literal["onnxruntime"]
    execution_provider: str
    intra_op_threads: int = Field(ge=1, le=MAX_THREADS)
    inter_op_threads: int = Field(ge=1, le=MAX_THREADS)
    allow_spinning: bool
    graph_optimization: Literal["all", "extended", "basic", "disabled"]


class WeightQuant(_Section):
    dtype: Literal["int8", "int4", "uint8"]
    symmetric: bool
    granularity: Literal["per_channel", "per_tensor", "per_group"]
    group_size: int | None = Field(default=None, ge=1, validate_default=True)

    @field_validator("group_size")
    @classmethod
    def _group_size_iff_per_group(cls, v: int | None, info: ValidationInfo) -> int | None:
        per_group = info.data.get("granularity") == "per_group"
        if per_group and v is None:
            raise ValueError('required when granularity = "per_group"')
        if not per_group and v is not None:
            raise ValueError('only meaningful when granularity = "per_group"')
        return v


class ActivationQuant(_Section):
    dtype: Literal["int8", "uint8", "none"]  # "none": weight-only quantization
    symmetric: bool
    granularity: Literal["per_token", "per_tensor"]
    mode: Literal["dynamic", "static"]
    calibration_samples: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> ActivationQuant:
        static = self.mode == "static"
        if static and self.dtype == "none":
            raise ValueError('mode = "static" calibrates activations, but dtype = "none" leaves them in float')
        if static and self.calibration_samples is None:
            raise ValueError('mode = "static" needs calibration_samples')
        if not static and self.calibration_samples is not None:
            raise ValueError('calibration_samples is only used with mode = "static"')
        if static and self.granularity == "per_token":
            raise ValueError('static scales are fixed at calibration, so granularity must be "per_tensor"')
        if not static and self.dtype != "none" and self.symmetric:
            # ONNX Runtime's dynamic path (DynamicQuantizeLinear) only computes asymmetric scales;
            # QAT must not simulate numbers the exporter cannot produce.
            raise ValueError('mode = "dynamic" activations are asymmetric in ONNX Runtime; set symmetric = false')
        return self


class WeightOnlyBlocks(_Section):
    """ONNX Runtime ``MatMulNBits``: block-wise weight-only quantization."""

    enabled: bool
    bits: Literal[4, 8]
    block_size: int = Field(ge=16)
    accuracy_level: int = Field(ge=0, le=4)

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError("MatMulNBits needs a power of two")
        return v


class Quant(_Section):
    weights: WeightQuant
    activations: ActivationQuant
    ort_preset: Literal["avx2", "avx512_vnni", "arm64"] | None = None
    reduce_range: bool = False
    quantize_lm_head: bool
    weight_only_blocks: WeightOnlyBlocks | None = None
    fallback_fp32_nodes: list[str] = []

    @model_validator(mode="after")
    def _consistent(self) -> Quant:
        w, blocks = self.weights, self.weight_only_blocks
        if w.dtype == "int4":
            if blocks is None or not blocks.enabled or blocks.bits != 4:
                raise ValueError('weights.dtype = "int4" ships as MatMulNBits: needs weight_only_blocks enabled with bits = 4')
            if w.granularity != "per_group" or w.group_size != blocks.block_size:
                raise ValueError('weights.dtype = "int4" needs granularity = "per_group" with group_size = weight_only_blocks.block_size')
        if self.reduce_range and w.dtype == "int4":
            raise ValueError("reduce_range applies to 8-bit weights only")
        return self

    @property
    def weight_bits(self) -> int:
        """Bits QAT must simulate: ``reduce_range`` quantizes 8-bit weights to 7 bits."""
        return 4 if self.weights.dtype == "int4" else 7 if self.reduce_range else 8


class ExportGraph(_Section):
    """Which decoder graph ships (edge_tailor.export.fusion)."""

    attention: Literal["fused", "unfused"]


class Bench(_Section):
    prompt_tokens: int = Field(ge=1)
    new_tokens: int = Field(ge=1)
    batch: int = Field(ge=1)
    warmup: int = Field(ge=0)
    repeats: int = Field(ge=1)


class Budget(NamedTuple):
    name: str
    limit: float
    kind: Literal["absolute", "relative"]
    unit: str


_UNITS = {"ms_per_token_p50": "ms", "ms_per_token_p95": "ms", "ttft_ms": "ms", "peak_rss_mb": "MiB",
          "model_mb": "MiB", "model_bytes_per_param": "bytes/param", "max_top1_disagreement": "fraction", "max_mean_kl": "nats", "max_accuracy_drop": "fraction", "ms_per_token_vs_torch_fp32": "x PyTorch fp32"}


class RelativeBudgets(_Section):
    """Ratios measured interleaved in one run, so they hold on a shared, noisy CI machine."""

    ms_per_token_vs_torch_fp32: float | None = Field(default=None, gt=0)


class Budgets(_Section):
    ms_per_token_p50: float | None = Field(default=None, gt=0)
    ms_per_token_p95: float | None = Field(default=None, gt=0)
    ttft_ms: float | None = Field(default=None, gt=0)
    peak_rss_mb: float | None = Field(default=None, gt=0)
    model_mb: float | None = Field(default=None, gt=0)
    # the shipped file over the student's parameter count: a limit that holds for a 1M and a 1B student
    # alike (INT8 weights with an fp32 embedding ~1.9; an fp32 file 4)
    model_bytes_per_param: float | None = Field(default=None, gt=0)
    max_accuracy_drop: float | None = Field(default=None, ge=0, le=1)
    # fidelity of the shipped file to the fp32 graph on held-out positions (edge_tailor.export.fidelity)
    max_top1_disagreement: float | None = Field(default=None, ge=0, le=1)
    max_mean_kl: float | None = Field(default=None, gt=0)
    relative: RelativeBudgets = RelativeBudgets()

    @model_validator(mode="after")
    def _not_empty(self) -> Budgets:
        if not self.items():
            raise ValueError("a target needs at least one budget")
        return self

    def items(self) -> list[Budget]:
        """The budgets that are set, absolute ones first, in file order."""
        out = []
        for kind, section in (("absolute", self), ("relative", self.relative)):
            for name, value in section:
                if isinstance(value, (int, float)):
                    out.append(Budget(name, float(value), kind, _UNITS[name]))
        return out


class Target(_Section):
    target: TargetInfo
    runtime: Runtime
    quant: Quant
    export: ExportGraph
    bench: Bench
    budgets: Budgets

    @model_validator(mode="after")
    def _scheme_exact_on_device(self) -> Target:
        from edge_tailor.hostcpu import NON_SATURATING, scheme_exact_on

        if not scheme_exact_on(self.quant, self.target.arch, self.target.isa):
            raise ValueError(f'quant.reduce_range: u8 x s8 with full-range 8-bit weights saturates on isa = "{self.target.isa}" '
                             f"(VPMADDUBSW adds two products in 16 bits), so ONNX Runtime would not compute what QAT "
                             f"simulates: set reduce_range = true, or give a VNNI-class isa ({', '.join(NON_SATURATING)})")
        return self

    @property
    def name(self) -> str:
        return self.target.name


BUNDLED_NAME = "target.toml"  # a bundle's (and an export folder's) copy of its target file


def list_targets() -> list[str]:
    """Names of the targets shipped in ``edge_tailor.targets``."""
    return sorted(p.name[:-5] for p in resources.files("edge_tailor.targets").iterdir() if p.name.endswith(".toml"))


def target_path(name_or_path: str | Path) -> Path:
    """The file behind a shipped target name (``"ci-x86"``) or a path (the bundle ships a copy)."""
    path = Path(name_or_path)
    if path.suffix != ".toml" and path.parent == Path("."):
        known = list_targets()
        if str(name_or_path) not in known:
            raise InputError(name_or_path, None, f"unknown target; shipped targets: {', '.join(known)} (or give a path to a .toml file)")
        path = Path(str(resources.files("edge_tailor.targets") / f"{name_or_path}.toml"))
    if not path.is_file():
        raise InputError(path, None, "no such target file")
    return path


def load_target(name_or_path: str | Path) -> Target:
    """Load a shipped target by name (``"ci-x86"``) or a target file by path."""
    path = target_path(name_or_path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(path, None, "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        problem = re.sub(r"\s*\(at .*\)$", "", str(e))
        where = f"line {m[1]}" if m else "end of file"
        raise InputError(path, where, f"TOML syntax error: {problem}" + (f" (column {m[2]})" if m else "")) from None
    try:
        target = Target.model_validate(data)
    except ValidationError as e:
        raise _schema_error(path, e) from None
    # `--target NAME` finds a file by its name; a bundle ships its copy as target.toml
    if path.stem != target.name and path.name != BUNDLED_NAME:
        raise InputError(path, "target.name", f"'{target.name}' differs from the file name '{path.stem}': "
                                              f"rename the file to {target.name}.toml or set name = \"{path.stem}\"")
    return target


def target_hash(target: Target) -> str:
    """sha256 of the target's values (comments and layout of the file do not count)."""
    blob = json.dumps(target.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def format_budgets(target: Target) -> list[tuple[str, str]]:
    """``(name, "<= limit unit (kind)")`` rows for ``tailor targets`` and reports."""
    rows = []
    for b in target.budgets.items():
        unit = "" if b.unit == "fraction" else f" {b.unit}"
        rows.append((b.name, f"<= {b.limit:g}{unit} ({b.kind})"))
    return rows


def _schema_error(path: Path, e: ValidationError) -> InputError:
    err = e.errors()[0]
    loc = err["loc"]
    where = ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in loc).replace(".[", "[") or None
    if err["type"] == "extra_forbidden":
        allowed = _fields_at(loc[:-1])
        problem = "unknown field" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
    elif err["type"] == "missing":
        problem = "required field is missing"
    else:
        problem = err["msg"].removeprefix("Value error, ")
        if err["type"] != "value_error" and not isinstance(err.get("input"), dict):
            problem += f" (got {err['input']!r})"
    more = len(e.errors()) - 1
    return InputError(path, where, problem + (f" (and {more} more error{'s' * (more > 1)})" if more else ""))


def _fields_at(loc: tuple) -> list[str]:
    model: type[BaseModel] = Target
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return []
        ann = field.annotation
        args = typing.get_args(ann) if isinstance(ann, types.UnionType) or typing.get_origin(ann) is typing.Union else (ann,)
        model = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return []
    return list(model.model_fields)
