"""A cased, accent-keeping tokenizer with the new tokens a language needs."""

from __future__ import annotations

from collections import Counter


def _cased_tokenizer(base_tokenizer, vocab: dict[str, int]):
    from transformers import BertTokenizerFast

    specials = {
        name: getattr(base_tokenizer, name)
        for name in ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token", "bos_token")
        if getattr(base_tokenizer, name, None)
    }
    return BertTokenizerFast(
        vocab=dict(vocab),
        do_lower_case=False,
        strip_accents=False,
        tokenize_chinese_chars=True,
        model_max_length=base_tokenizer.model_max_length,
        **specials,
    )


def _words(tokenizer, text: str) -> list[str]:
    backend = tokenizer.backend_tokenizer
    return [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text))]


def build_tokenizer(base_tokenizer, first_new_id: int, captions: list[str], max_added_tokens: int, min_count: int = 2):
    """A cased, accent-keeping tokenizer: the base vocabulary plus what `captions` need.

    Words the base vocabulary cannot write become whole tokens when they occur
    at least `min_count` times; rarer ones are spelt with character tokens
    ("X" and "##X"). New ids start at `first_new_id`.

    Returns:
        (tokenizer, new tokens in id order)
    """
    vocab = dict(base_tokenizer.get_vocab())
    probe = _cased_tokenizer(base_tokenizer, vocab)
    unk = probe.unk_token
    counts = Counter(w for caption in captions for w in _words(probe, caption))
    model = probe.backend_tokenizer.model
    uncovered = [(w, n) for w, n in counts.items() if unk in [t.value for t in model.tokenize(w)]]
    uncovered.sort(key=lambda item: (-item[1], item[0]))
    whole = [w for w, n in uncovered if n >= min_count]
    pieces = []
    for word, n in uncovered:
        if n < min_count:
            pieces += [word[0]] + [f"##{c}" for c in word[1:]]
    new_tokens = []
    for token in whole + sorted(set(pieces), key=pieces.index):
        if token not in vocab and token not in new_tokens:
            new_tokens.append(token)
    if len(new_tokens) > max_added_tokens:
        # Characters first: they keep every caption writable when whole words do not fit.
        chars = [t for t in new_tokens if t in pieces]
        words = [t for t in new_tokens if t not in pieces]
        new_tokens = (chars + words)[:max_added_tokens]
    for offset, token in enumerate(new_tokens):
        vocab[token] = first_new_id + offset
    return _cased_tokenizer(base_tokenizer, vocab), new_tokens


def roundtrip_rate(tokenizer, captions: list[str]) -> float:
    """Share of captions that decode back exactly (case, accents, script) after encoding."""
    if not captions:
        return 1.0
    ids = tokenizer(captions)["input_ids"]
    decoded = tokenizer.batch_decode(ids, skip_special_tokens=True)
    return sum(d.strip() == c.strip() for d, c in zip(decoded, captions)) / len(captions)
