"""`prof.leaks()`: each live graph named by what holds it, bytes that add up, and the
undetached-state bug said in words with its fix.

Line numbers are found from this file's own source (`line_of`), so the tests say which line a
holder must point to without counting lines by hand.
"""

from __future__ import annotations

import inspect

import pandas as pd
import pytest
import torch
from torch import nn

from profiling import profile

FLOAT32 = 4
CARRIED = None  # a module-level variable that holds a graph in one test


def line_of(function, text: str) -> int:
    """The line of `function`'s source that contains `text` (exactly one)."""
    lines, first = inspect.getsourcelines(function)
    hits = [first + i for i, line in enumerate(lines) if text in line]
    assert len(hits) == 1, (text, hits)
    return hits[0]


class LSTMLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(4, 8, batch_first=True)
        self.head = nn.Linear(8, 4)

    def forward(self, x, state=None):
        out, state = self.rnn(x, state)
        return self.head(out), state


def leaks_of(prof):
    return prof.leaks()  # the frame below is the one whose line a local's row must give


def truncated_bptt(model, data, chunk: int, detach: bool, keep_loss: bool = False):
    """One backward per chunk (retained, as carrying the graph needs); the state carried."""
    with profile("cpu") as prof:
        hidden = None  # assigns hidden
        for start in range(0, data.shape[1], chunk):
            logits, hidden = model(data[:, start:start + chunk], hidden)  # assigns hidden
            loss = logits.pow(2).mean()
            loss.backward(retain_graph=True)
            if detach:
                hidden = tuple(h.detach() for h in hidden)  # assigns hidden
        if not keep_loss:
            del logits, loss
    leaks = leaks_of(prof)  # the frame holding hidden is here
    return prof, leaks, hidden, prof.held_bytes  # held while `loss` (if kept) is alive


@pytest.fixture(scope="module")
def lstm():
    torch.manual_seed(0)
    return LSTMLM(), torch.randn(2, 6, 4)


def test_a_carried_lstm_state_is_named_hidden_0_with_its_line_and_the_fix(lstm):
    prof, leaks, hidden, held = truncated_bptt(*lstm, chunk=2, detach=False)
    assert leaks["held_bytes"].sum() == held == prof.held_bytes > 0
    rows = leaks.set_index("name")
    assert set(rows.index) == {"hidden[0]", "hidden[1]"}
    here = line_of(truncated_bptt, "leaks = leaks_of(prof)")
    lines, first = inspect.getsourcelines(truncated_bptt)
    assigned = ", ".join(str(first + i) for i, text in enumerate(lines)
                         if "# assigns hidden" in text)
    for name in ("hidden[0]", "hidden[1]"):
        row = rows.loc[name]
        assert row["line"] == here  # the frame holding it, not prof.leaks()'s own line
        assert row["holder"] == (f"local '{name}' in truncated_bptt ({__file__}:{here}), "
                                 f"assigned at lines {assigned}")
        assert "undetached state" in row["message"] and "3 forward calls of LSTMLM" in \
            row["message"]
        assert "`hidden = tuple(t.detach() for t in hidden)`" in row["message"]
    # h and c reach the same chunks' graphs: each row's own bytes plus its shared bytes are
    # what its graph holds, and each shared byte is counted once, in the other row
    for name in ("hidden[0]", "hidden[1]"):
        tensor = hidden[int(name[-2])]
        row = rows.loc[name]
        assert row["held_bytes"] + row["shared_bytes"] == prof.graph_held_bytes(tensor)
    assert rows["shared_bytes"].min() == 0 and rows["shared_bytes"].max() > 0
    assert "shared with the graph of row 0 and counted there" in leaks.iloc[1]["message"]


def test_a_detached_state_leaves_one_chunks_graph_and_no_message(lstm):
    prof, leaks, hidden, held = truncated_bptt(*lstm, chunk=2, detach=True, keep_loss=True)
    # the state is detached: only the last chunk's graph is alive, held by `loss`
    assert leaks["name"].tolist() == ["loss"] and leaks["message"].tolist() == [""]
    assert leaks["held_bytes"].sum() == held > 0
    assert all(h.grad_fn is None for h in hidden)


def test_dict_attribute_and_nested_holders_are_named():
    x = torch.randn(8, requires_grad=True)

    class Trainer:
        def __init__(self) -> None:
            self.state = {}

        def step(self) -> None:
            self.h = x.exp()
            self.state["c"] = [x.sin()]

        def report(self, prof):
            return leaks_of(prof)

    trainer = Trainer()
    state = {}
    with profile("cpu") as prof:
        state["h"] = x.cos()
        trainer.step()
    inside = trainer.report(prof)  # named from the method's frame: self.h
    outside = prof.leaks()  # named from here: trainer.h
    assert set(inside["name"]) == {"self.h", "self.state['c'][0]", "state['h']"}
    assert set(outside["name"]) == {"trainer.h", "trainer.state['c'][0]", "state['h']"}
    report_line = line_of(Trainer.report, "return leaks_of(prof)")
    row = inside.set_index("name").loc["self.h"]
    assert row["line"] == report_line and " in report (" in row["holder"]
    # exp saves its result (32 B); sin and cos both save x: counted once, in the first row
    assert outside["held_bytes"].sum() == prof.held_bytes == 2 * 8 * FLOAT32
    assert outside["shared_bytes"].tolist() == [0, 0, 8 * FLOAT32]


def hold_in_a_global(x: torch.Tensor) -> None:
    global CARRIED
    CARRIED = (x.exp(),)


def test_a_module_global_is_named_with_its_module_and_line():
    x = torch.randn(8, requires_grad=True)
    with profile("cpu") as prof:
        hold_in_a_global(x)
    try:
        leaks, held = prof.leaks(), prof.held_bytes
    finally:
        global CARRIED
        CARRIED = None
    row = leaks.iloc[0]
    assert row["name"] == "CARRIED[0]"
    line = next(i for i, text in enumerate(open(__file__, encoding="utf-8"), 1)
                if text.startswith("CARRIED = None"))
    assert row["line"] == line
    assert row["holder"] == f"global 'CARRIED[0]' in module {__name__} ({__file__}:{line})"
    assert row["held_bytes"] == held == 8 * FLOAT32
    assert prof.held_bytes == 0  # the global let go: the graph is freed


def test_a_running_loss_joins_its_iterations_graphs_and_says_item():
    torch.manual_seed(0)
    model = nn.Linear(8, 2)
    with profile("cpu") as prof:
        total = 0
        for _ in range(3):
            total = total + model(torch.randn(4, 8)).pow(2).mean()  # eval: no backward
    row = prof.leaks().iloc[0]
    assert row["name"] == "total" and row["held_bytes"] == prof.held_bytes > 0
    assert row["message"].startswith("this graph joins 3 forward calls of Linear")
    assert "`loss.item()`" in row["message"]
    del total


def test_bytes_of_nodes_the_profiler_did_not_record_get_their_own_row():
    x = torch.randn(8, requires_grad=True)
    with profile("cpu") as prof:
        y = x.sin().sum()
        (grad,) = torch.autograd.grad(y, x, create_graph=True)  # its graph: not recorded
    del y
    leaks = prof.leaks()
    assert leaks["held_bytes"].sum() == prof.held_bytes > 0
    assert leaks["root"].tolist()[-1] == "(unrecorded nodes)"
    del grad
    assert prof.held_bytes == 0 and prof.leaks().empty


SCRIPT = """\
import torch
from torch import nn

torch.manual_seed(0)
rnn = nn.RNN(4, 8, batch_first=True)
data = torch.randn(2, 6, 4)
hidden = None
for start in range(0, 6, 2):
    out, hidden = rnn(data[:, start:start + 2], hidden)
    out.pow(2).mean().backward(retain_graph=True)
del out
"""


def test_a_script_run_by_the_cli_gets_its_globals_named_with_their_lines(tmp_path, capsys):
    from profiling import cli

    script = tmp_path / "bptt.py"
    script.write_text(SCRIPT)
    assert cli.main(["run", "--out", str(tmp_path / "out"), str(script)]) == 0
    capsys.readouterr()
    leaks = pd.read_csv(tmp_path / "out" / "leaks.csv", keep_default_na=False)
    assert leaks["name"].tolist() == ["hidden"]  # not the runner's own variable holding it
    row = leaks.iloc[0]
    assert row["holder"] == f"global 'hidden' in module __main__ ({script}:9)"
    assert row["line"] == 9
    assert "3 forward calls of RNN" in row["message"] and "`hidden = hidden.detach()`" in \
        row["message"]


def test_a_state_carried_by_code_outside_any_module_is_found_by_its_forward_passes():
    torch.manual_seed(0)
    weight = torch.randn(4, 4, requires_grad=True)
    steps = torch.randn(6, 4)
    with profile("cpu") as prof:
        h = torch.zeros(4)
        for chunk in range(3):
            for t in (2 * chunk, 2 * chunk + 1):
                h = torch.tanh(steps[t] @ weight + h)
            h.sum().backward(retain_graph=True)
    row = prof.leaks().iloc[0]
    assert row["name"] == "h" and row["held_bytes"] == prof.held_bytes > 0
    assert row["message"].startswith("undetached state: this graph spans 3 forward passes")
    assert "outputs of aten::tanh" in row["message"] and "`h = h.detach()`" in row["message"]
