"""Synthetic shapes data, the bundled `shapes-tiny` models and their recipe.

`load_dataset` builds a persistent FiftyOne dataset of shapes images with
their ground truth; `data` generates the scenes; `train` trains the models.
"""

from __future__ import annotations

import os
from pathlib import Path

from fiftyone_blip.shapes.data import LANGUAGES, make_scene, make_scenes  # noqa: F401

GT_CAPTION_FIELDS = {"en": "gt_caption", "de": "gt_caption_de", "ru": "gt_caption_ru"}


def default_images_dir() -> Path:
    import fiftyone as fo

    return Path(fo.config.dataset_zoo_dir) / "fiftyone-blip-shapes"


def write_images(scenes, images_dir: Path) -> list[str]:
    """Renders scenes as PNG files; returns their paths.

    Files are always rendered anew (about a millisecond each), so a folder can
    never hold images of an older generator.
    """
    images_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for scene in scenes:
        path = images_dir / image_name(scene)
        render_to(scene, path)
        paths.append(str(path))
    return paths


def image_name(scene) -> str:
    return f"{scene.split}-{scene.index:06d}.png"


def render_to(scene, path: Path) -> None:
    tmp = path.with_suffix(".tmp.png")
    scene.render().save(tmp)
    os.replace(tmp, path)  # never leave a half-written image behind


def to_sample(scene, filepath: str):
    """A FiftyOne sample with the scene's ground truth."""
    import fiftyone as fo

    detections = []
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.box
        detections.append(
            fo.Detection(
                label=obj.kind,
                bounding_box=[x0 / scene.size, y0 / scene.size, (x1 - x0) / scene.size, (y1 - y0) / scene.size],
                colour=obj.colour,
                position=obj.position,
                words=obj.words,
            )
        )
    sample = fo.Sample(
        filepath=filepath,
        tags=[scene.split],
        split=scene.split,
        gt_label=fo.Classification(label=scene.label),
        gt_objects=fo.Detections(detections=detections),
    )
    for language, field in GT_CAPTION_FIELDS.items():
        sample[field] = scene.caption(language)
    return sample


BUILT_BY = "fiftyone_blip.shapes"  # `dataset.info["built_by"]` of every dataset built here


def built_here(dataset) -> bool:
    """Whether `dataset` was built by `load_dataset` (only such a dataset may ever be replaced)."""
    info = dataset.info or {}
    if info.get("built_by") == BUILT_BY:
        return True
    # datasets built before the mark: their identity is exactly the four generator settings
    shapes = info.get("shapes")
    return isinstance(shapes, dict) and set(shapes) == {"count", "split", "seed", "size"}


def open_built(name: str):
    """The existing dataset `name` if `load_dataset` built it; a one-line ValueError otherwise."""
    import fiftyone as fo

    dataset = fo.load_dataset(name)
    if not built_here(dataset):
        raise ValueError(
            f"dataset {name!r} exists and was not built by fiftyone-blip's shapes loader; "
            "it is left as it is: pick another name"
        )
    return dataset


def load_dataset(
    name: str = "shapes-demo",
    count: int = 200,
    split: str = "test",
    seed: int = 0,
    size: int = 96,
    images_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
):
    """Builds (or loads) a persistent dataset of `count` shapes images.

    An existing dataset of that name is reused when this function built it with
    the same settings (images missing from disk are rendered again at their
    paths). It is replaced only with `overwrite=True`, and only if this function
    built it: any other dataset of that name is refused and left untouched.

    Args:
        name: the dataset name ("shapes-demo").
        count: number of images (200).
        split: "train", "validation" or "test" ("test": never seen in training).
        seed: generator seed (0).
        size: image side in pixels (96).
        images_dir: where PNG files go (None: FiftyOne's zoo folder).
        overwrite: rebuild a dataset this function built, even with these settings (False).

    Returns:
        the `fiftyone.Dataset`. Fields: `gt_caption`, `gt_caption_de`,
        `gt_caption_ru` (strings), `gt_label` (Classification: the largest
        shape's kind), `gt_objects` (Detections with `colour`, `position` and
        the caption `words` that name each object), `split`.

    Raises:
        ValueError: a dataset of that name that this function did not build, or
            one built with other settings and `overwrite=False`.
    """
    import fiftyone as fo

    if count < 1:
        raise ValueError(f"`count` must be >= 1, got {count}")
    identity = {"count": count, "split": split, "seed": seed, "size": size}
    if fo.dataset_exists(name):
        dataset = open_built(name)  # refuses anyone else's dataset, with or without overwrite
        if not overwrite:
            if dataset.info.get("shapes") != identity or len(dataset) != count:
                raise ValueError(
                    f"dataset {name!r} holds shapes built with other settings ({dataset.info.get('shapes')}); "
                    "pass overwrite=True (--overwrite) to rebuild it, or pick another name"
                )
            _render_missing(dataset, identity)
            return dataset
        dataset.delete()
    scenes = make_scenes(count, split=split, seed=seed, size=size)
    folder = Path(images_dir) if images_dir else default_images_dir() / f"seed{seed}-{size}px"
    paths = write_images(scenes, folder)
    dataset = fo.Dataset(name)
    dataset.add_samples([to_sample(s, p) for s, p in zip(scenes, paths)], progress=False)
    dataset.info["shapes"] = identity
    dataset.info["built_by"] = BUILT_BY
    dataset.persistent = True
    dataset.save()
    return dataset


def _render_missing(dataset, identity: dict) -> None:
    """Renders again the images of a built dataset that are gone from disk (a cleaned zoo folder,
    another temporary home), at their stored paths; the dataset, its fields and runs stay."""
    paths = dataset.values("filepath")
    missing = [path for path in paths if not os.path.exists(path)]
    if not missing:
        return
    settings = {key: identity[key] for key in ("split", "seed", "size")}
    scenes = {image_name(scene): scene for scene in make_scenes(identity["count"], **settings)}
    for path in map(Path, missing):
        if path.name not in scenes:
            raise ValueError(f"dataset {dataset.name!r}: image {path.name!r} is missing and is no shapes image")
        path.parent.mkdir(parents=True, exist_ok=True)
        render_to(scenes[path.name], path)
