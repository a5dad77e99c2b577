"""Whole-patient evaluation through the one reader and the one predictor.

Constant models make the expected scores exact: a model that calls every
pixel "lesion" has recall 1 on each patient with a lesion in the crop. A
two-class softmax model must be scored on its lesion channel (class 1), both
in evaluation and in NIfTI prediction.
"""
import numpy as np
import pytest

from clci_keras.data import SliceReader, load_subject_slices


def _constant_model(shape, num_class, lesion_logit):
    """A 1x1-conv model whose lesion output is sigmoid/softmax of a constant."""
    import keras

    inputs = keras.Input(shape)
    if num_class == 1:
        out = keras.layers.Conv2D(1, 1, activation="sigmoid", kernel_initializer="zeros",
                                  bias_initializer=keras.initializers.Constant(lesion_logit))(inputs)
    else:  # class 0 background, class 1 lesion
        bias = np.array([0.0, lesion_logit], np.float32)
        out = keras.layers.Conv2D(2, 1, activation="softmax", kernel_initializer="zeros",
                                  bias_initializer=keras.initializers.Constant(bias))(inputs)
    return keras.Model(inputs, out)


@pytest.mark.parametrize("num_class", [1, 2])
def test_two_class_models_are_scored_on_their_lesion_channel(synthetic_h5, num_class):
    from clci_keras.evaluation.evaluate import evaluate_model

    everywhere = _constant_model((224, 176, 1), num_class, lesion_logit=8.0)
    rows = evaluate_model(everywhere, synthetic_h5, [0, 1], batch_size=16, slices="brain",
                          progress=False, keep_predictions=True)
    assert [r["subject_index"] for r in rows] == [0, 1]
    for r in rows:
        _, gt = load_subject_slices(synthetic_h5, r["subject_index"], channel_axis=False)
        assert r["_gt"].sum() == gt.sum() > 0
        assert r["recall"] == pytest.approx(1.0)  # lesion channel ~1 everywhere
        assert r["_prob"].min() == 0.0  # slices outside the brain are not predicted
    nowhere = _constant_model((224, 176, 1), num_class, lesion_logit=-8.0)
    rows = evaluate_model(nowhere, synthetic_h5, [0], batch_size=16, slices="brain", progress=False)
    assert rows[0]["recall"] == pytest.approx(0.0)


def test_predict_subject_matches_a_direct_model_call(synthetic_h5):
    import keras

    from clci_keras.evaluation.evaluate import predict_subject

    keras.utils.set_random_seed(0)
    inputs = keras.Input((224, 176, 1))
    model = keras.Model(inputs, keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(inputs))
    prob, gt = predict_subject(model, synthetic_h5, 2, batch_size=7)  # 189 = 27 x 7
    x, y = SliceReader(synthetic_h5).read_subject(2)
    ref = np.asarray(model.predict_on_batch(x[:20]))[..., 0]
    np.testing.assert_allclose(prob[:20], ref, atol=1e-5)
    assert prob.shape == gt.shape == (189, 224, 176)
    np.testing.assert_array_equal(gt, y[..., 0])
    with pytest.raises(ValueError, match="'most'"):
        predict_subject(model, synthetic_h5, 2, slices="most")
    # A slab: only slices 30..49 predicted (the same numbers), the rest "no lesion".
    slab, _ = predict_subject(model, synthetic_h5, 2, batch_size=7, slices="30:50")
    np.testing.assert_array_equal(slab[30:50], prob[30:50])
    assert not slab[:30].any() and not slab[50:].any()
    for bad in ("50:30", "a:b", "3:", "-1:4"):
        with pytest.raises(ValueError, match=f"unknown evaluation slices '{bad}'"):
            predict_subject(model, synthetic_h5, 2, slices=bad)
    with pytest.raises(ValueError, match="'150:200' ends past the subject's 189 slices"):
        predict_subject(model, synthetic_h5, 2, slices="150:200")


def test_nifti_prediction_uses_the_lesion_channel_of_a_two_class_model():
    from clci_keras.data import ATLAS_SHAPE
    from clci_keras.data.reader import brain_slice_indices
    from clci_keras.inference import predict_atlas_volume

    vol = np.full(ATLAS_SHAPE, 300.0, np.float32)
    model = _constant_model((224, 176, 1), 2, lesion_logit=8.0)
    prob, n = predict_atlas_volume(model, vol, batch_size=32)
    brain = list(brain_slice_indices())
    assert n == 155
    # crop window (rows 5:229 of 233 -> y, columns 10:186 of 197 -> x) is lesion, the border is not
    assert prob[10:186, 5:229, brain].min() > 0.99
    assert prob[:10].max() == 0.0 and prob[:, :, [z for z in range(189) if z not in brain]].max() == 0.0


def test_progress_in_a_log_file_has_no_redraws(synthetic_h5, capfd):
    """Off a terminal (captured stderr) progress is plain lines: no carriage returns, no ANSI escapes."""
    from clci_keras.evaluation.evaluate import evaluate_model

    model = _constant_model((224, 176, 1), 1, lesion_logit=-8.0)
    capfd.readouterr()
    evaluate_model(model, synthetic_h5, [0], batch_size=32, slices="brain", progress=True)
    err = capfd.readouterr().err
    assert "predicting: 155/155 slice (100%)" in err
    assert "\r" not in err and "\x1b[" not in err
    assert len([l for l in err.splitlines() if l.startswith("predicting:")]) <= 11


def test_progress_bar_on_a_terminal_is_tqdm_and_plain_lines_elsewhere():
    import io

    from clci_keras.fileio import progress_bar

    class Tty(io.StringIO):
        def isatty(self):
            return True

    log = io.StringIO()
    bar = progress_bar(7, desc="work", unit="item", file=log)
    for _ in range(7):
        bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    assert lines[-1] == "work: 7/7 item (100%)" and len(lines) == 7 and "\r" not in log.getvalue()
    tty = Tty()
    bar = progress_bar(3, desc="work", unit="item", file=tty)
    bar.update(3)
    bar.close()
    assert "\r" in tty.getvalue()  # a real bar where redraws belong


def test_a_second_evaluation_into_the_same_scores_fails_at_once(synthetic_h5, tmp_path):
    """Issue 24: one evaluation of a part per output folder at a time; nothing written by the second."""
    from clci_keras.data.splits import save_split
    from clci_keras.evaluation.evaluate import evaluate_run
    from clci_keras.fileio import OutputInUseError, exclusive

    split = str(tmp_path / "split.json")
    save_split({"train": [0], "val": [], "test": [1], "mode": "holdout"}, split)
    model = _constant_model((224, 176, 1), 1, lesion_logit=8.0)
    out = tmp_path / "run"
    with exclusive(out / "scores_test.csv", what="evaluation output"):  # as a first evaluation holds it
        with pytest.raises(OutputInUseError, match=r"scores_test.csv: this evaluation output is in use"):
            evaluate_run(None, "constant", synthetic_h5, split, out_dir=str(out), model=model, slices="brain",
                         progress=False)
    assert not out.exists()  # nothing written by the second, not even the folder the lock made
    summary = evaluate_run(None, "constant", synthetic_h5, split, out_dir=str(out), model=model, slices="brain",
                           progress=False)  # free again: it runs
    assert summary["subjects"] == [1] and sorted(p.name for p in out.iterdir()) == ["scores_test.csv",
                                                                                 "summary_test.json"]
