"""Text queries over shapes scenes, and which scenes they describe.

A query names one or more objects by colour and kind, each with or without a
position: "a red circle", "a blue square on the left", "a red circle and a
green star at the top". A scene satisfies a query when each named object is
in it (same colour and kind, and the same grid cell if a position is named).
The full caption of a scene is the query that names all of its objects with
their positions.

The matcher's training recipe samples queries from these rules, and the
retrieval evaluation (`benchmarks/eval_retrieval.py`) counts an image relevant
to a query by `satisfies`.
"""

from __future__ import annotations

import itertools
import random

from fiftyone_blip.shapes.data import COLOURS, KINDS, POSITIONS, ShapeScene

# One named object: (colour, kind, cell or None for "anywhere").
Item = tuple[str, str, "tuple[int, int] | None"]
Query = tuple[Item, ...]


def query_text(query: Query) -> str:
    """The English text of a query, in the captions' own wording."""
    phrases = [f"a {colour} {kind}" + (f" {POSITIONS[cell]}" if cell else "") for colour, kind, cell in query]
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def full_query(scene: ShapeScene) -> Query:
    """The query whose text is the scene's caption."""
    return tuple((obj.colour, obj.kind, obj.cell) for obj in scene.objects)


def satisfies(scene: ShapeScene, query: Query) -> bool:
    """Whether every object the query names is in the scene."""
    return all(
        any(obj.colour == colour and obj.kind == kind and (cell is None or obj.cell == cell) for obj in scene.objects)
        for colour, kind, cell in query
    )


def sample_query(scene: ShapeScene, rng: random.Random, full_probability: float = 0.5) -> Query:
    """A query the scene satisfies: its full caption, or one or two of its objects with or without position."""
    if rng.random() < full_probability:
        return full_query(scene)
    objects = list(scene.objects)
    count = 2 if len(objects) > 1 and rng.random() < 0.3 else 1
    chosen = sorted(rng.sample(objects, count), key=lambda o: o.cell)
    return tuple((obj.colour, obj.kind, obj.cell if rng.random() < 0.5 else None) for obj in chosen)


def perturb_query(query: Query, rng: random.Random) -> Query:
    """The query with one attribute of one named object changed (colour, kind, or a named position)."""
    items = list(query)
    i = rng.randrange(len(items))
    colour, kind, cell = items[i]
    what = rng.choice(("colour", "kind", "position") if cell else ("colour", "kind"))
    if what == "colour":
        colour = rng.choice([c for c in sorted(COLOURS) if c != colour])
    elif what == "kind":
        kind = rng.choice([k for k in KINDS if k != kind])
    else:
        taken = {item[2] for item in items}
        cell = rng.choice([c for c in sorted(POSITIONS) if c not in taken])
    items[i] = (colour, kind, cell)
    return tuple(sorted(items, key=lambda item: item[2] or (9, 9)))


def attribute_queries(scenes: list[ShapeScene], with_position: bool, min_relevant: int = 10) -> list[Query]:
    """Every one-object query ("a red circle", or "a red circle on the left" with positions)
    that at least `min_relevant` of the scenes satisfy, in a fixed order."""
    cells = sorted(POSITIONS) if with_position else [None]
    queries = []
    for colour, kind, cell in itertools.product(sorted(COLOURS), KINDS, cells):
        query = ((colour, kind, cell),)
        if sum(satisfies(scene, query) for scene in scenes) >= min_relevant:
            queries.append(query)
    return queries
