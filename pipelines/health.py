"""Whether a server's health endpoint answers."""
from __future__ import annotations

import urllib.request


def health_problem(url: str, timeout: float = 2.0) -> str | None:
    """None when ``url`` answers 200, else what went wrong."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return None if response.status == 200 else f"status {response.status}"
    except OSError as error:
        return str(error)
