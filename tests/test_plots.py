"""Dev-set figures: curves agree with scikit-learn, the confusion matrix counts (gold, predicted), PNGs are
written: the confusion matrix, PR and ROC curves for every task, one curve per label (against the rest) for three
labels or more."""

import numpy as np

from afqmc_exp.plots import confusion, curves, dev_plots


def binary(prob_positive) -> np.ndarray:
    prob_positive = np.asarray(prob_positive)
    return np.stack([1 - prob_positive, prob_positive], axis=1)


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
    assert confusion(np.array([0, 0, 1, 1, 1]), binary([0.1, 0.9, 0.2, 0.8, 0.7])).tolist() == [[1, 1], [1, 2]]
    assert confusion(np.array([0, 1, 1]), binary([0.5, 0.6, 0.4]), threshold=0.55).tolist() == [[1, 0], [1, 1]]
    three = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    assert confusion(np.array([0, 1, 1, 2]), three).tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]


def test_each_task_gets_three_pngs():
    pngs = dev_plots(np.array([0, 1, 0, 1, 1]), binary([0.2, 0.7, 0.4, 0.9, 0.3]), ["0", "1"], "run")
    assert list(pngs) == ["confusion_matrix.png", "pr_curve.png", "roc_curve.png"]
    assert all(png[:4] == b"\x89PNG" for png in pngs.values())
    three = np.random.default_rng(0).dirichlet(np.ones(3), size=12)
    names = ["entailment", "neutral", "contradiction"]
    pngs = dev_plots(np.arange(12) % 3, three, names, "run")
    assert list(pngs) == ["confusion_matrix.png", "pr_curve.png", "roc_curve.png"]
    assert all(png[:4] == b"\x89PNG" for png in pngs.values())


def test_three_labels_get_one_curve_per_label_against_the_rest():
    from afqmc_exp.plots import each_label

    three = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3]])
    shown = each_label(np.array([0, 2, 1]), three, ["e", "n", "c"])
    assert [name for name, _, _ in shown] == ["e", "n", "c"]
    assert [gold.tolist() for _, gold, _ in shown] == [[True, False, False], [False, False, True], [False, True, False]]
    assert shown[2][2].tolist() == [0.1, 0.6, 0.3]
    assert [name for name, _, _ in each_label(np.array([0, 1]), binary([0.2, 0.8]), ["0", "1"])] == ["1"]
