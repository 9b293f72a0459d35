"""Fast offscreen rendering of several MuJoCo cameras into uint8 images.

Shadows and multisampling are switched off: on a CPU renderer they cost about 6x the frame time
and add nothing a policy needs (see docs/simulation.md).
"""

from __future__ import annotations

import atexit
import weakref
from collections.abc import Iterable

import gymnasium as gym
import mujoco
import numpy as np

from dexvla.schema import ENV_STATE, STATE, image_key


def camera_fovy(model: mujoco.MjModel, cameras: dict[str, str]) -> dict[str, float]:
    """Vertical field of view (degrees) of each camera, keyed by the embodiment's camera names.

    Datasets record it and evaluation checks it: a policy trained on one field of view sees
    objects at another scale under another, and nothing else would tell.
    """
    return {cam: float(model.cam_fovy[model.camera(name).id]) for cam, name in cameras.items()}


def observation_space(
    cameras: Iterable[str], image_size: tuple[int, int], state_dim: int, env_state_dim: int = 0
) -> gym.spaces.Dict:
    """The dexvla observation layout: uint8 (H, W, 3) per camera and float32 (state_dim,), plus
    `ENV_STATE` float32 (env_state_dim,) for a simulator that reports object positions (> 0)."""
    h, w = image_size
    spaces: dict[str, gym.Space] = {
        image_key(cam): gym.spaces.Box(0, 255, (h, w, 3), np.uint8) for cam in cameras
    }
    spaces[STATE] = gym.spaces.Box(-np.inf, np.inf, (state_dim,), np.float32)
    if env_state_dim > 0:
        spaces[ENV_STATE] = gym.spaces.Box(-np.inf, np.inf, (env_state_dim,), np.float32)
    return gym.spaces.Dict(spaces)


def speed_up_rendering(model: mujoco.MjModel) -> None:
    """Turn off shadows and MSAA on a model, in place."""
    model.light_castshadow[:] = 0
    model.vis.quality.offsamples = 0


class CameraRenderer:
    """Renders named cameras of one model at one image size.

    `cameras` maps the embodiment's camera names (the observation keys) to the model's camera
    names, so simulators with other naming conventions still produce the embodiment's keys.
    """

    def __init__(
        self, model: mujoco.MjModel, cameras: dict[str, str], image_size: tuple[int, int]
    ) -> None:
        height, width = image_size
        if height <= 0 or width <= 0:
            raise ValueError(f"image_size must be positive (height, width), got {image_size}")
        for model_cam in cameras.values():
            if mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, model_cam) < 0:
                raise ValueError(f"model has no camera named {model_cam!r}")
        speed_up_rendering(model)
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, height)
        self.cameras = dict(cameras)
        self.image_size = (height, width)
        self._renderer = mujoco.Renderer(model, height=height, width=width)
        _LIVE_RENDERERS.add(self)

    def render(self, data: mujoco.MjData) -> dict[str, np.ndarray]:
        """Return `{image_key(cam): uint8 (H, W, 3)}` for every camera."""
        images = {}
        for cam, model_cam in self.cameras.items():
            self._renderer.update_scene(data, camera=model_cam)
            images[image_key(cam)] = self._renderer.render().copy()
        return images

    def close(self) -> None:
        """Free the GL context now; left to the garbage collector at interpreter exit, EGL
        raises errors from `__del__`."""
        renderer, self._renderer = self._renderer, None
        if renderer is None:
            return
        mjr_context = getattr(renderer, "_mjr_context", None)
        if mjr_context is not None:
            mjr_context.free()
        gl_context = getattr(renderer, "_gl_context", None)
        if gl_context is not None:
            gl_context.free()
            renderer._gl_context = None


_LIVE_RENDERERS: weakref.WeakSet[CameraRenderer] = weakref.WeakSet()


@atexit.register
def _close_live_renderers() -> None:
    """Free GL contexts while EGL is still loaded; at interpreter teardown it is not."""
    for renderer in list(_LIVE_RENDERERS):
        renderer.close()
