"""Prompt spans, tokenizer and image patches of the Qwen2-VL backbone."""

import copy
import json

import pytest
import torch
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.modeling_qwen2_vl import PatchEmbed, VisionAttention
from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids

from dexvla.policy.configuration import get_vlm_preset
from dexvla.policy.tokenizer import QWEN_SPECIAL_TOKENS, TOKENIZER_FILE, build_tokenizer_json
from dexvla.policy.vlm import (
    ANSWER_SUFFIX,
    IGNORE_INDEX,
    TEMPORAL_PATCH_SIZE,
    ImageEncoder,
    PromptBuilder,
    VLMConfig,
    build_vlm,
    load_tokenizer,
    masked_mean,
    mrope_position_ids,
    vision_layout,
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
    assert pixels.shape == (4 * 24, 3 * 14 * 14)
    single, _ = encoder([cams[0][1:2], cams[1][1:2]])
    torch.testing.assert_close(pixels[48:], single)


def upstream_patches(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen2-VL's own image processor on float images (N, 3, h, w) in [0, 1]."""
    processor = Qwen2VLImageProcessorPil(do_resize=False, do_rescale=False)
    out = processor(images=list(images.permute(0, 2, 3, 1).numpy()), return_tensors="pt")
    return out["pixel_values"], out["image_grid_thw"]


def test_image_encoder_equals_the_upstream_image_processor():
    gen = torch.Generator().manual_seed(0)
    cams = [torch.rand(3, 3, 56, 84, generator=gen) for _ in range(2)]
    pixels, grid = ImageEncoder(frames=TEMPORAL_PATCH_SIZE)(cams)
    expected, expected_grid = upstream_patches(torch.stack(cams, 1).flatten(0, 1))
    assert pixels.dtype == torch.float32
    torch.testing.assert_close(pixels, expected, rtol=0, atol=1e-6)
    assert torch.equal(grid, expected_grid)


def test_image_encoder_takes_uint8_images_as_their_value_over_255():
    gen = torch.Generator().manual_seed(1)
    cams = [torch.randint(0, 256, (2, 3, 28, 56), generator=gen, dtype=torch.uint8)]
    pixels, _ = ImageEncoder(frames=TEMPORAL_PATCH_SIZE)(cams)
    expected, _ = upstream_patches(cams[0].float() / 255)
    torch.testing.assert_close(pixels, expected, rtol=0, atol=1e-6)


def test_image_encoder_one_frame_is_each_upstream_frame():
    cams = [torch.rand(2, 3, 56, 84), torch.rand(2, 3, 56, 84)]
    one, _ = ImageEncoder()(cams)
    two, _ = ImageEncoder(frames=TEMPORAL_PATCH_SIZE)(cams)
    two = two.view(-1, 3, TEMPORAL_PATCH_SIZE, 14 * 14)
    for frame in range(TEMPORAL_PATCH_SIZE):
        assert torch.equal(two[:, :, frame].flatten(1), one)
    with pytest.raises(ValueError, match="frames must be"):
        ImageEncoder(frames=3)


def test_image_encoder_refuses_integer_images_other_than_uint8():
    with pytest.raises(ValueError, match="uint8 or floating point"):
        ImageEncoder()([torch.zeros(1, 3, 28, 28, dtype=torch.int32)])


def test_mrope_positions_equal_upstream_rope_index(tiny):
    config, tokenizer, builder = tiny
    model = build_vlm(config, tokenizer)
    instructions = ["pick", "transfer the cube to the other arm", "insert the peg"]
    substeps = ["lift it", "", "grasp the peg with the left gripper and move it"]
    tokens = [config.tokens_per_image] * 3
    right = builder.encode(tokens, instructions, substeps)  # training: right-padded
    left = builder.encode_prompts(tokens, instructions)  # generation: left-padded
    grid = torch.tensor([[1, 2 * config.token_grid[0], 2 * config.token_grid[1]]] * 9)
    for ids, attention in ((right.input_ids, right.attention_mask), left):
        assert not attention.all()  # both layouts carry padding
        image_mask = builder.mm_token_type_ids(ids)
        expected = model.model.get_rope_index(ids, image_mask, grid, attention_mask=attention)
        positions, deltas = mrope_position_ids(image_mask, attention, config.token_grid)
        assert torch.equal(positions, expected[0])
        assert torch.equal(deltas, expected[1])


def test_mrope_positions_of_a_wide_image_grid():
    # one 2 x 3 image between text: text 0..1, image (2, 2+r, 2+c), text resumes at 2 + 3
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 0, 0]])
    positions, deltas = mrope_position_ids(mask, torch.ones_like(mask), (2, 3))
    assert positions[:, 0].tolist() == [
        [0, 1, 2, 2, 2, 2, 2, 2, 5, 6],
        [0, 1, 2, 2, 2, 3, 3, 3, 5, 6],
        [0, 1, 2, 3, 4, 2, 3, 4, 5, 6],
    ]
    assert deltas.tolist() == [[7 - 10]]


def test_vision_layout_equals_what_the_tower_derives_from_the_grid():
    grid = torch.tensor([[1, 4, 6]] * 5)
    layout = vision_layout(5, 4, 6, torch.device("cpu"))
    assert torch.equal(layout["image_position_ids"], get_vision_position_ids(grid, 2))
    assert torch.equal(layout["image_cu_seqlens"], get_vision_cu_seqlens(grid))


def test_batched_vision_tower_equals_upstream_per_image_attention(tiny):
    """One frame per patch through `LinearPatchEmbed` and batched attention give what
    upstream's Conv3d and per-image attention give on the processor's two-frame patches."""
    config, tokenizer, _ = tiny
    torch.manual_seed(0)
    fast = build_vlm(config, tokenizer).model.visual
    upstream = copy.deepcopy(fast)
    upstream.patch_embed.__class__ = PatchEmbed
    for block in upstream.blocks:
        block.attn.__class__ = VisionAttention
    cams = [torch.rand(2, 3, 56, 84), torch.rand(2, 3, 56, 84)]
    one_frame, grid = ImageEncoder()(cams)
    two_frames, _ = ImageEncoder(frames=TEMPORAL_PATCH_SIZE)(cams)
    outputs = []
    for tower, pixels in ((fast, one_frame), (fast, two_frames), (upstream, two_frames)):
        tower.zero_grad(set_to_none=True)
        out = tower(pixels, grid_thw=grid).pooler_output  # (4 * 6, D)
        out.square().sum().backward()
        outputs.append((out, [p.grad.clone() for p in tower.parameters()]))
    for out, grads in outputs[:2]:
        torch.testing.assert_close(out, outputs[2][0], rtol=1e-5, atol=1e-5)
        for grad, upstream_grad in zip(grads, outputs[2][1], strict=True):
            torch.testing.assert_close(grad, upstream_grad, rtol=1e-4, atol=1e-5)


def test_batched_vision_attention_refuses_images_of_different_sizes(tiny):
    config, tokenizer, _ = tiny
    visual = build_vlm(config, tokenizer).model.visual
    small, _ = ImageEncoder()([torch.rand(1, 3, 28, 84)])  # 2 x 6 patches
    large, _ = ImageEncoder()([torch.rand(1, 3, 56, 56)])  # 4 x 4 patches
    grid = torch.tensor([[1, 2, 6], [1, 4, 4]])  # 12 + 16 patches: two images, 14 on average
    with pytest.raises(RuntimeError, match="one size"):
        visual(torch.cat([small, large]), grid_thw=grid)


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
