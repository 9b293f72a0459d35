"""DexVLA: a Vision-Language-Action model for general robot control.

Qwen2-VL reads the cameras, the robot state and the instruction, generates the current
sub-step as text, and its hidden states condition ScaleDP, a DiT-style diffusion expert that
denoises a chunk of continuous actions.
"""

__version__ = "0.1.0"
