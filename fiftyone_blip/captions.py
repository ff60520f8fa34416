"""Generation settings and batch captioning.

`CaptionSettings` validates itself; `caption_task` turns a loaded captioner
and settings into an engine `Task` that writes, per sample:

- `{field}`: the caption (the prompt, if any, is not repeated in it);
- `{field}_confidence`: the geometric mean of the caption's token
  probabilities under the model (0..1; a ranking score, not calibrated);
- `{field}_error` / `{field}_run`: written by the engine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

STRATEGIES = ("greedy", "beam", "diverse-beam", "sample")
MAX_BEAMS = 10
MAX_NEW_TOKENS = 128
MAX_SEED = 2**63 - 1


@dataclasses.dataclass
class CaptionSettings:
    """How captions are decoded.

    Attributes:
        strategy: "greedy", "beam", "diverse-beam" or "sample" ("greedy").
        num_beams: beams for beam strategies, 1..10 (3 for "beam", 4 for
            "diverse-beam"; must be 1 for greedy and sample).
        num_beam_groups: groups for "diverse-beam"; must divide num_beams (2).
        diversity_penalty: "diverse-beam" penalty on tokens that earlier
            groups chose at the same step (1.0).
        top_k: "sample": keep the k most likely tokens; 0 keeps all (50).
        top_p: "sample": nucleus probability mass, in (0, 1] (1.0).
        temperature: "sample": softmax temperature, > 0 (1.0).
        seed: "sample": random seed; the same seed, batch size and order
            give the same captions (0).
        min_new_tokens: at least this many generated tokens (1).
        max_new_tokens: at most this many generated tokens, 1..128 (30).
        repetition_penalty: > 0; above 1 discourages repeats (1.0).
        no_repeat_ngram_size: forbid repeating n-grams of this size; 0 is off (0).
        prompt: text the caption continues, e.g. "a picture of" (None). It is
            not repeated in the stored caption.
    """

    strategy: str = "greedy"
    num_beams: int | None = None
    num_beam_groups: int = 2
    diversity_penalty: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    temperature: float = 1.0
    seed: int = 0
    min_new_tokens: int = 1
    max_new_tokens: int = 30
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    prompt: str | None = None

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"`strategy` must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.num_beams is None:
            self.num_beams = {"beam": 3, "diverse-beam": 4}.get(self.strategy, 1)
        if not isinstance(self.num_beams, int) or not 1 <= self.num_beams <= MAX_BEAMS:
            raise ValueError(f"`num_beams` must be in 1..{MAX_BEAMS}, got {self.num_beams!r}")
        if self.strategy in ("greedy", "sample") and self.num_beams != 1:
            raise ValueError(f"`num_beams` must be 1 with strategy {self.strategy!r}, got {self.num_beams}")
        if self.strategy == "diverse-beam":
            if self.num_beam_groups < 2 or self.num_beams % self.num_beam_groups:
                raise ValueError(
                    f"`num_beam_groups` must be >= 2 and divide `num_beams` ({self.num_beams}), "
                    f"got {self.num_beam_groups}"
                )
            if self.diversity_penalty < 0:
                raise ValueError(f"`diversity_penalty` must be >= 0, got {self.diversity_penalty}")
        if self.top_k < 0:
            raise ValueError(f"`top_k` must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"`top_p` must be in (0, 1], got {self.top_p}")
        if not math.isfinite(self.temperature) or self.temperature <= 0:
            raise ValueError(f"`temperature` must be a finite number > 0, got {self.temperature}")
        # the seed is stored in run records (a BSON int64) and fed to torch.manual_seed
        if isinstance(self.seed, float) and self.seed.is_integer():
            self.seed = int(self.seed)  # a form's number field
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"`seed` must be an integer in 0..{MAX_SEED}, got {self.seed!r}")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise ValueError(f"`max_new_tokens` must be in 1..{MAX_NEW_TOKENS}, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(
                f"`min_new_tokens` must be in 0..max_new_tokens ({self.max_new_tokens}), got {self.min_new_tokens}"
            )
        if not math.isfinite(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise ValueError(f"`repetition_penalty` must be a finite number > 0, got {self.repetition_penalty}")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"`no_repeat_ngram_size` must be >= 0, got {self.no_repeat_ngram_size}")
        if self.prompt is not None:
            self.prompt = self.prompt.strip() or None

    def as_dict(self) -> dict:
        """Only the settings that matter for the strategy (they form the run fingerprint)."""
        keep = {"strategy", "min_new_tokens", "max_new_tokens", "repetition_penalty", "no_repeat_ngram_size", "prompt"}
        if self.strategy != "greedy" and self.strategy != "sample":
            keep.add("num_beams")
        if self.strategy == "diverse-beam":
            keep |= {"num_beam_groups", "diversity_penalty"}
        if self.strategy == "sample":
            keep |= {"top_k", "top_p", "temperature", "seed"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k in keep}

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
            kwargs["early_stopping"] = True
        return kwargs


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

    def autocast(self):
        """bf16/fp16 on CPU runs as autocast over fp32 weights; GPUs hold weights in that dtype."""
        torch = self.torch
        if self.loaded.dtype in ("bfloat16", "float16") and self.device == "cpu":
            return torch.autocast("cpu", dtype=getattr(torch, self.loaded.dtype))
        return contextlib.nullcontext()

    def __call__(self, pixel_values) -> list[dict]:
        torch = self.torch
        with torch.inference_mode(), self.autocast():
            pixel_values = pixel_values.to(self.device, dtype=next(self.model.parameters()).dtype)
            image_embeds = self.model.vision_model(pixel_values=pixel_values).last_hidden_state
            if self.settings.strategy == "diverse-beam":
                sequences, confidences = self._diverse(image_embeds)
            else:
                sequences, confidences = self._generate(image_embeds, self.settings.generate_kwargs())
        prompt_length = self.prompt_ids.shape[1]
        captions = self.tokenizer.batch_decode(sequences[:, prompt_length:], skip_special_tokens=True)
        return [{"caption": text.strip(), "confidence": float(conf)} for text, conf in zip(captions, confidences)]

    def _generate(self, image_embeds, kwargs, logits_processor=None):
        torch = self.torch
        batch = image_embeds.shape[0]
        input_ids = self.prompt_ids.to(self.device).repeat(batch, 1)
        # a caption stops where the model's text positions end (beyond them, generate fails)
        kwargs = {**kwargs, "max_new_tokens": min(kwargs["max_new_tokens"], self.room)}
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
        return sequences, self._confidence(sequences, out.logits, input_ids.shape[1])

    def _confidence(self, sequences, logits, prompt_length):
        """Geometric mean of raw-model token probabilities up to and including [SEP]."""
        torch = self.torch
        logprobs = torch.stack(logits, dim=1).float().log_softmax(-1)  # (batch, steps, vocab)
        generated = sequences[:, prompt_length:]
        token_logprobs = logprobs.gather(-1, generated.unsqueeze(-1)).squeeze(-1)
        # steps after the first [SEP] are padding
        after_end = (generated == self.eos).long().cumsum(1) - (generated == self.eos).long()
        valid = (after_end == 0).float()
        mean = (token_logprobs * valid).sum(1) / valid.sum(1).clamp(min=1)
        return mean.exp().cpu().numpy()

    def _diverse(self, image_embeds):
        torch = self.torch
        from transformers import LogitsProcessorList

        groups = self.settings.num_beam_groups
        beams = self.settings.num_beams // groups
        kwargs = self.settings.generate_kwargs()
        kwargs["num_beams"] = beams
        prompt_length = self.prompt_ids.shape[1]
        best_sequences, best_scores, earlier = None, None, None
        for _ in range(groups):
            processor = DiversityLogitsProcessor(earlier, prompt_length, self.settings.diversity_penalty, beams)
            sequences, scores = self._generate(image_embeds, kwargs, LogitsProcessorList([processor]))
            generated = sequences[:, prompt_length:]
            earlier = generated.unsqueeze(1) if earlier is None else _cat_padded(torch, earlier, generated, self.pad)
            if best_sequences is None:
                best_sequences, best_scores = sequences, torch.as_tensor(scores)
            else:
                # keep, per image, the group whose caption the model scores highest
                scores = torch.as_tensor(scores)
                better = scores > best_scores
                width = max(best_sequences.shape[1], sequences.shape[1])
                best_sequences = _pad_to(torch, best_sequences, width, self.pad)
                sequences = _pad_to(torch, sequences, width, self.pad)
                best_sequences = torch.where(better[:, None].to(sequences.device), sequences, best_sequences)
                best_scores = torch.maximum(best_scores, scores)
        return best_sequences, best_scores.numpy()


def _pad_to(torch, tensor, width: int, pad: int):
    return torch.nn.functional.pad(tensor, (0, width - tensor.shape[1]), value=pad)


def _cat_padded(torch, earlier, generated, pad: int):
    width = max(earlier.shape[2], generated.shape[1])
    earlier = torch.nn.functional.pad(earlier, (0, width - earlier.shape[2]), value=pad)
    generated = _pad_to(torch, generated, width, pad)
    return torch.cat([earlier, generated.unsqueeze(1)], dim=1)


def caption_task(
    loaded, settings: CaptionSettings, field: str = "caption", resize: str = "squash", language: str | None = None
):
    """An engine `Task` that captions images into `field` and `{field}_confidence`.

    `language`: None or "en" for the model's own captions, else the code of an
    installed language adapter (`fiftyone_blip.adapters`), active for each step.
    """
    import fiftyone as fo

    from fiftyone_blip import adapters, engine
    from fiftyone_blip.images import Preprocessor

    tokenizer, adapter_identity, activate = adapters.prepare(loaded, language)
    preprocess = Preprocessor(loaded.processor.image_processor, loaded.image_size, resize)
    captioner = Captioner(loaded, settings, tokenizer=tokenizer)
    confidence_field = f"{field}_confidence"

    def prepare(path):
        return preprocess(path)[0]

    def step(inputs):
        with activate():
            rows = captioner(engine.to_batch(inputs, "cpu"))
        return [{field: row["caption"], confidence_field: row["confidence"]} for row in rows]

    return engine.Task(
        capability="caption",
        field=field,
        fields={field: fo.StringField, confidence_field: fo.FloatField},
        settings={**settings.as_dict(), "resize": resize},
        identity={**loaded.identity, **adapter_identity},
        prepare=prepare,
        step=step,
    )
