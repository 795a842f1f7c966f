"""kcookbook.detection: objects pasted on canvases (boxes checked against the pixels) and drawn boxes."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from kcookbook.detection import draw_boxes, place_on_canvases, shape_objects  # noqa: E402

pytestmark = pytest.mark.backend_independent  # numpy and matplotlib only


def digit_like_objects():
    """Three grey patches with ink in different places inside a 12 × 12 frame (margins, as MNIST has)."""
    objects = np.zeros((3, 12, 12), "float32")
    objects[0, 2:10, 3:6] = 255  # a bar
    objects[1, 1:11, 1:11] = 255  # a block
    objects[2, 4:8, 2:11] = 255  # a wide bar
    return objects


def test_boxes_are_the_tight_boxes_of_the_pasted_ink():
    images, targets = place_on_canvases(digit_like_objects(), [0, 1, 2], num_images=20, canvas_size=40,
                                        objects_per_image=(1, 4), scale_range=(1.0, 2.0), seed=3)
    assert images.shape == (20, 40, 40, 3) and targets["boxes"].shape == (20, 4, 4)
    counts = (targets["labels"] >= 0).sum(1)
    assert counts.min() >= 1 and counts.max() >= 3  # several objects per canvas
    for image, boxes, labels in zip(images, targets["boxes"], targets["labels"]):
        ink = image[..., 0] > 0.2 * 255  # the threshold the boxes were cut at
        covered = np.zeros_like(ink)
        for (x1, y1, x2, y2), label in zip(boxes.astype(int), labels):
            if label < 0:
                assert np.all(boxes[labels < 0] == -1)
                continue
            region = ink[y1:y2, x1:x2]
            # tight: ink on every edge row and column of the box
            assert region[0].any() and region[-1].any() and region[:, 0].any() and region[:, -1].any()
            covered[y1:y2, x1:x2] = True
        assert not np.any(ink & ~covered)  # no ink outside the boxes
        real = boxes[labels >= 0]
        for a in range(len(real)):  # boxes do not overlap
            for b in range(a + 1, len(real)):
                overlap = (min(real[a, 2], real[b, 2]) - max(real[a, 0], real[b, 0]) > 0 and
                           min(real[a, 3], real[b, 3]) - max(real[a, 1], real[b, 1]) > 0)
                assert not overlap


def test_classes_follow_the_objects():
    objects = np.zeros((2, 8, 8, 3), "float32")
    objects[0, 2:6, 2:6, 0] = 255  # red: class 0
    objects[1, 2:6, 2:6, 2] = 255  # blue: class 1
    images, targets = place_on_canvases(objects, [0, 1], num_images=10, canvas_size=32, seed=0)
    for image, boxes, labels in zip(images, targets["boxes"], targets["labels"]):
        for (x1, y1, x2, y2), label in zip(boxes.astype(int), labels[labels >= 0]):
            colour = image[y1:y2, x1:x2].reshape(-1, 3).max(0)
            assert colour.argmax() == (0 if label == 0 else 2)


def test_bad_arguments_named():
    with pytest.raises(ValueError, match=r"objects must be \(k, h, w\).*classes \(1,\)"):
        place_on_canvases(np.zeros((2, 8, 8)), [0], 1)
    with pytest.raises(ValueError, match="do not fit on a canvas of 16"):
        place_on_canvases(np.ones((1, 12, 12)), [0], 1, canvas_size=16, scale_range=(1.0, 2.0))
    with pytest.raises(ValueError, match="objects_per_image"):
        place_on_canvases(np.ones((1, 4, 4)), [0], 1, objects_per_image=(3, 1))


def test_draw_boxes_skips_padding_and_names_classes():
    fig, ax = plt.subplots()
    ax.imshow(np.zeros((32, 32, 3)))
    drawn = draw_boxes(ax, [[1, 2, 11, 12], [-1, -1, -1, -1], [5, 5, 20, 30]], classes=[1, -1, 0],
                       confidence=[0.9, 0.0, 0.5], class_names=["zero", "one"])
    assert len(drawn) == 2
    assert (drawn[0].get_x(), drawn[0].get_y(), drawn[0].get_width(), drawn[0].get_height()) == (1, 2, 10, 10)
    assert [t.get_text() for t in ax.texts] == ["one 0.90", "zero 0.50"]
    plt.close(fig)


def test_shape_objects_one_colour_and_shape_per_class():
    objects = shape_objects(16)
    assert objects.shape == (3, 16, 16, 3)
    ink = objects.max(-1) > 0
    assert [int(objects[k].reshape(-1, 3).max(0).argmax()) for k in range(3)] == [0, 1, 2]  # red, green, blue
    assert ink[0].sum() == 12 * 12 and ink[0, 2, 2]  # a filled square with a 2-px margin
    assert ink[1, 8, 1:15].all() and not ink[1, 2, 2]  # a disc: full across the middle, no corners
    assert ink[2, 3].sum() < ink[2, 13].sum()  # the triangle widens downwards
