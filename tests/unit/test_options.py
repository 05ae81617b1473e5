"""One table of short flags, the same in every task and in corunner-run /
corunner-cp; no task takes -h; corunner's core options only; suggestions and
the re-run hint. No sockets: Invoke's parser contexts and argparse parsers."""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
from invoke import Collection

from corunner import compat
from corunner.cli import ns as product
from corunner.cli import program
from corunner.options import (
    CORE,
    FLAGS,
    NOT_SUCCEEDED,
    SHORT,
    CorunnerProgram,
    rerun_command,
    rerun_hint,
    suggestion,
)

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"


def checkout_tasks() -> Collection:
    """The checkout's tasks.py namespace (the product's tasks and lab.*)."""
    spec = importlib.util.spec_from_file_location("checkout_tasks", REPO / "tasks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ns


def every_task(collection: Collection) -> List[Tuple[str, object]]:
    """(dotted name, parser context) of every task, subcollections too."""
    return [(ctx.name, ctx) for ctx in collection.to_contexts()]


def flags_of(context: object) -> Dict[str, List[str]]:
    """long name -> its short names, for one task's parser context."""
    out: Dict[str, List[str]] = {}
    for arg in context.args.values():  # type: ignore[attr-defined]
        names = list(arg.names)
        out[names[0]] = [n for n in names[1:] if len(n) == 1]
    return out


TASKS = every_task(checkout_tasks())


def test_retabled_tasks_keep_their_docstrings() -> None:
    lab = checkout_tasks().collections["lab"]
    assert all(task.__doc__ for task in lab.tasks.values())


def test_the_table_is_one_letter_per_option() -> None:
    shorts = [f.short for f in FLAGS]
    longs = [f.long for f in FLAGS]
    assert len(set(shorts)) == len(shorts) and len(set(longs)) == len(longs)
    assert all(len(s) == 1 for s in shorts)
    assert not set(shorts) & {short for short in CORE.values() if short}


@pytest.mark.parametrize("name, context", TASKS, ids=[name for name, _ in TASKS])
def test_every_tasks_short_flags_come_from_the_table(name: str, context: object) -> None:
    for long, shorts in flags_of(context).items():
        expected = [SHORT[long]] if long in SHORT else []
        assert shorts == expected, f"{name} --{long}: {shorts}"
        assert "h" not in shorts, f"{name} --{long} takes -h"


def test_the_product_tasks_use_most_of_the_table() -> None:
    used = {long for _, ctx in every_task(product) for long in flags_of(ctx)}
    assert set(SHORT) <= used  # no letter is reserved for an option nobody has


def test_every_task_that_selects_hosts_has_exclude_and_dry() -> None:
    for name, ctx in every_task(product):
        flags = flags_of(ctx)
        if "hosts" in flags:
            assert "exclude" in flags, name
            if name != "hosts":  # the hosts task contacts no node
                assert "dry" in flags, name


def argparse_flags(parser: argparse.ArgumentParser) -> Dict[str, str]:
    """long name -> short letter, for the options of a compat parser that have both."""
    out = {}
    for action in parser._actions:
        longs = [o[2:] for o in action.option_strings if o.startswith("--")]
        shorts = [o[1:] for o in action.option_strings if len(o) == 2]
        if longs and shorts:
            out[longs[0]] = shorts[0]
    return out


@pytest.mark.parametrize("parser", [compat.run_parser(), compat.cp_parser()], ids=["run", "cp"])
def test_corunner_run_and_cp_agree_with_the_table(parser: argparse.ArgumentParser) -> None:
    theirs = argparse_flags(parser)
    theirs.pop("help")
    by_letter = {f.short: f.long for f in FLAGS}
    for long, short in theirs.items():
        long = "files" if long == "file" else long  # corunner-run -f FILE, repeated
        assert SHORT.get(long) == short, f"corunner-{parser.prog[9:]} -{short} --{long}"
        assert by_letter[short] == long


def test_readme_lists_the_table() -> None:
    text = README.read_text()
    rows = re.findall(r"^\| `-(\w)` \| `--([a-z-]+)` \| (.+?) \|$", text, re.M)
    assert [(s, long) for s, long, _ in rows] == [(f.short, f.long) for f in FLAGS]


def test_corunner_program_keeps_only_its_core_options() -> None:
    names = {arg.name for arg in program.core_args()}
    assert names == set(CORE)
    assert isinstance(program, CorunnerProgram)
    for arg in program.core_args():
        shorts = [n for n in arg.names if len(n) == 1]
        assert shorts == ([CORE[arg.name]] if CORE[arg.name] else [])


def test_corunner_program_runs_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    CorunnerProgram(namespace=product, name="corunner", binary="corunner").run(
        ["corunner", "run", "-h"], exit=False
    )
    out = capsys.readouterr().out
    assert out.startswith("Usage: corunner [--core-opts] run [--options]")
    assert "-H STRING, --hosts=STRING" in out and "-x STRING, --exclude=STRING" in out


def run_context() -> object:
    return dict(every_task(product))["run"]


@pytest.mark.parametrize(
    "message, expected",
    [
        ("No idea what '--cmnd' is!", " did you mean --cmd?"),
        ("No idea what '--cmnd=true' is!", " did you mean --cmd?"),
        ("No idea what '--host' is!", " did you mean --hosts?"),
        ("No idea what '--dryrun' is!", " did you mean --dry?"),
        ("No idea what '--no-hearbeat' is!", " did you mean --no-heartbeat?"),
        ("No idea what '--zzz' is!", " (corunner run --help lists its options)"),
        ("Flag 'x' needed value and was not given one!", ""),
    ],
)
def test_suggestion_for_an_option(message: str, expected: str) -> None:
    assert suggestion(message, run_context(), product, "corunner") == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "word, expected",
    [
        ("rnu", " did you mean run?"),
        ("colect", " did you mean collect?"),
        ("zz", " (corunner --list lists the tasks)"),
    ],
)
def test_suggestion_for_a_task(word: str, expected: str) -> None:
    assert suggestion(f"No idea what '{word}' is!", None, product, "corunner") == expected


RERUN = [
    (
        ["corunner", "run", "--cmd", "uname -r"],
        "corunner run --cmd 'uname -r' --hosts @not-succeeded",
    ),
    (
        ["inv", "run", "-H", "lab", "-c", "true", "--exclude=n3"],
        "inv run -c true --hosts @not-succeeded",
    ),
    (["inv", "run", "-Hlab,!n3", "-x", "n4", "-c", "x"], "inv run -c x --hosts @not-succeeded"),
    (["inv", "run", "--hosts=@failed", "--json"], "inv run --json --hosts @not-succeeded"),
    (
        ["/venv/lib/corunner/__main__.py", "run", "--script", "a b.py"],
        "python3 -m corunner run --script 'a b.py' --hosts @not-succeeded",
    ),
]


@pytest.mark.parametrize("argv, command", RERUN)
def test_rerun_command_replaces_the_selection(argv: List[str], command: str) -> None:
    assert rerun_command(NOT_SUCCEEDED, argv) == command


def test_rerun_hint_for_a_copy_names_the_failed_hosts() -> None:
    hint = rerun_hint("node[3,7]", ["corunner", "cp", "-s", "f", "-d", "/tmp/", "-H", "web"])
    assert hint == "re-run just those hosts with: corunner cp -s f -d /tmp/ --hosts 'node[3,7]'"
