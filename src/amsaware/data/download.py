"""Fetch the CERN Open Data release of the challenge file, hash-verified, or say how to get it.

The download goes through `pooch`, which streams into a temporary file beside the target and
moves it into place only once the sha1 matches, so an interrupted or corrupted download never
leaves a file that a later run would trust.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pooch
import requests

__all__ = [
    "OPENDATA_DOI",
    "OPENDATA_SHA1",
    "OPENDATA_SIZE",
    "OPENDATA_URL",
    "DataUnavailableError",
    "fetch_opendata",
]

OPENDATA_URL = "http://opendata.cern.ch/record/328/files/atlas-higgs-challenge-2014-v2.csv.gz"
OPENDATA_SHA1 = "639b1dbd97a709a739122a9a5dcd99b49d55d86c"
OPENDATA_SIZE = 65_630_848
OPENDATA_DOI = "10.7483/OPENDATA.ATLAS.ZBP2.M5T8"

#: requests' (connect, read) timeouts in seconds: an unreachable host fails within the first,
#: a stalled transfer within the second (it bounds the wait between bytes, not the download).
DEFAULT_TIMEOUT = (10.0, 60.0)

log = logging.getLogger(__name__)


class DataUnavailableError(OSError):
    """The data file is not there and could not be fetched and verified; the message says how
    to get it by hand, in a few lines that an entry point prints as they are (amsaware.cli)."""

    keeps_lines = True


def fetch_opendata(
    path: str | Path,
    url: str = OPENDATA_URL,
    sha1: str | None = OPENDATA_SHA1,
    timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
    progressbar: bool = True,
) -> Path:
    """Return `path`, downloading `url` there first if it is absent.

    An existing file is never downloaded again. Its sha1 is still checked (about 0.05 s for
    the 66 MB file): a file that is not the official release (a subset such as the development
    sample, or your own selection) is used as it is with a warning saying so, and a truncated
    file is then rejected by the reader. A failed download or a hash mismatch of a download
    leaves nothing behind and raises `DataUnavailableError`.
    """
    path = Path(path)
    if path.exists():
        _check_existing(path, sha1)
        return path
    downloader = pooch.HTTPDownloader(progressbar=progressbar, timeout=timeout)
    known_hash = None if sha1 is None else f"sha1:{sha1}"
    try:
        pooch.retrieve(url, known_hash, fname=path.name, path=path.parent, downloader=downloader)
    except requests.exceptions.RequestException as err:
        raise DataUnavailableError(_guidance(path, url, f"download failed: {err}")) from err
    except ValueError as err:  # pooch's hash mismatch
        raise DataUnavailableError(_guidance(path, url, f"{err}; nothing was saved")) from err
    log.info("downloaded %s to %s%s", url, path, "" if sha1 is None else " (sha1 verified)")
    return path


def _check_existing(path: Path, sha1: str | None) -> None:
    if sha1 is None:
        return
    actual = pooch.file_hash(str(path), alg="sha1")
    if actual != sha1.lower():
        log.warning(
            "%s is not the official CERN release (sha1 %s, expected %s): using it as it is",
            path,
            actual,
            sha1,
        )


def _guidance(path: Path, url: str, reason: str) -> str:
    return (
        f"Could not fetch the ATLAS Higgs challenge data from {url} ({reason}).\n"
        f"Get it by hand: {OPENDATA_URL}\n"
        f"  (CERN Open Data record 328, DOI {OPENDATA_DOI}; {OPENDATA_SIZE:,} bytes, "
        f"sha1 {OPENDATA_SHA1}),\n"
        f"then put it at {path} or point the run at it with data.path=/where/you/saved/it.\n"
        "To run without it, use data=synthetic: the synthetic data needs no download."
    )
