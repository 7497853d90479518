"""Metric code vs brute-force references written as plain Python loops (issue 7, "Must show").

The references share only the documented rules with the library (cosine scores, pessimistic
ties within 1e-6), not its code: they rank every query by explicit loops over Python floats.
"""
import math
import random

import pytest
import torch

from llm2clip_nemo import metrics as M
from llm2clip_nemo.eval.templates import (
    IMAGENET_TEMPLATES,
    SHORT_TEMPLATES,
    get_templates,
)

EPS = 1e-6


def _unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v] if n > 0 else [0.0] * len(v)


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _cos_matrix(a, b):
    a = [_unit(r) for r in a.tolist()]
    b = [_unit(r) for r in b.tolist()]
    return [[_dot(x, y) for y in b] for x in a]


def ref_retrieval(sim, t2i, ks):
    """sim: list of rows (images) of lists (captions)."""
    n_img, n_txt = len(sim), len(t2i)
    out = {}
    for k in ks:
        hits = 0
        for i in range(n_img):
            own = [j for j in range(n_txt) if t2i[j] == i]
            # position of each own caption if wrong ties go first; hit if any is in the top k
            best = min(sum(1 for j in range(n_txt) if t2i[j] != i and sim[i][j] >= sim[i][o] - EPS) for o in own)
            hits += best < k
        out[f"i2t_R@{k}"] = 100.0 * hits / n_img
    for k in ks:
        hits = 0
        for j in range(n_txt):
            above = sum(1 for i in range(n_img) if i != t2i[j] and sim[i][j] >= sim[t2i[j]][j] - EPS)
            hits += above < k
        out[f"t2i_R@{k}"] = 100.0 * hits / n_txt
    return out


def _dataset(seed, n_img=9, dim=6, with_ties=True):
    g = torch.Generator().manual_seed(seed)
    rnd = random.Random(seed)
    img = torch.randn(n_img, dim, generator=g)
    t2i = [i for i in range(n_img) for _ in range(rnd.randint(1, 4))]
    txt = torch.randn(len(t2i), dim, generator=g) * 0.5 + img[t2i]  # correlated, not perfect
    if with_ties:
        img[3] = img[1] * 2.0  # same direction: every caption of 1 and 3 ties between the two images
        first_of = {i: t2i.index(i) for i in range(n_img)}
        txt[first_of[5]] = txt[first_of[0]] * 0.7  # a caption of 5 duplicates a caption of 0
        txt[first_of[6]] = img[2]  # a caption of 6 equals image 2 exactly
    return img, txt, t2i


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("block", [3, 2048])
def test_retrieval_matches_bruteforce_with_ties_and_multi_captions(seed, block):
    img, txt, t2i = _dataset(seed)
    ks = (1, 2, 5, 100)  # 100 > every candidate count
    got = M.retrieval_metrics(img, txt, t2i, ks=ks, block_size=block)
    want = ref_retrieval(_cos_matrix(img, txt), t2i, ks)
    for key, val in want.items():
        assert got[key] == pytest.approx(val, abs=1e-9), key
    assert got[f"i2t_R@{100}"] == 100.0 and got[f"t2i_R@{100}"] == 100.0
    assert got["mean_recall"] == pytest.approx(sum(want.values()) / len(want))
    assert (got["n_images"], got["n_texts"]) == (len(img), len(t2i))


def test_retrieval_matches_argsort_reference_at_moderate_size():
    # a second, sort-based reference on 150 images x 600 captions, many blocks (no ties in random data)
    g = torch.Generator().manual_seed(9)
    img = torch.randn(150, 32, generator=g, dtype=torch.float64)
    t2i = torch.randint(0, 150, (600,), generator=g)
    t2i[:150] = torch.arange(150)  # every image has a caption
    txt = img[t2i] + 2.0 * torch.randn(600, 32, generator=g, dtype=torch.float64)
    s = torch.nn.functional.normalize(img, dim=1) @ torch.nn.functional.normalize(txt, dim=1).T
    order_t = s.argsort(dim=1, descending=True)  # per image, captions best first
    first_hit = [int((t2i[order_t[i]] == i).nonzero()[0]) for i in range(150)]
    order_i = s.T.argsort(dim=1, descending=True)
    pos = [int((order_i[j] == t2i[j]).nonzero()[0]) for j in range(600)]
    got = M.retrieval_metrics(img, txt, t2i, ks=(1, 5, 10), block_size=64)
    for k in (1, 5, 10):
        assert got[f"i2t_R@{k}"] == pytest.approx(100.0 * sum(r < k for r in first_hit) / 150)
        assert got[f"t2i_R@{k}"] == pytest.approx(100.0 * sum(r < k for r in pos) / 600)
    assert 5 < got["t2i_R@1"] < 95  # a non-trivial case


def test_ties_are_pessimistic_and_order_independent():
    # image 1 and 2 are the same vector: caption 1 (of image 1) ties with image 2 -> not a top-1 hit
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    txt = torch.tensor([[1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    r = M.retrieval_ranks(img, txt, [0, 1, 2])
    assert r.t2i.tolist() == [0, 1, 1]
    perm = [2, 0, 1]  # permuting candidates does not change any rank
    r2 = M.retrieval_ranks(img[perm], txt, [perm.index(i) for i in [0, 1, 2]])
    assert r2.t2i.tolist() == r.t2i.tolist()


def test_constant_features_score_zero_until_k_covers_everything():
    img, txt = torch.ones(4, 3), torch.ones(8, 3)
    t2i = [0, 0, 1, 1, 2, 2, 3, 3]
    m = M.retrieval_metrics(img, txt, t2i, ks=(1, 4, 6, 7))
    assert (m["i2t_R@1"], m["i2t_R@6"], m["i2t_R@7"]) == (0.0, 0.0, 100.0)  # 6 wrong captions tie
    assert (m["t2i_R@1"], m["t2i_R@4"]) == (0.0, 100.0)  # 3 wrong images tie


def test_features_are_normalised_inside():
    img, txt, t2i = _dataset(8, with_ties=False)
    g = torch.Generator().manual_seed(8)
    scaled = M.retrieval_metrics(img * (torch.rand(len(img), 1, generator=g) * 9 + 0.1),
                                 txt * (torch.rand(len(txt), 1, generator=g) * 9 + 0.1), t2i)
    assert scaled == M.retrieval_metrics(img, txt, t2i)


def test_one_to_one_protocol_and_perfect_features():
    x = torch.randn(20, 16, generator=torch.Generator().manual_seed(3))
    m = M.retrieval_metrics(x, x * 3.0, torch.arange(20), ks=(1,))
    assert m["i2t_R@1"] == 100.0 and m["t2i_R@1"] == 100.0 and m["mean_recall"] == 100.0


@pytest.mark.parametrize("seed", [4, 5])
def test_similarity_path_with_integer_scores_matches_bruteforce(seed):
    rnd = random.Random(seed)
    n_img = 7
    t2i = [i for i in range(n_img) for _ in range(rnd.randint(1, 3))]
    sim = [[float(rnd.randint(0, 2)) for _ in t2i] for _ in range(n_img)]  # ties everywhere
    ranks = M.retrieval_ranks_from_similarity(torch.tensor(sim), t2i, block_size=2)
    got = M.metrics_from_ranks(ranks, ks=(1, 3, 50))
    want = ref_retrieval(sim, t2i, (1, 3, 50))
    for key, val in want.items():
        assert got[key] == pytest.approx(val), key


def test_recall_curve_is_monotone_and_matches_recall_at_k():
    img, txt, t2i = _dataset(7, with_ties=False)
    r = M.retrieval_ranks(img, txt, t2i)
    curve = M.recall_curve(r.t2i, 8)
    assert curve == sorted(curve) and len(curve) == 8
    assert curve[4] == M.retrieval_metrics(img, txt, t2i, ks=(5,))["t2i_R@5"]


def test_retrieval_errors_name_the_problem():
    img, txt = torch.randn(3, 4), torch.randn(2, 4)
    with pytest.raises(ValueError, match=r"1 of 3 images have no caption \(first: image 2\)"):
        M.retrieval_metrics(img, txt, [0, 1])
    with pytest.raises(ValueError, match="text_to_image has 3 entries for 2 captions"):
        M.retrieval_metrics(img, txt, [0, 1, 2])
    with pytest.raises(ValueError, match="image features have dim 4 but text features have dim 5"):
        M.retrieval_metrics(img, torch.randn(3, 5), [0, 1, 2])


def test_top_retrievals_stable_order():
    q = torch.tensor([[1.0, 0.0]])
    c = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 0.0], [1.0, 1.0]])
    assert M.top_retrievals(q, c, 3).tolist() == [[1, 2, 3]]
    assert M.top_retrievals(q, c, 10).shape == (1, 4)


# ---------------------------------------------------------------- zero-shot

def ref_zeroshot(img, cls_feats, labels, ks):
    """cls_feats: [C][T][D] nested lists, or [C][D]."""
    if isinstance(cls_feats[0][0], list):
        cls = []
        for temps in cls_feats:
            units = [_unit(t) for t in temps]
            cls.append(_unit([sum(u[d] for u in units) / len(units) for d in range(len(units[0]))]))
    else:
        cls = [_unit(c) for c in cls_feats]
    img = [_unit(v) for v in img]
    out = {}
    for k in ks:
        hits = 0
        for v, y in zip(img, labels):
            s = [_dot(v, c) for c in cls]
            hits += sum(1 for c in range(len(cls)) if c != y and s[c] >= s[y] - EPS) < k
        out[f"top{k}"] = 100.0 * hits / len(labels)
    return out


@pytest.mark.parametrize("templates", [0, 3])
def test_zeroshot_matches_bruteforce(templates):
    g = torch.Generator().manual_seed(11)
    n_cls, dim = 6, 5
    shape = (n_cls, templates, dim) if templates else (n_cls, dim)
    cls = torch.randn(*shape, generator=g)
    if templates:
        cls[4] = cls[2]  # duplicate class -> ties between classes 2 and 4
    else:
        cls[4] = cls[2] * 5
    labels = torch.randint(0, n_cls, (25,), generator=g)
    img = torch.randn(25, dim, generator=g) + (cls.mean(1) if templates else cls)[labels] * 0.8
    ks = (1, 2, 5, 10)
    got = M.zeroshot_classification(img, cls, labels, ks=ks, block_size=4)
    want = ref_zeroshot(img.tolist(), cls.tolist(), labels.tolist(), ks)
    for key, val in want.items():
        assert got[key] == pytest.approx(val), key
    assert got["top10"] == 100.0


def test_zeroshot_labels_error():
    with pytest.raises(ValueError, match=r"labels hold class indices in \[0, 3\], outside \[0, 3\)"):
        M.zeroshot_classification(torch.randn(2, 4), torch.randn(3, 4), [0, 3])


def _char_encoder(texts):
    """A deterministic toy text encoder: letter counts (a real dependency, not the thing tested)."""
    out = torch.zeros(len(texts), 26)
    for i, t in enumerate(texts):
        for ch in t.lower():
            if "a" <= ch <= "z":
                out[i, ord(ch) - 97] += 1
    return out


def test_build_class_embeddings_averages_normalised_templates():
    names, temps = ["cat", "dog", "zebra"], ["a photo of a {}.", "art of the {}.", "{}"]
    got = M.build_class_embeddings(names, temps, _char_encoder, batch_size=2)  # batches cross classes
    assert got.shape == (3, 26) and got.dtype == torch.float32
    for c, name in enumerate(names):
        units = [_unit(_char_encoder([t.format(name)])[0].tolist()) for t in temps]
        want = _unit([sum(u[d] for u in units) / 3 for d in range(26)])
        assert got[c].tolist() == pytest.approx(want, abs=1e-6)
    with pytest.raises(ValueError, match="template 'a photo' has no '{}' placeholder"):
        M.build_class_embeddings(names, ["a photo"], _char_encoder)


def test_template_sets():
    assert len(IMAGENET_TEMPLATES) == 80 and len(set(IMAGENET_TEMPLATES)) == 80
    assert len(SHORT_TEMPLATES) == 8 and set(SHORT_TEMPLATES) <= set(IMAGENET_TEMPLATES)
    assert all(t.count("{}") == 1 for t in IMAGENET_TEMPLATES + SHORT_TEMPLATES)
    with pytest.raises(ValueError, match="unknown template set 'long'"):
        get_templates("long")


# ---------------------------------------------------------------- CRA (paper) and all-pairs

def ref_all_pairs(feats, ids):
    f = [_unit(v) for v in feats]
    hits = queries = 0
    for q in range(len(f)):
        if sum(1 for i in ids if i == ids[q]) < 2:
            continue
        queries += 1
        s = [_dot(f[q], f[c]) for c in range(len(f))]
        best_own = max(s[c] for c in range(len(f)) if c != q and ids[c] == ids[q])
        hits += not any(ids[c] != ids[q] and s[c] >= best_own - EPS for c in range(len(f)))
    return 100.0 * hits / queries


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_all_pairs_matches_bruteforce(seed):
    rnd = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    ids = [f"img{i}" for i in range(10) for _ in range(rnd.randint(1, 4))]  # some single-caption images
    centers = {i: torch.randn(6, generator=g) for i in set(ids)}
    feats = torch.stack([centers[i] + 0.9 * torch.randn(6, generator=g) for i in ids])
    feats[3] = feats[len(ids) - 1]  # exact duplicate across (likely) different images -> a tie
    feats[5] = feats[4] * 3
    got = M.caption_retrieval_all_pairs(feats, ids, block_size=4)
    assert got == pytest.approx(ref_all_pairs(feats.tolist(), ids))
    assert 0.0 < got < 100.0


def test_all_pairs_definition_cases():
    # two images x two captions; a single-caption distractor (id 'z') identical to caption 0
    feats = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [1.0, 0.0]])
    ids = ["a", "a", "b", "b", "z"]
    # caption 0's nearest other caption is the distractor (1.0 vs 0.99): a miss; caption 1 is
    # equally close to caption 0 and the distractor (a tie, so a miss); captions 2, 3 hit; 'z' is
    # not a query (one caption) -> 2 / 4
    assert M.caption_retrieval_all_pairs(feats, ids) == 50.0
    assert M.caption_retrieval_all_pairs(feats[:4], torch.tensor([0, 0, 1, 1])) == 100.0
    with pytest.raises(ValueError, match="caption retrieval needs images with at least 2 captions"):
        M.caption_retrieval_all_pairs(feats[:3], ["a", "b", "c"])


def _at_degrees(*angles):
    return torch.tensor([[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in angles])


def test_cra_paper_protocol_vs_all_pairs_on_hand_placed_captions():
    """3 images x 2 captions on the unit circle (degrees): a = (160, 130), b = (60, 40), c = (140, 90).
    Paper CRA: a's 1st caption (160) is nearest a's 2nd (130, 30 deg) among the 2nd captions {130, 40, 90}: hit;
    b's 1st (60) nearest 40: hit; c's 1st (140) nearest a's 130 (10 deg) not c's 90: miss -> 2/3.
    All pairs: only b's two captions have their own as nearest (a1 -> c1 at 20 deg, a2 -> c1 at 10, c1 -> a2,
    c2 (90) -> b1 (60) at 30) -> 2/6."""
    feats = _at_degrees(160, 130, 60, 40, 140, 90)
    ids = ["a", "a", "b", "b", "c", "c"]
    assert M.caption_retrieval_accuracy(feats, ids) == pytest.approx(200 / 3)
    assert round(M.caption_retrieval_accuracy(feats, ids), 1) == 66.7
    assert round(M.caption_retrieval_all_pairs(feats, ids), 1) == 33.3


def test_cra_uses_the_first_two_captions_and_skips_single_caption_images():
    # a's 3rd caption and the single-caption image z sit right on c's 1st caption: neither is a candidate
    feats = _at_degrees(160, 130, 60, 40, 140, 90, 140, 140)
    ids = ["a", "a", "b", "b", "c", "c", "a", "z"]
    assert M.caption_retrieval_accuracy(feats, ids) == pytest.approx(200 / 3)
    # interleaved rows: the order of rows per image, not their position in the list, picks 1st and 2nd
    order = [4, 0, 2, 5, 1, 3]
    assert M.caption_retrieval_accuracy(feats[order], [ids[i] for i in order]) == pytest.approx(200 / 3)
    # a tie between the own 2nd caption and another image's is a miss (pessimistic ties)
    assert M.caption_retrieval_accuracy(_at_degrees(0, 10, 90, 90, 20, 10), [0, 0, 1, 1, 2, 2]) == pytest.approx(100 / 3)
    with pytest.raises(ValueError, match="CRA needs images with at least 2 captions; every image here has one."):
        M.caption_retrieval_accuracy(feats[:3], ["a", "b", "c"])
