"""Turn the current process into a pod's container, then exec its command (stdlib only).

Run by the node agent as `ip netns exec <pod netns> python3 -I -S launch.py <spec.json>`: the
pod's network namespace and a private mount namespace (with /etc/netns/<pod>/hosts bound over
/etc/hosts) are already in place. Here: bind the pod's volumes at their mount paths, change to
the working directory, drop to the container's UID/GID, exec. The pid stays the same throughout,
so the agent's pid *is* the container's main process.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384


def _mount(libc: ctypes.CDLL, src: str, dst: str, flags: int) -> None:
    if libc.mount(src.encode(), dst.encode(), None, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {src} on {dst}: {os.strerror(err)}")


def main(spec_path: str) -> None:
    with open(spec_path) as fh:
        spec = json.load(fh)
    libc = ctypes.CDLL(None, use_errno=True)
    # Parents before children (as containerd sorts them): a volume at /run, then one at
    # /var/run/secrets/... (a path through /run) is created inside the first volume.
    mounts = sorted(spec["mounts"], key=lambda m: len(os.path.realpath(m[1]).split("/")))
    # Hold every source open before the first mount: a volume mounted at /tmp would otherwise
    # hide the sources of the next ones when the lab itself lives below /tmp (a CI clone).
    sources = [os.open(src, os.O_PATH | os.O_CLOEXEC) for src, _, _ in mounts]
    for fd, (_, dst, readonly) in zip(sources, mounts, strict=True):
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            os.makedirs(dst, exist_ok=True)
        elif not os.path.exists(dst):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            open(dst, "a").close()
        _mount(libc, f"/proc/self/fd/{fd}", dst, MS_BIND | MS_REC)
        if readonly:
            _mount(libc, dst, dst, MS_BIND | MS_REMOUNT | MS_RDONLY)
        os.close(fd)
    os.chdir(spec.get("cwd") or "/")
    if spec.get("uid") is not None:
        os.setgroups(spec.get("groups") or [])
        os.setgid(spec["gid"])
        os.setuid(spec["uid"])
    argv = spec["argv"]
    os.execvpe(argv[0], argv, spec["env"])


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    except OSError as err:
        print(f"lab node: cannot start container: {err}", file=sys.stderr)
        sys.exit(127 if isinstance(err, FileNotFoundError) else 126)
