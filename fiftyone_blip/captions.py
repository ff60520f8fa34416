"""Generation settings and batch captioning.

`CaptionSettings` validates itself; `caption_task` turns a loaded captioner
and settings into an engine `Task` that writes, per sample:

- `{field}`: the caption (the prompt, if any, is not repeated in it);
- `{field}_confidence`: the geometric mean of the caption's token
  probabilities under the model (0..1; a ranking score, not calibrated);
- `{field}_candidates` (with `num_captions` > 1): an `fo.Classifications`, one
  `Classification` per distinct candidate caption, best first, its
  confidence the candidate's sequence score (see `Captioner`); the best one
  is also `{field}`;
- `{field}_forced` (with `force_words`): True where the forced words
  rewrote the caption (the model's own caption lacked one of them), else
  False; `run` counts them in its summary and run record;
- `{field}_error` / `{field}_run`: written by the engine.

Word constraints steer every decoding strategy: `ban_words` (never written),
`force_words` (every caption holds them) and `stop_strings` (the caption ends
before the first of them). transformers 5 moved constrained beam search
(`force_words_ids`) to hub code, which is never run here, so forced words are
this module's own search (`Captioner._place_forced_words`), as diverse beam
search is: a caption that lacks a forced word is written again with the word
at each word boundary, the model continuing after it, and the caption the
model scores highest is kept.
"""

from __future__ import annotations

import dataclasses
import math

from fiftyone_blip.engine import RunSummary
from fiftyone_blip.fields import check_field_name
from fiftyone_blip.settings import Settings, check_value, setting

STRATEGIES = ("greedy", "beam", "diverse-beam", "sample")
MAX_BEAMS = 10
MAX_NEW_TOKENS = 128
MAX_SEED = 2**63 - 1
MAX_CAPTIONS = 10
BASE_LANGUAGE = "en"


STRATEGY_LABELS = {
    "greedy": "Greedy",
    "beam": "Beam search",
    "diverse-beam": "Diverse beam search",
    "sample": "Sampling (random, from a seed)",
}
BEAM_STRATEGIES = ("beam", "diverse-beam")
DEFAULT_BEAMS = {"beam": 3, "diverse-beam": 4}


def default_field(language: str | None) -> str:
    """The caption field of a language: 'caption' for English, e.g. 'caption_de' or 'caption_pt_BR' for others."""
    if language is None or language == "en":
        return "caption"
    from fiftyone_blip.adapters.registry import check_language

    check_language(language)  # a bad code is named as such, not as a bad field name
    return f"caption_{str(language).replace('-', '_')}"


@dataclasses.dataclass
class CaptionSettings(Settings):
    """What `caption` writes and how captions are decoded; every field is an SDK keyword,
    a CLI option and an operator input (see `fiftyone_blip.settings`)."""

    model: str | None = setting(
        None,
        "a Hugging Face hub id, a model folder or 'shapes-tiny' (default: Salesforce/blip-image-captioning-base)",
        cli_flags=("-m",),
        envvar="FIFTYONE_BLIP_CAPTION_MODEL",
    )
    field: str | None = setting(
        None,
        "the field the caption is written to (default: 'caption', or 'caption_de' and so on for another language)",
        label="Caption field",
        cli_flags=("-f",),
    )
    strategy: str = setting(
        "greedy",
        "how captions are decoded",
        label="Decoding",
        choices=STRATEGIES,
        choice_labels=STRATEGY_LABELS,
        cli_flags=("-s",),
    )
    num_beams: int | None = setting(
        None,
        "how many captions beam search keeps growing side by side; more is slower and often better "
        "(default: 3 for beam search, 4 for diverse beam search)",
        label="Beams",
        min=1,
        max=MAX_BEAMS,
        form_when={"strategy": BEAM_STRATEGIES},
    )
    num_beam_groups: int = setting(
        2,
        "diverse beam search: groups of beams pushed apart from each other; the beams must split evenly into them",
        label="Beam groups",
        min=2,
        form_when={"strategy": ("diverse-beam",)},
    )
    diversity_penalty: float = setting(
        1.0,
        "diverse beam search: how strongly a group avoids the words earlier groups chose at the same place",
        min=0,
        form_when={"strategy": ("diverse-beam",)},
    )
    top_k: int = setting(
        50,
        "sampling: pick each word among this many of the likeliest; 0 allows every word",
        label="Top-k",
        min=0,
        form_when={"strategy": ("sample",)},
    )
    top_p: float = setting(
        1.0,
        "sampling: pick each word among the likeliest words that together hold this share of the probability "
        "(above 0, at most 1; 1 allows every word)",
        label="Top-p",
        min=0,
        max=1,
        min_exclusive=True,
        form_when={"strategy": ("sample",)},
    )
    temperature: float = setting(
        1.0,
        "sampling: above 1 picks unlikely words more often, below 1 less often",
        min=0,
        min_exclusive=True,
        form_when={"strategy": ("sample",)},
    )
    seed: int = setting(
        0,
        "sampling seed; the same seed, batch size and order give the same captions",
        form_when={"strategy": ("sample",)},
    )
    num_captions: int = setting(
        1,
        "candidate captions per image, from 1 to 10: the best beams (beam search; at most the beams), samples "
        "(sampling) or the best groups (diverse beam search; at most the groups); the best goes into the caption "
        "field, all of them into the field of the same name ending in '_candidates'",
        label="Captions per image",
        min=1,
        max=MAX_CAPTIONS,
        form_when={"strategy": ("beam", "diverse-beam", "sample")},
    )
    min_new_tokens: int = setting(1, "at least this many generated tokens", min=0, max=MAX_NEW_TOKENS, advanced=True)
    max_new_tokens: int = setting(30, "at most this many generated tokens", min=1, max=MAX_NEW_TOKENS, advanced=True)
    repetition_penalty: float = setting(
        1.0, "above 1 makes repeated words less likely", min=0, min_exclusive=True, advanced=True
    )
    no_repeat_ngram_size: int = setting(
        0,
        "no run of this many words appears twice in a caption; 0 is off",
        label="No-repeat n-gram size",
        min=0,
        advanced=True,
    )
    prompt: str | None = setting(
        None, "text the caption continues, e.g. 'a picture of'; not repeated in the stored caption", cli_flags=("-p",)
    )
    language: str | None = setting(
        None,
        "caption language: 'en' (or empty) for the model's own English, else the code of an installed language "
        "adapter (`fiftyone-blip adapters list` lists them)",
        cli_flags=("-l",),
    )
    ban_words: tuple[str, ...] | None = setting(
        None,
        "words or phrases a caption never holds, comma-separated, e.g. 'arafed, araffe'",
        label="Words to ban",
        advanced=True,
    )
    force_words: tuple[str, ...] | None = setting(
        None,
        "words or phrases every caption holds, comma-separated; a caption without them is written again "
        "with each where the model finds it likeliest, which takes longer",
        label="Words that must appear",
        advanced=True,
    )
    stop_strings: tuple[str, ...] | None = setting(
        None,
        "texts that end a caption, separated by '|', e.g. ', | and'; the caption is cut before the first one it holds",
        label="Stop strings",
        advanced=True,
    )

    def __post_init__(self):
        if self.field is None:
            self.field = default_field(self.language)
        if self.strategy not in STRATEGIES:
            raise ValueError(f"`strategy` must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.num_beams is None:
            self.num_beams = DEFAULT_BEAMS.get(self.strategy, 1)
        if not isinstance(self.num_beams, int) or not 1 <= self.num_beams <= MAX_BEAMS:
            raise ValueError(f"`num_beams` must be from 1 to {MAX_BEAMS}, got {self.num_beams!r}")
        if self.strategy in ("greedy", "sample") and self.num_beams != 1:
            raise ValueError(f"`num_beams` must be 1 with strategy {self.strategy!r}, got {self.num_beams}")
        if self.strategy == "diverse-beam":
            if self.num_beam_groups < 2 or self.num_beams % self.num_beam_groups:
                raise ValueError(
                    f"`num_beam_groups` must be >= 2 and divide `num_beams` ({self.num_beams}), "
                    f"got {self.num_beam_groups}"
                )
            if self.diversity_penalty < 0:
                raise ValueError(f"`diversity_penalty` must be at least 0, got {self.diversity_penalty}")
        for f in dataclasses.fields(self):
            if f.name not in ("num_beam_groups", "diversity_penalty", "min_new_tokens"):
                check_value(f.name, getattr(self, f.name), f.metadata)
        self._check_num_captions()
        if not math.isfinite(self.temperature):
            raise ValueError(f"`temperature` must be a finite number > 0, got {self.temperature}")
        # the seed is stored in run records (a BSON int64) and fed to torch.manual_seed
        if isinstance(self.seed, float) and self.seed.is_integer():
            self.seed = int(self.seed)  # a form's number field
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"`seed` must be a whole number from 0 to {MAX_SEED}, got {self.seed!r}")
        if not math.isfinite(self.repetition_penalty):
            raise ValueError(f"`repetition_penalty` must be a finite number > 0, got {self.repetition_penalty}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(
                f"`min_new_tokens` must be in 0..max_new_tokens ({self.max_new_tokens}), got {self.min_new_tokens}"
            )
        check_field_name(self.field)
        if self.prompt is not None:
            self.prompt = self.prompt.strip() or None
        if self.language == BASE_LANGUAGE:
            self.language = None
        self.ban_words = _text_list("ban_words", self.ban_words, ",")
        self.force_words = _text_list("force_words", self.force_words, ",")
        self.stop_strings = _text_list("stop_strings", self.stop_strings, "|", keep_spaces=True)
        _check_forced_not_banned(self.force_words or (), self.ban_words or ())
        if self.force_words and self.stop_strings:
            raise ValueError("`stop_strings` cannot be combined with `force_words`: a cut could drop a forced word")

    def _check_num_captions(self) -> None:
        n = self.num_captions
        if isinstance(n, float) and n.is_integer():
            self.num_captions = n = int(n)  # a form's number field
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CAPTIONS:
            raise ValueError(f"`num_captions` must be a whole number from 1 to {MAX_CAPTIONS}, got {n!r}")
        limit = {"greedy": 1, "beam": self.num_beams, "diverse-beam": self.num_beam_groups}.get(self.strategy)
        if limit is not None and n > limit:
            what = {"greedy": "greedy decoding writes one", "beam": "num_beams", "diverse-beam": "num_beam_groups"}
            raise ValueError(
                f"`num_captions` must be at most {limit} with strategy {self.strategy!r} "
                f"({what[self.strategy]}), got {n}"
            )

    def replace(self, **overrides):
        # num_beams follows the strategy unless it is given
        if "strategy" in overrides and "num_beams" not in overrides:
            overrides["num_beams"] = None
        return dataclasses.replace(self, **overrides)

    def as_dict(self) -> dict:
        """Only the settings that matter for the strategy (they form the run fingerprint)."""
        keep = {"strategy", "min_new_tokens", "max_new_tokens", "repetition_penalty", "no_repeat_ngram_size", "prompt"}
        if self.strategy != "greedy" and self.strategy != "sample":
            keep.add("num_beams")
        if self.strategy == "diverse-beam":
            keep |= {"num_beam_groups", "diversity_penalty"}
        if self.strategy == "sample":
            keep |= {"top_k", "top_p", "temperature", "seed"}
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name in keep}
        # constraints join the fingerprint only when set, so earlier runs' fingerprints stay valid
        for name in ("ban_words", "force_words", "stop_strings"):
            if getattr(self, name):
                values[name] = list(getattr(self, name))
        if self.num_captions > 1:
            values["num_captions"] = self.num_captions
        return values

    def generate_kwargs(self) -> dict:
        kwargs = dict(
            min_new_tokens=self.min_new_tokens,
            max_new_tokens=self.max_new_tokens,
            repetition_penalty=self.repetition_penalty,
            no_repeat_ngram_size=self.no_repeat_ngram_size,
            return_dict_in_generate=True,
        )
        if self.strategy == "sample":
            kwargs.update(do_sample=True, top_k=self.top_k, top_p=self.top_p, temperature=self.temperature)
        else:
            kwargs.update(do_sample=False, num_beams=self.num_beams)
        # logits give the confidence of greedy and sampled captions; beam search
        # scores its own (`sequences_scores`), which needs `output_scores`.
        kwargs.update(output_logits=True, output_scores=self.strategy in ("beam", "diverse-beam"))
        if self.strategy in ("beam", "diverse-beam"):
            # False: stop only when no running beam can still beat the finished ones. True
            # (stop once num_beams captions have ended) cut captions short: 0.963 vs greedy
            # 0.978 on held-out shapes; with False both score 0.978 (BENCHMARKS.md).
            kwargs["early_stopping"] = False
        return kwargs


def _check_forced_not_banned(force_words, ban_words) -> None:
    """Refuses a forced word or phrase that is banned or holds a banned one ('red circle' with 'circle'
    banned): no caption could hold it."""
    both = {w.casefold() for w in ban_words} & {w.casefold() for w in force_words}
    if both:
        raise ValueError(f"`force_words` and `ban_words` both hold {sorted(both)[0]!r}: a word cannot be both")
    for forced in force_words:
        words = forced.casefold().split()
        for banned in ban_words:
            run = banned.casefold().split()
            if any(words[i : i + len(run)] == run for i in range(len(words) - len(run) + 1)):
                raise ValueError(f"`force_words`: {forced!r} holds the banned {banned!r}: no caption could hold it")


def _text_list(name: str, value, separator: str, keep_spaces: bool = False) -> tuple[str, ...] | None:
    """A constraint's texts as a tuple: from a list, or from one text split at `separator` (CLI, forms).

    The parts of one text lose the spaces around them ("red, blue"); with
    `keep_spaces` the items of a list keep theirs (a stop string " and ").
    """
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        items = [item.strip() for item in value.split(separator)]
    elif isinstance(value, (list, tuple)):
        items = [item if keep_spaces or not isinstance(item, str) else item.strip() for item in value]
    else:
        raise ValueError(f"`{name}` must be a list of texts or one text separated by {separator!r}, got {value!r}")
    out = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"`{name}` must not hold an empty text, got {value!r}")
        if item not in out:
            out.append(item)
    return tuple(out)


def constraint_token_ids(settings: CaptionSettings, tokenizer, unk_token_id=None) -> dict:
    """Each banned and forced word as token ids; raises for a word the model cannot write.

    A word the tokenizer can only write with its unknown token ([UNK]) is
    outside the model's vocabulary: banning it would do nothing and forcing
    it would write [UNK].
    """
    return {
        name: vocabulary_token_ids(name, getattr(settings, name) or (), tokenizer, unk_token_id)
        for name in ("ban_words", "force_words")
    }


def vocabulary_token_ids(name: str, words, tokenizer, unk_token_id=None) -> list[list[int]]:
    """Each of `words` as the token ids the model writes it with; raises for a word it cannot write
    (one its tokenizer writes with [UNK], or as nothing). `name` is the setting, for the message.

    The one vocabulary check for words a user asks the model to write or avoid: caption
    constraints and `ask`'s candidate answers.
    """
    unk = tokenizer.unk_token_id if unk_token_id is None else unk_token_id
    ids = []
    for word in words:
        tokens = tokenizer(word, add_special_tokens=False)["input_ids"]
        if not tokens or (unk is not None and unk in tokens):
            raise ValueError(f"`{name}`: {word!r} is not in the model's vocabulary (it would be written as [UNK])")
        ids.append(list(tokens))
    return ids


def check_prompt_room(prompt_tokens: int, settings: CaptionSettings, positions: int) -> int:
    """How many tokens a caption may add after the prompt within the model's text positions.

    Raises:
        ValueError: the prompt, or the prompt and `min_new_tokens`, do not
            fit (checked once the tokenizer and config are known, before any
            sample is touched).
    """
    room = positions - prompt_tokens
    if room < 1:
        raise ValueError(
            f"`prompt` is {prompt_tokens} tokens (with the start token); the model reads at most {positions - 1}: "
            f"{settings.prompt!r}"
        )
    if settings.min_new_tokens > room:
        raise ValueError(
            f"`min_new_tokens` must be at most {room} with this prompt ({prompt_tokens} tokens of the model's "
            f"{positions} text positions), got {settings.min_new_tokens}"
        )
    return room


class DiversityLogitsProcessor:
    """Hamming diversity for one beam group (Vijayakumar et al., 2018).

    transformers 5 moved group beam search to hub code, which is never trusted
    here; so diverse beam search runs the groups one after another, each an
    ordinary beam search, and group g is penalised at step t for every token
    the earlier groups' finished captions hold at step t.
    """

    def __init__(self, earlier_tokens, prompt_length: int, penalty: float, beams_per_group: int):
        self.earlier = earlier_tokens  # (batch, groups_so_far, length), or None
        self.prompt_length = prompt_length
        self.penalty = penalty
        self.beams = beams_per_group

    def __call__(self, input_ids, scores):
        if self.earlier is None:
            return scores
        step = input_ids.shape[1] - self.prompt_length
        if step >= self.earlier.shape[2]:
            return scores
        tokens = self.earlier[:, :, step]  # (batch, groups_so_far)
        tokens = tokens.repeat_interleave(self.beams, dim=0)  # one row per beam
        penalty = scores.new_zeros(scores.shape)
        penalty.scatter_add_(1, tokens, scores.new_full(tokens.shape, self.penalty))
        return scores - penalty


def _holds(sequence: list, word: list) -> bool:
    n = len(word)
    return any(sequence[i : i + n] == word for i in range(len(sequence) - n + 1))


class ForcedWordsLogitsProcessor:
    """Every caption holds the forced words (token sequences): the continuations of the placement search.

    While a caption lacks one, it cannot end: where the model would end it
    (end-of-text is its best next token), or where only the room the forced
    words need is left, the next missing word is written, token by token.
    Elsewhere nothing changes.

    The rows a beam search reorders are recognised by their tokens, so a word
    being written is finished in whichever row its beam moved to.
    """

    def __init__(self, words: list[list[int]], prompt_length: int, max_new_tokens: int, eos: int, beams: int):
        self.words = words
        self.prompt_length = prompt_length
        self.max_new_tokens = max_new_tokens
        self.eos = eos
        self.beams = max(beams, 1)
        self.writing = {}  # (image, tokens so far) -> the word's tokens still to write

    def __call__(self, input_ids, scores):
        rows = input_ids[:, self.prompt_length :].tolist()
        best = scores.argmax(-1).tolist()
        left = self.max_new_tokens - (input_ids.shape[1] - self.prompt_length)
        for row, generated in enumerate(rows):
            if self.eos in generated:
                continue
            missing = [w for w in self.words if not _holds(generated, w)]
            if not missing:
                continue
            key = (row // self.beams, tuple(generated))
            pending = self.writing.pop(key, None)
            if pending is None and (best[row] == self.eos or left <= sum(len(w) for w in missing)):
                pending = missing[0]
            if pending is None:
                scores[row, self.eos] = -float("inf")
                continue
            token = pending[0]
            value = scores[row, token]
            scores[row] = -float("inf")
            scores[row, token] = value if bool(value.isfinite()) else 0.0
            if len(pending) > 1:
                self.writing[(row // self.beams, (*generated, token))] = pending[1:]
        return scores


class StopStringsLogitsProcessor:
    """Ends a caption once its text holds a stop string (the text is cut before it afterwards).

    The text is checked decoded, not token by token, so a stop string that
    spans tokens or word pieces is found; ending through end-of-text works
    alike for greedy, beam and sampled captions.
    """

    def __init__(self, tokenizer, stop_strings: tuple[str, ...], prompt_length: int, eos: int):
        self.tokenizer = tokenizer
        self.stop_strings = stop_strings
        self.prompt_length = prompt_length
        self.eos = eos

    def __call__(self, input_ids, scores):
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=True)
        for row, text in enumerate(texts):
            if any(stop in text for stop in self.stop_strings):
                value = scores[row, self.eos]
                scores[row] = -float("inf")
                scores[row, self.eos] = value if bool(value.isfinite()) else 0.0
        return scores


def cut_at_stop(text: str, stop_strings) -> str:
    """`text` up to the first stop string it holds (all of it when it holds none)."""
    cuts = [text.find(stop) for stop in stop_strings or () if stop in text]
    return text[: min(cuts)].strip() if cuts else text


class Captioner:
    """Captions batches of preprocessed images with one loaded model."""

    def __init__(self, loaded, settings: CaptionSettings, tokenizer=None):
        import torch

        self.loaded = loaded
        self.settings = settings
        self.model = loaded.model
        # A language adapter brings its own tokenizer (see `fiftyone_blip.adapters`).
        self.tokenizer = tokenizer if tokenizer is not None else loaded.processor.tokenizer
        self.device = loaded.device
        text_config = self.model.config.text_config
        self.eos = text_config.sep_token_id
        self.pad = text_config.pad_token_id
        if settings.prompt:
            ids = self.tokenizer(settings.prompt, return_tensors="pt")["input_ids"]
            ids[:, 0] = text_config.bos_token_id
            self.prompt_ids = ids[:, :-1]  # drop [SEP]: the caption continues the prompt
        else:
            self.prompt_ids = torch.tensor([[text_config.bos_token_id]])
        self.room = check_prompt_room(self.prompt_ids.shape[1], settings, text_config.max_position_embeddings)
        self.torch = torch
        words = constraint_token_ids(settings, self.tokenizer)
        self.ban_ids, self.force_ids = words["ban_words"], words["force_words"]
        self._pieces = None  # the tokenizer's word-continuing pieces ("##..."), read when first needed
        needed = sum(len(w) for w in self.force_ids)
        room = min(settings.max_new_tokens, self.room)
        if needed > room:
            raise ValueError(
                f"`force_words` need {needed} tokens; a caption here holds at most {room} (`max_new_tokens`)"
            )

    def __call__(self, pixel_values) -> list[dict]:
        """One row per image: its best caption and confidence, whether forced words rewrote that caption
        (`forced`), and with `num_captions` > 1 its distinct candidates best first, (caption, confidence)
        pairs."""
        torch = self.torch
        count = self.settings.num_captions
        with torch.inference_mode(), self.loaded.autocast():
            image_embeds = self.loaded.image_embeds(pixel_values)
            if self.settings.strategy == "diverse-beam":
                sequences, confidences = self._diverse(image_embeds, count)
            else:
                kwargs = self.settings.generate_kwargs()
                if count > 1:
                    kwargs["num_return_sequences"] = count
                sequences, confidences = self._generate(image_embeds, kwargs)
            rewritten = [False] * len(sequences)
            if self.force_ids:
                # a candidate row per (image, candidate): each row reads its own image
                rows_embeds = image_embeds.repeat_interleave(count, dim=0) if count > 1 else image_embeds
                sequences, confidences, rewritten = self._place_forced_words(rows_embeds, sequences, confidences)
        prompt_length = self.prompt_ids.shape[1]
        captions = self.tokenizer.batch_decode(sequences[:, prompt_length:], skip_special_tokens=True)
        captions = [cut_at_stop(text.strip(), self.settings.stop_strings) for text in captions]
        confidences = [float(conf) for conf in confidences]
        out = []
        for start in range(0, len(captions), count):
            # the model's best first (sampled candidates come unordered); a repeated text counts once
            rows = zip(captions[start : start + count], confidences[start : start + count])
            ranked = sorted(zip(rows, rewritten[start : start + count]), key=lambda c: -c[0][1])
            forced = ranked[0][1]
            ranked = [pair for pair, _ in ranked]
            distinct = list({text: (text, conf) for text, conf in reversed(ranked)}.values())[::-1]
            row = {"caption": ranked[0][0], "confidence": ranked[0][1], "forced": forced}
            if count > 1:
                row["candidates"] = distinct
            out.append(row)
        return out

    def constraint_processors(self, prompt_length: int, max_new_tokens: int, beams: int, force: bool) -> list:
        """The logits processors of the settings' stop strings and, with `force`, forced words (banned
        words go to generate's own `bad_words_ids`)."""
        processors = []
        if force and self.force_ids:
            processors.append(
                ForcedWordsLogitsProcessor(self.force_ids, prompt_length, max_new_tokens, self.eos, beams)
            )
        if self.settings.stop_strings:
            processors.append(
                StopStringsLogitsProcessor(self.tokenizer, self.settings.stop_strings, prompt_length, self.eos)
            )
        return processors

    def _generate(self, image_embeds, kwargs, logits_processor=None, prefix=None):
        """Captions continuing the prompt; with `prefix` (caption tokens, one row per image), continuing
        it, forced words written before the end."""
        from transformers import LogitsProcessorList

        torch = self.torch
        batch = image_embeds.shape[0]
        input_ids = self.prompt_ids.to(self.device).repeat(batch, 1)
        prompt_length = input_ids.shape[1]
        written = 0 if prefix is None else prefix.shape[1]
        if written:
            input_ids = torch.cat([input_ids, prefix.to(self.device)], dim=1)
        # a caption stops where the model's text positions end (beyond them, generate fails)
        room = min(kwargs["max_new_tokens"], self.room)
        if written >= room:  # the prefix fills the caption: nothing is left to generate
            return input_ids, None
        kwargs = {**kwargs, "max_new_tokens": room - written}
        if kwargs.get("min_new_tokens"):
            kwargs["min_new_tokens"] = max(0, kwargs["min_new_tokens"] - written)
        if self.ban_ids:
            kwargs["bad_words_ids"] = self.ban_ids
        constraints = self.constraint_processors(
            prompt_length, room, kwargs.get("num_beams") or 1, force=prefix is not None
        )
        if constraints:
            logits_processor = LogitsProcessorList([*(logits_processor or []), *constraints])
        # Sampling is seeded per batch, on a forked RNG so the caller's random state is left alone.
        cuda = [self.device] if str(self.device).startswith("cuda") else []
        with torch.random.fork_rng(devices=cuda, enabled=self.settings.strategy == "sample"):
            if self.settings.strategy == "sample":
                torch.manual_seed(self.settings.seed)
            out = self.model.text_decoder.generate(
                input_ids=input_ids,
                eos_token_id=self.eos,
                pad_token_id=self.pad,
                encoder_hidden_states=image_embeds,
                encoder_attention_mask=torch.ones(image_embeds.shape[:2], dtype=torch.long, device=self.device),
                logits_processor=logits_processor,
                **kwargs,
            )
        sequences = out.sequences
        if getattr(out, "sequences_scores", None) is not None:
            # beam search: length-normalised sum of token log-probabilities
            return sequences, out.sequences_scores.float().exp().cpu().numpy()
        return sequences, self._confidence(sequences, torch.stack(out.logits, dim=1), input_ids.shape[1])

    def _confidence(self, sequences, logits, prompt_length):
        """Geometric mean of raw-model token probabilities up to and including [SEP].

        `logits`: (batch, steps, vocab), step i's predicting `sequences[:, prompt_length + i]`."""
        total, count = self._logprob(sequences, logits, prompt_length)
        return (total / count).exp().cpu().numpy()

    def _logprob(self, sequences, logits, prompt_length):
        """The captions' summed raw-model token log-probabilities up to and including [SEP], and their
        token counts."""
        logprobs = logits.float().log_softmax(-1)
        generated = sequences[:, prompt_length:]
        token_logprobs = logprobs.gather(-1, generated.unsqueeze(-1)).squeeze(-1)
        # steps after the first [SEP] are padding
        after_end = (generated == self.eos).long().cumsum(1) - (generated == self.eos).long()
        valid = (after_end == 0).float()
        return (token_logprobs * valid).sum(1), valid.sum(1).clamp(min=1)

    def _caption_logits(self, image_embeds, sequences):
        """Raw-model logits of `sequences`' caption steps in one teacher-forced pass: step t predicts
        caption token t (after the prompt); the last step predicts the token after the sequence."""
        torch = self.torch
        logits = self.model.text_decoder(
            input_ids=sequences,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=torch.ones(image_embeds.shape[:2], dtype=torch.long, device=self.device),
        ).logits
        return logits[:, self.prompt_ids.shape[1] - 1 :]

    def _score(self, image_embeds, sequences):
        """Finished captions' log-probabilities and confidences (`_logprob`, `_confidence`)."""
        logits = self._caption_logits(image_embeds, sequences)[:, :-1]
        total, count = self._logprob(sequences, logits, self.prompt_ids.shape[1])
        return total.tolist(), (total / count).exp().tolist()

    def _caption_tokens(self, sequence) -> list:
        """A generated sequence's caption tokens: after the prompt, before [SEP]."""
        tokens = sequence[self.prompt_ids.shape[1] :].tolist()
        return tokens[: tokens.index(self.eos)] if self.eos in tokens else tokens

    def _place_forced_words(self, image_embeds, sequences, confidences):
        """Each caption that lacks a forced word, written again with the word where the model likes it best.

        For a word boundary of the caption (its start, between two words, its
        end), a candidate is the caption up to there, then the word, then the
        model's own continuation with this run's decoding (which may drop what
        the word replaces: "a blue diamond" becomes "a blue star", not "...
        diamond star"; any other missing forced word is written before it
        ends). The candidate the model finds likeliest (the sum of its token
        log-probabilities: the likeliest caption that holds the word; a
        per-token mean would favour long captions that dilute the forced
        word's improbability) is kept, with its confidence.

        Not every boundary is decoded: a candidate cannot be likelier than its
        prefix followed by the word's first token, read for every boundary in
        one pass over the caption, so boundaries are tried best bound first
        and the rest are skipped once none can beat the best candidate (the
        same choice as trying them all, for greedy and beam decoding; sampled
        continuations depend on the batch they are drawn in). Captions that
        hold the words stay as written. Returns the sequences, their
        confidences and, per row, whether it was written again.
        """
        torch = self.torch
        room = min(self.settings.max_new_tokens, self.room)
        kwargs = self.settings.generate_kwargs()
        if self.settings.strategy == "diverse-beam":
            kwargs["num_beams"] = self.settings.num_beams // self.settings.num_beam_groups
        rows = [self._caption_tokens(sequence) for sequence in sequences]
        confidences = [float(c) for c in confidences]
        rewritten = [False] * len(rows)
        for word in self.force_ids:
            others = sum(len(w) for w in self.force_ids if w is not word)
            missing = [i for i, tokens in enumerate(rows) if not _holds(tokens, word)]
            if not missing:
                continue
            last_cut = room - len(word) - others
            bounds = self._cut_bounds(image_embeds[missing], [rows[i] for i in missing], word[0])
            queue = {
                i: sorted(
                    (
                        (cut, bound)
                        for cut, bound in enumerate(row_bounds[: last_cut + 1])
                        if self._word_boundary(rows[i], cut)
                    ),
                    key=lambda item: -item[1],
                )
                for i, row_bounds in zip(missing, bounds)
            }
            best = {i: (-math.inf, None, None) for i in missing}
            while True:
                # each caption's most promising boundary not yet tried, while it can still win
                picks = {i: queue[i].pop(0)[0] for i in missing if queue[i] and queue[i][0][1] > best[i][0]}
                if not picks:
                    break
                for cut in sorted(set(picks.values())):
                    members = [i for i, c in picks.items() if c == cut]
                    prefix = torch.tensor([rows[i][:cut] + word for i in members])
                    candidates, _ = self._generate(image_embeds[members], kwargs, prefix=prefix)
                    logprobs, confidence = self._score(image_embeds[members], candidates)
                    for i, candidate, logprob, conf in zip(members, candidates, logprobs, confidence):
                        if logprob > best[i][0]:
                            best[i] = (logprob, self._caption_tokens(candidate), conf)
            for i, (_, tokens, conf) in best.items():
                rows[i], confidences[i], rewritten[i] = tokens, conf, True
        return self._sequences(rows, self.eos), confidences, rewritten

    def _sequences(self, rows: list, end: int):
        """The prompt, then each row's caption tokens, then `end`, padded into one tensor."""
        width = max(len(tokens) for tokens in rows) + 1
        prompt = self.prompt_ids[0].tolist()
        return self.torch.tensor([prompt + tokens + [end] + [self.pad] * (width - len(tokens) - 1) for tokens in rows])

    def _cut_bounds(self, image_embeds, rows: list, first_token: int) -> list:
        """Per caption and cut (0..its length): the log-probability of its tokens before the cut plus that
        of `first_token` at the cut, read in one teacher-forced pass."""
        torch = self.torch
        sequences = self._sequences(rows, self.pad).to(self.device)  # the last step predicts after the caption
        logprobs = self._caption_logits(image_embeds, sequences).float().log_softmax(-1)
        start = self.prompt_ids.shape[1]
        taken = logprobs[:, :-1].gather(-1, sequences[:, start:, None]).squeeze(-1)
        before = torch.cat([taken.new_zeros(len(rows), 1), taken.cumsum(1)], dim=1)
        bounds = (before + logprobs[:, :, first_token]).cpu().tolist()
        return [row_bounds[: len(tokens) + 1] for row_bounds, tokens in zip(bounds, rows)]

    def _word_boundary(self, tokens: list, cut: int) -> bool:
        """Whether `cut` falls between two words of `tokens` (not inside a word's WordPiece pieces)."""
        if cut == len(tokens):
            return True
        if self._pieces is None:
            self._pieces = {i for token, i in self.tokenizer.get_vocab().items() if token.startswith("##")}
        return tokens[cut] not in self._pieces

    def _diverse(self, image_embeds, count: int = 1):
        """Diverse beam search: per image, the `count` groups whose captions the model scores highest,
        best first (`count` rows per image)."""
        torch = self.torch
        from transformers import LogitsProcessorList

        groups = self.settings.num_beam_groups
        beams = self.settings.num_beams // groups
        kwargs = self.settings.generate_kwargs()
        kwargs["num_beams"] = beams
        prompt_length = self.prompt_ids.shape[1]
        found, earlier = [], None
        for _ in range(groups):
            processor = DiversityLogitsProcessor(earlier, prompt_length, self.settings.diversity_penalty, beams)
            sequences, scores = self._generate(image_embeds, kwargs, LogitsProcessorList([processor]))
            generated = sequences[:, prompt_length:]
            earlier = generated.unsqueeze(1) if earlier is None else _cat_padded(torch, earlier, generated, self.pad)
            found.append((sequences, torch.as_tensor(scores)))
        width = max(sequences.shape[1] for sequences, _ in found)
        # (images, groups, width) and (images, groups); a stable sort keeps the earlier group on a tie
        all_sequences = torch.stack([_pad_to(torch, s.cpu(), width, self.pad) for s, _ in found], dim=1)
        all_scores = torch.stack([scores.float() for _, scores in found], dim=1)
        order = torch.sort(-all_scores, dim=1, stable=True).indices[:, :count]
        best_sequences = all_sequences.gather(1, order[:, :, None].expand(-1, -1, width)).reshape(-1, width)
        best_scores = all_scores.gather(1, order).reshape(-1)
        return best_sequences.to(image_embeds.device), best_scores.numpy()


def _pad_to(torch, tensor, width: int, pad: int):
    return torch.nn.functional.pad(tensor, (0, width - tensor.shape[1]), value=pad)


def _cat_padded(torch, earlier, generated, pad: int):
    width = max(earlier.shape[2], generated.shape[1])
    earlier = torch.nn.functional.pad(earlier, (0, width - earlier.shape[2]), value=pad)
    generated = _pad_to(torch, generated, width, pad)
    return torch.cat([earlier, generated.unsqueeze(1)], dim=1)


def candidate_labels(candidates):
    """(caption, score) pairs as an `fo.Classifications` the App shows and filters: one label per caption."""
    import fiftyone as fo

    return fo.Classifications(
        classifications=[fo.Classification(label=text, confidence=float(score)) for text, score in candidates]
    )


def caption_task(
    model,
    settings: CaptionSettings,
    field: str = "caption",
    resize: str = "squash",
    language: str | None = None,
    fast_decode: bool = False,
):
    """An engine `Task` that captions images into `field` and `{field}_confidence`.

    `model`: a `models.ModelReference` (loaded once the engine's checks pass)
    or a `LoadedModel`. `language`: None or "en" for the model's own captions,
    else the code of an installed language adapter (`fiftyone_blip.adapters`),
    active for each step.
    """
    import fiftyone as fo

    from fiftyone_blip import adapters, engine

    confidence_field = f"{field}_confidence"
    candidates_field = f"{field}_candidates"
    forced_field = forced_field_of(field)
    several, forcing = settings.num_captions > 1, bool(settings.force_words)
    adapter_identity = adapters.identity(model, language)  # no adapter fits: refused before the model loads
    if not adapter_identity and (settings.ban_words or settings.force_words):
        constraint_token_ids(settings, model.processor.tokenizer)  # words it cannot write: refused before loading

    def bind():
        loaded = model.load()
        tokenizer, _identity, activate = adapters.prepare(loaded, language)
        preprocess = loaded.preprocessor(resize, fast_decode)
        captioner = Captioner(loaded, settings, tokenizer=tokenizer)

        def prepare(path):
            return preprocess.pixels(path)[0]  # uint8: normalised on the model's device in `step`

        def step(inputs):
            with activate():
                rows = captioner(preprocess.to_pixel_values(inputs, loaded.device))
            out = [{field: row["caption"], confidence_field: row["confidence"]} for row in rows]
            if forcing:
                for values, row in zip(out, rows):
                    values[forced_field] = row["forced"]
            if several:
                for values, row in zip(out, rows):
                    values[candidates_field] = candidate_labels(row["candidates"]).to_mongo()
            return out

        return prepare, step

    fields = {field: fo.StringField, confidence_field: fo.FloatField}
    descriptions = {}
    if forcing:
        fields[forced_field] = fo.BooleanField
        descriptions[forced_field] = (
            f"True where the forced words rewrote {field!r}: the model's own caption lacked one of them"
        )
    if several:
        fields[candidates_field] = (fo.EmbeddedDocumentField, {"embedded_doc_type": fo.Classifications})
        descriptions[candidates_field] = (
            f"the {settings.num_captions} candidate captions of the image (distinct ones, best first; "
            f"{field!r} holds the first), each with its sequence score as confidence"
        )
    return engine.Task(
        capability="caption",
        field=field,
        fields=fields,
        settings={**settings.as_dict(), "resize": resize, "fast_decode": fast_decode},
        identity={**model.identity, **adapter_identity},
        bind=bind,
        # an earlier run's candidates and forced-word marks go with its captions
        siblings=(() if several else (candidates_field,)) + (() if forcing else (forced_field,)),
        descriptions={
            field: f"caption of the image by BLIP ({language or 'en'}), {settings.strategy} decoding",
            confidence_field: f"confidence of {field!r}: geometric mean of its token probabilities under the model",
            **descriptions,
        },
    )


def task_for(settings: CaptionSettings, options):
    """The engine `Task` a caption run with these settings and options would run (its model not loaded)."""
    from fiftyone_blip import models

    model = models.reference_for(settings.model, "caption", options)
    return caption_task(model, settings, settings.field, options.resize, settings.language, options.fast_decode)


def forced_field_of(field: str) -> str:
    """The field that marks the captions of `field` that forced words rewrote."""
    return f"{field}_forced"


@dataclasses.dataclass
class CaptionSummary(RunSummary):
    """A caption run's `engine.RunSummary`, with what forced words did.

    rewritten: with `force_words`, the captions in the view, stored with this
        run's model and settings, that the forced words rewrote (their
        `{field}_forced` is True); None without forced words.
    off_form: for a bundled shapes model in English, those of the same
        captions that are not in the shapes caption form ("a COLOUR KIND
        POSITION" phrases, `shapes.is_english_caption`); None otherwise.
    """

    rewritten: int | None = None
    off_form: int | None = None

    def __str__(self) -> str:
        notes = []
        if self.rewritten is not None:
            notes.append(f"{self.rewritten} rewritten by the forced words")
        if self.off_form is not None:
            notes.append(f"{self.off_form} not in the shapes caption form")
        return super().__str__() + (f" ({'; '.join(notes)})" if notes else "")


def forced_counts(samples, task, settings: CaptionSettings) -> tuple[int, int | None]:
    """(rewritten, off_form) of `CaptionSummary`, counted from what is stored in `samples`."""
    from fiftyone import ViewField as F

    from fiftyone_blip import models
    from fiftyone_blip.shapes.data import is_english_caption

    stored = samples.match(F(task.run_field) == task.run_stamp)
    rewritten = stored.match(F(forced_field_of(task.field)) == True).count()  # noqa: E712
    if settings.model not in models.BUNDLED or settings.language not in (None, BASE_LANGUAGE):
        return rewritten, None
    texts = stored.values(task.field)
    return rewritten, sum(1 for text in texts if text is not None and not is_english_caption(text))


def run(samples, settings: CaptionSettings, options):
    """Captions `samples` on the engine; see `fiftyone_blip.caption`. With forced words, the summary and
    the run's record count the captions they rewrote (and, for a shapes model, those out of form)."""
    from fiftyone_blip import engine
    from fiftyone_blip import run_records as runs

    task = task_for(settings, options)
    summary = engine.run(samples, task, options)
    if not settings.force_words:
        return summary
    rewritten, off_form = forced_counts(samples, task, settings)
    runs.entry(samples._dataset, task.capability, task.field, summary.run_id).update(
        forced_rewritten=rewritten, off_form=off_form
    )
    return CaptionSummary(**dataclasses.asdict(summary), rewritten=rewritten, off_form=off_form)
