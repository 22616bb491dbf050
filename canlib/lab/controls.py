"""Controls for the CPU proxy: what the pre-trained trunk scores alone, without fine-tuning.

The paper fine-tunes an ImageNet trunk that is poor at re-ID until trained on it. A proxy whose
trunk alone already scores most of the fine-tuned mAP does not test what the paper's training
does, so the proxy is judged by this control: the trunk's layer-4 map of the global branch, max-
and average-pooled and concatenated (no embedding, no classifier, no training), evaluated on the
test split and on validation splits drawn as the decisions draw them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
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
from canlib.files import write_text_atomically
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


def splits_for(data: DataSection) -> dict[str, dict[str, Any] | None]:
    """:data:`SPLITS` with the user's ``data.val_ids`` and ``data.val_gallery_ids`` (when set) in place
    of their 50 held-out identities and 200 new gallery people."""
    out: dict[str, dict[str, Any] | None] = {}
    for name, spec in SPLITS.items():
        mine = None if spec is None else dict(spec)
        if mine is not None and data.val_ids:
            mine["num_ids"] = data.val_ids
        if mine is not None and data.val_gallery_ids and "gallery_ids" in mine:
            mine["gallery_ids"] = data.val_gallery_ids
        out[name] = mine
    return out


def check_validation_ids(val_ids: int, num_train_pids: int, root: Any) -> None:
    """Before anything is written: ``val_ids`` held-out identities leave at least two to train on
    (``ValueError`` naming ``data.val_ids``, the data set and what it allows)."""
    if not 0 < val_ids < num_train_pids - 1:
        allowed = f"from 1 to {num_train_pids - 2}" if num_train_pids > 2 else "none: the set is too small"
        raise ValueError(
            f"data.val_ids={val_ids} holds out more training identities than {root} has ({num_train_pids}): "
            f"pass data.val_ids=N with N {allowed}"
        )


def trunk_only(
    cfg: Mapping[str, Any], device: str = "cpu", splits: Mapping[str, Mapping[str, Any] | None] | None = None
) -> dict[str, Any]:
    """The control's metrics on every split of ``splits`` (default :func:`splits_for` the configuration),
    with the run record of the measurement; the data set's size is checked before any split is drawn."""
    run = RunSections.from_config(cfg)
    model_section = dataclasses.replace(run.model, parts=(1,), collaborative=False)
    full = load_dataset(run.data.dataset, run.data.root, **run.data.options)
    splits = splits_for(run.data) if splits is None else splits
    for spec in splits.values():
        if spec is not None:
            check_validation_ids(int(spec["num_ids"]), full.num_train_pids, run.data.root)
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


def write_trunk_only(
    cfg: Mapping[str, Any], out: str | Path, device: str = "cpu", names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Measure :func:`trunk_only` on the splits ``names`` (default: all of :func:`splits_for`) and write it
    whole to ``out`` as JSON (:func:`canlib.files.write_text_atomically`)."""
    splits = splits_for(RunSections.from_config(cfg).data)
    unknown = sorted(set(names or ()) - set(splits))
    if unknown:
        raise ValueError(f"unknown control split(s) {', '.join(unknown)}: the splits are {', '.join(splits)}")
    result = trunk_only(cfg, device, {k: v for k, v in splits.items() if names is None or k in names})
    write_text_atomically(out, json.dumps(result, indent=1) + "\n")
    return result
