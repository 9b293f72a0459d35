"""The DexVLA model: Qwen2-VL backbone, reasoning fusion, ScaleDP diffusion expert, policy."""
