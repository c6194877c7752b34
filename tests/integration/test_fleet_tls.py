"""TLS: the service over HTTPS with a CA made here (cryptography), agents pinned to it, optional mutual TLS."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from test_fleet_security import SEED, Fleet

from tinymlops.errors import UsageError
from tinymlops.fleet import agent, service, tls
from tinymlops.sim.streams import SyntheticStream

pytestmark = pytest.mark.integration


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(d: Path, name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name)).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path = d / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def issue(d: Path, ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path], name: str,
          server: bool) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(ca[1].subject).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
         .not_valid_after(now + dt.timedelta(days=1)))
    if server:
        b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                            critical=False)
    cert = b.sign(ca[0], hashes.SHA256())
    cp, kp = d / f"{name}.crt", d / f"{name}.key"
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    return cp, kp


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("fleet-tls"))
    yield f
    f.close()


def test_agents_reach_an_https_service_only_through_the_pinned_ca_and_mutual_tls(fleet: Fleet, tmp_path: Path) -> None:
    ca = make_ca(tmp_path, "fleet-ca")
    rogue = make_ca(tmp_path, "rogue-ca")
    cert, key = issue(tmp_path, ca, "fleet-server", server=True)
    client_cert, client_key = issue(tmp_path, ca, "device-tls-1", server=False)
    ssl_kwargs = tls.server_ssl_kwargs(cert, key, ca[2])
    fleet.op.put("/v1/desired-state", json={"package_id": fleet.good_id, "cohort": "tls"}).raise_for_status()
    with service.BackgroundServer(fleet.st, poll_interval_s=0.2, ssl=ssl_kwargs) as srv:
        assert srv.url.startswith("https://")
        with pytest.raises(httpx.HTTPError):  # not pinned: the system store does not know our CA
            httpx.get(srv.url + "/healthz")
        with pytest.raises(httpx.HTTPError):  # pinned, but no client certificate: mutual TLS refuses
            httpx.get(srv.url + "/healthz", verify=tls.client_verify(srv.url, ca[2]))
        ok = httpx.get(srv.url + "/healthz", verify=tls.client_verify(srv.url, ca[2], client_cert, client_key))
        assert ok.status_code == 200

        def run(did: str, verify: ssl.SSLContext | bool) -> agent.Agent:
            tok = fleet.op.post("/v1/enrolment-tokens", json={"cohort": "tls"}).json()["tokens"][0]
            cfg = fleet.agent_config(did, tok, seconds=2.0)
            cfg.server, cfg.verify = srv.url, verify
            a = agent.Agent(cfg, SyntheticStream(seed=SEED))
            asyncio.run(a.run())
            return a

        good = run("tls-1", tls.client_verify(srv.url, ca[2], client_cert, client_key))
        assert good.credential is not None and good.installed is not None and good.reports_sent >= 1
        # an agent pinned to another CA never talks to this server (nor would it to a server with a rogue cert)
        wrong = run("tls-2", tls.client_verify(srv.url, rogue[2], client_cert, client_key))
        assert wrong.credential is None and wrong.installed is None


def test_plain_http_only_on_loopback_unless_insecure(tmp_path: Path) -> None:
    tls.require_tls_off_loopback("127.0.0.1", False, False, "--host")
    tls.require_tls_off_loopback("::1", False, False, "--host")
    with pytest.raises(UsageError, match="not loopback"):
        tls.require_tls_off_loopback("0.0.0.0", False, False, "--host")
    tls.require_tls_off_loopback("0.0.0.0", False, True, "--host")
    with pytest.raises(UsageError, match="not loopback"):
        tls.client_verify("http://fleet.example.com:8700", None)
    plain = tls.client_verify("http://fleet.example.com:8700", None, insecure=True)  # no CA bundle loaded: an
    assert isinstance(plain, ssl.SSLContext) and plain.verify_mode == ssl.CERT_REQUIRED  # https:// hop fails
    assert plain.check_hostname and plain.cert_store_stats()["x509_ca"] == 0
    with pytest.raises(UsageError, match="go together"):
        tls.server_ssl_kwargs(tmp_path / "c.pem", None, None)
