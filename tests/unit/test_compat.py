"""corunner-run / corunner-cp translate to the corunner tasks' argv; the progress
views print plain lines off a terminal. No sockets."""

from __future__ import annotations

import io

import pytest

from corunner import compat, live, render
from corunner.liveness import Change, Fleet, State


def run_argvs(*argv: str):
    return compat.run_argvs(compat.run_parser().parse_args(list(argv)))


def test_seed_run_pushes_the_file_into_the_remote_dir_then_runs_the_command_there():
    argvs = run_argvs(
        "-n", "-f", "myscript", "-r", "/tmp/corunner", "-i", "1", "python", "/tmp/corunner/myscript"
    )
    assert argvs == [
        ["cp", "--src=myscript", "--dest=/tmp/corunner/"],
        [
            "run",
            "--cmd=python /tmp/corunner/myscript",
            "--files=myscript",
            "--remote-dir=/tmp/corunner",
            "--interval=1",
            "--no-heartbeat",
        ],
    ]


def test_command_words_are_quoted_and_their_options_stay_theirs():
    (run,) = run_argvs("--hosts", "web", "sh", "-c", "echo $HOME; ls 'a b'")
    assert run == ["run", """--cmd=sh -c 'echo $HOME; ls '"'"'a b'"'"''""", "--hosts=web"]


def test_selection_options_pass_through_with_corunners_short_flags():
    (run,) = run_argvs("-H", "lab!n3", "-x", "@failed", "-I", "h.yaml", "-p", "8", "true")
    assert run == [
        "run",
        "--cmd=true",
        "--hosts=lab!n3",
        "--exclude=@failed",
        "--inventory=h.yaml",
        "--parallel=8",
    ]


def test_without_a_remote_dir_files_only_go_into_the_run_directory():
    argvs = run_argvs("-f", "a.py", "-f", "data", "python3", "a.py")
    assert argvs == [["run", "--cmd=python3 a.py", "--files=a.py,data"]]


@pytest.mark.parametrize(
    "argv, message",
    [((), "COMMAND is missing"), (("-f", "a,b", "true"), "file names with a comma")],
)
def test_run_without_a_command_or_with_a_comma_in_a_file_name_is_refused(argv, message):
    with pytest.raises(ValueError, match=message):
        run_argvs(*argv)


def test_cp_maps_each_option_to_the_cp_task():
    args = compat.cp_parser().parse_args(
        ["--pull", "-s", "/tmp/corunner/output", "-d", "all", "--divide", "--inventory", "h.yaml"]
    )
    assert compat.cp_argvs(args) == [
        [
            "cp",
            "--src=/tmp/corunner/output",
            "--dest=all",
            "--inventory=h.yaml",
            "--pull",
            "--divide",
        ]
    ]


def test_explain_prints_the_corunner_commands(capsys):
    compat.run_main(["-f", "s.py", "-r", "/tmp/c", "--explain", "python3", "/tmp/c/s.py"])
    assert capsys.readouterr().out.splitlines() == [
        "corunner cp --src=s.py --dest=/tmp/c/",
        "corunner run '--cmd=python3 /tmp/c/s.py' --files=s.py --remote-dir=/tmp/c",
    ]


def test_usage_errors_exit_2_as_the_tasks_do(capsys):
    with pytest.raises(SystemExit) as exc:
        compat.cp_main(["-s", "x"])
    assert exc.value.code == 2


# -- progress views -------------------------------------------------------------------
def change(host: str, old: State, new: State, reason: str = "heartbeat") -> Change:
    return Change(host, old, new, 0.0, reason)


def test_off_a_terminal_the_run_view_is_plain_timestamped_lines():
    stream = io.StringIO()
    view = live.run_view(stream, ["n1", "n2"], verbose=True)
    assert isinstance(view, live.PlainRunView)
    fleet = Fleet.of(["n1", "n2"], 5.0, 0.0)
    with view:
        view.on_change(change("n1", State.PENDING, State.ALIVE), fleet)
        view.on_change(change("n1", State.ALIVE, State.DEAD, "silent for 5.0s"), fleet)
    lines = stream.getvalue().splitlines()
    assert [ln.split(" ", 1)[1] for ln in lines][:2] == [
        "n1: pending -> alive (heartbeat)",
        "n1: alive -> dead (silent for 5.0s)",
    ]
    assert lines[2].split(" ", 1)[1].startswith("ended: pending 1  dead 1; elapsed")
    assert "\x1b" not in stream.getvalue() and "\r" not in stream.getvalue()


def test_transfer_view_is_silent_off_a_terminal():
    stream = io.StringIO()
    with live.TransferView(stream, 10, "push") as view:
        view.done(None)
    assert stream.getvalue() == ""


def test_live_view_counts_states_and_folds_the_latest_changes():
    view = live.LiveRunView(io.StringIO(), [f"n{i}" for i in range(1, 6)], deadline=60)
    fleet = Fleet.of([], 5.0, 0.0)
    for i in range(1, 6):
        view.on_change(change(f"n{i}", State.PENDING, State.ALIVE), fleet)
    view.on_change(change("n2", State.ALIVE, State.SUCCEEDED, "exit 0"), fleet)
    view.on_change(change("n4", State.ALIVE, State.SUCCEEDED, "exit 0"), fleet)
    assert view.counts[State.ALIVE] == 3 and view.counts[State.SUCCEEDED] == 2
    assert view.counts[State.PENDING] == 0
    assert render.recent(view.recent.values()) == [
        (State.SUCCEEDED, "n[2,4]", 2),
        (State.ALIVE, "n[1,3,5]", 3),
    ]
    assert render.recent(view.recent.values(), width=7) == [
        (State.SUCCEEDED, "n[2,4]", 2),
        (State.ALIVE, "3 hosts", 3),  # cut to the width: n[1,3,5] is 8 characters
    ]


def test_live_view_cuts_the_latest_changes_to_the_terminal_width():
    hosts = [f"node{i:04d}" for i in range(1, 400, 2)]
    view = live.LiveRunView(io.StringIO(), hosts)
    fleet = Fleet.of([], 5.0, 0.0)
    for host in hosts:
        view.on_change(change(host, State.PENDING, State.ALIVE), fleet)
    from rich.console import Console

    view.console.width = 80
    console = Console(file=io.StringIO(), width=80, color_system=None)
    with console.capture() as captured:
        console.print(view.renderable())
    lines = captured.get().splitlines()
    assert all(len(ln) <= 80 for ln in lines)
    (last,) = [ln for ln in lines if "last alive" in ln]
    assert "... and " in last and last.endswith(" more")


def test_recent_keeps_the_most_recent_states_only():
    changes = [change(f"n{i}", State.PENDING, s) for i, s in enumerate(State)]
    assert [s for s, _, _ in render.recent(changes, groups=2)] == list(State)[-1:-3:-1]


def test_elapsed_names_the_deadline_when_there_is_one():
    assert render.elapsed(12.34, None) == "elapsed 12.3s"
    assert render.elapsed(12.34, 60) == "elapsed 12.3s of 60.0s (deadline)"
