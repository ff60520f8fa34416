"""Objects from the App: a patches view is the current view, the captioning form runs on its objects,
and each object's caption lands on its label in the source dataset."""

import re

import fiftyone_blip

NAME = "caption_samples"
LABEL = "BLIP: caption samples"


def test_caption_the_objects_of_the_current_patches_view(app, app_dataset):
    from fiftyone import ViewField as F

    def no_stars(ds):
        return ds.to_patches("gt_objects").match(F("gt_objects.label") != "star")

    dataset = app_dataset("app-patches", count=6, views={"objects": no_stars})
    objects = len(no_stars(dataset))

    app.open("app-patches", view="objects")
    app.expect(app.cy("looker")).to_have_count(objects)  # one tile per object

    # the targets of a patches view: its base view (every object) or the current view (no stars)
    form = app.open_operator(NAME, LABEL)
    assert form.get_by_role("radio", name=re.compile("Base view")).is_visible()
    assert form.get_by_role("radio", name=re.compile("Current view")).is_checked()
    app.fill(form, {"Context around objects": "1.5"})
    app.screenshot("patches-caption-form")
    app.execute(re.compile(rf"BLIP captions: {objects} done, 0 failed"))

    # each object's caption is an attribute of its label in the source dataset, not a sample field
    captions = [c for c in dataset.values("gt_objects.detections.caption", unwind=True) if c]
    assert len(captions) == objects
    stars = dataset.filter_labels("gt_objects", F("label") == "star").values(
        "gt_objects.detections.caption", unwind=True
    )
    assert not any(stars)
    dataset.reload()  # the App server declared the attribute
    assert "caption" not in dataset.get_field_schema()
    assert dataset.get_field("gt_objects.detections.caption") is not None
    record = [r for r in fiftyone_blip.runs(dataset) if r["capability"] == "caption"][-1]
    assert record["settings"]["context"] == 1.5 and record["done"] == objects
    app.screenshot("patches-captioned")
