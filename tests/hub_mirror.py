"""A real Hugging Face-compatible server on loopback for hub tests: olah (PyPI) serving git
repositories built by the test, in offline mirror mode, plus a relay that stops mid-download.
Plain classes: tests import them with ``from hub_mirror import ...``."""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import TracebackType

GIT = ["git", "-c", "user.name=headatlas-test", "-c", "user.email=test@localhost"]


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` and return its output."""
    done = subprocess.run([*GIT, *args], cwd=repo, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def commit_folder(repo: Path, folder: Path, message: str) -> str:
    """Replace the repository's files by ``folder``'s, commit, return the commit id."""
    for old in repo.iterdir():
        if old.name != ".git":
            old.unlink()
    for f in folder.iterdir():
        shutil.copy(f, repo / f.name)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


class OlahMirror:
    """olah on a free loopback port serving ``root/mirrors/models/ORG/NAME`` git repositories
    (``[accessibility] offline = true``: it never reaches the real hub)."""

    def __init__(self, root: Path):
        self.root = root
        self.mirrors = root / "mirrors"
        self.port = free_port()
        self.log = root / "olah.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def new_repo(self, repo_id: str) -> Path:
        """An empty git repository (branch main) for ``org/name``."""
        path = self.mirrors / "models" / repo_id
        path.mkdir(parents=True)
        git(path, "init", "-q", "-b", "main")
        return path

    def start(self) -> OlahMirror:
        config = self.root / "olah.toml"
        config.write_text(
            "[basic]\n"
            f'host = "127.0.0.1"\nport = {self.port}\n'
            f'repos-path = "{self.root / "olah-repos"}"\n'
            f'mirrors-path = ["{self.mirrors}"]\n'
            "[accessibility]\noffline = true\n"
        )
        log = self.log.open("ab")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "olah.server", "-c", str(config)],
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"olah exited: {self.log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{self.url}/api/models/none/none/revision/main", timeout=2)
            except urllib.error.HTTPError:
                return self  # it answers
            except OSError:
                time.sleep(0.2)
                continue
            return self
        raise RuntimeError("olah did not start in 60 s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout=30)
        self._proc = None

    def requests(self) -> list[str]:
        """Access-log lines as ``METHOD PATH STATUS`` (e.g. ``GET /org/m/resolve/main/x 200``)."""
        found = re.findall(
            r'"(GET|HEAD) (\S+) HTTP/[\d.]+" (\d{3})', self.log.read_text(errors="replace")
        )
        return [f"{m} {p} {s}" for m, p, s in found]

    def __enter__(self) -> OlahMirror:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class StoppingRelay:
    """A TCP relay to ``target_port`` that, once one connection has carried ``cut_after``
    bytes to the client, closes every connection and stops listening: to the client, the
    server went away mid-download."""

    def __init__(self, target_port: int, cut_after: int):
        self.target_port = target_port
        self.cut_after = cut_after
        self.port = free_port()
        self.cut = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.cut.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, to_client: bool) -> None:
        sent = 0
        try:
            while chunk := src.recv(65536):
                if to_client and sent + len(chunk) > self.cut_after:
                    dst.sendall(chunk[: self.cut_after - sent])
                    self.stop()
                    return
                dst.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass

    def stop(self) -> None:
        self.cut.set()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
