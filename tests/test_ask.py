"""Asking questions on every surface: the SDK facade, the CLI and the App operator (form and run),
against the real embedded database and the bundled shapes-tiny VQA model."""

import json
import re

import pytest
from app_forms import form_errors, form_inputs
from click.testing import CliRunner

import fiftyone_blip
from fiftyone_blip import vqa
from fiftyone_blip.app_config import SHOW_GROUPS_OPERATOR as SHOW_GROUPS
from fiftyone_blip.cli import main

URI = "@fiftyone-blip/blip/ask_question"


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _right_counts(dataset, field):
    """How many samples hold the right number of shapes in `field`."""
    from fiftyone_blip.shapes import data as shapes

    right = 0
    for sample in dataset.exists(field):
        index = int(re.search(r"test-(\d+)\.png$", sample.filepath).group(1))
        right += sample[field].label == str(len(shapes.make_scene(index, "test").objects))
    return right


def test_sdk_ask_writes_filterable_answers(fresh_dataset):
    import fiftyone as fo

    view = fresh_dataset.limit(16)
    summary = fiftyone_blip.ask(
        view,
        ["how many shapes are there?", "is there a circle?"],
        ["n_shapes", "has_circle"],
        answers=[["1", "2", "3"], None],
        boolean=[False, True],
        model="shapes-tiny",
        batch_size=8,
        progress=False,
    )
    assert (summary.done, summary.failed, summary.total) == (16, 0, 16)
    assert _right_counts(fresh_dataset, "n_shapes") >= 13
    assert set(fresh_dataset.exists("n_shapes").values("n_shapes.label")) <= {"1", "2", "3"}
    assert {type(v) for v in fresh_dataset.exists("has_circle").values("has_circle")} == {bool}
    # the sidebar's filters are these matches
    threes = fresh_dataset.filter_labels("n_shapes", fo.ViewField("label") == "3")
    assert threes.count() == fresh_dataset.values("n_shapes.label").count("3")
    # settings reach the run record as keywords do; a keyword that is no setting is a TypeError
    [record] = [r for r in fiftyone_blip.runs(fresh_dataset) if r["capability"] == "vqa"]
    assert record["settings"]["questions"][0]["answers"] == ["1", "2", "3"]
    with pytest.raises(TypeError, match="no_such_setting"):
        fiftyone_blip.ask(view, "how many shapes are there?", "n", no_such_setting=1)


def test_sdk_bad_input_is_refused_before_any_work(fresh_dataset):
    before = set(fresh_dataset.get_field_schema())
    cases = [
        (dict(questions=" ", fields="a"), "empty question"),
        (dict(questions="q?", fields="a", answers=["Red", "red."]), "'red' twice"),
        (dict(questions="q?", fields="a b"), "`field` must be a name"),
        (dict(questions="q?", fields="a", num_beams=0), "`num_beams` must be from 1 to 10"),
        (dict(questions="is there a " + "red " * 80 + "circle?", fields="a"), "tokens long"),
        (dict(questions="q?", fields="gt_caption"), "already exists as a"),
        (dict(questions="q?", fields="a", answers=["1", "2"], boolean=True), "must be 'yes' and 'no'"),
        (dict(questions=["q?", "r?"], fields=["a", "a"]), "got 'a' twice"),
        (dict(questions=["q?", "r?"], fields=["a", "a_run"]), "'a_run' would collide"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            fiftyone_blip.ask(fresh_dataset, model="shapes-tiny", progress=False, **kwargs)
    assert set(fresh_dataset.get_field_schema()) == before
    assert not [r for r in fiftyone_blip.runs(fresh_dataset) if r["capability"] == "vqa"]


def test_parse_answers_and_default_field():
    assert vqa.parse_answers(None) is None
    assert vqa.parse_answers("  ") is None
    assert vqa.parse_answers("yes, no") == ["yes", "no"]
    assert vqa.parse_answers("red,,blue") == ["red", "", "blue"]
    assert vqa.default_field("How many people are there?") == "how_many_people_are_there"
    assert vqa.default_field("2 dogs?") == "q_2_dogs"
    assert vqa.default_field("") == "answer"


def test_cli_ask_several_questions(fresh_dataset):
    result = invoke(
        "ask",
        fresh_dataset.name,
        "how many shapes are there?",
        "is there a star?",
        "-f",
        "n",
        "-f",
        "star",
        "--answers",
        "1,2,3",
        "--answers",
        "",
        "-m",
        "shapes-tiny",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    assert "48 done, 0 failed, 0 skipped of 48" in result.output
    assert set(fresh_dataset.values("n.label")) <= {"1", "2", "3"}
    assert set(fresh_dataset.values("star.label")) <= {"yes", "no"}
    again = invoke(
        "ask", fresh_dataset.name, "how many shapes are there?", "-f", "n2", "-m", "shapes-tiny", "-q", "--json"
    )
    assert again.exit_code == 0 and fresh_dataset.count("n2") == 48
    assert json.loads(again.output) | {"fields": ["n2"], "done": 48, "failed": 0} == json.loads(again.output)
    boolean = invoke(
        "ask", fresh_dataset.name, "is there a circle?", "-f", "circle", "--boolean", "-m", "shapes-tiny", "-q"
    )
    assert boolean.exit_code == 0, boolean.output
    assert {type(v) for v in fresh_dataset.values("circle")} == {bool}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["", "-f", "a"], "Error: `questions` must not hold an empty question, got ''"),
        (["q?", "r?", "-f", "a"], "Error: `--field` must be given once per question (2), got 1"),
        (["q?", "-f", "a", "--answers", "yes,Yes"], "Error: `answers` of 'q?' holds 'yes' twice"),
        (["q?", "-f", "a", "-a", "x,y", "-a", "x,z"], "Error: `--answers` must be given once for all questions"),
        (["q?", "-f", "bad name"], "Error: `field` must be a name of letters, digits and underscores"),
        (["is there a " + "red " * 80 + "circle?", "-f", "a"], "tokens long; the model reads at most 64"),
        (["q?", "-f", "a", "-a", "1,2", "--boolean"], "`answers` of the yes/no question 'q?' must be 'yes' and 'no'"),
        (["q?", "r?", "-f", "a", "-f", "a"], "`fields` must be distinct, got 'a' twice"),
        (["q?", "r?", "-f", "a", "-f", "a_confidence"], "'a_confidence' would collide with the fields written beside"),
    ],
)
def test_cli_bad_input_is_one_line(fresh_dataset, argv, message):
    result = invoke("ask", fresh_dataset.name, *argv, "-m", "shapes-tiny", "-q")
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert message in result.output
    assert "a" not in fresh_dataset.get_field_schema()


def _form_errors(dataset, params):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    ctx = ExecutionContext(request_params=dict(dataset_name=dataset.name, params=params))
    form = foo.get_operator(URI).resolve_input(ctx)
    return form_errors(form), form_inputs(form)


def test_form_flags_bad_input_at_its_field(fresh_dataset, plugin_installed):
    ok = {"question": "how many shapes are there?", "field": "n_shapes"}
    errors, properties = _form_errors(fresh_dataset, ok)
    assert errors == {}
    assert properties["model"].default == "shapes-tiny"
    assert properties["field"].default == "how_many_shapes_are_there"
    # advanced settings are marked for the forms' collapsed part
    assert VqaSettingsAdvanced() >= {"strategy", "num_beams", "max_new_tokens", "top_k"}

    cases = {
        "question": ({"question": "   "}, "Question must not be empty"),
        "answers": ({"answers": "yes, no, Yes"}, "Candidate answers of 'how many shapes are there?' holds 'yes' twice"),
        "field": ({"field": "bad name"}, "Answer field must be a name of letters"),
    }
    for name, (change, message) in cases.items():
        errors, _ = _form_errors(fresh_dataset, {**ok, **change})
        assert name in errors and message in errors[name], errors
    errors, _ = _form_errors(fresh_dataset, {**ok, "question": "is there a " + "red " * 80 + "circle?"})
    assert "tokens long; the model reads at most 64" in errors["question"]
    errors, _ = _form_errors(fresh_dataset, {**ok, "field": "gt_caption"})
    assert "already exists as a StringField" in errors["field"]
    errors, _ = _form_errors(fresh_dataset, {**ok, "answers": "1, 2", "boolean": True})
    assert "'yes' and 'no'" in errors["answers"]
    # as the App sends them: the advanced settings nested in their section
    errors, _ = _form_errors(fresh_dataset, {**ok, "advanced": {"strategy": "beam", "num_beams": 42}})
    assert errors == {"num_beams": "Beams must be from 1 to 10, got 42"}
    assert properties["strategy"].default == "greedy" and "strategy" not in _top_level(fresh_dataset, ok)


def _top_level(dataset, params):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    ctx = ExecutionContext(request_params=dict(dataset_name=dataset.name, params=params))
    return set(foo.get_operator(URI).resolve_input(ctx).type.properties)


def VqaSettingsAdvanced():
    return {f.name for f in vqa.VqaSettings.fields("app") if f.metadata.get("advanced")}


def test_operator_asks_the_current_view(fresh_dataset, plugin_installed):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext, Executor

    view = fresh_dataset.limit(12)
    result = foo.execute_operator(
        URI,
        ctx=dict(
            view=view,
            params=dict(
                question="is there a circle?",
                field="has_circle",
                boolean=True,
                model="shapes-tiny",
                view_target="CURRENT_VIEW",
            ),
        ),
    )
    result.raise_exceptions()
    assert fresh_dataset.count("has_circle") == 12
    assert {type(v) for v in fresh_dataset.exists("has_circle").values("has_circle")} == {bool}

    # immediate runs report progress and end with a notice
    operator = foo.get_operator(URI)
    ctx = ExecutionContext(
        request_params=dict(
            dataset_name=fresh_dataset.name,
            params=dict(
                question="how many shapes are there?",
                answers="1, 2, 3",
                field="n",
                model="shapes-tiny",
                view_target="DATASET",
            ),
        ),
        executor=Executor(),
    )
    messages = [m.body for m in operator.execute(ctx)]
    assert [m.operator_uri for m in messages[-3:]] == ["reload_dataset", SHOW_GROUPS, "notify"]
    assert "BLIP answers: 48 done" in messages[-1].params["message"]
    assert set(fresh_dataset.values("n.label")) <= {"1", "2", "3"}
    assert _right_counts(fresh_dataset, "n") >= 40


def test_a_view_that_hides_the_answer_fields_still_refuses_and_resumes(fresh_dataset):
    """A view may hide a field or its labels; the values stored in the dataset are what a run
    would replace, so they are what the refusal and the resume look at."""
    import fiftyone as fo
    from fiftyone import ViewField as F

    fresh_dataset.limit(3).set_values("truth", [fo.Classification(label="USER")] * 3)
    hiding = [
        fresh_dataset.exclude_fields("truth"),
        fresh_dataset.select_fields("gt_caption"),
        fresh_dataset.filter_labels("truth", F("label") == "x", only_matches=False),
    ]
    for view in hiding:
        for fields in (["truth"], ["n", "truth"]):
            questions = ["what shape is it?", "how many shapes are there?"][: len(fields)][::-1]
            with pytest.raises(ValueError, match=r"field 'truth' already holds values on 3 samples"):
                fiftyone_blip.ask(view, questions, fields, model="shapes-tiny", progress=False)
    assert fresh_dataset.count_values("truth.label") == {"USER": 3, None: 45}
    # done samples are skipped even where the view hides the answers
    first = fiftyone_blip.ask(fresh_dataset.limit(8), "what shape is it?", "shape", model="shapes-tiny", progress=False)
    assert first.done == 8
    again = fiftyone_blip.ask(
        fresh_dataset.limit(10).exclude_fields("shape"),
        "what shape is it?",
        "shape",
        model="shapes-tiny",
        progress=False,
    )
    assert (again.done, again.skipped, again.total) == (2, 8, 10)


def test_answers_the_model_cannot_write_are_refused_and_empty_answers_fail(fresh_dataset, monkeypatch):
    """Issue 24, part 2, item 8: a candidate answer outside the model's vocabulary would be ranked as
    [UNK] (every sample got the first candidate at 0.5): refused before any work, as caption
    constraints are. A free answer that normalises to nothing is an error entry, not a label."""
    before = set(fresh_dataset.get_field_schema())
    with pytest.raises(ValueError, match=r"`answers`: 'giraffe' is not in the model's vocabulary"):
        fiftyone_blip.ask(
            fresh_dataset, "what shape is it?", "kind", answers=["circle", "giraffe"], model="shapes-tiny"
        )
    assert set(fresh_dataset.get_field_schema()) == before
    assert not [r for r in fiftyone_blip.runs(fresh_dataset) if r["capability"] == "vqa"]
    result = invoke("ask", fresh_dataset.name, "what shape?", "-f", "kind", "-a", "circle,giraffe", "-m", "shapes-tiny")
    assert result.exit_code == 1 and "not in the model's vocabulary" in result.output

    # the model writes only words the normalisation drops ("the", "."): no answer
    monkeypatch.setattr(vqa.Answerer, "generate_answers", lambda self, states, mask: [("", 0.9)] * len(states))
    view = fresh_dataset.limit(4)
    summary = fiftyone_blip.ask(view, "what shape is it?", "free", model="shapes-tiny", progress=False)
    assert (summary.done, summary.failed) == (0, 4)
    assert view.values("free") == [None] * 4 and view.values("free_error") == ["empty output"] * 4
