"""Asking a question from the App, then filtering the grid by the answer in the sidebar."""

import re

NAME = "ask_question"
LABEL = "BLIP: ask a question"


def test_ask_then_filter_the_grid_by_the_answer(app, app_dataset):
    dataset = app_dataset("app-ask", count=12)

    app.open("app-ask")
    app.expect(app.cy("looker")).to_have_count(12)

    form = app.open_operator(NAME, LABEL)
    execute = app.execute_button()
    assert app.form_input(form, "Model").input_value() == "shapes-tiny"

    # A bad question is flagged at its input before anything runs.
    app.fill(form, {"Question": "   "})
    invalid = form.get_by_text("Question must not be empty")
    invalid.wait_for()
    app.expect(execute).to_be_disabled()

    # The question, its candidate answers and the field; nothing is flagged once the server has checked them.
    app.fill(form, {"Question": "how many shapes are there?"})
    app.expect(invalid).to_have_count(0)
    app.fill(form, {"Candidate answers": "1, 2, 3", "Answer field": "n_shapes"})
    app.expect(app.form_input(form, "Answer field")).to_have_value("n_shapes")
    app.screenshot("ask-form")
    app.execute(re.compile(r"BLIP answers: 12 done, 0 failed"))
    app.close_notifications()

    dataset.reload()
    answers = dict(zip(*dataset.values(["id", "n_shapes.label"])))
    assert set(answers.values()) <= {"1", "2", "3"}
    answer = max(set(answers.values()), key=list(answers.values()).count)  # the commonest answer
    expected = sorted(i for i, a in answers.items() if a == answer)

    # The sidebar filters the new field by answer: the grid then shows that answer's samples.
    app.sidebar_field("n_shapes").wait_for()
    app.cy("sidebar-field-arrow-enabled-n_shapes").click()
    # (the label filter of a small dataset is a search box: type the answer, pick it from the results)
    search = app.cy("selector-sidebar-search-n_shapes.label")
    search.fill(answer)
    # (FiftyOne 1.22 names every result "selector-result-[object Object]": find it by its text)
    results = app.cy("selector-results-container-sidebar-search-n_shapes.label")
    results.get_by_text(answer, exact=True).click()
    app.cy("categorical-filter-n_shapes.label").locator(f'[data-cy="checkbox-{answer}"]').wait_for()
    app.expect(app.cy("looker")).to_have_count(len(expected))

    # The tiles shown are exactly the samples with that answer: as many, and each holds it.
    # (a new label field is shown on the tiles at once; tick it if this App version does not)
    if not app.cy("checkbox-n_shapes").locator("input").first.is_checked():
        app.show_field("n_shapes")
    tags = app.grid_tags("n_shapes")
    app.expect(tags).to_have_count(len(expected))
    assert {tag.get_attribute("title") for tag in tags.all()} == {f"n_shapes: {answer}"}
    app.screenshot("ask-filtered")
