"""The heatmap operator (where BLIP looked, per caption word) and the word panel that shows its maps."""

import fiftyone.core.fields as fo_fields
import fiftyone.operators as foo
import fiftyone.operators.types as types

import fiftyone_blip
from fiftyone_blip import HeatmapSettings, models
from fiftyone_blip.app.base import EngineOperator, Form, app_root, check_model, default_model, engine_config
from fiftyone_blip.forms import check_text_field, dropdown, form_default, setting_input


def text_field_default(dataset, default):
    """The text field a form suggests: `default` where the dataset has it, else its first caption-like text field."""
    if dataset is None:
        return default
    schema = dataset.get_field_schema(ftype=fo_fields.StringField)
    if default in schema:
        return default
    return next((name for name in sorted(schema) if "caption" in name), default)


_TEXT_SOURCES = {"field": "A text field of each sample", "text": "One text for every image (a query)"}


class ComputeHeatmaps(EngineOperator):
    settings_class = HeatmapSettings

    @property
    def config(self):
        return engine_config(
            "compute_heatmaps",
            "BLIP: word heatmaps",
            "Where BLIP looked for each caption word: a caption heatmap and one map per word",
        )

    def form(self, ctx, inputs, params):
        from fiftyone_blip import word_heatmaps

        mode = params.get("mode") or form_default(HeatmapSettings, HeatmapSettings.declared("mode"))
        setting_input(inputs, HeatmapSettings, HeatmapSettings.declared("mode"))
        sources = dict(_TEXT_SOURCES)
        if mode == "cross-attention":
            sources["generate"] = "Caption each image first"
        dropdown(inputs, "text_source", "Text to explain", sources, default="field")
        task = word_heatmaps.MODE_TASKS[mode]
        defaults = {
            "model": default_model(ctx, task),
            "text_field": text_field_default(ctx.dataset, HeatmapSettings.defaults()["text_field"]),
        }
        text_field = params.get("text_field") or defaults["text_field"]
        from_field = params.get("text_source", "field") == "field"

        def check_layers():
            # the model's own check of the layers and heads asked for, judged alone (whatever else the form
            # holds), from the config of a model on this server: no weights load
            local = check_model(params.get("model") or defaults["model"], task)
            if local is not None and params.get("layers") is not None:
                reference = models.reference(local, task, attention="eager")
                word_heatmaps.check_model(reference, HeatmapSettings(mode=mode, layers=params["layers"]))

        return Form(
            defaults=defaults,
            models={"model": task},
            context={"text_source": "field"},
            checks=[
                lambda: not from_field or check_text_field(ctx.dataset, "text_field", text_field, True),
                check_layers,
            ],
        )

    @property
    def skip(self):
        # a maps folder only under the root the server allows
        return ("mode",) if app_root() is not None else ("mode", "maps_dir")

    def planned_task(self, samples, params, settings, options):
        from fiftyone_blip import word_heatmaps

        return word_heatmaps.task_for(settings, options)

    def run(self, params, view, settings, options):
        return fiftyone_blip.heatmaps(view, settings, options)

    def message(self, summary, settings):
        return f"BLIP heatmaps: {summary}: open a sample and its BLIP word heatmaps panel to see each word's map"


# Words whose maps say little (articles, prepositions): the panel opens on the first other word.
FUNCTION_WORDS = frozenset(
    "a an the of on in at to and or with by from for is are its this that "
    "der die das ein eine einer einem einen und mit auf im in am".split()
)


def first_content_word(words) -> int:
    """The index of the first word that is not a function word ("circle" in "a red circle": 1, "red")."""
    return next((i for i, word in enumerate(words) if word.lower().strip(".,") not in FUNCTION_WORDS), 0)


# What the panel says with its colour legend: how to read the colours, and what the sidebar's overlay
# shows (the App draws the `heatmap` field's stored map, whichever word the panel shows).
LEGEND_NOTE = (
    "Blue: where BLIP looked least for the word; red: where it looked most (each map is scaled to its own "
    "range). The heatmap overlay you tick in the sidebar shows the whole caption's map: it does not follow "
    "the word picked here."
)


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
        ctx.panel.state.word = None  # a new caption: start again at its first content word
        self._show(ctx)

    def on_change_field(self, ctx):
        ctx.panel.state.field = ctx.params.get("value")
        ctx.panel.state.word = None
        self._show(ctx)

    def on_change_word(self, ctx):
        ctx.panel.state.word = ctx.params.get("value")
        self._show(ctx)

    def _show(self, ctx):
        """Puts the chosen word's overlay and probability into the panel's state and data."""
        from fiftyone_blip import word_heatmaps

        state = ctx.panel.state
        fields = word_heatmaps.heatmap_fields(ctx.dataset) if ctx.dataset is not None else []
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
            shown = word_heatmaps.word_view(sample, state.field, int(state.word or 0))
            first = first_content_word(shown["words"])
            if state.word is None and first != shown["index"]:
                shown = word_heatmaps.word_view(sample, state.field, first)
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
        ctx.panel.data.legend = word_heatmaps.data_url(word_heatmaps.colour_scale())

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
        # the legend above the map, so it is in sight whatever the map's size
        panel.img("legend", alt_text="colour scale: blue for the least, red for the most", width="100%", height="12px")
        panel.md(LEGEND_NOTE, name="legend_note")
        # the map as wide as the pane, and no taller than most of the window (its shape kept)
        fit = {"image": {"style": {"maxHeight": "60vh", "objectFit": "contain"}}}
        panel.img("overlay", alt_text="the word's map over the image", width="100%", componentsProps=fit)
        # "stretch": the App's vertical grid otherwise sizes its column to the widest content (the image's
        # own width), so the map would not fill the pane
        return types.Property(panel, view=types.GridView(orientation="vertical", align_x="stretch"))


# --- label QA: mislabels by image-text matching ---------------------------------------------------------------
