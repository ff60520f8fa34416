"""Every field the library writes carries a FiftyOne `description` and `info` (who wrote it, with which model)."""

import pytest


def _new_fields(dataset, before: set) -> dict:
    """Fields added since `before`, without the inside of new label fields (a Heatmap's `map_path`,
    a Classification's `label`: FiftyOne's own); label attributes on existing labels stay."""
    new = {name: field for name, field in dataset.get_field_schema(flat=True).items() if name not in before}
    return {name: field for name, field in new.items() if "." not in name or name.split(".")[0] not in new}


def test_every_written_field_is_described(fresh_dataset, tmp_path):
    import fiftyone_blip as fob
    from fiftyone_blip import vqa
    from fiftyone_blip.settings import RunOptions

    dataset = fresh_dataset
    view = dataset.limit(4)
    before = set(dataset.get_field_schema(flat=True))
    run = dict(model="shapes-tiny", device="cpu", progress=False)
    fob.caption(view, **run)
    fob.caption(view, language="de", **run)
    fob.embed(view, brain_key=None, **run)
    fob.heatmaps(view, text_field="caption", **run)
    fob.heatmaps(view, field="gc", mode="gradcam", text="a red circle", maps_dir=str(tmp_path), **run)
    fob.find_mislabels(view, "gt_objects", level="label", itc=True, **run)
    fob.find_mislabels(view, "gt_label", **run)
    fob.caption(view, field="cand", strategy="beam", num_captions=2, **run)
    both = dict(caption_model="shapes-tiny", match_model="shapes-tiny", device="cpu", progress=False)
    fob.capfilt(view, "gt_caption", "clean", **both)
    fob.evaluate_captions(view, "caption", "gt_caption", eval_key="ev", **run)
    vqa.ask(
        view,
        ["is there a circle?", "what colour is the shape?"],
        ["has_circle", "colour"],
        boolean=[True, False],
        model="shapes-tiny",
        options=RunOptions(device="cpu", progress=False),
    )

    written = _new_fields(dataset, before)
    # captions, confidences, run and error fields, embeddings, heatmaps and their siblings,
    # sample scores, per-label scores and flags, answers
    for name in ("caption", "caption_confidence", "caption_run", "caption_error", "caption_de", "blip_embedding",
                 "heatmap", "heatmap_words", "heatmap_probs", "gc_word_maps", "gc_match", "has_circle", "colour",
                 "gt_objects_match", "gt_objects.detections.gt_objects_match_itm",
                 "gt_objects.detections.gt_objects_match_flagged", "gt_label_match_mistakenness",
                 "cand_candidates", "clean", "clean_candidates", "clean_gain", "ev_cider", "ev_itm"):  # fmt: skip
        assert name in written, name
    undescribed = [name for name, field in written.items() if not field.description]
    assert not undescribed, undescribed
    for name, field in written.items():
        info = field.info or {}
        assert info.get("written_by") == "fiftyone-blip", (name, info)
        assert info.get("model") == "shapes-tiny" and "revision" in info and info.get("capability"), (name, info)

    assert dataset.get_field("caption_de").info["language"] == "de"
    assert "de" in dataset.get_field("caption_de").description
    assert dataset.get_field("gc_match").info["capability"] == "heatmaps"
    assert dataset.get_field("has_circle").info["capability"] == "vqa"
    assert "is there a circle?" in dataset.get_field("has_circle").description
    flagged = dataset.get_field("gt_objects.detections.gt_objects_match_flagged")
    assert flagged.info["capability"] == "flag" and flagged.info["model"] == "shapes-tiny"
    # a refused run changes nothing; the info follows the latest run that wrote the field
    first = dataset.get_field("caption").info["fingerprint"]
    with pytest.raises(ValueError, match="not written by fiftyone-blip with this model"):
        fob.caption(view, max_new_tokens=7, **run)
    assert dataset.get_field("caption").info["fingerprint"] == first
    fob.caption(view, overwrite=True, max_new_tokens=7, **run)
    assert dataset.get_field("caption").info["fingerprint"] != first
    assert dataset.get_field("caption").info["fingerprint"] == fob.runs(dataset)[-1]["fingerprint"]
    # the info names the FiftyOne run holding the run's record
    assert dataset.get_field("caption").info["run_key"] == fob.runs(dataset)[-1]["run_key"]
    assert dataset.get_field("caption").info["run_key"] in dataset.list_runs()
