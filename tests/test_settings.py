"""Settings are declared once: every field reaches the SDK, the CLI and the App form with the same default.

Each settings dataclass declares a field's default, bounds and help
(`fiftyone_blip.settings.setting`). These tests walk every field of every
settings class and check, surface by surface, that it is reachable and that
its default is the declared one, so a default changed in one place only
fails here.
"""

import dataclasses

import pytest
from click.testing import CliRunner

import fiftyone_blip
from fiftyone_blip import (
    AdapterJobSettings,
    AdapterTrainingSettings,
    CapFiltSettings,
    CaptionEvalSettings,
    CaptionSettings,
    EmbedSettings,
    FlagSettings,
    HeatmapSettings,
    MislabelSettings,
    RunOptions,
    SearchSettings,
    VqaSettings,
)
from fiftyone_blip.engine import RunSummary
from fiftyone_blip.settings import Settings, form_default

# settings classes of the engine capabilities: (class, SDK function, CLI command, operator)
ENGINE = [
    (CaptionSettings, "caption", ["caption"], "caption_samples"),
    (HeatmapSettings, "heatmaps", ["heatmaps"], "compute_heatmaps"),
    (MislabelSettings, "find_mislabels", ["mislabels", "--label-field", "gt_label"], "find_mislabels"),
    (EmbedSettings, "embed", ["embed"], "compute_embeddings"),
    (VqaSettings, "ask", ["ask", "how many shapes are there?", "-f", "n"], "ask_question"),
    (CapFiltSettings, "capfilt", ["capfilt", "gt_caption"], "clean_captions"),
    (CaptionEvalSettings, "evaluate_captions", ["evaluate-captions", "caption", "gt_caption"], "evaluate_captions"),
]
# the arguments before the settings of each engine SDK function
SDK_ARGS = {
    "find_mislabels": ("gt_label",),
    "ask": ("how many shapes are there?", "n"),
    "capfilt": ("gt_caption",),
    "evaluate_captions": ("caption", "gt_caption"),
}
ALL_CLASSES = [
    RunOptions,
    CaptionSettings,
    HeatmapSettings,
    MislabelSettings,
    FlagSettings,
    EmbedSettings,
    SearchSettings,
    AdapterTrainingSettings,
    AdapterJobSettings,
    VqaSettings,
    CapFiltSettings,
    CaptionEvalSettings,
]
# The form suggests a value that depends on the dataset (the model a shapes dataset needs, the
# prompt that model was trained with, the score field named after the label field); the SDK's
# None means the same choice made at run time. These are checked separately below.
DATASET_DEPENDENT = {"model", "template", "caption_field", "caption_model", "match_model"}


def _expected(cls, params=None):
    """The declared defaults, given the form's conditions in `params` (e.g. strategy="beam")."""
    return cls.from_params(params or {})


def _values(settings):
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_every_field_declares_help_and_a_valid_default(cls):
    assert issubclass(cls, Settings)
    for field in dataclasses.fields(cls):
        assert field.metadata.get("help"), f"{cls.__name__}.{field.name} has no help"
        assert set(field.metadata["surfaces"]) <= {"sdk", "cli", "app"}
    cls()  # the defaults pass the declared checks


# ---- SDK -------------------------------------------------------------------------------------


def _capture(monkeypatch, module, name):
    calls = []

    def record(*args, **kwargs):
        calls.append((args, kwargs))
        return {"run": None, "flagged_samples": 0} if name in ("run", "flag_with") else []

    monkeypatch.setattr(module, name, record)
    return calls


def _settings_in(call, cls):
    args, kwargs = call
    return next(a for a in (*args, *kwargs.values()) if type(a) is cls)


@pytest.mark.parametrize("cls, sdk, _cli, _op", ENGINE, ids=lambda v: getattr(v, "__name__", None))
def test_sdk_defaults_and_keywords(monkeypatch, cls, sdk, _cli, _op):
    from fiftyone_blip import caption_eval, caption_filter, captions, embeddings, mislabels, vqa, word_heatmaps

    module = {
        "caption": captions,
        "capfilt": caption_filter,
        "evaluate_captions": caption_eval,
        "heatmaps": word_heatmaps,
        "find_mislabels": mislabels,
        "embed": embeddings,
        "ask": vqa,
    }[sdk]
    calls = _capture(monkeypatch, module, "run")
    function = getattr(fiftyone_blip, sdk)
    extra = SDK_ARGS.get(sdk, ())
    function(None, *extra)
    assert _settings_in(calls[-1], cls) == cls()
    assert _settings_in(calls[-1], RunOptions) == RunOptions(**cls.run_defaults)
    # every field of both classes is a keyword; its declared default, given, changes nothing
    for owner in (cls, RunOptions):
        expected = cls() if owner is cls else RunOptions(**cls.run_defaults)
        for field in owner.fields("sdk"):
            value = cls.run_defaults.get(field.name, owner.defaults()[field.name])
            function(None, *extra, **{field.name: value})
            assert _settings_in(calls[-1], owner) == expected, field.name
            if sdk == "embed":
                assert calls[-1][1] == {}, "a setting went to the similarity backend"


def test_sdk_flag_search_and_adapter_defaults(monkeypatch):
    from fiftyone_blip import adapters, embeddings, mislabels

    flags = _capture(monkeypatch, mislabels, "flag_with")
    fiftyone_blip.flag_mislabels(None, "gt_label")
    assert _settings_in(flags[-1], FlagSettings) == FlagSettings()
    for field in FlagSettings.fields("sdk"):
        fiftyone_blip.flag_mislabels(None, "gt_label", **{field.name: FlagSettings.defaults()[field.name]})

    searches = _capture(monkeypatch, embeddings, "search_view")
    fiftyone_blip.search(None, "a red circle")
    assert searches[-1][1] == {**SearchSettings.defaults(), "score_field": None}

    trains = _capture(monkeypatch, adapters, "train")
    fiftyone_blip.train_adapter("de")
    assert _settings_in(trains[-1], AdapterTrainingSettings) == AdapterTrainingSettings()
    assert _settings_in(trains[-1], AdapterJobSettings) == AdapterJobSettings()
    for cls in (AdapterTrainingSettings, AdapterJobSettings):
        for field in cls.fields("sdk"):
            value = cls.defaults()[field.name]
            fiftyone_blip.train_adapter("de", **{field.name: value})
            assert getattr(_settings_in(trains[-1], cls), field.name) == value

    with pytest.raises(TypeError, match="no_such_setting"):
        fiftyone_blip.caption(None, no_such_setting=1)


# ---- CLI -------------------------------------------------------------------------------------


@pytest.fixture
def cli_calls(monkeypatch):
    """Runs a CLI command with the SDK call recorded instead of run; returns its keyword arguments."""
    from fiftyone_blip import cli, embeddings

    for name in ("FIFTYONE_BLIP_DEVICE", "FIFTYONE_BLIP_CAPTION_MODEL", "FIFTYONE_BLIP_MATCH_MODEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cli, "load_samples", lambda *args: None)
    calls = []
    run = RunSummary(run_id="r", field="f", total=0, done=0, failed=0, skipped=0, seconds=0.0, model_seconds=0.0)

    def record(*args, **kwargs):
        calls.append(kwargs)
        return {
            "run": run,
            "flagged_samples": 0,
            "scored_samples": 0,
            "method": "itm",
            "tag": "t",
            "flag_field": "f",
            "view": "v",
            "language": "de",
            "path": "p",
            "metrics": {"held_out_exact_match": 0.0},
            "parameters": {"trainable": 0, "ratio": 0.0},
            "training": {"wall_seconds": 0, "cpu_seconds": 0},
            "total_samples": 0,
            "corpus": {"cider": 0.0},
            "samples": 0,
        }

    for sdk in ("find_mislabels", "flag_mislabels", "train_adapter", "capfilt", "evaluate_captions"):
        monkeypatch.setattr(fiftyone_blip, sdk, record)
    for sdk in ("caption", "heatmaps", "embed", "ask"):  # these return the engine run's summary
        monkeypatch.setattr(fiftyone_blip, sdk, lambda *args, **kwargs: calls.append(kwargs) or run)
    # the CLI prints the hits themselves (the SDK's `search` gives a view of them)
    monkeypatch.setattr(embeddings, "search", lambda *args, **kwargs: calls.append(kwargs) or [])

    def invoke(*argv):
        result = CliRunner().invoke(cli.main, list(argv))
        assert result.exit_code == 0, result.output
        return calls[-1]

    return invoke


def _check_cli(kwargs, *classes, run_defaults=None):
    for cls in classes:
        defaults = {**cls.defaults(), **(run_defaults or {})} if cls is RunOptions else cls.defaults()
        for field in cls.fields("cli"):
            assert field.name in kwargs, f"the CLI does not pass `{field.name}` ({cls.__name__})"
            assert kwargs[field.name] == defaults[field.name], (
                f"CLI default of `{field.name}` is {kwargs[field.name]!r}, declared {defaults[field.name]!r}"
            )


@pytest.mark.parametrize("cls, _sdk, argv, _op", ENGINE, ids=lambda v: getattr(v, "__name__", None))
def test_cli_defaults(cli_calls, cls, _sdk, argv, _op):
    kwargs = cli_calls(argv[0], "dataset", *argv[1:])
    _check_cli(kwargs, cls, RunOptions, run_defaults=cls.run_defaults)


def test_cli_defaults_of_flag_search_and_adapters(cli_calls):
    _check_cli(cli_calls("mislabels", "dataset", "--label-field", "gt_label", "--flag-only"), FlagSettings)
    _check_cli(cli_calls("search", "dataset", "a red circle"), SearchSettings)
    kwargs = cli_calls("adapters", "train", "-l", "de", "--images", "x", "--captions", "y")
    kwargs.update(images_dir=None, captions_file=None)  # given above: the command needs a data source
    _check_cli(kwargs, AdapterTrainingSettings, AdapterJobSettings)


def test_cli_reaches_the_fixed_drifts(cli_calls):
    kwargs = cli_calls("adapters", "train", "-l", "de", "-d", "x", "--dropout", "0.1", "--min-token-count", "3")
    assert kwargs["dropout"] == 0.1 and kwargs["min_token_count"] == 3


# ---- App forms -------------------------------------------------------------------------------


def _form(dataset, operator, params):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    ctx = ExecutionContext(request_params=dict(dataset_name=dataset.name, params=params))
    form = foo.get_operator(f"@fiftyone-blip/blip/{operator}").resolve_input(ctx)
    from app_forms import form_inputs

    properties = form_inputs(form)
    invalid = [p.error_message for p in properties.values() if getattr(p, "invalid", False)]
    assert not invalid, invalid
    return {name: prop.default for name, prop in properties.items()}


def _conditions(cls, base):
    """Params that reveal each field the form shows only on a condition (e.g. strategy="beam")."""
    variants = [dict(base)]
    for field in cls.fields("app"):
        when = field.metadata.get("form_when") or {}
        params = {key: allowed[0] for key, allowed in when.items() if key != "kind"}
        if params and {**base, **params} not in variants:
            variants.append({**base, **params})
    return variants


def _check_form(dataset, cls, operator, base=None, context=None, dependent=()):
    base = base or {}
    for params in _conditions(cls, base):
        shown = _form(dataset, operator, params)
        expected = _expected(cls, {**params, **(context or {})})
        for owner in (cls, RunOptions):
            for field in owner.fields("app"):
                hidden = not fiftyone_blip.settings.form_shows(field, {**(context or {}), **params})
                if hidden:
                    continue
                assert field.name in shown, f"the {operator} form has no input `{field.name}` for {params}"
                if owner is RunOptions:
                    declared = cls.run_defaults.get(field.name, form_default(RunOptions, field))
                    assert shown[field.name] == declared, f"{operator}: `{field.name}` {shown[field.name]!r}"
                    continue
                if field.name in DATASET_DEPENDENT or field.name in dependent:
                    continue
                from_form = getattr(cls.from_params({**shown, **params, **(context or {})}), field.name)
                assert from_form == getattr(expected, field.name), (
                    f"{operator} form default of `{field.name}` gives {from_form!r}, "
                    f"declared {getattr(expected, field.name)!r}"
                )


def test_form_defaults_caption(fresh_dataset, plugin_installed):
    _check_form(fresh_dataset, CaptionSettings, "caption_samples")
    shown = _form(fresh_dataset, "caption_samples", {"strategy": "diverse-beam"})
    assert shown["diversity_penalty"] == CaptionSettings().diversity_penalty


def test_form_defaults_heatmaps(fresh_dataset, plugin_installed, tmp_path, monkeypatch):
    # the maps folder is offered only where the server names a root for App paths
    monkeypatch.setenv("FIFTYONE_BLIP_APP_ROOT", str(tmp_path))
    _check_form(
        fresh_dataset, HeatmapSettings, "compute_heatmaps", base={"text_source": "field"}, dependent=("text_field",)
    )
    _check_form(
        fresh_dataset,
        HeatmapSettings,
        "compute_heatmaps",
        base={"text_source": "text", "text": "a dog"},
        dependent=("text_field",),
    )


def test_form_defaults_mislabels(fresh_dataset, plugin_installed):
    from fiftyone_blip import mislabels

    context = {"kind": mislabels.label_kind(fresh_dataset, "gt_label")}
    for flag_by in ("threshold", "percentile", "top_k"):
        base = {"label_field": "gt_label", "flag_by": flag_by}
        _check_form(fresh_dataset, MislabelSettings, "find_mislabels", base=base, context=context, dependent=("field",))
    shown = _form(fresh_dataset, "find_mislabels", {"label_field": "gt_label"})
    # the score field the form suggests is the one the SDK picks for None
    assert MislabelSettings(field=shown["field"]).score_field("gt_label") == MislabelSettings().score_field("gt_label")
    assert shown["template"] == mislabels.default_template(shown["model"])


def test_form_defaults_caption_quality(fresh_dataset, plugin_installed):
    _check_form(fresh_dataset, CapFiltSettings, "clean_captions", base={"caption_field": "gt_caption"})
    _check_form(fresh_dataset, CaptionEvalSettings, "evaluate_captions", base={"pred_field": "gt_caption"})
    shown = _form(fresh_dataset, "clean_captions", {})
    assert shown["caption_model"] == shown["match_model"] == "shapes-tiny"
    assert shown["caption_field"] == "gt_caption" and shown["out_field"] == "capfilt"


def test_form_defaults_ask(fresh_dataset, plugin_installed):
    _check_form(fresh_dataset, VqaSettings, "ask_question", base={"question": "how many shapes are there?"})


def test_form_defaults_embeddings_and_adapters(fresh_dataset, plugin_installed):
    _check_form(fresh_dataset, EmbedSettings, "compute_embeddings")
    shown = _form(fresh_dataset, "train_language_adapter", {"language": "de"})
    for cls in (AdapterTrainingSettings, AdapterJobSettings):
        for field in cls.fields("app"):
            assert field.name in shown, field.name
            if field.name not in DATASET_DEPENDENT:
                assert shown[field.name] == form_default(cls, field), field.name


def test_form_model_is_the_datasets_model(fresh_dataset, plugin_installed):
    # a shapes dataset gets the bundled model; the SDK's None means Salesforce's, which knows no shapes
    for operator in ("caption_samples", "compute_heatmaps", "find_mislabels", "compute_embeddings", "ask_question"):
        assert _form(fresh_dataset, operator, {"label_field": "gt_label"})["model"] == "shapes-tiny"


def test_the_caption_field_follows_the_language_where_left_at_its_default(fresh_dataset, plugin_installed):
    assert CaptionSettings().field == "caption"
    assert CaptionSettings(language="de").field == "caption_de"
    assert CaptionSettings(language="pt-BR").field == "caption_pt_BR"
    assert CaptionSettings(language="de", field="caption").field == "caption"  # a chosen field stays
    assert _form(fresh_dataset, "caption_samples", {})["field"] == "caption"
    assert _form(fresh_dataset, "caption_samples", {"language": "de"})["field"] == "caption_de"
