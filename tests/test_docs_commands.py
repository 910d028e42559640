"""What README.md and docs/*.md tell a reader to run or to open exists.

- Every `dice ...` command (and `python -m pipelines.<module> ...`) in a shell code block or
  an inline code span parses with the CLI's own parser (`pipelines.cli.build_parser`), and
  the models, profiles and `-S KEY=VALUE` overrides it names exist.
- Every params key the docs name in backticks (`train.steps`, `train.per_model.<model>`)
  exists in params.yaml, read through its schema (dice_core/config.py) for the mappings whose
  keys are free (per-model entries, model overrides).
- Every repository path they name (`bench/results/x.md`, `dice_core/...`, links, images)
  exists; paths made at run time are excluded by RUN_TIME_PATHS, and path-like names that are
  not paths are listed in NOT_PATHS.
- Every `make` target, `dvc repro` stage and `dice_core`/`pipelines` Python name they use
  exists.

Nothing is trained or run: parsing and lookups only.
"""
from __future__ import annotations

import ast
import contextlib
import importlib
import io
import re
import shlex
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Paths a run writes (or a user makes): named in the docs, absent from a fresh clone.
RUN_TIME_PATHS = ("runs/", "data/", "results/", ".venv/", ".cache/", ".ui/", ".prefect/",
                  "mlartifacts/", ".whl/", ".dvc/tmp/", "dvc.lock", "mlflow.db",
                  "<train.output>/", "<evaluate.output>/", "<output>/")
# Names with a slash that are not paths of this repository, each with what it is.
NOT_PATHS = {
    "dice-pipeline/dice-nightly": "the Prefect deployment (flow/deployment)",
    "stabilityai/sd-vae-ft-ema": "the SD-VAE's hub id",
    "train/<wnid>/*.JPEG": "ImageNet's layout under prepare.root",
    "val/<wnid>/*": "ImageNet's layout under prepare.root",
    "val/*.JPEG": "ImageNet's layout under prepare.root",
    "<model>/<metric>": "MLflow metric names of the parent run",
}
NOT_PATH_PREFIXES = ("eval/", "train/lr", "ray://")   # MLflow metric names, a Ray address
# Top-level file names checked when named without a folder.
TOP_LEVEL_FILE = re.compile(r"^[\w.-]+\.(yaml|yml|toml|txt|lock|cfg)$|^Makefile$")
NOT_TOP_LEVEL_FILES = {"val_labels.txt"}                 # ImageNet's, under prepare.root
FILE_SUFFIXES = {"py", "md", "yaml", "yml", "json", "jsonl", "npz", "png", "csv", "txt",
                 "safetensors", "sh", "toml", "lock", "tar", "db", "pth"}
SHELL_LANGUAGES = {"", "sh", "bash", "shell", "console"}
OPERATORS = {"&&", "||", ";", "|"}


@dataclass(frozen=True)
class Snippet:
    doc: Path
    line: int
    text: str

    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def fenced_blocks(doc: Path) -> list[tuple[str, Snippet]]:
    text = doc.read_text()
    return [(m.group(1), Snippet(doc, line_of(text, m.start(2)), m.group(2)))
            for m in FENCE.finditer(text)]


def prose(doc: Path) -> str:
    """The document with its fenced blocks blanked (line numbers kept)."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), doc.read_text())


def inline_spans(doc: Path) -> list[Snippet]:
    text = prose(doc)
    return [Snippet(doc, line_of(text, m.start()), " ".join(m.group(1).split()))
            for m in INLINE.finditer(text)]


def shell_lines(block: Snippet) -> list[Snippet]:
    """The block's lines, backslash continuations joined."""
    lines, pending, start = [], "", 0
    for number, line in enumerate(block.text.splitlines()):
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        lines.append(Snippet(block.doc, block.line + start, pending + line))
        pending = ""
    return lines


def shell_commands(snippet: Snippet) -> list[list[str]]:
    """Each command of a shell line as argv, comments dropped, split at && ; | and with
    leading VAR=value assignments removed."""
    commands, current = [], []
    try:
        tokens = shlex.split(snippet.text, comments=True)
    except ValueError as error:
        raise ValueError(f"{snippet.where()}: {error}: {snippet.text}") from None
    for token in tokens:
        if token in OPERATORS:
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    result = []
    for argv in commands:
        while argv and re.match(r"^[A-Z_][A-Z0-9_]*=", argv[0]):
            argv = argv[1:]
        if argv:
            result.append(argv)
    return result


def all_commands() -> list[tuple[Snippet, list[str]]]:
    found = []
    for doc in DOCS:
        for language, block in fenced_blocks(doc):
            if language in SHELL_LANGUAGES:
                for line in shell_lines(block):
                    found += [(line, argv) for argv in shell_commands(line)]
        for span in inline_spans(doc):
            if re.match(r"^(dice|make|dvc) \S|^python3? -m pipelines\.\w", span.text) \
                    and "<" not in span.text and not re.search(r"(^| )\.\.\.( |$)", span.text):
                found += [(span, argv) for argv in shell_commands(span)]
    return found


COMMANDS = all_commands()


def dice_argv(argv: list[str]) -> list[str] | None:
    """The `dice` arguments of a command line, or None when it is not one."""
    if Path(argv[0]).name == "dice":
        return argv[1:]
    if Path(argv[0]).name.startswith("python") and argv[1:2] == ["-m"] and len(argv) > 2 \
            and argv[2].startswith("pipelines."):
        module = argv[2].removeprefix("pipelines.")
        if module == "cli":
            return argv[3:]
        from pipelines import cli
        names = {name: name for name, _ in cli.STAGES} | {m: c for m, c, _ in cli.COMMANDS}
        assert module in names, f"python -m pipelines.{module}: no such command module"
        return [names[module], *argv[3:]]
    return None


DICE = [(snippet, args) for snippet, argv in COMMANDS if (args := dice_argv(argv)) is not None]


def parse(args: list[str]):
    """``args`` through the parser ``dice`` itself builds; a failure names argparse's error."""
    from pipelines.cli import build_parser
    command = next((a for a in args if not a.startswith("-")), None)
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return build_parser(command).parse_args(args)
    except SystemExit:
        pass
    pytest.fail(f"`dice {shlex.join(args)}` does not parse: {errors.getvalue().strip()}")


# -- params keys ---------------------------------------------------------------------------

def params_schema():
    from dice_core.config import Params, load_params
    load_params(ROOT / "params.yaml")   # the keys below are the file's: it matches the schema
    return Params


def key_exists(annotation, parts: list[str]) -> bool:
    """Whether the dotted key ``parts`` leads somewhere in ``annotation``: a field of a
    section, any key of a mapping, ``<name>`` standing for any key."""
    if not parts:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return key_exists(typing.get_args(annotation)[0], parts)
    if origin in (typing.Union, types.UnionType):
        return any(key_exists(arg, parts) for arg in typing.get_args(annotation)
                   if arg is not type(None))
    if origin is dict:
        return key_exists(typing.get_args(annotation)[1], parts[1:])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        head = parts[0]
        if head.startswith("<"):
            return any(key_exists(f.annotation, parts[1:])
                       for f in annotation.model_fields.values())
        field = annotation.model_fields.get(head)
        return field is not None and key_exists(field.annotation, parts[1:])
    return False


def missing_key(key: str) -> str | None:
    if not key_exists(params_schema(), key.split(".")):
        return f"{key} is not a key of params.yaml"
    return None


SECTIONS = tuple(yaml.safe_load((ROOT / "params.yaml").read_text()))
PARAMS_KEY = re.compile(rf"^({'|'.join(SECTIONS)})((?:\.[\w<>-]+)+)(?:\s*[:=].*)?$")


def params_keys() -> list[tuple[Snippet, str]]:
    found = []
    for doc in DOCS:
        for span in inline_spans(doc):
            match = PARAMS_KEY.match(span.text)
            if match and match.group(2).rsplit(".", 1)[-1] not in FILE_SUFFIXES:
                found.append((span, match.group(1) + match.group(2)))
    return found


# -- repository paths ----------------------------------------------------------------------

def is_path_like(token: str) -> bool:
    return ("/" in token and " " not in token and "=" not in token and "://" not in token
            and not token.startswith(("/", "~", "$", "-", "http")) and not token.endswith(":"))


def path_tokens() -> list[tuple[Snippet, str]]:
    found = []
    for doc in DOCS:
        for span in inline_spans(doc):
            token = span.text.split("(")[0] if span.text.startswith(("dice_core.", "pipelines."))\
                else span.text
            if is_path_like(token) or TOP_LEVEL_FILE.match(token):
                found.append((span, token))
        for snippet, argv in COMMANDS:
            if snippet.doc == doc:
                found += [(snippet, token) for token in argv[1:] if is_path_like(token)]
    return found


def expand_braces(pattern: str) -> list[str]:
    match = re.search(r"\{([^{}]*,[^{}]*)\}", pattern)
    if not match:
        return [pattern]
    return [expanded for choice in match.group(1).split(",")
            for expanded in expand_braces(pattern[:match.start()] + choice + pattern[match.end():])]


def missing_path(token: str) -> str | None:
    if token.startswith(RUN_TIME_PATHS) or token in NOT_PATHS \
            or token.startswith(NOT_PATH_PREFIXES) or token in NOT_TOP_LEVEL_FILES:
        return None
    patterns = [re.sub(r"<[^>]*>", "*", p) for p in expand_braces(token.rstrip("/"))]
    if token.startswith("./"):
        return missing_path(token[2:])
    if any(any(ROOT.glob(p)) if "*" in p else (ROOT / p).exists() for p in patterns):
        return None
    return (f"{token}: no such path in the repository (if it is made at run time or is not a "
            f"path, add it to RUN_TIME_PATHS or NOT_PATHS)")


def links() -> list[tuple[Snippet, str]]:
    found = []
    for doc in DOCS:
        text = prose(doc)
        for match in LINK.finditer(text):
            target = match.group(1).split("#")[0]
            if target and "://" not in target and not target.startswith("mailto:"):
                found.append((Snippet(doc, line_of(text, match.start()), target), target))
    return found


# -- Python names --------------------------------------------------------------------------

def resolve(dotted: str) -> object:
    """The object ``a.b.c`` names: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            value = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            value = getattr(value, attribute)
        return value
    raise ModuleNotFoundError(dotted)


def python_names() -> list[tuple[Snippet, str]]:
    found = []
    dotted = re.compile(r"^((?:dice_core|pipelines)(?:\.\w+)+)(?:\(|$)")
    for doc in DOCS:
        for span in inline_spans(doc):
            if match := dotted.match(span.text):
                found.append((span, match.group(1)))
        for language, block in fenced_blocks(doc):
            if language != "python":
                continue
            for node in ast.walk(ast.parse(block.text)):
                if isinstance(node, ast.ImportFrom) and node.module.split(".")[0] in (
                        "dice_core", "pipelines"):
                    found += [(block, f"{node.module}.{alias.name}") for alias in node.names]
    return found


# -- tests ---------------------------------------------------------------------------------

def ids(cases):
    return [f"{snippet.where()} {text if isinstance(text, str) else shlex.join(text)}"
            for snippet, text in cases]


def test_the_docs_name_commands_keys_and_paths():
    """The extraction finds what the docs hold, so that the tests below are not vacuous."""
    assert len(DICE) >= 20
    commands = {args[0] for _, args in DICE}
    assert {"flow", "profile", "train", "evaluate", "static"} <= commands
    assert len(params_keys()) >= 50
    assert any(token.startswith("bench/results/") for _, token in path_tokens())


def named_things_missing(parsed) -> list[str]:
    """What a parsed command names that does not exist: override keys, profiles, models,
    the params file."""
    from dice_core.errors import DiceError
    from dice_core.models import get_preset, list_models
    from pipelines.settings import profile_path
    problems = [problem for text in (getattr(parsed, "overrides", None) or [])
                if (problem := missing_key(text.partition("=")[0]))]
    profiles = [getattr(parsed, "profile", None),
                parsed.name if parsed.command == "profile" else None]
    families = {get_preset(name).family for name in list_models()}
    named = getattr(parsed, "model", None) or getattr(parsed, "models", None) or []
    models = [m for m in ([named] if isinstance(named, str) else named) if m not in families]
    checks = [(profile_path, p) for p in profiles if p] + [(get_preset, m) for m in models]
    for check, name in checks:
        try:
            check(name)
        except DiceError as error:
            problems.append(str(error))
    params = getattr(parsed, "params", None)
    if params and not (ROOT / params).is_file():
        problems.append(f"--params {params} does not exist")
    return problems


@pytest.mark.parametrize("snippet, args", DICE, ids=ids(DICE))
def test_every_dice_command_parses_with_the_cli_parser(snippet, args):
    problems = named_things_missing(parse(args))
    assert not problems, f"{snippet.where()}: " + "; ".join(problems)


PARAMS_KEYS = params_keys()


@pytest.mark.parametrize("snippet, key", PARAMS_KEYS, ids=ids(PARAMS_KEYS))
def test_every_params_key_named_exists(snippet, key):
    assert missing_key(key) is None, f"{snippet.where()}: {missing_key(key)}"


def test_every_repository_path_named_exists():
    problems = [f"{snippet.where()}: {problem}" for snippet, token in path_tokens()
                if (problem := missing_path(token))]
    problems += [f"{snippet.where()}: link to {target}, which does not exist"
                 for snippet, target in links()
                 if not (snippet.doc.parent / target).resolve().exists()]
    assert not problems, "\n".join(problems)


def test_every_make_target_and_dvc_stage_named_exists():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    runs = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]["runs"]
    problems = []
    for snippet, argv in COMMANDS:
        if argv[0] == "make":
            problems += [f"{snippet.where()}: make {t}: no such target"
                         for t in argv[1:] if not t.startswith("-") and t not in targets]
        if Path(argv[0]).name == "dvc" and argv[1:2] == ["repro"]:
            for target in (a for a in argv[2:] if not a.startswith("-")):
                name, _, item = target.partition("@")
                known = name in stages and (not item or ("foreach" in stages[name]
                                                         and item in runs))
                if not known:
                    problems.append(f"{snippet.where()}: dvc repro {target}: no such stage")
    assert not problems, "\n".join(problems)


def test_every_python_name_named_exists():
    problems = []
    for snippet, dotted in python_names():
        try:
            resolve(dotted)
        except (ImportError, AttributeError) as error:
            problems.append(f"{snippet.where()}: {dotted}: {error}")
    assert not problems, "\n".join(problems)
