"""The tiny preset's tokenizer: a locally trained byte-level BPE with Qwen2-VL's special tokens.

It is built from a fixed corpus with `tokenizers` (deterministic), shipped as
`assets/tiny_tokenizer.json`, and rebuilt with `python -m dexvla.policy.tokenizer`.
Special-token ids differ from Qwen's; every part of the project looks them up by name.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
VOCAB_SIZE = 1024
TOKENIZER_FILE = Path(__file__).parent / "assets" / "tiny_tokenizer.json"

_OBJECTS = "cube box peg socket bin block puck drawer button door handle cup bottle sleeve shirt"
_VERBS = (
    "move reach grasp grip lift hand over transfer place put push pull insert open close release "
    "pour rotate align lower raise approach retreat wait hold press slide fold pick drop return"
)
_WORDS = (
    "the a an to with into onto on in of and then left right arm arms gripper hand fingers "
    "thumb target goal table above below toward home up down both next action task done "
    "you are helpful assistant robot stage step sub-step camera high wrist"
)


def _corpus() -> list[str]:
    """Sentences in the style of instructions and sub-steps, so common words become tokens."""
    objects, verbs, words = _OBJECTS.split(), _VERBS.split(), _WORDS.split()
    lines = [
        f"{verb} the {obj} with the {side} arm"
        for verb in verbs
        for obj in objects
        for side in ("left", "right")
    ]
    lines += [
        f"{verb} the {obj} into the {target}"
        for verb in verbs
        for obj in objects
        for target in ("bin", "socket", "target", "goal")
    ]
    lines += [" ".join(words), "Next action:", "You are a helpful assistant."]
    return lines


def build_tokenizer_json() -> str:
    """Train the byte-level BPE on the fixed corpus and return its JSON."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    return tokenizer.to_str()


def load_tiny_tokenizer(path: Path | None = None) -> PreTrainedTokenizerFast:
    """The shipped tiny tokenizer as a `transformers` fast tokenizer."""
    path = path or TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"tiny tokenizer file {path} is missing; rebuild it with "
            "`python -m dexvla.policy.tokenizer`"
        )
    return PreTrainedTokenizerFast(
        tokenizer_file=str(path),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
    )


if __name__ == "__main__":
    TOKENIZER_FILE.write_text(build_tokenizer_json())
    print(f"wrote {TOKENIZER_FILE}")
