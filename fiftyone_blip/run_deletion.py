"""Deleting a fiftyone-blip run: its fields, its record, the map files it owns and its similarity index.

    plan = deletion_plan(dataset, "blip_heatmaps_heatmap")   # what would go (a dry run)
    delete(dataset, "blip_heatmaps_heatmap")                 # and then it goes

What belongs to a run (key `blip_{capability}_{field}`) is found from what it
wrote, never from names alone:

- fields: every sample field, and every label attribute, whose `info` says
  fiftyone-blip wrote it for that capability and main field (the result, its
  companions, `_error`, `_run`), and for label QA the flags made from its
  scores (their tag goes where only they had set it);
- map files (heatmaps with `maps_dir`): the files those fields refer to that lie
  under a `maps_dir` the run's history recorded, and that no other Heatmap
  field of any dataset (another run, a clone) refers to: map files are named by
  their content, so two runs can share one;
- the similarity index (embed): the brain runs over the run's embeddings field
  that `fiftyone_blip.embed` built (they store the zoo model name in
  `model_kwargs`; an index a user built with `compute_similarity` is not one);
- the review views the run saved (label QA, CapFilt, caption evaluation: their
  description names the run; a user's saved view stays);
- the run record itself, removed with FiftyOne's `dataset.delete_run`.

A run that is writing any of those fields holds its claim on them: deletion
takes the same claim first, so it is refused (and changes nothing) while a run
is live, and no run starts on them while it deletes.
"""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

from fiftyone_blip import app_config, mislabels, review_views, run_records


@dataclasses.dataclass
class RunDeletion:
    """What deleting a run removes (or, for a dry run, would remove)."""

    dataset: str
    run_key: str
    capability: str
    field: str
    fields: list[str]
    map_files: list[str]
    kept_map_files: list[str]  # under the run's maps folder, but another run refers to them too
    brain_keys: list[str]
    tags: dict[str, int] = dataclasses.field(default_factory=dict)  # tag -> samples only these flags tagged
    maps_dirs: list[str] = dataclasses.field(default_factory=list)  # the folders the run's history recorded
    views: list[str] = dataclasses.field(default_factory=list)  # the review views the run saved
    dry_run: bool = False

    def lines(self) -> list[str]:
        """What a person reads: one line per kind of thing, then a closing line."""
        verb = "would delete" if self.dry_run else "deleted"
        out = [f"fields: {', '.join(self.fields) or 'none'}"]
        if self.map_files or self.kept_map_files or self.capability == "heatmaps":
            out.append(f"map files: {len(self.map_files)}")
            out.extend(f"  {path}" for path in self.map_files)
        if self.kept_map_files:
            out.append(f"map files kept (another run refers to them): {len(self.kept_map_files)}")
        for tag, count in self.tags.items():
            out.append(f"tag {tag!r}: removed from {count} samples (where only these flags set it)")
        if self.capability == "embed":
            out.append(f"similarity indexes: {', '.join(self.brain_keys) or 'none'}")
        if self.views:
            out.append(f"saved review views: {', '.join(self.views)}")
        out.append(f"run record: {self.run_key}")
        out.append(
            f"{verb} run {self.run_key!r} of dataset {self.dataset!r}: {len(self.fields)} fields, "
            f"{len(self.map_files)} map files, {len(self.brain_keys)} indexes"
        )
        return out


def _run_document(dataset, key: str) -> dict:
    """The fiftyone-blip run document of `key`; a one-line ValueError naming the dataset's runs otherwise."""
    runs = run_records._run_ids(dataset)
    doc = None
    if key in runs:
        doc = run_records.with_retry(lambda: run_records._db().runs.find_one({"_id": runs[key]}))
    if doc is None or (doc.get("config") or {}).get("method") != run_records.METHOD:
        own = sorted(r["key"] for r in run_records._own_runs(dataset))
        raise ValueError(
            f"dataset {dataset.name!r} has no fiftyone-blip run {key!r} (runs: {', '.join(own) or 'none'})"
        )
    return doc


def _made_by(info: dict, capability: str, field: str) -> bool:
    """Whether a field's info says the run (capability, main field) wrote it, or, for label QA,
    that it holds the flags made from that run's scores."""
    if info.get("written_by") != "fiftyone-blip":
        return False
    if info.get("capability") == capability and info.get("field") == field:
        return True
    return capability == "match" and info.get("capability") == "flag" and info.get("scores") == field


def run_fields(dataset, capability: str, field: str) -> list[str]:
    """The fields and label attributes fiftyone-blip wrote for (capability, main field), parents before children,
    a child left out when its parent goes."""
    found = []
    for name, schema_field in dataset.get_field_schema(flat=True).items():
        if _made_by(schema_field.info or {}, capability, field):
            found.append(name)
    return [name for name in found if not any(name.startswith(parent + ".") for parent in found)]


def _heatmap_paths(dataset, fields: list[str]) -> set[str]:
    """The `map_path` of every Heatmap in `fields` (single Heatmaps and lists of them) of `dataset`."""
    import fiftyone as fo

    schema = dataset.get_field_schema()
    paths: set[str] = set()
    for name in fields:
        field = schema.get(name)
        if isinstance(field, fo.EmbeddedDocumentField) and field.document_type is fo.Heatmap:
            paths.update(p for p in dataset.values(f"{name}.map_path") if p)
        elif isinstance(field, fo.ListField) and getattr(field.field, "document_type", None) is fo.Heatmap:
            paths.update(p for p in dataset.values(f"{name}[].map_path") if p)
    return paths


def _maps_dirs(run_doc: dict) -> set[Path]:
    history = (run_doc.get("config") or {}).get("history") or []
    return {
        Path(entry["settings"]["maps_dir"]).resolve()
        for entry in history
        if (entry.get("settings") or {}).get("maps_dir")
    }


def _under(path: str, folders: set[Path]) -> bool:
    resolved = Path(path).resolve()
    return any(resolved.is_relative_to(folder) for folder in folders)


HEATMAP_TYPE = "fiftyone.core.labels.Heatmap"


def _paths_referenced_elsewhere(dataset, fields: list[str]) -> set[str]:
    """Map files that Heatmap fields other than `fields` of `dataset` refer to, in every dataset.

    Map files are named by their content, so a file can serve two runs, and a
    clone (of a dataset or of a view) refers to the files of its source.
    """
    import fiftyone as fo

    query = {"sample_fields": {"$elemMatch": {"embedded_doc_type": HEATMAP_TYPE}}}
    projection = {"name": 1, "sample_fields.name": 1, "sample_fields.embedded_doc_type": 1}
    docs = run_records.with_retry(lambda: list(run_records._db().datasets.find(query, projection)))
    referenced: set[str] = set()
    for doc in docs:
        names = [f["name"] for f in doc["sample_fields"] if f.get("embedded_doc_type") == HEATMAP_TYPE]
        if doc["_id"] == dataset._doc.id:
            names = [name for name in names if name not in fields]
        if names:
            referenced |= _heatmap_paths(fo.load_dataset(doc["name"]), names)
    return referenced


def _own_indexes(dataset, field: str) -> list[str]:
    """The similarity indexes `fiftyone_blip.embed` built over `field`."""
    from fiftyone_blip import zoo_manifest

    keys = []
    for key in dataset.list_brain_runs(type="similarity"):
        config = dataset.get_brain_info(key).config
        if getattr(config, "embeddings_field", None) == field and zoo_manifest.built_by_embed(
            getattr(config, "model", None), getattr(config, "model_kwargs", None)
        ):
            keys.append(key)
    return keys


def deletion_plan(samples, key: str) -> RunDeletion:
    """What deleting the run `key` of the samples' dataset removes; reads only.

    Raises:
        ValueError: the dataset has no fiftyone-blip run `key`.
    """
    dataset = samples._root_dataset
    if not isinstance(key, str) or not key:
        raise ValueError(f"`key` must be a run key such as 'blip_caption_caption', got {key!r}")
    run_records.migrate(dataset)
    run_doc = _run_document(dataset, key)
    capability, field = run_doc["config"].get("capability"), run_doc["config"].get("field")
    fields = run_fields(dataset, capability, field)
    map_files, kept = [], []
    folders = _maps_dirs(run_doc)
    if folders:
        mine = {p for p in _heatmap_paths(dataset, fields) if _under(p, folders) and Path(p).is_file()}
        shared = mine & _paths_referenced_elsewhere(dataset, fields)
        map_files, kept = sorted(mine - shared), sorted(shared)
    brain_keys = _own_indexes(dataset, field) if capability == "embed" else []
    tags = {}
    for name, tag in _flag_fields(dataset, fields).items():
        released = set(_flagged(dataset, name)) - mislabels.held_by_others(dataset, name, tag)
        tags[tag] = tags.get(tag, 0) + len(dataset.select(sorted(released)).match_tags(tag))
    return RunDeletion(
        dataset.name,
        key,
        capability,
        field,
        fields,
        map_files,
        kept,
        brain_keys,
        tags,
        sorted(map(str, folders)),
        review_views.of_run(dataset, key),
    )


def _flag_fields(dataset, fields: list[str]) -> dict[str, str]:
    """The sample flag fields of label QA among `fields`, with the tag each one set."""
    found = {}
    for name in fields:
        info = (dataset.get_field(name).info or {}) if "." not in name else {}
        if info.get("capability") == "flag" and "." not in name and name == info.get("field"):
            found[name] = info.get("tag", "mislabel")
    return found


def _flagged(dataset, flag_field: str) -> list[str]:
    from fiftyone import ViewField as F

    return dataset.match(F(flag_field) == True).values("id")  # noqa: E712


def delete(samples, key: str, dry_run: bool = False) -> RunDeletion:
    """Deletes the run `key` with everything it owns; see `fiftyone_blip.delete_run`."""
    plan = deletion_plan(samples, key)
    if dry_run:
        return dataclasses.replace(plan, dry_run=True)
    dataset = samples._root_dataset
    top_level = sorted({name.split(".")[0] for name in plan.fields if "." not in name})
    # the claim a run into these fields holds: refused while one is live, and none starts meanwhile
    lease = run_records.Lease(dataset, top_level or [plan.field], None, f"delete-{uuid.uuid4().hex}")
    lease.take()
    try:
        plan = deletion_plan(samples, key)  # again, now that no run can write the fields
        for brain_key in plan.brain_keys:
            dataset.delete_brain_run(brain_key)
        for name in plan.views:
            dataset.delete_saved_view(name)
        for name, tag in _flag_fields(dataset, plan.fields).items():
            # as a re-flag that flags nothing: the tag leaves the samples only these flags held
            mislabels.retag(dataset, tag, _flagged(dataset, name), (), mislabels.held_by_others(dataset, name, tag))
        # label attributes first: their parent label field is not the run's and stays
        for name in plan.fields:
            if "." in name:
                dataset.delete_sample_field(name)
        if top_level:
            dataset.delete_sample_fields(top_level)
        app_config.drop_empty_groups(dataset)
        for path in plan.map_files:
            Path(path).unlink(missing_ok=True)
            _remove_if_empty(Path(path).parent, {Path(d) for d in plan.maps_dirs})
        run_records.refresh(dataset)  # other processes may have added runs since it was loaded
        if key in dataset.list_runs():
            dataset.delete_run(key)
    finally:
        lease.release()
    return plan


def _remove_if_empty(folder: Path, maps_dirs: set[Path]) -> None:
    """Removes a sample's maps subfolder (made by the run) once nothing is left in it; never a maps folder."""
    if folder.resolve().parent not in maps_dirs:
        return
    try:
        folder.rmdir()
    except OSError:
        pass
