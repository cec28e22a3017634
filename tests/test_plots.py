"""Dev-set figures: curves agree with scikit-learn, and the PNGs are written."""

import numpy as np

from afqmc_exp.plots import confusion, curves, save_dev_plots


def test_curves_match_scikit_learn():
    from sklearn.metrics import precision_recall_curve, roc_curve

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) * 0.6 + labels * 0.3, 2)
    got = curves(labels, scores)
    precision, recall, _ = precision_recall_curve(labels, scores)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(got["precision"], precision[:-1][::-1])
    np.testing.assert_allclose(got["recall"], recall[:-1][::-1])
    np.testing.assert_allclose(got["fpr"], fpr)
    np.testing.assert_allclose(got["tpr"], tpr)


def test_confusion_rows_are_gold_columns_predicted():
    assert confusion(np.array([0, 0, 1, 1, 1]), np.array([0.1, 0.9, 0.2, 0.8, 0.7])).tolist() == [[1, 1], [1, 2]]


def test_pngs_are_written(tmp_path):
    paths = save_dev_plots(np.array([0, 1, 0, 1, 1]), np.array([0.2, 0.7, 0.4, 0.9, 0.3]), tmp_path, "run")
    assert [p.name for p in paths] == ["confusion_matrix.png", "pr_curve.png", "roc_curve.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
