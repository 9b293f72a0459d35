"""Prompt spans, tokenizer and image patches of the Qwen2-VL backbone."""

import json

import pytest
import torch

from dexvla.policy.configuration import get_vlm_preset
from dexvla.policy.tokenizer import QWEN_SPECIAL_TOKENS, TOKENIZER_FILE, build_tokenizer_json
from dexvla.policy.vlm import (
    ANSWER_SUFFIX,
    IGNORE_INDEX,
    ImageEncoder,
    PromptBuilder,
    VLMConfig,
    build_vlm,
    load_tokenizer,
    masked_mean,
)


@pytest.fixture(scope="module")
def tiny():
    config = get_vlm_preset("qwen2-vl-tiny")
    tokenizer = load_tokenizer(config)
    return config, tokenizer, PromptBuilder(tokenizer, config.system_prompt)


def test_shipped_tokenizer_is_the_one_the_builder_makes():
    shipped = json.loads(TOKENIZER_FILE.read_text())
    rebuilt = json.loads(build_tokenizer_json())
    assert shipped["model"]["vocab"] == rebuilt["model"]["vocab"]
    assert shipped["model"]["merges"] == rebuilt["model"]["merges"]


def test_tokenizer_carries_qwen_special_tokens_and_round_trips_text(tiny):
    _, tokenizer, _ = tiny
    ids = tokenizer.convert_tokens_to_ids(list(QWEN_SPECIAL_TOKENS))
    assert len(set(ids)) == len(QWEN_SPECIAL_TOKENS)
    assert tokenizer.unk_token_id not in ids
    text = "grasp the left sleeve, then fold it 3 times!"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_prompt_spans_cover_prompt_reasoning_and_answer(tiny):
    _, tokenizer, builder = tiny
    substeps = ["grasp the cube with the right arm", ""]
    encoded = builder.encode([4, 4, 4], ["transfer the cube", "insert the peg"], substeps)
    batch, length = encoded.input_ids.shape
    assert encoded.labels.shape == encoded.prompt_mask.shape == (batch, length)
    for row, substep in enumerate(substeps):
        ids = encoded.input_ids[row]
        prompt = ids[encoded.prompt_mask[row]]
        assert int((prompt == builder.image_pad).sum()) == 12
        assert prompt[-1] != builder.im_end  # the prompt ends inside the assistant's turn
        reasoning = ids[encoded.reasoning_mask[row]]
        assert tokenizer.decode(reasoning) == substep
        answer = encoded.labels[row][encoded.labels[row] != IGNORE_INDEX]
        assert answer[-1] == builder.im_end
        decoded = tokenizer.decode(answer, skip_special_tokens=True)
        assert builder.parse_answer(decoded) == substep
        assert decoded.endswith(ANSWER_SUFFIX)
        # no overlap between prompt and answer, and the answer follows the prompt directly
        assert not (encoded.prompt_mask[row] & (encoded.labels[row] != IGNORE_INDEX)).any()
    assert encoded.attention_mask[1].sum() < encoded.attention_mask[0].sum()


def test_generation_prompts_are_left_padded(tiny):
    _, _, builder = tiny
    ids, attention = builder.encode_prompts([4], ["short", "a much longer instruction here"])
    assert attention[:, -1].all()
    assert not attention[0, 0]
    assert ids[0, 0] == builder.pad_id


def test_image_encoder_patches_sample_major():
    encoder = ImageEncoder()
    cams = [torch.rand(2, 3, 56, 84), torch.rand(2, 3, 56, 84)]
    pixels, grid = encoder(cams)
    assert grid.tolist() == [[1, 4, 6]] * 4
    assert pixels.shape == (4 * 24, 3 * 2 * 14 * 14)
    single, _ = encoder([cams[0][1:2], cams[1][1:2]])
    torch.testing.assert_close(pixels[48:], single)


def test_tiny_backbone_forward_shapes(tiny):
    config, tokenizer, builder = tiny
    model = build_vlm(config, tokenizer)
    encoded = builder.encode([config.tokens_per_image], ["pick"], ["lift it"])
    pixels, grid = ImageEncoder()([torch.rand(1, 3, *config.image_size)])
    out = model.model(
        input_ids=encoded.input_ids,
        attention_mask=encoded.attention_mask,
        mm_token_type_ids=builder.mm_token_type_ids(encoded.input_ids),
        pixel_values=pixels,
        image_grid_thw=grid,
    )
    assert out.last_hidden_state.shape == (1, encoded.input_ids.shape[1], 128)


def test_masked_mean_ignores_unmasked_and_empty_rows():
    hidden = torch.arange(12.0).reshape(2, 3, 2)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    pooled = masked_mean(hidden, mask)
    torch.testing.assert_close(pooled[0], (hidden[0, 0] + hidden[0, 2]) / 2)
    torch.testing.assert_close(pooled[1], torch.zeros(2))


@pytest.mark.parametrize("size", [(80, 84), (0, 28), (28, 30)])
def test_image_size_must_fit_qwen_patches(size):
    with pytest.raises(ValueError, match="multiples of 28"):
        VLMConfig(name="bad", image_size=size)


def test_prompt_builder_refuses_tokenizer_without_qwen_tokens():
    from transformers import AutoTokenizer  # noqa: F401  (only the error path is exercised)

    class Plain:
        unk_token_id = 0
        pad_token_id = 0

        def convert_tokens_to_ids(self, tokens):
            return [0 for _ in tokens]

    with pytest.raises(ValueError, match="special tokens"):
        PromptBuilder(Plain(), "system")
