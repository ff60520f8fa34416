"""Progress, one way for every long task: `progress` is True (a bar), False/None or `progress(done, total)`.

`Progress` (the engine's) also takes what FiftyOne's own functions take: None
follows `fo.config.show_progress_bars`, and a callback that takes FiftyOne's
`ProgressBar` (e.g. `fo.report_progress(fn, n=10)`) works too.

The engine reports samples, adapter training reports steps; an App operator
passes a callable that forwards to the App.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable


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


def _takes_done_and_total(callback: Callable) -> bool:
    """True for `progress(done, total)`, False for FiftyOne's `progress(progress_bar)`."""
    try:
        inspect.signature(callback).bind(0, 0)
    except TypeError:
        return False
    except ValueError:  # no signature (a builtin): the documented form
        return True
    return True


class Progress:
    """Reports progress as FiftyOne's functions do.

    `progress`: True or None (a bar when `fo.config.show_progress_bars`), False
    (nothing), a callable `progress(done, total)`, or a FiftyOne callback that
    takes a `ProgressBar` (e.g. `fo.report_progress(fn, n=10)`).
    """

    def __init__(self, progress, total: int, description: str):
        import fiftyone as fo

        self.total = total
        self.processed = 0
        self.bar = self.pb = self.report = None
        if callable(progress) and _takes_done_and_total(progress):
            self.report = progress
        elif callable(progress):
            import fiftyone.core.utils as fou

            self.pb = fou.ProgressBar(total=total, progress=progress)
            self.pb.start()
        elif progress in (True, None) and fo.config.show_progress_bars:
            self.bar = progress_bar(total, description)

    def advance(self, count: int) -> None:
        self.processed += count
        if self.bar is not None:
            self.bar.update(count)
        if self.pb is not None:
            self.pb.set_iteration(self.processed)
        if self.report is not None:
            self.report(self.processed, self.total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.pb is not None:
            self.pb.close()
