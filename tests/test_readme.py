"""Every shell command README.md shows, run as a reader would run it.

The commands are read from README.md's ```bash blocks each run (a command added to README is
picked up by itself), and each must match one of `RULES`, which says how to run it: as it is,
on a reduced size, only with CUDA, or not at all, with the reason. A command no rule matches
fails the test: add a rule rather than let it go unrun. Inline code that is a command (ours:
`torchext-profile ...`, `python -m profiling ...`; `pip install ...`, `torchrun ...`) must be one
of the block commands or the start of one, so that no command is shown without being run.

The commands run in README's order in one working folder holding `train.py`, the stand-in for
"your script" (a small MLP trained with argparse options, so that an option of ours given to
it fails as it would in a real script; data-parallel under torchrun); a later command may read
what an earlier one wrote (`compare out/a out/b`), so run the whole file, not one command alone.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TIMEOUT_S = 420  # per command; the slowest (a profiled run) takes ~10 s on an idle 2-core CPU
OUR_MODULES = ("profiling", "torchext", "reports", "benchmarks", "triton_kernels")

TRAIN_PY = """\
import argparse
import os

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=1)
parser.add_argument("--batch-size", type=int, default=16)
args = parser.parse_args()

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
if "WORLD_SIZE" in os.environ:  # started by torchrun: data-parallel over the ranks
    torch.distributed.init_process_group("gloo")
    model = torch.nn.parallel.DistributedDataParallel(model)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
x, y = torch.randn(4 * args.batch_size, 32), torch.randint(0, 10, (4 * args.batch_size,))
for epoch in range(args.epochs):
    for xb, yb in zip(x.split(args.batch_size), y.split(args.batch_size)):
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"epoch {epoch}: loss {loss.item():.3f}")
if torch.distributed.is_initialized():
    torch.distributed.destroy_process_group()
"""


@dataclass(frozen=True)
class Rule:
    """How to run the commands `pattern` matches in full: as shown, with `extra_args` appended
    (a reduced size: argparse takes an option's last value), only where CUDA is available
    (`cuda`), or not at all (`skip`); `reason` says why whenever it is not simply run."""

    pattern: str
    reason: str = ""
    extra_args: tuple[str, ...] = ()
    cuda: bool = False
    skip: bool = False


RULES = (
    Rule(r"pip install torch==\S+ && pip install \. && torchext-profile report --quick "
         r"--out reports/", skip=True,
         reason="the main job: installs into this environment and regenerates every study "
         "(minutes); tests/test_reports.py runs `torchext-profile report` at --size tiny"),
    Rule(r"pip install torch==\S+ && pip install \"\.\[test,notebook\]\" && ruff check \. && "
         r"python -m pytest", skip=True,
         reason="the install and the suite itself (what .ci/run runs): this test is part of it"),
    Rule(r"python -m torchext\.examples", skip=True,
         reason="every lesson example through Triton's interpreter (~40 s in a fresh process "
         "here); tests/test_examples.py::test_main_prints_every_example runs the same main()"),
    Rule(r"python -m benchmarks\.bench_ops .*", cuda=True,
         reason="a GPU benchmark; one size and dtype here (the sweep is the benchmark's job)",
         extra_args=("--sizes", "2^20", "--dtypes", "float32")),
    Rule(r"python -m benchmarks\.make_report .*", cuda=True,
         reason="the page from the GPU benchmarks' CSVs above, written to the working folder "
         "(by default it writes the repository's reports/performance.md)",
         extra_args=("--md", "performance.md", "--plots-dir", "performance")),
    Rule(r"python -m benchmarks\.bench_profiler_overhead --compiled inductor .*",
         reason="Inductor's C++ build of the layer takes ~30 s on a 2-core CPU: the same "
         "compiled-step path with aot_eager, one repetition of a tiny layer, its CSV written "
         "to the working folder",
         extra_args=("--repeats", "1", "--warmup", "0", "--d-model", "16", "--nhead", "2",
                     "--dim-feedforward", "32", "--batch", "2", "--seq", "4",
                     "--compiled", "aot_eager")),
    Rule(r"python -m benchmarks\.bench_profiler_overhead( .*)?",
         reason="the default size takes minutes on a CPU: one repetition of a tiny layer",
         extra_args=("--repeats", "1", "--warmup", "0", "--d-model", "16", "--nhead", "2",
                     "--dim-feedforward", "32", "--batch", "2", "--seq", "4")),
    Rule(r"torchext-profile run --nproc-per-node .*|torchext-profile compare out/job .*",
         skip=True, reason="a torchrun job starts three Pythons that import torch (~1 min each "
         "on a loaded 2-core CPU); tests/test_distributed.py launches the same CLI on 2 gloo "
         "ranks and compares two job folders"),
    Rule(r'pip install "\.\[notebook\]"', skip=True,
         reason="installs the notebook extra into this environment; tests/test_notebook.py "
         "runs the notebook where the extra is installed"),
    Rule(r"torchext-profile .*"),
    Rule(r"python -m profiling .*"),
    Rule(r"torchrun .*"),
)


def readme_commands(text: str) -> list[str]:
    """The commands of README's ```bash blocks, one per line (`\\` continuations joined,
    trailing comments off), as written: quotes and globs are the shell's."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            command = re.sub(r"(^|\s+)#.*$", "", line).strip()
            if command:
                commands.append(command)
    return commands


def rule_for(command: str) -> Rule:
    for rule in RULES:
        if re.fullmatch(rule.pattern, command):
            return rule
    pytest.fail(f"README.md shows `{command}`, and no rule in tests/test_readme.py says how "
                "to run it: add one (run it, on a reduced size, or skip it with the reason)")


def inline_commands(text: str) -> list[str]:
    """Inline code outside the blocks that is a command: ours (`torchext-profile ...`, `python
    -m profiling ...`), an install or a torchrun."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    spans = re.findall(r"`([^`\n]+)`", prose.replace("\n", " "))
    modules = "|".join(OUR_MODULES)
    return [span for span in spans
            if re.match(rf"(torchext-profile|python -m ({modules})\b|pip install|torchrun) \S",
                        span)]


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("readme")
    (folder / "train.py").write_text(TRAIN_PY)
    return folder


def _environment() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(ROOT),
               PATH=os.pathsep.join([bin_dir, os.environ.get("PATH", "")]))
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def _own_out_folder(words: list[str]) -> str | None:
    """`--out DIR` given to torchext-profile itself (before the script), if any."""
    if not words or words[0] != "torchext-profile" or len(words) < 2 or words[1] != "run":
        return None
    index = 2
    while index < len(words) and words[index].startswith("-"):
        if words[index] == "--out" and index + 1 < len(words):
            return words[index + 1]
        index += 1 if words[index] == "-m" else 2
    return None


def test_readme_has_commands_and_each_has_a_rule():
    assert len(COMMANDS) >= 5, COMMANDS
    for command in COMMANDS:
        rule_for(command)  # fails on one no rule knows


def test_inline_mentions_of_our_commands_are_commands_the_blocks_run():
    segments = [part.strip().split() for command in COMMANDS for part in command.split("&&")]
    for span in inline_commands(README.read_text(encoding="utf-8")):
        words = span.split()
        shown = any(segment[:len(words)] == words for segment in segments)
        assert shown, (f"README.md shows `{span}` inline, but no ```bash block runs it: put it "
                       "in a block (then this test runs it) or reword it")


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_runs(command: str, workdir: Path):
    rule = rule_for(command)
    if rule.skip:
        pytest.skip(rule.reason)
    if rule.cuda and not torch.cuda.is_available():
        pytest.skip(f"needs CUDA, which is not available here ({rule.reason})")
    shell_command = command + "".join(f" {shlex.quote(arg)}" for arg in rule.extra_args)
    # `python` is the interpreter running the tests; the console script is the installed one
    # (or, not installed, the module it runs)
    prelude = ('python() { "$PYTHON" "$@"; }; '
               'command -v torchext-profile >/dev/null || '
               'torchext-profile() { "$PYTHON" -m reports.cli "$@"; }; ')
    done = subprocess.run(["bash", "-c", prelude + shell_command], cwd=workdir, env=_environment(),
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, f"`{shell_command}` exited {done.returncode}:\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    assert "note:" not in done.stderr, done.stderr  # README puts our options before the script
    out = _own_out_folder(shlex.split(command))
    if out is not None:
        written = [workdir / out / "profile.json", workdir / out / "job_summary.json"]  # a job
        assert any(f.is_file() for f in written), f"`{command}` wrote no {out}/"
