"""Inject caption errors into a shapes dataset and let image-text matching find them.

    .venv/bin/python examples/find_mislabels_shapes.py

Runs offline with the bundled shapes-tiny matcher. 10% of the human-style
captions are swapped with another image's; the ITM score ranks them first.
The same call on a Classification or Detections field scores label prompts;
with shapes-tiny those are at chance (the model cannot tell shape kinds apart,
see BENCHMARKS.md), so this example checks captions.
"""

import random

import fiftyone_blip as fb

dataset = fb.load_shapes_dataset("shapes-mislabels", count=200, overwrite=True)

ids, captions = dataset.values(["id", "gt_caption"])
rng = random.Random(0)
wrong = set(rng.sample(range(len(ids)), 20))
swapped = {
    ids[i]: captions[(i + 1 + rng.randrange(len(ids) - 1)) % len(ids)] if i in wrong else captions[i]
    for i in range(len(ids))
}
dataset.set_values("gt_caption", swapped, key_field="id")

result = fb.find_mislabels(dataset, "gt_caption", model="shapes-tiny", top_k=20, progress=False)
flagged = set(dataset.match_tags("mislabel").values("id"))
hits = len(flagged & {ids[i] for i in wrong})
print(f"{result['run']}")
print(f"flagged {result['flagged_samples']}: {hits} of them are the 20 injected errors (chance: 2)")
print(f"review them in the App: saved view {result['view']!r} of dataset {dataset.name!r}")

# Re-flag from the stored scores, no model: everything the model gives under 50%.
again = fb.flag_mislabels(dataset, "gt_caption", threshold=0.5)
print(f"ITM < 0.5: {again['flagged_samples']} samples flagged")
