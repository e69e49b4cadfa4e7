"""Test-wide settings. Runs before any test module imports triton kernels or deepspeed."""
import os


def _has_cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


# Without a GPU the Triton kernels run in the interpreter on CPU tensors; this must be set before any
# @triton.jit decorator executes. On a GPU machine they compile for real (the `gpu` tests).
# DeepSpeed: without a GPU pick the CPU accelerator without probing for CUDA.
if not _has_cuda():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

import pytest  # noqa: E402


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"  # kernels.dispatch.interpreting(), without importing it


def pytest_collection_modifyitems(config, items):
    """GPU tests are skipped, never faked, when CUDA is absent. Interpreter tests are skipped on a CUDA
    machine whose kernels compile (TRITON_INTERPRET unset or 0: the gpu tests test them there)."""
    cuda = _has_cuda()
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_interpreter = pytest.mark.skip(reason="Triton interpreter tests: this CUDA machine compiles the kernels "
                                               "(TRITON_INTERPRET=1 runs these too)")
    for item in items:
        if "gpu" in item.keywords and not cuda:
            item.add_marker(skip_gpu)
        if "interpreter" in item.keywords and cuda and not _interpreting():
            item.add_marker(skip_interpreter)


def pytest_runtest_setup(item):
    """Without CUDA the interpreter is the only place the Triton kernels run: TRITON_INTERPRET set to anything
    but 1 (conftest sets 1 only when it is unset) would leave them untested, so the tests fail and say why."""
    if "interpreter" in item.keywords and not _has_cuda() and not _interpreting():
        pytest.fail(f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')!r} on a machine without CUDA: the Triton "
                    f"kernels run only in the interpreter here, so this test would test nothing; unset it "
                    f"(tests/conftest.py then sets 1) or set TRITON_INTERPRET=1", pytrace=False)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The tests use tiny tensors, which gain nothing from intra-op threads; on a shared 2-core machine the
    threads' barriers made them 10-50x slower. Subprocesses (training runs) choose their own."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# `slow` (pytest.ini) means more than ~20 s on the idle 2-core machine: `make test-quick` (-m "not slow") leaves
# those out. Tests that took longer without the mark are listed at the end of the run, so the mark keeps
# meaning what it says (on a loaded machine the list overstates: check it against an idle run before marking).
SLOW_SECONDS = 20.0
_seconds: dict[str, float] = {}
_marked_slow: set[str] = set()


def pytest_runtest_logreport(report):
    if report.when in ("setup", "call"):
        _seconds[report.nodeid] = _seconds.get(report.nodeid, 0.0) + report.duration
        if "slow" in report.keywords:
            _marked_slow.add(report.nodeid)


def pytest_terminal_summary(terminalreporter):
    unmarked = sorted(((s, n) for n, s in _seconds.items() if s > SLOW_SECONDS and n not in _marked_slow), reverse=True)
    if unmarked:
        terminalreporter.section(f"over {SLOW_SECONDS:.0f} s without the slow mark (setup + call)")
        for seconds, nodeid in unmarked:
            terminalreporter.write_line(f"{seconds:6.1f} s  {nodeid}")
