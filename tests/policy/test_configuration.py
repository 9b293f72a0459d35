"""Preset registry: parameter counts on `meta`, lookups, the `models` command."""

import json

import pytest

from dexvla.cli import main
from dexvla.policy.configuration import (
    POLICY_PRESETS,
    describe_presets,
    get_expert_preset,
    get_policy_preset,
    get_vlm_preset,
)
from dexvla.policy.scaledp import count_parameters


@pytest.fixture(scope="module")
def counts():
    return {row["name"]: row["parameters"] for row in describe_presets()}


def test_paper_sizes_on_meta(counts):
    assert counts["qwen2-vl-2b"] == pytest.approx(2.209e9, rel=0.01)
    assert counts["dexvla-2b"] == pytest.approx(3.2e9, rel=0.05)
    for name, target in (("scaledp-b", 93e6), ("scaledp-l", 410e6), ("scaledp-h", 1e9)):
        assert counts[name] == pytest.approx(target, rel=0.10), name
    assert counts["tiny"] < 5e6


def test_policy_count_is_the_sum_of_its_parts(counts):
    policy = get_policy_preset("dexvla-2b")
    assert counts["dexvla-2b"] > counts["qwen2-vl-2b"] + counts["scaledp-h"] * 0.9
    assert policy.expert.cond_dim == 1536


@pytest.mark.parametrize(
    ("getter", "kind"),
    [(get_policy_preset, "policy"), (get_vlm_preset, "VLM"), (get_expert_preset, "expert")],
)
def test_unknown_preset_lists_known_ones(getter, kind):
    with pytest.raises(KeyError, match=f"unknown {kind} preset 'nope'"):
        getter("nope")


def test_models_command_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = {row["name"] for row in rows}
    assert set(POLICY_PRESETS) <= names
    assert all(row["parameters"] > 0 for row in rows)


def test_models_command_table(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "dexvla-2b" in out and "M" in out


def test_tiny_expert_sizes_keep_the_papers_ratios():
    sizes = [
        count_parameters(get_policy_preset(name).expert) for name in ("tiny", "tiny-l", "tiny-h")
    ]
    paper = [
        count_parameters(get_expert_preset(n)) for n in ("scaledp-b", "scaledp-l", "scaledp-h")
    ]
    for ours, theirs in zip(sizes[1:], paper[1:], strict=True):
        assert ours / sizes[0] == pytest.approx(theirs / paper[0], rel=0.10)
