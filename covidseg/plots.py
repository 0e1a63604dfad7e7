"""matplotlib for figures written to files."""

from __future__ import annotations

from types import ModuleType


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the non-interactive Agg backend, so figures render on machines without a display.

    Imported on first use: entry points that draw nothing do not pay for matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
