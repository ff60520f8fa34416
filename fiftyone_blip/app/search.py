"""The embedding operator (BLIP ITC embeddings and a similarity index) and text search re-ranked by ITM."""

import fiftyone.operators as foo
import fiftyone.operators.types as types

import fiftyone_blip
from fiftyone_blip import EmbedSettings, SearchSettings
from fiftyone_blip.app.base import EngineOperator, Form, declared_params, default_model, engine_config
from fiftyone_blip.forms import check_nonempty, checked_form, dropdown, nothing_to_run, setting_input


class ComputeEmbeddings(EngineOperator):
    settings_class = EmbedSettings

    @property
    def config(self):
        return engine_config(
            "compute_embeddings",
            "BLIP: compute embeddings and similarity index",
            "Embed images with BLIP and build a similarity index for quick search by text or by image",
        )

    def form(self, ctx, inputs, params):
        model = params.get("model") or default_model(ctx, "match")
        return Form(
            defaults={"model": default_model(ctx, "match")},
            models={"model": "match"},
            checks=[
                lambda: check_nonempty(params, "brain_key"),
                lambda: check_brain_key(ctx.dataset, params.get("brain_key"), model),
            ],
        )

    def planned_task(self, samples, params, settings, options):
        from fiftyone_blip import embeddings

        return embeddings.task_for(settings, options)

    def run(self, params, view, settings, options):
        return fiftyone_blip.embed(view, settings, options)

    def message(self, summary, settings):
        if settings.brain_key is None:
            return f"BLIP embeddings: {summary} (no index built)"
        return (
            f"BLIP embeddings: {summary}; similarity index {settings.brain_key!r}: "
            "search it with the grid's sort-by-similarity button (a text prompt or selected samples) "
            "or the BLIP: search by text operator"
        )


def check_brain_key(dataset, brain_key, model):
    """The library's rule for the key an index is built under (`embeddings.check_index_key`)."""
    from fiftyone_blip import embeddings

    if dataset is not None and brain_key:
        embeddings.check_index_key(dataset, brain_key, embeddings.stored_model_name(model))


def blip_indexes(dataset) -> list[str]:
    """The dataset's similarity indexes built by fiftyone-blip (other brain runs cannot embed BLIP text)."""
    from fiftyone_blip import embeddings

    keys = []
    for key in dataset.list_brain_runs() if dataset is not None else []:
        try:
            embeddings.index_model_name(dataset, key)
        except ValueError:
            continue
        keys.append(key)
    return keys


class SearchByText(foo.Operator):
    """Text search re-ranked by BLIP's ITM head: the SDK's `search(..., rerank=True)`, shown as the App's view.

    The App's own similarity search ranks by the ITC cosine alone; this
    re-scores the ITC shortlist with the ITM head (BLIP's retrieval recipe)
    and sets the view to the results in that order.
    """

    @property
    def config(self):
        return foo.OperatorConfig(
            name="search_by_text",
            label="BLIP: search by text",
            description="Find the samples that best match a text: a quick search, then a careful re-ranking of its best "
            "matches",
            dynamic=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        label = "BLIP: search by text"
        keys = blip_indexes(ctx.dataset)
        if not keys:
            nothing_to_run(
                inputs,
                "no_index",
                "No BLIP similarity index",
                "Build one first with the **BLIP: compute embeddings and similarity index** operator",
            )
            return types.Property(inputs, view=types.View(label=label))
        inputs.str("query", label="Text", required=True, description="what to look for, e.g. 'a red circle'")
        default_key = SearchSettings.defaults()["brain_key"]
        default_key = default_key if default_key in keys else keys[0]
        dropdown(inputs, "brain_key", "Similarity index (brain key)", {k: k for k in keys}, default=default_key)
        count = len(ctx.view) if ctx.view is not None else 0
        k_default = min(SearchSettings.defaults()["k"], max(count, 1))
        setting_input(inputs, SearchSettings, SearchSettings.declared("k"), default=k_default)
        inputs.properties["k"].view.label = "Results (k)"
        setting_input(inputs, SearchSettings, SearchSettings.declared("rerank"), default=True)
        inputs.properties["rerank"].view.label = "Re-rank the quick search's best matches carefully"
        params = ctx.params

        def check_k():
            k = params.get("k")
            if k is not None and not 1 <= k <= count:
                raise ValueError(f"`k` must be at most the number of samples searched ({count}), got {k}")

        return checked_form(
            inputs, label, check_k, lambda: params.get("query") is None or check_nonempty(params, "query")
        )

    def execute(self, ctx):
        params, view = declared_params(self, ctx), ctx.view
        query, brain_key = params["query"], params.get("brain_key") or SearchSettings.defaults()["brain_key"]
        k, rerank = params.get("k") or SearchSettings.defaults()["k"], params.get("rerank", True)
        results = fiftyone_blip.search(view, query, k=k, brain_key=brain_key, rerank=rerank)
        ids = results.values("id")
        ctx.ops.set_view(view=results)
        ranking = "quick search, then careful re-ranking" if rerank else "quick search"
        ctx.ops.notify(
            f"BLIP search: the {len(ids)} best matches of {query!r}, best first ({ranking}; index {brain_key!r})",
            variant="success",
        )
        return {"ids": ids}


# --- visual question answering ------------------------------------------------------------------


_TOKENIZERS = {}
