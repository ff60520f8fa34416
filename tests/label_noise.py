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
