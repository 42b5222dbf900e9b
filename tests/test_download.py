"""fetch_opendata downloads, verifies and renames atomically, and fails fast and helpfully."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from amsaware.data.download import OPENDATA_DOI, DataUnavailableError, fetch_opendata

PAYLOAD = gzip.compress(b"EventId,DER_mass_MMC\n100000,138.47\n" * 200)
PAYLOAD_SHA1 = hashlib.sha1(PAYLOAD).hexdigest()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves its directory; `/truncated.csv.gz` promises PAYLOAD and sends half of it."""

    def do_GET(self) -> None:
        if self.path != "/truncated.csv.gz":
            super().do_GET()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server_url(tmp_path_factory) -> Iterator[str]:
    """Base URL of a local HTTP server holding `file.csv.gz` (PAYLOAD)."""
    root = tmp_path_factory.mktemp("served")
    (root / "file.csv.gz").write_bytes(PAYLOAD)
    handler = functools.partial(QuietHandler, directory=str(root))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        yield f"http://127.0.0.1:{server.server_address[1]}"
        server.shutdown()
        thread.join()


@pytest.fixture
def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/file.csv.gz"


def assert_guidance(message: str, target: Path) -> None:
    assert "opendata.cern.ch/record/328/files/atlas-higgs-challenge-2014-v2.csv.gz" in message
    assert OPENDATA_DOI in message
    assert str(target) in message
    assert "data.path=" in message
    assert "data=synthetic" in message


def test_downloads_verifies_and_renames(tmp_path, server_url):
    target = tmp_path / "sub" / "atlas.csv.gz"

    path = fetch_opendata(
        target, url=f"{server_url}/file.csv.gz", sha1=PAYLOAD_SHA1, progressbar=False
    )

    assert path == target
    assert target.read_bytes() == PAYLOAD
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_existing_file_is_not_downloaded_again(tmp_path, closed_port_url):
    target = tmp_path / "atlas.csv.gz"
    target.write_bytes(PAYLOAD)

    assert fetch_opendata(target, url=closed_port_url, sha1=PAYLOAD_SHA1) == target
    assert fetch_opendata(target, url=closed_port_url, sha1=None) == target


def test_existing_file_with_other_hash_is_used_with_a_warning(tmp_path, closed_port_url, caplog):
    """A subset (like the shared sample) or a user's own selection is not the official file."""
    target = tmp_path / "atlas.csv.gz"
    target.write_bytes(PAYLOAD[:-10])

    with caplog.at_level("WARNING", logger="amsaware.data.download"):
        assert fetch_opendata(target, url=closed_port_url, sha1=PAYLOAD_SHA1) == target

    assert "not the official CERN release" in caplog.text and str(target) in caplog.text
    assert target.read_bytes() == PAYLOAD[:-10]


def test_wrong_sha1_leaves_nothing_behind(tmp_path, server_url):
    target = tmp_path / "atlas.csv.gz"

    with pytest.raises(DataUnavailableError, match="hash") as err:
        fetch_opendata(target, url=f"{server_url}/file.csv.gz", sha1="0" * 40, progressbar=False)

    assert_guidance(str(err.value), target)
    assert list(tmp_path.iterdir()) == []


def test_http_error_leaves_nothing_behind(tmp_path, server_url):
    target = tmp_path / "atlas.csv.gz"

    with pytest.raises(DataUnavailableError, match="404") as err:
        fetch_opendata(target, url=f"{server_url}/missing.csv.gz", progressbar=False)

    assert_guidance(str(err.value), target)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_leaves_nothing_behind(tmp_path, server_url):
    target = tmp_path / "atlas.csv.gz"

    with pytest.raises(DataUnavailableError, match="download failed") as err:
        fetch_opendata(target, url=f"{server_url}/truncated.csv.gz", sha1=None, progressbar=False)

    assert_guidance(str(err.value), target)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_url_fails_fast_with_guidance(tmp_path, closed_port_url):
    target = tmp_path / "atlas.csv.gz"

    start = time.perf_counter()
    with pytest.raises(DataUnavailableError) as err:
        fetch_opendata(target, url=closed_port_url, timeout=5.0, progressbar=False)
    elapsed = time.perf_counter() - start

    assert elapsed < 5.0
    assert closed_port_url in str(err.value)
    assert_guidance(str(err.value), target)
    assert list(tmp_path.iterdir()) == []
