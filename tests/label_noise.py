"""Injected label noise for the label-QA tests."""

import random


def swap_captions(dataset, count, seed=0):
    """Gives `count` samples another sample's `gt_caption`; returns their ids."""
    ids, captions = dataset.values(["id", "gt_caption"])
    rng = random.Random(seed)
    chosen = rng.sample(range(len(ids)), count)
    values = dict(zip(ids, captions))
    for i in chosen:
        j = (i + 1 + rng.randrange(len(ids) - 1)) % len(ids)
        values[ids[i]] = captions[j]
    dataset.set_values("gt_caption", values, key_field="id")
    return {ids[i] for i in chosen}


def wrong_kind(sample, rng):
    """A shape kind that no object of the sample has."""
    from fiftyone_blip.shapes.data import KINDS

    present = {d.label for d in sample.gt_objects.detections}
    return rng.choice([k for k in KINDS if k not in present])


def swap_class_labels(dataset, count, seed=0):
    """Gives `count` samples a `gt_label` naming a kind absent from the image; returns their ids."""
    rng = random.Random(seed)
    chosen = rng.sample(list(dataset), count)
    for sample in chosen:
        sample.gt_label.label = wrong_kind(sample, rng)
        sample.save()
    return {sample.id for sample in chosen}


def swap_object_labels(dataset, count, seed=0):
    """Gives one object of `count` samples a kind absent from the image; returns those objects' ids."""
    rng = random.Random(seed)
    wrong = set()
    for sample in rng.sample(list(dataset), count):
        detection = rng.choice(sample.gt_objects.detections)
        detection.label = wrong_kind(sample, rng)
        sample.save()
        wrong.add(detection.id)
    return wrong
