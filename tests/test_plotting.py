"""kcookbook.plotting.show_images: what a recipe's gallery draws (cv/03), checked on the figure itself."""

import doctest

import matplotlib
import numpy as np
import pytest

import kcookbook.plotting
from kcookbook.plotting import show_images

matplotlib.use("Agg")


def _batch():
    images = np.full((3, 40, 50, 3), 128.0)
    boxes = np.array([[[1, 2, 11, 22], [5, 5, 9, 9]],
                      [[0, 0, 40, 30], [0, 0, 0, 0]],
                      [[0, 0, 0, 0], [0, 0, 0, 0]]], "float32")
    box_labels = np.array([[0, 1], [1, -1], [-1, -1]], "float32")
    labels = np.array([[1.0, 0.0, 0.0], [0.6, 0.0, 0.4], [0.0, 0.002, 0.998]], "float32")
    return {"images": images, "bounding_boxes": {"boxes": boxes, "labels": box_labels}, "labels": labels}


@pytest.mark.backend_independent
def test_boxes_are_drawn_where_the_data_puts_them_and_padding_is_skipped():
    figure = show_images(_batch(), "gallery", box_names=["face", "cup"], columns=2)
    axes = figure.axes
    assert len(axes) == 3  # 2 columns x 2 rows, the unused fourth axis removed
    assert [len(ax.patches) for ax in axes] == [2, 1, 0]
    first = axes[0].patches[0]
    assert (first.get_x(), first.get_y(), first.get_width(), first.get_height()) == (1, 2, 10, 20)
    assert [text.get_text() for text in axes[0].texts] == ["face", "cup"]
    assert figure.get_suptitle() == "gallery"
    matplotlib.pyplot.close(figure)


@pytest.mark.backend_independent
def test_mixed_labels_become_titles_with_the_two_largest_weights():
    figure = show_images(_batch(), label_names=["astronaut", "coffee", "rocket"])
    assert [ax.get_title() for ax in figure.axes[:3]] == ["100% astronaut", "60% astronaut + 40% rocket",
                                                         "100% rocket"]  # 0.2% coffee is left out
    assert all(len(ax.patches) == 0 for ax in figure.axes)  # no box_names: boxes not drawn
    matplotlib.pyplot.close(figure)


@pytest.mark.backend_independent
def test_grayscale_images_are_shown_in_gray():
    figure = show_images({"images": np.zeros((2, 8, 8, 1))}, columns=2)
    assert [ax.images[0].get_cmap().name for ax in figure.axes] == ["gray", "gray"]
    matplotlib.pyplot.close(figure)


def test_tensors_of_the_running_backend_are_accepted():
    import keras

    batch = _batch()
    batch["images"] = keras.ops.convert_to_tensor(batch["images"])
    figure = show_images(batch, box_names=["face", "cup"])
    np.testing.assert_array_equal(figure.axes[0].images[0].get_array(), np.full((40, 50, 3), 128, "uint8"))
    matplotlib.pyplot.close(figure)


@pytest.mark.backend_independent
@pytest.mark.parametrize("data, kwargs, culprit", [
    ([np.zeros((1, 8, 8, 3))], {}, "'images'"),
    ({"pixels": np.zeros((1, 8, 8, 3))}, {}, "['pixels']"),
    ({"images": np.zeros((8, 8, 3))}, {}, "(N, H, W, C)"),
    (_batch(), {"label_names": ["a", "b"]}, "label_names"),
    (_batch(), {"box_names": ["face"]}, "box label 1"),
])
def test_bad_input_names_the_problem(data, kwargs, culprit):
    with pytest.raises(ValueError) as error:
        show_images(data, **kwargs)
    assert culprit in str(error.value)
    matplotlib.pyplot.close("all")


@pytest.mark.backend_independent
def test_the_module_examples_run():
    failures, tried = doctest.testmod(kcookbook.plotting)
    assert tried >= 3 and failures == 0


@pytest.mark.backend_independent
def test_confusion_matrix_counts_each_label_prediction_pair():
    from kcookbook.plotting import confusion_matrix

    labels = np.array([0, 0, 1, 1, 1, 2])
    predictions = np.array([0, 2, 1, 1, 0, 2])
    expected = np.array([[1, 0, 1], [1, 2, 0], [0, 0, 1]])
    np.testing.assert_array_equal(confusion_matrix(labels, predictions, 3), expected)
    np.testing.assert_array_equal(confusion_matrix(labels, predictions, 4)[:3, :3], expected)


@pytest.mark.backend_independent
@pytest.mark.parametrize("labels, predictions, culprit", [
    ([0, 1], [0], "same shape"),
    ([0, 3], [0, 1], "got 3"),
    ([0, -1], [0, 1], "got -1"),
])
def test_confusion_matrix_bad_input_names_the_problem(labels, predictions, culprit):
    from kcookbook.plotting import confusion_matrix

    with pytest.raises(ValueError) as error:
        confusion_matrix(labels, predictions, 3)
    assert culprit in str(error.value)


@pytest.mark.backend_independent
def test_plot_confusion_matrix_writes_the_counts_and_a_colour_bar():
    from kcookbook.plotting import plot_confusion_matrix

    ax = plot_confusion_matrix([0, 0, 1, 2], [0, 1, 1, 1], ["neg", "neu", "pos"])
    assert [text.get_text() for text in ax.texts] == ["1", "1", "0", "0", "1", "0", "0", "1", "0"]
    assert ax.get_title() == "accuracy 0.500"
    assert [label.get_text() for label in ax.get_xticklabels()] == ["neg", "neu", "pos"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted", "true label")
    assert len(ax.figure.axes) == 2  # the heat map and its colour bar
    matplotlib.pyplot.close(ax.figure)
