"""fiftyone-blip's remote model-zoo source: BLIP embeddings, zero-shot classes, ITM scores, captions.

    import fiftyone.zoo as foz

    foz.register_zoo_model_source("https://github.com/fiftyone-blip/fiftyone-blip")
    model = foz.load_zoo_model("blip-itc-base-coco", classes=["cat", "dog"])

FiftyOne copies this folder (manifest.json and this module) into its
`model_zoo_dir`. Each model's manifest entry names its class in
`fiftyone_blip.zoo`, which FiftyOne builds with the entry's default settings
and the keyword arguments of `load_zoo_model`; the functions below are the
hooks FiftyOne calls for remote sources. The models need the fiftyone-blip
package (`pip install fiftyone-blip`, or the plugin's requirements).
"""


def _zoo():
    try:
        from fiftyone_blip import zoo
    except ImportError as error:
        raise ImportError(
            f"the fiftyone-blip zoo models need the fiftyone-blip package ({error}); "
            "see https://github.com/fiftyone-blip/fiftyone-blip#installing"
        ) from None
    return zoo


def download_model(model_name, model_path):
    """Fetches the model's weights into its folder beside `model_path`, then writes `model_path`, the
    marker FiftyOne reads as "downloaded" (see `fiftyone_blip.zoo.download`)."""
    _zoo().download(model_name, model_path)


def load_model(model_name, model_path, **kwargs):
    """Builds `model_name` with `kwargs` over its defaults (FiftyOne uses the manifest's config directly)."""
    return _zoo().load_model(model_name, **kwargs)
