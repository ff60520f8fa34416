"""The question operator: BLIP's VQA head asks every image a question; the answers land in a field."""

import fiftyone_blip
from fiftyone_blip import VqaSettings
from fiftyone_blip import fields as result_fields
from fiftyone_blip.app.base import EngineOperator, Form, default_model, engine_config
from fiftyone_blip.forms import check_nonempty


def _as_question_param(message: str) -> str:
    # the library takes a list of questions; the form has one
    return message.replace("`questions`", "`question`").replace("`fields`", "`field`")


def _questions(params):
    """The form's one question as the library's checked list of questions."""
    from fiftyone_blip import vqa

    question = params.get("question")
    field = params.get("field") or vqa.default_field(question)
    try:
        return vqa.make_questions(
            question or "", field, vqa.parse_answers(params.get("answers")), bool(params.get("boolean"))
        )
    except ValueError as error:
        raise ValueError(_as_question_param(str(error))) from None


class AskQuestion(EngineOperator):
    """Asks every image of the target a question (BLIP VQA); the answers land in a filterable field."""

    settings_class = VqaSettings

    @property
    def config(self):
        return engine_config(
            "ask_question",
            "BLIP: ask a question",
            "Ask every image a question with BLIP's VQA head; the answer goes into a field you can filter on",
        )

    def form(self, ctx, inputs, params):
        from fiftyone_blip import vqa

        inputs.str(
            "question", label="Question", required=True, description="e.g. 'how many people are there?', 'is it night?'"
        )
        inputs.str(
            "answers",
            label="Candidate answers",
            required=False,
            description="comma-separated, e.g. 'yes, no' or '1, 2, 3': the answer is the candidate the model finds "
            "most likely; empty: the model writes its own answer",
        )
        inputs.bool(
            "boolean",
            label="Yes/no question: store the answer as yes or no",
            default=False,
            description="answers 'yes' or 'no' only, stored as a boolean with its confidence beside it",
        )
        inputs.str(
            "field",
            label="Answer field",
            required=True,
            default=vqa.default_field(params.get("question")),
            description="a Classification (label: the answer, confidence: its probability), or a boolean for a "
            "yes/no question: filter on it in the sidebar",
        )

        def check_questions():
            if params.get("question") is None:
                return  # not typed yet: the form marks it required
            checked = _questions(params)
            if ctx.dataset is not None:
                result_fields.check(ctx.dataset, vqa.wanted_fields(checked), "questions")

        return Form(
            defaults={"model": default_model(ctx, "vqa")},
            models={"model": "vqa"},
            checks=[lambda: params.get("question") is None or check_nonempty(params, "question"), check_questions],
        )

    def planned_task(self, samples, params, settings, options):
        from fiftyone_blip import vqa

        question = params.get("question")
        if not question or not str(question).strip():
            return None
        try:
            questions = _questions(params)
        except ValueError:
            return None  # flagged at the question
        try:
            return vqa.task_for(questions, settings, options)
        except ValueError as error:
            raise ValueError(_as_question_param(str(error))) from None

    def run(self, params, view, settings, options):
        from fiftyone_blip import vqa

        question = params["question"]
        return fiftyone_blip.ask(
            view,
            question,
            params.get("field") or vqa.default_field(question),
            answers=vqa.parse_answers(params.get("answers")),
            boolean=bool(params.get("boolean")),
            settings=settings,
            options=options,
        )

    def message(self, summary, settings):
        return f"BLIP answers: {summary}; filter the grid by answer with the field in the sidebar"
