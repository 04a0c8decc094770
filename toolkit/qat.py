"""Quantization-aware training derived from the device target's quant block.

The same `[quant]` block drives the exporter, so the fake quantization here simulates the
numbers ONNX Runtime computes on the device: symmetric per-channel int8 weights (MatMulInteger's
s8 weights) and asymmetric dynamic int8 activations (DynamicQuantizeLinear's u8, the same
256-level grid shifted by 128). torchao's QAT does the fake quantization.
"""

from __future__ import annotations

import torch
from torchao.quantization import quantize_
from torchao.quantization.qat import IntxFakeQuantizeConfig, IntxFakeQuantizer, QATConfig

from .errors import InputError

_DTYPES = {8: torch.int8, 7: torch.int7, 4: torch.int4}


def fake_quant_configs(quant, source: str = "target") -> tuple[IntxFakeQuantizeConfig | None, IntxFakeQuantizeConfig]:
    """(activation, weight) fake-quantize configs for a target's `quant` block."""
    w = quant.weights
    dtype = _DTYPES[quant.weight_bits]
    if w.granularity == "per_group":
        weight = IntxFakeQuantizeConfig(dtype, group_size=w.group_size, is_symmetric=w.symmetric)
    else:
        weight = IntxFakeQuantizeConfig(dtype, w.granularity, is_symmetric=w.symmetric)
    a = quant.activations
    if a.dtype == "none":
        return None, weight
    if a.mode == "static":
        raise InputError(source, "quant.activations.mode",
                         "static activation scales are calibrated after training; QAT simulates dynamic ones only "
                         "(run with distill.qat=false, or use mode = \"dynamic\")")
    # uint8 asymmetric and int8 asymmetric are the same grid shifted by 128: simulate with int8.
    activation = IntxFakeQuantizeConfig(torch.int8, a.granularity, is_symmetric=a.symmetric)
    return activation, weight


class NarrowRangeWeightFakeQuantizer(IntxFakeQuantizer):
    """ONNX Runtime's symmetric weight grid: scale = max|w| / qmax over [-qmax, qmax] per output channel
    (qmax 127, or 64 with reduce_range).

    torchao 0.18's symmetric grid is max|w| / 127.5 over [-128, 127]; that 0.4% scale difference
    re-rounds many weights (measured: QAT then sat farther from ORT's INT8 logits than fp32 did).
    No torchao option sets a narrow range, hence this small subclass; activations stay torchao's.
    """

    def __init__(self, config: IntxFakeQuantizeConfig, qmax: int):
        super().__init__(config)
        self.qmax = qmax

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return w
        scale = w.abs().amax(dim=-1, keepdim=True).clamp(min=torch.finfo(w.dtype).tiny) / self.qmax
        quantized = torch.clamp(torch.round(w / scale), -self.qmax, self.qmax) * scale
        return w + (quantized - w).detach()  # straight-through: max-abs scaling never clips


def _ort_weight_grid(model: torch.nn.Module, quant) -> None:
    from torchao.quantization.qat.linear import FakeQuantizedLinear

    w = quant.weights
    if not (w.symmetric and w.granularity == "per_channel" and quant.weight_bits in (7, 8)):
        return
    qmax = 64 if quant.weight_bits == 7 else 127  # ORT: reduce_range symmetric int8 is [-64, 64]
    for module in model.modules():
        if isinstance(module, FakeQuantizedLinear) and module.weight_fake_quantizer is not None:
            module.weight_fake_quantizer = NarrowRangeWeightFakeQuantizer(module.weight_fake_quantizer.config, qmax)


def _linear_filter(include_head: bool):
    def keep(module: torch.nn.Module, fqn: str) -> bool:
        return isinstance(module, torch.nn.Linear) and (include_head or not fqn.endswith("lm_head"))
    return keep


def prepare_qat(model: torch.nn.Module, quant, source: str = "target") -> torch.nn.Module:
    """Swap linears for fake-quantized ones (in place). Do this *before* adding LoRA adapters."""
    activation, weight = fake_quant_configs(quant, source)
    # The head is fake-quantized exactly when the exporter quantizes it (a tied head stays tied:
    # the swapped module keeps the embedding's Parameter).
    quantize_(model, QATConfig(activation_config=activation, weight_config=weight, step="prepare"),
              filter_fn=_linear_filter(quant.quantize_lm_head))
    _ort_weight_grid(model, quant)
    return model


def convert_qat(model: torch.nn.Module) -> torch.nn.Module:
    """Remove the fake quantization: plain nn.Linear with the trained weights."""
    quantize_(model, QATConfig(step="convert"))
    return model


def count_fake_quantized(model: torch.nn.Module) -> int:
    from torchao.quantization.qat.linear import FakeQuantizedLinear

    return sum(isinstance(m, FakeQuantizedLinear) for m in model.modules())
