"""Bimanual ALOHA tasks on gym-aloha's MuJoCo models: the scenes (`scenes`), the environment
(`env`) and the ACT-style scripted expert (`expert`)."""

from dexvla.sim.aloha.env import ALOHA_CAMERAS, TOP_CAMERA_FOVY, AlohaEnv
from dexvla.sim.aloha.expert import AlohaScriptedExpert
from dexvla.sim.aloha.scenes import SCENES, AlohaScene

__all__ = [
    "ALOHA_CAMERAS",
    "SCENES",
    "TOP_CAMERA_FOVY",
    "AlohaEnv",
    "AlohaScene",
    "AlohaScriptedExpert",
]
