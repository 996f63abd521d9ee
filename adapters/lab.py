"""A laboratory instrument behind an HTTP(S) API: submit a recipe, poll the job, fetch the
measurement.

The instrument speaks a small JSON protocol, rooted at the ``url`` parameter:

``POST {url}/jobs``
    body ``{"request_id", "formula", "reduced_formula", "composition", "structure",
    "recipe", "properties"}`` (``structure`` is a pymatgen dict, ``properties`` the
    names to measure); reply ``{"id": <job id>}``. An instrument that has already
    seen ``request_id`` should return the job it made for it, so a submission
    whose reply was lost is not paid for twice.
``GET {url}/jobs/{id}``
    reply ``{"state": "queued" | "running" | "done" | "failed", "message": ...}``.
``GET {url}/jobs/{id}/result``
    reply ``{"properties": {name: number}, "units": {name: unit}, "converged": bool}``
    (``units`` and ``converged`` optional). The properties must be exactly the
    declared ones, each a finite number, in the declared units.

Requests carry ``Authorization: Bearer <token>``; the token is read when a request is
made, from the environment variable named by ``token_env`` (a campaign run by Prefect
may fill it from a Secret block: ``evaluator.env_from_blocks``), and is never written to the
parameters, the job
handle, the result, a file or an error message. HTTPS is verified against the
system's trust store or ``ca_file``; plain HTTP is refused except to this machine.
Redirects are refused, so the token never follows one to another host.

Failures: a refused token, a reply that is not the protocol and a failed job raise
:class:`~matforge.adapters.base.EvaluationError`; an instrument that is unreachable or
answers 5xx or 429 raises :class:`ConnectionError`, and one slower than ``timeout``
raises :class:`TimeoutError`, which a campaign's retry policy (``retry_on``) retries.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import math
import os
import re
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, ClassVar

from pymatgen.core import Composition, Structure

from matforge.adapters.base import EvaluationError, EvaluationResult, JobEvaluator, Resources
from matforge.engine.materials.structures import composition_of

DEFAULT_TOKEN_ENV = "MATFORGE_LAB_TOKEN"
REDACTED = "***"
"""What stands for the token in any text the instrument sends back."""
REQUEST_FILE = "lab-request.json"
MAX_REPLY_BYTES = 16 * 2**20
STATES = {"queued": "running", "running": "running", "done": "done", "failed": "failed"}
JOB_ID = re.compile(r"^[A-Za-z0-9._~-]{1,128}$")
PROPERTY_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str) -> str:
    """``url`` without a trailing slash, if it may carry a token: ``https://``, or
    ``http://`` to this machine (``localhost``, ``127.0.0.0/8``, ``::1``). Raises
    ValueError naming the URL and the reason."""
    if not isinstance(url, str) or not url:
        raise ValueError(f"url must be the instrument's http(s) address, got {url!r}")
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
        _ = parts.port  # a port that is not a number raises ValueError
    except ValueError as error:
        raise ValueError(f"url {url!r} is not a URL: {error}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError(f"url {url!r} must start with https:// (or http:// to localhost)")
    if parts.username is not None or parts.password is not None:
        raise ValueError("url must not hold credentials (user:password@); the token comes "
                         "from the environment variable named by token_env")
    if parts.query or parts.fragment:
        raise ValueError(f"url {url!r} must not have a query or fragment")
    if parts.scheme == "http" and not _is_loopback(host):
        raise ValueError(f"url {url!r}: plain http would send the token unencrypted; use "
                         "https (http is allowed only to localhost)")
    return url.rstrip("/")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # a redirect would carry the Authorization header to wherever it points
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class LabEvaluator(JobEvaluator):
    """A measurement by a laboratory instrument (or a robot lab) over HTTP(S).

    The measured properties are what the campaign declares in ``properties``; the
    class declares ``band_gap`` in eV, which is what an instance measures unless told
    otherwise. The result has no energy: ``properties`` holds the measurement.

    Parameters
    ----------
    url : the instrument's API root, ``https://host[:port][/path]``
    properties : ``{name: unit}`` the instrument measures, e.g. ``{"band_gap": "eV"}``;
        the campaign's objectives and constraints must be among them
    recipe : synthesis and measurement settings sent with every sample (JSON)
    token_env : environment variable holding the API token (read at each request)
    ca_file : PEM file of the certificate authorities to trust instead of the system's
    timeout : seconds one request may take before it counts as failed (TimeoutError)
    poll_interval : seconds between two status requests while the job runs; the
        campaign's ``evaluator.timeout`` bounds the whole wait
    """

    name = "lab"
    implemented_properties: ClassVar[dict[str, str]] = {"band_gap": "eV"}
    path_parameters: ClassVar[tuple[str, ...]] = ("ca_file",)
    inputs: ClassVar[tuple[str, ...]] = ("structure", "composition")
    resources = Resources(cores=1, memory_gb=0.5, walltime=86_400.0)
    # an instrument, not a parameter of the request, decides whether a measurement converged
    conformance_unconverged: ClassVar[dict[str, Any] | None] = None

    def __init__(
        self,
        url: str,
        properties: dict[str, str] | None = None,
        recipe: dict[str, Any] | None = None,
        token_env: str = DEFAULT_TOKEN_ENV,
        ca_file: str | None = None,
        timeout: float = 30.0,
        poll_interval: float = 10.0,
    ):
        self.url = check_url(url)
        declared = dict(type(self).implemented_properties) if properties is None else properties
        if not isinstance(declared, dict) or not declared:
            raise ValueError(f"properties must be a non-empty mapping {{name: unit}}, "
                             f"got {properties!r}")
        for prop, unit in declared.items():
            if not isinstance(prop, str) or not PROPERTY_NAME.match(prop):
                raise ValueError(f"properties: {prop!r} is not a property name "
                                 "(letters, digits and _)")
            if not isinstance(unit, str) or not unit.strip():
                raise ValueError(f"properties: {prop!r} needs a unit, e.g. {{{prop}: eV}}, "
                                 f"got {unit!r}")
        self.properties = {str(k): str(v) for k, v in declared.items()}
        # the campaign's declaration, over the class default, for this instance
        self.implemented_properties = dict(self.properties)
        recipe = {} if recipe is None else recipe
        if not isinstance(recipe, dict):
            raise ValueError(f"recipe must be a mapping, got {type(recipe).__name__}")
        try:
            self.recipe = json.loads(json.dumps(recipe, allow_nan=False))
        except (TypeError, ValueError) as error:
            raise ValueError(f"recipe is not JSON: {error}") from None
        if not isinstance(token_env, str) or not token_env:
            raise ValueError(f"token_env must name an environment variable, got {token_env!r}")
        self.token_env = token_env
        self.ca_file = None if ca_file is None else str(ca_file)
        for label, value in (("timeout", timeout), ("poll_interval", poll_interval)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and value > 0):
                raise ValueError(f"{label} must be a number of seconds > 0, got {value!r}")
        self.timeout = float(timeout)
        self.poll_interval = float(poll_interval)

    # the token ------------------------------------------------------------------------

    def _token_source(self) -> tuple[str, str | None]:
        """Where the token comes from, in words, and the token (None: there is none)."""
        env = self.token_env
        token = os.environ.get(env) or None
        source = f"environment variable {env}"
        if token is not None:
            token = token.strip()
            if not token or any(ord(c) < 33 or ord(c) == 127 for c in token):
                raise EvaluationError(f"the token in {source} is empty or holds whitespace "
                                      "or control characters")
        return source, token

    # requests -------------------------------------------------------------------------

    def _opener(self) -> urllib.request.OpenerDirector:
        if self.ca_file is not None and not Path(self.ca_file).is_file():
            raise EvaluationError(f"ca_file {self.ca_file!r} is not a file")
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
        except (ssl.SSLError, OSError) as error:
            raise EvaluationError(f"ca_file {self.ca_file!r} holds no usable PEM "
                                  f"certificate: {error}") from None
        host = urllib.parse.urlsplit(self.url).hostname or ""
        proxies = urllib.request.ProxyHandler({} if _is_loopback(host) else None)
        return urllib.request.build_opener(proxies, _NoRedirect(),
                                           urllib.request.HTTPSHandler(context=context))

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """The instrument's JSON reply to ``method {url}{path}``.

        Raises EvaluationError for a refused token, a client error or a reply that is
        not JSON, ConnectionError for an unreachable instrument or a 5xx/429 reply and
        TimeoutError past ``timeout``; no message holds the token.
        """
        where = f"{method} {self.url}{path}"
        source, token = self._token_source()
        headers = {"Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = json.dumps(body, allow_nan=False).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)

        def scrub(text: str) -> str:
            return text.replace(token, REDACTED) if token else text

        try:
            with self._opener().open(req, timeout=self.timeout) as reply:
                raw = reply.read(MAX_REPLY_BYTES + 1)
        except urllib.error.HTTPError as error:
            detail = scrub(_reply_text(error))
            if error.code in (401, 403):
                whose = f"token from {source}" if token else f"no token: {source} is unset"
                raise EvaluationError(f"{where}: instrument refused the token "
                                      f"(HTTP {error.code}); {whose}: {detail}") from None
            if error.code >= 500 or error.code == 429:
                raise ConnectionError(f"{where}: instrument answered HTTP {error.code}, "
                                      f"try again later: {detail}") from None
            if 300 <= error.code < 400:
                raise EvaluationError(f"{where}: instrument redirects (HTTP {error.code}) to "
                                      f"{scrub(error.headers.get('Location', '?'))}; redirects "
                                      "are not followed, set url to the final address") from None
            raise EvaluationError(f"{where}: HTTP {error.code}: {detail}") from None
        except (TimeoutError, socket.timeout):
            raise TimeoutError(f"{where}: no reply within timeout={self.timeout:g} s") from None
        except urllib.error.URLError as error:
            reason = error.reason
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise TimeoutError(f"{where}: no reply within timeout={self.timeout:g} s") \
                    from None
            if isinstance(reason, ssl.SSLCertVerificationError):
                trust = f"ca_file {self.ca_file!r}" if self.ca_file else "the system trust store"
                raise EvaluationError(f"{where}: TLS certificate not trusted by {trust}: "
                                      f"{reason.verify_message}") from None
            if isinstance(reason, ssl.SSLError):
                raise EvaluationError(f"{where}: TLS failed: {scrub(str(reason))}") from None
            raise ConnectionError(f"{where}: instrument unreachable: {scrub(str(reason))}") \
                from None
        except (ConnectionError, http.client.HTTPException) as error:
            raise ConnectionError(f"{where}: connection lost: {type(error).__name__}") from None
        if len(raw) > MAX_REPLY_BYTES:
            raise EvaluationError(f"{where}: reply larger than {MAX_REPLY_BYTES} bytes")
        try:
            return json.loads(raw)
        except ValueError as error:
            raise EvaluationError(f"{where}: reply is not JSON ({error}): "
                                  f"{scrub(raw[:200].decode(errors='replace'))!r}") from None

    # the job --------------------------------------------------------------------------

    def recipe_for(self, structure: Structure | Composition, request_id: str) -> dict[str, Any]:
        """The submission for ``structure``: composition, structure (None for a campaign of
        compositions), recipe, properties."""
        composition = composition_of(structure)
        return {
            "request_id": request_id,
            "formula": composition.formula,
            "reduced_formula": composition.reduced_formula,
            "composition": {str(el): float(n) for el, n in composition.items()},
            "structure": None if isinstance(structure, Composition) else structure.as_dict(),
            "recipe": self.recipe,
            "properties": sorted(self.properties),
        }

    def submit(self, structure: Structure, workdir: Path) -> dict[str, Any]:
        """POST the recipe; the request (with its id, kept for a resubmission) goes to
        ``lab-request.json`` first."""
        path = Path(workdir) / REQUEST_FILE
        try:
            request_id = json.loads(path.read_text())["request_id"]
        except (OSError, ValueError, KeyError, TypeError):
            request_id = uuid.uuid4().hex
        body = self.recipe_for(structure, request_id)
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(body))
        os.replace(partial, path)
        reply = self.request("POST", "/jobs", body)
        job = reply.get("id") if isinstance(reply, dict) else None
        if isinstance(job, bool) or not isinstance(job, (str, int)) or not JOB_ID.match(str(job)):
            raise EvaluationError(f"POST {self.url}/jobs: reply has no usable job 'id' "
                                  f"(letters, digits, ._~-): {str(reply)[:200]!r}")
        return {"url": self.url, "job": str(job), "request_id": request_id,
                "submitted": time.time()}

    def _job_path(self, handle: dict[str, Any]) -> str:
        job = handle.get("job") if isinstance(handle, dict) else None
        if not isinstance(job, str) or not JOB_ID.match(job):
            raise EvaluationError(f"job handle {handle!r} names no job")
        if handle.get("url") != self.url:
            raise EvaluationError(f"job {job} was submitted to {handle.get('url')!r}, not to "
                                  f"{self.url!r}; remove {self.JOB_FILE} to submit again")
        return f"/jobs/{urllib.parse.quote(job)}"

    def poll(self, handle: dict[str, Any], workdir: Path) -> str:
        """``"running"`` (queued or running), ``"done"``; a job the instrument reports
        failed raises EvaluationError with the instrument's message."""
        path = self._job_path(handle)
        reply = self.request("GET", path)
        state = reply.get("state") if isinstance(reply, dict) else None
        if state not in STATES:
            raise EvaluationError(f"GET {self.url}{path}: 'state' must be one of "
                                  f"{sorted(STATES)}, got {str(state)[:80]!r}")
        if state == "failed":
            message = str(reply.get("message") or "no reason given")[:300]
            raise EvaluationError(f"instrument job {handle['job']} failed: {message}")
        return STATES[state]

    def collect(self, handle: dict[str, Any], structure: Structure,
                workdir: Path) -> EvaluationResult:
        """The measurement: exactly the declared properties, finite numbers in the
        declared units."""
        path = self._job_path(handle) + "/result"
        where = f"GET {self.url}{path}"
        reply = self.request("GET", path)
        if not isinstance(reply, dict) or not isinstance(reply.get("properties"), dict):
            raise EvaluationError(f"{where}: reply has no 'properties' mapping: "
                                  f"{str(reply)[:200]!r}")
        measured = reply["properties"]
        missing = sorted(set(self.properties) - set(measured))
        extra = sorted(set(measured) - set(self.properties))
        if missing or extra:
            raise EvaluationError(f"{where}: properties {sorted(measured)} are not the declared "
                                  f"{sorted(self.properties)} (missing: {missing or 'none'}, "
                                  f"undeclared: {extra or 'none'})")
        values = {}
        for prop, value in measured.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not \
                    math.isfinite(value):
                raise EvaluationError(f"{where}: property {prop!r} is {str(value)[:80]!r}, "
                                      "not a finite number")
            values[prop] = float(value)
        units = reply.get("units") or {}
        if not isinstance(units, dict):
            raise EvaluationError(f"{where}: 'units' is not a mapping: {str(units)[:80]!r}")
        for prop, unit in units.items():
            if prop in self.properties and unit != self.properties[prop]:
                raise EvaluationError(f"{where}: {prop!r} measured in {unit!r}, declared in "
                                      f"{self.properties[prop]!r}")
        converged = reply.get("converged", True)
        if not isinstance(converged, bool):
            raise EvaluationError(f"{where}: 'converged' is {converged!r}, not true or false")
        submitted = handle.get("submitted")
        wall = time.time() - submitted if isinstance(submitted, (int, float)) else 0.0
        return EvaluationResult(properties=values, converged=converged,
                                wall_time=max(0.0, float(wall)))


def _reply_text(error: urllib.error.HTTPError) -> str:
    try:
        body = error.read(2000).decode(errors="replace")
    except Exception:
        body = ""
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict) and ("message" in parsed or "detail" in parsed):
            body = str(parsed.get("message") or parsed.get("detail"))
    except ValueError:
        pass
    return " ".join(body.split())[:300] or error.reason or ""
