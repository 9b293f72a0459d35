"""The command line's contract: every subcommand and flag of the last release still parses."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from dexvla.cli import build_parser

# The flags of 0.1.0 (7d197a4), by subcommand. A flag renamed keeps its old spelling as an alias.
RELEASED_FLAGS: dict[tuple[str, ...], set[str]] = {
    ("models",): {"--json"},
    ("tasks",): {"--json", "--featured"},
    ("collect",): {
        "--task", "--episodes", "--out", "--workers", "--seed", "--image-size",
        "--max-attempts", "--no-progress",
    },
    ("dataset", "info"): {"--json"},
    ("annotate",): {"--episodes", "--evaluate", "--json", "--overwrite", "--sim-task"},
    ("train",): {
        "--stage", "--preset", "--policy", "--data", "--out", "--init", "--resume", "--steps",
        "--batch-size", "--grad-accum", "--lr", "--warmup-steps", "--schedule", "--save-every",
        "--keep-last", "--log-every", "--workers", "--ema", "--precision", "--seed", "--device",
        "--strategy", "--gradient-checkpointing", "--no-gradient-checkpointing", "--llm",
        "--lora-rank", "--lora-alpha", "--lora-dropout", "--freeze-vision", "--no-freeze-vision",
        "--data-weights", "--embodiments", "--image-size", "--llm-loss-weight",
        "--noise-samples", "--no-reasoning", "--print-config",
    },
    ("eval",): {
        "--checkpoint", "--policy", "--task", "--episodes", "--out", "--workers", "--seed",
        "--image-size", "--max-steps", "--device", "--threads", "--videos", "--json",
        "--no-progress", "--execute-steps", "--ensemble", "--reasoning-every",
        "--async-reasoning",
    },
    ("serve",): {
        "--checkpoint", "--host", "--port", "--embodiment", "--api-key", "--max-message-mb",
    },
    ("demo",): {
        "--size", "--preset", "--steps", "--episodes", "--eval-episodes", "--batch-size",
        "--workers", "--out",
    },
    ("benchmark",): {
        "--size", "--preset", "--steps", "--episodes", "--eval-episodes", "--batch-size",
        "--workers", "--out", "--seeds", "--list",
    },
}  # fmt: skip


def _subparser(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> argparse.ArgumentParser:
    for name in path:
        (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        assert name in action.choices, f"`dexvla {' '.join(path)}`: no subcommand {name!r}"
        parser = action.choices[name]
    return parser


@pytest.mark.parametrize("path", sorted(RELEASED_FLAGS), ids=" ".join)
def test_released_flags_still_parse(path: tuple[str, ...]) -> None:
    parser = _subparser(build_parser(), path)
    flags = {option for action in parser._actions for option in action.option_strings}
    missing = sorted(RELEASED_FLAGS[path] - flags)
    assert not missing, f"`dexvla {' '.join(path)}` lost the flags {missing}"


def test_unknown_subcommand_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["no-such-command"])
    assert exit_info.value.code == 2
    assert "no-such-command" in capsys.readouterr().err


def _help_lines(parser: argparse.ArgumentParser) -> dict[str, str]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {choice.dest: choice.help for choice in action._choices_actions}


def test_stand_in_help_lines_match_the_registered_ones() -> None:
    assert _help_lines(build_parser("")) == _help_lines(build_parser())


def test_help_imports_no_command_module() -> None:
    code = (
        "import sys\n"
        "from dexvla.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'dexvla.train') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert "benchmark" in out.stdout


def test_one_command_registers_its_module_only(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser("tasks").parse_args(["tasks", "--help"])
    assert "--featured" in capsys.readouterr().out
    stand_in = _subparser(build_parser("tasks"), ("train",))
    assert not {"--stage", "--preset"} & {o for a in stand_in._actions for o in a.option_strings}


def _failing_summary(path):
    raise OSError(f"[Errno 28] No space left on device: '{path}'\nwhile reading")


def test_a_user_error_is_one_line_and_exit_2_without_traceback(monkeypatch, capsys, tmp_path):
    import dexvla.data.commands
    from dexvla.cli import main

    monkeypatch.delenv("DEXVLA_DEBUG", raising=False)
    monkeypatch.setattr(dexvla.data.commands, "dataset_summary", _failing_summary)
    assert main(["dataset", "info", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"dexvla dataset: error: [Errno 28] No space left on device: '{tmp_path}'; while reading\n"
    )
    with pytest.raises(OSError, match="No space left"):
        main(["--debug", "dataset", "info", str(tmp_path)])
    monkeypatch.setenv("DEXVLA_DEBUG", "1")
    with pytest.raises(OSError, match="No space left"):
        main(["dataset", "info", str(tmp_path)])


def test_a_corrupt_dataset_file_is_one_line_naming_it(tmp_path, make_episode):
    from dexvla.data.act_hdf5 import write_act_episode

    write_act_episode(tmp_path / "episode_0.hdf5", make_episode(0))
    path = tmp_path / "episode_0.hdf5"
    path.write_bytes(path.read_bytes()[:2000])
    done = subprocess.run(
        [sys.executable, "-m", "dexvla.cli", "dataset", "info", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"dexvla dataset: error: {path}: not a readable HDF5 file")
