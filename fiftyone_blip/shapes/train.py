"""Trains the bundled `shapes-tiny` BLIP models on synthetic shapes data.

    python -m fiftyone_blip.shapes.train --out fiftyone_blip/shapes/models

Two models, the same classes and file layout as the Salesforce checkpoints:

- captioner: `BlipForConditionalGeneration` (like blip-image-captioning-base),
  trained with the language-modelling loss on English captions;
- matcher: `BlipForImageTextRetrieval` (like blip-itm-base-coco), trained with
  BLIP's contrastive (ITC) and image-text matching (ITM) losses. The bundled
  matcher's recipe (`--matcher-recipe queries`, the default): started from the
  captioner (vision tower; its text decoder's layers for the text encoder),
  the lowest `--matcher-frozen-layers` vision layers kept frozen and cached
  once. Queries follow the grammar the evaluations use: whole captions, "a red
  circle", "a red circle on the left" and kind-only labels ("a circle": the
  image's class, the kind of its largest shape). Every image of a batch that a
  query truly describes (from the scene's objects) is an ITC positive; each
  query with one attribute changed joins the ITC texts as a hard negative
  (`--matcher-itc-hard`). ITM negatives, as BLIP mines them: a text and an
  image of the batch drawn by ITC similarity among the non-matching ones, plus
  the query with one object's kind (most often), colour or position changed.
  Object crops (`--matcher-crops`, cut as `find_mislabels` cuts detections)
  train ITM on "a {kind}" of the central object. The captioner's cell probe
  stays on as an auxiliary loss on the matcher's patch tokens.
- `--matcher-recipe captions` (the first matcher's recipe): ITC on whole
  captions, ITM negatives are other images' captions and captions with one
  attribute changed.

    python -m fiftyone_blip.shapes.train --only matcher --threads 2

Both use a tokenizer of their own (WordPiece over the caption words). Seeds are
fixed; on 2 CPU cores the captioner takes about 20 minutes and the matcher
about 30. The held-out metrics are measured on the `validation` split and
written to each model card.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fiftyone_blip.shapes import data as shapes

IMAGE_SIZE = 96
PATCH_SIZE = 16  # a 6x6 grid whose patch borders fall on the 3x3 cell borders
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]


def build_processor():
    """Writes a WordPiece vocabulary of the caption words and returns a BlipProcessor."""
    from transformers import BertTokenizerFast, BlipImageProcessor, BlipProcessor

    words = SPECIAL_TOKENS + shapes.english_vocabulary()
    tokenizer = BertTokenizerFast(
        vocab={word: i for i, word in enumerate(words)}, do_lower_case=True, bos_token="[DEC]", model_max_length=64
    )
    probe = tokenizer(" ".join(shapes.english_vocabulary()))["input_ids"]
    if tokenizer.unk_token_id in probe:
        raise RuntimeError("the shapes tokenizer maps a caption word to [UNK]")
    image_processor = BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_config(
    tokenizer,
    kind: str,
    image_size: int = IMAGE_SIZE,
    patch_size: int = PATCH_SIZE,
    vision_width: int = 192,
    vision_layers: int = 4,
    text_width: int = 128,
    text_layers: int = 2,
    heads: int = 4,
    embed_dim: int = 64,
):
    """A small BlipConfig (default: a 4-layer, 192-wide ViT on a 6x6 grid, 2-layer, 128-wide text towers).

    `kind` is "captioner" or "matcher"; token ids come from the tokenizer.
    """
    from transformers import BlipConfig

    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}
    text_config = dict(
        vocab_size=len(tokenizer),
        hidden_size=text_width,
        encoder_hidden_size=vision_width,
        intermediate_size=4 * text_width,
        num_hidden_layers=text_layers,
        num_attention_heads=heads,
        max_position_embeddings=64,
        bos_token_id=ids["[DEC]"],
        eos_token_id=ids["[SEP]"],
        sep_token_id=ids["[SEP]"],
        pad_token_id=ids["[PAD]"],
    )
    vision_config = dict(
        hidden_size=vision_width,
        intermediate_size=4 * vision_width,
        num_hidden_layers=vision_layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch_size,
    )
    config = BlipConfig(
        text_config=text_config,
        vision_config=vision_config,
        projection_dim=embed_dim,
        image_text_hidden_size=embed_dim,
    )
    config.architectures = ["BlipForConditionalGeneration" if kind == "captioner" else "BlipForImageTextRetrieval"]
    return config


def pixel_tensor(processor, scenes: list[shapes.ShapeScene]) -> torch.Tensor:
    """Renders scenes and preprocesses them exactly as inference will."""
    chunks = []
    for start in range(0, len(scenes), 512):
        images = [s.render() for s in scenes[start : start + 512]]
        chunks.append(processor(images=images, return_tensors="pt")["pixel_values"])
    return torch.cat(chunks)


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def text_tokens(tokenizer, captions: list[str], bos: int | None = None):
    batch = tokenizer(captions, padding="longest", return_tensors="pt")
    input_ids = batch["input_ids"]
    if bos is not None:
        input_ids = input_ids.clone()
        input_ids[:, 0] = bos
    return input_ids, batch["attention_mask"]


def _fit(model, steps_per_epoch: int, epochs: int, lr: float, step_fn, log_prefix: str, extra_params=()):
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(extra_params), lr=lr, weight_decay=0.05)
    total = steps_per_epoch * epochs
    step = 0
    started = time.time()
    for epoch in range(epochs):
        model.train()
        losses = []
        for batch_index in range(steps_per_epoch):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, lr, warmup=min(300, total // 10))
            loss = step_fn(epoch, batch_index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
            step += 1
        print(
            f"{log_prefix} epoch {epoch + 1}/{epochs} loss {np.mean(losses):.4f} ({time.time() - started:.0f} s)",
            flush=True,
        )


def greedy_exact_match(model, processor, pixels: torch.Tensor, captions: list[str]) -> float:
    model.eval()
    predictions = []
    with torch.no_grad():
        for start in range(0, len(pixels), 256):
            out = model.generate(pixel_values=pixels[start : start + 256], max_new_tokens=40)
            predictions += processor.batch_decode(out, skip_special_tokens=True)
    return float(np.mean([p.strip() == c for p, c in zip(predictions, captions)]))


def cell_targets(scenes: list[shapes.ShapeScene]) -> torch.Tensor:
    """(N, 9, 2): per grid cell, the kind and colour index of its shape, or the "empty" index."""
    kinds, colours = list(shapes.KINDS), sorted(shapes.COLOURS)
    targets = torch.empty(len(scenes), 9, 2, dtype=torch.long)
    targets[:, :, 0] = len(kinds)
    targets[:, :, 1] = len(colours)
    for i, scene in enumerate(scenes):
        for obj in scene.objects:
            cell = obj.cell[0] * 3 + obj.cell[1]
            targets[i, cell, 0] = kinds.index(obj.kind)
            targets[i, cell, 1] = colours.index(obj.colour)
    return targets


class CellProbe(torch.nn.Module):
    """A training-only head: names the shape in each 3x3 cell from the ViT's patch tokens.

    Learning shape kinds only through the caption loss is slow for a ViT trained
    from scratch; this direct signal makes it fast. The head is thrown away: the
    saved model is a plain BlipForConditionalGeneration.
    """

    def __init__(self, vision_config):
        super().__init__()
        self.grid = vision_config.image_size // vision_config.patch_size
        self.kind = torch.nn.Linear(vision_config.hidden_size, len(shapes.KINDS) + 1)
        self.colour = torch.nn.Linear(vision_config.hidden_size, len(shapes.COLOURS) + 1)

    def loss(self, patch_tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        batch, _, width = patch_tokens.shape
        per = self.grid // 3
        cells = patch_tokens.reshape(batch, 3, per, 3, per, width).mean((2, 4)).reshape(batch, 9, width)
        return F.cross_entropy(self.kind(cells).flatten(0, 1), targets[:, :, 0].flatten()) + F.cross_entropy(
            self.colour(cells).flatten(0, 1), targets[:, :, 1].flatten()
        )


def train_captioner(processor, train_pixels, train_scenes, val_pixels, val_captions, args):
    from transformers import BlipForConditionalGeneration

    torch.manual_seed(args.seed)
    model = BlipForConditionalGeneration(build_config(processor.tokenizer, "captioner"))
    probe = CellProbe(model.config.vision_config)
    targets = cell_targets(train_scenes)
    train_captions = [s.caption() for s in train_scenes]
    tokenizer = processor.tokenizer
    bos = model.config.text_config.bos_token_id
    pad = model.config.text_config.pad_token_id
    input_ids, attention_mask = text_tokens(tokenizer, train_captions, bos=bos)
    n = len(train_pixels)
    steps = n // args.batch_size
    generator = torch.Generator().manual_seed(args.seed)
    order = {}

    def step_fn(epoch, batch_index):
        if epoch not in order:
            order.clear()
            order[epoch] = torch.randperm(n, generator=generator)
        idx = order[epoch][batch_index * args.batch_size : (batch_index + 1) * args.batch_size]
        ids, mask = input_ids[idx], attention_mask[idx]
        width = int(mask.sum(1).max())
        ids, mask = ids[:, :width], mask[:, :width]
        labels = ids.masked_fill(ids == pad, -100)
        out = model(pixel_values=train_pixels[idx], input_ids=ids, attention_mask=mask, labels=labels)
        return out.loss + args.probe_weight * probe.loss(out.last_hidden_state[:, 1:], targets[idx])

    _fit(model, steps, args.captioner_epochs, args.lr, step_fn, "captioner", extra_params=probe.parameters())
    exact = greedy_exact_match(model, processor, val_pixels, val_captions)
    print(f"captioner held-out greedy exact match: {exact:.4f}", flush=True)
    return model, {"greedy_exact_match": round(exact, 4)}


def perturb_caption(scene: shapes.ShapeScene, rng: random.Random) -> str:
    """The scene's caption with one object's colour, kind or position changed."""
    objects = list(scene.objects)
    i = rng.randrange(len(objects))
    obj = objects[i]
    what = rng.choice(("colour", "kind", "position"))
    if what == "colour":
        obj = shapes.ShapeObject(
            obj.kind, rng.choice([c for c in shapes.COLOURS if c != obj.colour]), obj.cell, obj.box
        )
    elif what == "kind":
        obj = shapes.ShapeObject(rng.choice([k for k in shapes.KINDS if k != obj.kind]), obj.colour, obj.cell, obj.box)
    else:
        taken = {o.cell for o in objects}
        free = [c for c in shapes.POSITIONS if c not in taken]
        obj = shapes.ShapeObject(obj.kind, obj.colour, rng.choice(free), obj.box)
    objects[i] = obj
    objects.sort(key=lambda o: o.cell)
    fake = shapes.ShapeScene(scene.index, scene.split, scene.size, scene.background, tuple(objects), 0)
    return fake.caption()


def itm_probabilities(model, tokenizer, pixels, captions, batch_size=256) -> np.ndarray:
    model.eval()
    scores = []
    with torch.no_grad():
        for start in range(0, len(pixels), batch_size):
            batch = tokenizer(captions[start : start + batch_size], padding="longest", return_tensors="pt")
            out = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                pixel_values=pixels[start : start + batch_size],
            )
            scores.append(out.itm_score.softmax(-1)[:, 1])
    return torch.cat(scores).numpy()


def auroc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    scores = np.concatenate([positives, negatives])
    ranks = np.empty(len(scores))
    order = scores.argsort(kind="mergesort")
    ranks[order] = np.arange(1, len(scores) + 1)
    # average ranks over ties
    for value in np.unique(scores):
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    n_pos, n_neg = len(positives), len(negatives)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def train_matcher_captions(processor, train_pixels, train_scenes, val_pixels, val_scenes, vision_state, args):
    """The first matcher's recipe: ITC on whole captions, ITM with swapped or one-attribute-changed captions."""
    from transformers import BlipForImageTextRetrieval

    torch.manual_seed(args.seed + 1)
    model = BlipForImageTextRetrieval(build_config(processor.tokenizer, "matcher"))
    if vision_state is not None:
        # Starting from the captioner's vision tower halves the matcher's training time.
        model.vision_model.load_state_dict(vision_state)
    tokenizer = processor.tokenizer
    captions = [s.caption() for s in train_scenes]
    input_ids, attention_mask = text_tokens(tokenizer, captions)
    n = len(train_pixels)
    steps = n // args.batch_size
    rng = random.Random(args.seed)
    generator = torch.Generator().manual_seed(args.seed + 1)
    order = {}
    temperature = 0.07

    def step_fn(epoch, batch_index):
        if epoch not in order:
            order.clear()
            order[epoch] = torch.randperm(n, generator=generator)
        idx = order[epoch][batch_index * args.batch_size : (batch_index + 1) * args.batch_size]
        ids, mask, pixels = input_ids[idx], attention_mask[idx], train_pixels[idx]
        image_embeds = model.vision_model(pixel_values=pixels).last_hidden_state
        text_out = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        image_feat = F.normalize(model.vision_proj(image_embeds[:, 0]), dim=-1)
        text_feat = F.normalize(model.text_proj(text_out[:, 0]), dim=-1)
        logits = image_feat @ text_feat.t() / temperature
        # Identical captions in a batch are true matches, not negatives.
        same = torch.tensor([[captions[i] == captions[j] for j in idx.tolist()] for i in idx.tolist()])
        itc = multi_positive_itc(logits, same.float(), len(idx))

        negatives = []
        for i in idx.tolist():
            if rng.random() < 0.5:
                negatives.append(perturb_caption(train_scenes[i], rng))
            else:
                j = rng.randrange(n)
                while captions[j] == captions[i]:
                    j = rng.randrange(n)
                negatives.append(captions[j])
        itm_logits = fused_itm_logits(
            model, tokenizer, [captions[i] for i in idx.tolist()] + negatives, torch.cat([image_embeds, image_embeds])
        )
        itm_labels = torch.cat([torch.ones(len(idx)), torch.zeros(len(idx))]).long()
        return itc + F.cross_entropy(itm_logits, itm_labels)

    _fit(model, steps, args.matcher_epochs, args.lr, step_fn, "matcher")

    metrics = matcher_metrics(model, processor.tokenizer, val_pixels, val_scenes, args)
    print(f"matcher held-out: {metrics}", flush=True)
    return model, metrics


# --- matcher recipe: scene-grounded queries -----------------------------------
#
# A query is (form, objects): form "caption" (the whole scene, every object with
# its position), "kind" (a kind alone: the image's class, i.e. the kind of its
# largest shape, as `gt_label` and the label prompt "a {label}" use it),
# "colour kind" or "colour kind position" (one object). Relevance is computed
# from the scene's objects, never from string equality.


def query_text(form: str, objs) -> str:
    if form == "caption":
        fake = shapes.ShapeScene(0, "train", IMAGE_SIZE, (0, 0, 0), tuple(sorted(objs, key=lambda o: o.cell)), 0)
        return fake.caption()
    (obj,) = objs
    if form == "kind":
        return f"a {obj.kind}"
    if form == "colour kind":
        return f"a {obj.colour} {obj.kind}"
    return f"a {obj.colour} {obj.kind} {obj.position}"


def _key(obj, form):
    if form == "kind":
        return (obj.kind,)
    if form == "colour kind":
        return (obj.colour, obj.kind)
    return (obj.colour, obj.kind, obj.cell)


def query_matches(form: str, objs, scene: shapes.ShapeScene) -> bool:
    """Whether the query (form, objects) truly describes the scene."""
    if form == "caption":
        return sorted((o.colour, o.kind, o.cell) for o in objs) == sorted(
            (o.colour, o.kind, o.cell) for o in scene.objects
        )
    (obj,) = objs
    if form == "kind":
        return scene.label == obj.kind
    return any(_key(o, form) == _key(obj, form) for o in scene.objects)


QUERY_FORMS = (("caption", 0.2), ("kind", 0.2), ("colour kind", 0.2), ("colour kind position", 0.4))


def sample_query(scene: shapes.ShapeScene, rng: random.Random):
    form = rng.choices([f for f, _ in QUERY_FORMS], weights=[w for _, w in QUERY_FORMS])[0]
    if form == "caption":
        return form, tuple(scene.objects)
    if form == "kind":
        return form, (largest_object(scene),)
    return form, (rng.choice(scene.objects),)


def largest_object(scene: shapes.ShapeScene) -> shapes.ShapeObject:
    return max(scene.objects, key=lambda o: (o.box[2] - o.box[0], -scene.objects.index(o)))


def negative_query(scene: shapes.ShapeScene, query, rng: random.Random, scenes):
    """A query that does not describe the scene: one attribute changed (kind most often) or another image's."""
    form, objs = query
    smaller = [o.kind for o in scene.objects if o.kind != objs[0].kind]
    if form == "kind" and smaller and rng.random() < 0.5:
        # The class is the largest shape's kind: another shape's kind is the hard negative.
        return form, (shapes.ShapeObject(rng.choice(smaller), objs[0].colour, objs[0].cell, objs[0].box),)
    for _ in range(50):
        r = rng.random()
        if r < 0.15:
            other = scenes[rng.randrange(len(scenes))]
            candidate = sample_query(other, rng)
        else:
            objs2 = list(objs)
            i = rng.randrange(len(objs2))
            obj = objs2[i]
            has_position = form in ("caption", "colour kind position")
            choices = ["kind"] * 5
            if form != "kind":
                choices += ["colour"] * 3
            if has_position:
                choices += ["position"] * 2
            what = rng.choice(choices)
            if what == "kind":
                obj = shapes.ShapeObject(
                    rng.choice([k for k in shapes.KINDS if k != obj.kind]), obj.colour, obj.cell, obj.box
                )
            elif what == "colour":
                obj = shapes.ShapeObject(
                    obj.kind, rng.choice([c for c in shapes.COLOURS if c != obj.colour]), obj.cell, obj.box
                )
            else:
                taken = {o.cell for o in objs2}
                obj = shapes.ShapeObject(
                    obj.kind, obj.colour, rng.choice([c for c in shapes.POSITIONS if c not in taken]), obj.box
                )
            objs2[i] = obj
            candidate = (form, tuple(objs2))
        if not query_matches(*candidate, scene):
            return candidate
    raise RuntimeError("no negative query found")


def load_captioner_weights(directory: Path | None = None) -> dict:
    """The bundled captioner's weights (the matcher starts from its vision tower and text decoder)."""
    from safetensors.torch import load_file

    directory = directory or Path(__file__).parent / "models" / "captioner"
    return load_file(str(directory / "model.safetensors"))


def init_matcher_from_captioner(model, state: dict) -> None:
    """Vision tower: the captioner's; text encoder: the captioner's text decoder (same layers, cross-attention included)."""
    vision = {k[len("vision_model.") :]: v for k, v in state.items() if k.startswith("vision_model.")}
    model.vision_model.load_state_dict(vision)
    text = {k[len("text_decoder.bert.") :]: v for k, v in state.items() if k.startswith("text_decoder.bert.")}
    missing, unexpected = model.text_encoder.load_state_dict(text, strict=False)
    if unexpected or any(not k.startswith("pooler") for k in missing):
        raise RuntimeError(f"captioner text weights do not fit: missing {missing}, unexpected {unexpected}")


def vision_prefix(model, pixels: torch.Tensor, layers: int, batch_size: int = 256) -> torch.Tensor:
    """Hidden states after the embeddings and the first `layers` (frozen) vision layers."""
    chunks = []
    with torch.no_grad():
        for start in range(0, len(pixels), batch_size):
            h = model.vision_model.embeddings(pixels[start : start + batch_size])
            for layer in model.vision_model.encoder.layers[:layers]:
                h = layer(h)
            chunks.append(h)
    return torch.cat(chunks)


def vision_suffix(model, hidden: torch.Tensor, layers: int) -> torch.Tensor:
    for layer in model.vision_model.encoder.layers[layers:]:
        hidden = layer(hidden)
    return model.vision_model.post_layernorm(hidden)


def retrieval_precision(model, tokenizer, pixels, scenes, k: int = 10, min_relevant: int = 10) -> dict:
    """ITC precision@k of the colour+kind(+position) queries of benchmarks/eval_retrieval.py on these scenes."""
    import itertools

    model.eval()
    with torch.no_grad():
        image_feat = F.normalize(
            model.vision_proj(model.vision_model(pixel_values=pixels).last_hidden_state[:, 0]), dim=-1
        )
        out = {}
        for form in ("colour kind", "colour kind position"):
            precisions = []
            combos = itertools.product(
                sorted(shapes.COLOURS), shapes.KINDS, sorted(shapes.POSITIONS) if "position" in form else [None]
            )
            for colour, kind, cell in combos:
                obj = shapes.ShapeObject(kind, colour, cell or (1, 1), (0, 0, 0, 0))
                relevant = np.array([query_matches(form, (obj,), s) for s in scenes])
                if relevant.sum() < min_relevant:
                    continue
                batch = tokenizer([query_text(form, (obj,))], return_tensors="pt")
                text_feat = F.normalize(model.text_proj(model.text_encoder(**batch).last_hidden_state[:, 0]), dim=-1)
                top = (image_feat @ text_feat[0]).topk(k).indices.numpy()
                precisions.append(relevant[top].mean())
            out[form] = float(np.mean(precisions)) if precisions else None
    return out


def kind_label_auroc(model, tokenizer, pixels, scenes, rate: float = 0.1, seed: int = 0) -> float:
    """ITM AUROC of finding randomly wrong class labels ("a {kind}", 10% noise), as benchmarks/eval_mislabels.py."""
    rng = random.Random(seed)
    n = len(scenes)
    noisy = np.zeros(n, dtype=bool)
    noisy[rng.sample(range(n), round(rate * n))] = True
    labels = [
        rng.choice([k for k in shapes.KINDS if k != s.label]) if noisy[i] else s.label for i, s in enumerate(scenes)
    ]
    p = itm_probabilities(model, tokenizer, pixels, [f"a {k}" for k in labels])
    return auroc(p[~noisy], p[noisy])


def crop_set(processor, scenes: list[shapes.ShapeScene], seed: int, padding: float = 3.0):
    """One object per scene, cropped as `find_mislabels` crops detections: (pixels, objects, the scenes' other kinds)."""
    from fiftyone_blip.images import crop

    rng = random.Random(seed)
    chunks, objects, others = [], [], []
    for start in range(0, len(scenes), 512):
        images = []
        for scene in scenes[start : start + 512]:
            obj = rng.choice(scene.objects)
            x0, y0, x1, y1 = (v / scene.size for v in obj.box)
            images.append(crop(scene.render(), [x0, y0, x1 - x0, y1 - y0], padding))
            objects.append(obj)
            others.append(sorted({o.kind for o in scene.objects} - {obj.kind}))
        chunks.append(processor(images=images, return_tensors="pt")["pixel_values"])
    return torch.cat(chunks), objects, others


def multi_positive_itc(logits: torch.Tensor, relevant: torch.Tensor, columns: int) -> torch.Tensor:
    """BLIP's ITC loss where every true match is a positive (`relevant` 0/1, images x texts).

    Text columns beyond `columns` are extra texts for the image-to-text direction only.
    """
    i2t = -(F.log_softmax(logits, 1) * relevant / relevant.sum(1, keepdim=True)).sum(1).mean()
    by_text, rel_t = logits[:, :columns].t(), relevant[:, :columns].t()
    t2i = -(F.log_softmax(by_text, 1) * rel_t / rel_t.sum(1, keepdim=True)).sum(1).mean()
    return (i2t + t2i) / 2


def mine_negatives(logits: torch.Tensor, relevant: torch.Tensor, generator) -> tuple[list[int], list[int]]:
    """Per image a non-matching text, per text a non-matching image, drawn by ITC similarity."""
    weights_i2t = F.softmax(logits, 1).masked_fill(relevant.bool(), 0) + 1e-12
    weights_t2i = F.softmax(logits.t(), 1).masked_fill(relevant.t().bool(), 0) + 1e-12
    neg_text = torch.multinomial(weights_i2t, 1, generator=generator)[:, 0]
    neg_image = torch.multinomial(weights_t2i, 1, generator=generator)[:, 0]
    return neg_text.tolist(), neg_image.tolist()


def fused_itm_logits(model, tokenizer, texts: list[str], image_embeds: torch.Tensor) -> torch.Tensor:
    """ITM logits of texts[i] against image i: the text encoder cross-attending to the image."""
    tokens = tokenizer(texts, padding="longest", return_tensors="pt")
    fused = model.text_encoder(
        input_ids=tokens["input_ids"],
        attention_mask=tokens["attention_mask"],
        encoder_hidden_states=image_embeds,
        encoder_attention_mask=torch.ones(image_embeds.shape[:2], dtype=torch.long),
    ).last_hidden_state
    return model.itm_head(fused[:, 0])


def train_matcher_queries(processor, train_pixels, train_scenes, val_pixels, val_scenes, args):
    from transformers import BlipForImageTextRetrieval

    torch.manual_seed(args.seed + 1)
    model = BlipForImageTextRetrieval(build_config(processor.tokenizer, "matcher", embed_dim=args.matcher_embed_dim))
    init_matcher_from_captioner(model, load_captioner_weights(args.captioner_dir))
    frozen = args.matcher_frozen_layers
    for p in list(model.vision_model.embeddings.parameters()) + [
        p for layer in model.vision_model.encoder.layers[:frozen] for p in layer.parameters()
    ]:
        p.requires_grad_(False)
    t0 = time.time()
    cached = vision_prefix(model, train_pixels, frozen)
    print(f"cached {frozen} frozen vision layers for {len(cached)} images ({time.time() - t0:.0f} s)", flush=True)
    crops = None
    if args.matcher_crops:
        t0 = time.time()
        crop_pixels, crop_objects, crop_others = crop_set(processor, train_scenes[: args.matcher_crops], args.seed + 3)
        crops = vision_prefix(model, crop_pixels, frozen)
        print(f"cropped and cached {len(crops)} object crops ({time.time() - t0:.0f} s)", flush=True)
    probe = CellProbe(model.config.vision_config)
    cells = cell_targets(train_scenes)
    tokenizer = processor.tokenizer
    n = len(train_scenes)
    rng = random.Random(args.seed)
    generator = torch.Generator().manual_seed(args.seed + 1)
    temperature = 0.07
    bsz = args.batch_size

    def step_fn(epoch, batch_index):
        idx = torch.randint(n, (bsz,), generator=generator).tolist()
        scenes = [train_scenes[i] for i in idx]
        queries = [sample_query(s, rng) for s in scenes]
        changed = [negative_query(s, q, rng, train_scenes) for s, q in zip(scenes, queries)]
        image_embeds = vision_suffix(model, cached[idx], frozen)

        # ITC. Each image's query with one attribute changed joins the texts as a hard
        # negative (and is a positive wherever it truly describes another image of the batch).
        itc_queries = queries + (changed if args.matcher_itc_hard else [])
        tokens = tokenizer([query_text(*q) for q in itc_queries], padding="longest", return_tensors="pt")
        text_out = model.text_encoder(**tokens).last_hidden_state
        image_feat = F.normalize(model.vision_proj(image_embeds[:, 0]), dim=-1)
        text_feat = F.normalize(model.text_proj(text_out[:, 0]), dim=-1)
        # relevant[i, j]: text j truly describes image i
        relevant = torch.tensor([[query_matches(*q, s) for q in itc_queries] for s in scenes], dtype=torch.float)
        logits = image_feat @ text_feat.t() / temperature
        itc = multi_positive_itc(logits, relevant, bsz)

        # ITM negatives, as BLIP mines them: for each image a text of the batch and for each
        # text an image of the batch, drawn by ITC similarity among the non-matching ones;
        # plus the query with one attribute changed (kind most often).
        neg_text, neg_image = mine_negatives(logits[:, :bsz].detach(), relevant[:, :bsz], generator)
        positives = [query_text(*q) for q in queries]
        itm_texts = positives + [positives[j] for j in neg_text] + positives + [query_text(*q) for q in changed]
        images = torch.cat([image_embeds, image_embeds, image_embeds[neg_image], image_embeds])
        itm_labels = torch.cat([torch.ones(bsz), torch.zeros(3 * bsz)]).long()
        itm_logits = fused_itm_logits(model, tokenizer, itm_texts, images)
        itm = F.cross_entropy(itm_logits, itm_labels, weight=torch.tensor([1.0, 3.0]))
        if crops is not None:
            itm = itm + 0.5 * crop_itm_loss(bsz // 4)
        return itc + itm + args.probe_weight * probe.loss(image_embeds[:, 1:], cells[idx])

    def crop_itm_loss(count: int) -> torch.Tensor:
        """Object crops (detections are scored on crops): "a {kind}" of the central object
        against another kind, half the time one that the scene also holds."""
        cidx = torch.randint(len(crops), (count,), generator=generator).tolist()
        crop_embeds = vision_suffix(model, crops[cidx], frozen)
        wrong = []
        for i in cidx:
            pool = crop_others[i] if crop_others[i] and rng.random() < 0.5 else shapes.KINDS
            wrong.append(rng.choice([k for k in pool if k != crop_objects[i].kind]))
        texts = [f"a {crop_objects[i].kind}" for i in cidx] + [f"a {k}" for k in wrong]
        logits = fused_itm_logits(model, tokenizer, texts, torch.cat([crop_embeds, crop_embeds]))
        return F.cross_entropy(logits, torch.cat([torch.ones(count), torch.zeros(count)]).long())

    steps = args.matcher_steps
    _fit(model, steps // 4, 4, args.matcher_lr, step_fn, "matcher", extra_params=probe.parameters())
    model.requires_grad_(True)
    metrics = matcher_metrics(model, tokenizer, val_pixels, val_scenes, args)
    print(f"matcher held-out: {metrics}", flush=True)
    return model, metrics


def matcher_metrics(model, tokenizer, val_pixels, val_scenes, args) -> dict:
    rng = random.Random(args.seed + 2)
    val_captions = [s.caption() for s in val_scenes]
    swapped = []
    for i in range(len(val_scenes)):
        j = rng.randrange(len(val_scenes))
        while val_captions[j] == val_captions[i]:
            j = rng.randrange(len(val_scenes))
        swapped.append(val_captions[j])
    hard = [perturb_caption(s, rng) for s in val_scenes]
    matched_scores = itm_probabilities(model, tokenizer, val_pixels, val_captions)
    metrics = {
        "itm_auroc_swapped": round(auroc(matched_scores, itm_probabilities(model, tokenizer, val_pixels, swapped)), 4),
        "itm_auroc_one_attribute_changed": round(
            auroc(matched_scores, itm_probabilities(model, tokenizer, val_pixels, hard)), 4
        ),
    }
    precision = retrieval_precision(model, tokenizer, val_pixels, val_scenes)
    for form, value in precision.items():
        key = "itc_precision_at_10_" + form.replace(" ", "_")
        metrics[key] = None if value is None else round(value, 4)
    metrics["itm_auroc_class_label_10pct_random"] = round(kind_label_auroc(model, tokenizer, val_pixels, val_scenes), 4)
    return metrics


MODEL_CARD = """# shapes-tiny {kind}

A tiny `{cls}` trained on the synthetic shapes data of fiftyone-blip, with the
same classes and file layout as `{like}`. It exists so that the demo and the
tests run offline in seconds; it knows nothing outside shapes images.

- Parameters: {params:,}
- Vision: ViT, {vision_layers} layers, width {vision_width}, {image_size} px input, patch {patch} ({grid}x{grid} grid)
- Text: {text_layers} layers, width {text_width}, own WordPiece vocabulary of {vocab} tokens
- Training data: shapes `train` split, seed {seed}, {train_count} images
- Held-out data: shapes `validation` split, {val_count} images

Trained with:

    {command}

Held-out metrics (measured by the command above, at the end of training):

{metrics}

Training time: {minutes:.1f} minutes on {threads} CPU threads.
"""


def without_out(argv: list[str]) -> list[str]:
    """The command line minus `--out DIR`, which changes where files go, not what they hold."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--out":
            skip = True
        elif not arg.startswith("--out="):
            kept.append(arg)
    return kept


def card_fields(model, args, module: str) -> dict:
    """The model card fields every shapes-tiny model has: its sizes, its data and the command that trained it."""
    cfg = model.config
    return dict(
        params=sum(p.numel() for p in model.parameters()),
        vision_layers=cfg.vision_config.num_hidden_layers,
        vision_width=cfg.vision_config.hidden_size,
        image_size=cfg.vision_config.image_size,
        patch=cfg.vision_config.patch_size,
        text_layers=cfg.text_config.num_hidden_layers,
        text_width=cfg.text_config.hidden_size,
        vocab=cfg.text_config.vocab_size,
        seed=args.seed,
        train_count=args.train_count,
        val_count=args.val_count,
        command=" ".join([f"python -m {module}"] + without_out(args.argv)),
        threads=torch.get_num_threads(),
    )


def write_model_folder(model, processor, directory: Path, metrics: dict, card: str) -> None:
    """Saves a trained model as a hub-style folder: weights, processor, metrics.json and its card (README.md)."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    processor.save_pretrained(directory)
    (directory / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (directory / "README.md").write_text(card)


def save(model, processor, directory: Path, kind: str, metrics: dict, args, minutes: float):
    cfg = model.config
    card = MODEL_CARD.format(
        kind=kind,
        cls=type(model).__name__,
        like="Salesforce/blip-image-captioning-base" if kind == "captioner" else "Salesforce/blip-itm-base-coco",
        grid=cfg.vision_config.image_size // cfg.vision_config.patch_size,
        metrics="\n".join(f"- {k}: {v}" for k, v in metrics.items()),
        minutes=minutes,
        **card_fields(model, args, "fiftyone_blip.shapes.train"),
    )
    write_model_folder(model, processor, directory, metrics, card)


def main(argv: list[str] | None = None) -> None:
    import sys

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "models")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-count", type=int, default=20000)
    parser.add_argument("--val-count", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--captioner-epochs", type=int, default=16)
    parser.add_argument("--matcher-epochs", type=int, default=3)
    parser.add_argument("--probe-weight", type=float, default=0.5, help="weight of the training-only cell probe")
    parser.add_argument(
        "--matcher-recipe",
        choices=("captions", "queries"),
        default="queries",
        help="queries: the bundled matcher's recipe (--matcher-steps); captions: whole captions (--matcher-epochs)",
    )
    parser.add_argument("--matcher-steps", type=int, default=5000, help="matcher optimiser steps")
    parser.add_argument("--matcher-lr", type=float, default=5e-4)
    parser.add_argument(
        "--matcher-crops", type=int, default=10000, help="queries recipe: object crops for ITM on crop labels (10000)"
    )
    parser.add_argument(
        "--matcher-itc-hard",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="queries recipe: each query with one attribute changed is also an ITC negative",
    )
    parser.add_argument("--matcher-embed-dim", type=int, default=256, help="ITC embedding size, as BLIP-base's (256)")
    parser.add_argument(
        "--matcher-frozen-layers",
        type=int,
        default=2,
        help="lowest vision layers kept as the captioner's (cached once)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (torch's default)")
    parser.add_argument("--only", choices=("captioner", "matcher"), default=None)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    started = time.time()
    processor = build_processor()
    train_scenes = shapes.make_scenes(args.train_count, "train", seed=args.seed, size=IMAGE_SIZE)
    val_scenes = shapes.make_scenes(args.val_count, "validation", seed=args.seed, size=IMAGE_SIZE)
    train_pixels = pixel_tensor(processor, train_scenes)
    val_pixels = pixel_tensor(processor, val_scenes)
    print(f"rendered {len(train_scenes)} + {len(val_scenes)} images ({time.time() - started:.0f} s)", flush=True)

    vision_state = None
    if args.only in (None, "captioner"):
        t0 = time.time()
        captioner, metrics = train_captioner(
            processor,
            train_pixels,
            train_scenes,
            val_pixels,
            [s.caption() for s in val_scenes],
            args,
        )
        save(captioner, processor, args.out / "captioner", "captioner", metrics, args, (time.time() - t0) / 60)
        vision_state = captioner.vision_model.state_dict()
    if args.only in (None, "matcher"):
        # The matcher starts from the captioner of this run, or the bundled one with --only matcher.
        args.captioner_dir = args.out / "captioner"
        if not (args.captioner_dir / "model.safetensors").exists():
            args.captioner_dir = Path(__file__).parent / "models" / "captioner"
        t0, cpu0 = time.time(), time.process_time()
        if args.matcher_recipe == "queries":
            matcher, metrics = train_matcher_queries(
                processor, train_pixels, train_scenes, val_pixels, val_scenes, args
            )
        else:
            matcher, metrics = train_matcher_captions(
                processor, train_pixels, train_scenes, val_pixels, val_scenes, vision_state, args
            )
        print(
            f"matcher: {(time.time() - t0) / 60:.1f} min wall, {(time.process_time() - cpu0) / 60:.1f} min CPU",
            flush=True,
        )
        save(matcher, processor, args.out / "matcher", "matcher", metrics, args, (time.time() - t0) / 60)
    print(f"done in {(time.time() - started) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
