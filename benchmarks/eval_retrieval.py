"""Text-to-image retrieval quality on held-out shapes images: precision@10.

    .venv/bin/python benchmarks/eval_retrieval.py                     # 1000 test images, shapes-tiny
    .venv/bin/python benchmarks/eval_retrieval.py --count 500 --rerank-only
    .venv/bin/python benchmarks/eval_retrieval.py --seed 7 --app      # an unseen seed, through the App's paths
    .venv/bin/python benchmarks/eval_retrieval.py --app --no-rerank --no-operator   # the App's search only

Builds (or reuses) a FiftyOne dataset of `--count` images of the shapes
`test` split (never seen in training), embeds it and builds the similarity
index with `fiftyone_blip.embed`, then asks `fiftyone_blip.search` every
attribute query that at least 10 images satisfy:

- colour + kind: "a red circle", "a blue square", ...
- colour + kind + position: "a blue square on the left", "a red circle at the top", ...

An image is relevant to a query when its ground truth (`gt_objects`: label,
`colour` and `position` attributes) holds that object. Precision@10 is the
share of relevant images among the first 10 results, averaged over queries;
it is reported for the ITC ranking and for the ITC shortlist re-ranked by
the ITM head (`rerank=True`, shortlist: `search`'s default unless given).

With `--app` it also asks through the App's own entry points: the App's
similarity search (`sort_by_similarity`, what the grid's search box and the
Similarity Search panel run) on the index `embed` builds by default
(fiftyone-blip's backend, re-ranked: "app search") and on a FiftyOne sklearn
index of the same embeddings (`backend="sklearn"`, ITC only: "app itc"), and
the plugin's **BLIP: search by text** operator run by FiftyOne's operator
executor (the ids it sets the view to: "app itc+itm"). Prints a table and one
JSON line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time

os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


ITC_INDEX = "blip_sim_itc"


def relevant_ids(dataset, colour: str, kind: str, position: str | None) -> set[str]:
    """Samples whose ground truth holds an object of this colour and kind (and position)."""
    from fiftyone import ViewField as F

    condition = (F("label") == kind) & (F("colour") == colour)
    if position is not None:
        condition &= F("position") == position
    view = dataset.filter_labels("gt_objects", condition, only_matches=True)
    return set(view.values("id"))


def attribute_queries(dataset, min_relevant: int) -> list[tuple[str, str, set[str]]]:
    """(set name, query text, relevant ids) for every attribute query with enough relevant images."""
    from fiftyone_blip.shapes import data as shapes

    queries = []
    for colour, kind in itertools.product(sorted(shapes.COLOURS), shapes.KINDS):
        ids = relevant_ids(dataset, colour, kind, None)
        if len(ids) >= min_relevant:
            queries.append(("colour+kind", f"a {colour} {kind}", ids))
    for colour, kind, position in itertools.product(sorted(shapes.COLOURS), shapes.KINDS, shapes.POSITIONS.values()):
        ids = relevant_ids(dataset, colour, kind, position)
        if len(ids) >= min_relevant:
            queries.append(("colour+kind+position", f"a {colour} {kind} {position}", ids))
    return queries


def app_search_operator():
    """The plugin's search-by-text operator as FiftyOne's executor runs it: (dataset, text, k) -> ids."""
    import tempfile

    import fiftyone as fo
    import fiftyone.operators as foo

    from fiftyone_blip import plugin

    # a private plugins folder holding only this checkout's plugin
    fo.config.plugins_dir = tempfile.mkdtemp(prefix="eval-retrieval-plugins-")
    plugin.install(fo.config.plugins_dir)

    def search(dataset, text, k):
        result = foo.execute_operator(
            "@fiftyone-blip/blip/search_by_text",
            ctx=dict(dataset=dataset, params=dict(query=text, k=k, brain_key="blip_sim", rerank=True)),
        )
        result.raise_exceptions()
        return result.result["ids"]

    return search


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="held-out test images (1000)")
    parser.add_argument("--model", default="shapes-tiny", help="a BlipForImageTextRetrieval model (shapes-tiny)")
    parser.add_argument("--dataset", default="eval-retrieval", help="FiftyOne dataset name (eval-retrieval)")
    parser.add_argument("--backend", default="blip", help="similarity backend of `blip_sim` (embed's default, blip)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="shapes generator seed; 0 is the training seed (0)")
    parser.add_argument("--min-relevant", type=int, default=10, help="skip queries with fewer relevant images")
    parser.add_argument(
        "--shortlist", type=int, default=None, help="ITC results the ITM head re-scores (the library's default)"
    )
    parser.add_argument("--rerank-only", action="store_true", help="skip the ITC-only ranking")
    parser.add_argument("--no-rerank", action="store_true", help="skip the ITM re-ranking")
    parser.add_argument(
        "--app", action="store_true", help="also rank through the App's search and the search-by-text operator"
    )
    parser.add_argument("--no-operator", action="store_true", help="with --app, skip the search-by-text operator")
    args = parser.parse_args(argv)

    import numpy as np

    import fiftyone_blip

    name = args.dataset if args.seed == 0 else f"{args.dataset}-seed{args.seed}"
    dataset = fiftyone_blip.load_shapes_dataset(name, count=args.count, split="test", seed=args.seed)
    t0 = time.time()
    summary = fiftyone_blip.embed(dataset, model=args.model, backend=args.backend, progress=False, overwrite=True)
    print(f"embedded and indexed: {summary} (with index: {time.time() - t0:.1f} s)", flush=True)
    if args.app:  # the same embeddings in FiftyOne's own sklearn index: the App's search without re-ranking
        fiftyone_blip.embed(dataset, model=args.model, backend="sklearn", brain_key=ITC_INDEX, progress=False)

    queries = attribute_queries(dataset, args.min_relevant)
    modes = [m for m, skip in (("itc", args.rerank_only), ("itc+itm", args.no_rerank)) if not skip]
    if args.app:
        modes += ["app itc", "app search"] + ([] if args.no_operator else ["app itc+itm"])
        search_operator = None if args.no_operator else app_search_operator()
    per_query = {mode: [] for mode in modes}
    seconds = {}
    for mode in modes:
        t0 = time.time()
        for set_name, text, ids in queries:
            if mode in ("app itc", "app search"):
                key = ITC_INDEX if mode == "app itc" else "blip_sim"
                found = dataset.sort_by_similarity(text, k=args.k, brain_key=key).values("id")
            elif mode == "app itc+itm":
                found = search_operator(dataset, text, args.k)
            else:
                view = fiftyone_blip.search(dataset, text, k=args.k, rerank=mode == "itc+itm", shortlist=args.shortlist)
                found = view.values("id")
            precision = sum(i in ids for i in found) / args.k
            per_query[mode].append((set_name, text, precision))
        seconds[mode] = time.time() - t0

    report = {
        "count": len(dataset),
        "seed": args.seed,
        "model": args.model,
        "k": args.k,
        "queries": {},
        "precision_at_k": {},
    }
    sets = sorted({q[0] for q in queries})
    for set_name in sets:
        report["queries"][set_name] = sum(q[0] == set_name for q in queries)
    print(f"\n{len(queries)} queries over {len(dataset)} held-out images (model {args.model})\n")
    print(f"| query set | queries | {' | '.join(f'P@{args.k} {m}' for m in modes)} |")
    print(f"|---|---:|{'---:|' * len(modes)}")
    for set_name in sets + ["all"]:
        row = []
        for mode in modes:
            values = [p for s, _, p in per_query[mode] if set_name in (s, "all")]
            mean = float(np.mean(values))
            report["precision_at_k"][f"{set_name} {mode}"] = round(mean, 4)
            row.append(f"{mean:.3f}")
        n = len(queries) if set_name == "all" else report["queries"][set_name]
        print(f"| {set_name} | {n} | {' | '.join(row)} |")
    for mode in modes:
        worst = sorted(per_query[mode], key=lambda q: q[2])[:3]
        print(f"worst {mode}: " + "; ".join(f"{text!r} {p:.1f}" for _, text, p in worst))
        print(f"{mode}: {seconds[mode] / len(queries) * 1000:.0f} ms per query")
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
