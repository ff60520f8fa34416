"""Test helpers: a zip of this checkout as GitHub would serve it, and a local web server.

They let tests replay FiftyOne's downloads of the repository (`fiftyone
plugins download`, remote model-zoo sources) with no network.
"""

import contextlib
import functools
import http.server
import subprocess
import threading
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tracked_files_archive(path: Path, prefix: str) -> Path:
    """Zips the checkout's tracked files (and new ones git does not ignore) under `prefix/`."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name in filter(None, (n.decode() for n in listed)):
            if (ROOT / name).is_file():
                archive.write(ROOT / name, f"{prefix}/{name}")
    return path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(folder: Path | None = None, handler=None):
    """Serves `folder` (or answers with `handler`, a request handler class) on 127.0.0.1 while the
    block runs; yields the base URL."""
    handler = handler or functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
