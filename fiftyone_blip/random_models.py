"""BLIP models with random but informative weights, built offline: for benchmarks and parity tests.

    build_random_blip(directory, "caption")               # BLIP-base sized (transformers' BlipConfig())
    build_random_blip(directory, "match", size="small")   # a 2-layer, 128-wide model at 96 px

The weights are random and fixed by `seed`, with two changes that make outputs
mean something:

- the vision model's `initializer_range` is 0.02, like the text model's
  (`BlipVisionConfig`'s default, 1e-10, gives every image the same features);
  the small model's is 0.08 in both, or the image would barely move its captions;
- the text decoder's output bias favours the end token ([SEP]) by `END_BIAS`,
  so that greedy captions and answers end at varied lengths (which exercises
  padding in batches) instead of always running to `max_new_tokens`.

The tokenizer is BERT-sized (30,524 tokens, `[DEC]` as BOS) for "base" and the
shapes vocabulary for "small"; the processor is saved beside the weights, so a
directory loads like a hub checkpoint. Imports neither FiftyOne nor the hub.
"""

from __future__ import annotations

from pathlib import Path

SIZES = ("base", "small")
CLASSES = {
    "caption": "BlipForConditionalGeneration",
    "match": "BlipForImageTextRetrieval",
    "vqa": "BlipForQuestionAnswering",
}
# Added to the decoder's [SEP] logit, so that captions end at varied lengths (the parity tests
# check that they do).
END_BIAS = {"base": 2.1, "small": 1.0}
INITIALIZER_RANGE = {"base": 0.02, "small": 0.08}


def random_blip_config(size: str = "base"):
    """(BlipProcessor, BlipConfig) of `size`, "base" (BLIP-base) or "small", with informative init."""
    from transformers import BertTokenizerFast, BlipConfig, BlipImageProcessor, BlipProcessor

    from fiftyone_blip.shapes.data import english_vocabulary

    if size not in SIZES:
        raise ValueError(f"`size` must be one of {SIZES}, got {size!r}")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + english_vocabulary()
    if size == "base":
        words += [f"w{i}" for i in range(30522 - len(words))]  # BERT-base's vocabulary size
    words += ["[DEC]", "[ENC]"]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}, bos_token="[DEC]")
    if size == "base":
        image_size = 384
        config = BlipConfig()  # transformers' default: the BLIP-base architecture
    else:
        image_size = 96
        vision = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2)
        vision.update(image_size=image_size, patch_size=16)
        text = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2)
        text.update(vocab_size=len(words), max_position_embeddings=64, encoder_hidden_size=128)
        config = BlipConfig(vision_config=vision, text_config=text, projection_dim=32, image_text_hidden_size=128)
    config.initializer_range = config.text_config.initializer_range = INITIALIZER_RANGE[size]
    config.vision_config.initializer_range = INITIALIZER_RANGE[size]
    config.text_config.bos_token_id = tokenizer.convert_tokens_to_ids("[DEC]")
    config.text_config.sep_token_id = tokenizer.sep_token_id
    config.text_config.pad_token_id = tokenizer.pad_token_id
    processor = BlipProcessor(BlipImageProcessor(size={"height": image_size, "width": image_size}), tokenizer)
    return processor, config


def build_random_blip(directory, task: str = "caption", size: str = "base", seed: int = 0) -> Path:
    """Saves a random, informative BLIP model of `task` and `size` with its processor into `directory`.

    An existing model there is kept (the build is deterministic in its arguments).
    """
    import torch
    import transformers

    if task not in CLASSES:
        raise ValueError(f"`task` must be one of {tuple(CLASSES)}, got {task!r}")
    directory = Path(directory)
    if (directory / "config.json").exists():
        return directory
    processor, config = random_blip_config(size)
    config.architectures = [CLASSES[task]]
    torch.manual_seed(seed)
    model = getattr(transformers, CLASSES[task])(config)
    if task != "match":  # the retrieval model has no decoder
        decoder = model.text_decoder.cls.predictions
        with torch.no_grad():
            decoder.bias[config.text_config.sep_token_id] += END_BIAS[size]
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
