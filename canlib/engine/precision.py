"""Mixed precision and memory format: which autocast dtype and layout a run uses on its device."""

from __future__ import annotations

from typing import Any

import torch

#: The values ``train.amp`` accepts (false/null/"none" mean "off").
AMP_MODES: tuple[Any, ...] = ("auto", "off", "fp16", "bf16", "none", False, None)
#: The values ``train.channels_last`` accepts ("auto": on for CUDA).
CHANNELS_LAST_MODES: tuple[Any, ...] = ("auto", True, False)


def amp_dtype(device: torch.device, setting: Any) -> torch.dtype | None:
    """bf16 autocast on CUDA when supported ("auto"), fp16 when asked; never on CPU by default."""
    if setting in (False, None, "off", "none"):
        return None
    if setting == "fp16":
        return torch.float16
    if setting == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def use_channels_last(device: torch.device, setting: Any) -> bool:
    """The channels-last memory format: on for CUDA ("auto"), or as set."""
    return (device.type == "cuda") if setting == "auto" else bool(setting)


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to ``dtype`` on ``device`` (``None``: full precision)."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def grad_scaler(dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """The loss scaler: active for fp16 only (bf16 and fp32 need none)."""
    return torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
