"""Which Prefect server the flow talks to, and a clear stop when there is none."""
from __future__ import annotations

from dice_core.errors import InputError

from .health import health_problem


def api_url() -> str | None:
    from prefect.settings import PREFECT_API_URL
    return PREFECT_API_URL.value()


def require_server(timeout: float = 5.0) -> str:
    """The configured server's API address, once its health endpoint answers."""
    url = api_url()
    if not url:
        raise InputError("no Prefect server configured: start one (make ui) and set "
                         "PREFECT_API_URL=http://127.0.0.1:<port>/api (make ui prints it)")
    problem = health_problem(f"{url.rstrip('/')}/health", timeout)
    if problem:
        raise InputError(f"the Prefect server at {url} does not answer ({problem}): start it "
                         "(make ui, or prefect server start) or point PREFECT_API_URL at "
                         "one that runs")
    return url
