"""`torchext-profile`: run (script and -m), examples, compare; formats, --top, errors; a user's
error as `python script.py` prints it; the layout (the profiler's CLI imports nothing of ours).

In-process through the console script's `main([...])` (reports/cli.py) on tiny scripts written
to tmp_path (3 sin ops on 8 float32 elements: 96 saved bytes); `python script.py` and the
installed console script run in subprocesses where the test compares against them.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import re
import shutil
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

import reports.cli
import torchext.cli
from profiling import cli, profile
from profiling.export import load_profile

ROOT = Path(__file__).resolve().parents[1]

SIN_CHAIN = """\
import json, sys
import torch
x = torch.arange(8.0, requires_grad=True)
y = x
for _ in range({n}):
    y = torch.sin(y)
y.sum().backward()
with open({record!r}, "w") as f:
    json.dump({{"argv": sys.argv, "name": __name__, "path0": sys.path[0]}}, f)
"""


def write_script(tmp_path: Path, name: str = "chain.py", n: int = 3, tail: str = "") -> Path:
    script = tmp_path / name
    script.write_text(SIN_CHAIN.format(n=n, record=str(tmp_path / f"{name}.json")) + tail)
    return script


def recorded(script: Path) -> dict:
    return json.loads(Path(f"{script}.json").read_text())


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """`torchext-profile ARGV...` in-process: (exit status, stdout, stderr)."""
    code = reports.cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_run_profiles_a_script_like_cprofile(tmp_path, capsys):
    script, out = write_script(tmp_path), tmp_path / "out"
    argv_before, path_before = sys.argv[:], sys.path[:]
    code, stdout, stderr = run_cli(capsys, "run", "--out", out, script, "a", "--flag")
    assert code == 0, stderr
    assert "note" not in stderr  # no option of ours after the script
    assert recorded(script) == {"argv": [str(script), "a", "--flag"], "name": "__main__",
                                "path0": str(tmp_path)}
    assert sys.argv == argv_before and sys.path == path_before
    assert "Top 10 operators by saved bytes" in stdout and "saved for backward: 96 B" in stdout
    sin_row = next(line for line in stdout.splitlines() if line.startswith("aten::sin"))
    assert sin_row.split()[:5] == ["aten::sin", "forward", "3", "96", "B"]
    assert f"report written to {out}/" in stderr and "profiling" in stderr
    profile = load_profile(out)
    assert (profile.ops["op"] == "aten::sin").sum() == 3
    assert profile.meta["command"] == f"torchext-profile run {script} a --flag"
    assert (out / "report.html").is_file() and (out / "trace.json").is_file()


def test_run_dash_m_runs_a_module_as_main(tmp_path, capsys, monkeypatch):
    write_script(tmp_path, "chain_module.py")
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = run_cli(capsys, "run", "--top", "1", "-m", "chain_module", "--x", "1")
    assert code == 0, stderr
    record = recorded(tmp_path / "chain_module.py")
    assert record["name"] == "__main__" and record["argv"][1:] == ["--x", "1"]
    assert record["argv"][0] == str(tmp_path / "chain_module.py")
    assert (tmp_path / "profile_out" / "profile.json").is_file()  # the default --out


@pytest.mark.parametrize("argv, message", [
    (["run", "missing.py"], "can't open file 'missing.py'"),
    (["run", "-m", "no_such_module_here"], "no module named 'no_such_module_here'"),
    (["run"], "give a script"),
    (["compare", "nowhere_a", "nowhere_b"], "cannot read profile nowhere_a"),
    (["run", "--top", "0", "x.py"], "must be at least 1"),
    (["run", "--device", "nonsense", "x.py"], "Expected one of cpu"),
    (["examples", "--device", "cuda:0"] if not torch.cuda.is_available() else ["run", "x.py"],
     "CUDA is not available" if not torch.cuda.is_available() else "can't open file"),
])  # fmt: skip
def test_usage_errors_exit_2_without_traceback(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = run_cli(capsys, *argv)
    assert code == 2 and message in stderr and "Traceback" not in stderr
    assert not (tmp_path / "profile_out").exists()


def test_a_raising_script_prints_its_traceback_and_keeps_the_partial_profile(tmp_path, capsys):
    script = write_script(tmp_path, n=2, tail='raise ValueError("boom")\n')
    code, stdout, stderr = run_cli(capsys, "run", "--out", tmp_path / "out", script)
    assert code == 1
    assert "Traceback (most recent call last)" in stderr and "ValueError: boom" in stderr
    assert f'File "{script}", line 10, in <module>' in stderr
    assert "cli.py" not in stderr and "_launch.py" not in stderr and "runpy" not in stderr
    assert "partial" in stderr
    ops = load_profile(tmp_path / "out").ops
    assert ops.loc[ops["op"] == "aten::sin", "saved_bytes"].sum() == 2 * 32


def test_sys_exit_in_the_script_is_its_exit_status_and_progress_shows(tmp_path, capsys,
                                                                      monkeypatch):
    monkeypatch.setattr(cli, "HEARTBEAT_S", 0.05)
    script = write_script(tmp_path, n=1, tail="import time\ntime.sleep(0.3)\nsys.exit(3)\n")
    code, stdout, stderr = run_cli(capsys, "run", "--out", tmp_path / "out", script)
    assert code == 3 and "Traceback" not in stderr
    assert "still profiling" in stderr and "still profiling" not in stdout
    assert (tmp_path / "out" / "profile.json").is_file()
    assert cli.exit_status(SystemExit()) == 0 and cli.exit_status(SystemExit(0)) == 0
    assert cli.exit_status(SystemExit("a message")) == 1 and "a message" in capsys.readouterr().err


@pytest.fixture(scope="module")
def two_reports(tmp_path_factory) -> tuple[dict, dict]:
    """A 3-sin chain run with --format csv --top 1 and a 1-sin chain with --format md, once for
    the format and compare tests: {folder, stdout} each."""
    root = tmp_path_factory.mktemp("reports")
    runs = []
    for n, options in ((3, ["--format", "csv", "--top", "1"]), (1, ["--format", "md"])):
        script, stdout = write_script(root, f"chain{n}.py", n=n), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
            assert reports.cli.main(["run", *options, "--out", str(root / f"out{n}"),
                                     str(script)]) == 0
        runs.append({"folder": root / f"out{n}", "stdout": stdout.getvalue()})
    return runs[0], runs[1]


def test_format_json_prints_the_top_tables(tmp_path, capsys):
    script = write_script(tmp_path)
    code, stdout, _ = run_cli(capsys, "run", "--format", "json", "--top", "2",
                              "--out", tmp_path / "out", script)
    payload = json.loads(stdout)
    assert code == 0 and payload["saved_bytes"] == 96 and payload["out"] == str(tmp_path / "out")
    assert payload["top_by_saved"] == [{"op": "aten::sin", "phase": "forward", "calls": 3,
                                        "saved_bytes": 96, "saved_new_bytes": 64,
                                        "peak_bytes": payload["top_by_saved"][0]["peak_bytes"],
                                        "time_ms": payload["top_by_saved"][0]["time_ms"]}]
    assert len(payload["top_by_peak"]) == 2  # --top 2
    peaks = [row["peak_bytes"] for row in payload["top_by_peak"]]
    assert peaks == sorted(peaks, reverse=True) and peaks[0] == payload["meta"]["peak_bytes"]


def test_format_csv_and_md(two_reports):
    csv_run, md_run = two_reports
    table = pd.read_csv(io.StringIO(csv_run["stdout"]))
    assert list(table.columns[:3]) == ["table", "op", "phase"]
    assert table["table"].tolist() == ["top_by_saved", "top_by_peak"]  # one row each (--top 1)
    assert table.loc[0, "saved_bytes"] == 96
    assert "## Top 10 operators by saved bytes" in md_run["stdout"]
    assert "| aten::sin | forward | 1 | 32 B | 0 B |" in md_run["stdout"]
    assert "- **saved for backward**: 32 B" in md_run["stdout"]


def test_compare_renders_the_diff(two_reports, capsys, tmp_path):
    three, one = two_reports[0]["folder"], two_reports[1]["folder"]
    code, stdout, _ = run_cli(capsys, "compare", three, one, "--format", "json")
    payload = json.loads(stdout)
    sin = next(row for row in payload["ops"] if row["op"] == "aten::sin")
    assert code == 0
    assert (sin["calls_a"], sin["calls_b"], sin["saved_bytes_delta"]) == (3, 1, -64)
    assert sin["saved_bytes_ratio"] == pytest.approx(1 / 3)
    totals = {row["metric"]: row for row in payload["totals"]}
    assert totals["saved_bytes"]["delta"] == -64.0
    code, stdout, _ = run_cli(capsys, "compare", three, one, "--out", tmp_path / "cmp")
    assert "Totals (B - A)" in stdout
    saved_total = next(line for line in stdout.splitlines() if line.startswith("saved "))
    assert saved_total.split() == ["saved", "96", "B", "32", "B", "-64", "B", "0.333"]
    sin_line = next(line for line in stdout.splitlines() if line.startswith("aten::sin"))
    assert sin_line.split()[2:8] == ["96", "B", "32", "B", "-64", "B"]
    assert (tmp_path / "cmp" / "compare_ops.csv").is_file()
    code, stdout, _ = run_cli(capsys, "compare", three, one, "--format", "csv", "--top", "1")
    table = pd.read_csv(io.StringIO(stdout))
    assert table["table"].tolist() == ["ops", "modules"]


def test_examples_profiles_each_example(tmp_path, capsys, monkeypatch):
    def sin_example() -> dict:
        x = torch.ones(8, requires_grad=True)
        torch.sin(torch.sin(x)).sum().backward()
        return {"x.grad": x.grad}

    def broken_example() -> dict:
        raise RuntimeError("example failed")

    fake = types.ModuleType("torchext.examples")
    fake.EXAMPLES = {"sin_example": sin_example, "broken_example": broken_example}
    monkeypatch.setitem(sys.modules, "torchext.examples", fake)
    out = tmp_path / "ex"
    code, stdout, stderr = run_cli(capsys, "examples", "--out", out, "--format", "json")
    assert code == 1 and "RuntimeError: example failed" in stderr
    rows = {row["example"]: row for row in json.loads(stdout)["examples"]}
    assert rows["sin_example"]["status"] == "ok" and rows["sin_example"]["saved_bytes"] == 64
    assert rows["broken_example"]["status"] == "RuntimeError: example failed"
    assert (out / "sin_example" / "report.html").is_file()
    assert (out / "broken_example" / "profile.json").is_file()
    assert pd.read_csv(out / "examples.csv")["example"].tolist() == list(fake.EXAMPLES)
    code, _, stderr = run_cli(capsys, "examples", "nope", "--out", out)
    assert code == 2 and "unknown example(s) nope" in stderr


def test_a_subcommand_is_one_function_in_subcommands(monkeypatch):
    def add_echo_command(subparsers) -> None:  # the shape every subcommand has
        parser = subparsers.add_parser("echo-count")
        parser.add_argument("argv", nargs=argparse.REMAINDER)
        parser.set_defaults(handler=lambda args: len(args.argv))

    monkeypatch.setattr(cli, "SUBCOMMANDS", (*cli.SUBCOMMANDS, add_echo_command))
    assert cli.main(["echo-count", "--x", "y"]) == 2
    assert reports.cli.main(["echo-count", "--x", "y"]) == 2  # the console script has it too
    parse = cli.build_parser(reports.cli.subcommands()).parse_args
    assert parse(["run", "s.py"]).handler is cli.run_command
    assert parse(["examples"]).handler is torchext.cli.examples_command
    assert parse(["compare", "a", "b"]).handler is cli.compare_command
    assert parse(["report"]).handler is reports.cli.report_command


def test_console_script_in_a_subprocess(tmp_path):
    write_script(tmp_path)
    exe = shutil.which("torchext-profile", path=str(Path(sys.executable).parent))
    command = [exe] if exe else [sys.executable, "-m", "profiling"]
    done = subprocess.run([*command, "run", "--format", "json", "chain.py"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["saved_bytes"] == 96
    assert (tmp_path / "profile_out" / "report.html").is_file()


def test_progress_on_a_terminal_is_a_spinner_with_the_elapsed_time(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with cli.progress("job.py"):
        time.sleep(0.6)
    printed = terminal.getvalue()
    assert re.search(r"profiling job\.py \(\d s\)", printed), printed  # updated while running


def test_examples_runs_the_lessons_own_examples(tmp_path, capsys):
    code, stdout, stderr = run_cli(capsys, "examples", "x_times_x", "--format", "json",
                                   "--out", tmp_path)
    assert code == 0, stderr
    (row,) = json.loads(stdout)["examples"]
    assert row["example"] == "x_times_x" and row["status"] == "ok" and row["operators"] > 0
    assert row["held_bytes"] == 0 and (tmp_path / "x_times_x" / "report.html").is_file()


# ----------------------------------------------------------------------------- our options


ARGV_RECORDER = """\
import json, sys
with open({record!r}, "w") as f:
    json.dump(sys.argv[1:], f)
"""


def test_our_options_after_the_script_are_the_scripts_with_a_note(tmp_path, capsys,
                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "train.py"
    script.write_text(ARGV_RECORDER.format(record=str(tmp_path / "argv.json")))
    code, _, stderr = run_cli(capsys, "run", "--top", "3", "train.py", "--out", "o",
                              "--epochs", "1", "--format=json")
    assert code == 0, stderr
    assert json.loads((tmp_path / "argv.json").read_text()) == [
        "--out", "o", "--epochs", "1", "--format=json"]  # as cProfile and torchrun do
    assert (tmp_path / "profile_out" / "profile.json").is_file() and not (tmp_path / "o").exists()
    (note,) = [line for line in stderr.splitlines() if "note:" in line]
    assert note.startswith("torchext-profile: note: --out o --format=json came after train.py")
    assert note.endswith("put them before the script: torchext-profile run --top 3 --out o "
                         "--format=json train.py --epochs 1")
    code, _, stderr = run_cli(capsys, "run", "--out", "o2", "-m", "train", "--out", "x")
    assert code == 0 and (tmp_path / "o2" / "profile.json").is_file()
    assert "put them before the script: torchext-profile run --out o2 --out x -m train" in stderr


# ----------------------------------------------------------------------------- user errors

STEP_BETWEEN_BACKWARDS = """\
import torch

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
loss = model(torch.randn(2, 4)).pow(2).sum()
loss.backward(retain_graph=True)
optimizer.step()  # modifies the weights the retained graph saved
loss.backward()
"""


def python_stderr(script: Path) -> subprocess.CompletedProcess:
    """What `python script.py` prints, in the script's folder: the reference."""
    return subprocess.run([sys.executable, script.name], cwd=script.parent, capture_output=True,
                          text=True, timeout=300)


def traceback_in(stderr: str) -> str:
    """The traceback the CLI printed: from its first line to the exception's last."""
    start = stderr.index("Traceback (most recent call last):")
    end = stderr.index("\n", stderr.index("RuntimeError: ", start))
    return stderr[start:end + 1]


def test_a_saved_tensor_modified_in_place_reads_as_without_the_profiler(tmp_path, capsys):
    script = tmp_path / "step_between_backwards.py"
    script.write_text(STEP_BETWEEN_BACKWARDS)
    reference = python_stderr(script)
    assert reference.returncode == 1 and "enable anomaly detection" in reference.stderr
    code, _, stderr = run_cli(capsys, "run", "--out", tmp_path / "out", script)
    assert code == 1
    assert traceback_in(stderr) == reference.stderr  # the user's frames, torch's full message
    assert "profiling" not in traceback_in(stderr)


class _SavesOutputAndInput(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = x.exp()
        ctx.save_for_backward(y, x)
        return y

    @staticmethod
    def backward(ctx, grad):
        y, _ = ctx.saved_tensors
        return grad * y


def _modified_output(a):
    y = a.exp()
    y.add_(1)
    y.sum().backward()


def _modified_input(a):
    b = a * 1
    c = b.sin()
    b.add_(1)
    c.sum().backward()


def _modified_leaf(a):
    c = a.sin()
    with torch.no_grad():
        a.add_(1)
    c.sum().backward()


def _modified_base_of_saved_view(a):
    b = a * 1
    c = b[:2].sin()
    b.add_(1)
    c.sum().backward()


def _modified_slice_of_saved_input(a):
    b = a * 1
    c = b.sin()
    b[1:].add_(1)
    c.sum().backward()


def _modified_through_a_view_of_a_dropped_input(a):
    b = a * 1
    view, c = b[:2], b.sin()
    del b
    view.add_(1)
    c.sum().backward()


def _function_output_modified(a):
    y = _SavesOutputAndInput.apply(a)
    y.add_(1)
    y.sum().backward()


def _function_input_modified(a):
    b = a * 1
    y = _SavesOutputAndInput.apply(b)
    b.mul_(2)
    y.sum().backward()


def _modified_output_under_anomaly_mode(a):
    with warnings.catch_warnings(), torch.autograd.set_detect_anomaly(True):
        warnings.simplefilter("ignore")  # anomaly mode's own warnings
        _modified_output(a)


@pytest.mark.parametrize("modify", [
    _modified_output, _modified_input, _modified_leaf, _modified_base_of_saved_view,
    _modified_slice_of_saved_input, _modified_through_a_view_of_a_dropped_input,
    _function_output_modified, _function_input_modified, _modified_output_under_anomaly_mode,
], ids=lambda f: f.__name__.strip("_"))  # fmt: skip
def test_version_check_error_is_torchs_own_word_for_word(modify):
    messages = []
    for profiled in (False, True):
        a = torch.randn(3, requires_grad=True)
        with pytest.raises(RuntimeError) as raised:
            with profile() if profiled else contextlib.nullcontext():
                modify(a)
        messages.append(str(raised.value))
    torch_message, ours = messages
    assert "modified by an inplace operation" in torch_message and ours == torch_message


def test_a_syntax_error_prints_what_python_prints_and_writes_no_report(tmp_path, capsys,
                                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "broken.py"
    script.write_text("import torch\nx = torch.ones(\n")
    reference = python_stderr(script)
    assert reference.returncode == 1 and "SyntaxError" in reference.stderr
    code, stdout, stderr = run_cli(capsys, "run", "broken.py")
    assert (code, stdout, stderr) == (1, "", reference.stderr)
    assert not (tmp_path / "profile_out").exists()
    code, stdout, stderr = run_cli(capsys, "run", "-m", "broken")
    assert code == 1 and stderr.endswith(reference.stderr) and "profiling" not in stderr
    assert not (tmp_path / "profile_out").exists()


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("content, message", [
    ("not json {", "is not JSON (Expecting value"),
    ("[1, 2]", "is JSON but not a profile that torchext-profile saved"),
    ("{}", "is JSON but not a profile that torchext-profile saved"),
    ('{"format": "torchext-profile", "version": 1}', "is an incomplete or damaged profile"),
])  # fmt: skip
def test_compare_on_what_is_not_a_saved_profile_is_one_line(tmp_path, capsys, two_reports,
                                                             content, message):
    from profiling.export import PROFILE_VERSION

    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "profile.json").write_text(content.replace('"version": 1',
                                                         f'"version": {PROFILE_VERSION}'))
    code, stdout, stderr = run_cli(capsys, "compare", two_reports[0]["folder"], folder)
    assert code == 2 and stdout == ""
    assert stderr.splitlines() == [stderr.strip()] and message in stderr, stderr
    assert stderr.startswith(f"torchext-profile: error: cannot read profile {folder}: ")


@pytest.mark.parametrize("argv, message", [
    (["run", "--top", "abc", "x.py"], "argument --top: expected a whole number, got 'abc'"),
    (["run", "--device", "meta", "x.py"],
     "argument --device: 'meta': the profiler accounts for the memory of cpu and cuda devices"),
    (["examples", "--device", "cuda:7"],
     "CUDA is not available" if not torch.cuda.is_available() else "CUDA device(s)"),
])  # fmt: skip
def test_bad_option_values_are_one_clear_line(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    code, _, stderr = run_cli(capsys, *argv)
    *usage, error = stderr.strip().splitlines()
    assert code == 2 and message in error and "Traceback" not in stderr, stderr
    assert "invalid" not in error and not (tmp_path / "profile_out").exists()


# ----------------------------------------------------------------------------- times


def test_the_run_names_what_each_of_its_times_measures(tmp_path, capsys):
    script = write_script(tmp_path, n=1, tail="import time\ntime.sleep(0.25)\n")
    code, _, stderr = run_cli(capsys, "run", "--out", tmp_path / "out", script)
    assert code == 0, stderr
    timing = re.search(r"profiled \S+: (\d+\.\d) ms in the profiled block \(the report's wall "
                       r"time\), (\d+\.\d) s with starting and stopping the profiler", stderr)
    assert timing, stderr
    block_ms, total_s = float(timing[1]), float(timing[2])
    summary = (tmp_path / "out" / "summary.md").read_text(encoding="utf-8")
    assert f"**wall time**: {timing[1]} ms" in summary  # one number, named the same
    assert block_ms >= 250 and total_s >= round(block_ms / 1e3, 1)  # the sleep, measured apart
    assert re.search(r"report written to \S+ in \d+\.\d s: open ", stderr)


# ----------------------------------------------------------------------------- layout

OURS = ("torchext", "reports", "benchmarks", "triton_kernels")


def test_the_profiler_imports_nothing_of_ours():
    for source in (ROOT / "profiling").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and
                     not node.level else [])
            bad = [name for name in names if name.split(".")[0] in OURS]
            assert not bad, f"{source.relative_to(ROOT)}:{node.lineno} imports {bad}"
    check = ("import sys, profiling, profiling.cli; profiling.cli.build_parser(); "
             f"print(sorted(m for m in sys.modules if m.split('.')[0] in {OURS!r}))")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_python_m_profiling_has_the_profilers_subcommands_and_the_console_script_all(capsys):
    assert cli.main(["--help"], prog="python -m profiling") == 0
    profiler_help = capsys.readouterr().out
    assert "usage: python -m profiling" in profiler_help
    assert re.search(r"^    run ", profiler_help, re.M) and "compare" in profiler_help
    assert "examples" not in profiler_help and "report " not in profiler_help
    assert reports.cli.main(["--help"]) == 0
    console_help = capsys.readouterr().out
    for name in ("run", "compare", "examples", "report"):
        assert re.search(rf"^    {name} ", console_help, re.M), console_help
    code, _, stderr = run_cli(capsys, "examples", "--top", "0")  # parsed by the profiler's parts
    assert code == 2 and "must be at least 1" in stderr
