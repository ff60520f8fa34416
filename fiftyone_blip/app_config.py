"""How the App shows a run's fields: sidebar groups per capability, heatmaps through a colorscale.

Each run adds a result field and a few beside it (a confidence, per-word
maps), plus two bookkeeping fields: `F_error` (why a sample failed, empty
for most) and `F_run` (the fingerprint that makes resume safe). Left to
FiftyOne's defaults they all land in "primitives" or "labels", between the
user's own fields. So when a capability declares its fields, they go into
its own sidebar group ("BLIP captions", ...) and the bookkeeping fields into
one collapsed group, "BLIP run records", through the dataset's
`app_config.sidebar_groups`.

Only FiftyOne's default placement is changed: a field the user has put in a
group of their own stays there.

Heatmaps: coloured "by field" (FiftyOne's default), the App draws a heatmap
in the field's one colour at an opacity that is nearly zero for uint8 maps,
a faint tint. So when heatmaps are written to a dataset whose colour scheme
does not say otherwise, its App colour scheme colours by value and gives
the heatmap field a colorscale ("jet"), the setting that makes the maps
readable (`heatmap_colorscale`). A colour mode the user chose is kept.
"""

from __future__ import annotations

# the sidebar group of each capability's results (engine `Task.capability` -> group name)
GROUPS = {
    "caption": "BLIP captions",
    "embed": "BLIP embeddings",
    "match": "BLIP label QA",
    "heatmaps": "BLIP heatmaps",
    "vqa": "BLIP answers",
    "capfilt": "BLIP CapFilt",
    "caption_eval": "BLIP caption evaluation",
}
RUN_RECORDS = "BLIP run records"
# FiftyOne's own groups (`DatasetAppConfig.default_sidebar_groups`): fields there were placed by default
DEFAULT_GROUPS = frozenset({"tags", "metadata", "labels", "frame labels", "primitives", "other"})


def group_fields(dataset, capability: str, results, bookkeeping=()) -> bool:
    """Puts `results` in the sidebar group of `capability` and `bookkeeping` in the collapsed run-records group.

    Args:
        dataset: the FiftyOne dataset (not a view).
        capability: the engine's capability name ("caption", ...); an unknown
            one gets "BLIP <capability>".
        results: top-level result field names, in sidebar order.
        bookkeeping: the `_error` / `_run` field names.

    Returns:
        whether the dataset's App config changed (and was saved).
    """
    import fiftyone as fo

    config = dataset.app_config
    groups = config.sidebar_groups
    if groups is None:
        groups = fo.DatasetAppConfig.default_sidebar_groups(dataset)
    placed = {}  # path -> the group it is in now
    for group in groups:
        for path in group.paths or []:
            placed.setdefault(path, group.name)

    wanted = {GROUPS.get(capability, f"BLIP {capability}"): [f for f in results if "." not in f]}
    wanted[RUN_RECORDS] = [f for f in bookkeeping if "." not in f]
    ours = set(wanted) | set(GROUPS.values()) | {RUN_RECORDS}
    changed = config.sidebar_groups is None
    for name, paths in wanted.items():
        # a field the user moved into a group of their own (or its own custom group) stays there
        movable = [p for p in paths if placed.get(p) in (None, *DEFAULT_GROUPS, *ours) and placed.get(p) != name]
        if not movable:
            continue
        for group in groups:
            if group.paths and any(p in group.paths for p in movable):
                group.paths = [p for p in group.paths if p not in movable]
        target = next((g for g in groups if g.name == name), None)
        if target is None:
            target = fo.SidebarGroupDocument(name=name, paths=[], expanded=False if name == RUN_RECORDS else None)
            # result groups after FiftyOne's labels and custom groups, before primitives; run records last
            at = len(groups) if name == RUN_RECORDS else _index_before(groups, ("primitives", RUN_RECORDS))
            groups.insert(at, target)
        target.paths = [*(target.paths or []), *movable]
        changed = True
    if changed:
        config.sidebar_groups = groups
        dataset.save()
    return changed


def drop_empty_groups(dataset) -> bool:
    """Removes the sidebar groups fiftyone-blip made that no longer hold a field (after a run is deleted).

    Returns:
        whether the dataset's App config changed (and was saved).
    """
    config = dataset.app_config
    groups = config.sidebar_groups
    ours = {*GROUPS.values(), RUN_RECORDS}
    if groups is None or not any(g.name in ours and not g.paths for g in groups):
        return False
    config.sidebar_groups = [g for g in groups if g.name not in ours or g.paths]
    dataset.save()
    return True


# the App-side operator (operators/js/sidebar_groups.js) that shows these groups in the open dataset
SHOW_GROUPS_OPERATOR = "@fiftyone-blip/blip/show_sidebar_groups"


def sidebar_params(dataset) -> dict:
    """What `SHOW_GROUPS_OPERATOR` takes: the groups of fiftyone-blip in the dataset's config (name, paths,
    expanded, and `before`: the next group not ours, where a new one goes), and the names of all of ours
    (a group of ours missing from the config has gone, with its run)."""
    ours = {*GROUPS.values(), RUN_RECORDS}
    groups = dataset.app_config.sidebar_groups or []
    listed = []
    for at, group in enumerate(groups):
        if group.name in ours:
            before = next((g.name for g in groups[at + 1 :] if g.name not in ours), None)
            paths = list(group.paths or [])
            listed.append({"name": group.name, "paths": paths, "expanded": group.expanded, "before": before})
    return {"groups": listed, "names": sorted(ours)}


def _index_before(groups, names) -> int:
    return next((i for i, g in enumerate(groups) if g.name in names), len(groups))


HEATMAP_COLORSCALE = "jet"


def heatmap_colorscale(dataset, field: str) -> bool:
    """Makes the App draw heatmap `field` through a colorscale, unless the user set the colour mode.

    Sets `color_by="value"` where the dataset's colour scheme leaves it unset,
    and a colorscale for `field` where it has none; the App's other colour
    settings are kept. Returns whether the dataset's App config changed.
    """
    import fiftyone as fo

    config = dataset.app_config
    scheme = config.color_scheme or fo.ColorScheme()
    changed = config.color_scheme is None
    if scheme.color_by is None:
        scheme.color_by = "value"
        changed = True
    scales = list(scheme.colorscales or [])
    if not any(_path_of(scale) == field for scale in scales):
        scales.append({"path": field, "name": HEATMAP_COLORSCALE})
        scheme.colorscales = scales
        changed = True
    if changed:
        config.color_scheme = scheme
        dataset.save()
    return changed


def _path_of(scale):
    return scale.get("path") if isinstance(scale, dict) else getattr(scale, "path", None)
