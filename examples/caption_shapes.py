"""Caption a shapes dataset three ways and compare them with the ground truth.

    .venv/bin/python examples/caption_shapes.py

Runs offline with the bundled shapes-tiny model.
"""

import fiftyone_blip as fb
from fiftyone_blip.demo import exact_match

dataset = fb.load_shapes_dataset("shapes-example", count=100)

for field, options in {
    "caption_greedy": dict(strategy="greedy"),
    "caption_beam": dict(strategy="beam", num_beams=4),
    "caption_sampled": dict(strategy="sample", top_p=0.9, temperature=0.7, seed=0),
}.items():
    summary = fb.caption(dataset, model="shapes-tiny", field=field, progress=False, **options)
    print(f"{field:16} exact match {exact_match(dataset, field):.2f}   {summary}")

# The least confident captions first: where a reviewer should look.
for sample in dataset.sort_by("caption_greedy_confidence").limit(3):
    print(f"{sample.caption_greedy_confidence:.3f}  {sample.caption_greedy!r}  (truth: {sample.gt_caption!r})")
