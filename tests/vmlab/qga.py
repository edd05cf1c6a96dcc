#!/usr/bin/env python3
"""A client for the QEMU guest agent on a VM lab virtio-serial socket.

    qga.py SOCKET ping [--timeout S]
    qga.py SOCKET exec [--timeout S] [--stream] [-e K=V]... CMD [ARG...]
    qga.py SOCKET push LOCAL REMOTE [--mode OCTAL]
    qga.py SOCKET pull REMOTE LOCAL

exec runs CMD in the guest (through /bin/sh so that PATH applies), prints its
stdout and stderr once it has exited (the agent hands them over only then),
and exits with its status: the exit code, 128+signal, or 124 on timeout.
With --stream, stdout and stderr (merged) are printed while CMD runs.
"""

import base64
import json
import os
import random
import socket
import sys
import time

GUEST_PATH = "/opt/skiff/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CHUNK = 48 * 1024


class AgentError(Exception):
    pass


class Agent:
    def __init__(self, path, timeout):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError as e:
            raise AgentError(f"connect {path}: {e}") from e
        self.buf = b""

    def close(self):
        self.sock.close()

    def _send(self, obj):
        self.sock.sendall(json.dumps(obj).encode() + b"\n")

    def _line(self, deadline):
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("no answer from the guest agent")
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            if not data:
                raise AgentError(f"{self.path}: connection closed by QEMU")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def sync(self, timeout):
        """Discard whatever an earlier client left in the channel.

        The 0xFF byte resets the agent's JSON parser; its answer to
        guest-sync-delimited is preceded by 0xFF, so everything before that
        byte is stale."""
        token = random.randrange(1, 2**31)
        self.sock.sendall(b"\xff")
        self._send({"execute": "guest-sync-delimited", "arguments": {"id": token}})
        deadline = time.monotonic() + timeout
        while True:
            line = self._line(deadline)
            if b"\xff" in line:
                line = line.rsplit(b"\xff", 1)[1]
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("return") == token:
                return

    def call(self, command, arguments=None, timeout=30.0):
        req = {"execute": command}
        if arguments is not None:
            req["arguments"] = arguments
        self._send(req)
        deadline = time.monotonic() + timeout
        while True:
            line = self._line(deadline).lstrip(b"\xff")
            if not line.strip():
                continue
            msg = json.loads(line)
            if "error" in msg:
                err = msg["error"]
                raise AgentError(f"{command}: {err.get('class')}: {err.get('desc')}")
            if "return" in msg:
                return msg["return"]


def connect(sock_path, timeout):
    agent = Agent(sock_path, timeout)
    agent.sync(timeout)
    return agent


def ping(sock_path, timeout):
    """Wait until the guest agent answers, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        try:
            agent = connect(sock_path, min(3.0, max(0.5, deadline - time.monotonic())))
            agent.call("guest-ping")
            agent.close()
            return 0
        except (OSError, AgentError, ValueError) as e:
            last = str(e) or type(e).__name__
            time.sleep(1)
    print(f"qga: {sock_path}: the guest agent did not answer in {timeout:.0f} s ({last})",
          file=sys.stderr)
    return 1


def run(sock_path, argv, env, timeout):
    agent = connect(sock_path, 30)
    full_env = {"PATH": GUEST_PATH, "HOME": "/root", "LANG": "C.UTF-8",
                "SKIFF_BIN": "/opt/skiff/bin"}
    full_env.update(env)
    # /bin/sh resolves the command on the PATH given here: the agent's own
    # search uses its own environment.
    started = agent.call("guest-exec", {
        "path": "/bin/sh",
        "arg": ["-c", 'exec "$@"', "sh"] + argv,
        "env": [f"{k}={v}" for k, v in full_env.items()],
        "capture-output": True,
    })
    pid = started["pid"]
    deadline = time.monotonic() + timeout
    delay = 0.1
    while True:
        st = agent.call("guest-exec-status", {"pid": pid})
        if st.get("exited"):
            break
        if time.monotonic() > deadline:
            # The agent cannot kill what it started; a second command can.
            try:
                agent.call("guest-exec", {"path": "/bin/kill", "arg": ["-KILL", str(pid)]})
            except AgentError:
                pass
            print(f"qga: {' '.join(argv)}: timed out after {timeout:.0f} s (killed pid {pid})",
                  file=sys.stderr)
            return 124
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)
    agent.close()
    out = base64.b64decode(st.get("out-data", ""))
    err = base64.b64decode(st.get("err-data", ""))
    sys.stdout.buffer.write(out)
    sys.stdout.buffer.flush()
    sys.stderr.buffer.write(err)
    sys.stderr.buffer.flush()
    if st.get("out-truncated") or st.get("err-truncated"):
        print("qga: output truncated by the guest agent", file=sys.stderr)
    if "signal" in st:
        return 128 + int(st["signal"])
    return int(st.get("exitcode", 1))


def read_from(agent, path, offset):
    """Bytes of `path` in the guest from `offset` on (b"" if it does not exist yet).

    Opened anew each time: the agent's reads stop at the first end of file."""
    try:
        h = agent.call("guest-file-open", {"path": path, "mode": "r"})
    except AgentError:
        return b""
    data = b""
    try:
        agent.call("guest-file-seek", {"handle": h, "offset": offset, "whence": "set"})
        while True:
            r = agent.call("guest-file-read", {"handle": h, "count": 1 << 20})
            chunk = base64.b64decode(r.get("buf-b64", ""))
            data += chunk
            if r.get("eof") or not chunk:
                break
    finally:
        agent.call("guest-file-close", {"handle": h})
    return data


def run_streaming(sock_path, argv, env, timeout):
    """Like run, but prints the output (stdout and stderr merged) while the
    command runs: it goes to a file in the guest that is read as it grows."""
    agent = connect(sock_path, 30)
    full_env = {"PATH": GUEST_PATH, "HOME": "/root", "LANG": "C.UTF-8",
                "SKIFF_BIN": "/opt/skiff/bin"}
    full_env.update(env)
    out = f"/run/vmlab-exec-{random.randrange(1, 2**31)}.log"
    started = agent.call("guest-exec", {
        "path": "/bin/sh",
        "arg": ["-c", 'out="$1"; shift; exec "$@" >"$out" 2>&1 </dev/null', "sh", out] + argv,
        "env": [f"{k}={v}" for k, v in full_env.items()],
    })
    pid = started["pid"]
    deadline = time.monotonic() + timeout
    offset = 0
    rc = None
    while rc is None:
        st = agent.call("guest-exec-status", {"pid": pid})
        if st.get("exited"):
            rc = 128 + int(st["signal"]) if "signal" in st else int(st.get("exitcode", 1))
        data = read_from(agent, out, offset)
        offset += len(data)
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        if rc is None:
            if time.monotonic() > deadline:
                try:
                    agent.call("guest-exec", {"path": "/bin/kill", "arg": ["-KILL", str(pid)]})
                except AgentError:
                    pass
                print(f"qga: {' '.join(argv)}: timed out after {timeout:.0f} s (killed pid {pid})",
                      file=sys.stderr)
                rc = 124
            else:
                time.sleep(1)
    try:
        agent.call("guest-exec", {"path": "/bin/rm", "arg": ["-f", out]})
    except AgentError:
        pass
    agent.close()
    return rc


def push(sock_path, local, remote, mode):
    agent = connect(sock_path, 30)
    with open(local, "rb") as f:
        h = agent.call("guest-file-open", {"path": remote, "mode": "w"})
        try:
            while True:
                data = f.read(CHUNK)
                if not data:
                    break
                agent.call("guest-file-write",
                           {"handle": h, "buf-b64": base64.b64encode(data).decode()})
        finally:
            agent.call("guest-file-close", {"handle": h})
    if mode is None:
        mode = oct(os.stat(local).st_mode & 0o7777)[2:]
    pid = agent.call("guest-exec", {"path": "/bin/chmod", "arg": [mode, remote]})["pid"]
    for _ in range(100):
        st = agent.call("guest-exec-status", {"pid": pid})
        if st.get("exited"):
            return 0 if st.get("exitcode") == 0 else 1
        time.sleep(0.1)
    return 1


def pull(sock_path, remote, local):
    agent = connect(sock_path, 30)
    h = agent.call("guest-file-open", {"path": remote, "mode": "r"})
    try:
        with open(local, "wb") as f:
            while True:
                r = agent.call("guest-file-read", {"handle": h, "count": 1 << 20})
                f.write(base64.b64decode(r.get("buf-b64", "")))
                if r.get("eof") or r.get("count", 0) == 0:
                    break
    finally:
        agent.call("guest-file-close", {"handle": h})
    return 0


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    sock_path, cmd, rest = argv[1], argv[2], argv[3:]
    timeout = 600.0
    env = {}
    mode = None
    stream = False
    args = []
    i = 0
    while i < len(rest):
        a = rest[i]
        if not args and a == "--timeout":
            timeout = float(rest[i + 1])
            i += 2
        elif not args and a == "-e":
            k, _, v = rest[i + 1].partition("=")
            env[k] = v
            i += 2
        elif not args and a == "--stream":
            stream = True
            i += 1
        elif not args and a == "--mode":
            mode = rest[i + 1]
            i += 2
        elif not args and a == "--":
            args.extend(rest[i + 1:])
            break
        else:
            args.append(a)
            i += 1
    try:
        if cmd == "ping":
            return ping(sock_path, timeout)
        if cmd == "exec" and args and stream:
            return run_streaming(sock_path, args, env, timeout)
        if cmd == "exec" and args:
            return run(sock_path, args, env, timeout)
        if cmd == "push" and len(args) == 2:
            return push(sock_path, args[0], args[1], mode)
        if cmd == "pull" and len(args) == 2:
            return pull(sock_path, args[0], args[1])
    except (OSError, AgentError, ValueError) as e:
        print(f"qga: {sock_path}: {cmd}: {e}", file=sys.stderr)
        return 125
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
