"""FiftyOne App operators for fiftyone-blip.

Each operator builds a form, checks it with the library's own validation, and
calls one `fiftyone_blip` function. Anything an operator does, a script can do.
"""

import os
import queue
import re
import threading
from pathlib import Path

import fiftyone.core.fields as fo_fields
import fiftyone.operators as foo
import fiftyone.operators.types as types

import fiftyone_blip
from fiftyone_blip import captions, engine, models

_STRATEGY_LABELS = {
    "greedy": "Greedy",
    "beam": "Beam search",
    "diverse-beam": "Diverse beam search",
    "sample": "Sampling (top-k / top-p)",
}
_RESIZE_LABELS = {
    "squash": "Squash to square (BLIP default)",
    "center-crop": "Center crop",
    "letterbox": "Letterbox (pad)",
}


def _default_model(ctx):
    # The bundled model only knows shapes images; everything else gets Salesforce's.
    if ctx.dataset is not None and "shapes" in (ctx.dataset.info or {}):
        return "shapes-tiny"
    return "Salesforce/blip-image-captioning-base"


APP_ROOT_ENV = "FIFTYONE_BLIP_APP_ROOT"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def _app_root():
    """The server folder under which App forms may name paths (None: unset, no paths from the App)."""
    root = os.environ.get(APP_ROOT_ENV)
    return Path(root).expanduser().resolve() if root else None


def _app_folder(value, name):
    """A folder from a form, confined to the App root: the App runs as the server, not as the user."""
    if not value or not str(value).strip():
        return None
    root = _app_root()
    if root is None:
        raise ValueError(f"`{name}` is not available in the App: the server sets {APP_ROOT_ENV} to allow folders")
    path = (root / str(value).strip()).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"`{name}` must be a folder under {str(root)!r}, got {value!r}")
    return str(path)


def _app_model(value):
    """A model from a form: a bundled name, a hub id, or a folder under the App root. Any other server
    path is refused with the same message whether it exists or not."""
    if not value or not str(value).strip():
        return None
    value = str(value).strip()
    if value in models.BUNDLED or (_HUB_ID.match(value) and ".." not in value):
        return value
    root = _app_root()
    if root is not None and (root / value).resolve().is_relative_to(root):
        return str((root / value).resolve())
    where = f", or a folder under {str(root)!r}" if root is not None else ""
    raise ValueError(
        f"`model` must be {', '.join(models.BUNDLED)} or a hub id like Salesforce/blip-itm-base-coco{where}; "
        f"got {value!r}"
    )


def _dropdown(inputs, name, label, choices, default, description=None):
    """An enum input shown as a dropdown; `choices` maps values to labels."""
    view = types.Dropdown(label=label, description=description)
    for value, choice_label in choices.items():
        view.add_choice(value, label=choice_label)
    inputs.enum(name, view.values(), default=default, view=view)


def _engine_config(name, label, description):
    """An operator that runs on the engine: a dynamic form, progress as it goes, immediate or delegated."""
    return foo.OperatorConfig(
        name=name,
        label=label,
        description=description,
        dynamic=True,
        execute_as_generator=True,
        allow_immediate_execution=True,
        allow_delegated_execution=True,
    )


def _engine_inputs(inputs, batch_size=16, resize=True, shard=None, overwrite="Recompute samples already done"):
    """The inputs every engine operator shares; `shard` describes the shard input (None: no shard input)."""
    if resize:
        _dropdown(inputs, "resize", "Resize", _RESIZE_LABELS, default="squash")
    inputs.int("batch_size", label="Batch size", default=batch_size, min=1, max=engine.MAX_BATCH_SIZE)
    _dropdown(inputs, "device", "Device", {d: d for d in models.DEVICES}, default="auto")
    _dropdown(
        inputs,
        "dtype",
        "Precision",
        {d: d for d in models.DTYPES},
        default="auto",
        description="int8: dynamic quantization, fastest on CPU",
    )
    if shard is not None:
        inputs.str("shard", label="Shard (I/N)", required=False, description=shard)
    inputs.bool("overwrite", label=overwrite, default=False)


def _caption_settings(params):
    return captions.CaptionSettings(
        strategy=params.get("strategy", "greedy"),
        num_beams=params.get("num_beams") if params.get("strategy") in ("beam", "diverse-beam") else None,
        num_beam_groups=params.get("num_beam_groups", 2),
        top_k=params.get("top_k", 50),
        top_p=params.get("top_p", 1.0),
        temperature=params.get("temperature", 1.0),
        seed=params.get("seed", 0),
        min_new_tokens=params.get("min_new_tokens", 1),
        max_new_tokens=params.get("max_new_tokens", 30),
        repetition_penalty=params.get("repetition_penalty", 1.0),
        no_repeat_ngram_size=params.get("no_repeat_ngram_size", 0),
        prompt=params.get("prompt") or None,
    )


def _run_with_progress(ctx, work):
    """Runs `work(progress)` and reports progress where the App can see it.

    Delegated runs report through `ctx.set_progress`. Immediate runs can only
    talk to the App by yielding, so the work runs in a thread and this
    generator yields its progress messages.
    """
    if ctx.delegated:
        return work(lambda done, total: ctx.set_progress(done / max(total, 1), f"{done}/{total}"))
    messages = queue.Queue()
    outcome = {}

    def target():
        try:
            outcome["result"] = work(lambda done, total: messages.put((done, total)))
        except BaseException as error:  # re-raised in the operator's own thread
            outcome["error"] = error
        finally:
            messages.put(None)

    thread = threading.Thread(target=target, name="fiftyone-blip-operator", daemon=True)
    thread.start()
    while (message := messages.get()) is not None:
        done, total = message
        yield ctx.trigger("set_progress", dict(progress=done / max(total, 1), label=f"{done}/{total}"))
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


class CaptionSamples(foo.Operator):
    @property
    def config(self):
        return _engine_config(
            "caption_samples",
            "BLIP: caption samples",
            "Caption images with BLIP into a string field, with a confidence beside it",
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.view_target(ctx)
        inputs.str(
            "model",
            label="Model",
            default=_default_model(ctx),
            required=True,
            description="A hub id, a local directory, or shapes-tiny",
        )
        inputs.str("field", label="Caption field", default="caption", required=True)
        _dropdown(inputs, "strategy", "Decoding", _STRATEGY_LABELS, default="greedy")
        chosen = ctx.params.get("strategy", "greedy")
        if chosen in ("beam", "diverse-beam"):
            inputs.int("num_beams", label="Beams", default=3 if chosen == "beam" else 4, min=1, max=captions.MAX_BEAMS)
        if chosen == "diverse-beam":
            inputs.int("num_beam_groups", label="Beam groups", default=2, min=2)
        if chosen == "sample":
            inputs.int("top_k", label="Top-k", default=50, min=0)
            inputs.float("top_p", label="Top-p", default=1.0, min=0.0, max=1.0)
            inputs.float("temperature", label="Temperature", default=1.0)
            inputs.int("seed", label="Seed", default=0)
        inputs.int("min_new_tokens", label="Min new tokens", default=1, min=0, max=captions.MAX_NEW_TOKENS)
        inputs.int("max_new_tokens", label="Max new tokens", default=30, min=1, max=captions.MAX_NEW_TOKENS)
        inputs.float("repetition_penalty", label="Repetition penalty", default=1.0)
        inputs.int("no_repeat_ngram_size", label="No-repeat n-gram size", default=0, min=0)
        inputs.str(
            "prompt", label="Prompt", required=False, description="Text the caption continues, e.g. 'a picture of'"
        )
        _engine_inputs(
            inputs,
            shard="Caption only shard I of N, for N delegated workers",
            overwrite="Recompute samples already captioned",
        )
        _language_dropdown(inputs, ctx.params.get("model") or _default_model(ctx))

        # The library's own checks, so the form and the SDK agree on what is valid.
        try:
            _caption_settings(ctx.params)
            if _chosen_language(ctx.params) is not None:
                from fiftyone_blip import adapters

                adapters.check_language(_chosen_language(ctx.params))
            engine.check_run_options(
                ctx.params.get("field", "caption"), ctx.params.get("batch_size", 16), ctx.params.get("shard")
            )
        except ValueError as error:
            prop = inputs.view("invalid", types.Warning(label="Invalid settings", description=str(error)))
            prop.invalid = True
            prop.error_message = str(error)
        return types.Property(inputs, view=types.View(label="BLIP: caption samples"))

    def execute(self, ctx):
        params = ctx.params
        settings = _caption_settings(params)
        view = ctx.target_view()

        def work(progress):
            summary = fiftyone_blip.caption(
                view,
                model=_app_model(params.get("model")),
                field=params.get("field", "caption"),
                resize=params.get("resize", "squash"),
                batch_size=params.get("batch_size", 16),
                device=params.get("device", "auto"),
                dtype=params.get("dtype", "auto"),
                shard=params.get("shard") or None,
                overwrite=params.get("overwrite", False),
                progress=progress,
                language=_chosen_language(params),
                **{k: v for k, v in vars(settings).items()},
            )
            return summary

        summary = yield from _run_with_progress(ctx, work)
        if not ctx.delegated:
            yield ctx.trigger("reload_dataset")
            yield ctx.trigger("notify", dict(message=f"BLIP captions: {summary}", variant="success"))


# ---- heatmaps: where the model looked, per caption word ----

_HEATMAP_MODE_LABELS = {
    "cross-attention": "Cross-attention (captioner decoder, with word probabilities)",
    "gradcam": "Grad-CAM (ITM head; any text)",
}
_TOKEN_POSITION_LABELS = {
    "both": "Steps that read and that predict the word",
    "reading": "Steps that read the word",
    "predicting": "Steps that predict the word",
}


def _default_heatmap_model(ctx, mode):
    if ctx.dataset is not None and "shapes" in (ctx.dataset.info or {}):
        return "shapes-tiny"
    return models.DEFAULT_MODELS["caption" if mode == "cross-attention" else "match"]


def _heatmap_options(params):
    """The SDK keyword arguments a heatmap form stands for (checked by the library)."""
    mode = params.get("mode", "cross-attention")
    source = params.get("text_source", "field")
    # "0,2" is passed on as text: HeatmapSettings parses and checks it
    layers = params.get("layers") or None
    if isinstance(layers, str):
        layers = layers.strip() or None
    heads = params.get("heads") or "all"
    if isinstance(heads, str):
        heads = heads.strip() or "all"
    return dict(
        mode=mode,
        model=_app_model(params.get("model")),
        field=params.get("field", "heatmap"),
        text_field=params.get("text_field", "caption") if source == "field" else None,
        text=(params.get("text") or None) if source == "text" else None,
        layers=layers,
        heads=heads,
        token_positions=params.get("token_positions", "both"),
        normalize_heads=params.get("normalize_heads", False),
        map_size=params.get("map_size", 64),
        maps_dir=_app_folder(params.get("maps_dir"), "maps_dir"),
        resize=params.get("resize", "squash"),
        batch_size=params.get("batch_size", 8),
        device=params.get("device", "auto"),
        dtype=params.get("dtype", "auto"),
        shard=params.get("shard") or None,
        overwrite=params.get("overwrite", False),
    )


class ComputeHeatmaps(foo.Operator):
    @property
    def config(self):
        return _engine_config(
            "compute_heatmaps",
            "BLIP: word heatmaps",
            "Where BLIP looked for each caption word: a caption heatmap and one map per word",
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.view_target(ctx)
        _dropdown(inputs, "mode", "Mode", _HEATMAP_MODE_LABELS, default="cross-attention")
        mode = ctx.params.get("mode", "cross-attention")
        inputs.str("model", label="Model", default=_default_heatmap_model(ctx, mode), required=True)
        inputs.str("field", label="Heatmap field", default="heatmap", required=True)
        sources = {"field": "A text field of each sample", "text": "One text for every image (a query)"}
        if mode == "cross-attention":
            sources["generate"] = "Caption each image first"
        _dropdown(inputs, "text_source", "Text to explain", sources, default="field")
        source = ctx.params.get("text_source", "field")
        if source == "field":
            inputs.str("text_field", label="Text field", default="caption", required=True)
        elif source == "text":
            inputs.str("text", label="Text", required=True, description="e.g. a red circle on the left")
        inputs.str(
            "layers", label="Layers", required=False, description="all, last or indices like 0,1 (empty: the default)"
        )
        inputs.str("heads", label="Heads", default="all", description="all or indices like 0,1")
        if mode == "cross-attention":
            _dropdown(inputs, "token_positions", "Word steps", _TOKEN_POSITION_LABELS, default="both")
        inputs.bool("normalize_heads", label="Standardise each head's map before averaging", default=False)
        inputs.int("map_size", label="Map size (long side, pixels)", default=64, min=8, max=1024)
        if _app_root() is not None:  # a server folder only under the root the server allows
            inputs.str(
                "maps_dir",
                label="Folder for per-word PNG maps",
                required=False,
                description=f"under {_app_root()}; empty: in the samples",
            )
        _engine_inputs(inputs, batch_size=8, shard="Explain only shard I of N, for N delegated workers")

        try:
            from fiftyone_blip import attention_maps

            options = _heatmap_options(ctx.params)
            attention_maps.HeatmapSettings(
                mode=options["mode"],
                layers=options["layers"],
                heads=options["heads"],
                token_positions=options["token_positions"],
                normalize_heads=options["normalize_heads"],
                map_size=options["map_size"],
            )
            engine.check_run_options(options["field"], options["batch_size"], options["shard"])
        except ValueError as error:
            prop = inputs.view("invalid", types.Warning(label="Invalid settings", description=str(error)))
            prop.invalid = True
            prop.error_message = str(error)
        return types.Property(inputs, view=types.View(label="BLIP: word heatmaps"))

    def execute(self, ctx):
        options = _heatmap_options(ctx.params)
        view = ctx.target_view()

        def work(progress):
            return fiftyone_blip.heatmaps(view, progress=progress, **options)

        summary = yield from _run_with_progress(ctx, work)
        if not ctx.delegated:
            yield ctx.trigger("reload_dataset")
            yield ctx.trigger("notify", dict(message=f"BLIP heatmaps: {summary}", variant="success"))


class WordHeatmapsPanel(foo.Panel):
    """Sample modal panel: pick a caption word, see its map over the image and its probability.

    It only reads maps the heatmap operator stored; it never runs a model.
    """

    @property
    def config(self):
        return foo.PanelConfig(
            name="word_heatmaps",
            label="BLIP word heatmaps",
            surfaces="modal",
            icon="local_fire_department",
            help_markdown="Pick a word of the caption to see where BLIP looked for it. "
            "Compute maps first with the **BLIP: word heatmaps** operator.",
        )

    def on_load(self, ctx):
        self._show(ctx)

    def on_change_current_sample(self, ctx):
        self._show(ctx)

    def on_change_field(self, ctx):
        ctx.panel.state.field = ctx.params.get("value")
        ctx.panel.state.word = "0"
        self._show(ctx)

    def on_change_word(self, ctx):
        ctx.panel.state.word = ctx.params.get("value")
        self._show(ctx)

    def _show(self, ctx):
        """Puts the chosen word's overlay and probability into the panel's state and data."""
        from fiftyone_blip import attention_maps

        state = ctx.panel.state
        fields = attention_maps.heatmap_fields(ctx.dataset) if ctx.dataset is not None else []
        state.fields = fields
        state.message = None
        if not fields:
            state.message = "No word heatmaps on this dataset yet: run the **BLIP: word heatmaps** operator."
            return
        if state.field not in fields:
            state.field = fields[0]
        if not ctx.current_sample:
            state.message = "Open a sample to see its word heatmaps."
            return
        sample = ctx.dataset[ctx.current_sample]
        try:
            shown = attention_maps.word_view(sample, state.field, int(state.word or 0))
        except ValueError as error:
            state.message = f"{error}. Run the **BLIP: word heatmaps** operator on this sample."
            return
        state.words = shown["words"]
        state.word = str(shown["index"])
        state.caption = shown["text"]
        if shown["probability"] is not None:
            state.score = f"**{shown['word']}**: probability {shown['probability']:.3f} under the captioner"
        elif shown["match"] is not None:
            state.score = f"**{shown['word']}** (Grad-CAM); image-text match probability {shown['match']:.3f}"
        else:
            state.score = f"**{shown['word']}**"
        ctx.panel.data.overlay = shown["overlay"]

    def render(self, ctx):
        state = ctx.panel.state
        panel = types.Object()
        if state.message:
            panel.md(state.message, name="message")
            return types.Property(panel, view=types.GridView(orientation="vertical"))
        fields = state.fields or []
        if len(fields) > 1:
            field_view = types.DropdownView(label="Heatmap field")
            for name in fields:
                field_view.add_choice(name, label=name)
            panel.enum(
                "field", field_view.values(), default=state.field, view=field_view, on_change=self.on_change_field
            )
        words = state.words or []
        word_view = types.DropdownView(label="Word")
        for i, word in enumerate(words):
            word_view.add_choice(str(i), label=f"{i + 1}. {word}")
        panel.enum("word", word_view.values(), default=state.word or "0", view=word_view, on_change=self.on_change_word)
        if state.caption:
            panel.md(f"*{state.caption}*", name="caption")
        panel.md(state.score or "", name="score")
        panel.img("overlay", alt_text="the word's map over the image", width="100%")
        return types.Property(panel, view=types.GridView(orientation="vertical"))


# --- label QA: mislabels by image-text matching ---------------------------------------------------------------

_FLAG_BY_LABELS = {"threshold": "Mistakenness threshold", "percentile": "Percentile", "top_k": "Top-k"}
_METHOD_LABELS = {
    "auto": "Auto (ITM + margin for labels, ITM for text)",
    "itm": "ITM probability",
    "itc": "ITC cosine (needs ITC scores)",
    "itm+margin": "ITM + margin against the best other class",
}


def _default_match_model(ctx):
    if ctx.dataset is not None and "shapes" in (ctx.dataset.info or {}):
        return "shapes-tiny"
    return models.DEFAULT_MODELS["match"]


def _flag_value(params):
    """(threshold, percentile, top_k) from the form: exactly one is set."""
    flag_by = params.get("flag_by", "threshold")
    return (
        params.get("threshold", 0.5) if flag_by == "threshold" else None,
        params.get("percentile", 90.0) if flag_by == "percentile" else None,
        params.get("top_k", 10) if flag_by == "top_k" else None,
    )


class FindMislabels(foo.Operator):
    @property
    def config(self):
        return _engine_config(
            "find_mislabels",
            "BLIP: find mislabels",
            "Score labels, detections or captions against their images with BLIP's ITM head; "
            "flag and tag the most suspicious for review",
        )

    def resolve_input(self, ctx):
        from fiftyone_blip import matching

        inputs = types.Object()
        inputs.view_target(ctx)
        compatible = matching.compatible_fields(ctx.dataset) if ctx.dataset is not None else []
        if not compatible:
            prop = inputs.view(
                "no_fields",
                types.Warning(
                    label="No label field to check",
                    description="The dataset has no Classification, Classifications, Detections or string field",
                ),
            )
            prop.invalid = True
            return types.Property(inputs, view=types.View(label="BLIP: find mislabels"))
        _dropdown(inputs, "label_field", "Label field", {f: f for f in compatible}, default=compatible[0])
        label_field = ctx.params.get("label_field") or compatible[0]
        kind = matching.label_kind(ctx.dataset, label_field) if label_field in compatible else "text"
        model = ctx.params.get("model") or _default_match_model(ctx)
        inputs.str(
            "model",
            label="Model",
            default=_default_match_model(ctx),
            required=True,
            description="A BLIP ITM model: hub id, local directory, or shapes-tiny",
        )
        inputs.str("field", label="Score field", default=f"{label_field}_match", required=False)
        if kind != "text":
            inputs.str(
                "template",
                label="Prompt template",
                default=matching.default_template(model),
                required=False,
                description="How a label becomes text; must contain {label}",
            )
            inputs.bool("margin", label="Margin against the best other class", default=True)
        inputs.bool("itc", label="Also store ITC cosine similarity", default=False)
        _dropdown(inputs, "method", "Score to rank by", _METHOD_LABELS, default="auto")
        _dropdown(inputs, "flag_by", "Flag by", _FLAG_BY_LABELS, default="threshold")
        flag_by = ctx.params.get("flag_by", "threshold")
        if flag_by == "threshold":
            inputs.float("threshold", label="Flag mistakenness at or above", default=0.5, min=0.0, max=1.0)
        elif flag_by == "percentile":
            inputs.float("percentile", label="Flag at or above percentile", default=90.0, min=0.0, max=100.0)
        else:
            inputs.int("top_k", label="Flag the k most suspicious", default=10, min=1)
        if kind in ("classifications", "detections"):
            _dropdown(inputs, "level", "Flag", {"sample": "Samples", "label": "Individual labels"}, default="sample")
        inputs.str("tag", label="Tag", default="mislabel", required=False)
        _engine_inputs(
            inputs, resize=False, shard="Score only shard I of N", overwrite="Rescore samples already scored"
        )

        try:
            if label_field not in compatible:
                matching.label_kind(ctx.dataset, label_field)  # raises: a missing field, or what it holds
                raise ValueError(f"`label_field` {label_field!r} is not a label field (choose one of {compatible})")
            if kind != "text":
                matching.check_template(ctx.params.get("template") or matching.default_template(model))
            matching.select_flags([0.0], *_flag_value(ctx.params))
            engine.check_run_options(
                ctx.params.get("field") or f"{label_field}_match",
                ctx.params.get("batch_size", 16),
                ctx.params.get("shard") or None,
            )
        except ValueError as error:
            prop = inputs.view("invalid", types.Warning(label="Invalid settings", description=str(error)))
            prop.invalid = True
            prop.error_message = str(error)
        return types.Property(inputs, view=types.View(label="BLIP: find mislabels"))

    def execute(self, ctx):
        params = ctx.params
        view = ctx.target_view()
        threshold, percentile, top_k = _flag_value(params)

        def work(progress):
            return fiftyone_blip.find_mislabels(
                view,
                params["label_field"],
                model=_app_model(params.get("model")),
                field=params.get("field") or None,
                template=params.get("template") or None,
                margin=params.get("margin", True),
                itc=params.get("itc", False),
                method=params.get("method", "auto"),
                threshold=threshold,
                percentile=percentile,
                top_k=top_k,
                level=params.get("level", "sample"),
                tag=params.get("tag") or "mislabel",
                batch_size=params.get("batch_size", 16),
                device=params.get("device", "auto"),
                dtype=params.get("dtype", "auto"),
                shard=params.get("shard") or None,
                overwrite=params.get("overwrite", False),
                progress=progress,
            )

        result = yield from _run_with_progress(ctx, work)
        message = (
            f"BLIP label QA: flagged {result['flagged_samples']} of {result['scored_samples']} samples "
            f"(tag {result['tag']!r}); review view {result['view']!r}"
        )
        if not ctx.delegated:
            yield ctx.trigger("reload_dataset")
            yield ctx.trigger("notify", dict(message=message, variant="success"))
            # Open the review view (flagged samples, most suspicious first) by its stages: the App
            # looks a view name up in the saved views it fetched with the page, which do not
            # hold the one this run just saved, so `set_view(name=...)` would fail there.
            review = ctx.dataset.load_saved_view(result["view"])
            yield ctx.ops.set_view(view=review)


_BACKEND_LABELS = {
    "sklearn": "FiftyOne default (in the database)",
    "lancedb": "LanceDB (embedded vector database)",
}


def _default_match_model(ctx):
    if ctx.dataset is not None and "shapes" in (ctx.dataset.info or {}):
        return "shapes-tiny"
    return models.DEFAULT_MODELS["match"]


class ComputeEmbeddings(foo.Operator):
    @property
    def config(self):
        return _engine_config(
            "compute_embeddings",
            "BLIP: compute embeddings and similarity index",
            "Embed images with BLIP (ITC) and build a similarity index with text search",
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.view_target(ctx)
        inputs.str(
            "model",
            label="Model",
            default=_default_match_model(ctx),
            required=True,
            description="A BlipForImageTextRetrieval hub id, a local directory, or shapes-tiny",
        )
        inputs.str("field", label="Embeddings field", default="blip_embedding", required=True)
        inputs.str(
            "brain_key",
            label="Similarity index (brain key)",
            default="blip_sim",
            required=True,
            description="The App's similarity search lists it; text prompts work on it",
        )
        _dropdown(inputs, "backend", "Similarity backend", _BACKEND_LABELS, default="sklearn")
        _engine_inputs(
            inputs,
            shard="Embed only shard I of N (no index is built for a shard; run once more without it)",
            overwrite="Recompute existing embeddings",
        )

        try:
            engine.check_run_options(
                ctx.params.get("field", "blip_embedding"), ctx.params.get("batch_size", 16), ctx.params.get("shard")
            )
            brain_key = ctx.params.get("brain_key", "blip_sim")
            if not brain_key:
                raise ValueError("`brain_key` must be a non-empty name")
        except ValueError as error:
            prop = inputs.view("invalid", types.Warning(label="Invalid settings", description=str(error)))
            prop.invalid = True
            prop.error_message = str(error)
        return types.Property(inputs, view=types.View(label="BLIP: compute embeddings and similarity index"))

    def execute(self, ctx):
        params = ctx.params
        view = ctx.target_view()
        backend = params.get("backend", "sklearn")

        def work(progress):
            return fiftyone_blip.embed(
                view,
                model=_app_model(params.get("model")),
                field=params.get("field", "blip_embedding"),
                brain_key=params.get("brain_key", "blip_sim"),
                backend=None if backend == "sklearn" else backend,
                resize=params.get("resize", "squash"),
                batch_size=params.get("batch_size", 16),
                device=params.get("device", "auto"),
                dtype=params.get("dtype", "auto"),
                shard=params.get("shard") or None,
                overwrite=params.get("overwrite", False),
                progress=progress,
            )

        summary = yield from _run_with_progress(ctx, work)
        if not ctx.delegated:
            yield ctx.trigger("reload_dataset")
            yield ctx.trigger("notify", dict(message=f"BLIP embeddings: {summary}", variant="success"))


# --- language adapters ------------------------------------------------------------------------


def _language_dropdown(inputs, model):
    """English plus the installed adapters trained for `model`."""
    from fiftyone_blip import adapters

    choices = {"en": "English (no adapter)"}
    for manifest in adapters.installed_adapters(model):
        choices.setdefault(manifest["language"], f"{manifest['language']} (adapter)")
    _dropdown(inputs, "language", "Language", choices, default="en", description="Installed language adapters")


def _chosen_language(params):
    language = params.get("language") or "en"
    return None if language == "en" else language


class TrainLanguageAdapter(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="train_language_adapter",
            label="BLIP: train a language adapter",
            description="Fine-tune a LoRA adapter so that BLIP captions in another language",
            dynamic=True,
            allow_immediate_execution=False,
            allow_delegated_execution=True,
            default_choice_to_delegated=True,
        )

    def resolve_input(self, ctx):
        from fiftyone_blip import adapters

        inputs = types.Object()
        inputs.view_target(ctx)
        inputs.str("language", label="Language code", required=True, description="e.g. de, ru, pt-BR")
        string_fields = []
        if ctx.dataset is not None:
            schema = ctx.dataset.get_field_schema(ftype=fo_fields.StringField)
            string_fields = sorted(name for name in schema if name not in ("filepath", "id"))
        if string_fields:
            default = next((f for f in string_fields if "caption" in f), string_fields[0])
            _dropdown(inputs, "caption_field", "Caption field", {f: f for f in string_fields}, default=default)
        else:
            inputs.str("caption_field", label="Caption field", required=True)
        inputs.str("model", label="Base model", default=_default_model(ctx), required=True)
        inputs.int("epochs", label="Most epochs", default=30, min=1)
        inputs.int("rank", label="LoRA rank", default=8, min=1, max=256)
        inputs.float("learning_rate", label="Learning rate", default=2e-3)
        inputs.int("batch_size", label="Batch size", default=64, min=1)
        inputs.bool("overwrite", label="Replace an installed adapter of this language", default=False)
        try:
            adapters.check_language(ctx.params.get("language") or "xx")
            adapters.AdapterTrainingSettings(
                rank=ctx.params.get("rank", 8),
                learning_rate=ctx.params.get("learning_rate", 2e-3),
                epochs=ctx.params.get("epochs", 30),
                batch_size=ctx.params.get("batch_size", 64),
            )
        except ValueError as error:
            prop = inputs.view("invalid", types.Warning(label="Invalid settings", description=str(error)))
            prop.invalid = True
            prop.error_message = str(error)
        return types.Property(inputs, view=types.View(label="BLIP: train a language adapter"))

    def execute(self, ctx):
        params = ctx.params
        manifest = fiftyone_blip.train_adapter(
            params["language"],
            samples=ctx.target_view(),
            caption_field=params["caption_field"],
            model=_app_model(params.get("model")),
            epochs=params.get("epochs", 30),
            rank=params.get("rank", 8),
            learning_rate=params.get("learning_rate", 2e-3),
            batch_size=params.get("batch_size", 64),
            overwrite=params.get("overwrite", False),
            progress=lambda done, total: ctx.set_progress(done / max(total, 1), f"step {done}/{total}"),
            log=lambda line: None,
        )
        return {
            "language": manifest["language"],
            "path": manifest["path"],
            "held_out_exact_match": manifest["metrics"]["held_out_exact_match"],
            "trainable_parameters": manifest["parameters"]["trainable"],
        }


# --- end of language adapters --------------------------------------------------------------------


def register(p):
    p.register(CaptionSamples)
    p.register(ComputeHeatmaps)
    p.register(WordHeatmapsPanel)
    p.register(FindMislabels)
    p.register(ComputeEmbeddings)
    p.register(TrainLanguageAdapter)
