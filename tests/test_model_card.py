"""Model cards (clci_keras.models.card): format, the catalogue's, `train` writing them, `weights --show`,
and `predict` reading them (refusals and warnings)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from clci_keras.cli import DEBUG_ENV, main
from clci_keras.models.card import (
    CARD_SCHEMA,
    CardMismatchError,
    card_path,
    check_card,
    make_card,
    read_card,
    write_card,
)
from clci_keras.models.catalog import CATALOG, catalog_card
from test_training import CROP, MODEL, tiny  # noqa: F401  (the module-scoped tiny HDF5 file and split)


def _card(**kw):
    opts = dict(architecture="clci_net", input_shape=[224, 176, 1], crop="clci", intensity="r1.1", name="t")
    opts.update(kw)
    return make_card(**opts)


def _one_line_error(capsys, command):
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"clci-keras {command}: error: ") and "\n" not in err, err
    return err


def test_card_round_trip_beside_the_weights(tmp_path):
    w = tmp_path / "net.weights.h5"
    assert card_path(w) == str(w) + ".card.json"
    assert read_card(w) is None  # no card: None, not an error
    card = _card(training={"epochs": 3}, metrics={"val": np.float32(0.5)})
    path = write_card(w, card)
    assert path == card_path(w) and os.listdir(tmp_path) == ["net.weights.h5.card.json"]  # no temporaries
    back = read_card(w)
    assert back["schema"] == CARD_SCHEMA and back["input"]["crop_window"] == {"rows": [5, 229], "cols": [10, 186]}
    assert back["metrics"] == {"val": 0.5} and back["input"]["grid"]["shape"] == [197, 233, 189]
    assert make_card(architecture="x", input_shape=[233, 197, 1], crop=None, intensity="v2")["input"]["crop"] == \
        "0:233,0:197"


@pytest.mark.parametrize("text, match", [
    ("{not json", "JSON error"),
    ("[]", "a JSON list, expected an object"),
    (json.dumps({"schema": 99}), "schema 99 is newer"),
    (json.dumps({"schema": 1, "architecture": {"name": "clci_net"}, "input": {"shape": [224, 176, 1],
                 "crop": "clci", "intensity": "bogus"}}), "'input.intensity' must be one of .* got 'bogus'"),
    (json.dumps({"schema": 1, "architecture": {"name": "clci_net"}, "input": {"shape": [224, 192, 1],
                 "crop": "clci", "intensity": "r1.1"}}), r"'input.shape' \[224, 192, 1\] does not fit crop 'clci'"),
    (json.dumps({"schema": 1, "architecture": {"name": "clci_net"}, "input": {"shape": [224, 176],
                 "crop": "clci", "intensity": "r1.1"}}), r"'input.shape' must be \[H, W, C\]"),
])
def test_corrupt_cards_are_one_line_errors_naming_the_card(tmp_path, text, match):
    w = tmp_path / "w.h5"
    (tmp_path / "w.h5.card.json").write_text(text)
    with pytest.raises(ValueError, match=match) as e:
        read_card(w)
    assert str(e.value).startswith(f"{card_path(w)}: not a valid model card (") and "\n" not in str(e.value)


def test_check_card_refuses_and_warns():
    card = _card(intensity="v2", space="MNI152NLin2009aSym")
    assert check_card(_card(), "w.h5", space="MNI152NLin6Asym") == []  # generic MNI152 card: any MNI152 space
    assert "space 'fsaverage'" in check_card(_card(), "w.h5", space="fsaverage")[0]
    assert check_card(None, "w.h5", model="anything") == []  # no card: nothing to check
    assert check_card(card, "w.h5", model="clci_net", input_shape=(224, 176, 1), crop="clci", intensity="v2",
                      space="MNI152NLin2009aSym", grid="atlas") == []
    with pytest.raises(CardMismatchError, match=r"^w.h5: the weights are a 'clci_net' model by their card, not "
                                                r"'baseline'.*\(model card w.h5.card.json\)$"):
        check_card(card, "w.h5", model="baseline")
    size = check_card(card, "w.h5", input_shape=(224, 192, 1))  # convolutional: it runs, with a warning
    assert len(size) == 1 and "trained on 224x176 slices (crop 'clci'), the model takes 224x192" in size[0]
    with pytest.raises(CardMismatchError, match="take 1-channel input, the model 3"):
        check_card(card, "w.h5", input_shape=(224, 176, 3))
    with pytest.raises(CardMismatchError, match="input is in space 'T1w'.*--register"):
        check_card(card, "w.h5", space="T1w")
    assert check_card(card, "w.h5", space="T1w", grid="registered") == []
    notes = check_card(card, "w.h5", crop="spin", intensity="r1.1", space="MNI152NLin6Asym", grid="resampled")
    assert len(notes) == 4 and all(n.startswith("w.h5: ") for n in notes)
    assert "crop window 'clci'" in notes[0] and "scaled 'v2'" in notes[1] and "MNI152NLin6Asym" in notes[2]
    assert "resampled to it without registration" in notes[3]


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_every_catalogue_entry_has_a_card(name):
    card = catalog_card(name)
    entry = CATALOG[name]
    assert card["architecture"]["name"] == entry["architecture"] and card["input"]["shape"] == entry["input_shape"]
    assert card["input"]["crop"] == entry["crop"] and card["input"]["crop_window"] == entry["crop_window"]
    assert card["input"]["intensity"] == "r1.1" and card["metrics"]["published"] == entry["published_scores"]
    assert card["weights"]["file"] == entry["file"]


def test_weights_show_prints_cards(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    assert main(["weights", "--show", "spin_clcinet", "--manifest", str(tmp_path / "none.json")]) == 0
    out = capsys.readouterr().out
    assert "architecture clci_net" in out and "crop spin" in out and "intensity r1.1" in out
    w = tmp_path / "w.h5"
    w.write_bytes(b"")
    write_card(w, _card(intensity="v2", name="mine"))
    assert main(["weights", "--show", str(w), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == read_card(w)
    os.remove(card_path(w))
    assert main(["weights", "--show", str(w)]) == 2
    assert f"{w}: no model card ({card_path(w)} does not exist" in _one_line_error(capsys, "weights")
    assert main(["weights", "--show", "nothing_like_it", "--manifest", str(tmp_path / "none.json")]) == 2
    assert "--show nothing_like_it: no such weights file, catalogue entry" in _one_line_error(capsys, "weights")


def test_train_writes_the_card_and_predict_reads_it(tiny, tmp_path, capsys, monkeypatch):  # noqa: F811
    """A 1-step `train` writes the card; `predict` refuses another --model and warns of another input size."""
    from clci_keras.inference.predict import card_settings
    from clci_keras.training import train

    monkeypatch.delenv(DEBUG_ENV, raising=False)
    h5, split = tiny
    run = str(tmp_path / "run")
    res = train(MODEL, h5, split, run, crop=CROP, batch_size=2, val_batch_size=8, epochs=1, steps_per_epoch=1,
                train_slices="lesion+2", val_slices="lesion", tensorboard=False, verbose=0,
                manifest=str(tmp_path / "manifest.json"))
    weights = os.path.join(run, res["weights"])
    card = read_card(weights)
    assert res["card"] == os.path.basename(card_path(weights))
    assert card["architecture"]["name"] == MODEL and card["input"]["shape"] == [32, 32, 1]
    assert card["input"]["crop"] == "96:128,80:112" and card["input"]["intensity"] == "r1.1"
    assert card["training"]["synthetic"] is True and card["training"]["train_subjects"] == 2
    assert card["metrics"]["validation"]["monitor"] == "val_loss" and card["software"]["keras"]
    assert card["weights"]["bytes"] == os.path.getsize(weights)
    with open(tmp_path / "manifest.json") as f:
        assert json.load(f)["weights"][0]["card"] == os.path.basename(card_path(weights))
    # The card fixes the model; another --model is refused before any work, another input size warned.
    assert card_settings(weights)["model"] == MODEL
    import nibabel as nib

    scan, out = str(tmp_path / "scan.nii.gz"), tmp_path / "out"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), scan)
    assert main(["predict", scan, "-o", str(out), "--weights", weights, "--model", "clci_net"]) == 2
    assert f"{weights}: the weights are a '{MODEL}' model by their card, not 'clci_net'" in \
        _one_line_error(capsys, "predict")
    assert not out.exists()
    main(["predict", scan, "-o", str(out), "--weights", weights])  # the 4x4x4 scan itself fails
    assert f"warning: {weights}: the weights were trained on 32x32 slices (crop '96:128,80:112'), the model " \
           "takes 224x176" in capsys.readouterr().err


def test_predict_takes_the_intensity_and_crop_of_the_card(tmp_path, capsys):
    """The card's intensity scheme is used (an override is warned); its crop sizes the model."""
    import warnings

    from clci_keras.data.constants import ATLAS_AFFINE, ATLAS_SHAPE
    from clci_keras.inference import build_inference_model
    from clci_keras.inference.predict import CardWarning
    from clci_keras.models import build_model, save_weights_legacy
    from test_predict import _nifti, _phantom  # noqa: F401  (registers the stand-in models)

    weights = str(tmp_path / "w.h5")
    save_weights_legacy(build_model("test_threshold"), weights)
    write_card(weights, _card(architecture="test_threshold", intensity="v2"))
    vol, _ = _phantom(ATLAS_AFFINE, ATLAS_SHAPE)
    scan = str(tmp_path / "scan.nii.gz")
    _nifti(vol, ATLAS_AFFINE).to_filename(scan)
    assert main(["predict", scan, "-o", str(tmp_path / "a"), "--weights", weights, "--no-qc"]) == 0
    out = capsys.readouterr()
    assert "model test_threshold (fp32)" in out.out and f"intensity v2 (model card {card_path(weights)})" in out.out
    assert "warning" not in out.err
    assert main(["predict", scan, "-o", str(tmp_path / "b"), "--weights", weights, "--no-qc",
                 "--intensity", "r1.1"]) == 0
    out = capsys.readouterr()
    assert "intensity r1.1 (given)" in out.out
    assert f"warning: {weights}: trained on intensities scaled 'v2'" in out.err
    # The card's crop sizes the model; a crop of the same size but another window is warned.
    write_card(weights, _card(architecture="test_threshold", crop="xnet", input_shape=[224, 192, 1]))
    assert build_inference_model("test_threshold", weights).input_shape == (None, 224, 192, 1)
    write_card(weights, _card(architecture="test_threshold", crop="spin"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert build_inference_model("test_threshold", weights, crop="clci").input_shape == (None, 224, 176, 1)
    assert [str(w.message) for w in caught if w.category is CardWarning][0].startswith(
        f"{weights}: trained with crop window 'spin'")
