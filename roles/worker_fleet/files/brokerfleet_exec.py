#!/usr/bin/python3
"""brokerfleet-exec: start one worker process from its group's spec file.

    brokerfleet-exec SPEC PROCESS       what supervisord runs, as the group's user
    brokerfleet-exec --check SPEC       validate a spec file (the role's `validate:`)

SPEC is the JSON file the worker_fleet role writes per group (worker_spec in the collection's
plugins/module_utils/hostfiles.py): the command as an argument vector, its working directory
and its environment, each exactly as the inventory wrote it. supervisord's own syntax cannot
carry such values (it expands `%`, takes ` #` and ` ;` for comments, cuts environment values
at commas), so its program sections hold only this command, whose words are names and paths
the bundle chose.

The process gets supervisord's environment, the spec's, and WORKER_PROCESS=PROCESS, then
becomes the group's command (exec: same PID, so supervisord signals the worker itself).
It also asks the kernel for a SIGTERM when supervisord dies: a supervisord killed with -9
would otherwise leave its workers running unsupervised, beside the fresh fleet that
brokerfleet-check's relauncher starts. The worker stops as it would at a scale-down.
"""

import ctypes
import json
import os
import signal
import sys

FORMAT = 1
PR_SET_PDEATHSIG = 1  # prctl(2); kept across execve of a program that is not set-user-ID


def load(path, on_this_host=True):
    """The spec at ``path``; exits naming what is wrong with it. ``on_this_host``: its working
    directory must also exist here (preflight cannot know the host's directories)."""
    try:
        with open(path, encoding="utf-8") as handle:
            spec = json.load(handle)
    except (OSError, ValueError) as error:
        sys.exit(f"brokerfleet-exec: cannot read {path}: {error}")
    problems = []
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        sys.exit(f"brokerfleet-exec: {path} is not a worker spec of format {FORMAT}")
    argv, directory, environment = spec.get("argv"), spec.get("directory"), spec.get("environment")
    if not argv or not all(isinstance(word, str) for word in argv):
        problems.append("argv must be a non-empty list of strings")
    if not isinstance(directory, str) or not directory.startswith("/"):
        problems.append("directory must be an absolute path")
    elif on_this_host and not os.path.isdir(directory):
        problems.append(f"directory {directory} does not exist on this host")
    if not isinstance(environment, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in environment.items()
    ):
        problems.append("environment must map names to strings")
    texts = [*(argv or []), str(directory), *(environment or {}), *(environment or {}).values()]
    if any("\0" in text for text in texts if isinstance(text, str)):  # others refused above
        problems.append("a value holds a NUL byte")
    if problems:
        sys.exit(f"brokerfleet-exec: {path}: " + "; ".join(problems))
    return spec


def stop_with_parent():
    """SIGTERM this process (and the command it becomes) when its parent, supervisord, dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        print(f"brokerfleet-exec: prctl(PR_SET_PDEATHSIG): {os.strerror(error)}", file=sys.stderr)


def main(argv):
    if len(argv) == 2 and argv[0] == "--check":
        load(argv[1])
        return
    if len(argv) != 2:
        sys.exit(__doc__)
    spec, process = load(argv[0]), argv[1]
    # Workers run unprivileged; preflight refuses user root without fleet_allow_root_workers,
    # and this holds even for a user whose UID is 0 under another name.
    if os.getuid() == 0 and not spec.get("allow_root"):
        sys.exit(f"brokerfleet-exec: group {spec.get('group')} would run as root; refused")
    environment = {**os.environ, **spec["environment"], "WORKER_PROCESS": process}
    parent = os.getppid()
    stop_with_parent()
    if os.getppid() != parent:
        sys.exit(f"brokerfleet-exec: {process}: supervisord is gone; not starting")
    try:
        os.chdir(spec["directory"])
        os.execvpe(spec["argv"][0], spec["argv"], environment)
    except OSError as error:
        sys.exit(f"brokerfleet-exec: {process}: cannot run {spec['argv'][0]}: {error}")


if __name__ == "__main__":
    main(sys.argv[1:])
