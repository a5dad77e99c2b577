"""Subject-level splits: hold-out, X-Net's contiguous k-fold, JSON files, CLI."""
import json

import numpy as np
import pytest
from sklearn.model_selection import KFold

from clci_keras.data.splits import (
    load_split,
    make_holdout_split,
    make_kfold_split,
    make_kfold_splits,
    save_split,
)

IDS = [f"0{31000 + i}" for i in range(229)]  # ATLAS R1.1 has 229 subjects


def assert_partition(split, n):
    parts = [set(split[p]) for p in ("train", "val", "test")]
    assert sum(len(p) for p in parts) == n  # nobody lost
    assert set().union(*parts) == set(range(n))
    for i in range(3):
        for j in range(i + 1, 3):
            assert not parts[i] & parts[j], "a subject appears in two parts"


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_holdout_is_a_subject_partition(seed):
    s = make_holdout_split(IDS, val=0.1, test=0.2, seed=seed)
    assert_partition(s, 229)
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (160, 23, 46)
    assert s["subject_ids"] == IDS
    assert make_holdout_split(IDS, seed=seed) == s  # deterministic
    assert make_holdout_split(IDS, seed=seed + 100)["test"] != s["test"]


def test_kfold_matches_xnet_protocol():
    idx = np.arange(229)
    for k, (tr, te) in enumerate(KFold(n_splits=5, shuffle=False).split(idx)):
        s = make_kfold_split(IDS, k=5, fold=k)
        assert s["test"] == te.tolist() and s["train"] == tr.tolist() and s["val"] == []
        assert_partition(s, 229)
    tests = [make_kfold_split(IDS, fold=k)["test"] for k in range(5)]
    assert sorted(sum(tests, [])) == list(range(229))  # every subject tested exactly once
    assert [len(t) for t in tests] == [46, 46, 46, 46, 45]


def test_kfold_with_validation_carved_from_train():
    s = make_kfold_split(IDS, k=5, fold=1, val=0.1)
    assert_partition(s, 229)
    assert len(s["val"]) == 18 and s["val"] == sorted(s["val"]) and max(s["val"]) == 228


def test_save_load_roundtrip_and_validation(tmp_path):
    s = make_holdout_split(10, val=0.1, test=0.2, seed=0)
    p = save_split(s, tmp_path / "s.json")
    assert load_split(p) == s
    bad = dict(s, test=s["test"] + [s["train"][0]])
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"bad\.json: subject index \d+ is in both 'train' and 'test'"):
        load_split(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="out of range"):
        load_split(p, n_subjects=5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="1.2"):
        make_holdout_split(IDS, test=1.2)
    with pytest.raises(ValueError, match="fold must be in \\[0, 4\\], got 5"):
        make_kfold_split(IDS, fold=5)
    with pytest.raises(ValueError, match="Duplicate"):
        make_holdout_split(["a", "a", "b"])


def test_cli_split(synthetic_h5, tmp_path, capsys):
    from clci_keras.cli import main

    out = tmp_path / "split.json"
    assert main(["split", str(synthetic_h5), "-o", str(out), "--val", "0.25", "--test", "0.25", "--seed", "1"]) == 0
    s = load_split(out, n_subjects=4)
    assert_partition(s, 4)
    assert s["subject_ids"][0].startswith("0") and len(s["test"]) == 1
    assert main(["split", str(synthetic_h5), "-o", str(out)]) == 2  # exists
    assert main(["split", str(synthetic_h5), "-o", str(out), "--overwrite", "--mode", "kfold", "--folds", "4",
                 "--fold", "3"]) == 0
    s = load_split(out)
    assert s["test"] == [3] and s["train"] == [0, 1, 2] and s["mode"] == "kfold"
    assert main(["split", str(synthetic_h5), "-o", str(out), "--overwrite", "--mode", "kfold", "--folds", "4",
                 "--fold", "all"]) == 0
    assert [f["test"] for f in load_split(out)["folds"]] == [[0], [1], [2], [3]]


def test_all_folds_in_one_file(tmp_path):
    s = make_kfold_splits(IDS, k=5)
    assert [f["fold"] for f in s["folds"]] == [0, 1, 2, 3, 4]
    for f in s["folds"]:
        assert_partition(dict(f, subject_ids=IDS), 229)
    assert s["test"] == s["folds"][0]["test"]
    p = save_split(s, tmp_path / "all.json")
    assert load_split(p)["folds"][3]["test"] == make_kfold_split(IDS, fold=3)["test"]
    with open(p) as f:
        bad = json.load(f)
    bad["folds"][2]["train"].append(bad["folds"][2]["test"][0])
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"fold 2\): subject index \d+ is in both 'train' and 'test'"):
        load_split(tmp_path / "bad.json")
