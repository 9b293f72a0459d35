"""Preset registry: parameter counts on `meta`, lookups, the `models` command."""

import json

import pytest
import torch
from torch import nn
from transformers import Qwen2VLForConditionalGeneration as Qwen2VL

from dexvla.cli import main
from dexvla.policy.configuration import (
    EXPERT_PRESETS,
    POLICY_PRESETS,
    VLM_PRESETS,
    count_expert_parameters,
    count_fusion_parameters,
    count_policy_parameters,
    count_vlm_parameters,
    describe_presets,
    get_expert_preset,
    get_policy_preset,
    get_vlm_preset,
)
from dexvla.policy.fusion import ReasoningFusion
from dexvla.policy.modeling import DexVLAPolicy
from dexvla.policy.scaledp import ScaleDP
from dexvla.policy.vlm import load_tokenizer, qwen2vl_config

TWO_ROBOTS = {"aloha": (14, 14), "hand": (4, 7)}
PAPER_SIZES = ("scaledp-b", "scaledp-l", "scaledp-h")


@pytest.fixture(scope="module")
def counts():
    return {row["name"]: row["parameters"] for row in describe_presets()}


def expected_rows() -> dict[str, tuple[str, int]]:
    """Every preset's kind and its count from the count_* function of that kind."""
    rows = {name: ("vlm", count_vlm_parameters(c)) for name, c in VLM_PRESETS.items()}
    rows |= {name: ("expert", count_expert_parameters(c)) for name, c in EXPERT_PRESETS.items()}
    rows |= {name: ("policy", count_policy_parameters(c)) for name, c in POLICY_PRESETS.items()}
    return rows


def unique_state_numel(model: nn.Module) -> int:
    """Elements of the state dict's parameters, each tensor once however many names it has."""
    tensors = {id(t): t.numel() for t in model.state_dict(keep_vars=True).values()}
    return sum(tensors.values())


def test_paper_sizes_on_meta(counts):
    assert counts["qwen2-vl-2b"] == pytest.approx(2.209e9, rel=0.01)
    assert counts["dexvla-2b"] == pytest.approx(3.2e9, rel=0.05)
    for name, target in (("scaledp-b", 93e6), ("scaledp-l", 410e6), ("scaledp-h", 1e9)):
        assert counts[name] == pytest.approx(target, rel=0.10), name
    assert counts["tiny"] < 5e6


@pytest.mark.parametrize(
    ("name", "target"),
    [("scaledp-b", 93e6), ("scaledp-l", 410e6), ("scaledp-h", 1e9)],
)
def test_expert_preset_parameter_counts_match_the_paper(name, target):
    count = count_expert_parameters(EXPERT_PRESETS[name])
    assert abs(count - target) / target < 0.10, f"{name}: {count / 1e6:.1f}M vs {target / 1e6}M"


def test_tiny_expert_preset_is_small_and_meta_count_matches_real_model():
    config = EXPERT_PRESETS["scaledp-tiny"]
    count = count_expert_parameters(config)
    assert 2e5 < count < 2e6
    assert count == sum(p.numel() for p in ScaleDP(config).parameters())


def test_expert_preset_overrides():
    config = get_expert_preset("scaledp-tiny", embodiments=TWO_ROBOTS, cond_dim=64)
    assert config.cond_dim == 64 and set(config.embodiments) == set(TWO_ROBOTS)
    assert config.width == EXPERT_PRESETS["scaledp-tiny"].width
    assert EXPERT_PRESETS["scaledp-tiny"].cond_dim == 1536  # the registry entry is unchanged


@pytest.mark.parametrize("name", sorted(POLICY_PRESETS))
def test_policy_count_is_exactly_the_sum_of_its_parts(name, counts):
    policy = POLICY_PRESETS[name]
    tokenizer = None if policy.vlm.pretrained else load_tokenizer(policy.vlm)
    with torch.device("meta"):
        vlm = Qwen2VL(qwen2vl_config(policy.vlm, tokenizer))
        fusion = ReasoningFusion(vlm.config.text_config.hidden_size, policy.expert.cond_dim)
        expert = ScaleDP(policy.expert)
    vlm_count = unique_state_numel(vlm)
    fusion_count = sum(p.numel() for _, p in fusion.named_parameters())
    expert_count = sum(p.numel() for p in expert.parameters(recurse=False)) + sum(
        p.numel() for child in expert.children() for p in child.parameters()
    )
    assert count_vlm_parameters(policy.vlm) == vlm_count
    assert count_fusion_parameters(policy) == fusion_count
    assert count_expert_parameters(policy.expert) == expert_count
    assert count_policy_parameters(policy) == vlm_count + fusion_count + expert_count
    assert counts[name] == vlm_count + fusion_count + expert_count
    assert counts[policy.vlm.name] == vlm_count


def test_tied_embeddings_are_counted_once():
    config = VLM_PRESETS["qwen2-vl-2b"]
    assert config.text["tie_word_embeddings"]
    with torch.device("meta"):
        vlm = Qwen2VL(qwen2vl_config(config, None))
    head = vlm.lm_head.weight
    assert head is vlm.model.language_model.embed_tokens.weight
    every_name = sum(t.numel() for t in vlm.state_dict().values())  # the tied tensor twice
    assert count_vlm_parameters(config) == every_name - head.numel()


@pytest.mark.parametrize("name", ["tiny", "tiny-h"])
def test_an_assembled_policy_has_the_counted_parameters(name):
    with torch.device("meta"):
        policy = DexVLAPolicy(get_policy_preset(name))
    assert sum(p.numel() for p in policy.parameters()) == count_policy_parameters(
        get_policy_preset(name)
    )


@pytest.mark.parametrize(
    ("getter", "kind"),
    [(get_policy_preset, "policy"), (get_vlm_preset, "VLM"), (get_expert_preset, "expert")],
)
def test_unknown_preset_lists_known_ones(getter, kind):
    with pytest.raises(KeyError, match=f"unknown {kind} preset 'nope'; known {kind} presets: "):
        getter("nope")


def test_models_command_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {row["name"]: (row["kind"], row["parameters"]) for row in rows} == expected_rows()
    assert len(rows) == len(VLM_PRESETS) + len(EXPERT_PRESETS) + len(POLICY_PRESETS)
    assert all(row["description"] for row in rows)


def test_models_command_table(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one line per row
    assert main(["models"]) == 0
    printed = {}
    for line in capsys.readouterr().out.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
        if line.startswith("│") and len(cells) == 4:
            name, kind, parameters, description = cells
            printed[name] = (kind, parameters)
            assert description, name
    expected = {
        name: (kind, f"{count / 1e6:,.1f}M") for name, (kind, count) in expected_rows().items()
    }
    assert printed == expected
    assert printed["qwen2-vl-2b"] == ("vlm", "2,209.0M")


def test_tiny_expert_sizes_keep_the_papers_ratios():
    sizes = [
        count_expert_parameters(get_policy_preset(name).expert)
        for name in ("tiny", "tiny-l", "tiny-h")
    ]
    paper = [count_expert_parameters(EXPERT_PRESETS[n]) for n in PAPER_SIZES]
    for ours, theirs in zip(sizes[1:], paper[1:], strict=True):
        assert ours / sizes[0] == pytest.approx(theirs / paper[0], rel=0.10)
