"""The CPU proxy's pre-trained trunk: from a recorded run to a ResNet state dict ``model.pretrained`` loads.

The paper fine-tunes an ImageNet ResNet50; the proxy cannot download one, so ``make pretrain``
trains its slim trunk on a large synthetic set of identities drawn with another seed (plain
identity classification with a global-only model, ``configs/pretrain.yaml``) and this module
keeps the trunk: layers 0-3 (the shared stem) and the global branch's layer 4, under the key
names of a torchvision/timm ResNet, so :func:`canlib.backbone.load_resnet_state_dict` reads it
like any local ImageNet file. The run's record (configuration, run record, log, metrics) is
copied beside the weights, so the trunk's provenance is as checkable as any reported run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from canlib.engine.checkpoint import checkpoint_path
from canlib.engine.record import copy_record
from canlib.engine.weights import model_from_checkpoint, read_run_config
from canlib.model import CAN

log = logging.getLogger(__name__)


def trunk_state_dict(model: CAN, branch: str = "part1") -> dict[str, torch.Tensor]:
    """The ResNet trunk of ``model`` (stem + ``branch``'s layer 4) with ResNet key names (no ``fc``)."""
    if branch not in model.branches:
        raise ValueError(f"the model has no branch {branch!r}; it has {sorted(model.branches)}")
    state = {f"{k}": v for k, v in model.stem.state_dict().items()}
    layer4 = model.branches[branch].get_submodule("layer4")
    state.update({f"layer4.{k}": v for k, v in layer4.state_dict().items()})
    return {k: v.detach().clone().float() if v.is_floating_point() else v.clone() for k, v in state.items()}


def export_trunk(run_dir: str | Path, out: str | Path) -> Path:
    """Write the trunk of a finished run to ``out`` and copy the run's record beside it (``out``'s stem + ``/``).

    For a generated (synthetic) training set, ``dataset.json`` beside the record holds the
    generator's arguments and counts, so the identities' seed can be checked against any
    evaluation set's."""
    run_dir, out = Path(run_dir), Path(out)
    cfg = read_run_config(run_dir)
    if not (run_dir / "metrics.json").is_file():
        raise FileNotFoundError(f"{run_dir} has no metrics.json: the pre-training run has not finished")
    model, _ = model_from_checkpoint(cfg, checkpoint_path(run_dir))
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(trunk_state_dict(model), out)
    record_dir = copy_record(run_dir, out.with_suffix(""))
    meta = Path(str(cfg["data"]["root"])) / "meta.json"
    if meta.is_file():  # a generated set: how to regenerate it, and its counts (not its file lists)
        data = json.loads(meta.read_text())
        (record_dir / "dataset.json").write_text(
            json.dumps({k: data[k] for k in ("generator", "version", "arguments", "statistics")}, indent=1) + "\n"
        )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    log.info("trunk of %s (mAP %.3f on its own held-out identities) written to %s", run_dir, metrics["mAP"], out)
    return out
