"""The lab adapter against a real local instrument: an HTTPS server in a thread, with a
certificate authority made for the test, that measures a band gap from the composition."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import subprocess
import sys
import threading
import time
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pymatgen.core import Composition, Element, Lattice, Structure

from matforge.adapters import EvaluationError, load_evaluator
from matforge.adapters.base import EvaluationResult
from matforge.adapters.conformance import check_adapter
from matforge.adapters.lab import LabEvaluator
from matforge.engine.loop.isolate import EvaluationTimeout
from matforge.engine.loop.results import evaluate_isolated

TOKEN = "lab-token-5f3a9c1e7d"
TOKEN_ENV = "MATFORGE_TEST_LAB_TOKEN"
HC = 1239.84198  # eV nm


def band_gap(composition: dict[str, float]) -> float:
    """The toy instrument's measurement: the gap grows with the electronegativity spread
    (NaCl wide, GaAs narrow, an elemental solid zero)."""
    x = [Element(el).X for el in composition]
    return round(3.0 * (max(x) - min(x)), 6)


# a certificate authority, made at test time --------------------------------------------

def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _authority(common: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(common)).issuer_name(_name(common))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """``ca.pem`` (the lab's authority), ``server.pem``/``server.key`` (its certificate for
    127.0.0.1 and localhost) and ``other-ca.pem`` (an authority that signed nothing here)."""
    root = tmp_path_factory.mktemp("pki")
    ca_key, ca = _authority("matforge test lab CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    leaf = (x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (root / "ca.pem").write_bytes(_pem(ca))
    (root / "server.pem").write_bytes(_pem(leaf))
    (root / "server.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (root / "other-ca.pem").write_bytes(_pem(_authority("someone else's CA")[1]))
    return root


# the instrument -------------------------------------------------------------------------

class Instrument:
    """What the simulated instrument does; tests change these attributes between calls."""

    def __init__(self, token: str | None = TOKEN):
        self.token = token
        self.polls_to_finish = 2     # status requests answered queued/running before done
        self.fail: str | None = None  # a job's failure message
        self.delay = 0.0              # seconds every reply waits
        self.errors_5xx = 0           # the next n requests answer 503
        self.result_reply = None      # bytes replacing the result
        self.echo_authorization = False
        self.submissions: list[dict] = []  # jobs created
        self.posts = 0                      # POST /jobs received, duplicates included
        self.states: list[str] = []
        self.jobs: dict[str, dict] = {}
        self.by_request: dict[str, str] = {}
        self.lock = threading.Lock()

    def measure(self, body: dict) -> dict:
        gap = band_gap(body["composition"])
        known = {"band_gap": gap, "absorption_edge": HC / gap if gap else 0.0}
        units = {"band_gap": "eV", "absorption_edge": "nm"}
        return {"properties": {p: known[p] for p in body["properties"]},
                "units": {p: units[p] for p in body["properties"]}, "converged": True}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, code: int, payload) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _allowed(self, lab: Instrument) -> bool:
        if lab.token is None:
            return True
        given = self.headers.get("Authorization", "")
        if given == f"Bearer {lab.token}":
            return True
        message = f"bad credentials {given}" if lab.echo_authorization else "bad credentials"
        self._send(401, {"message": message})
        return False

    def _route(self, method: str) -> None:
        lab: Instrument = self.server.instrument
        body = None
        if method == "POST":
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if lab.delay:
            if method == "POST":
                self._record(lab, body)
            time.sleep(lab.delay)
        if lab.errors_5xx:
            lab.errors_5xx -= 1
            return self._send(503, {"message": "detector cooling down"})
        if not self._allowed(lab):
            return None
        parts = self.path.strip("/").split("/")
        if method == "POST" and parts == ["jobs"]:
            return self._send(201, {"id": self._record(lab, body)})
        if method == "GET" and len(parts) in (2, 3) and parts[0] == "jobs" \
                and parts[1] in lab.jobs:
            job = lab.jobs[parts[1]]
            if len(parts) == 2:
                job["polls"] += 1
                if job["polls"] <= lab.polls_to_finish:
                    state = "queued" if job["polls"] == 1 else "running"
                else:
                    state = "failed" if lab.fail else "done"
                lab.states.append(state)
                return self._send(200, {"state": state, "message": lab.fail})
            if parts[2] == "result":
                job["results"] += 1
                return self._send(200, lab.result_reply or lab.measure(job["body"]))
        return self._send(404, {"message": f"no {self.path}"})

    @staticmethod
    def _record(lab: Instrument, body: dict) -> str:
        with lab.lock:
            if body["request_id"] not in lab.by_request:
                job = f"job-{len(lab.jobs) + 1}"
                lab.jobs[job] = {"body": body, "polls": 0, "results": 0}
                lab.by_request[body["request_id"]] = job
                lab.submissions.append(body)
                lab.posts += 1
            return lab.by_request[body["request_id"]]

    def do_POST(self):
        self._route("POST")

    def do_GET(self):
        self._route("GET")


def _serve(instrument: Instrument, certfile=None, keyfile=None):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads, server.block_on_close = True, False
    server.instrument = instrument
    scheme = "http"
    if certfile:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certfile, keyfile)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    return server, f"{scheme}://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def lab(pki):
    """(instrument, its https URL)."""
    instrument = Instrument()
    server, url = _serve(instrument, pki / "server.pem", pki / "server.key")
    yield instrument, url
    server.shutdown()
    server.server_close()


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    return TOKEN


def _evaluator(url: str, pki: Path, **extra) -> LabEvaluator:
    parameters = {"url": url, "ca_file": str(pki / "ca.pem"), "token_env": TOKEN_ENV,
                  "poll_interval": 0.01, "timeout": 5.0, **extra}
    evaluator = load_evaluator("lab", parameters)
    assert isinstance(evaluator, LabEvaluator)
    return evaluator


NACL = Structure(Lattice.cubic(5.64), ["Na"] * 4 + ["Cl"] * 4,
                 [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5],
                  [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5], [0.5, 0.5, 0.5]])
GAAS = Structure(Lattice.cubic(5.65), ["Ga", "As"], [[0, 0, 0], [0.25, 0.25, 0.25]])


def _files_text(workdir: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in workdir.rglob("*") if p.is_file())


# a measurement --------------------------------------------------------------------------

def test_a_measurement_returns_the_instruments_band_gap(lab, pki, token, tmp_path):
    instrument, url = lab
    evaluator = _evaluator(url, pki, recipe={"anneal_K": 900, "atmosphere": "Ar"})
    nacl = evaluator.evaluate(NACL, tmp_path / "nacl")
    gaas = evaluator.evaluate(GAAS, tmp_path / "gaas")

    assert nacl.energy is None and nacl.structure is None and nacl.converged
    assert nacl.properties == {"band_gap": pytest.approx(band_gap({"Na": 4, "Cl": 4}))}
    assert gaas.get("band_gap") == pytest.approx(band_gap({"Ga": 1, "As": 1}))
    assert nacl.get("band_gap") > 4 * gaas.get("band_gap") > 0  # ionic vs covalent
    # the job went through queued and running before it was done, one job per sample
    assert instrument.states == ["queued", "running", "done"] * 2
    assert len(instrument.submissions) == 2
    sent = instrument.submissions[0]
    assert sent["reduced_formula"] == "NaCl" and sent["properties"] == ["band_gap"]
    assert Composition(sent["composition"]) == NACL.composition
    assert Structure.from_dict(sent["structure"]) == NACL
    assert sent["recipe"] == {"anneal_K": 900, "atmosphere": "Ar"}
    # the campaign's store takes it: it round-trips through JSON
    assert EvaluationResult.model_validate_json(nacl.model_dump_json()) == nacl


def test_a_campaign_declares_what_the_instrument_measures(lab, pki, token, tmp_path):
    instrument, url = lab
    evaluator = _evaluator(url, pki, properties={"band_gap": "eV", "absorption_edge": "nm"})
    assert evaluator.implemented_properties == {"band_gap": "eV", "absorption_edge": "nm"}
    assert LabEvaluator.implemented_properties == {"band_gap": "eV"}  # the class keeps its own
    result = evaluator.evaluate(GAAS, tmp_path / "gaas")
    assert result.get("absorption_edge") == pytest.approx(HC / result.get("band_gap"))
    assert instrument.submissions[0]["properties"] == ["absorption_edge", "band_gap"]


@pytest.mark.parametrize("reply, complaint", [
    (b"{'band_gap': 1.1", "reply is not JSON"),
    ({"gap": 1.1}, "no 'properties' mapping"),
    ({"properties": {}}, "missing: ['band_gap']"),
    ({"properties": {"band_gap": 1.1, "color": 3.0}}, "undeclared: ['color']"),
    ({"properties": {"band_gap": "1.1 eV"}}, "'band_gap' is '1.1 eV', not a finite number"),
    ({"properties": {"band_gap": None}}, "'band_gap' is 'None', not a finite number"),
    ({"properties": {"band_gap": True}}, "'band_gap' is 'True', not a finite number"),
    ({"properties": {"band_gap": 1100.0}, "units": {"band_gap": "meV"}},
     "'band_gap' measured in 'meV', declared in 'eV'"),
])
def test_a_reply_that_breaks_the_protocol_is_named(lab, pki, token, tmp_path, reply, complaint):
    instrument, url = lab
    instrument.result_reply = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
    with pytest.raises(EvaluationError, match="result") as error:
        _evaluator(url, pki).evaluate(GAAS, tmp_path / "run")
    assert complaint in str(error.value)


def test_a_failed_job_reports_the_instruments_reason(lab, pki, token, tmp_path):
    instrument, url = lab
    instrument.fail = "sample holder empty"
    with pytest.raises(EvaluationError, match="job-1 failed: sample holder empty"):
        _evaluator(url, pki).evaluate(GAAS, tmp_path / "run")


def test_an_unconverged_measurement_says_so(lab, pki, token, tmp_path):
    instrument, url = lab
    instrument.result_reply = json.dumps({"properties": {"band_gap": 1.2},
                                          "converged": False}).encode()
    result = _evaluator(url, pki).evaluate(GAAS, tmp_path / "run")
    assert result.converged is False and result.get("band_gap") == 1.2


# the token ------------------------------------------------------------------------------

def test_a_refused_token_is_reported_without_the_token(lab, pki, monkeypatch, tmp_path):
    instrument, url = lab
    instrument.echo_authorization = True  # the instrument's error page repeats the header
    wrong = "wrong-token-91b2e4"
    monkeypatch.setenv(TOKEN_ENV, wrong)
    evaluator = _evaluator(url, pki)
    with pytest.raises(EvaluationError, match=r"instrument refused the token \(HTTP 401\)") \
            as error:
        evaluator.evaluate(GAAS, tmp_path / "run")
    assert wrong not in str(error.value) and TOKEN_ENV in str(error.value)
    assert instrument.submissions == []

    monkeypatch.delenv(TOKEN_ENV)
    with pytest.raises(EvaluationError, match=f"no token: environment variable {TOKEN_ENV} is "
                                              "unset"):
        evaluator.evaluate(GAAS, tmp_path / "run")

    monkeypatch.setenv(TOKEN_ENV, TOKEN)  # read at each call: the same evaluator now works
    result = evaluator.evaluate(GAAS, tmp_path / "run")
    assert result.get("band_gap") == pytest.approx(band_gap({"Ga": 1, "As": 1}))
    stored = _files_text(tmp_path / "run") + result.model_dump_json()
    stored += json.dumps(evaluator.parameters()) + repr(vars(evaluator))
    assert (tmp_path / "run" / "job.json").exists()
    assert TOKEN not in stored and wrong not in stored


def test_an_error_page_that_echoes_the_token_is_scrubbed(lab, pki, token, tmp_path):
    instrument, url = lab
    instrument.errors_5xx = 1
    instrument.token = "something-else"
    instrument.echo_authorization = True
    with pytest.raises(ConnectionError, match="HTTP 503"):
        _evaluator(url, pki).evaluate(GAAS, tmp_path / "run")
    with pytest.raises(EvaluationError, match="bad credentials Bearer \\*\\*\\*") as error:
        _evaluator(url, pki).evaluate(GAAS, tmp_path / "run")
    assert TOKEN not in str(error.value)


def test_a_token_with_a_line_break_is_refused_without_showing_it(lab, pki, monkeypatch,
                                                                 tmp_path):
    _, url = lab
    monkeypatch.setenv(TOKEN_ENV, "abc\r\nX-Injected: 1")
    with pytest.raises(EvaluationError, match="whitespace or control characters") as error:
        _evaluator(url, pki).evaluate(GAAS, tmp_path / "run")
    assert "abc" not in str(error.value)


# a slow or flaky instrument -------------------------------------------------------------

def test_a_slow_instrument_times_out_and_a_retry_does_not_pay_twice(lab, pki, token,
                                                                    tmp_path):
    instrument, url = lab
    instrument.delay = 1.5
    evaluator = _evaluator(url, pki, timeout=0.3)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"no reply within timeout=0.3 s"):
        evaluator.evaluate(GAAS, tmp_path / "run")
    assert time.monotonic() - start < 1.2
    assert not (tmp_path / "run" / "job.json").exists()
    assert len(instrument.submissions) == 1  # it got the job; its reply came too late

    instrument.delay = 0.0  # the retry sends the same request id: the same job comes back
    result = evaluator.evaluate(GAAS, tmp_path / "run")
    assert len(instrument.submissions) == 1
    assert json.loads((tmp_path / "run" / "job.json").read_text())["job"] == "job-1"
    assert result.get("band_gap") == pytest.approx(band_gap({"Ga": 1, "As": 1}))


def test_a_5xx_is_transient_and_a_rerun_reattaches_without_resubmitting(lab, pki, token,
                                                                         tmp_path):
    instrument, url = lab
    instrument.polls_to_finish = 4
    evaluator = _evaluator(url, pki)

    class Busy(LabEvaluator):
        def poll(self, handle, workdir):
            state = super().poll(handle, workdir)
            if instrument.jobs["job-1"]["polls"] == 2:
                instrument.errors_5xx = 1  # the instrument's gateway hiccups mid-job
            return state

    with pytest.raises(ConnectionError, match=r"HTTP 503.*detector cooling down"):
        Busy(**evaluator.parameters()).evaluate(NACL, tmp_path / "run")
    handle = json.loads((tmp_path / "run" / "job.json").read_text())
    assert handle["job"] == "job-1" and handle["url"] == url
    assert set(handle) == {"url", "job", "request_id", "submitted"}

    first = evaluator.evaluate(NACL, tmp_path / "run")  # the retry
    again = evaluator.evaluate(NACL, tmp_path / "run")  # and a re-run after it
    assert len(instrument.submissions) == 1 and instrument.posts == 1
    assert first.properties == again.properties
    assert instrument.states == ["queued", "running", "running", "running", "done", "done"]


@pytest.mark.slow  # about 10 s where it starts the evaluations' fork server
def test_a_killed_evaluation_reattaches_to_its_job(pki, tmp_path):
    # the evaluation's process reads the token from the environment the campaign started
    # with, so this instrument takes none
    instrument = Instrument(token=None)
    instrument.polls_to_finish = 10**6
    server, url = _serve(instrument, pki / "server.pem", pki / "server.key")
    try:
        make = partial(load_evaluator, "lab", {"url": url, "ca_file": str(pki / "ca.pem"),
                                               "poll_interval": 0.05})
        with pytest.raises(EvaluationTimeout):
            evaluate_isolated(make, GAAS, tmp_path / "run", "k", 2.0, "lab")
        assert len(instrument.submissions) == 1 and instrument.states[-1] == "running"
        instrument.polls_to_finish = 0
        result = evaluate_isolated(make, GAAS, tmp_path / "run", "k", 30.0, "lab")
    finally:
        server.shutdown()
        server.server_close()
    assert len(instrument.submissions) == 1
    assert result["properties"]["band_gap"] == pytest.approx(band_gap({"Ga": 1, "As": 1}))


# TLS and addresses ----------------------------------------------------------------------

def test_an_untrusted_certificate_is_refused(lab, pki, token, tmp_path):
    instrument, url = lab
    with pytest.raises(EvaluationError, match="not trusted by the system trust store"):
        _evaluator(url, pki, ca_file=None).evaluate(GAAS, tmp_path / "system")
    with pytest.raises(EvaluationError, match="not trusted by ca_file .*other-ca.pem"):
        _evaluator(url, pki, ca_file=str(pki / "other-ca.pem")).evaluate(GAAS, tmp_path / "o")
    assert instrument.posts == 0
    result = _evaluator(url, pki).evaluate(GAAS, tmp_path / "ours")  # with the lab's CA
    assert result.get("band_gap") > 0


def test_a_missing_ca_file_is_named(lab, pki, token, tmp_path):
    _, url = lab
    with pytest.raises(EvaluationError, match="ca_file .*nowhere.pem' is not a file"):
        _evaluator(url, pki, ca_file=str(tmp_path / "nowhere.pem")).evaluate(GAAS, tmp_path)
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(EvaluationError, match="junk.pem' holds no usable PEM"):
        _evaluator(url, pki, ca_file=str(tmp_path / "junk.pem")).evaluate(GAAS, tmp_path)


def test_plain_http_is_allowed_only_to_this_machine(token, pki, tmp_path):
    instrument = Instrument()
    server, url = _serve(instrument)
    try:
        result = _evaluator(url, pki, ca_file=None).evaluate(GAAS, tmp_path / "run")
    finally:
        server.shutdown()
        server.server_close()
    assert result.get("band_gap") == pytest.approx(band_gap({"Ga": 1, "As": 1}))
    for remote in ("http://lab.example.org", "http://10.0.0.7:8080", "http://[2001:db8::1]"):
        with pytest.raises(ValueError, match="plain http would send the token unencrypted"):
            LabEvaluator(url=remote)
    LabEvaluator(url="http://localhost:8080/api/")  # loopback names and addresses are fine
    LabEvaluator(url="http://[::1]:8080")


@pytest.mark.parametrize("parameters, complaint", [
    ({"url": "ftp://lab.example.org"}, "must start with https://"),
    ({"url": "https://user:pw@lab.example.org"}, "must not hold credentials"),
    ({"url": "https://lab.example.org/?key=1"}, "must not have a query"),
    ({"url": "https://lab.example.org:port"}, "is not a URL"),
    ({"url": "https://lab.example.org", "properties": {}}, "non-empty mapping"),
    ({"url": "https://lab.example.org", "properties": {"band gap": "eV"}}, "not a property"),
    ({"url": "https://lab.example.org", "properties": {"band_gap": ""}}, "needs a unit"),
    ({"url": "https://lab.example.org", "recipe": {"T": float("nan")}}, "recipe is not JSON"),
    ({"url": "https://lab.example.org", "timeout": 0}, "timeout must be"),
    ({"url": "https://lab.example.org", "poll_interval": -1}, "poll_interval must be"),
])
def test_bad_parameters_are_named(parameters, complaint):
    with pytest.raises(ValueError, match=complaint):
        load_evaluator("lab", parameters)


def test_a_redirect_is_not_followed(pki, token, tmp_path):
    class Redirect(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.server.seen.append(self.headers.get("Authorization"))
            self.send_response(302)  # urllib would follow it with a GET, the token on board
            self.send_header("Location", f"http://127.0.0.1:{self.server.server_port}/x")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    server.seen = []
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    try:
        with pytest.raises(EvaluationError, match="redirects are not followed"):
            _evaluator(f"http://127.0.0.1:{server.server_port}", pki,
                       ca_file=None).evaluate(GAAS, tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    assert server.seen == [f"Bearer {TOKEN}"]  # one request, not a second to the target


def test_an_unreachable_instrument_is_transient(pki, token, tmp_path, free_port):
    with pytest.raises(ConnectionError, match="instrument unreachable"):
        _evaluator(f"http://127.0.0.1:{free_port()}", pki, ca_file=None).evaluate(GAAS,
                                                                                  tmp_path)


# the contract ---------------------------------------------------------------------------

def test_the_lab_adapter_conforms_against_a_local_instrument(pki):
    instrument = Instrument(token=None)  # see test_a_killed_evaluation_reattaches_to_its_job
    server, url = _serve(instrument, pki / "server.pem", pki / "server.key")
    try:
        problems = check_adapter("lab", {"url": url, "ca_file": str(pki / "ca.pem"),
                                         "poll_interval": 0.02, "timeout": 10.0})
    finally:
        server.shutdown()
        server.server_close()
    assert problems == []
    # the first run and its re-run in the same directory were one job, measured once and
    # fetched twice (the run stopped at its deadline may have submitted a second)
    assert instrument.submissions[0]["reduced_formula"] == "Cu3Au"
    assert instrument.jobs["job-1"]["results"] == 2
    assert all(job["results"] == 0 for job in list(instrument.jobs.values())[1:])


def test_the_module_imports_without_prefect():
    code = ("import sys; sys.modules['prefect'] = None\n"
            "import matforge.adapters.lab as lab\n"
            "ev = lab.LabEvaluator(url='http://127.0.0.1:9')\n"
            "print(sorted(ev.implemented_properties))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['band_gap']"
