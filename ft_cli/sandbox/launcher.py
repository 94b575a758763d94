"""Start the sandbox runner in fresh namespaces (standalone: the standard library only, no ft imports).

Run as `python -I -S launcher.py` with a new session; the spec (JSON) arrives on stdin and the report
(one JSON line) leaves on stdout. Processes:

    launcher (host namespaces): writes the child's uid/gid maps from outside
      └─ child: unshare(user, mount, net, pid, ipc, uts), then waits for init
         └─ init (PID 1 of the new pid namespace): private mounts, HOME and credential files hidden,
            │     read-only host, fresh /proc, a size-limited tmpfs as the work directory
            └─ runner: its own uid (not 0: the exec drops every capability; `nobody` on the host when
                       ft runs as root), rlimits, no_new_privs, scrubbed environment, exec of runner.py

When init exits (or dies with the launcher: PR_SET_PDEATHSIG), the kernel kills every process left in
the namespace. Where unshare is refused (e.g. Ubuntu 24.04's AppArmor restriction on unprivileged user
namespaces), the runner still starts with rlimits, no_new_privs and the scrubbed environment, and the
report says which protections are off. No threads here: unshare(CLONE_NEWUSER) needs one thread,
which is also why ft never uses preexec_fn for this (torch has threads).
"""

import ctypes
import json
import os
import resource
import signal
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 32, 1024, 2048, 4096, 16384
MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 1 << 18, 1 << 21, 1 << 24
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
# Per-mount flags a user namespace may not clear on a mount it inherited ("locked"): a read-only
# remount must repeat them, else the kernel refuses it.
LOCKED = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
          "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}  # fmt: skip
INSIDE_ID = 1000  # the runner's uid/gid inside: not 0, so its exec drops every capability
NOBODY = 65534  # the runner's uid/gid outside when ft runs as root
ENV_ALLOWED = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)


def _check(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def _mount(source, target, fstype, flags, data=None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as file:
        file.write(text)


def _write_maps(pid: int) -> None:
    """From outside, map the child's new user namespace. As root: inside 0 (the setup) stays root and
    INSIDE_ID is `nobody`, so the runner owns nothing on the host and its process limit holds (the kernel
    never applies RLIMIT_NPROC to real root). As anyone else: INSIDE_ID is you (the only map allowed)."""
    if os.geteuid() == 0:
        _write(f"/proc/{pid}/uid_map", f"0 0 1\n{INSIDE_ID} {NOBODY} 1")
        _write(f"/proc/{pid}/gid_map", f"0 0 1\n{INSIDE_ID} {NOBODY} 1")
    else:
        _write(f"/proc/{pid}/setgroups", "deny")  # needed before an unprivileged gid_map
        _write(f"/proc/{pid}/uid_map", f"{INSIDE_ID} {os.geteuid()} 1")
        _write(f"/proc/{pid}/gid_map", f"{INSIDE_ID} {os.getegid()} 1")


def _mount_points() -> list[tuple[str, int]]:
    """(mount point, locked flags) for every mount, from /proc/self/mountinfo."""
    points = []
    with open("/proc/self/mountinfo") as file:
        for line in file:
            fields = line.split()
            target = fields[4].encode().decode("unicode_escape")  # \040 for a space, as the kernel writes it
            flags = sum(LOCKED.get(option, 0) for option in fields[5].split(","))
            points.append((target, flags))
    return points


def _covers(spec: dict) -> list[str]:
    """Folders to cover with an empty tmpfs: HOME, and (as root, whose runner is nobody) the outermost folder
    closed to others above each path the runner needs (e.g. /root above a pyenv Python), so nobody can reach it."""
    home = spec["home"]
    covers = [home] if home not in ("", "/") and os.path.isdir(home) else []
    if os.geteuid() == 0:
        for path in spec["needed"]:
            ancestors = [p for p in _ancestors(path) if not os.stat(p).st_mode & 0o001]
            if ancestors:
                covers.append(ancestors[0])
    covers = sorted(set(covers), key=len)
    return [c for c in covers if not any(c.startswith(o.rstrip("/") + "/") for o in covers if o != c)]


def _ancestors(path: str) -> list[str]:
    parts = path.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def _hide_covers(spec: dict) -> None:
    """An empty tmpfs over each cover folder, with only what the runner needs bound back."""
    covers = _covers(spec)
    needed = [p for p in spec["needed"] if any(p.startswith(c.rstrip("/") + "/") for c in covers)]
    handles = [(path, os.open(path, os.O_PATH)) for path in needed]  # reachable after the tmpfs covers them
    for cover in covers:
        _mount("tmpfs", cover, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=0755")
    for path, handle in handles:
        os.makedirs(path, exist_ok=True)
        _mount(f"/proc/self/fd/{handle}", path, None, MS_BIND | MS_REC)
        os.close(handle)


def _isolate_filesystem(spec: dict, problems: list[str]) -> None:
    """In init, inside the new mount namespace: everything read-only but the work directory."""
    workdir = spec["workdir"]
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates back to the host
    for path in spec["hide"]:
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                _mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=0555")
            elif os.path.exists(path):
                _mount("/dev/null", path, None, MS_BIND)
        except OSError as exc:
            problems.append(f"hide {path}: {exc.strerror}")
    try:
        _hide_covers(spec)
    except OSError as exc:
        problems.append(f"hide HOME: {exc.strerror}")
    writable = []
    for target, flags in _mount_points():
        if target == workdir or target == "/proc" or target.startswith("/proc/"):
            continue  # the work directory gets its own tmpfs; /proc is replaced below
        try:
            _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)
        except OSError:
            if os.path.exists(target) and os.access(target, os.W_OK):
                writable.append(target)
    if writable:
        problems.append("still writable: " + ", ".join(writable[:5]))
    try:  # a proc of the new pid namespace: the host's processes (and their environ) are gone
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError as exc:
        problems.append(f"fresh /proc: {exc.strerror}")
    size_kb = max(int(spec["limits"]["file_size_mb"] * 1024), 64)
    _mount("tmpfs", workdir, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size_kb}k,mode=0700,uid={INSIDE_ID},gid={INSIDE_ID}")


def _exec_runner(spec: dict, namespaced: bool) -> None:
    """In the runner's process: its own uid, limits, then exec. Never returns."""
    try:
        os.chdir(spec["workdir"])  # before the uid changes: its parents may be closed to nobody (a 0700 TMPDIR)
        if namespaced:
            os.setsid()  # else stay in the launcher's process group, which ft kills as a whole
            if os.getuid() == 0:  # inside root (ft runs as root): become INSIDE_ID, i.e. nobody on the host
                os.setgroups([])
                os.setresgid(INSIDE_ID, INSIDE_ID, INSIDE_ID)
                os.setresuid(INSIDE_ID, INSIDE_ID, INSIDE_ID)
        limits = spec["limits"]
        megabyte = 1024 * 1024
        cpu = max(1, int(limits["cpu_seconds"]))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (limits["memory_mb"] * megabyte,) * 2)
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(limits["file_size_mb"] * megabyte),) * 2)
        resource.setrlimit(resource.RLIMIT_NPROC, (limits["max_processes"],) * 2)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        # The runner's own input: a memory file on fd 0, never a path, argv or the environment.
        spec_fd = os.memfd_create("spec")
        os.write(spec_fd, json.dumps({k: spec[k] for k in ("nonce", "result_fd", "code", "tests", "test_timeout")}).encode())
        os.lseek(spec_fd, 0, os.SEEK_SET)
        os.dup2(spec_fd, 0)  # inheritable, unlike spec_fd itself
        null = os.open("/dev/null", os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.closerange(3, spec["result_fd"])
        os.closerange(spec["result_fd"] + 1, 1 << 16)
        workdir = spec["workdir"]
        env = {key: os.environ[key] for key in ENV_ALLOWED if key in os.environ}
        env.update(HOME=workdir, TMPDIR=workdir, PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")
        os.execve(spec["python"], [spec["python"], "-I", "-S", spec["runner"]], env)
    finally:
        os._exit(126)


def _status_code(status: int) -> int:
    """An exit status as an exit code that survives being passed on: 128 + N for a death by signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _init(spec: dict, report_fd: int) -> None:
    """PID 1 of the new namespaces: isolate the filesystem, start the runner, pass its status on. Never returns."""
    code = 125
    try:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        problems: list[str] = []
        try:
            _isolate_filesystem(spec, problems)
        except OSError as exc:  # e.g. AppArmor took the namespace's capabilities: run without namespaces
            os.write(report_fd, json.dumps({"fatal": str(exc)}).encode())
            os._exit(125)
        os.write(report_fd, json.dumps({"problems": problems}).encode())
        os.close(report_fd)
        pid = os.fork()
        if pid == 0:
            _exec_runner(spec, namespaced=True)
        code = _status_code(os.waitpid(pid, 0)[1])
    finally:
        os._exit(code)  # the namespace's other processes die with it


def _child(spec: dict, sync_fd: int, go_fd: int, report_fd: int) -> None:
    """Unshare, wait for the maps, start init and pass its status on. Never returns."""
    code = 125
    try:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
        if libc.unshare(flags) != 0:
            os.write(sync_fd, os.strerror(ctypes.get_errno()).encode())
            os._exit(125)
        os.write(sync_fd, b"ok")
        if os.read(go_fd, 2) != b"go":
            os._exit(125)
        pid = os.fork()
        if pid == 0:
            _init(spec, report_fd)
        os.close(report_fd)
        code = _status_code(os.waitpid(pid, 0)[1])
    finally:
        os._exit(code)


def _namespaced(spec: dict, report: dict) -> int | None:
    """Run the runner in new namespaces; its pid-namespace child's pid, or None (report["reason"] says why)."""
    sync_read, sync_write = os.pipe()
    go_read, go_write = os.pipe()
    report_read, report_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        for fd in (sync_read, go_write, report_read):
            os.close(fd)
        _child(spec, sync_write, go_read, report_write)
    for fd in (sync_write, go_read, report_write):
        os.close(fd)
    answer = os.read(sync_read, 200).decode(errors="replace")
    try:
        if answer != "ok":
            raise OSError(f"unshare: {answer or 'the child died'}")
        _write_maps(pid)
        os.write(go_write, b"go")
        os.close(go_write)
        setup = json.loads(os.read(report_read, 65536) or b'{"fatal": "init died before reporting"}')
        if "fatal" in setup:
            raise OSError(setup["fatal"])
    except OSError as exc:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        report["reason"] = exc.strerror or str(exc)
        return None
    report["namespaces"], report["problems"] = True, setup["problems"]
    return pid


def main() -> int:
    spec = json.loads(sys.stdin.buffer.read())
    os.dup2(os.open("/dev/null", os.O_RDONLY), 0)
    report = {"namespaces": False, "reason": "turned off" if not spec.get("isolate", True) else "", "problems": []}
    pid = _namespaced(spec, report) if spec.get("isolate", True) else None
    if pid is None:
        pid = os.fork()
        if pid == 0:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            _exec_runner(spec, namespaced=False)
    os.close(spec["result_fd"])
    code = _status_code(os.waitpid(pid, 0)[1])
    report["exit"] = 128 - code if code > 128 else code  # a death by signal N as -N, as subprocess says it
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
