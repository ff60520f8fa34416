"""The FiftyOne plugin of fiftyone-blip: registers the App's operators and panel.

They live in the library (`fiftyone_blip.app`, one module per capability), so
the forms always match the installed library; each builds its form from the
settings dataclasses and calls one `fiftyone_blip` function.
"""

from fiftyone_blip.app import OPERATORS, WordHeatmapsPanel  # noqa: F401 (the panel: scripts and tests reach it here)


def register(p):
    for operator in OPERATORS:
        p.register(operator)
