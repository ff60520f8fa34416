"""Deterministic synthetic "shapes" data with captions in three languages.

Each image holds one to three coloured shapes on a varied background. Objects
sit in distinct cells of a 3x3 grid, so that every position word ("top left",
"center", ...) is unambiguous: a caption is a function of the image, and a
model can in principle get every one exactly right.

Ground truth per image: an English caption, German and Russian captions, a
class label (the kind of the largest shape) and one box per object with the
caption words that name it.
"""

from __future__ import annotations

import dataclasses
import math
import random

from PIL import Image, ImageDraw

KINDS = ("circle", "square", "triangle", "diamond", "star")
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 40, 180),
    "orange": (245, 130, 20),
}
# (row, col) -> English position phrase. Row 0 is the top of the image.
POSITIONS = {
    (0, 0): "at the top left",
    (0, 1): "at the top",
    (0, 2): "at the top right",
    (1, 0): "on the left",
    (1, 1): "in the center",
    (1, 2): "on the right",
    (2, 0): "at the bottom left",
    (2, 1): "at the bottom",
    (2, 2): "at the bottom right",
}
# Backgrounds are muted so that every shape colour stands out on every one.
BACKGROUNDS = (
    (250, 250, 250),
    (200, 200, 200),
    (120, 120, 120),
    (40, 40, 40),
    (235, 225, 200),
    (200, 225, 235),
)
SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}
LANGUAGES = ("en", "de", "ru")

# German: grammatical gender decides the adjective ending after "ein"/"eine".
_DE_NOUNS = {
    "circle": ("Kreis", "m"),
    "square": ("Quadrat", "n"),
    "triangle": ("Dreieck", "n"),
    "diamond": ("Raute", "f"),
    "star": ("Stern", "m"),
}
_DE_COLOURS = {
    "red": "rot",
    "green": "grün",
    "blue": "blau",
    "yellow": "gelb",
    "purple": "violett",
    "orange": "orangefarben",
}
_DE_ENDINGS = {"m": ("ein", "er"), "n": ("ein", "es"), "f": ("eine", "e")}
_DE_POSITIONS = {
    (0, 0): "oben links",
    (0, 1): "oben",
    (0, 2): "oben rechts",
    (1, 0): "links",
    (1, 1): "in der Mitte",
    (1, 2): "rechts",
    (2, 0): "unten links",
    (2, 1): "unten",
    (2, 2): "unten rechts",
}

# Russian: no articles; the adjective agrees with the noun's gender.
_RU_NOUNS = {
    "circle": ("круг", "m"),
    "square": ("квадрат", "m"),
    "triangle": ("треугольник", "m"),
    "diamond": ("ромб", "m"),
    "star": ("звезда", "f"),
}
_RU_COLOURS = {  # (masculine, feminine)
    "red": ("красный", "красная"),
    "green": ("зелёный", "зелёная"),
    "blue": ("синий", "синяя"),
    "yellow": ("жёлтый", "жёлтая"),
    "purple": ("фиолетовый", "фиолетовая"),
    "orange": ("оранжевый", "оранжевая"),
}
_RU_POSITIONS = {
    (0, 0): "вверху слева",
    (0, 1): "вверху",
    (0, 2): "вверху справа",
    (1, 0): "слева",
    (1, 1): "в центре",
    (1, 2): "справа",
    (2, 0): "внизу слева",
    (2, 1): "внизу",
    (2, 2): "внизу справа",
}
_JOIN = {"en": "and", "de": "und", "ru": "и"}


@dataclasses.dataclass(frozen=True)
class ShapeObject:
    """One shape: kind, colour, grid cell and box (pixels: x0, y0, x1, y1)."""

    kind: str
    colour: str
    cell: tuple[int, int]
    box: tuple[int, int, int, int]

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]

    @property
    def words(self) -> list[str]:
        """The English caption words that name this object."""
        return [self.colour, self.kind]

    def phrase(self, language: str = "en") -> str:
        if language == "en":
            return f"a {self.colour} {self.kind} {self.position}"
        if language == "de":
            noun, gender = _DE_NOUNS[self.kind]
            article, ending = _DE_ENDINGS[gender]
            return f"{article} {_DE_COLOURS[self.colour]}{ending} {noun} {_DE_POSITIONS[self.cell]}"
        if language == "ru":
            noun, gender = _RU_NOUNS[self.kind]
            adjective = _RU_COLOURS[self.colour][gender == "f"]
            return f"{adjective} {noun} {_RU_POSITIONS[self.cell]}"
        raise ValueError(f"`language` must be one of {LANGUAGES}, got {language!r}")


@dataclasses.dataclass(frozen=True)
class ShapeScene:
    """One synthetic image's ground truth."""

    index: int
    split: str
    size: int
    background: tuple[int, int, int]
    objects: tuple[ShapeObject, ...]
    noise_seed: int

    def caption(self, language: str = "en") -> str:
        phrases = [obj.phrase(language) for obj in self.objects]
        if len(phrases) == 1:
            return phrases[0]
        return ", ".join(phrases[:-1]) + f" {_JOIN[language]} " + phrases[-1]

    @property
    def label(self) -> str:
        """The class label: the kind of the largest shape."""
        return max(self.objects, key=lambda o: (o.box[2] - o.box[0], -self.objects.index(o))).kind

    def render(self) -> Image.Image:
        return render_scene(self)


def _shape_polygon(kind: str, box: tuple[int, int, int, int]) -> list[tuple[float, float]]:
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if kind == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if kind == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    if kind == "star":
        points = []
        for i in range(10):
            radius = r if i % 2 == 0 else r * 0.45
            angle = -math.pi / 2 + i * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return points
    raise ValueError(f"no polygon for {kind!r}")


def render_scene(scene: ShapeScene) -> Image.Image:
    """Draws a scene as an RGB image of `scene.size` pixels square."""
    image = Image.new("RGB", (scene.size, scene.size), scene.background)
    draw = ImageDraw.Draw(image)
    # A faint vertical gradient and speckle, so that backgrounds are not flat.
    rng = random.Random(scene.noise_seed)
    for y in range(scene.size):
        shade = int(12 * (y / scene.size - 0.5))
        colour = tuple(max(0, min(255, c + shade)) for c in scene.background)
        draw.line([(0, y), (scene.size, y)], fill=colour)
    for _ in range(scene.size * 2):
        x, y = rng.randrange(scene.size), rng.randrange(scene.size)
        jitter = rng.randint(-25, 25)
        draw.point((x, y), fill=tuple(max(0, min(255, c + jitter)) for c in scene.background))
    for obj in scene.objects:
        draw_shape(draw, obj, COLOURS[obj.colour])
    return image


def draw_shape(draw: ImageDraw.ImageDraw, obj: ShapeObject, fill) -> None:
    if obj.kind == "circle":
        draw.ellipse(obj.box, fill=fill)
    elif obj.kind == "square":
        draw.rectangle(obj.box, fill=fill)
    else:
        draw.polygon(_shape_polygon(obj.kind, obj.box), fill=fill)


def covered_pixels(obj: ShapeObject, size: int) -> int:
    """How many pixels of a `size`-pixel image the shape covers (the class label goes by box width instead)."""
    mask = Image.new("L", (size, size), 0)
    draw_shape(ImageDraw.Draw(mask), obj, 1)
    return sum(mask.getdata())


def make_scene(index: int, split: str = "train", seed: int = 0, size: int = 96) -> ShapeScene:
    """Returns scene number `index` of a split; the same arguments give the same scene."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"`split` must be one of {tuple(SPLIT_SEEDS)}, got {split!r}")
    rng = random.Random(f"shapes/{seed}/{split}/{index}")
    count = rng.choice((1, 2, 2, 3, 3))
    cells = sorted(rng.sample(sorted(POSITIONS), count))  # reading order: rows, then columns
    cell_size = size / 3
    objects = []
    for row, col in cells:
        side = int(cell_size * rng.uniform(0.55, 0.9))
        slack = int(cell_size - side)
        x0 = int(col * cell_size) + rng.randint(0, slack)
        y0 = int(row * cell_size) + rng.randint(0, slack)
        objects.append(
            ShapeObject(
                kind=rng.choice(KINDS),
                colour=rng.choice(sorted(COLOURS)),
                cell=(row, col),
                box=(x0, y0, x0 + side, y0 + side),
            )
        )
    return ShapeScene(
        index=index,
        split=split,
        size=size,
        background=rng.choice(BACKGROUNDS),
        objects=tuple(objects),
        noise_seed=rng.randrange(2**31),
    )


def make_scenes(count: int, split: str = "train", seed: int = 0, size: int = 96) -> list[ShapeScene]:
    """Returns the first `count` scenes of a split."""
    if count < 0:
        raise ValueError(f"`count` must be >= 0, got {count}")
    return [make_scene(i, split=split, seed=seed, size=size) for i in range(count)]


def english_vocabulary() -> list[str]:
    """Every word an English shapes caption can use, sorted."""
    words = {"a", "and", ","} | set(KINDS) | set(COLOURS)
    for phrase in POSITIONS.values():
        words.update(phrase.split())
    return sorted(words)


def is_english_caption(text: str) -> bool:
    """Whether `text` has the form of an English shapes caption: "a COLOUR KIND POSITION" phrases,
    joined by ", " and a final " and " (true or not of any image)."""
    import re

    phrase = rf"a ({'|'.join(COLOURS)}) ({'|'.join(KINDS)}) ({'|'.join(POSITIONS.values())})"
    return re.fullmatch(rf"{phrase}((, {phrase})* and {phrase})?", text) is not None


# Visual questions with known answers. Every question is asked only where its
# answer is a function of the image: "what colour is the circle?" only when
# the scene holds exactly one circle, "where is the red circle?" only when it
# holds exactly one red circle.
QUESTION_TYPES = ("count", "colour", "exists", "shape_at", "where")
# (row, col) -> the answer to "where is ...?": the position phrase without its preposition.
PLACES = {
    (0, 0): "top left",
    (0, 1): "top",
    (0, 2): "top right",
    (1, 0): "left",
    (1, 1): "center",
    (1, 2): "right",
    (2, 0): "bottom left",
    (2, 1): "bottom",
    (2, 2): "bottom right",
}


@dataclasses.dataclass(frozen=True)
class ShapeQuestion:
    """One question about a scene, its answer and its type (one of `QUESTION_TYPES`)."""

    kind: str
    question: str
    answer: str


def question_candidates(scene: ShapeScene) -> dict[str, list[ShapeQuestion]]:
    """Every well-posed question of each type about a scene, in a fixed order."""
    kinds = [o.kind for o in scene.objects]
    pairs = [(o.colour, o.kind) for o in scene.objects]
    out: dict[str, list[ShapeQuestion]] = {t: [] for t in QUESTION_TYPES}
    out["count"].append(ShapeQuestion("count", "how many shapes are there?", str(len(scene.objects))))
    for obj in scene.objects:
        if kinds.count(obj.kind) == 1:
            out["colour"].append(ShapeQuestion("colour", f"what colour is the {obj.kind}?", obj.colour))
        out["shape_at"].append(ShapeQuestion("shape_at", f"what shape is {obj.position}?", obj.kind))
        if pairs.count((obj.colour, obj.kind)) == 1:
            out["where"].append(ShapeQuestion("where", f"where is the {obj.colour} {obj.kind}?", PLACES[obj.cell]))
    for kind in KINDS:
        out["exists"].append(ShapeQuestion("exists", f"is there a {kind}?", "yes" if kind in kinds else "no"))
    return out


def make_questions(scene: ShapeScene, per_type: int = 1, seed: int = 0) -> list[ShapeQuestion]:
    """Up to `per_type` questions of each type about a scene, drawn deterministically.

    The draw depends only on the scene (split, index, generator seed) and `seed`.
    "is there a KIND?" questions are drawn half "yes", half "no" where both
    exist, so that "yes" is not the better guess.
    """
    rng = random.Random(f"questions/{seed}/{scene.split}/{scene.index}/{scene.noise_seed}")
    candidates = question_candidates(scene)
    picked: list[ShapeQuestion] = []
    for kind in QUESTION_TYPES:
        pool = candidates[kind]
        if kind == "exists":
            yes = [q for q in pool if q.answer == "yes"]
            no = [q for q in pool if q.answer == "no"]
            chosen = []
            for i in range(min(per_type, len(pool))):
                side = (yes, no)[(i + rng.randrange(2)) % 2] if yes and no else (yes or no)
                remaining = [q for q in side if q not in chosen] or [q for q in pool if q not in chosen]
                chosen.append(rng.choice(remaining))
            picked += chosen
        else:
            picked += rng.sample(pool, min(per_type, len(pool)))
    return picked


def answer_vocabulary() -> dict[str, list[str]]:
    """Every answer each question type can have, sorted (the closed answer lists)."""
    return {
        "count": ["1", "2", "3"],
        "colour": sorted(COLOURS),
        "exists": ["no", "yes"],
        "shape_at": sorted(KINDS),
        "where": sorted(PLACES.values()),
    }


def question_vocabulary() -> list[str]:
    """Every word a shapes question or answer can use, sorted."""
    words = {"?", "how", "many", "shapes", "are", "there", "what", "colour", "is", "the", "shape", "where", "a"}
    words |= set(KINDS) | set(COLOURS) | {"yes", "no", "1", "2", "3"}
    for phrase in list(POSITIONS.values()) + list(PLACES.values()):
        words.update(phrase.split())
    return sorted(words)
