"""canlib.metrics: the Market-1501 protocol against hand arithmetic and the plain reference evaluator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from canlib.metrics import evaluate, evaluate_features, k_reciprocal_rerank, pairwise_distance
from canlib.metrics.reference import make_market_like, reference_evaluate

MAX_RANK = 10
RTOL = 1e-12


# --------------------------------------------------------------------------- the reference


def loop_reference(d, q_pids, g_pids, q_camids, g_camids, max_rank=MAX_RANK, ap="step"):
    """canlib's plain stable-argsort reference, or None when no query is valid."""
    try:
        return reference_evaluate(d, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank, ap=ap)
    except ValueError:
        return None


def assert_same(result, ref):
    np.testing.assert_allclose(result["mAP"], ref["mAP"], rtol=RTOL, atol=0)
    np.testing.assert_allclose(result["mINP"], ref["mINP"], rtol=RTOL, atol=0)
    np.testing.assert_array_equal(result["cmc"], ref["cmc"])
    assert result["num_valid_queries"] == ref["num_valid_queries"]


# --------------------------------------------------------------------------- hand-computed case

# gallery: index -> (pid, camera)
G_PIDS = np.array([1, 2, 1, -1, 0, 1, 3])
G_CAMS = np.array([0, 1, 1, 1, 0, 2, 2])
Q_PIDS = np.array([1, 2, 1])
Q_CAMS = np.array([0, 1, 2])
DIST = np.array(
    [
        # query 0 (pid 1, cam 0): g0 same pid+cam -> removed, g3 junk -> removed.
        # valid order: g1 neg (r1), g2 MATCH (r2), g4 distractor (r3), g5 MATCH (r4), g6 (r5)
        [0.10, 0.20, 0.30, 0.05, 0.40, 0.50, 0.60],
        # query 1 (pid 2, cam 1): its only pid-2 image g1 is in its own camera -> skipped
        [0.50, 0.10, 0.20, 0.30, 0.40, 0.60, 0.70],
        # query 2 (pid 1, cam 2): g5 removed, g3 junk. order: g0 MATCH (r1), g1 (r2), g2 MATCH (r3), ...
        [0.10, 0.15, 0.20, 0.00, 0.50, 0.00, 0.40],
    ]
)


def test_hand_case_step_ap_cmc_minp():
    r = evaluate(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=5, ap="step")
    # query 0: matches at ranks 2, 4 -> AP = (1/2 + 2/4) / 2 = 1/2;  INP = 2/4
    # query 2: matches at ranks 1, 3 -> AP = (1/1 + 2/3) / 2 = 5/6;  INP = 2/3
    assert r["num_valid_queries"] == 2 and r["num_queries"] == 3
    assert r["mAP"] == pytest.approx((1 / 2 + 5 / 6) / 2, rel=RTOL)  # 2/3
    assert r["mINP"] == pytest.approx((2 / 4 + 2 / 3) / 2, rel=RTOL)  # 7/12
    # first matches at ranks 2 and 1: CMC@1 = 1/2, CMC@k>=2 = 1
    np.testing.assert_array_equal(r["cmc"], [0.5, 1.0, 1.0, 1.0, 1.0])
    assert r["ap"] == "step" and r["protocol"] == "market"


def test_hand_case_trapezoid_ap():
    r = evaluate(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=5, ap="trapezoid")
    # query 0: i=1, r=2: (0/1 + 1/2)/2 = 1/4;  i=2, r=4: (1/3 + 2/4)/2 = 5/12  -> AP = (1/4 + 5/12)/2 = 1/3
    # query 2: i=1, r=1: (1 + 1/1)/2 = 1 (first term 1 at r=1);  i=2, r=3: (1/2 + 2/3)/2 = 7/12
    #          -> AP = (1 + 7/12)/2 = 19/24
    assert r["mAP"] == pytest.approx((1 / 3 + 19 / 24) / 2, rel=RTOL)  # 9/16
    assert r["mAP"] <= evaluate(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, ap="step")["mAP"]
    assert r["ap"] == "trapezoid"


def test_reference_evaluator_on_the_hand_case():
    """The reference itself must reproduce the hand arithmetic, or it checks nothing."""
    step = reference_evaluate(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=5, ap="step", block_rows=2)
    assert step["mAP"] == pytest.approx(2 / 3, rel=RTOL) and step["mINP"] == pytest.approx(7 / 12, rel=RTOL)
    np.testing.assert_array_equal(step["cmc"], [0.5, 1.0, 1.0, 1.0, 1.0])
    assert step["num_valid_queries"] == 2 and np.isnan(step["ap_per_query"][1])
    trap = reference_evaluate(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=5, ap="trapezoid")
    assert trap["mAP"] == pytest.approx(9 / 16, rel=RTOL)
    with pytest.raises(ValueError, match="no query"):
        reference_evaluate(DIST[1:2], Q_PIDS[1:2], G_PIDS, Q_CAMS[1:2], G_CAMS)
    with pytest.raises(ValueError, match="AP variant"):
        reference_evaluate(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, ap="area")


def test_market_like_problem_shape_and_difficulty():
    p = make_market_like(num_query=120, num_gallery=900, num_ids=60, num_cams=6, seed=3)
    assert p["qf"].shape == (120, 128) and p["gf"].shape == (900, 128) and p["qf"].dtype == np.float32
    assert (p["g_pids"] == -1).sum() == round(900 * 3819 / 19732) and (p["g_pids"] == 0).sum() > 0
    assert set(p["q_pids"]) <= set(p["g_pids"][p["g_pids"] > 0])
    again = make_market_like(num_query=120, num_gallery=900, num_ids=60, num_cams=6, seed=3)
    assert all(np.array_equal(p[k], again[k]) for k in p)  # seeded
    ids = (p["q_pids"], p["g_pids"], p["q_camids"], p["g_camids"])
    dist = pairwise_distance(p["qf"], p["gf"])
    result = evaluate(dist, *ids)
    # an imperfect "model", pinned: the seeded problem's mAP as the loop-per-query reference scores it
    assert result["mAP"] == pytest.approx(reference_evaluate(np.asarray(dist), *ids)["mAP"], abs=1e-12)
    assert result["mAP"] == pytest.approx(0.8306, abs=1e-4) and result["num_valid_queries"] == 119


def test_per_query_outputs():
    r = evaluate(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=5, return_per_query=True)
    np.testing.assert_array_equal(r["first_match_rank"], [2, -1, 1])
    assert np.isnan(r["ap_per_query"][1]) and r["ap_per_query"][0] == pytest.approx(0.5)


def test_junk_is_never_counted_and_distractors_are_negatives():
    g_pids = np.array([-1, 0, 5])
    g_cams = np.array([1, 1, 1])
    d = np.array([[0.1, 0.2, 0.3]])
    r = evaluate(d, [5], g_pids, [0], g_cams, max_rank=3)
    # junk g0 removed; distractor g1 ranks first, the match second
    assert r["cmc"][0] == 0.0 and r["cmc"][1] == 1.0 and r["mAP"] == pytest.approx(0.5)
    # the junk image's distance does not matter at all
    d2 = np.array([[0.9, 0.2, 0.3]])
    assert evaluate(d2, [5], g_pids, [0], g_cams, max_rank=3)["mAP"] == r["mAP"]


def test_same_pid_same_camera_removed_but_other_ids_in_same_camera_kept():
    g_pids = np.array([5, 6, 5])
    g_cams = np.array([0, 0, 1])
    d = np.array([[0.1, 0.2, 0.3]])
    r = evaluate(d, [5], g_pids, [0], g_cams, max_rank=3)
    # g0 removed (same pid, same camera); g1 (other id, same camera) stays: match at rank 2
    assert r["cmc"][0] == 0.0 and r["mAP"] == pytest.approx(0.5)


def test_no_valid_query_raises():
    with pytest.raises(ValueError, match="no query has a true match"):
        evaluate(np.zeros((2, 3)), [1, 2], [1, 2, 3], [0, 0], [0, 0, 1])


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        evaluate(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, ap="interpolated")
    with pytest.raises(ValueError):
        evaluate(DIST, Q_PIDS[:2], G_PIDS, Q_CAMS, G_CAMS)
    with pytest.raises(ValueError):
        evaluate(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, protocol="viper")


def test_nan_at_a_match_raises():
    d = DIST.copy()
    d[0, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate(d, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS)


# --------------------------------------------------------------------------- ties


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_ties_follow_gallery_order(dtype):
    d = np.array([[0.5, 0.5, 0.5]]).astype(dtype) if dtype != np.int64 else np.array([[3, 3, 3]])
    # negative first in gallery order -> the match (same distance) ranks second
    r = evaluate(d, [1], [2, 1, 3], [0], [1, 1, 1], max_rank=3)
    assert r["cmc"][0] == 0.0 and r["cmc"][1] == 1.0
    # match first in gallery order -> it ranks first
    r = evaluate(d, [1], [1, 2, 3], [0], [1, 1, 1], max_rank=3)
    assert r["cmc"][0] == 1.0


def test_signed_zero_is_a_tie():
    # -0.0 == +0.0: gallery order decides (a stable sort puts the match at index 0 first)
    d = np.array([[0.0, -0.0]], dtype=np.float32)
    assert evaluate(d, [1], [1, 2], [0], [1, 1], max_rank=2)["cmc"][0] == 1.0
    d = np.array([[-0.0, 0.0]], dtype=np.float32)
    assert evaluate(d, [1], [2, 1], [0], [1, 1], max_rank=2)["cmc"][0] == 0.0


# --------------------------------------------------------------------------- randomized


def random_problem(rng, tie_mode):
    nq, ng = int(rng.integers(1, 40)), int(rng.integers(1, 120))
    n_ids, n_cams = int(rng.integers(1, 12)), int(rng.integers(1, 5))
    q_pids = rng.integers(1, n_ids + 1, nq)
    q_pids[rng.random(nq) < 0.05] = -1  # occasional junk query: never valid
    g_pids = rng.integers(-1, n_ids + 1, ng)  # includes junk -1 and distractors 0
    q_cams, g_cams = rng.integers(0, n_cams, nq), rng.integers(0, n_cams, ng)
    if tie_mode == "int":
        d = rng.integers(-2, 4, (nq, ng))  # integer distances: ties everywhere
    elif tie_mode == "quantised32":
        d = (rng.integers(0, 6, (nq, ng)) / 4).astype(np.float32)
    elif tie_mode == "float32":
        d = rng.standard_normal((nq, ng)).astype(np.float32)
        d[rng.random((nq, ng)) < 0.02] = np.inf
    else:
        d = rng.random((nq, ng))
        d[:, rng.integers(0, ng, max(1, ng // 10))] = 0.25  # duplicated columns
    return d, q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize("tie_mode", ["int", "quantised32", "float32", "float64"])
@pytest.mark.parametrize("ap", ["step", "trapezoid"])
def test_randomized_against_loop_reference(tie_mode, ap):
    rng = np.random.default_rng(1234)
    checked = 0
    for _ in range(60):
        problem = random_problem(rng, tie_mode)
        ref = loop_reference(*problem, ap=ap)
        block_rows = int(rng.integers(1, 9))
        if ref is None:
            with pytest.raises(ValueError):
                evaluate(*problem, max_rank=MAX_RANK, ap=ap, block_rows=block_rows)
            continue
        assert_same(evaluate(*problem, max_rank=MAX_RANK, ap=ap, block_rows=block_rows), ref)
        checked += 1
    assert checked > 30


def test_market_like_block_against_loop_reference():
    """A bigger problem with many matches per query, gallery bigger than one block."""
    rng = np.random.default_rng(7)
    nq, ng, n_ids = 60, 3000, 40
    q_pids, g_pids = rng.integers(1, n_ids + 1, nq), rng.integers(-1, n_ids + 1, ng)
    q_cams, g_cams = rng.integers(0, 6, nq), rng.integers(0, 6, ng)
    centres = rng.standard_normal((n_ids + 1, 16))
    qf = centres[q_pids.clip(0)] + rng.standard_normal((nq, 16))
    gf = centres[g_pids.clip(0)] + rng.standard_normal((ng, 16))
    d = pairwise_distance(qf.astype(np.float32), gf.astype(np.float32))
    d = np.round(d, 3)  # force float32 ties
    problem = (d, q_pids, g_pids, q_cams, g_cams)
    for ap in ("step", "trapezoid"):
        assert_same(evaluate(*problem, max_rank=50, ap=ap), loop_reference(*problem, max_rank=50, ap=ap))


def test_large_gallery_index_bits():
    """A gallery above 2^16 items (MSMT17-sized indices) still packs its keys exactly."""
    rng = np.random.default_rng(3)
    ng = 70_000
    g_pids, g_cams = rng.integers(0, 50, ng), rng.integers(0, 4, ng)
    q_pids, q_cams = rng.integers(1, 50, 3), rng.integers(0, 4, 3)
    d = (rng.integers(0, 1000, (3, ng)) / 1000).astype(np.float32)
    assert_same(
        evaluate(d, q_pids, g_pids, q_cams, g_cams, max_rank=50),
        loop_reference(d, q_pids, g_pids, q_cams, g_cams, max_rank=50),
    )


def test_torch_input_accepted():
    rng = np.random.default_rng(5)
    d, q_pids, g_pids, q_cams, g_cams = random_problem(rng, "float64")
    while loop_reference(d, q_pids, g_pids, q_cams, g_cams) is None:
        d, q_pids, g_pids, q_cams, g_cams = random_problem(rng, "float64")
    as_np = evaluate(d, q_pids, g_pids, q_cams, g_cams, max_rank=MAX_RANK)
    as_torch = evaluate(
        *(torch.from_numpy(np.asarray(a)) for a in (d, q_pids, g_pids, q_cams, g_cams)), max_rank=MAX_RANK
    )
    assert as_np["mAP"] == as_torch["mAP"]
    np.testing.assert_array_equal(as_np["cmc"], as_torch["cmc"])


# --------------------------------------------------------------------------- features and distances


def test_pairwise_distance_against_direct_computation():
    rng = np.random.default_rng(0)
    qf, gf = rng.standard_normal((7, 5)), rng.standard_normal((11, 5))
    qn = qf / np.linalg.norm(qf, axis=1, keepdims=True)
    gn = gf / np.linalg.norm(gf, axis=1, keepdims=True)
    direct_cos = np.array([[1 - qn[i] @ gn[j] for j in range(11)] for i in range(7)])
    direct_euc = np.array([[np.linalg.norm(qf[i] - gf[j]) for j in range(11)] for i in range(7)])
    np.testing.assert_allclose(pairwise_distance(qf, gf), direct_cos, atol=1e-12)
    np.testing.assert_allclose(pairwise_distance(qf, gf, "euclidean", chunk_size=3), direct_euc, atol=1e-12)
    np.testing.assert_allclose(pairwise_distance(qf, gf, "sqeuclidean"), direct_euc**2, atol=1e-10)
    out = pairwise_distance(torch.from_numpy(qf), torch.from_numpy(gf), chunk_size=2)
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out.numpy(), direct_cos, atol=1e-12)
    with pytest.raises(ValueError):
        pairwise_distance(qf, gf, "manhattan")


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_evaluate_features_equals_evaluate_on_full_matrix(metric):
    rng = np.random.default_rng(11)
    nq, ng, n_ids = 50, 400, 30
    q_pids, g_pids = rng.integers(1, n_ids + 1, nq), rng.integers(-1, n_ids + 1, ng)
    q_cams, g_cams = rng.integers(0, 4, nq), rng.integers(0, 4, ng)
    centres = rng.standard_normal((n_ids + 1, 8))
    qf = torch.from_numpy((centres[q_pids] + rng.standard_normal((nq, 8))).astype(np.float32))
    gf = torch.from_numpy((centres[g_pids.clip(0)] + rng.standard_normal((ng, 8))).astype(np.float32))
    ids = (q_pids, g_pids, q_cams, g_cams)
    for ap in ("step", "trapezoid"):
        full = evaluate(pairwise_distance(qf, gf, metric, chunk_size=16), *ids, ap=ap)
        streamed = evaluate_features(qf, gf, *ids, metric=metric, chunk_size=16, ap=ap)
        assert streamed["mAP"] == full["mAP"] and streamed["mINP"] == full["mINP"]
        np.testing.assert_array_equal(streamed["cmc"], full["cmc"])
        # a different chunking gives the same distances up to rounding
        other = evaluate_features(qf, gf, *ids, metric=metric, chunk_size=7, ap=ap)
        assert other["mAP"] == pytest.approx(full["mAP"], abs=1e-6)


# --------------------------------------------------------------------------- CUHK03 classic


def test_cuhk03_classic_equals_market_cmc_with_one_image_per_id():
    rng = np.random.default_rng(2)
    n = 30
    g_pids, g_cams = np.arange(1, n + 1), np.ones(n, dtype=int)
    q_pids, q_cams = np.arange(1, n + 1), np.zeros(n, dtype=int)
    d = rng.random((n, n))
    market = evaluate(d, q_pids, g_pids, q_cams, g_cams, max_rank=10)
    classic = evaluate(d, q_pids, g_pids, q_cams, g_cams, max_rank=10, protocol="cuhk03_classic", repeats=3)
    np.testing.assert_allclose(classic["cmc"], market["cmc"], rtol=RTOL)
    assert classic["mAP"] == market["mAP"] and classic["protocol"] == "cuhk03_classic"


def test_cuhk03_classic_single_shot_is_seeded_and_monotone():
    rng = np.random.default_rng(4)
    d, q_pids, g_pids, q_cams, g_cams = (
        rng.random((20, 80)),
        rng.integers(1, 8, 20),
        rng.integers(1, 8, 80),
        rng.integers(0, 2, 20),
        rng.integers(0, 2, 80),
    )
    a = evaluate(d, q_pids, g_pids, q_cams, g_cams, protocol="cuhk03_classic", seed=1)
    b = evaluate(d, q_pids, g_pids, q_cams, g_cams, protocol="cuhk03_classic", seed=1)
    np.testing.assert_array_equal(a["cmc"], b["cmc"])
    # a CMC curve: monotone, reaching 1 once max_rank exceeds the number of ids
    assert np.all(np.diff(a["cmc"]) >= 0) and a["cmc"][-1] == 1.0


# --------------------------------------------------------------------------- re-ranking


def test_rerank_shapes_lambda_one_and_changes_ranking():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((6, 4)) * 2
    qf = centres[rng.integers(0, 6, 12)] + rng.standard_normal((12, 4))
    gf = centres[rng.integers(0, 6, 40)] + rng.standard_normal((40, 4))
    qg, qq, gg = pairwise_distance(qf, gf), pairwise_distance(qf, qf), pairwise_distance(gf, gf)
    out = k_reciprocal_rerank(qg, qq, gg, k1=6, k2=3, lambda_value=0.3)
    assert out.shape == (12, 40) and np.all(np.isfinite(out))
    np.testing.assert_array_equal(k_reciprocal_rerank(qg, qq, gg, k1=6, k2=3, lambda_value=1.0), qg)
    assert np.any(np.argsort(out, axis=1, kind="stable") != np.argsort(qg, axis=1, kind="stable"))
    with pytest.raises(ValueError):
        k_reciprocal_rerank(qg, gg, qq)


def test_rerank_on_a_hand_checked_line_of_three_points():
    """q=0, g1=1, g2=3 on a line (d(g1, g2) = 2), k1=2: R(q) = {q, g1}, R(g1) = {g1, q}, R(g2) = {g2}
    (g2's nearest other point, g1, has q nearer); R(p, 1) = {p}, so R* = R. V_q = (1, 1/e, 0),
    V_g1 = (1/e, 1, 0), V_g2 = (0, 0, 1), and with lambda = 0.3:
    * k2=1: d_J(q, g1) = 1 - 2/e / 2, d_J(q, g2) = 1;
    * k2=2: V_q = V_g1 = (a, a, 0) with a = (1 + 1/e) / 2, V_g2 = (1/(2e), 1/2, 1/2), so
      d_J(q, g1) = 0 and d_J(q, g2) = 1 - (1/2 + 1/(2e)) / (2a + 1/2)."""
    qg, qq, gg = np.array([[1.0, 3.0]]), np.zeros((1, 1)), np.array([[0.0, 2.0], [2.0, 0.0]])
    e, lam = np.e, 0.3
    k2_one = [(1 - lam) * (1 - 1 / e) + lam * 1.0, (1 - lam) * 1.0 + lam * 3.0]
    np.testing.assert_allclose(k_reciprocal_rerank(qg, qq, gg, k1=2, k2=1, lambda_value=lam), [k2_one], rtol=1e-12)
    a = (1 + 1 / e) / 2
    k2_two = [lam * 1.0, (1 - lam) * (1 - (0.5 + 0.5 / e) / (2 * a + 0.5)) + lam * 3.0]
    np.testing.assert_allclose(k_reciprocal_rerank(qg, qq, gg, k1=2, k2=2, lambda_value=lam), [k2_two], rtol=1e-12)


def test_evaluate_features_with_rerank_runs():
    rng = np.random.default_rng(1)
    q_pids, g_pids = rng.integers(1, 5, 10), rng.integers(1, 5, 30)
    qf, gf = rng.standard_normal((10, 4)), rng.standard_normal((30, 4))
    r = evaluate_features(
        qf, gf, q_pids, g_pids, np.zeros(10), np.ones(30), rerank=True, rerank_kwargs={"k1": 5, "k2": 2}
    )
    qg = pairwise_distance(qf, gf)
    reranked = k_reciprocal_rerank(qg, pairwise_distance(qf, qf), pairwise_distance(gf, gf), k1=5, k2=2)
    direct = evaluate(reranked, q_pids, g_pids, np.zeros(10), np.ones(30))
    assert r["rerank"] is True and r["mAP"] == pytest.approx(direct["mAP"], abs=1e-12)
    assert r["mAP"] != pytest.approx(evaluate(qg, q_pids, g_pids, np.zeros(10), np.ones(30))["mAP"], abs=1e-6)
