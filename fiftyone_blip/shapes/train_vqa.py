"""Trains the bundled `shapes-tiny` VQA model (`BlipForQuestionAnswering`) on shapes questions.

    python -m fiftyone_blip.shapes.train_vqa --threads 1

The model has the classes and file layout of `Salesforce/blip-vqa-base`. It
starts from the bundled captioner's vision tower (kept frozen, so image
features are computed once) and its WordPiece vocabulary extended with the
question and answer words (appended after the caption words, in sorted
order, so the captioner's token ids keep their meaning). The question
encoder and answer decoder start from random weights: BLIP's VQA config
makes them as wide as the vision tower, wider than the captioner's text
layers.

Training data: questions with known answers about the `train` split's scenes
(`shapes.data.make_questions`: how many shapes, what colour is the KIND, is
there a KIND, what shape is at POSITION, where is the COLOUR KIND), with as
many "yes" as "no" answers to "is there a KIND?" (`balance_exists`). The
answer decoder learns with the language-modelling loss on "[DEC] answer
[SEP]". transformers 5's BLIP text layers drop the cross-attention mask:
training passes it on (`honour_cross_attention_masks`), or the answer decoder
would learn from the padding states of shorter questions, which inference,
one question at a time, never has. Model selection: greedy accuracy on the `validation` split's
questions, measured every `--eval-every` steps; the best state is saved.
Seeds are fixed; `benchmarks/eval_vqa.py` measures the saved model on the
test split and on unseen generator seeds.
"""

from __future__ import annotations

import argparse
import collections
import json
import time
import types
from pathlib import Path

import numpy as np
import torch

from fiftyone_blip.shapes import data as shapes
from fiftyone_blip.shapes.train import (
    IMAGE_SIZE,
    card_fields,
    load_captioner_weights,
    lr_at,
    pixel_tensor,
    text_tokens,
    vision_prefix,
    vision_suffix,
    write_model_folder,
)

CAPTIONER_DIR = Path(__file__).parent / "models" / "captioner"


def build_vqa_processor(captioner_dir: Path = CAPTIONER_DIR):
    """The captioner's processor with the question and answer words appended to its vocabulary."""
    from transformers import BertTokenizerFast, BlipProcessor

    base = BlipProcessor.from_pretrained(captioner_dir)
    vocab = base.tokenizer.get_vocab()
    words = [word for word, _ in sorted(vocab.items(), key=lambda item: item[1])]
    words += [word for word in shapes.question_vocabulary() if word not in vocab]
    tokenizer = BertTokenizerFast(
        vocab={word: i for i, word in enumerate(words)}, do_lower_case=True, bos_token="[DEC]", model_max_length=64
    )
    probe = tokenizer(" ".join(shapes.question_vocabulary() + shapes.english_vocabulary()))["input_ids"]
    if tokenizer.unk_token_id in probe:
        raise RuntimeError("the shapes VQA tokenizer maps a question or answer word to [UNK]")
    return BlipProcessor(image_processor=base.image_processor, tokenizer=tokenizer)


def build_vqa_model(processor, captioner_dir: Path = CAPTIONER_DIR, seed: int = 0, text_layers: int = 2):
    """A BlipForQuestionAnswering on the captioner's vision tower; text towers as wide as the vision's.

    BLIP's VQA config has one `encoder_hidden_size` for the question encoder
    (which attends to image patches) and the answer decoder (which attends to
    the question encoder's states), so the text width must equal the vision
    width; the captioner's narrower text layers cannot be reused.
    """
    from transformers import BlipConfig, BlipForQuestionAnswering

    config = BlipConfig.from_pretrained(captioner_dir)
    width = config.vision_config.hidden_size
    config.text_config.vocab_size = len(processor.tokenizer)
    config.text_config.hidden_size = width
    config.text_config.intermediate_size = 4 * width
    config.text_config.encoder_hidden_size = width
    config.text_config.num_hidden_layers = text_layers
    config.architectures = ["BlipForQuestionAnswering"]
    torch.manual_seed(seed)
    model = BlipForQuestionAnswering(config)
    state = load_captioner_weights(captioner_dir)
    vision = {k[len("vision_model.") :]: v for k, v in state.items() if k.startswith("vision_model.")}
    model.vision_model.load_state_dict(vision)
    return model


def question_set(scenes, per_type: int, seed: int) -> list[tuple[int, shapes.ShapeQuestion]]:
    return [(i, q) for i, scene in enumerate(scenes) for q in shapes.make_questions(scene, per_type, seed)]


def balance_exists(pairs, seed: int):
    """Drops "is there a KIND?" questions of the commoner answer until "yes" and "no" are as many.

    With several questions of a type per image, a one-shape image has one
    "yes" question and four "no" ones, so the drawn training set leans to "no"
    (42% "yes" at `--per-type 3`): a prior the model learns before it learns
    to look.
    """
    import random

    yes = [i for i, (_, q) in enumerate(pairs) if q.kind == "exists" and q.answer == "yes"]
    no = [i for i, (_, q) in enumerate(pairs) if q.kind == "exists" and q.answer == "no"]
    more, fewer = (yes, no) if len(yes) > len(no) else (no, yes)
    dropped = set(random.Random(f"balance/{seed}").sample(more, len(more) - len(fewer)))
    return [pair for i, pair in enumerate(pairs) if i not in dropped]


def answer_questions(model, processor, pixels, pairs, closed: bool, batch_size: int = 256, **settings):
    """Answers (image index, question) pairs with the library's model step; returns the answers in order.

    Pairs are grouped by question text, since the model step asks one question
    of a whole batch of images.
    """
    from fiftyone_blip.vqa import Answerer, Question, VqaSettings

    loaded = types.SimpleNamespace(model=model, processor=processor, device="cpu", dtype="float32")
    vocabulary = shapes.answer_vocabulary()
    groups = collections.defaultdict(list)
    for position, (image, question) in enumerate(pairs):
        groups[(question.question, question.kind)].append((position, image))
    answers = [None] * len(pairs)
    model.eval()
    for (text, kind), members in sorted(groups.items()):
        q = Question(text, "answer", tuple(vocabulary[kind]) if closed else None)
        answerer = Answerer(loaded, [q], VqaSettings(**settings))
        for start in range(0, len(members), batch_size):
            chunk = members[start : start + batch_size]
            rows = answerer(pixels[[image for _, image in chunk]])
            for (position, _), row in zip(chunk, rows):
                answers[position] = row[0][0]
    return answers


def accuracy_by_type(pairs, answers) -> dict:
    """Overall accuracy and accuracy per question type."""
    right = collections.defaultdict(list)
    for (_, question), answer in zip(pairs, answers):
        right[question.kind].append(answer == question.answer)
    out = {"overall": round(float(np.mean([a == q.answer for (_, q), a in zip(pairs, answers)])), 4)}
    out.update({kind: round(float(np.mean(right[kind])), 4) for kind in shapes.QUESTION_TYPES if right[kind]})
    return out


def honour_cross_attention_masks(model) -> list:
    """Makes the text towers' cross-attention apply `encoder_attention_mask`; returns the hook handles.

    transformers 5's BLIP text layer hands its cross-attention the encoder
    mask as `attention_mask`, which the cross-attention branch ignores, so the
    answer decoder attends to the question encoder's states at padding
    positions too. In a padded training batch the decoder would learn from
    states that inference, which encodes each question alone, never has; the
    shortest questions ("is there a KIND?") are padded most. The hooks pass
    the mask on, so a padded question is read exactly as an unpadded one.
    """

    def pass_mask_on(module, args, kwargs):
        if kwargs.get("encoder_hidden_states") is not None and kwargs.get("encoder_attention_mask") is None:
            kwargs["encoder_attention_mask"] = kwargs.get("attention_mask")
        return args, kwargs

    handles = []
    for tower in (model.text_encoder, model.text_decoder.bert):
        for layer in tower.encoder.layer:
            if hasattr(layer, "crossattention"):
                handles.append(layer.crossattention.self.register_forward_pre_hook(pass_mask_on, with_kwargs=True))
    return handles


def train(args):
    processor = build_vqa_processor(args.captioner_dir)
    model = build_vqa_model(processor, args.captioner_dir, seed=args.seed, text_layers=args.text_layers)
    tokenizer = processor.tokenizer
    text_config = model.config.text_config
    frozen = model.config.vision_config.num_hidden_layers - args.train_vision_layers

    t0 = time.time()
    train_scenes = shapes.make_scenes(args.train_count, "train", seed=args.seed, size=IMAGE_SIZE)
    val_scenes = shapes.make_scenes(args.val_count, "validation", seed=args.seed, size=IMAGE_SIZE)
    train_pixels = pixel_tensor(processor, train_scenes)
    val_pixels = pixel_tensor(processor, val_scenes)
    # The frozen vision layers run once over the training images.
    model.vision_model.requires_grad_(False)
    for layer in model.vision_model.encoder.layers[frozen:]:
        layer.requires_grad_(True)
    model.vision_model.post_layernorm.requires_grad_(args.train_vision_layers > 0)
    cached = vision_prefix(model, train_pixels, frozen)
    if args.train_vision_layers == 0:
        with torch.no_grad():
            cached = model.vision_model.post_layernorm(cached)
    del train_pixels
    print(f"rendered and encoded {len(train_scenes)} + {len(val_scenes)} images ({time.time() - t0:.0f} s)", flush=True)

    pairs = question_set(train_scenes, args.per_type, seed=args.seed)
    if args.balance_exists:
        pairs = balance_exists(pairs, args.seed)
    images = torch.tensor([i for i, _ in pairs])
    q_ids, q_mask = text_tokens(tokenizer, [q.question for _, q in pairs])
    a_ids, a_mask = text_tokens(tokenizer, [q.answer for _, q in pairs], bos=text_config.bos_token_id)
    val_pairs = question_set(val_scenes, 1, seed=args.seed)
    print(f"{len(pairs)} training questions, {len(val_pairs)} validation questions", flush=True)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.05)
    generator = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(pairs), generator=generator)
    cursor = 0
    hooks = honour_cross_attention_masks(model)
    best, best_state, history = -1.0, None, []
    started = time.time()
    losses = []
    for step in range(args.steps):
        model.train()
        if cursor + args.batch_size > len(order):
            order, cursor = torch.randperm(len(pairs), generator=generator), 0
        idx = order[cursor : cursor + args.batch_size]
        cursor += args.batch_size
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, warmup=min(200, args.steps // 10))
        qm = q_mask[idx]
        qw = int(qm.sum(1).max())
        am = a_mask[idx]
        aw = int(am.sum(1).max())
        ids, qm, answer, am = q_ids[idx, :qw], qm[:, :qw], a_ids[idx, :aw], am[:, :aw]
        image_embeds = cached[images[idx]]
        if args.train_vision_layers:
            image_embeds = vision_suffix(model, image_embeds, frozen)
        states = model.text_encoder(
            input_ids=ids,
            attention_mask=qm,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=torch.ones(image_embeds.shape[:2], dtype=torch.long),
        ).last_hidden_state
        labels = answer.masked_fill(am == 0, -100)
        out = model.text_decoder(
            input_ids=answer,
            attention_mask=am,
            encoder_hidden_states=states,
            encoder_attention_mask=qm,
            labels=labels,
            reduction="mean",
        )
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(out.loss.item())
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            answers = answer_questions(model, processor, val_pixels, val_pairs, closed=False)
            acc = accuracy_by_type(val_pairs, answers)
            history.append({"step": step + 1, **acc})
            print(
                f"step {step + 1}/{args.steps} loss {np.mean(losses):.4f} validation greedy {acc} "
                f"({time.time() - started:.0f} s)",
                flush=True,
            )
            losses = []
            if acc["overall"] > best:
                best = acc["overall"]
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for hook in hooks:
        hook.remove()
    model.load_state_dict(best_state)
    model.eval()
    metrics = {
        "validation_greedy": accuracy_by_type(
            val_pairs, answer_questions(model, processor, val_pixels, val_pairs, False)
        ),
        "validation_closed": accuracy_by_type(
            val_pairs, answer_questions(model, processor, val_pixels, val_pairs, True)
        ),
        "selected_step": max(history, key=lambda h: h["overall"])["step"],
    }
    return model, processor, metrics


MODEL_CARD = """# shapes-tiny VQA

A tiny `BlipForQuestionAnswering` trained on questions about the synthetic
shapes images of fiftyone-blip, with the same classes and file layout as
`Salesforce/blip-vqa-base`. It exists so that the demo and the tests run
offline in seconds; it knows nothing outside shapes images and its five
question types:

- how many shapes are there? (1, 2, 3)
- what colour is the KIND? (asked where one KIND is in the image)
- is there a KIND? (yes, no)
- what shape is POSITION? ("at the top left", "in the center", ...)
- where is the COLOUR KIND? (top left, top, ..., center, ..., bottom right)

- Parameters: {params:,}
- Vision: the bundled captioner's ViT ({vision_layers} layers, width {vision_width}, {image_size} px, patch {patch}),
  {frozen} layers frozen
- Text: question encoder and answer decoder of {text_layers} layers, width {text_width}, trained from a
  random start; WordPiece vocabulary of {vocab} tokens (the captioner's and the question words)
- Training data: {train_questions} questions about {train_count} shapes `train` images (seed {seed})
- Model selection: greedy accuracy on {val_questions} questions about {val_count} `validation` images

Trained with:

    {command}

Validation metrics of the selected state (step {selected_step}), free generation (greedy) and closed
answers (each type's answer list, ranked by likelihood):

{metrics}

Test-split and unseen-seed figures: BENCHMARKS.md (`benchmarks/eval_vqa.py`).

Training time: {minutes:.1f} minutes wall, {cpu_minutes:.1f} minutes CPU, on {threads} CPU threads.
"""


def save(model, processor, metrics: dict, args, minutes: float, cpu_minutes: float, counts: dict) -> None:
    lines = []
    for name in ("validation_greedy", "validation_closed"):
        lines.append(f"- {name}: " + ", ".join(f"{k} {v}" for k, v in metrics[name].items()))
    card = MODEL_CARD.format(
        frozen=model.config.vision_config.num_hidden_layers - args.train_vision_layers,
        metrics="\n".join(lines),
        selected_step=metrics["selected_step"],
        minutes=minutes,
        cpu_minutes=cpu_minutes,
        **card_fields(model, args, "fiftyone_blip.shapes.train_vqa"),
        **counts,
    )
    write_model_folder(model, processor, args.out, metrics, card)


def main(argv: list[str] | None = None) -> None:
    import sys

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "models" / "vqa")
    parser.add_argument("--captioner-dir", type=Path, default=CAPTIONER_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-count", type=int, default=8000)
    parser.add_argument("--val-count", type=int, default=300)
    parser.add_argument("--per-type", type=int, default=3, help="questions of each type per training image")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--lr",
        type=float,
        default=5e-4,
        help="peak learning rate (chosen on the validation split: 5e-4 over 7e-4, 1e-3, 2e-3)",
    )
    parser.add_argument("--steps", type=int, default=3000, help="optimiser steps")
    parser.add_argument("--eval-every", type=int, default=1000, help="steps between validation measurements")
    parser.add_argument("--text-layers", type=int, default=2, help="layers of the question encoder and answer decoder")
    parser.add_argument("--train-vision-layers", type=int, default=0, help="top vision layers trained (0: frozen)")
    parser.add_argument(
        "--balance-exists",
        action=argparse.BooleanOptionalAction,
        default=True,
        help='as many "yes" as "no" answers to "is there a KIND?" in the training questions',
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (torch's default)")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0, cpu0 = time.time(), time.process_time()
    model, processor, metrics = train(args)
    minutes, cpu_minutes = (time.time() - t0) / 60, (time.process_time() - cpu0) / 60
    metrics["train_minutes_wall"] = round(minutes, 1)
    metrics["train_minutes_cpu"] = round(cpu_minutes, 1)
    print(f"metrics {json.dumps(metrics)}", flush=True)
    counts = {
        "train_questions": len(
            question_set(shapes.make_scenes(args.train_count, "train", args.seed), args.per_type, args.seed)
        ),
        "val_questions": len(question_set(shapes.make_scenes(args.val_count, "validation", args.seed), 1, args.seed)),
    }
    save(model, processor, metrics, args, minutes, cpu_minutes, counts)
    print(f"saved to {args.out}: {minutes:.1f} min wall, {cpu_minutes:.1f} min CPU", flush=True)


if __name__ == "__main__":
    main()
