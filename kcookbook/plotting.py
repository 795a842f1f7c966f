"""Plots the recipes share (matplotlib, imported only when a plot is drawn).

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
