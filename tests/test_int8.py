"""int8: a result does not depend on the images that share its batch."""

import numpy as np
import pytest

import fiftyone_blip
from fiftyone_blip.random_models import build_random_blip


@pytest.fixture(scope="module")
def random_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("int8-models")
    return {task: str(build_random_blip(folder / task, task, "small")) for task in ("caption", "match")}


def test_int8_caption_is_the_same_alone_and_in_a_batch(fresh_dataset, random_models):
    view = fresh_dataset.limit(8)
    common = dict(model=random_models["caption"], dtype="int8", progress=False)
    fiftyone_blip.caption(view, field="alone", batch_size=1, **common)
    fiftyone_blip.caption(view, field="together", batch_size=8, **common)
    alone, together = view.values("alone"), view.values("together")
    assert len(set(alone)) >= 3  # the images give different captions
    assert together == alone
    assert np.allclose(view.values("together_confidence"), view.values("alone_confidence"), atol=1e-5)


def test_int8_embedding_is_the_same_alone_and_in_a_batch(fresh_dataset, random_models):
    view = fresh_dataset.limit(8)
    common = dict(model=random_models["match"], dtype="int8", brain_key=None, progress=False)
    fiftyone_blip.embed(view, field="alone", batch_size=1, **common)
    fiftyone_blip.embed(view, field="together", batch_size=8, **common)
    for a, b in zip(view.values("alone"), view.values("together")):
        assert np.dot(a, b) >= 0.99999


def test_int8_results_of_the_earlier_quantization_are_not_taken_for_these(fresh_dataset):
    """Captions stamped by the per-tensor int8 of before (an identity without the scheme) are another
    result: a run without overwrite refuses them rather than skipping them as done."""
    from fiftyone_blip import captions, engine, models
    from fiftyone_blip.settings import RunOptions

    view = fresh_dataset.limit(4)
    reference = models.reference("shapes-tiny", task="caption", device="cpu", dtype="int8")
    assert reference.identity["quantization"] == models.INT8_SCHEME
    earlier = captions.caption_task(reference, captions.CaptionSettings())
    earlier = engine.dataclasses.replace(
        earlier, identity={k: v for k, v in earlier.identity.items() if k != "quantization"}
    )
    engine.run(view, earlier, RunOptions(progress=False))
    with pytest.raises(ValueError, match=r"'caption' already holds values on 4 samples"):
        fiftyone_blip.caption(view, model="shapes-tiny", dtype="int8", device="cpu", progress=False)
