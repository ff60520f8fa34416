"""Image-text matching scores (BLIP's ITM head and ITC cosine) and mislabel flags.

Label QA in two steps:

1. `match_task` (an engine `Task`) scores what a label field holds against
   its image with BLIP's image-text matching head, and stores the scores:

   - classification labels (`Classification`, `Classifications`): the ITM
     probability of a prompt built from the label ("a photo of a {label}"),
     and the margin against the best other class of the label set (a
     zero-shot classification over the classes present);
   - detections (`Detections`): the same per object, on its crop;
   - free text (a string field, e.g. human-written or generated captions):
     the ITM probability of the text itself;
   - optionally the ITC cosine between image and text embeddings.

   Per label, the scores go on the label itself (`{field}_itm`,
   `{field}_margin`, `{field}_itc` attributes); per sample, `{field}` holds
   the lowest ITM probability of its labels, `{field}_margin` and
   `{field}_itc` the lowest margin and cosine.

2. `flag` turns stored scores into a mistakenness score (higher = more
   likely wrong), flags by an absolute threshold, a percentile or a top-k,
   tags the flagged samples (or labels) and saves a review view sorted most
   suspicious first. It needs no model, so a re-run with another threshold
   is instant.

ITM probabilities are ranking scores, not calibrated probabilities.

The package: `settings` (label kinds, prompt templates, MislabelSettings,
FlagSettings, MatchSettings), `scoring` (`Matcher`, `match_task`, `task_for`,
suggested classes), `flagging` (`flag`, `flag_with`, `retag`); `run` does both
steps.
"""

from fiftyone_blip.mislabels import flagging, scoring
from fiftyone_blip.mislabels.flagging import (  # noqa: F401
    flag,
    flag_with,
    held_by_others,
    mistakenness,
    retag,
    select_flags,
)
from fiftyone_blip.mislabels.scoring import (  # noqa: F401
    SCORE_MEANINGS,
    SUGGESTION_ATTRIBUTES,
    Matcher,
    declare_label_attributes,
    label_attribute_paths,
    match_task,
    score_descriptions,
    stored_label_paths,
    suggestion,
    suggests_classes,
    task_for,
)
from fiftyone_blip.mislabels.settings import (  # noqa: F401
    DEFAULT_CROP_PADDING,
    DEFAULT_METHOD,
    DEFAULT_TEMPLATE,
    DEFAULT_THRESHOLD,
    FLAG_BY,
    LEVELS,
    METHOD_LABELS,
    METHODS,
    MODEL_CROP_PADDING,
    MODEL_TEMPLATES,
    PAIR_BATCH,
    FlagSettings,
    MatchSettings,
    MislabelSettings,
    _list_path,
    check_template,
    compatible_fields,
    default_crop_padding,
    default_template,
    label_classes,
    label_kind,
    resolve_method,
)


def run(samples, label_field: str, settings: MislabelSettings, options) -> dict:
    """Scores, then flags, the labels of `samples`; see `fiftyone_blip.find_mislabels`."""
    from fiftyone_blip import engine

    samples, settings, options = scoring.scored_view(samples, label_field, settings, options)
    summary = engine.run(samples, scoring.task_for(samples, label_field, settings, options), options)
    return {"run": summary, **flagging.flag_with(samples, label_field, settings)}
