"""Nothing in the package can run code from a file or a message: no pickle, eval, exec,
torch.load without weights_only=True, np.load with allow_pickle, or yaml.load without the safe
loader. Read from the source (text for pickle, the syntax tree for calls), so a use anywhere,
in a function or behind a flag, is seen."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dexvla"

# Any mention of a pickle-based module, in code or prose (prose must be allow-listed below).
PICKLE = re.compile(r"\b(?:c?pickle|dill|cloudpickle|joblib|shelve|marshal)\b")
# Builtins that run code from a string (methods such as `model.eval()` are other names).
CODE_BUILTINS = frozenset({"eval", "exec", "compile", "__import__"})


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def call_rule(call: ast.Call) -> str | None:
    """The rule a call breaks, if any: judged on its keywords, wherever its parentheses are."""
    func = call.func
    if isinstance(func, ast.Name) and func.id in CODE_BUILTINS:
        return f"{func.id}("
    if not isinstance(func, ast.Attribute):
        return None
    owner = func.value.id if isinstance(func.value, ast.Name) else None
    if owner == "builtins" and func.attr in CODE_BUILTINS:
        return f"{func.attr}("
    if owner == "torch" and func.attr == "load" and not _is_true(_keyword(call, "weights_only")):
        return "torch.load without weights_only=True"
    allow = _keyword(call, "allow_pickle")
    refused = isinstance(allow, ast.Constant) and allow.value is False
    if owner in ("np", "numpy") and func.attr == "load" and allow is not None and not refused:
        return "np.load with allow_pickle"
    if owner == "yaml" and func.attr in ("load", "load_all"):
        loader = _keyword(call, "Loader") or (call.args[1] if len(call.args) > 1 else None)
        if loader is None or "Safe" not in ast.unparse(loader):
            return "yaml.load without SafeLoader"
    if owner == "yaml" and func.attr in ("unsafe_load", "full_load", "unsafe_load_all"):
        return "yaml unsafe loader"
    return None


# (file relative to the package, rule) -> (what the line must look like, why it is allowed).
# Each is prose saying the package never unpickles, or the catch of the error torch raises
# when `weights_only=True` refuses a file; none is a use. A new use in the same file still fails.
NEVER_UNPICKLES = r"pickle-free|No pickle|is a pickle|`pickle\.load`"
ALLOWED: dict[tuple[str, str], tuple[str, str]] = {
    ("serve/protocol.py", "pickle"): (NEVER_UNPICKLES, "docstring: object dtypes refused"),
    ("train/checkpoint.py", "pickle"): (NEVER_UNPICKLES, "docstring: pickle-free checkpoints"),
    ("train/shards.py", "pickle"): (NEVER_UNPICKLES, "docstring: why not torch's dcp format"),
    ("train/distributed.py", "pickle"): (NEVER_UNPICKLES, "docstring: pickle-free checkpoints"),
    ("released/expert.py", "pickle"): (
        r"^import pickle$|^except pickle\.UnpicklingError as error:$",
        "catches the error torch.load(weights_only=True) raises on a file needing code",
    ),
}


def hits(text: str) -> list[tuple[int, str, str]]:
    """(line number, rule, line) for every forbidden use or mention in one file's text."""
    lines = text.splitlines()
    found = [
        (number, "pickle", line.strip())
        for number, line in enumerate(lines, 1)
        if PICKLE.search(line)
    ]
    for node in ast.walk(ast.parse(text)):
        rule = call_rule(node) if isinstance(node, ast.Call) else None
        if rule is not None:
            found.append((node.lineno, rule, lines[node.lineno - 1].strip()))
    return sorted(found)


def test_the_rules_catch_what_they_name_and_spare_methods() -> None:
    caught = [
        "import pickle",
        "data = pickle.loads(blob)",
        "value = eval(text)",
        "exec(code)",
        "state = torch.load(path)",
        "state = torch.load(path, weights_only=False)",
        "arrays = np.load(path, allow_pickle=True)",
        "config = yaml.load(stream)",
        "config = yaml.unsafe_load(stream)",
        "builtins.exec(code)",
        "state = torch.load(str(path), map_location='cpu')",
        "state = torch.load(\n    path,\n    weights_only=False,\n)",
    ]
    for line in caught:
        assert hits(line), line
    spared = [
        "model.eval()",
        "self.vlm.eval()",
        "ast.literal_eval(text)",
        "state = torch.load(path, weights_only=True)",
        "arrays = np.load(path)",
        "config = yaml.load(stream, Loader=yaml.SafeLoader)",
        "config = yaml.safe_load(stream)",
        "self.compiled_trunk = torch.compile(self.trunk)",
        "pattern = re.compile(r'x')",
        "def run_eval(args): pass",
        "state = torch.load(str(path), map_location=str(device), weights_only=True)",
        "arrays = np.load(path, allow_pickle=False)",
    ]
    for line in spared:
        assert not hits(line), line


def test_nothing_in_the_package_can_unpickle_or_run_code() -> None:
    problems = []
    used_allowances = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        for number, rule, line in hits(path.read_text()):
            allowed = ALLOWED.get((relative, rule))
            if allowed is not None and re.search(allowed[0], line):
                used_allowances.add((relative, rule))
                continue
            problems.append(f"src/dexvla/{relative}:{number}: {rule}: {line}")
    assert not problems, "forbidden in the package:\n" + "\n".join(problems)
    stale = set(ALLOWED) - used_allowances
    assert not stale, f"allow-list entries that match nothing any more: {sorted(stale)}"
