"""Visual question answering with BLIP's VQA head (`BlipForQuestionAnswering`).

    from fiftyone_blip import vqa
    from fiftyone_blip.settings import RunOptions

    vqa.ask(dataset, ["how many shapes are there?", "is there a star?"], ["n_shapes", "has_star"],
            answers=[None, ["yes", "no"]], options=RunOptions(batch_size=32))

Each question writes, per sample:

- `{field}`: an `fo.Classification` whose label is the normalised answer and
  whose confidence is its probability (see below); or, for a yes/no question
  asked with `boolean=True`, a bool (True for "yes");
- `{field}_confidence` (boolean questions only): the probability of the
  stored answer;
- `{field}_error` / `{field}_run` (the first question's field names them for
  the whole run): written by the engine.

Two ways to answer, per question:

- free generation: the answer decoder writes the answer token by token
  (greedy or beam search); the confidence is the model's probability of the
  whole answer (the product of its token probabilities up to [SEP]);
- closed answers: a list of candidate answers ranked by the decoder's
  log-likelihood of each, as BLIP's own VQA evaluation ranks its answer list
  (`rank_answer` in salesforce/BLIP `models/blip_vqa.py`: the `top_k`
  candidates whose first token is most likely are scored in full); the
  confidence is the answer's probability among the candidates (a softmax over
  their log-likelihoods).

The image goes through the vision encoder once per batch for all questions;
each question then costs one pass of the (much smaller) text encoder over the
batch, and its answer decoding. This module imports neither FiftyOne nor
torch at import time; only `vqa_task` and `ask` need FiftyOne.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Sequence

from fiftyone_blip.settings import Settings, setting

STRATEGIES = ("greedy", "beam")
MAX_BEAMS = 10
MAX_NEW_TOKENS = 64
MAX_TOP_K = 4096
YES_NO = ("yes", "no")


@dataclasses.dataclass
class VqaSettings(Settings):
    """How answers are decoded; the same for every question of a run."""

    model: str | None = setting(
        None,
        "a BLIP question answering model (BlipForQuestionAnswering): a Hugging Face hub id, a model folder or "
        "'shapes-tiny' (default: Salesforce/blip-vqa-base)",
        cli_flags=("-m",),
        envvar="FIFTYONE_BLIP_VQA_MODEL",
    )
    strategy: str = setting(
        "greedy",
        "how free-form answers are decoded (closed answers are ranked, whatever the strategy)",
        label="Decoding",
        choices=STRATEGIES,
        choice_labels={"greedy": "Greedy", "beam": "Beam search"},
        advanced=True,
    )
    num_beams: int = setting(
        3,
        "beams for the beam strategy",
        label="Beams",
        min=1,
        max=MAX_BEAMS,
        advanced=True,
        form_when={"strategy": ("beam",)},
    )
    max_new_tokens: int = setting(10, "longest free-form answer, in tokens", min=1, max=MAX_NEW_TOKENS, advanced=True)
    top_k: int = setting(
        128,
        "closed answers: score in full only the k candidates whose first token is most likely",
        min=1,
        max=MAX_TOP_K,
        advanced=True,
    )

    def __post_init__(self):
        super().__post_init__()
        for name in ("num_beams", "max_new_tokens", "top_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"`{name}` must be an integer, got {value!r}")

    def as_dict(self) -> dict:
        """Only the settings that can change an answer (they form the run fingerprint; the model is
        recorded as the run's identity)."""
        values = {"strategy": self.strategy, "max_new_tokens": self.max_new_tokens, "top_k": self.top_k}
        if self.strategy == "beam":
            values["num_beams"] = self.num_beams
        return values


# ---------------------------------------------------------------- questions and answers

_NUMBERS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = re.compile(r"[^\w\s'-]|(?<!\w)['-]|['-](?!\w)")


def normalize_answer(text: str) -> str:
    """Lower case, punctuation and articles dropped, number words as digits ("Two." -> "2").

    The normalisation of the VQA evaluation, in short: answers that differ only
    in these ways are the same answer.
    """
    text = _PUNCTUATION.sub(" ", str(text).lower())
    words = [_NUMBERS.get(word, word) for word in text.split() if word not in _ARTICLES]
    return " ".join(words)


def parse_answers(text: str | Sequence[str] | None) -> list[str] | None:
    """Candidate answers from a comma-separated text ("yes, no"), as the CLI and the App take them.

    None or a blank text: free generation (None). A list passes through. An
    empty item stays, so that `make_questions` names it ("red,,blue").
    """
    if text is None:
        return None
    if not isinstance(text, str):
        return list(text)
    if not text.strip():
        return None
    return [part.strip() for part in text.split(",")]


def default_field(question: str | None) -> str:
    """A field name made from a question ("How many people?" -> "how_many_people"); "answer" for none."""
    words = re.findall(r"[a-z0-9]+", str(question or "").lower())
    name = "_".join(words)[:40].rstrip("_")
    if not name:
        return "answer"
    return name if name[0].isalpha() else f"q_{name}"


@dataclasses.dataclass(frozen=True)
class Question:
    """One question and where its answers go.

    Attributes:
        text: the question ("how many people are there?").
        field: the sample field for its answers.
        answers: candidate answers, ranked instead of free generation (None:
            free generation). Stored normalised.
        boolean: a yes/no question stored as a bool (True for "yes"); its
            answers are "yes" and "no" (False).
    """

    text: str
    field: str
    answers: tuple[str, ...] | None = None
    boolean: bool = False

    @property
    def candidates(self) -> tuple[str, ...] | None:
        return YES_NO if self.boolean else self.answers

    def as_dict(self) -> dict:
        return {"question": self.text, "field": self.field, "answers": self.candidates, "boolean": self.boolean}


def make_questions(
    questions: str | Sequence[str],
    fields: str | Sequence[str],
    answers: Sequence[str] | Sequence[Sequence[str] | None] | None = None,
    boolean: bool | Sequence[bool] = False,
) -> list[Question]:
    """Checks questions, fields and answer lists and pairs them up; raises a one-line ValueError.

    Args:
        questions: one question or a list of them.
        fields: one field per question.
        answers: None (free generation for all), one list of candidate answers
            for all questions, or one list (or None) per question.
        boolean: True, or one flag per question: store yes/no answers as bools.
    """
    from fiftyone_blip.fields import check_field_name

    questions = [questions] if isinstance(questions, str) else list(questions)
    fields = [fields] if isinstance(fields, str) else list(fields)
    if not questions:
        raise ValueError("`questions` must hold at least one question, got none")
    if len(fields) != len(questions):
        raise ValueError(f"`fields` must name one field per question ({len(questions)}), got {len(fields)}")
    for field in fields:
        check_field_name(field)
    for field in fields:
        if fields.count(field) > 1:
            raise ValueError(f"`fields` must be distinct, got {field!r} twice")
    for field in fields:
        for other in fields:
            if other != field and other in (f"{field}_confidence", f"{field}_error", f"{field}_run"):
                raise ValueError(f"`fields` {other!r} would collide with the fields written beside {field!r}")
    if answers is None or (answers and all(isinstance(a, str) for a in answers)) or answers == []:
        per_question = [answers] * len(questions)
    else:
        per_question = list(answers)
        if len(per_question) != len(questions):
            raise ValueError(
                f"`answers` must be one list for all questions or one per question ({len(questions)}), "
                f"got {len(per_question)}"
            )
    flags = [boolean] * len(questions) if isinstance(boolean, bool) else list(boolean)
    if len(flags) != len(questions):
        raise ValueError(f"`boolean` must be one flag or one per question ({len(questions)}), got {len(flags)}")
    out = []
    for text, field, candidates, flag in zip(questions, fields, per_question, flags):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"`questions` must not hold an empty question, got {text!r}")
        out.append(Question(text.strip(), field, _check_answers(text, candidates, flag), bool(flag)))
    return out


def _check_answers(question: str, answers, boolean: bool) -> tuple[str, ...] | None:
    if answers is None:
        return None
    if isinstance(answers, str):
        raise ValueError(f"`answers` must be a list of answers, got the string {answers!r}")
    normalised = []
    for answer in answers:
        if isinstance(answer, str) and "," in answer:
            # the CLI and the form split answers at commas; a list item holding one is a list misread
            raise ValueError(
                f"`answers` of {question!r}: {answer!r} holds a comma; give a list of answers "
                "(['yes', 'no']) or one list per question ([['yes', 'no'], ['red', 'blue']])"
            )
        norm = normalize_answer(answer) if isinstance(answer, str) else ""
        if not norm:
            raise ValueError(f"`answers` of {question!r} must not hold an empty answer, got {answer!r}")
        if norm in normalised:
            raise ValueError(f"`answers` of {question!r} holds {norm!r} twice (answers are compared normalised)")
        normalised.append(norm)
    if len(normalised) < 2:
        raise ValueError(f"`answers` of {question!r} must hold at least two answers to rank, got {normalised}")
    if boolean and set(normalised) != set(YES_NO):
        raise ValueError(f"`answers` of the yes/no question {question!r} must be 'yes' and 'no', got {normalised}")
    return tuple(normalised)


def check_text_fits(questions: list[Question], tokenizer, max_positions: int) -> None:
    """Refuses a question or candidate answer longer than the model's text positions, and a candidate
    answer the model cannot write (outside its vocabulary: ranked, it would win as [UNK])."""
    from fiftyone_blip.captions import vocabulary_token_ids

    for question in questions:
        vocabulary_token_ids("answers", question.candidates or (), tokenizer)
    for question in questions:
        length = len(tokenizer(question.text)["input_ids"])
        if length > max_positions:
            raise ValueError(
                f"`questions`: {question.text[:40]!r}... is {length} tokens long; the model reads at most "
                f"{max_positions}"
            )
        for answer in question.candidates or ():
            length = len(tokenizer(answer)["input_ids"])
            if length > max_positions:
                raise ValueError(
                    f"`answers`: {answer[:40]!r}... is {length} tokens long; the model reads at most {max_positions}"
                )


# ---------------------------------------------------------------- the model step


class Answerer:
    """Answers a fixed list of questions about batches of preprocessed images.

    `loaded` is a `models.LoadedModel` of a `BlipForQuestionAnswering` (or
    anything with its `model`, `processor`, `device` and `dtype`).
    """

    def __init__(self, loaded, questions: list[Question], settings: VqaSettings | None = None):
        import torch

        self.torch = torch
        self.loaded = loaded
        self.model = loaded.model
        self.device = loaded.device
        self.settings = settings or VqaSettings()
        self.questions = list(questions)
        self.tokenizer = loaded.processor.tokenizer
        text_config = self.model.config.text_config
        self.bos = text_config.bos_token_id
        self.eos = text_config.sep_token_id
        self.pad = text_config.pad_token_id
        check_text_fits(self.questions, self.tokenizer, text_config.max_position_embeddings)
        # a free answer stops where the decoder's positions end ([DEC] takes one); beyond them generate fails
        self.max_new_tokens = min(self.settings.max_new_tokens, text_config.max_position_embeddings - 1)
        # Tokenised once: each question is the same for every image of a batch.
        self.question_ids = [
            self.tokenizer(q.text, return_tensors="pt")["input_ids"].to(self.device) for q in self.questions
        ]
        self.answer_ids = {}
        for i, q in enumerate(self.questions):
            if q.candidates:
                tokens = self.tokenizer(list(q.candidates), padding="longest", return_tensors="pt")
                ids = tokens["input_ids"].clone()
                ids[:, 0] = self.bos  # [CLS] -> [DEC]: answers start as the decoder starts
                self.answer_ids[i] = (ids.to(self.device), tokens["attention_mask"].to(self.device))

    def autocast(self):
        """bf16/fp16 on CPU runs as autocast over fp32 weights; GPUs hold weights in that dtype."""
        torch = self.torch
        if self.loaded.dtype in ("bfloat16", "float16") and self.device == "cpu":
            return torch.autocast("cpu", dtype=getattr(torch, self.loaded.dtype))
        return contextlib.nullcontext()

    def encode_images(self, pixel_values):
        pixel_values = pixel_values.to(self.device, dtype=next(self.model.parameters()).dtype)
        return self.model.vision_model(pixel_values=pixel_values).last_hidden_state

    def encode_question(self, index: int, image_embeds):
        """The question's text-encoder states over each image: (batch, tokens, width)."""
        torch = self.torch
        batch = image_embeds.shape[0]
        ids = self.question_ids[index].repeat(batch, 1)
        mask = torch.ones_like(ids)
        image_mask = torch.ones(image_embeds.shape[:2], dtype=torch.long, device=image_embeds.device)
        states = self.model.text_encoder(
            input_ids=ids, attention_mask=mask, encoder_hidden_states=image_embeds, encoder_attention_mask=image_mask
        ).last_hidden_state
        return states, mask

    def __call__(self, pixel_values) -> list[list[tuple[str, float]]]:
        """Per image, per question: (normalised answer, confidence)."""
        torch = self.torch
        rows: list[list[tuple[str, float]]] = []
        with torch.inference_mode(), self.autocast():
            image_embeds = self.encode_images(pixel_values)
            per_question = []
            for i in range(len(self.questions)):
                states, mask = self.encode_question(i, image_embeds)
                if i in self.answer_ids:
                    per_question.append(self.rank_answers(i, states, mask))
                else:
                    per_question.append(self.generate_answers(states, mask))
        for image in range(image_embeds.shape[0]):
            rows.append([answers[image] for answers in per_question])
        return rows

    def sequence_logprobs(self, states, mask, answer_ids, answer_mask):
        """Sum of the decoder's log-probabilities of each answer's tokens up to and including [SEP]."""
        logits = self.model.text_decoder(
            input_ids=answer_ids,
            attention_mask=answer_mask,
            encoder_hidden_states=states,
            encoder_attention_mask=mask,
        ).logits
        logprobs = logits[:, :-1].float().log_softmax(-1)
        targets = answer_ids[:, 1:]
        token = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        valid = answer_mask[:, 1:].to(token.dtype)
        return (token * valid).sum(1)

    def generate_answers(self, states, mask) -> list[tuple[str, float]]:
        torch = self.torch
        batch = states.shape[0]
        settings = self.settings
        bos = torch.full((batch, 1), self.bos, dtype=torch.long, device=states.device)
        sequences = self.model.text_decoder.generate(
            input_ids=bos,
            eos_token_id=self.eos,
            pad_token_id=self.pad,
            encoder_hidden_states=states,
            encoder_attention_mask=mask,
            max_new_tokens=self.max_new_tokens,
            num_beams=settings.num_beams if settings.strategy == "beam" else 1,
            do_sample=False,
        )
        if not torch.is_tensor(sequences):
            sequences = sequences.sequences
        # Up to and including the first [SEP]; an answer cut at max_new_tokens has none.
        is_end = sequences[:, 1:] == self.eos
        after_end = is_end.long().cumsum(1) - is_end.long()
        answer_mask = torch.cat([torch.ones_like(sequences[:, :1]), (after_end == 0).long()], dim=1)
        logprobs = self.sequence_logprobs(states, mask, sequences, answer_mask)
        texts = self.tokenizer.batch_decode(sequences[:, 1:] * (after_end == 0), skip_special_tokens=True)
        return [(normalize_answer(t), float(p)) for t, p in zip(texts, logprobs.exp().cpu().tolist())]

    def rank_answers(self, index: int, states, mask) -> list[tuple[str, float]]:
        """Ranks the question's candidates by log-likelihood, as BLIP's VQA evaluation does."""
        torch = self.torch
        answer_ids, answer_mask = self.answer_ids[index]
        candidates = self.questions[index].candidates
        batch, count = states.shape[0], answer_ids.shape[0]
        k = min(self.settings.top_k, count)
        if k < count:
            # BLIP's shortcut: only the k candidates whose first token is most likely are scored in full.
            bos = torch.full((batch, 1), self.bos, dtype=torch.long, device=states.device)
            first = self.model.text_decoder(
                input_ids=bos, encoder_hidden_states=states, encoder_attention_mask=mask
            ).logits[:, 0]
            first = first.float().log_softmax(-1)[:, answer_ids[:, 1]]  # (batch, count)
            top = first.topk(k, dim=1).indices  # (batch, k)
        else:
            top = torch.arange(count, device=states.device).expand(batch, count)
        flat = top.reshape(-1)
        scores = self.sequence_logprobs(
            states.repeat_interleave(k, dim=0),
            mask.repeat_interleave(k, dim=0),
            answer_ids[flat],
            answer_mask[flat],
        ).reshape(batch, k)
        probabilities = scores.softmax(-1)
        best = scores.argmax(-1)
        picked = top.gather(1, best[:, None]).squeeze(1).cpu().tolist()
        confidence = probabilities.gather(1, best[:, None]).squeeze(1).cpu().tolist()
        return [(candidates[i], float(c)) for i, c in zip(picked, confidence)]


# ---------------------------------------------------------------- storage and task


def wanted_fields(questions: list[Question]) -> dict:
    """The result set of `questions`: each question's field (and `{field}_confidence` for yes/no) with its type."""
    import fiftyone as fo

    wanted = {}
    for q in questions:
        if q.boolean:
            wanted[q.field] = fo.BooleanField
            wanted[f"{q.field}_confidence"] = fo.FloatField
        else:
            wanted[q.field] = (fo.EmbeddedDocumentField, {"embedded_doc_type": fo.Classification})
    return wanted


def question_descriptions(questions: list[Question]) -> dict[str, str]:
    """What each question's fields hold: the question, and how it was answered."""
    out = {}
    for q in questions:
        how = "yes/no" if q.boolean else "ranked among given answers" if q.answers else "free answer"
        if q.boolean:
            out[q.field] = f"BLIP's answer to {q.text!r} ({how}): True for yes"
            out[f"{q.field}_confidence"] = f"BLIP's probability of its answer to {q.text!r}"
        else:
            out[q.field] = f"BLIP's answer to {q.text!r} ({how}), with its probability as confidence"
    return out


def vqa_task(
    model,
    questions: list[Question],
    settings: VqaSettings | None = None,
    resize: str = "squash",
    fast_decode: bool = False,
):
    """An engine `Task` that answers `questions` about each image, one field per question.

    `model`: a `models.ModelReference` (loaded once the engine's checks pass)
    or a `LoadedModel`. Every question's field is in the task's result set;
    the error and run fields follow the first question's field, and the
    fingerprint covers every question, its field and candidate answers.
    """
    import fiftyone as fo

    from fiftyone_blip import engine

    settings = settings or VqaSettings()
    # questions and answers the model cannot read or write: refused before the weights load
    check_text_fits(questions, model.processor.tokenizer, model.config.text_config.max_position_embeddings)

    def bind():
        loaded = model.load()
        preprocess = loaded.preprocessor(resize, fast_decode)
        answerer = Answerer(loaded, questions, settings)  # checks lengths against the model's positions

        def prepare(path):
            return preprocess(path)[0]

        def step(inputs):
            out = []
            for answers in answerer(engine.to_batch(inputs, "cpu")):
                if any(not answer for q, (answer, _) in zip(questions, answers) if not q.candidates):
                    # a free answer that normalises to nothing ("the", ".") is no answer: an empty main
                    # value makes the whole sample an error entry ("empty output"), retried by the next run
                    out.append({questions[0].field: ""})
                    continue
                values = {}
                for q, (answer, confidence) in zip(questions, answers):
                    if q.boolean:
                        values[q.field] = answer == "yes"
                        values[f"{q.field}_confidence"] = confidence
                    else:
                        values[q.field] = fo.Classification(label=answer, confidence=confidence).to_mongo()
                out.append(values)
            return out

        return prepare, step

    return engine.Task(
        capability="vqa",
        field=questions[0].field,
        fields=wanted_fields(questions),
        settings={
            **settings.as_dict(),
            "resize": resize,
            "fast_decode": fast_decode,
            "questions": [q.as_dict() for q in questions],
        },
        identity=model.identity,
        bind=bind,
        descriptions=question_descriptions(questions),
    )


def ask(
    samples,
    questions: str | Sequence[str],
    fields: str | Sequence[str],
    answers=None,
    boolean: bool | Sequence[bool] = False,
    model: str | None = None,
    settings: VqaSettings | None = None,
    options=None,
):
    """Answers questions about every image of a collection, each into its own field.

    (`fiftyone_blip.ask` is the same with settings as keywords.)

    Args:
        samples: a FiftyOne dataset or view.
        questions: a question ("is it night?") or a list of them.
        fields: one field per question.
        answers: None (free generation), one list of candidate answers for
            all questions, or one list (or None) per question: the answer is
            the candidate the model finds most likely (None).
        boolean: True, or one flag per question: yes/no answers stored as a
            bool with `{field}_confidence` (False).
        model: a `BlipForQuestionAnswering` hub id, local directory or
            bundled name (None: the settings' model, else "Salesforce/blip-vqa-base").
        settings: a `VqaSettings` (None: greedy decoding).
        options: a `settings.RunOptions` (batch size, device, dtype, resize,
            shard, overwrite, progress).

    Returns:
        the engine's `RunSummary`.

    Raises:
        ValueError: an empty or too long question, duplicate or empty answers,
            a bad field; raised before any sample is touched.
        models.ModelLoadError: the model cannot be loaded.
    """
    from fiftyone_blip.settings import RunOptions

    settings = settings or VqaSettings()
    if model is not None:
        settings = settings.replace(model=model)
    return run(samples, make_questions(questions, fields, answers, boolean), settings, options or RunOptions())


def run(samples, questions: list[Question], settings: VqaSettings, options):
    """Answers checked `questions` (see `make_questions`) on the engine; see `fiftyone_blip.ask`."""
    from fiftyone_blip import engine

    return engine.run(samples, task_for(questions, settings, options), options)


def task_for(questions: list[Question], settings: VqaSettings, options):
    """The engine `Task` an ask run with these questions, settings and options would run (model not loaded)."""
    from fiftyone_blip import models

    model = models.reference_for(settings.model, "vqa", options)
    return vqa_task(model, questions, settings, options.resize, options.fast_decode)
