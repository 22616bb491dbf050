"""Controls for the CPU proxy (issue 21): what the pre-trained trunk scores alone, without fine-tuning.

The paper fine-tunes an ImageNet trunk that is poor at re-ID until trained on it. A proxy whose
trunk alone already scores most of the fine-tuned mAP does not test what the paper's training
does, so the proxy is judged by this control: the trunk's layer-4 map of the global branch, max-
and average-pooled and concatenated (no embedding, no classifier, no training), evaluated on the
test split and on validation splits drawn as the decisions draw them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from canlib.config import DataSection, RunSections
from canlib.data import build_test_loaders, load_dataset
from canlib.data.base import ReIDDataset
from canlib.engine.build import build_model, validation_split
from canlib.engine.evaluate import evaluate_model, evaluation_options
from canlib.engine.record import run_record
from canlib.model import CAN

#: The validation folds of the decision runs (:data:`canlib.lab.decide.VALIDATION`: seed s draws fold s).
FOLDS = range(5)
#: The splits the control is measured on: the test split; 50 held-out training identities drawn as
#: the first decisions drew them (``ids``) and with distractors from training; and five folds of the
#: decisions' split (whole look-alike groups, 200 new gallery people), of which seeds 0-2 use 0-2.
SPLITS: dict[str, dict[str, Any] | None] = {
    "test": None,
    "validation (ids)": {"num_ids": 50, "seed": 0},
    "validation (groups, distractors)": {"num_ids": 50, "seed": 0, "groups": True, "like_test_gallery": True},
    **{f"validation fold {k}": {"num_ids": 50, "seed": k, "groups": True, "gallery_ids": 200} for k in FOLDS},
}


class TrunkDescriptor(nn.Module):
    """A Part-1 model's trunk as a descriptor: its layer-4 map, max- and average-pooled (2C values)."""

    def __init__(self, model: CAN) -> None:
        super().__init__()
        if list(model.parts) != [1]:
            raise ValueError(f"the trunk control reads a Part-1 model, got parts {list(model.parts)}")
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        (name, branch), *_ = self.model.named_branches()
        return branch.global_pool(self.model.feature_maps(x)[name]).flatten(1)


def _split(dataset: ReIDDataset, spec: Mapping[str, Any] | None, data: DataSection) -> ReIDDataset:
    if spec is None:
        return dataset
    section = dataclasses.replace(
        data,
        val_ids=spec["num_ids"],
        val_seed=spec["seed"],
        val_groups=bool(spec.get("groups")),
        val_gallery_ids=spec.get("gallery_ids", 0),
    )
    return validation_split(dataset, section, like_test_gallery=bool(spec.get("like_test_gallery")))


def trunk_only(
    cfg: Mapping[str, Any], device: str = "cpu", splits: Mapping[str, Mapping[str, Any] | None] = SPLITS
) -> dict[str, Any]:
    """The control's metrics on every split of ``splits``, with the run record of the measurement."""
    run = RunSections.from_config(cfg)
    model_section = dataclasses.replace(run.model, parts=(1,), collaborative=False)
    full = load_dataset(run.data.dataset, run.data.root, **run.data.options)
    torch.manual_seed(run.seed)
    trunk = TrunkDescriptor(build_model(model_section, full.num_train_pids)).eval()
    results = {}
    d = run.data
    for name, spec in splits.items():
        data = _split(full, spec, d)
        query, gallery = build_test_loaders(data, d.height, d.width, d.test_batch_size, d.num_workers, d.normalize)
        metrics = evaluate_model(trunk, query, gallery, torch.device(device), **evaluation_options(run.eval))
        results[name] = {"split": spec, **{k: v for k, v in metrics.items() if k != "cmc"}}
    return {
        "control": "trunk only",
        "config": run.config,
        "results": results,
        "record": run_record(dict(run.config), device),
    }


def write_trunk_only(cfg: Mapping[str, Any], out: str | Path, device: str = "cpu") -> dict[str, Any]:
    """Measure :func:`trunk_only` and write it as JSON to ``out``."""
    result = trunk_only(cfg, device)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=1) + "\n")
    return result
