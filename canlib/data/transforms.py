"""Image transforms (Section 4.5: "Each input image is resized to 384 x 128").

The paper mentions resizing only, so the paper-faithful default is resize + conversion
to a float tensor + ImageNet normalisation (the statistics of the backbone's
pre-training; the paper does not state it but every compared method does it). The
usual re-ID augmentations are options, all off by default: horizontal flip,
pad-and-random-crop, and random erasing (applied after normalisation, so the erased
rectangle is filled with 0, i.e. the ImageNet mean colour).
"""

from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode, v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_transforms(
    height: int = 384,
    width: int = 128,
    train: bool = True,
    flip: bool = False,
    pad: int = 0,
    random_erasing: float = 0.0,
    normalize: bool = True,
) -> v2.Compose:
    """PIL image -> float tensor ``(3, height, width)``; augmentations only when ``train``.

    ``flip``: random horizontal flip (p=0.5). ``pad``: pad by ``pad`` pixels (zeros) then
    crop ``height x width`` at random. ``random_erasing``: probability of erasing a random
    rectangle. ``normalize``: ImageNet mean/std.
    """
    steps: list[v2.Transform] = [
        v2.ToImage(),
        v2.Resize((height, width), interpolation=InterpolationMode.BILINEAR, antialias=True),
    ]
    if train and flip:
        steps.append(v2.RandomHorizontalFlip(0.5))
    if train and pad > 0:
        steps += [v2.Pad(pad), v2.RandomCrop((height, width))]
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if normalize:
        steps.append(v2.Normalize(IMAGENET_MEAN, IMAGENET_STD))
    if train and random_erasing > 0:
        steps.append(v2.RandomErasing(p=random_erasing, value=0))
    return v2.Compose(steps)
