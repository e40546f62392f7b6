"""hacluster/http/tls.py and cluster init's certificates: a CA, one certificate per data
node naming its address and name, keys 0600, and a TLS handshake that a client trusting
only the CA accepts for the member's address."""
import asyncio
import ssl
import stat

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from hacluster import cli
from hacluster.http import tls
from hacluster.node import cluster_config


def test_cluster_init_writes_the_ca_apart_and_a_certificate_per_data_node(tmp_path):
    assert cli.main(["cluster", "init", "--name", "prod", "--node", "a=127.0.0.1",
                     "--node", "b=db-b.example", "--witness", "w=10.0.0.9",
                     "--out", str(tmp_path)]) == 0
    ca = x509.load_pem_x509_certificate((tmp_path / "CA" / tls.CA_CERT).read_bytes())
    assert stat.S_IMODE((tmp_path / "CA" / tls.CA_KEY).stat().st_mode) == 0o600
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for name, san in (("a", x509.IPAddress), ("b", x509.DNSName)):
        d = tmp_path / name
        assert not (d / tls.CA_KEY).exists()        # no member can mint certificates
        assert stat.S_IMODE((d / tls.MEMBER_KEY).stat().st_mode) == 0o600
        cert = x509.load_pem_x509_certificate((d / tls.MEMBER_CERT).read_bytes())
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
        assert cert.public_key().curve.name == "secp256r1"
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert name in names.get_values_for_type(x509.DNSName)
        assert names.get_values_for_type(san)
        cert.verify_directly_issued_by(ca)
        assert cluster_config.load(d).api_certificate == (d / tls.MEMBER_CERT, d / tls.MEMBER_KEY)
    assert not (tmp_path / "w" / tls.MEMBER_CERT).exists()   # a witness serves no API
    assert cluster_config.load(tmp_path / "a").api_address == ("127.0.0.1", 7405)


def test_a_client_trusting_the_ca_accepts_the_members_certificate_and_no_other(tmp_path):
    ca, other_ca = tls.make_ca("prod"), tls.make_ca("other")
    tls.write_member(tmp_path, tls.sign_member(ca, "prod", "a", "127.0.0.1"), ca.cert)
    (tmp_path / "other.crt").write_bytes(other_ca.cert)

    async def handshake(cafile, host="127.0.0.1"):
        server = await asyncio.start_server(
            lambda r, w: w.close(), "127.0.0.1", 0,
            ssl=tls.server_context(tmp_path / tls.MEMBER_CERT, tmp_path / tls.MEMBER_KEY))
        port = server.sockets[0].getsockname()[1]
        try:
            ctx = ssl.create_default_context(cafile=str(cafile))
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                      server_hostname=host)
            writer.close()
            return "ok"
        except ssl.SSLCertVerificationError as e:
            return e.verify_message
        finally:
            server.close()
            await server.wait_closed()

    assert asyncio.run(handshake(tmp_path / tls.CA_CERT)) == "ok"
    assert asyncio.run(handshake(tmp_path / tls.CA_CERT, host="a")) == "ok"      # its name
    assert "mismatch" in asyncio.run(handshake(tmp_path / tls.CA_CERT, host="b"))
    assert "unable to get local issuer" in asyncio.run(handshake(tmp_path / "other.crt"))


def test_an_unusable_certificate_is_one_line_naming_the_files(tmp_path):
    (tmp_path / "c.pem").write_text("not a certificate")
    (tmp_path / "k.pem").write_text("not a key")
    try:
        tls.server_context(tmp_path / "c.pem", tmp_path / "k.pem")
    except tls.TlsError as e:
        assert str(tmp_path / "c.pem") in str(e) and "\n" not in str(e)
    else:
        raise AssertionError("an unusable certificate was accepted")


def test_add_node_with_a_ca_checks_it_before_changing_anything(tmp_path, capsys):
    assert cli.main(["cluster", "init", "--node", "a=127.0.0.1", "--node", "b=127.0.0.2",
                     "--witness", "w=127.0.0.3", "--out", str(tmp_path / "cfg")]) == 0
    base = ["-c", str(tmp_path / "cfg" / "a"), "--run-dir", str(tmp_path / "run"),
            "--state-dir", str(tmp_path / "state"), "cluster", "add-node", "c", "127.0.0.4"]
    capsys.readouterr()
    assert cli.main([*base, "--ca", str(tmp_path / "cfg" / "CA")]) != 0
    assert "give --out too" in capsys.readouterr().err
    assert cli.main([*base, "--out", str(tmp_path / "new"), "--ca", str(tmp_path / "nope")]) != 0
    assert "no cluster CA there" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()      # refused before the daemon was asked
