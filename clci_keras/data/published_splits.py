"""Published subject-level splits, shipped as subject ids with their source.

``spin_traintest``: the fixed ATLAS R1.2 train / test split of Wong et al.,
"Small Lesion Segmentation in Brain MRIs with Subpixel Embedding" (MICCAI
BrainLes 2021, arXiv:2109.08791), public repository
``alexklwong/subpixel-embedding-segmentation`` (commit
``aa3ac951cc10b7e7e3ae4e31800ef7ba2a1fd719``), files

* ``data_split/atlas/traintest/training/train_scans.txt`` (212 lines) and
* ``data_split/atlas/traintest/testing/test_scans.txt`` (27 lines),

whose lines read ``c0008/c0008s0028t01/c0008s0028t01_t1w_stx.npy``; the
subject id is the scan folder (``c0008s0028t01``).  Their
``*_ground_truths.txt`` files name the same folders in the same order.  The
SPiN authors trained every method of their Tables 2-3 (CLCI-Net included) on
the 212 training scans and report scores on the 27 test scans; they have no
validation part.  The ids below are in the files' line order.

These are facts copied from the files (ids), not code.
"""
from __future__ import annotations

SPIN_REPOSITORY = "https://github.com/alexklwong/subpixel-embedding-segmentation"
SPIN_COMMIT = "aa3ac951cc10b7e7e3ae4e31800ef7ba2a1fd719"

#: ``data_split/atlas/traintest/training/train_scans.txt`` (212 scans, line order).
SPIN_TRAINTEST_TRAIN = (
    "c0008s0011t01", "c0008s0029t01", "c0008s0006t01", "c0008s0008t01", "c0008s0009t01",
    "c0008s0033t01", "c0008s0010t01", "c0008s0001t01", "c0008s0002t01", "c0008s0014t01",
    "c0008s0031t01", "c0008s0005t01", "c0008s0032t01", "c0007s0022t01", "c0007s0003t01",
    "c0007s0033t01", "c0007s0030t01", "c0007s0016t01", "c0007s0027t01", "c0007s0035t01",
    "c0007s0036t01", "c0007s0010t01", "c0007s0020t01", "c0007s0021t01", "c0007s0002t01",
    "c0007s0024t01", "c0007s0019t01", "c0007s0005t01", "c0007s0018t01", "c0007s0029t01",
    "c0007s0028t01", "c0007s0017t01", "c0007s0014t01", "c0007s0012t01", "c0007s0031t01",
    "c0007s0025t01", "c0007s0023t01", "c0007s0026t01", "c0007s0034t01", "c0003s0043t01",
    "c0003s0045t01", "c0003s0019t01", "c0003s0016t01", "c0003s0056t01", "c0003s0049t01",
    "c0003s0039t01", "c0003s0028t01", "c0003s0008t01", "c0003s0024t01", "c0003s0014t01",
    "c0003s0036t01", "c0003s0012t01", "c0003s0041t01", "c0003s0025t01", "c0003s0032t01",
    "c0003s0051t01", "c0003s0031t01", "c0003s0052t01", "c0003s0037t01", "c0003s0004t01",
    "c0003s0027t01", "c0003s0005t01", "c0003s0013t01", "c0003s0040t01", "c0003s0035t01",
    "c0003s0003t01", "c0003s0044t01", "c0003s0022t01", "c0003s0015t01", "c0003s0017t01",
    "c0003s0018t01", "c0003s0038t01", "c0003s0050t01", "c0003s0002t01", "c0003s0042t01",
    "c0003s0055t01", "c0003s0009t01", "c0003s0006t01", "c0003s0033t01", "c0003s0001t01",
    "c0003s0010t01", "c0003s0007t01", "c0003s0020t01", "c0003s0046t01", "c0003s0026t01",
    "c0003s0011t01", "c0003s0053t01", "c0003s0048t01", "c0003s0029t01", "c0006s0005t01",
    "c0006s0004t01", "c0006s0014t01", "c0006s0020t01", "c0006s0001t01", "c0006s0010t01",
    "c0006s0018t01", "c0006s0007t01", "c0006s0019t01", "c0006s0003t01", "c0009s0006t01",
    "c0009s0008t01", "c0009s0002t01", "c0009s0010t01", "c0009s0005t01", "c0009s0003t01",
    "c0009s0009t01", "c0009s0012t01", "c0009s0004t01", "c0004s0026t01", "c0004s0003t01",
    "c0004s0012t01", "c0004s0024t01", "c0004s0007t01", "c0004s0008t01", "c0004s0004t01",
    "c0004s0014t01", "c0004s0034t01", "c0004s0028t01", "c0004s0015t01", "c0004s0029t01",
    "c0004s0009t01", "c0004s0006t01", "c0004s0025t01", "c0004s0031t01", "c0004s0027t01",
    "c0004s0013t01", "c0004s0033t01", "c0004s0020t01", "c0004s0030t01", "c0004s0023t01",
    "c0004s0032t01", "c0004s0016t01", "c0004s0018t01", "c0004s0002t01", "c0004s0010t01",
    "c0004s0005t01", "c0011s0015t01", "c0011s0006t01", "c0011s0009t01", "c0011s0001t01",
    "c0011s0012t01", "c0011s0013t01", "c0011s0002t01", "c0011s0010t01", "c0011s0007t01",
    "c0011s0014t01", "c0011s0008t01", "c0011s0004t01", "c0011s0003t01", "c0011s0011t01",
    "c0010s0030t01", "c0010s0005t01", "c0010s0022t02", "c0010s0044t02", "c0010s0040t01",
    "c0010s0037t01", "c0010s0003t02", "c0010s0009t01", "c0010s0005t02", "c0010s0009t02",
    "c0010s0046t01", "c0010s0041t01", "c0010s0043t01", "c0010s0013t01", "c0010s0011t02",
    "c0010s0029t01", "c0010s0024t01", "c0010s0031t01", "c0010s0015t02", "c0010s0010t01",
    "c0010s0028t01", "c0010s0020t01", "c0010s0042t01", "c0010s0015t01", "c0010s0016t02",
    "c0010s0014t01", "c0010s0013t02", "c0010s0034t01", "c0010s0022t01", "c0010s0018t01",
    "c0010s0025t02", "c0010s0020t02", "c0010s0006t01", "c0010s0032t01", "c0010s0025t01",
    "c0010s0044t01", "c0010s0016t01", "c0005s0031t01", "c0005s0017t01", "c0005s0009t01",
    "c0005s0012t01", "c0005s0008t01", "c0005s0014t01", "c0005s0010t01", "c0005s0045t01",
    "c0005s0003t01", "c0005s0018t01", "c0005s0030t01", "c0005s0035t01", "c0005s0013t01",
    "c0005s0047t01", "c0005s0040t01", "c0005s0021t01", "c0005s0029t01", "c0005s0006t01",
    "c0005s0042t01", "c0005s0028t01", "c0005s0026t01", "c0005s0027t01", "c0005s0049t01",
    "c0005s0048t01", "c0005s0024t01",
)

#: ``data_split/atlas/traintest/testing/test_scans.txt`` (27 scans, line order).
SPIN_TRAINTEST_TEST = (
    "c0008s0028t01", "c0004s0011t01", "c0004s0022t01", "c0003s0034t01", "c0006s0006t01",
    "c0003s0021t01", "c0003s0030t01", "c0004s0017t01", "c0008s0003t01", "c0007s0001t01",
    "c0007s0013t01", "c0005s0007t01", "c0004s0001t01", "c0010s0021t01", "c0007s0015t01",
    "c0004s0019t01", "c0009s0011t01", "c0006s0008t01", "c0010s0038t01", "c0005s0011t01",
    "c0003s0054t01", "c0004s0021t01", "c0010s0002t02", "c0009s0007t01", "c0005s0036t01",
    "c0007s0032t01", "c0003s0023t01",
)

#: Named published splits: parts as tuples of subject ids, and where they come from.
PUBLISHED_SPLITS = {
    "spin_traintest": {
        "description": "ATLAS R1.2 train/test split of Wong et al. 2021 (SPiN): 212 training, 27 test scans",
        "dataset": "ATLAS R1.2 (standard MNI)",
        "source": {
            "repository": SPIN_REPOSITORY,
            "commit": SPIN_COMMIT,
            "train": "data_split/atlas/traintest/training/train_scans.txt",
            "test": "data_split/atlas/traintest/testing/test_scans.txt",
        },
        "train": SPIN_TRAINTEST_TRAIN,
        "val": (),
        "test": SPIN_TRAINTEST_TEST,
    },
}
