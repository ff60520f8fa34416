"""The words the App's forms show, written for a FiftyOne user rather than a Python reader.

Every operator of the plugin, found through FiftyOne's registry, resolves its
form on a shapes dataset for the choices that show other inputs and for
values that fail their checks; no label, help text, choice, notice or error
may speak Python ("None: ..."), name an environment variable, hold a formula
or the model heads' initials (the App says "quick search" and "careful
re-ranking"; the README explains ITC and ITM).
"""

import re

import pytest
from app_forms import form_errors, form_inputs, form_texts

PLUGIN = "@fiftyone-blip/blip/"

# params that show each form's other inputs, then values its checks refuse
VARIANTS = (
    {},
    {"strategy": "beam"},
    {"strategy": "diverse-beam"},
    {"strategy": "sample"},
    {"mode": "gradcam"},
    {"text_source": "text"},
    {"flag_by": "percentile"},
    {"flag_by": "top_k"},
    {"label_field": "gt_objects"},
    {"force_words": "circle"},
    {
        "model": "no-such-model",
        "strategy": "beam",
        "num_beams": 42,
        "max_new_tokens": 500,
        "shard": "3/2",
        "batch_size": 0,
        "map_size": 4,
        "layers": "99",
        "brain_key": "my key",
        "threshold": 2.0,
        "crop_padding": 0.5,
        "k": 0,
        "rank": 0,
        "validation_fraction": 0.9,
        "language": "not a language",
        "question": "what shape is it?",
        "maps_dir": "maps",
    },
)

PYTHON_NONE = re.compile(r"\bNone\b")
ENVIRONMENT_VARIABLE = re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b")
HEAD_INITIALS = re.compile(r"\bIT[CM]\b")
FORMULA = re.compile(
    r">=|<=|\d\s*\.\.\s*\d"  # comparisons, ranges
    r"|[\[(]\s*-?\d[\d.]*\s*,\s*-?\d[\d.]*\s*[\])]"  # intervals
    r"|\w\s+[-+*/x]\s+[\w(]|\)\s*[/*]\s*\d"  # arithmetic
)


def developer_words(text: str) -> list[str]:
    """What in `text` a FiftyOne user should not have to read."""
    found = []
    for name, pattern in (
        ("None", PYTHON_NONE),
        ("an environment variable", ENVIRONMENT_VARIABLE),
        ("a formula", FORMULA),
        ("ITC/ITM", HEAD_INITIALS),
    ):
        match = pattern.search(text)
        if match:
            found.append(f"{name} ({match.group(0)!r})")
    return found


def test_the_checks_catch_what_they_are_for():
    assert developer_words("the model (None: Salesforce's)") == ["None ('None')"]
    assert developer_words("the App must run with `FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS=true`")
    assert developer_words("'itm': 1 - p; 'itc': (1 - cosine) / 2")
    assert developer_words("in (0, 1]") and developer_words("in 1..10") and developer_words("flag >= this")
    assert developer_words("gradient x cross-attention") and developer_words("the ITM head")
    assert developer_words("Beams must be from 1 to 10, got 42") == []
    assert developer_words("decode large JPEGs at 1/2 scale: 2-3x less time") == []


@pytest.fixture(scope="module")
def forms(plugin_installed, shapes_dataset):
    """Every (operator, variant) form of the plugin, resolved through FiftyOne's registry, with a
    similarity index in place (the search form shows its inputs only then)."""
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    import fiftyone_blip

    dataset = shapes_dataset.clone("t-form-words")
    try:
        fiftyone_blip.embed(dataset, model="shapes-tiny", progress=False, num_workers=0)
        operators = [
            op
            for op in foo.OperatorRegistry().list_operators()
            if op.uri.startswith(PLUGIN) and not isinstance(op, foo.Panel)
        ]
        resolved = []
        for operator in operators:
            for variant in VARIANTS:
                params = {"label_field": "gt_label", "query": "a red circle", **variant}
                ctx = ExecutionContext(request_params=dict(dataset_name=dataset.name, params=params))
                resolved.append((operator, variant, operator.resolve_input(ctx)))
        yield resolved
    finally:
        dataset.delete()


def test_forms_speak_to_a_fiftyone_user(forms):
    problems = {}
    for operator, variant, form in forms:
        texts = [("operator.label", operator.config.label), ("operator.description", operator.config.description)]
        for where, text in texts + form_texts(form):
            found = developer_words(text or "")
            if found:
                problems[f"{operator.config.name} {where} ({variant})"] = f"{found}: {text}"
    assert problems == {}, "\n".join(f"{k}: {v}" for k, v in problems.items())


def test_the_walk_reaches_every_form_and_its_errors(forms):
    """The walk above sees the collapsed sections, the choices that show other inputs, and errors."""
    names = {operator.config.name for operator, _, _ in forms}
    assert {"caption_samples", "compute_heatmaps", "find_mislabels", "search_by_text", "ask_question"} <= names
    caption = [form for operator, variant, form in forms if operator.config.name == "caption_samples"]
    shown = set().union(*(form_inputs(form) for form in caption))
    assert {"top_p", "num_beam_groups", "batch_size", "force_words"} <= shown
    errors = form_errors(caption[-1])
    assert {"model", "num_beams", "max_new_tokens", "shard", "batch_size"} <= set(errors), errors


def _resolve(dataset, operator, params):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    ctx = ExecutionContext(request_params=dict(dataset_name=dataset.name, params=params))
    return ctx, foo.get_operator(PLUGIN + operator).resolve_input(ctx)


def test_an_error_in_the_collapsed_section_opens_it_and_marks_its_input(plugin_installed, shapes_dataset):
    """As the App sends a form's values (the advanced ones nested in their section): the section opens,
    the input itself is invalid with its message (the App's red border), and FiftyOne's own validation
    reports it at the input's path."""
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ValidationContext

    _, calm = _resolve(shapes_dataset, "caption_samples", {"advanced": {"max_new_tokens": 40}})
    assert calm.type.properties["advanced"].view.to_json()["default_expanded"] is False

    ctx, form = _resolve(shapes_dataset, "caption_samples", {"advanced": {"max_new_tokens": 500}})
    section = form.type.properties["advanced"]
    assert section.view.to_json()["default_expanded"] is True and not section.invalid
    field = section.type.properties["max_new_tokens"]
    assert field.invalid and field.error_message == "Max new tokens must be from 1 to 128, got 500"
    validation = ValidationContext(ctx, form, foo.get_operator(PLUGIN + "caption_samples"))
    reported = {error.path.strip("."): error.reason for error in validation.errors}
    assert reported == {"advanced.max_new_tokens": "Max new tokens must be from 1 to 128, got 500"}


def test_a_model_error_suggests_a_model_of_the_forms_kind(plugin_installed, shapes_dataset):
    expected = {
        "caption_samples": "Salesforce/blip-image-captioning-base",
        "ask_question": "Salesforce/blip-vqa-base",
        "find_mislabels": "Salesforce/blip-itm-base-coco",
    }
    for operator, example in expected.items():
        params = {"model": "no-such-model", "question": "what shape is it?", "label_field": "gt_label"}
        message = form_errors(_resolve(shapes_dataset, operator, params)[1])["model"]
        assert message == f"Model must be shapes-tiny or a hub id like {example}; got 'no-such-model'"
