"""The shapes-tiny captioner scored against `gt_caption` by `fob.evaluate_captions`, and checked
against the COCO caption toolkit.

    .venv/bin/python benchmarks/eval_caption_scores.py --split test
    .venv/bin/python benchmarks/eval_caption_scores.py --split test --seed 13
    # with the toolkit importable (pip install pycocoevalcap==1.2), also the largest difference to it

Greedy captions of the bundled shapes-tiny captioner (`fob.caption`), then
`fob.evaluate_captions` (corpus BLEU-1..4, ROUGE-L, CIDEr-D and the mean
ITM probability of the shapes-tiny matcher). Where `pycocoevalcap` imports,
its Bleu(4), Rouge() and Cider() score the same tokens (this package's
tokenisation; the toolkit's PTB tokenizer needs Java) and the largest
absolute difference, corpus and per sample, is printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    import fiftyone_blip as fob
    from fiftyone_blip import caption_metrics
    from fiftyone_blip.caption_metrics import METRIC_NAMES

    name = f"eval-caption-scores-{args.split}-{args.seed}-{args.count}"
    dataset = fob.load_shapes_dataset(name, count=args.count, split=args.split, seed=args.seed)
    fob.caption(dataset, model="shapes-tiny", progress=False, num_workers=0)
    result = fob.evaluate_captions(
        dataset, "caption", "gt_caption", eval_key="ev", model="shapes-tiny", progress=False, num_workers=0
    )
    preds, refs = dataset.values(["caption", "gt_caption"])
    exact = sum(p == r for p, r in zip(preds, refs)) / len(preds)
    names = {**METRIC_NAMES, "itm": "mean ITM"}
    print(f"{args.split} split, seed {args.seed}, {len(preds)} images; greedy exact match {exact:.3f}")
    print("| " + " | ".join(names[k] for k in result["corpus"]) + " |")
    print("|" + "---|" * len(result["corpus"]))
    print("| " + " | ".join(f"{v:.4f}" for v in result["corpus"].values()) + " |")
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError:
        print("pycocoevalcap is not importable: no comparison")
    else:
        gts = {i: [caption_metrics.tokenize(r)] for i, r in enumerate(refs)}
        res = {i: [caption_metrics.tokenize(p)] for i, p in enumerate(preds)}
        bleu, bleus = Bleu(4).compute_score(gts, res, verbose=0)
        rouge, rouges = Rouge().compute_score(gts, res)
        cider, ciders = Cider().compute_score(gts, res)
        theirs = {f"bleu{k + 1}": (bleu[k], bleus[k]) for k in range(4)}
        theirs.update(rouge_l=(rouge, rouges), cider=(cider, ciders))
        ours = dict(zip(["bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider"], [None] * 6))
        corpus_diff = max(abs(result["corpus"][k] - theirs[k][0]) for k in ours)
        per_sample = {k: dataset.values(f"ev_{k}") for k in ours}
        sample_diff = max(abs(a - b) for k in ours for a, b in zip(per_sample[k], theirs[k][1]))
        print(f"largest difference to pycocoevalcap: corpus {corpus_diff:.2e}, per sample {sample_diff:.2e}")
    dataset.delete()


if __name__ == "__main__":
    main()
