"""Text search in the App: the grid's own similarity search, with a text prompt, over a BLIP index
(re-ranked by ITM), and the plugin's search-by-text operator."""

import re

import fiftyone_blip

QUERY = "a red circle"
BRAIN_KEY = "blip_sim"
SHOWN = 6  # the first tiles compared with the SDK's order


def test_text_search_sorts_the_grid_by_the_reranked_order(app, app_dataset):
    dataset = app_dataset("app-search", count=24)
    fiftyone_blip.embed(dataset, model="shapes-tiny", brain_key=BRAIN_KEY, progress=False, num_workers=0)
    before = dataset.values("gt_caption")[:SHOWN]
    ranked = dataset.sort_by_similarity(QUERY, brain_key=BRAIN_KEY)
    expected = ranked.values("gt_caption")[:SHOWN]
    best = ranked.first().id
    assert expected != before  # the query re-orders the first tiles
    # embed's index re-ranks a text prompt by ITM, as the SDK's re-ranked search: not the ITC order
    captions = dict(zip(*dataset.values(["id", "gt_caption"])))
    reranked = fiftyone_blip.search(dataset, QUERY, k=24, brain_key=BRAIN_KEY, rerank=True).values("id")
    itc = fiftyone_blip.search(dataset, QUERY, k=24, brain_key=BRAIN_KEY).values("id")
    assert ranked.values("id") == reranked
    assert [captions[i] for i in itc[:SHOWN]] != expected

    app.open("app-search")
    app.expect(app.cy("looker")).to_have_count(24)
    app.show_field("gt_caption")
    tags = app.grid_tags("gt_caption")
    app.expect(tags).to_have_count(24)

    def first_tiles():
        return [tag.get_attribute("title").removeprefix("gt_caption: ") for tag in tags.all()[:SHOWN]]

    assert first_tiles() == before

    # The grid's "sort by similarity" action takes a text prompt: the index's model embeds it.
    app.cy("action-sort-by-similarity").click()
    prompt = app.page.get_by_placeholder("Type anything!")
    prompt.wait_for()
    prompt.fill(QUERY)
    prompt.press("Enter")

    # FiftyOne's Similarity Search panel runs the search and lists it; "Show results" loads it.
    search = app.page.get_by_role("button", name="Show results", exact=True)
    app.expect(search).to_have_count(1)
    card = app.page.get_by_text(f"{QUERY} · {BRAIN_KEY}")
    app.expect(card).to_be_visible()
    app.expect(app.page.get_by_text("Completed", exact=True)).to_be_visible()
    app.expect(app.page.get_by_text("24 results", exact=True)).to_be_visible()
    # (Playwright reads the sortable card's aria-disabled as the button's own: it is enabled.)
    search.click(force=True)

    # The view bar shows the search's results as an ordered Select stage, best match first,
    # and the grid shows the index's order.
    bar = app.cy("view-bar")
    app.expect(bar.get_by_role("textbox", name="ordered (default=False)")).to_have_value("True")
    app.expect(bar.get_by_role("textbox", name="list,of,sample,ids")).to_have_value(re.compile(f"^{best},"))
    app.expect(tags).to_have_count(24)
    app.page.wait_for_function(
        """([expected]) => {
            const shown = [...document.querySelectorAll('[data-cy="tag-gt_caption"]')]
                .slice(0, expected.length)
                .map((tag) => tag.getAttribute("title").replace(/^gt_caption: /, ""));
            return JSON.stringify(shown) === JSON.stringify(expected);
        }""",
        arg=[expected],
    )
    assert first_tiles() == expected
    app.screenshot("search-grid")


RERANKED = 8


def test_search_by_text_operator_shows_the_reranked_order(app, app_dataset):
    dataset = app_dataset("app-rerank", count=24)
    fiftyone_blip.embed(dataset, model="shapes-tiny", brain_key=BRAIN_KEY, progress=False, num_workers=0)
    expected_ids = fiftyone_blip.search(dataset, QUERY, k=RERANKED, brain_key=BRAIN_KEY, rerank=True).values("id")
    captions = dict(zip(*dataset.values(["id", "gt_caption"])))
    expected = [captions[i] for i in expected_ids]

    app.open("app-rerank")
    form = app.open_operator("search_by_text", "BLIP: search by text")
    # k above the number of samples is flagged at its field
    app.fill(form, {"Results (k)": 99})
    too_many = form.get_by_text("Results (k) must be at most the number of samples searched (24), got 99")
    app.expect(too_many).to_be_visible()
    app.expect(app.execute_button()).to_be_disabled()
    app.fill(form, {"Text": QUERY, "Results (k)": RERANKED})
    app.expect(too_many).to_have_count(0)
    app.screenshot("search-operator-form")
    app.execute(re.compile(rf"BLIP search: the {RERANKED} best matches of '{QUERY}', best first"))

    # The view is the re-ranked results, in the SDK's order: an ordered Select stage.
    bar = app.cy("view-bar")
    app.expect(bar.get_by_role("textbox", name="ordered (default=False)")).to_have_value("True")
    # (the bar shows the first id only)
    app.expect(bar.get_by_role("textbox", name="list,of,sample,ids")).to_have_value(re.compile(f"^{expected_ids[0]},"))
    app.expect(app.cy("looker")).to_have_count(RERANKED)
    app.show_field("gt_caption")
    tags = app.grid_tags("gt_caption")
    app.expect(tags).to_have_count(RERANKED)
    shown = [tag.get_attribute("title").removeprefix("gt_caption: ") for tag in tags.all()]
    assert shown == expected
    app.screenshot("search-operator-grid")
