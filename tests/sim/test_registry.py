"""Task registry, embodiments of the tasks, and `dexvla tasks`."""

import json

import pytest

import dexvla.sim as sim
from dexvla.cli import main
from dexvla.embodiments import get_embodiment

FEATURED = {
    "aloha-transfer-cube": "aloha",
    "aloha-insertion": "aloha",
    "aloha-cube-to-bin": "aloha",
    "sawyer-reach": "sawyer",
    "sawyer-window-open": "sawyer",
    "sawyer-pick-place": "sawyer",
    "sawyer-drawer-open": "sawyer",
    "sawyer-button-press": "sawyer",
    "hand-pick-place": "hand",
}


def test_featured_tasks_are_registered_with_their_embodiments():
    featured = {t.name: t.embodiment for t in sim.list_tasks(featured_only=True)}
    assert featured == FEATURED
    assert len(sim.list_tasks()) >= 50  # every MetaWorld task by name
    assert sim.get_task("sawyer-door-open").embodiment == "sawyer"


def test_hand_embodiment_has_twelve_hand_joints_on_a_six_dof_wrist():
    hand = get_embodiment("hand")
    assert hand.action_dim == hand.state_dim == 6 + 12
    assert hand.cameras == ("cam_high", "cam_wrist")


def test_unknown_task_names_the_task_and_lists_known_ones():
    with pytest.raises(KeyError, match="no-such-task") as error:
        sim.get_task("no-such-task")
    assert "aloha-transfer-cube" in str(error.value)
    with pytest.raises(KeyError, match="no-such-task"):
        sim.make_env("no-such-task")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("64", (64, 64)), ("48x96", (48, 96)), (32, (32, 32)), ((8, 16), (8, 16))],
)
def test_parse_image_size(text, expected):
    assert sim.parse_image_size(text) == expected


@pytest.mark.parametrize("bad", ["0", "axb", "1x2x3", -4])
def test_parse_image_size_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match="image size"):
        sim.parse_image_size(bad)


def test_tasks_json_lists_dims_cameras_length_and_rate(capsys):
    assert main(["tasks", "--json", "--featured"]) == 0
    tasks = {t["name"]: t for t in json.loads(capsys.readouterr().out)}
    assert set(tasks) == set(FEATURED)
    aloha = tasks["aloha-transfer-cube"]
    assert (aloha["action_dim"], aloha["state_dim"], aloha["fps"], aloha["max_steps"]) == (
        14,
        14,
        50,
        400,
    )
    assert aloha["cameras"] == ["cam_high", "cam_left_wrist", "cam_right_wrist"]
    assert tasks["hand-pick-place"]["action_dim"] == 18
    assert tasks["sawyer-window-open"]["cameras"] == ["cam_high"]


def test_tasks_table_lists_every_task(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "aloha-cube-to-bin" in out and "sawyer-door-open" in out
