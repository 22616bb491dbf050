"""Training throughput: CAN against a plain stride-1 ResNet50 at the same input, in one run.

For each model it times full training steps (forward, the losses, backward, Adam) on
random images and reports images/s and the achieved FLOP/s, where the FLOPs of one step
(forward + backward) are counted once with ``torch.utils.flop_counter.FlopCounterMode``.
The ratio CAN / baseline is printed last. Examples::

    python benchmarks/bench_throughput.py                       # CPU: 128x64, batch 16
    python benchmarks/bench_throughput.py --profile paper --device cuda --steps 50
        # the paper profile's settings on a GPU: 384x128, batch 32 (8x4), bf16, channels_last
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from canlib.backbone import build_backbone
from canlib.engine.build import resolve_device
from canlib.losses import CANLoss
from canlib.model import CAN, CANOutput


class StrideOneResNet(nn.Module):
    """The baseline: the same trunk with last stride 1, global average pooling, one cosine
    classifier (a BoT-style global-feature model)."""

    def __init__(self, num_classes: int, backbone: str = "resnet50", **backbone_kwargs) -> None:
        super().__init__()
        self.backbone = build_backbone(backbone, pretrained=None, last_stride=1, **backbone_kwargs)
        self.embed_dim = self.backbone.out_channels
        self.embed = nn.BatchNorm1d(self.embed_dim)
        self.weight = nn.Parameter(torch.randn(num_classes, self.backbone.out_channels) * 0.01)

    def forward(self, x: torch.Tensor) -> CANOutput:
        f = self.embed(self.backbone(x).mean(dim=(2, 3)))
        logits = nn.functional.normalize(f) @ nn.functional.normalize(self.weight).t()
        return CANOutput(f[:, None], logits[:, None])


def make_step(
    model: nn.Module,
    loss: CANLoss,
    amp_dtype: torch.dtype | None,
    device: torch.device,
    forward: Callable[[torch.Tensor], CANOutput] | None = None,
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One training step on a batch ``(x, y)``: forward under autocast (``amp_dtype``; ``None``: off),
    the CAN losses, backward, Adam (lr 3e-4) over the parameters of ``model`` and ``loss``.

    ``forward`` runs the forward pass instead of ``model`` (e.g. ``torch.compile(model)``).
    """
    opt = torch.optim.Adam(list(model.parameters()) + list(loss.parameters()), lr=3e-4)
    run = model if forward is None else forward

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = run(x)
        total, _ = loss(out.features.float(), out.logits.float(), y)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()

    return step


def measure(name: str, model: nn.Module, args, device, amp_dtype) -> dict:
    num_features = getattr(model, "num_features", 1)
    loss = CANLoss(
        num_classes=args.classes,
        feat_dim=model.embed_dim,
        num_features=num_features,
        global_indices=getattr(model, "global_indices", [0]),
        local_indices=getattr(model, "local_indices", []),
    ).to(device)
    model.to(device).train()
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    x = torch.randn(args.batch, 3, args.height, args.width, device=device).contiguous(memory_format=fmt)
    y = torch.arange(args.batch, device=device) // 4 % args.classes  # 4 images per id, as PK batches
    step = make_step(model, loss, amp_dtype, device)
    with FlopCounterMode(display=False) as counter:
        step(x, y)
    flops = counter.get_total_flops()
    for _ in range(args.warmup):
        step(x, y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step(x, y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    result = {
        "name": name,
        "img_s": args.batch / seconds,
        "flop_per_step": flops,
        "tflop_s": flops / seconds / 1e12,
        "params": sum(p.numel() for p in model.parameters()),
    }
    print(
        f"{name:<34} {result['img_s']:9.1f} img/s  {flops / 1e9:9.1f} GFLOP/step  "
        f"{result['tflop_s'] * 1e3:9.1f} GFLOP/s achieved  {result['params'] / 1e6:6.1f} M params",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--profile",
        choices=["cpu", "paper"],
        default="cpu",
        help="cpu: 128x64, batch 16, fp32; paper: 384x128, batch 32, bf16 + channels_last on CUDA",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--classes", type=int, default=751)
    parser.add_argument("--amp", choices=["off", "bf16", "fp16"])
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    args = parser.parse_args()
    device = resolve_device(args.device)
    paper = args.profile == "paper"
    args.height = args.height or (384 if paper else 128)
    args.width = args.width or (128 if paper else 64)
    args.batch = args.batch or (32 if paper else 16)
    if args.amp is None:
        args.amp = "bf16" if paper and device.type == "cuda" else "off"
    if args.channels_last is None:
        args.channels_last = paper and device.type == "cuda"
    amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    print(
        f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
        f"torch threads {torch.get_num_threads()}, input {args.height}x{args.width}, batch {args.batch}, "
        f"amp {args.amp}, channels_last {args.channels_last}, backbone {args.backbone}, steps {args.steps}"
    )
    torch.manual_seed(0)
    base = measure(
        f"{args.backbone} last-stride-1 (baseline)",
        StrideOneResNet(args.classes, args.backbone),
        args,
        device,
        amp_dtype,
    )
    can = measure("CAN parts 1,3,5,7 + CA", CAN(args.classes, backbone=args.backbone), args, device, amp_dtype)
    print(
        f"ratio CAN / baseline: throughput {can['img_s'] / base['img_s']:.3f}, "
        f"FLOPs per step {can['flop_per_step'] / base['flop_per_step']:.3f}, "
        f"achieved FLOP/s {can['tflop_s'] / base['tflop_s']:.3f}"
    )


if __name__ == "__main__":
    main()
