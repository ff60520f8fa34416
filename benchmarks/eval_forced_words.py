"""Forced words on held-out shapes: where the word lands, and what the search costs.

    python benchmarks/eval_forced_words.py --split test
    python benchmarks/eval_forced_words.py --split test --seed 7     # shapes of a seed no model saw

For every image, one shape kind the image does not hold is forced (drawn per
image), so the constraint always binds: the caption must name a shape that
is not there. The bundled shapes-tiny captioner then writes, per strategy:

- holds: the share of captions that hold the word (must be 1);
- well-formed: the share that keep the form of a shapes caption
  (`shapes.is_english_caption`: "a COLOUR KIND POSITION" phrases, nothing
  tacked on);
- one word changed: the share equal to the unconstrained caption but for
  one word (the forced kind in place of another);
- time: seconds for the forced captions and for the unconstrained ones, in
  one process, one after the other, batch by batch.

A kind the image holds is forced too, on the same images: where the
unconstrained caption names it, the caption must stay as it was ("unchanged
where it does not bind"; `held` counts those captions).
One JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fiftyone_blip import captions, models  # noqa: E402
from fiftyone_blip.shapes import data as shapes  # noqa: E402


def caption_all(captioner, pixels, batch_size: int) -> tuple[list[str], float]:
    started = time.perf_counter()
    out = []
    for start in range(0, len(pixels), batch_size):
        out += [row["caption"] for row in captioner(pixels[start : start + batch_size])]
    return out, time.perf_counter() - started


def caption_forcing(loaded, strategy: str, pixels, words: list[str], batch_size: int) -> tuple[list[str], float]:
    """Each image's caption with its word forced, and the seconds taken.

    One word per run, as a user forces one: the images are grouped by the word forced on them.
    """
    out, total = [""] * len(words), 0.0
    for kind in sorted(set(words)):
        rows = [i for i, word in enumerate(words) if word == kind]
        captioner = captions.Captioner(loaded, captions.CaptionSettings(strategy=strategy, force_words=kind))
        texts, seconds = caption_all(captioner, pixels[rows], batch_size)
        for i, text in zip(rows, texts):
            out[i] = text
        total += seconds
    return out, total


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=300, help="held-out images (300)")
    parser.add_argument("--split", default="test", choices=["test", "validation"])
    parser.add_argument("--seed", type=int, default=0, help="shapes generator seed; 0 is the training seed (0)")
    parser.add_argument("--strategies", nargs="+", default=["greedy", "beam"], choices=captions.STRATEGIES)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (torch's default)")
    parser.add_argument("--show", type=int, default=0, help="print this many forced captions out of form (0)")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = models.load_model("shapes-tiny", task="caption", device="cpu")
    preprocess = loaded.preprocessor("squash")
    scenes = shapes.make_scenes(args.count, split=args.split, seed=args.seed)
    pixels = torch.from_numpy(np.stack([preprocess.from_image(s.render())[0] for s in scenes]))
    rng = random.Random(f"forced/{args.split}/{args.seed}")
    absent = [rng.choice([k for k in shapes.KINDS if k not in {o.kind for o in s.objects}]) for s in scenes]
    present = [rng.choice([o.kind for o in s.objects]) for s in scenes]
    report = {"split": args.split, "seed": args.seed, "count": args.count, "strategies": {}}
    for strategy in args.strategies:
        free, free_seconds = caption_all(
            captions.Captioner(loaded, captions.CaptionSettings(strategy=strategy)), pixels, args.batch_size
        )
        forced, forced_seconds = caption_forcing(loaded, strategy, pixels, absent, args.batch_size)
        unchanged, _ = caption_forcing(loaded, strategy, pixels, present, args.batch_size)
        holds = np.mean([word in text.split() for word, text in zip(absent, forced)])
        well_formed = np.mean([shapes.is_english_caption(text) for text in forced])
        one_word = np.mean(
            [
                len(a.split()) == len(b.split()) and sum(x != y for x, y in zip(a.split(), b.split())) == 1
                for a, b in zip(forced, free)
            ]
        )
        # "unchanged where it does not bind": where the unconstrained caption already names the kind
        held = [(a, b) for a, b, word in zip(unchanged, free, present) if word in b.split()]
        same = np.mean([a == b for a, b in held])
        result = {
            "holds": round(float(holds), 4),
            "well_formed": round(float(well_formed), 4),
            "one_word_changed": round(float(one_word), 4),
            "unchanged_where_held": round(float(same), 4),
            "held": len(held),
            "seconds_unconstrained": round(free_seconds, 1),
            "seconds_forced": round(forced_seconds, 1),
        }
        report["strategies"][strategy] = result
        print(f"{strategy:<13} {result}", flush=True)
        if args.show:
            for text in [t for t in forced if not shapes.is_english_caption(t)][: args.show]:
                print(f"  not in the caption form: {text}")
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
