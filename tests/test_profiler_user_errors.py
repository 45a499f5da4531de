"""A user's error inside `profile()` reads as without the profiler: same message, and the
traceback ends in the same frame (torch's), not in one of the profiler's hooks."""

from __future__ import annotations

import traceback

import pytest
import torch

from profiling import profile


def _backward_after_step() -> None:
    w = torch.randn(3, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.1)
    loss = (w * w).sum()
    loss.backward(retain_graph=True)
    opt.step()  # modifies w in place: the second backward must fail
    loss.backward()


def _last_frame_and_message(run) -> tuple[str, str, str]:
    with pytest.raises(RuntimeError) as info:
        run()
    last = traceback.extract_tb(info.value.__traceback__)[-1]
    return last.filename, last.name, str(info.value)


def test_modified_saved_tensor_error_ends_in_torchs_frame_as_without_the_profiler():
    expected = _last_frame_and_message(_backward_after_step)

    def profiled() -> None:
        with profile():
            _backward_after_step()

    got = _last_frame_and_message(profiled)
    assert got == expected
    assert "profiling" not in got[0]
    assert "enable anomaly detection" in got[2]


def test_an_error_of_the_users_own_code_keeps_its_frames():
    def users_code() -> None:
        raise ValueError("the user's own bug")

    def profiled() -> None:
        with profile():
            users_code()

    with pytest.raises(ValueError) as info:
        profiled()
    names = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert names[-2:] == ["profiled", "users_code"]
