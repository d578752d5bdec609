"""A second architecture: all-MiniLM-L6-v2 over sentences of Python's docs, with a user
collate and a masked-mean-over-tokens view of an FFN layer. Answers equal brute force."""
from __future__ import annotations

import numpy as np
import pytest

import everest_magic as em
from everest_magic import examples as ex
from everest_magic.engine import query as Q
from everest_magic.engine.baselines import ReprocessAll, rank


@pytest.fixture(scope="module")
def text_session(tmp_path_factory):
    model, tok, collate = ex.minilm(max_length=48)
    sentences = ex.python_sentences(limit=400)
    sentences = sentences + sentences[:8]         # exact duplicates: ties
    s = em.Session(model, sentences, collate=collate, index=tmp_path_factory.mktemp("txt") / "t.h5",
                   batch_size=32, partitions=16, ratio=0.01)
    s.build_index(["encoder.layer.3.intermediate:token_mean"], wait=True)
    A = ReprocessAll(s).all_activations("encoder.layer.3.intermediate:token_mean")
    yield s, A, sentences, tok
    s.close()


def test_text_view_shape_and_masking(text_session):
    s, A, sentences, tok = text_session
    assert A.shape == (len(sentences), 1536)
    for name in ("encoder.layer.2.intermediate:token_mean", "encoder.layer.2.intermediate:token_max",
                 "encoder.layer.2.intermediate"):    # not indexed: from the layer's shape
        assert s.shape(name) == s.runner.view_shapes([s.view(name)])[0], name
    assert s.shape("encoder.layer.2.intermediate:token_max") == (1536,)
    # padding must not change a sentence's view: same sentence, other batch companions
    a = s.external_activations("encoder.layer.3.intermediate:token_mean", sentences[5])
    np.testing.assert_array_equal(a, A[5])


def test_text_queries_equal_brute_force(text_session):
    s, A, sentences, _ = text_session
    view = "encoder.layer.3.intermediate:token_mean"
    rng = np.random.default_rng(0)
    for _ in range(25):
        tid = int(rng.integers(s.n))
        g = int(rng.integers(1, 16))
        group = np.lexsort((np.arange(A.shape[1]), -A[tid]))[:g] if rng.random() < 0.5 else rng.choice(1536, g, replace=False)
        k = int(rng.choice([1, 5, 20, 100]))
        r = s.knn(tid, view, group, k=k, metric=str(rng.choice(["l2", "l1", "linf"])))
        allowed = np.ones(s.n, bool)
        allowed[tid] = False
        key_of = Q.knn_key(A[tid, group], r.params["metric"])
        assert r.ids.tolist() == rank(A[:, group], key_of, k, allowed)[1].tolist()
        lowest = bool(rng.random() < 0.5)
        r = s.topk(view, group, k=k, by="mean", lowest=lowest)
        key_of = Q.topk_key(Q.make_aggregation("mean", g), lowest)
        assert r.ids.tolist() == rank(A[:, group], key_of, k, np.ones(s.n, bool))[1].tolist()


def test_text_duplicate_is_nearest_and_external_sentence(text_session):
    s, A, sentences, _ = text_session
    view = "encoder.layer.3.intermediate:token_mean"
    r = s.knn(3, view, range(50), k=2)
    assert r.ids[0] == len(sentences) - 8 + 3 and r.scores[0] == 0.0
    r = s.knn("Return the number of items in a container.", view, range(50), k=5)
    assert len(r.ids) == 5 and r.params["target"] == "external"
