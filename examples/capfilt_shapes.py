"""Corrupt a copy of the shapes captions, clean it with CapFilt, evaluate before and after.

    .venv/bin/python examples/capfilt_shapes.py

Runs offline with the bundled shapes-tiny captioner and matcher. 30% of a
copy of `gt_caption` is replaced: half by another image's caption, half by
the same caption with one colour changed. CapFilt keeps each original the
matcher believes and replaces the others by the best of 5 sampled captions;
`evaluate_captions` scores both fields against `gt_caption`.
"""

import random

import fiftyone_blip as fb
from fiftyone_blip.shapes.data import COLOURS

dataset = fb.load_shapes_dataset("shapes-capfilt", count=200, overwrite=True)

# 1. a noisy copy of the captions (gt_caption stays as the reference)
captions = dataset.values("gt_caption")
rng = random.Random(0)
noisy = list(captions)
for k, i in enumerate(rng.sample(range(len(captions)), 60)):
    if k % 2:  # another image's caption
        noisy[i] = rng.choice([c for c in captions if c != captions[i]])
    else:  # one colour changed
        colour = next(c for c in sorted(COLOURS) if f" {c} " in f" {captions[i]} ")
        other = rng.choice([c for c in sorted(COLOURS) if c != colour])
        noisy[i] = f" {captions[i]} ".replace(f" {colour} ", f" {other} ", 1).strip()
dataset.set_values("noisy_caption", noisy)

quiet = dict(progress=False)
before = fb.evaluate_captions(dataset, "noisy_caption", "gt_caption", eval_key="before", model="shapes-tiny", **quiet)

# 2. CapFilt: 5 synthetic captions per image, everything scored by ITM
result = fb.capfilt(
    dataset, "noisy_caption", "clean_caption", caption_model="shapes-tiny", match_model="shapes-tiny", **quiet
)
print(result["run"])
noisy_ids = {i for i, (n, c) in enumerate(zip(noisy, captions)) if n != c}
flags = dataset.values("clean_caption_rejected")
hits = sum(1 for i, f in enumerate(flags) if f and i in noisy_ids)
print(f"rejected {result['flagged_samples']} originals, {hits} of them among the {len(noisy_ids)} corrupted")
print(f"review them in the App: saved view {result['view']!r} (tag {result['tag']!r}), largest ITM gain first")

# 3. evaluate after
after = fb.evaluate_captions(dataset, "clean_caption", "gt_caption", eval_key="after", model="shapes-tiny", **quiet)
right = sum(a == b for a, b in zip(dataset.values("clean_caption"), captions))
print(f"correct captions: before {sum(a == b for a, b in zip(noisy, captions))}, after {right} of {len(captions)}")
for name, result in (("before", before), ("after", after)):
    c = result["corpus"]
    print(f"{name}: BLEU-4 {c['bleu4']:.3f}  ROUGE-L {c['rouge_l']:.3f}  CIDEr-D {c['cider']:.3f}  ITM {c['itm']:.3f}")
