"""`dexvla serve`: which embodiment a checkpoint is served for."""

from __future__ import annotations

import numpy as np
import pytest

from dexvla.cli import main
from dexvla.serve.commands import served_embodiment
from dexvla.stats import DatasetStats

from ..policy.conftest import aloha_stats, make_policy

HEADS = ("aloha", "sawyer")


def test_default_is_the_one_head_the_statistics_cover():
    assert served_embodiment(None, HEADS, ["aloha"]) == "aloha"
    assert served_embodiment(None, HEADS, ["sawyer", "hand"]) == "sawyer"
    assert served_embodiment(None, ("aloha",), ["aloha"]) == "aloha"


def test_several_covered_heads_need_a_choice_that_is_listed():
    with pytest.raises(ValueError, match=r"several embodiments \['aloha', 'sawyer'\]"):
        served_embodiment(None, HEADS, ["aloha", "sawyer"])
    assert served_embodiment("sawyer", HEADS, ["aloha", "sawyer"]) == "sawyer"


def test_a_requested_embodiment_needs_a_head_and_statistics():
    with pytest.raises(ValueError, match=r"not 'hand' \(its expert heads are"):
        served_embodiment("hand", HEADS, ["aloha"])
    with pytest.raises(ValueError, match=r"no statistics for 'sawyer'.*one of \['aloha'\]"):
        served_embodiment("sawyer", HEADS, ["aloha"])
    with pytest.raises(ValueError, match="cannot serve any embodiment"):
        served_embodiment(None, HEADS, ["hand"])


def test_two_heads_with_one_embodiments_statistics_serve_it_by_default(tmp_path, served, capsys):
    policy = make_policy()  # heads aloha and sawyer, statistics for aloha only
    assert policy.config.embodiments == HEADS
    path = policy.save_pretrained(tmp_path / "ckpt")
    assert main(["serve", "--checkpoint", str(path), "--port", "0"]) == 0
    (server,) = served
    assert server.service.metadata()["embodiment"] == "aloha"
    assert main(["serve", "--checkpoint", str(path), "--embodiment", "sawyer"]) == 2
    assert "no statistics for 'sawyer'" in capsys.readouterr().err


def test_two_covered_heads_refuse_to_guess(tmp_path, served, capsys):
    policy = make_policy()
    rng = np.random.default_rng(0)
    sawyer = DatasetStats.from_arrays("sawyer", rng.normal(size=(8, 4)), rng.normal(size=(8, 4)))
    policy.processor.set_stats(aloha_stats().merge(sawyer))
    path = policy.save_pretrained(tmp_path / "ckpt")
    assert main(["serve", "--checkpoint", str(path), "--port", "0"]) == 2
    assert "several embodiments ['aloha', 'sawyer']" in capsys.readouterr().err
    assert not served
    assert main(["serve", "--checkpoint", str(path), "--port", "0", "--embodiment", "sawyer"]) == 0
    assert served[0].service.metadata()["embodiment"] == "sawyer"


def test_compile_flag_compiles_the_experts_step(tmp_path, served, monkeypatch):
    from dexvla.policy.scaledp import ScaleDP

    compiled = []
    monkeypatch.setattr(ScaleDP, "compile_steps", lambda self, enabled=True: compiled.append(1))
    path = make_policy().save_pretrained(tmp_path / "ckpt")
    assert main(["serve", "--checkpoint", str(path), "--port", "0"]) == 0
    assert not compiled
    assert main(["serve", "--checkpoint", str(path), "--port", "0", "--compile"]) == 0
    assert compiled == [1] and len(served) == 2
