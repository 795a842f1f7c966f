"""Plots the recipes share (matplotlib, imported only when a plot is drawn).

``show_images`` draws a batch of images with their boxes (what augmentation layers return),
``plot_confusion_matrix`` a labelled confusion matrix with its counts;
``plot_loss_curves`` draws training and validation loss of one or more ``fit`` runs against
optimizer steps, so runs with the same step budget line up:

    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> history = {"loss": [5.0, 4.0, 3.5], "val_loss": [4.8, 4.1, 3.9]}
    >>> ax = plot_loss_curves({"tiny model": history}, steps_per_epoch=100)
    >>> [[int(step) for step in line.get_xdata()] for line in ax.get_lines()]  # train, validation
    [[50, 150, 250], [100, 200, 300]]
"""


def _history_dict(history):
    values = getattr(history, "history", history)
    if not isinstance(values, dict):
        raise TypeError(f"Expected a keras History or its .history dict, got {type(history).__name__}.")
    return values


def plot_loss_curves(histories, steps_per_epoch, metric="loss", ax=None, title=None):
    """Training (solid) and validation (dashed, when present) curves of several runs.

    Args:
        histories: ``{label: History}`` (what ``fit`` returns, or its ``.history`` dict). Each epoch's
            training value is Keras' mean over that epoch, drawn at the middle of the epoch; the
            validation value is measured at its end and drawn there.
        steps_per_epoch: optimizer steps per epoch (the x axis is steps, epoch ``e`` ends at
            ``e · steps_per_epoch``).
        metric: the history key to plot (``"loss"``, ``"accuracy"``…); ``"val_" + metric`` is the
            validation curve.
        ax: a matplotlib axis to draw on (a new figure when None).
        title: the axis title.

    Returns the axis.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4))
    for index, (label, history) in enumerate(histories.items()):
        values = _history_dict(history)
        if metric not in values:
            raise KeyError(f"Run {label!r} has no {metric!r} in its history; it has {sorted(values)}.")
        color = f"C{index}"
        ends = [steps_per_epoch * (epoch + 1) for epoch in range(len(values[metric]))]
        middles = [end - steps_per_epoch / 2 for end in ends]
        ax.plot(middles, values[metric], "-", color=color, label=f"{label} (train, mean per epoch)")
        if "val_" + metric in values:
            ax.plot(ends, values["val_" + metric], "--", marker="o", markersize=3, color=color,
                    label=f"{label} (validation)")
    ax.set(xlabel="optimizer step", ylabel=metric, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def _to_numpy(data):
    import keras
    import numpy as np

    return keras.tree.map_structure(lambda x: np.asarray(keras.ops.convert_to_numpy(x)), data)


def show_images(data, title="", box_names=None, label_names=None, columns=6):
    """A grid of images in the dict format of Keras' augmentation layers, with boxes and mixed labels.

    Args:
        data: ``{"images": (N, H, W, C) pixels 0-255}``, optionally with
            ``"bounding_boxes": {"boxes": (N, B, 4) xyxy pixels, "labels": (N, B)}`` (label -1 marks
            padding and is not drawn) and ``"labels": (N, K)`` one-hot or mixed class weights (what
            ``MixUp``/``CutMix``/``Mosaic`` return). Tensors of any backend or numpy arrays.
        title: the figure's title.
        box_names: names of the box labels; when given, each box is drawn with its name. Without it
            boxes are not drawn.
        label_names: names of the K classes of ``"labels"``; when given, each image's title shows its
            (at most two) largest class weights, e.g. ``"62% coffee + 38% rocket"``.
        columns: images per row.

    Returns the matplotlib figure (shown at the end of a notebook cell, or with ``plt.show()``).

        >>> import matplotlib, numpy as np
        >>> matplotlib.use("Agg")
        >>> images = np.zeros((2, 32, 32, 3))
        >>> boxes = {"boxes": np.array([[[2, 2, 10, 10], [0, 0, 0, 0]]] * 2), "labels": np.array([[0, -1]] * 2)}
        >>> figure = show_images({"images": images, "bounding_boxes": boxes,
        ...                       "labels": np.array([[0.75, 0.25], [0.0, 1.0]])},
        ...                      box_names=["cup"], label_names=["coffee", "rocket"], columns=2)
        >>> [ax.get_title() for ax in figure.axes], [len(ax.patches) for ax in figure.axes]
        (['75% coffee + 25% rocket', '100% rocket'], [1, 1])
    """
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle

    if not isinstance(data, dict) or "images" not in data:
        raise ValueError("show_images takes a dict with an 'images' entry (N, H, W, C), as Keras' "
                         f"augmentation layers return; got {type(data).__name__}"
                         + (f" with keys {sorted(data)}" if isinstance(data, dict) else "") + ".")
    data = _to_numpy(data)
    images = data["images"]
    if images.ndim != 4:
        raise ValueError(f"show_images: 'images' must be (N, H, W, C), got shape {images.shape}.")
    if label_names is not None and "labels" in data and data["labels"].shape[-1] != len(label_names):
        raise ValueError(f"show_images: 'labels' has {data['labels'].shape[-1]} classes but label_names "
                         f"names {len(label_names)}; pass one name per class.")
    rows = -(-len(images) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.7 * rows), squeeze=False)
    for index, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if index >= len(images):
            figure.delaxes(ax)
            continue
        ax.imshow(np.clip(images[index], 0, 255).astype("uint8"), cmap="gray" if images.shape[-1] == 1 else None)
        if box_names is not None and "bounding_boxes" in data:
            for (x1, y1, x2, y2), label in zip(data["bounding_boxes"]["boxes"][index],
                                               data["bounding_boxes"]["labels"][index]):
                if label < 0:
                    continue
                if int(label) >= len(box_names):
                    raise ValueError(f"show_images: box label {int(label)} has no name in box_names "
                                     f"({len(box_names)} names).")
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="yellow", lw=2))
                ax.text(x1 + 2, y1 + 10, box_names[int(label)], color="black", fontsize=7,
                        backgroundcolor="yellow")
        if label_names is not None and "labels" in data:
            mix = sorted(zip(data["labels"][index], label_names), reverse=True)[:2]
            ax.set_title(" + ".join(f"{weight:.0%} {name}" for weight, name in mix if weight > 0.005),
                         fontsize=8)
    figure.suptitle(title, y=1.0)
    figure.tight_layout()
    return figure


def confusion_matrix(labels, predictions, num_classes):
    """Counts of (true label, predicted label): row ``i``, column ``j`` counts label ``i`` predicted ``j``.

        >>> confusion_matrix([0, 0, 1, 2], [0, 1, 1, 1], num_classes=3).tolist()
        [[1, 1, 0], [0, 1, 0], [0, 1, 0]]
    """
    import numpy as np

    labels, predictions = np.asarray(labels).astype(int), np.asarray(predictions).astype(int)
    if labels.shape != predictions.shape:
        raise ValueError(f"confusion_matrix: labels {labels.shape} and predictions {predictions.shape} "
                         "must have the same shape (one prediction per label).")
    outside = [int(v) for v in np.concatenate([labels.ravel(), predictions.ravel()]) if not 0 <= v < num_classes]
    if outside:
        raise ValueError(f"confusion_matrix: class ids must lie in [0, {num_classes}); got {outside[0]}. "
                         "Pass num_classes = the number of classes.")
    matrix = np.zeros((num_classes, num_classes), int)
    np.add.at(matrix, (labels.ravel(), predictions.ravel()), 1)
    return matrix


def plot_confusion_matrix(labels, predictions, class_names, ax=None, title=None):
    """A confusion-matrix heat map with the counts written in the cells and a colour bar.

    Rows are the true labels, columns the predictions (both integer class ids indexing
    ``class_names``). The title defaults to the accuracy. Returns the axis.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    matrix = confusion_matrix(labels, predictions, len(class_names))
    if ax is None:
        _, ax = plt.subplots(figsize=(1.0 + 0.45 * len(class_names), 0.6 + 0.4 * len(class_names)))
    image = ax.imshow(matrix, cmap="Blues")
    for (row, column), count in np.ndenumerate(matrix):
        ax.text(column, row, count, ha="center", va="center", fontsize=8,
                color="white" if count > matrix.max() / 2 else "black")
    ax.set_xticks(range(len(class_names)), class_names)
    ax.set_yticks(range(len(class_names)), class_names)
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    ax.set(xlabel="predicted", ylabel="true label", title=title or f"accuracy {accuracy:.3f}")
    ax.figure.colorbar(image, ax=ax, label="count")
    return ax
