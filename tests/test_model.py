"""The CAN model: branches, shared embedding, features and outputs (Sections 3.2-3.2.3)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from canlib.book.complexity import complexity_table, model_complexity
from canlib.model import CAN, CANOutput, CosineClassifier, count_features
from canlib.paper import PART_PATTERNS

# A slim timm ResNet18 (layer-4 maps of 128 channels) keeps these tests fast on a CPU.
SLIM = {"backbone": "timm:resnet18", "backbone_kwargs": {"channels": (16, 32, 64, 128)}, "embed_dim": 32}
SMALL_INPUT = (160, 64)  # layer-4 map 10 x 4: enough rows for 9 parts

# Tables 2 (no CA) and 3 (CA): 1 feature per global branch, 1 + n (or 1 + n - 1) per part_n.
EXPECTED_COUNTS = {
    "Part-1,2,3": (8, 6),
    "Part-1,2,3,4": (13, 10),
    "Part-1,3,5": (11, 9),
    "Part-1,3,5,7": (19, 16),
    "Part-1,3,5,7,9": (29, 25),
}


def slim_can(**kwargs) -> CAN:
    torch.manual_seed(0)
    return CAN(10, **{**SLIM, **kwargs})


def images(batch: int = 2, size: tuple[int, int] = SMALL_INPUT) -> torch.Tensor:
    return torch.randn(batch, 3, *size)


@pytest.fixture(scope="module")
def default_can() -> CAN:
    return CAN(751).eval()


# ------------------------------------------------------------------ the paper's model


def test_default_model_is_the_papers(default_can: CAN) -> None:
    assert default_can.num_features == 16
    assert default_can.feature_names == [
        "part1.global",
        "part3.global",
        "part3.local0",
        "part3.local1",
        "part5.global",
        "part5.local0",
        "part5.local1",
        "part5.local2",
        "part5.local3",
        "part7.global",
        *[f"part7.local{k}" for k in range(6)],
    ]
    assert default_can.global_indices == [0, 1, 4, 9]
    assert len(default_can.local_indices) == 12
    assert default_can.descriptor_dim == 4096


def test_default_model_shapes_at_384x128(default_can: CAN) -> None:
    x = torch.randn(1, 3, 384, 128)
    with torch.no_grad():
        maps = default_can.feature_maps(x)
        descriptor = default_can(x)
    assert list(maps) == ["part1", "part3", "part5", "part7"]
    assert all(m.shape == (1, 2048, 24, 8) for m in maps.values())
    assert descriptor.shape == (1, 4096)


# ------------------------------------------------------------------ Tables 2 and 3


@pytest.mark.parametrize("collaborative", [False, True])
@pytest.mark.parametrize("pattern", sorted(PART_PATTERNS))
def test_feature_counts(pattern: str, collaborative: bool) -> None:
    parts = PART_PATTERNS[pattern]
    expected = EXPECTED_COUNTS[pattern][int(collaborative)]
    model = slim_can(parts=parts, collaborative=collaborative).eval()
    assert model.num_features == len(model.feature_names) == count_features(parts, collaborative) == expected
    assert len(model.global_indices) == len(parts)
    assert len(model.local_indices) == expected - len(parts)
    assert len(model.classifiers) == expected
    with torch.no_grad():
        assert model.forward_features(images(1)).shape == (1, expected, 32)


def test_without_ca_part_n_has_n_locals() -> None:
    model = slim_can(parts=(1, 3), collaborative=False)
    assert model.feature_names == ["part1.global", "part3.global", "part3.local0", "part3.local1", "part3.local2"]


@pytest.mark.parametrize("pattern", ["Part-1,2,3", "Part-1,3,5,7"])
def test_the_equal_capacity_control_of_ca_has_the_ca_models_descriptor(pattern: str) -> None:
    """Mean fusion fills CA's slots with the mean of the same neighbours: same features, same size."""
    parts = PART_PATTERNS[pattern]
    ca, mean, without = (
        slim_can(parts=parts, **kw).eval() for kw in ({}, {"ca_fusion": "mean"}, {"collaborative": False})
    )
    assert mean.feature_names == ca.feature_names and mean.descriptor_dim == ca.descriptor_dim
    assert without.descriptor_dim > ca.descriptor_dim  # what "CA against Table 2" also changes
    mean.load_state_dict(ca.state_dict())  # no parameter of its own: the same weights load
    x = images(1)
    with torch.no_grad():
        fa, fm = ca.forward_features(x), mean.forward_features(x)
    assert fa.shape == fm.shape and torch.equal(fa[:, ca.global_indices], fm[:, ca.global_indices])
    assert not torch.allclose(fa[:, ca.local_indices], fm[:, ca.local_indices])


# ------------------------------------------------------------------ structure


def test_embedding_is_one_shared_module() -> None:
    model = slim_can()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels == model.in_channels]
    assert convs == [model.embedding.conv]
    assert model.in_channels == 256 and model.embedding.conv.out_channels == 32
    assert isinstance(model.embedding.bn, nn.BatchNorm2d)
    # parameters are counted once: total = stem + branches + one embedding + classifiers
    parts = [model.stem, model.branches, model.embedding, model.classifiers]
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for m in parts for p in m.parameters())
    assert sum(p.numel() for p in model.embedding.parameters()) == 256 * 32 + 2 * 32

    calls = []
    model.embedding.register_forward_hook(lambda mod, inp, out: calls.append(tuple(inp[0].shape)))
    model.forward_features(images(2))
    assert calls == [(2, 256, 16, 1)]  # all 16 features embedded in one call


def test_embedding_without_bn() -> None:
    model = slim_can(embed_bn="none")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.embedding.modules())
    assert model.embedding.conv.bias is not None


def test_features_are_the_shared_embedding_of_each_pooled_block() -> None:
    model = slim_can().eval()
    x = images(2)
    with torch.no_grad():
        features = model.forward_features(x)
        maps = model.feature_maps(x)
        blocks = [model.branches["part1"].global_pool(maps["part1"])]
        for n in (3, 5, 7):
            branch = model.branches[f"part{n}"]
            fmap = maps[f"part{n}"]
            pooled = branch.part_pool(fmap)
            fused = torch.maximum(pooled[:, :, :-1], pooled[:, :, 1:])  # collaborative attention
            blocks += [branch.global_pool(fmap)] + [fused[:, :, k : k + 1] for k in range(n - 1)]
        manual = torch.stack([model.embedding(b)[1].flatten(1) for b in blocks], dim=1)
    torch.testing.assert_close(features, manual, rtol=1e-4, atol=1e-5)


def test_layer4_copies_are_independent() -> None:
    model = slim_can()
    first, *others = [b.layer4 for b in model.branches.values()]
    for other in others:
        for p, q in zip(first.parameters(), other.parameters(), strict=True):
            assert p.data_ptr() != q.data_ptr()
            torch.testing.assert_close(p, q)  # same starting weights
    with torch.no_grad():
        next(first.parameters()).add_(1.0)
    for other in others:
        assert not torch.equal(next(first.parameters()), next(other.parameters()))
    assert len({id(p) for b in model.branches.values() for p in b.layer4.parameters()}) == 4 * len(
        list(first.parameters())
    )


def test_gradients_reach_every_branch_the_embedding_and_every_classifier() -> None:
    model = slim_can().train()
    out = model(images(4))
    labels = torch.randint(0, 10, (4,))
    loss = sum(F.cross_entropy(16 * out.logits[:, i], labels) for i in range(model.num_features))
    loss.backward()
    for name, branch in model.branches.items():
        grads = [p.grad for p in branch.layer4.parameters()]
        assert all(g is not None for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name
    assert model.embedding.conv.weight.grad.abs().sum() > 0
    assert model.stem.conv1.weight.grad.abs().sum() > 0
    for i, clf in enumerate(model.classifiers):
        assert clf.weight.grad.abs().sum() > 0, model.feature_names[i]


# ------------------------------------------------------------------ outputs


def test_train_and_eval_outputs() -> None:
    model = slim_can().train()
    out = model(images(2))
    assert isinstance(out, CANOutput)
    assert out.features.shape == (2, 16, 32)
    assert out.logits.shape == (2, 16, 10)
    assert out.logits.abs().max() <= 1 + 1e-5
    model.eval()
    with torch.no_grad():
        descriptor = model(images(2))
        features = model.forward_features(images(2))
    assert descriptor.shape == (2, 16 * 32)
    assert features.shape == (2, 16, 32)


def test_descriptor_norms() -> None:
    x = images(2)
    raw = slim_can().eval()
    per_feature = slim_can(descriptor_norm="per_feature").eval()
    with torch.no_grad():
        features = raw.forward_features(x)
        torch.testing.assert_close(raw(x), features.flatten(1))
        normed = per_feature(x).view(2, 16, 32)
    torch.testing.assert_close(normed.norm(dim=-1), torch.ones(2, 16))
    torch.testing.assert_close(normed, F.normalize(features, dim=-1))


def test_cosine_classifier() -> None:
    clf = CosineClassifier(8, 3)
    x = torch.randn(5, 8)
    logits = clf(x)
    assert logits.shape == (5, 3) and logits.abs().max() <= 1 + 1e-6
    torch.testing.assert_close(clf(3 * x), logits)
    torch.testing.assert_close(clf(clf.weight.detach())[range(3), range(3)], torch.ones(3))


def test_channels_last_and_other_input_sizes() -> None:
    model = slim_can(pooling="adaptive").eval()
    x = images(2, (256, 96))
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(model(x.to(memory_format=torch.channels_last)), expected, rtol=1e-4, atol=1e-4)


def test_input_too_short_for_the_largest_part() -> None:
    model = slim_can(parts=(1, 3, 5, 7, 9))
    with pytest.raises(ValueError) as info:
        model(images(2, (128, 64)))
    message = str(info.value)
    for fragment in ("height 128", "height 8", "part9", "129", "144"):
        assert fragment in message
    assert int(model.stem.bn1.num_batches_tracked) == 0  # rejected before any work
    assert model.min_input_height() == 129
    model.eval()
    with torch.no_grad():
        assert model(images(1, (129, 64))).shape == (1, 25 * 32)


def test_bad_arguments() -> None:
    for bad in ((), (1, 3, 3), (0, 3)):
        with pytest.raises(ValueError, match="parts"):
            slim_can(parts=bad)
    with pytest.raises(ValueError, match="pooling"):
        slim_can(pooling="median")
    with pytest.raises(ValueError, match="descriptor_norm"):
        slim_can(descriptor_norm="l1")


# ------------------------------------------------------------------ complexity


def test_model_complexity() -> None:
    model = slim_can().train()
    stats = model_complexity(model, input_size=SMALL_INPUT)
    assert model.training  # restored
    assert stats["params"] == stats["params_trainable"] == sum(p.numel() for p in model.parameters())
    assert stats["descriptor_dim"] == 16 * 32
    assert stats["flops"] > 0


def test_complexity_table() -> None:
    rows = complexity_table(
        {"Part-1,2,3": (1, 2, 3)},
        (False, True),
        input_size=SMALL_INPUT,
        num_classes=10,
        backbone=SLIM["backbone"],
        backbone_kwargs=SLIM["backbone_kwargs"],
        embed_dim=32,
    )
    assert [(r["collaborative"], r["num_features"]) for r in rows] == [(False, 8), (True, 6)]
    # CA itself has no FLOPs counted, but the embedding then has fewer features to embed
    assert rows[0]["flops"] > rows[1]["flops"]
    assert rows[0]["params"] > rows[1]["params"]  # two more classifiers


def test_bnneck_outputs_the_features_before_the_bn() -> None:
    model = slim_can().train()
    out = model(images(4))
    assert out.pre_bn is not None and out.pre_bn.shape == out.features.shape
    # In training mode the shared BN normalises each channel over the batch and the 16 features.
    bn = model.embedding.bn
    manual = (out.pre_bn - out.pre_bn.mean((0, 1))) / torch.sqrt(out.pre_bn.var((0, 1), unbiased=False) + bn.eps)
    torch.testing.assert_close(out.features, manual * bn.weight + bn.bias, rtol=1e-4, atol=1e-4)


def test_embedding_bn_per_feature_has_its_own_statistics_per_feature() -> None:
    model = slim_can(embed_bn="per_feature").train()
    assert isinstance(model.embedding.bn, nn.BatchNorm1d)
    assert model.embedding.bn.num_features == 32 * model.num_features
    out = model(images(4))
    # Each feature is normalised over the batch alone: per feature and channel, mean 0 and variance 1.
    torch.testing.assert_close(out.features.mean(0), torch.zeros_like(out.features[0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.features.var(0, unbiased=False), torch.ones_like(out.features[0]), atol=1e-2, rtol=0)
    shared = slim_can(embed_bn="shared").train()(images(4)).features
    assert not torch.allclose(shared.var(0, unbiased=False), torch.ones_like(shared[0]), atol=1e-2)


def test_embedding_bn_none_returns_the_same_tensor_twice() -> None:
    out = slim_can(embed_bn="none").train()(images(2))
    assert torch.equal(out.pre_bn, out.features)
    with pytest.raises(ValueError, match="embed_bn"):
        slim_can(embed_bn="batch")


def test_can_resnet50_builds_the_papers_model() -> None:
    from canlib.model import can_resnet50

    model = can_resnet50(751)
    assert model.parts == (1, 3, 5, 7) and model.collaborative and model.num_features == 16
    assert model.descriptor_dim == 4096 and model.output_stride == 16  # 384x128 -> 24x8 layer-4 maps
    mgn_like = can_resnet50(751, parts=(1, 2, 3), collaborative=False)
    assert mgn_like.num_features == 1 + 3 + 4
