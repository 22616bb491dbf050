"""The CPU proxy's design: validation split, BNNeck keys, pre-trained trunk, decisions, geometry."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from canlib.config import RunSections, config_hash, load_config
from canlib.data import load_dataset
from canlib.data.split import hold_out_validation
from canlib.engine.build import build_dataset, build_loss, build_model
from canlib.lab import decide as decide_mod
from canlib.lab.pretrain import trunk_state_dict
from canlib.lab.rows import resolve
from canlib.model import CAN

ROOT = Path(__file__).resolve().parents[1]
CPU = ROOT / "configs" / "cpu.yaml"
SMOKE = ROOT / "configs" / "smoke.yaml"
PRETRAINED = ROOT / "results" / "pretrained"


def test_validation_split_shares_no_identity_with_training_or_test(tiny_data):
    full = load_dataset("synthetic", tiny_data)
    split = hold_out_validation(full, 3, seed=0)
    raw_train = {pid for _, pid, _ in full.train}  # relabelled 0..N-1; compare by path instead
    train_paths = {p for p, _, _ in split.train}
    val_paths = {p for p, _, _ in split.query + split.gallery}
    assert not train_paths & val_paths
    assert train_paths | val_paths == {p for p, _, _ in full.train}  # every training image is used once
    test_paths = {p for p, _, _ in full.query + full.gallery}
    assert not val_paths & test_paths and not train_paths & test_paths
    held = set(split.held_out_pids)
    assert len(held) == 3 and split.num_train_pids == len(raw_train) - 3
    assert {pid for _, pid, _ in split.query} <= held and {pid for _, pid, _ in split.gallery} == held
    # Market's protocol: every query has a gallery image of its identity from another camera.
    for _, pid, cam in split.query:
        assert any(g_pid == pid and g_cam != cam for _, g_pid, g_cam in split.gallery)
    # Deterministic in the seed; another seed holds out other identities.
    assert hold_out_validation(full, 3, seed=0).held_out_pids == split.held_out_pids
    assert hold_out_validation(full, 3, seed=1).held_out_pids != split.held_out_pids


def test_val_ids_key_makes_build_dataset_return_the_validation_split(tiny_data):
    cfg = load_config(SMOKE, [f"data.root={tiny_data}", "data.val_ids=3"])
    dataset = build_dataset(RunSections.from_config(cfg).data)
    test_paths = {p for p, _, _ in load_dataset("synthetic", tiny_data).gallery}
    assert not {p for p, _, _ in dataset.gallery} & test_paths
    with pytest.raises(ValueError, match="val_ids"):
        hold_out_validation(load_dataset("synthetic", tiny_data), 1000)


@pytest.mark.parametrize(
    "key, value",
    [("loss.clustering_input", "pre_bn"), ("model.embed_bn", "per_feature"), ("loss.triplet_squared", False)],
)
def test_each_neck_key_changes_what_the_losses_see(key, value, tiny_data):
    base = load_config(SMOKE, [f"data.root={tiny_data}"])
    changed = load_config(SMOKE, [f"data.root={tiny_data}", f"{key}={value}"])
    torch.manual_seed(0)
    x, pids = torch.randn(4, 3, 128, 64), torch.tensor([0, 0, 1, 1])
    terms = []
    for cfg in (base, changed):
        torch.manual_seed(0)
        run = RunSections.from_config(cfg)
        model = build_model(run.model, 4).train()
        loss = build_loss(run.loss, model, 4)
        out = model(x)
        terms.append(loss(out.features, out.logits, pids, pre_bn=out.pre_bn)[1])
    assert terms[0]["triplet"] != pytest.approx(terms[1]["triplet"], rel=1e-3)
    assert config_hash(base) != config_hash(changed)


def test_trunk_state_dict_loads_as_a_pretrained_backbone(tmp_path):
    kwargs = {"parts": (1,), "backbone": "timm:resnet18", "backbone_kwargs": {"channels": [8, 16, 24, 32]}}
    kwargs["layer3_stride"] = 1
    torch.manual_seed(0)
    source = CAN(20, **kwargs)
    path = tmp_path / "trunk.pt"
    torch.save(trunk_state_dict(source), path)
    target = CAN(7, **{**kwargs, "parts": (1, 3)}, pretrained=path)
    for name, tensor in source.stem.state_dict().items():
        assert torch.equal(target.stem.state_dict()[name], tensor), name
    for branch in target.branches.values():  # every branch's layer 4 starts from the trunk's
        for name, tensor in source.branches["part1"].layer4.state_dict().items():
            assert torch.equal(branch.layer4.state_dict()[name], tensor), name


def test_layer3_stride_1_gives_the_papers_map_height_at_192x64():
    model = CAN(
        5, parts=(1, 3), backbone="timm:resnet18", backbone_kwargs={"channels": [8, 16, 24, 32]}, layer3_stride=1
    )
    assert model.output_stride == 8
    assert model.feature_maps(torch.zeros(1, 3, 192, 64))["part1"].shape[-2:] == (24, 8)


def test_the_committed_trunk_loads_and_its_identities_are_not_the_evaluation_sets():
    from canlib.data.synthetic import SyntheticConfig
    from canlib.data.synthetic_identity import make_identities

    cfg = load_config(CPU)
    weights = ROOT / cfg["model"]["pretrained"]
    assert weights.is_file(), f"{weights} is committed with the records: restore it (git checkout) or run make pretrain"
    model = build_model(
        RunSections.from_config(cfg).model, 10
    )  # loads the trunk through model.pretrained (strict key and shape checks)
    trunk = torch.load(weights, weights_only=True)
    assert torch.equal(model.stem.state_dict()["conv1.weight"], trunk["conv1.weight"])
    made = json.loads((weights.with_suffix("") / "dataset.json").read_text())["arguments"]
    evaluation = SyntheticConfig()  # make data: the generator's defaults, seed 0
    assert made["seed"] != evaluation.seed and made["ids"] >= 2000

    def appearance(identity) -> str:
        return repr(sorted((k, v) for k, v in dataclasses.asdict(identity).items() if k not in ("pid", "group")))

    pre, _ = make_identities(
        list(range(1, made["ids"] + 1)), made["seed"], made["hard_negative_fraction"], made["group_size"]
    )
    ev, _ = make_identities(
        list(range(1, evaluation.ids + 1)), evaluation.seed, evaluation.hard_negative_fraction, evaluation.group_size
    )
    assert not {appearance(i) for i in pre} & {appearance(i) for i in ev}


def _records(stage: str, values: dict[str, list[float]]) -> list[dict]:
    return [
        {"table": stage, "row": row, "seed": s, "run": f"{row}{s}", "mAP": v}
        for row, vs in values.items()
        for s, v in enumerate(vs)
    ]


def test_decide_keeps_the_default_unless_an_option_is_clearly_better():
    stage = decide_mod.Stage(
        "s",
        "q",
        "a",
        "why",
        (decide_mod.Option("a", ()), decide_mod.Option("b", ()), decide_mod.Option("ref", (), reference=True)),
    )
    close = decide_mod.decide(stage, _records("s", {"a": [0.30, 0.32], "b": [0.31, 0.33], "ref": [0.9, 0.9]}))
    assert close.chosen == "a" and close.best == "b"  # 1 point ahead only: a tie; the reference never wins
    clear = decide_mod.decide(stage, _records("s", {"a": [0.30, 0.31], "b": [0.36, 0.37], "ref": [0.9, 0.9]}))
    assert clear.chosen == "b" and "beats the default" in clear.reason
    noisy = decide_mod.decide(stage, _records("s", {"a": [0.20, 0.40], "b": [0.33, 0.35]}))
    assert noisy.chosen == "a"  # 4 points ahead, but within the seed spread (~10 points)


def test_every_decision_stage_has_its_default_among_its_options():
    for stage in decide_mod.STAGES:
        labels = [o.label for o in stage.options]
        assert stage.default in labels and len(set(labels)) == len(labels)
        assert not stage.option(stage.default).reference


def test_the_cpu_profile_holds_what_the_validation_runs_chose():
    decisions = ROOT / "results" / "decisions" / "cpu-synthetic" / "decisions.json"
    assert json.loads(decisions.read_text())["complete"]
    # holds for the stages decided so far too: the profile never runs ahead of, or against, them
    cfg = load_config(CPU)
    chosen = load_config(CPU, decide_mod.chosen_overrides(decisions))
    assert config_hash(cfg) == config_hash(chosen), "configs/cpu.yaml differs from results/decisions"


def test_a_stage_sees_the_later_stages_defaults_whatever_the_profile_holds():
    # cpu.yaml holds every choice made; rerunning an early stage must not see the later ones,
    # or `make decide` on a fresh clone would train the early stages again in another context
    stages = decide_mod.STAGES
    later_keys = {x.split("=")[0] for s in stages[1:] for x in s.option(s.default).overrides}
    values = {x.split("=")[0]: x.split("=", 1)[1] for s in stages[1:] for o in reversed(s.options) for x in o.overrides}
    numeric = {k for k, v in values.items() if v.replace(".", "").isdigit()}
    shifted = [f"{k}=7.0" if k in numeric else f"{k}={values[k]}" for k in sorted(later_keys)]
    for row in decide_mod.stage_rows(stages[0], [], decide_mod.pending_defaults(stages, 0)):
        plain = load_config(CPU, list(row.overrides))
        moved = load_config(CPU, shifted + list(row.overrides))
        assert config_hash(plain) == config_hash(moved), row.label
    assert decide_mod.pending_defaults(stages, len(stages) - 1) == []


def test_a_group_aware_validation_split_holds_out_whole_look_alike_groups(book_data):
    full = load_dataset("synthetic", book_data)
    groups = full.look_alike_groups
    train_raw = set(full.pid_map)
    in_train = [g for g in groups if set(g) <= train_raw]
    assert len(in_train) >= 5  # the generator keeps every group on one side of train/test
    split = hold_out_validation(full, 50, seed=0, groups=groups)
    held = set(split.held_out_pids)
    assert len(held) == 50
    for g in in_train:  # no held-out identity leaves a look-alike in training
        assert set(g) <= held or not set(g) & held
    assert any(set(g) <= held for g in in_train)
    assert hold_out_validation(full, 50, seed=0, groups=groups).held_out_pids == split.held_out_pids
    assert hold_out_validation(full, 50, seed=0).held_out_pids == hold_out_validation(full, 50, 0).held_out_pids


def test_a_validation_gallery_like_the_test_gallery_has_its_share_of_distractors(book_data):
    full = load_dataset("synthetic", book_data)
    test_share = sum(pid == 0 for _, pid, _ in full.gallery) / len(full.gallery)
    split = hold_out_validation(full, 50, seed=0, groups=full.look_alike_groups, like_test_gallery=True)
    share = sum(pid == 0 for _, pid, _ in split.gallery) / len(split.gallery)
    assert test_share > 0.05 and abs(share - test_share) < 0.05
    queried = {pid for _, pid, _ in split.query}
    assert 0 not in queried and len(queried) < 50  # distractor ids are gallery-only
    for _, pid, cam in split.query:
        assert any(g_pid == pid and g_cam != cam for _, g_pid, g_cam in split.gallery)


def test_new_layers_get_their_own_learning_rate_and_the_default_keeps_one_group():
    from canlib.config import RunSections
    from canlib.engine.build import build_loss, build_model, build_optimizers

    def groups(*overrides: str) -> list[dict]:
        run = RunSections.from_config(load_config(SMOKE, ["model.pretrained=null", *overrides]))
        model = build_model(run.model, 4)
        optimizer, _, _ = build_optimizers(run.optim, model, build_loss(run.loss, model, 4))
        return optimizer.param_groups

    (one,) = groups()
    trunk, head = groups("optim.head_lr_mult=10.0", "optim.lr=0.001")
    assert head["lr"] == pytest.approx(10 * trunk["lr"]) and trunk["lr"] == pytest.approx(0.001)
    assert len(one["params"]) == len(trunk["params"]) + len(head["params"])
    n_head = sum(p.numel() for p in head["params"])
    model = build_model(RunSections.from_config(load_config(SMOKE, ["model.pretrained=null"])).model, 4)
    assert n_head == sum(p.numel() for m in (model.embedding, model.classifiers) for p in m.parameters())


def test_make_decide_on_a_fresh_clone_trains_nothing():
    # every run the stages plan from configs/cpu.yaml, given the recorded choices, is recorded:
    # the profile holds every choice, and no option may lean on a key the profile sets
    folder = ROOT / "results" / "decisions" / "cpu-synthetic"
    saved = json.loads((folder / "decisions.json").read_text())
    stages, chosen = decide_mod.STAGES, []
    assert saved["stages"] == [s.name for s in stages] and saved["seeds"] == list(decide_mod.SEEDS)
    for index, (stage, decision) in enumerate(zip(stages, saved["decisions"], strict=True)):
        rows = decide_mod.stage_rows(stage, chosen, decide_mod.pending_defaults(stages, index), saved["validation"])
        for row in rows:
            hashes = [config_hash(resolve(CPU, row, seed, "anywhere")) for seed in decide_mod.SEEDS]
            assert sorted(hashes) == sorted(decision["runs"][row.label]), (stage.name, row.label)
            assert all((folder / h / "metrics.json").is_file() for h in hashes)
        chosen += stage.option(decision["chosen"]).overrides
