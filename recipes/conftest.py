"""Run the longest recipes first, so CI's two nbval workers finish together.

`make test-recipes` runs the notebooks on two workers, one notebook per worker at a time
(`--dist loadfile --no-loadscope-reorder` hands out files in collection order; without that flag
pytest-xdist re-sorts them by their number of cells). Collected alphabetically, a long notebook that
comes late keeps one worker busy while the other sits idle. Each saved notebook records when its first
cell started and its last cell finished (nbclient's `execution` metadata), so the notebooks are put in
order of that saved duration, longest first; a notebook without timestamps counts as long (new work is
usually the slowest). The cells of one notebook keep their order.
"""

import json
from datetime import datetime


def saved_seconds(path):
    """Seconds between the first cell's start and the last cell's end in the saved notebook, or None."""
    try:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError):
        return None
    stamps = [cell.get("metadata", {}).get("execution", {}) for cell in cells if cell.get("cell_type") == "code"]
    try:
        start = datetime.fromisoformat(stamps[0]["iopub.execute_input"].replace("Z", "+00:00"))
        end = datetime.fromisoformat(stamps[-1]["shell.execute_reply"].replace("Z", "+00:00"))
    except (IndexError, KeyError, ValueError):
        return None
    return (end - start).total_seconds()


def pytest_collection_modifyitems(config, items):
    notebooks = {}
    for item in items:
        notebooks.setdefault(item.path, []).append(item)
    durations = {path: saved_seconds(path) for path in notebooks}
    order = sorted(notebooks, key=lambda path: -(durations[path] if durations[path] is not None else float("inf")))
    items[:] = [item for path in order for item in notebooks[path]]
