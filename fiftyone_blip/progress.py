"""Progress, one way for every long task: `progress` is True (a bar), False/None or `progress(done, total)`.

The engine reports samples, adapter training reports steps; an App operator
passes a callable that forwards to the App.
"""

from __future__ import annotations


def progress_bar(total: int, description: str, unit: str = "sample"):
    """A tqdm bar (a notebook widget in Jupyter)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit=unit, dynamic_ncols=True)


def reporter(progress, description: str, unit: str = "sample"):
    """(report(done, total), close()) for a `progress` argument.

    True draws a bar, opened at the first report; False or None reports
    nothing; a callable is called as is.
    """
    if callable(progress):
        return progress, lambda: None
    if not progress:
        return (lambda done, total: None), lambda: None
    bar = {}

    def report(done, total):
        if "bar" not in bar:
            bar["bar"] = progress_bar(total, description, unit)
        bar["bar"].total = total
        bar["bar"].n = done
        bar["bar"].refresh()

    return report, lambda: bar.get("bar") and bar["bar"].close()
