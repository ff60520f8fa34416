"""The shapes-tiny VQA training recipe: padded questions read as unpadded ones, balanced yes/no data."""

import pytest

torch = pytest.importorskip("torch")


# a one-layer BLIP text model: enough to see what its cross-attention reads
TINY_TEXT = dict(
    vocab_size=30,
    hidden_size=32,
    encoder_hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    max_position_embeddings=16,
)


def test_blip_cross_attention_ignores_the_encoder_mask():
    """Why training passes the mask on: the answer decoder sees the question's padding states.

    If a transformers release starts honouring `encoder_attention_mask` in
    BLIP's text cross-attention, this test fails, and the training hooks
    (`honour_cross_attention_masks`) can go.
    """
    from transformers import BlipTextConfig
    from transformers.models.blip.modeling_blip_text import BlipTextLMHeadModel

    torch.manual_seed(0)
    config = BlipTextConfig(**TINY_TEXT)
    decoder = BlipTextLMHeadModel(config).eval()
    states = torch.randn(1, 6, 32)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    changed = states.clone()
    changed[:, 4:] = torch.randn(1, 2, 32) * 10  # only the masked positions differ
    ids = torch.tensor([[1, 5, 7]])
    with torch.no_grad():
        a = decoder(input_ids=ids, encoder_hidden_states=states, encoder_attention_mask=mask).logits
        b = decoder(input_ids=ids, encoder_hidden_states=changed, encoder_attention_mask=mask).logits
    assert not torch.allclose(a, b, atol=1e-4)


def test_training_reads_a_padded_question_as_an_unpadded_one():
    from transformers import BlipConfig, BlipForQuestionAnswering

    from fiftyone_blip.shapes.train_vqa import honour_cross_attention_masks

    torch.manual_seed(0)
    text = dict(TINY_TEXT)
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=16
    )
    model = BlipForQuestionAnswering(BlipConfig(text_config=text, vision_config=vision)).eval()
    images = torch.randn(1, 5, 32)
    alone = torch.tensor([[2, 7, 8, 3]])
    padded = torch.tensor([[2, 7, 8, 3, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    answer = torch.tensor([[1, 9, 3]])

    def answer_logits(ids, ids_mask):
        states = model.text_encoder(input_ids=ids, attention_mask=ids_mask, encoder_hidden_states=images)
        return model.text_decoder(
            input_ids=answer, encoder_hidden_states=states.last_hidden_state, encoder_attention_mask=ids_mask
        ).logits

    with torch.no_grad():
        reference = answer_logits(alone, torch.ones_like(alone))
        assert not torch.allclose(answer_logits(padded, mask), reference, atol=1e-5)  # the padding leaks
        hooks = honour_cross_attention_masks(model)
        assert torch.allclose(answer_logits(padded, mask), reference, atol=1e-5)
        for hook in hooks:
            hook.remove()
        assert not torch.allclose(answer_logits(padded, mask), reference, atol=1e-5)


def test_training_questions_hold_as_many_yes_as_no_answers():
    from fiftyone_blip.shapes import data as shapes
    from fiftyone_blip.shapes.train_vqa import balance_exists, question_set

    pairs = question_set(shapes.make_scenes(300, "train"), 3, seed=0)
    answers = [q.answer for _, q in pairs if q.kind == "exists"]
    assert answers.count("yes") < 0.45 * len(answers)  # the drawn set leans to "no"
    balanced = balance_exists(pairs, seed=0)
    answers = [q.answer for _, q in balanced if q.kind == "exists"]
    assert answers.count("yes") == answers.count("no")
    # the other question types are untouched
    assert [p for p in balanced if p[1].kind != "exists"] == [p for p in pairs if p[1].kind != "exists"]
    assert balance_exists(pairs, seed=0) == balanced
