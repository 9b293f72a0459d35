"""The registered tasks. Simulator modules are imported only when an environment is built, so
listing tasks stays cheap and works without the simulators installed."""

from __future__ import annotations

import importlib.util

import gymnasium as gym

from dexvla.sim.registry import ScriptedExpert, TaskSpec, register_task


def _aloha_env(scene: str) -> callable:
    def factory(**kwargs) -> gym.Env:
        from dexvla.sim.aloha import SCENES, AlohaEnv

        return AlohaEnv(SCENES[scene], **kwargs)

    return factory


def _aloha_expert(scene: str) -> callable:
    def factory() -> ScriptedExpert:
        from dexvla.sim.aloha import SCENES, AlohaScriptedExpert

        return AlohaScriptedExpert(SCENES[scene])

    return factory


def _sawyer_env(mw_name: str) -> callable:
    def factory(**kwargs) -> gym.Env:
        from dexvla.sim.sawyer import SawyerEnv

        return SawyerEnv(mw_name, **kwargs)

    return factory


def _sawyer_expert(mw_name: str, noun: str | None, manipulate: str, radius: float) -> callable:
    def factory() -> ScriptedExpert:
        from dexvla.sim.sawyer import SawyerScriptedExpert

        return SawyerScriptedExpert(mw_name, noun, manipulate, contact_radius=radius)

    return factory


def _hand_env(**kwargs) -> gym.Env:
    from dexvla.sim.hand import HandEnv

    return HandEnv(**kwargs)


def _hand_expert() -> ScriptedExpert:
    from dexvla.sim.hand import HandScriptedExpert

    return HandScriptedExpert()


ALOHA_TASKS = {
    "aloha-transfer-cube": (
        "transfer_cube",
        "pick up the red cube with the right arm and hand it over to the left arm",
        400,
        "gym-aloha transfer cube; reward stages 0..4 (touched, lifted, attempted, transferred)",
    ),
    "aloha-insertion": (
        "insertion",
        "pick up the peg and the socket and insert the peg into the socket",
        400,
        "gym-aloha insertion; reward stages 0..4 (touched, lifted, peg touches socket, inserted)",
    ),
    "aloha-cube-to-bin": (
        "cube_to_bin",
        "pick up the red cube with the right arm, hand it to the left arm and drop it in the bin",
        500,
        "long-horizon: pick, hand over, carry, place in a seeded bin; reward stages 0..6",
    ),
}

# MetaWorld name -> (instruction, object noun or None, what the hand does to the object, the
# hand-object distance from which it does it; the button is pressed from 10 cm in front)
SAWYER_FEATURED = {
    "reach": ("reach the target with the gripper", None, "move the gripper to the target", 0.05),
    "pick-place": (
        "pick up the puck and place it at the goal",
        "puck",
        "carry the puck to the goal",
        0.05,
    ),
    "drawer-open": ("open the drawer", "drawer handle", "pull the drawer open", 0.05),
    "button-press": ("press the button", "button", "press the button", 0.1),
    "window-open": ("open the window", "window handle", "slide the window open", 0.05),
}
# Registered but not featured: below 95% with its shipped policy here (docs/simulation.md).
SAWYER_NAMED = {"push": ("push the puck to the goal", "puck", "push the puck to the goal", 0.05)}


def _register_all() -> None:
    for name, (scene, instruction, max_steps, description) in ALOHA_TASKS.items():
        register_task(
            TaskSpec(
                name=name,
                embodiment="aloha",
                instruction=instruction,
                max_steps=max_steps,
                fps=50,
                suite="aloha",
                env_factory=_aloha_env(scene),
                expert_factory=_aloha_expert(scene),
                description=description,
            )
        )
    mw_names = set(SAWYER_FEATURED) | set(SAWYER_NAMED)
    if importlib.util.find_spec("metaworld") is not None:
        from dexvla.sim.sawyer import metaworld_names

        mw_names |= set(metaworld_names())
    for mw_name in sorted(mw_names):
        words = mw_name.replace("-", " ")
        instruction, noun, manipulate, radius = (SAWYER_FEATURED | SAWYER_NAMED).get(
            mw_name, (words, "object", f"{words} with the object", 0.05)
        )
        register_task(
            TaskSpec(
                name=f"sawyer-{mw_name}",
                embodiment="sawyer",
                instruction=instruction,
                max_steps=200,
                fps=80,
                suite="metaworld",
                env_factory=_sawyer_env(mw_name),
                expert_factory=_sawyer_expert(mw_name, noun, manipulate, radius),
                description=f"MetaWorld {mw_name}-v3 with its shipped scripted policy",
                featured=mw_name in SAWYER_FEATURED,
            )
        )
    register_task(
        TaskSpec(
            name="hand-pick-place",
            embodiment="hand",
            instruction="pick up the red block and place it on the green pad",
            max_steps=250,
            fps=25,
            suite="hand",
            env_factory=_hand_env,
            expert_factory=_hand_expert,
            description="the project's 12-DoF hand on a 6-DoF wrist; reward stages 0..4",
        )
    )


_register_all()
