"""BBC News deduplication (genbound.data.datasets): exact and near copies go before the split, so no test article
has a copy in training; the counts are the corpus's; old checkpoints keep loading the corpus they saw."""

from __future__ import annotations

import numpy as np

from genbound.checkpoints.restore import dataset_spec
from genbound.data.datasets import (
    DATASETS,
    dedup_examples,
    load_bbc_dedup,
    load_bbc_raw,
    normalize_article,
    stratified_split,
)


def _folder(tmp_path, articles):
    for cls, texts in articles.items():
        (tmp_path / cls).mkdir()
        for i, t in enumerate(texts):
            (tmp_path / cls / f"{i:03d}.txt").write_text(t)
    return tmp_path


def test_a_test_article_with_a_copy_in_train_goes(tmp_path):
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(500)]
    base = {c: [" ".join(rng.choice(words, 30)) for _ in range(20)] for c in ("a", "b")}
    # a copy of a's first article (different case, spacing and punctuation) and an exact copy of b's third
    base["a"].append("  " + base["a"][0].upper().replace(" ", " ,\n ") + "!")
    base["b"].append(base["b"][2])
    texts, labels, _ = load_bbc_raw(_folder(tmp_path, base))
    keep, counts = dedup_examples(texts, labels)
    assert counts == {**counts, "files": 42, "exact_duplicates": 1, "near_duplicates": 1, "kept": 40,
                      "conflicting_labels": 0}
    got, lab, _ = load_bbc_dedup(tmp_path)
    assert len(got) == 40 and len({normalize_article(t) for t in got}) == 40
    for seed in range(20):  # with the copies kept, some split seeds put a copy in test and its twin in train
        tr, _, te = stratified_split(lab, seed)
        assert not {normalize_article(got[i]) for i in te} & {normalize_article(got[i]) for i in tr}
    raw_leaks = 0
    for seed in range(20):
        tr, _, te = stratified_split(labels, seed)
        raw_leaks += bool({normalize_article(texts[i]) for i in te} & {normalize_article(texts[i]) for i in tr})
    assert raw_leaks > 0  # the check above can fail: without deduplication copies do cross the split


def test_conflicting_copies_are_dropped():
    keep, counts = dedup_examples(["x y", "X  y", "z"], np.array([0, 1, 0]))
    assert keep == [2] and counts["conflicting_labels"] == 1


def test_the_corpus_counts_and_no_leak_at_split_seed_0():
    texts, labels, _ = load_bbc_raw()
    _, counts = dedup_examples(texts, labels)
    assert (counts["files"], counts["exact_duplicates"], counts["near_duplicates"], counts["kept"]) == \
        (2225, 98, 5, 2122)
    tr, va, te = stratified_split(labels, 0)
    train = {normalize_article(texts[i]) for i in tr}
    assert sum(normalize_article(texts[i]) in train for i in te) == 20  # the leak this removes
    got, lab, _ = load_bbc_dedup()
    tr, va, te = stratified_split(lab, 0)
    assert (len(tr), len(va), len(te)) == (1486, 212, 424)
    train = {normalize_article(got[i]) for i in tr}
    assert not any(normalize_article(got[i]) in train for i in te)


class _Meta:
    def __init__(self, dataset, card):
        self.dataset, self.dataset_card, self.hyperparameters = dataset, card, {}


def test_old_checkpoints_load_the_corpus_they_were_trained_on():
    assert dataset_spec(_Meta("bbc", {})) is DATASETS["bbc-raw"]
    assert dataset_spec(_Meta("bbc", {"deduplicated": {"kept": 2122}})) is DATASETS["bbc"]
    assert DATASETS["bbc"].loader is load_bbc_dedup
