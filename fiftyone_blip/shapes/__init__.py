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
        path = images_dir / f"{scene.split}-{scene.index:06d}.png"
        tmp = path.with_suffix(".tmp.png")
        scene.render().save(tmp)
        os.replace(tmp, path)  # never leave a half-written image behind
        paths.append(str(path))
    return paths


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

    Args:
        name: the dataset name ("shapes-demo").
        count: number of images (200).
        split: "train", "validation" or "test" ("test": never seen in training).
        seed: generator seed (0).
        size: image side in pixels (96).
        images_dir: where PNG files go (None: FiftyOne's zoo folder).
        overwrite: rebuild the dataset even if it exists with these settings.

    Returns:
        the `fiftyone.Dataset`. Fields: `gt_caption`, `gt_caption_de`,
        `gt_caption_ru` (strings), `gt_label` (Classification: the largest
        shape's kind), `gt_objects` (Detections with `colour`, `position` and
        the caption `words` that name each object), `split`.
    """
    import fiftyone as fo

    if count < 1:
        raise ValueError(f"`count` must be >= 1, got {count}")
    identity = {"count": count, "split": split, "seed": seed, "size": size}
    if fo.dataset_exists(name):
        dataset = fo.load_dataset(name)
        if not overwrite and dataset.info.get("shapes") == identity and len(dataset) == count:
            # its images may be gone (a cleaned zoo folder, another temporary home): rebuild then
            if all(os.path.exists(path) for path in dataset.values("filepath")):
                return dataset
        dataset.delete()
    scenes = make_scenes(count, split=split, seed=seed, size=size)
    folder = Path(images_dir) if images_dir else default_images_dir() / f"seed{seed}-{size}px"
    paths = write_images(scenes, folder)
    dataset = fo.Dataset(name)
    dataset.add_samples([to_sample(s, p) for s, p in zip(scenes, paths)], progress=False)
    dataset.info["shapes"] = identity
    dataset.persistent = True
    dataset.save()
    return dataset
