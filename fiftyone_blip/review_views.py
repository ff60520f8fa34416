"""The saved review views that label QA, CapFilt and caption evaluation leave for a reviewer.

A run saves its review view only under a free name or over the view it saved
itself before (the same run key, which names the capability and the field):
the view's description marks it. A user's saved view of that name is refused
before the run does any work, and deleting a run removes only the views it
saved.
"""

from __future__ import annotations

MARK = "fiftyone-blip review view of run "


def default_name(field: str) -> str:
    """The review view a run into `field` saves when none is named ("label_match" -> "label-match-review")."""
    return f"{field.replace('_', '-')}-review"


def saved_by(dataset, name: str) -> str | None:
    """The run key that saved the view `name`; None for a view saved by anyone else (or none)."""
    if not dataset.has_saved_view(name):
        return None
    description = dataset.get_saved_view_info(name).get("description") or ""
    return description[len(MARK) :] if description.startswith(MARK) else None


def check(dataset, name: str, run_key: str) -> None:
    """Refuses a review view name that holds a saved view this run did not save."""
    if dataset.has_saved_view(name) and saved_by(dataset, name) != run_key:
        raise ValueError(
            f"`view_name` {name!r} is a saved view of dataset {dataset.name!r} that this run did not save: "
            "choose another name, or delete that view first"
        )


def save(dataset, name: str, view, run_key: str) -> None:
    """Saves (or replaces) the review view `name` of the run `run_key`; see `check`."""
    check(dataset, name, run_key)
    dataset.save_view(name, view, description=f"{MARK}{run_key}", overwrite=True)


def of_run(dataset, run_key: str) -> list[str]:
    """The saved views the run `run_key` saved."""
    return sorted(name for name in dataset.list_saved_views() if saved_by(dataset, name) == run_key)
