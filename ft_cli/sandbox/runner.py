"""Run a completion's code, then each of its tests (standalone: the standard library only, no ft imports).

Started by launcher.py as `python -I -S runner.py` inside the sandbox. Its input (JSON: the code, the
tests, a nonce, the number of the result pipe's fd, a per-test time limit) is on fd 0; each result
leaves on the result pipe as one line `NONCE INDEX pass` or `NONCE INDEX fail SHORT-ERROR`, and
`NONCE end` when every test ran. The user's code prints into /dev/null (fds 1 and 2, set by the
launcher), so printing gigabytes costs time, not memory or disk.

Tests the code never reaches (a crash, os._exit, a kill) are failures: ft counts what was reported.
The code runs in this process, so it could find the nonce in this module's frames and forge its own
results; the nonce stops output that merely looks like results, not a determined forger (docs/sandbox.md).
"""

import json
import os
import signal
import sys


class TestTimeout(BaseException):
    """Raised by the alarm; a BaseException so `except Exception` in the user's code does not swallow it."""


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return " ".join(text.split())[:200]


def _on_alarm(signum, frame):
    raise TestTimeout("over the time limit")


def main() -> None:
    spec = json.loads(os.read(0, 1 << 26).decode())
    os.close(0)
    os.open("/dev/null", os.O_RDONLY)  # fd 0 again, so input() sees end of file
    nonce, result_fd, limit = spec.pop("nonce"), spec.pop("result_fd"), float(spec["test_timeout"])
    tests = spec["tests"]

    def report(line: str) -> None:
        os.write(result_fd, f"{nonce} {line}\n".encode())

    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-long write fails with an error instead of killing
    namespace = {"__name__": "__main__", "__file__": "solution.py", "__builtins__": __builtins__}
    try:  # on disk too, so tracebacks and inspect.getsource() find its lines
        with open("solution.py", "w") as file:
            file.write(spec["code"])
    except OSError:
        pass
    loaded, load_error = True, ""
    try:
        signal.setitimer(signal.ITIMER_REAL, limit)
        exec(compile(spec["code"], os.path.abspath("solution.py"), "exec"), namespace)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt too: the code must finish normally
        loaded, load_error = False, "code: " + _short(exc)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    for index, test in enumerate(tests):
        if not loaded:
            report(f"{index} fail {load_error}")
            continue
        try:
            signal.setitimer(signal.ITIMER_REAL, limit)
            exec(compile(test, f"test_{index}", "exec"), namespace)
            outcome = "pass"
        except BaseException as exc:
            outcome = "fail " + _short(exc)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        report(f"{index} {outcome}")
    report("end")
    sys.stdout.flush()
    os._exit(0)  # no atexit handlers or finalizers the code may have left behind


if __name__ == "__main__":
    main()
