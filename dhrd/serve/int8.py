"""int8 for CPU serving: every Linear of the decoder as torch's dynamic int8 Linear
(int8 weights, one scale per output channel), stored as plain tensors so the lean
directory stays safetensors. Embeddings, norms and the head stay float32."""

from __future__ import annotations

import torch
from torch import nn

_SCALE, _ZERO = ".weight_scale", ".weight_zero_point"


INT8_SCHEME = "int8-dynamic-per-channel"


def quantize_int8(module: nn.Module) -> nn.Module:
    """A copy with every Linear as torch's dynamic int8 Linear (int8 weights with one
    scale per output channel; activations quantised per batch at run time): the CPU
    serving option. Embeddings and norms stay float32."""
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        return quantize_dynamic(module.float(), {nn.Linear: per_channel_dynamic_qconfig},
                                dtype=torch.qint8, inplace=False)


def _int8_linears(module: nn.Module) -> dict[str, nn.Module]:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return {n: m for n, m in module.named_modules() if isinstance(m, DynamicLinear)}


def int8_tensors(qmodule: nn.Module) -> dict[str, torch.Tensor]:
    """The state of a :func:`quantize_int8` module as plain tensors for safetensors: per
    quantised Linear ``weight`` (int8), ``weight_scale``, ``weight_zero_point`` and
    ``bias``; every other tensor as it is."""
    linears = _int8_linears(qmodule)
    out = {k: v for k, v in qmodule.state_dict().items() if k.rpartition(".")[0].removesuffix("._packed_params")
           not in linears}
    for name, lin in linears.items():
        weight, bias = lin._weight_bias()
        out[name + ".weight"] = weight.int_repr()
        scale, zero = weight.q_per_channel_scales(), weight.q_per_channel_zero_points()
        # torch hands out float64/int64; the observer computed float32 scales and int8
        # zero points, so the narrow types store them without loss
        out[name + _SCALE] = scale.float() if torch.equal(scale.float().double(), scale) else scale
        out[name + _ZERO] = zero.to(torch.int8)
        if bias is not None:
            out[name + ".bias"] = bias
    return {k: v.detach().contiguous() for k, v in out.items()}


def load_int8(module: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Put :func:`int8_tensors` back into a float32 module of the same architecture: the
    Linear layers they quantised become dynamic int8 Linear layers. Raises naming the
    tensors that do not fit."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    tensors = dict(tensors)
    names = [k[: -len(_SCALE)] for k in tensors if k.endswith(_SCALE)]
    if not names:
        raise ValueError(f"{source}: no int8 weights (no '*{_SCALE}' tensors)")
    orphans = [k for k in tensors if k.endswith(_ZERO) and k[: -len(_ZERO)] not in names]
    if orphans:
        raise ValueError(f"{source}: int8 layer {orphans[0][: -len(_ZERO)]!r} lacks tensor "
                         f"{orphans[0][: -len(_ZERO)] + _SCALE!r}")
    linears, quantised = {}, {}
    for name in names:
        try:
            linears[name] = module.get_submodule(name)
        except AttributeError:
            linears[name] = None
        if not isinstance(linears[name], nn.Linear):
            raise ValueError(f"{source}: int8 weight {name!r} is not a Linear layer of {type(module).__name__}")
        try:
            quantised[name] = [tensors.pop(name + k) for k in (".weight", _SCALE, _ZERO)]
        except KeyError as e:
            raise ValueError(f"{source}: int8 layer {name!r} lacks tensor {e.args[0]!r}") from None
        quantised[name].append(tensors.pop(name + ".bias", None))
    # the float tensors first, while the Linear layers are still float (their int8
    # counterparts refuse a partial state dict)
    missing, unexpected = module.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if k.rpartition(".")[0] not in linears]
    if missing or unexpected:
        raise ValueError(f"{source}: int8 weights do not match the architecture: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    for name, (int_repr, scale, zero, bias) in quantised.items():
        lin = linears[name]
        q = DynamicLinear(lin.in_features, lin.out_features, bias_=lin.bias is not None, dtype=torch.qint8)
        q.set_weight_bias(torch._make_per_channel_quantized_tensor(int_repr, scale.double(), zero.long(), 0), bias)
        parent, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, child, q)
    return module
