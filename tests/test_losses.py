"""canlib.losses: equations (5)-(9) on small batches worked by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from canlib.losses import (
    BatchHardTripletLoss,
    CANLoss,
    CenterLoss,
    CosineCrossEntropy,
    batch_hard_mining,
    batch_hard_triplet_loss,
    center_optimizer,
    rescale_center_grads,
)
from canlib.paper import LOSS_ROWS

# Four 2-D points, two identities:
#   pid 0: x0 = (0, 0), x1 = (0, 2)        pid 1: x2 = (1, 0), x3 = (3, 0)
# squared distances: d01 = 4, d02 = 1, d03 = 9, d12 = 5, d13 = 13, d23 = 4
X = torch.tensor([[0.0, 0.0], [0.0, 2.0], [1.0, 0.0], [3.0, 0.0]])
PIDS = torch.tensor([0, 0, 1, 1])


def test_triplet_hardest_pairs_chosen():
    out = batch_hard_mining(X, PIDS)
    # anchor 0: positive x1 (its only one), closest negative x2 (d02 = 1 < d03 = 9)
    # anchor 1: positive x0, closest negative x2 (d12 = 5 < d13 = 13)
    # anchor 2: positive x3, closest negative x0 (d20 = 1 < d21 = 5)
    # anchor 3: positive x2, closest negative x0 (d30 = 9 < d31 = 13)
    assert out.positive.tolist() == [[1, 0, 3, 2]]
    assert out.negative.tolist() == [[2, 2, 0, 0]]


def test_triplet_value_squared():
    # hinges with margin 0.3: a0: 0.3 + 4 - 1 = 3.3; a1: 0.3 + 4 - 5 < 0 -> 0;
    # a2: 0.3 + 4 - 1 = 3.3; a3: 0.3 + 4 - 9 < 0 -> 0.   mean = 6.6 / 4 = 1.65
    assert batch_hard_triplet_loss(X, PIDS, margin=0.3).item() == pytest.approx(1.65)


def test_triplet_value_plain_euclidean():
    # distances: d01 = 2, d02 = 1, d03 = 3, d12 = sqrt(5), d13 = sqrt(13), d23 = 2
    # a0: 0.3 + 2 - 1 = 1.3; a1: 0.3 + 2 - sqrt(5) = 0.0639; a2: 0.3 + 2 - 1 = 1.3; a3: 0.3 + 2 - 3 < 0
    expected = (1.3 + (2.3 - math.sqrt(5)) + 1.3) / 4
    assert batch_hard_triplet_loss(X, PIDS, margin=0.3, squared=False).item() == pytest.approx(expected, rel=1e-6)


def test_triplet_margin():
    # margin 0: a0 = 3, a2 = 3, others 0 -> 6/4
    assert batch_hard_triplet_loss(X, PIDS, margin=0.0).item() == pytest.approx(1.5)
    # margin 2: a0 = 5, a1 = 2 + 4 - 5 = 1, a2 = 5, a3 = 2 + 4 - 9 < 0 -> 11/4
    assert BatchHardTripletLoss(margin=2.0)(X, PIDS).item() == pytest.approx(2.75)


def test_triplet_per_feature_and_reduction():
    feats = torch.stack([X, 2 * X], dim=1)  # (B, F=2, D); feature 1 scaled: squared loss terms x4
    # feature 1, margin 0.3: a0: 0.3 + 16 - 4 = 12.3, a2 likewise, a1: 0.3 + 16 - 20 < 0, a3 < 0 -> 6.15
    per = [1.65, 6.15]
    assert batch_hard_triplet_loss(feats, PIDS).item() == pytest.approx(sum(per) / 2)
    assert batch_hard_triplet_loss(feats, PIDS, feature_reduction="sum").item() == pytest.approx(sum(per))
    out = BatchHardTripletLoss().mine(feats, PIDS)
    assert out.positive.shape == (2, 4) and out.negative.tolist()[1] == [2, 2, 0, 0]


def test_triplet_anchor_without_positive_is_skipped():
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [5.0, 0.0]], requires_grad=True)
    out = batch_hard_mining(x, torch.tensor([0, 0, 1]))
    # anchor 2 has no positive: skipped; a0: 0.3 + 1 - 25 < 0, a1: 0.3 + 1 - 26 < 0
    assert out.positive.tolist() == [[1, 0, -1]] and out.loss.item() == 0.0
    lone = batch_hard_triplet_loss(x, torch.tensor([0, 1, 2]))
    lone.backward()  # no valid anchor at all: 0, still differentiable
    assert lone.item() == 0.0 and torch.all(x.grad == 0)


def test_triplet_gradients_finite_for_identical_features():
    x = torch.zeros(4, 3, requires_grad=True)
    batch_hard_triplet_loss(x, PIDS, squared=False).backward()
    assert torch.all(torch.isfinite(x.grad))


def test_center_loss_value_and_gradient():
    loss = CenterLoss(num_classes=2, feat_dim=2)
    with torch.no_grad():
        loss.centers.copy_(torch.tensor([[[0.0, 1.0], [2.0, 0.0]]]))
    x = X.clone().requires_grad_(True)
    value = loss(x, PIDS)
    # ||x - c||^2: x0-c0 = (0,-1): 1; x1-c0 = (0,1): 1; x2-c1 = (-1,0): 1; x3-c1 = (1,0): 1
    # loss = mean over the batch of 1/2 * 1 = 0.5
    assert value.item() == pytest.approx(0.5)
    value.backward()
    expected = (X - loss.centers.detach()[0][PIDS]) / 4  # (x - c_y) / B
    torch.testing.assert_close(x.grad, expected)
    # literal equation (9): 1/2 ||x - c|| = 1/2 * 1 per image here too
    plain = CenterLoss(num_classes=2, feat_dim=2, squared=False)
    plain.load_state_dict(loss.state_dict())
    assert plain(X, PIDS).item() == pytest.approx(0.5)


def test_center_loss_per_feature_centres_and_state_dict():
    loss = CenterLoss(num_classes=5, feat_dim=3, num_features=4)
    assert loss.centers.shape == (4, 5, 3) and "centers" in loss.state_dict()
    feats = torch.randn(6, 4, 3)
    pids = torch.tensor([0, 1, 2, 3, 4, 0])
    per = []
    for f in range(4):  # one single-feature loss per feature, with that feature's centres
        single = CenterLoss(5, 3)
        with torch.no_grad():
            single.centers.copy_(loss.centers[f : f + 1])
        per.append(single(feats[:, f], pids))
    assert loss(feats, pids).item() == pytest.approx(sum(per).item() / 4, rel=1e-6)
    with pytest.raises(ValueError):
        loss(torch.randn(6, 3, 3), pids)


def test_center_gradient_rescale_makes_lr_independent_of_weight():
    weight = 0.0005
    loss = CenterLoss(num_classes=2, feat_dim=2)
    (weight * loss(X, PIDS)).backward()
    rescale_center_grads(loss, weight)
    ref = CenterLoss(num_classes=2, feat_dim=2)
    ref.load_state_dict(loss.state_dict())
    ref(X, PIDS).backward()
    torch.testing.assert_close(loss.centers.grad, ref.centers.grad)
    opt = center_optimizer(loss)
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["lr"] == 0.5
    assert center_optimizer(loss, lr=0.1).param_groups[0]["lr"] == 0.1


@pytest.mark.parametrize("scale,smoothing", [(1.0, 0.0), (30.0, 0.0), (16.0, 0.1)])
def test_cosine_cross_entropy_matches_torch(scale, smoothing):
    torch.manual_seed(0)
    cos = torch.rand(5, 3, 7) * 2 - 1
    pids = torch.tensor([0, 3, 6, 2, 2])
    expected = [F.cross_entropy(scale * cos[:, f], pids, label_smoothing=smoothing) for f in range(3)]
    ce = CosineCrossEntropy(scale=scale, label_smoothing=smoothing)
    assert ce(cos, pids).item() == pytest.approx(sum(expected).item() / 3, rel=1e-6)
    ce_sum = CosineCrossEntropy(scale=scale, label_smoothing=smoothing, feature_reduction="sum")
    assert ce_sum(cos, pids).item() == pytest.approx(sum(expected).item(), rel=1e-6)
    assert ce(cos[:, 0], pids).item() == pytest.approx(expected[0].item(), rel=1e-6)


# --------------------------------------------------------------------------- CANLoss

NUM_FEATURES, NUM_CLASSES, DIM = 6, 4, 5
GLOBAL, LOCAL = [0, 1], [2, 3, 4, 5]


def batch(requires_grad=True):
    torch.manual_seed(1)
    feats = torch.randn(8, NUM_FEATURES, DIM, requires_grad=requires_grad)
    logits = (torch.rand(8, NUM_FEATURES, NUM_CLASSES) * 2 - 1).requires_grad_(requires_grad)
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    return feats, logits, pids


def can_loss(**kwargs):
    return CANLoss(NUM_CLASSES, DIM, NUM_FEATURES, GLOBAL, LOCAL, **kwargs)


@pytest.mark.parametrize(
    "row,nonzero",
    [
        ("CE", {"ce"}),
        ("CE + triplet", {"ce", "triplet"}),
        ("CE + triplet + center", {"ce", "triplet", "center"}),
        ("CE + triplet + center (global & local)", {"ce", "triplet", "center"}),
    ],
)
def test_table4_rows_select_their_terms(row, nonzero):
    loss = can_loss(triplet_margin=100.0, **LOSS_ROWS[row])  # a large margin keeps the triplet > 0
    total, terms = loss(*batch())
    assert {k for k in ("ce", "triplet", "center") if terms[k] != 0.0} == nonzero
    assert (loss.center is not None) == ("center" in nonzero)
    expected = terms["ce"] + terms["triplet"] + 0.0005 * terms["center"]
    assert terms["total"] == pytest.approx(expected, rel=1e-6) and total.item() == pytest.approx(expected, rel=1e-6)
    if loss.center is not None:
        n = len(GLOBAL) if row.endswith("center") else NUM_FEATURES
        assert loss.center.centers.shape == (n, NUM_CLASSES, DIM)


def test_default_is_the_papers_final_model():
    loss = can_loss()
    assert loss.clustering_features == "all" and loss.center_weight == 0.0005 and loss.triplet_weight == 1.0
    assert "center.centers" in loss.state_dict()


@pytest.mark.parametrize("clustering", ["global", "all"])
def test_clustering_features_gradients(clustering):
    feats, logits, pids = batch()
    loss = can_loss(ce_weight=0.0, clustering_features=clustering, triplet_margin=100.0)
    total, _ = loss(feats, logits, pids)
    total.backward()
    local_grad = feats.grad[:, LOCAL].abs().sum()
    assert feats.grad[:, GLOBAL].abs().sum() > 0
    assert (local_grad == 0) if clustering == "global" else (local_grad > 0)
    assert logits.grad is None or torch.all(logits.grad == 0)


def test_gradients_flow_to_features_logits_and_centres():
    feats, logits, pids = batch()
    loss = can_loss(triplet_margin=100.0)
    total, _ = loss(feats, logits, pids)
    total.backward()
    assert feats.grad.abs().sum() > 0 and logits.grad.abs().sum() > 0
    assert loss.center.centers.grad.abs().sum() > 0
    opt = center_optimizer(loss)
    before = loss.center.centers.detach().clone()
    loss.rescale_center_grads()
    opt.step()
    assert not torch.equal(before, loss.center.centers.detach())


def test_invalid_configuration_raises():
    with pytest.raises(ValueError):
        can_loss(clustering_features="local")
    with pytest.raises(ValueError):
        CANLoss(NUM_CLASSES, DIM, 2, [0, 1], [2, 3])  # indices outside the features
    with pytest.raises(ValueError):
        center_optimizer(can_loss(center_weight=0.0))


def test_clustering_input_pre_bn_feeds_the_triplet_and_center_the_features_before_the_bn():
    torch.manual_seed(0)
    pids = torch.tensor([0, 0, 1, 1])
    post, pre = torch.randn(4, 3, 8), torch.randn(4, 3, 8) * 10
    logits = torch.randn(4, 3, 2).clamp(-1, 1)
    kwargs = {
        "num_classes": 2,
        "feat_dim": 8,
        "num_features": 3,
        "global_indices": [0],
        "local_indices": [1, 2],
        "center_weight": 0.0,
    }
    on_pre = CANLoss(clustering_input="pre_bn", **kwargs)
    on_post = CANLoss(**kwargs)
    _, pre_terms = on_pre(post, logits, pids, pre_bn=pre)
    _, post_terms = on_post(post, logits, pids, pre_bn=pre)
    assert pre_terms["ce"] == post_terms["ce"]  # the classifier always sees the post-BN features
    assert pre_terms["triplet"] == pytest.approx(float(batch_hard_triplet_loss(pre, pids)))
    assert post_terms["triplet"] == pytest.approx(float(batch_hard_triplet_loss(post, pids)))
    with pytest.raises(ValueError, match="pre_bn"):
        on_pre(post, logits, pids)
    with pytest.raises(ValueError, match="clustering_input"):
        CANLoss(clustering_input="middle", **kwargs)
