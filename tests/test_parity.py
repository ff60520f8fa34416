"""Parity with transformers used directly: every capability, through the SDK and the zoo models.

The reference is transformers itself, one image at a time, fp32, eager attention,
pixels from `BlipProcessor` on the file as Pillow opens it. The library runs with
its defaults (batches of mixed images, its own SDPA attention, its own decoding).
Models are random but informative (`fiftyone_blip.random_models`): a small config
here, BLIP-base sized (ViT-B/16 at 384 px, 12-layer text model) under the `parity`
marker (`make parity`). Tolerances: captions and answers identical, vectors cosine
>= 0.99999, probabilities within 1e-5, heatmaps within one uint8 level.

Images: RGB, greyscale, RGBA, palette with transparency, a panorama, a tiny image
and a photo-sized JPEG. The zoo models get their pixels from FiftyOne's own image
reader, which drops transparency instead of compositing it over white: the zoo
checks use the images without transparency.
"""

import numpy as np
import pytest
from PIL import Image

import fiftyone_blip
from fiftyone_blip import images, zoo
from fiftyone_blip.random_models import build_random_blip

COSINE = 0.99999
PROBABILITY = 1e-5
MAX_NEW_TOKENS = 30  # CaptionSettings' default
TEXTS = {
    "rgb": "a red circle at the top left",
    "grey": "a blue square in the center",
    "rgba": "a green triangle on the right",
    "palette": "a yellow star at the bottom",
    "panorama": "the orange diamond and a purple circle",
    "tiny": "the red square",
    "large": "a circle on the left and a star on the right",
}
QUESTION = "what is in the center?"


def _photo(width, height, seed):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 40 + 2, width // 40 + 2, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC))
    edges = (rng.random((height, width, 1)) < 0.01).astype(np.uint8) * 255
    return Image.fromarray(smooth ^ edges)


def _write_images(folder) -> dict[str, str]:
    rgba = np.dstack([np.asarray(_photo(300, 200, 3)), np.tile(np.linspace(0, 255, 300, dtype=np.uint8), (200, 1))])
    palette = _photo(256, 192, 4).convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    made = {
        "rgb": (_photo(500, 375, 1), "png", {}),
        "grey": (_photo(320, 240, 2).convert("L"), "png", {}),
        "rgba": (Image.fromarray(rgba, "RGBA"), "png", {}),
        "palette": (palette, "png", {"transparency": 5}),
        "panorama": (_photo(1800, 300, 5), "jpg", {"quality": 90}),
        "tiny": (_photo(7, 5, 6), "png", {}),
        "large": (_photo(2000, 1500, 7), "jpg", {"quality": 90}),
    }
    paths = {}
    for name, (image, ext, kwargs) in made.items():
        paths[name] = str(folder / f"{name}.{ext}")
        image.save(paths[name], **kwargs)
    return paths


class Reference:
    """transformers used directly: one image at a time, fp32, eager attention."""

    def __init__(self, directories):
        import torch
        import transformers

        self.torch = torch
        self.processor = transformers.BlipProcessor.from_pretrained(directories["caption"])
        load = dict(attn_implementation="eager", dtype=torch.float32)
        self.captioner = transformers.BlipForConditionalGeneration.from_pretrained(directories["caption"], **load)
        self.matcher = transformers.BlipForImageTextRetrieval.from_pretrained(directories["match"], **load)
        self.vqa = transformers.BlipForQuestionAnswering.from_pretrained(directories["vqa"], **load)
        for model in (self.captioner, self.matcher, self.vqa):
            model.eval()

    def pixels(self, path):
        return self.processor(images=Image.open(path), return_tensors="pt")["pixel_values"]

    def caption(self, path, num_beams):
        with self.torch.inference_mode():
            out = self.captioner.generate(
                pixel_values=self.pixels(path),
                max_new_tokens=MAX_NEW_TOKENS,
                min_new_tokens=1,
                num_beams=num_beams,
                early_stopping=False,
                do_sample=False,
            )
        return self.processor.decode(out[0], skip_special_tokens=True).strip()

    def answer(self, path, question, num_beams):
        from fiftyone_blip.vqa import normalize_answer

        tokens = self.processor.tokenizer(question, return_tensors="pt")
        with self.torch.inference_mode():
            out = self.vqa.generate(
                input_ids=tokens["input_ids"],
                attention_mask=tokens["attention_mask"],
                pixel_values=self.pixels(path),
                max_new_tokens=10,
                num_beams=num_beams,
                do_sample=False,
            )
        return normalize_answer(self.processor.decode(out[0], skip_special_tokens=True))

    def image_vector(self, path):
        with self.torch.inference_mode():
            states = self.matcher.vision_model(pixel_values=self.pixels(path)).last_hidden_state
            vector = self.matcher.vision_proj(states[:, 0])
        return self.torch.nn.functional.normalize(vector, dim=-1)[0].numpy()

    def text_vector(self, text):
        tokens = self.processor.tokenizer(text, return_tensors="pt")
        with self.torch.inference_mode():
            states = self.matcher.text_encoder(**tokens, return_dict=True).last_hidden_state
            vector = self.matcher.text_proj(states[:, 0])
        return self.torch.nn.functional.normalize(vector, dim=-1)[0].numpy()

    def itm_itc(self, path, text):
        tokens = self.processor.tokenizer(text, return_tensors="pt")
        with self.torch.inference_mode():
            itm = self.matcher(pixel_values=self.pixels(path), **tokens, use_itm_head=True).itm_score
            itc = self.matcher(pixel_values=self.pixels(path), **tokens, use_itm_head=False).itm_score
        return float(itm.softmax(-1)[0, 1]), float(itc[0, 0])

    def word_maps(self, path, text, map_size):
        """Each word's cross-attention (every layer and head, the step that reads it) as a uint8 map,
        and its probability under teacher forcing."""
        from fiftyone_blip.word_heatmaps import grid_to_image, to_uint8

        tokens = self.processor.tokenizer(text, return_tensors="pt")
        ids = tokens["input_ids"].clone()
        ids[:, 0] = self.captioner.config.text_config.bos_token_id
        with self.torch.inference_mode():
            image_embeds = self.captioner.vision_model(pixel_values=self.pixels(path)).last_hidden_state
            out = self.captioner.text_decoder(
                input_ids=ids,
                attention_mask=tokens["attention_mask"],
                encoder_hidden_states=image_embeds,
                output_attentions=True,
                return_dict=True,
            )
        attention = self.torch.stack(out.cross_attentions)[:, 0, :, :, 1:].mean(dim=(0, 1)).numpy()
        logprobs = out.logits[0].float().log_softmax(-1).numpy()
        config = self.captioner.config.vision_config
        grid, size = config.image_size // config.patch_size, config.image_size
        width, height = Image.open(path).size
        geometry = images.Geometry(width, height, size, size / width, size / height, 0.0, 0.0)
        places = range(1, ids.shape[1] - 1)  # the words: between [DEC] and [SEP]
        maps = np.stack([attention[p].reshape(grid, grid) for p in places])
        probs = [float(np.exp(logprobs[p - 1, ids[0, p]])) for p in places]
        return to_uint8(grid_to_image(maps, geometry, map_size)), probs


@pytest.fixture(scope="module", params=["small", pytest.param("base", marks=pytest.mark.parity)])
def setup(request, fo, tmp_path_factory):
    """(dataset, model directories, reference, image paths) for one model size."""
    size = request.param
    folder = tmp_path_factory.mktemp(f"parity-{size}")
    directories = {task: build_random_blip(folder / task, task, size) for task in ("caption", "match", "vqa")}
    paths = _write_images(folder)
    name = f"parity-{size}"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    dataset = fo.Dataset(name)
    samples = [fo.Sample(filepath=path, kind=kind, text=TEXTS[kind]) for kind, path in paths.items()]
    dataset.add_samples(samples, progress=False)
    yield dataset, {k: str(v) for k, v in directories.items()}, Reference(directories), paths
    fo.delete_dataset(name)


def _by_kind(dataset, field):
    return dict(zip(dataset.values("kind"), dataset.values(field)))


def _cosines(vectors, references):
    return {k: float(np.dot(vectors[k], references[k]) / np.linalg.norm(vectors[k])) for k in references}


@pytest.mark.parametrize("strategy, num_beams", [("greedy", 1), ("beam", 3)])
def test_captions_are_transformers_captions(setup, strategy, num_beams):
    dataset, directories, reference, paths = setup
    field = f"caption_{strategy}"
    fiftyone_blip.caption(
        dataset, model=directories["caption"], field=field, strategy=strategy, num_beams=num_beams, progress=False
    )
    expected = {kind: reference.caption(path, num_beams) for kind, path in paths.items()}
    print(f"{strategy} captions, word counts: {sorted(len(c.split()) for c in expected.values())}")
    assert _by_kind(dataset, field) == expected
    # informative weights: captions differ between images and end at varied lengths
    assert len(set(expected.values())) >= 3 and len({len(c.split()) for c in expected.values()}) >= 3, expected


def test_zoo_captioner_gives_transformers_captions(setup):
    dataset, directories, reference, paths = setup
    model = zoo.load_model("blip-captioning-base", model=directories["caption"], device="cpu")
    dataset.apply_model(model, "zoo_caption", batch_size=4, progress=False)
    captions = {k: label.label for k, label in _by_kind(dataset, "zoo_caption").items()}
    assert captions == {k: reference.caption(path, 1) for k, path in paths.items()}  # alpha images too


@pytest.mark.parametrize("strategy, num_beams", [("greedy", 1), ("beam", 3)])
def test_answers_are_transformers_answers(setup, strategy, num_beams):
    dataset, directories, reference, paths = setup
    field = f"answer_{strategy}"
    fiftyone_blip.ask(
        dataset, QUESTION, field, model=directories["vqa"], strategy=strategy, num_beams=num_beams, progress=False
    )
    answers = {k: label.label for k, label in _by_kind(dataset, field).items()}
    assert answers == {kind: reference.answer(path, QUESTION, num_beams) for kind, path in paths.items()}


def test_itc_vectors_are_transformers_vectors(setup):
    dataset, directories, reference, paths = setup
    fiftyone_blip.embed(dataset, model=directories["match"], field="embedding", brain_key=None, progress=False)
    expected = {kind: reference.image_vector(path) for kind, path in paths.items()}
    cosines = _cosines(_by_kind(dataset, "embedding"), expected)
    print(f"SDK image vectors: 1 - cosine max {1 - min(cosines.values()):.1e}")
    assert min(cosines.values()) >= COSINE, cosines
    # informative weights: images are told apart
    assert max(float(np.dot(expected["rgb"], expected[k])) for k in expected if k != "rgb") < 0.999

    model = zoo.load_model("blip-itc-base-coco", model=directories["match"], device="cpu")
    dataset.compute_embeddings(model, embeddings_field="zoo_embedding", batch_size=4, progress=False)
    cosines = _cosines(_by_kind(dataset, "zoo_embedding"), expected)
    print(f"zoo image vectors: 1 - cosine max {1 - min(cosines.values()):.1e}")
    assert min(cosines.values()) >= COSINE, cosines
    prompts = model.embed_prompts(list(TEXTS.values()))
    for text, vector in zip(TEXTS.values(), prompts):
        assert np.dot(vector, reference.text_vector(text)) / np.linalg.norm(vector) >= COSINE


def test_itm_probabilities_and_itc_scores_are_transformers_scores(setup):
    dataset, directories, reference, paths = setup
    fiftyone_blip.find_mislabels(dataset, "text", model=directories["match"], itc=True, progress=False)
    expected = {kind: reference.itm_itc(path, TEXTS[kind]) for kind, path in paths.items()}
    itm, itc = _by_kind(dataset, "text_match"), _by_kind(dataset, "text_match_itc")
    print(f"SDK ITM max |diff| {max(abs(itm[k] - p) for k, (p, _) in expected.items()):.1e}")
    print(f"SDK ITC max |diff| {max(abs(itc[k] - c) for k, (_, c) in expected.items()):.1e}")
    for kind, (probability, cosine) in expected.items():
        assert abs(itm[kind] - probability) <= PROBABILITY, (kind, itm[kind], probability)
        assert abs(itc[kind] - cosine) <= PROBABILITY, (kind, itc[kind], cosine)

    model = zoo.load_model("blip-itm-base-coco", model=directories["match"], device="cpu")
    dataset.apply_model(model, "zoo_itm", text_field="text", batch_size=4, progress=False)
    for kind, regression in _by_kind(dataset, "zoo_itm").items():  # alpha images too
        assert abs(regression.value - expected[kind][0]) <= PROBABILITY, kind


def test_heatmaps_are_transformers_cross_attention(setup):
    dataset, directories, reference, paths = setup
    fiftyone_blip.heatmaps(
        dataset,
        model=directories["caption"],
        field="heat",
        text_field="text",
        layers="all",
        heads="all",
        token_positions="reading",
        progress=False,
    )
    maps, probs, words = (
        _by_kind(dataset, "heat_maps"),
        _by_kind(dataset, "heat_probs"),
        _by_kind(dataset, "heat_words"),
    )
    for kind, path in paths.items():
        expected_maps, expected_probs = reference.word_maps(path, TEXTS[kind], 64)
        assert words[kind] == TEXTS[kind].split()
        assert maps[kind].shape == expected_maps.shape
        assert np.abs(maps[kind].astype(int) - expected_maps).max() <= 1, kind
        assert np.abs(np.array(probs[kind]) - expected_probs).max() <= PROBABILITY, kind


def test_fast_decode_is_another_result(setup):
    """Reduced-scale JPEG decoding changes the pixels, so results of one are not taken for the other's."""
    dataset, directories, _, _ = setup
    fiftyone_blip.embed(dataset, model=directories["match"], field="exact", brain_key=None, progress=False)
    with pytest.raises(ValueError, match="overwrite"):
        fiftyone_blip.embed(
            dataset, model=directories["match"], field="exact", brain_key=None, fast_decode=True, progress=False
        )
    fiftyone_blip.embed(
        dataset, model=directories["match"], field="fast", brain_key=None, fast_decode=True, progress=False
    )
    exact, fast = _by_kind(dataset, "exact"), _by_kind(dataset, "fast")
    assert np.array_equal(exact["rgb"], fast["rgb"])  # a PNG decodes in full either way
    assert not np.array_equal(exact["large"], fast["large"])  # a 2000x1500 JPEG at half scale
