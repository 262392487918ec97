"""Key material for the bridge's edge tests (tests/edge.rs), made fresh in each run.

Usage: edge_keys.py DIR ISSUER AUDIENCE
Writes into DIR:
  jwks.json       the public keys of rsa-1 (RS256), ec-1 (ES256, P-256) and ed-1 (EdDSA, Ed25519)
  jwks-next.json  the same set with rsa-2 in place of rsa-1 (a rotated identity provider)
  rsa-public.pem  rsa-1's public key as PEM (what an HS256 forgery would use as its secret)
  ca.pem          a test certificate authority
  server.pem, server.key    a certificate for 127.0.0.1 and localhost, signed by the CA
  server2.pem, server2.key  another one (CN "streamscore bridge 2"), for the reload test
  client.pem, client.key    a client certificate (mutual TLS) signed by the CA
  client-other.pem, .key    another one, whose subject the test policy does not list
  rogue-ca.pem              another CA, and rogue-client.pem/.key: client's subject, signed by it
Prints one JSON object of tokens by name, minted with PyJWT (and by hand where PyJWT refuses
to: alg "none", and HS256 keyed with the public key), each for tenant "acme" unless named, and
the client certificates' subjects as RFC 4514 writes them (`client_subject`, ...) and the sha256
of their DER (`client_sha256`, ...).
"""

import base64
import datetime
import hashlib
import hmac
import ipaddress
import json
import os
import sys
import time

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(key, kid: str) -> dict:
    jwk = json.loads(jwt.algorithms.get_default_algorithms()[algorithm_of(key)].to_jwk(key.public_key()))
    jwk["kid"] = kid
    jwk["use"] = "sig"
    return jwk


def algorithm_of(key) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "ES256"
    return "EdDSA"


def write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_ca(common_name: str):
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return ca_key, ca_name, ca


def client_certificate(out: str, name: str, subject: x509.Name, ca_key, ca_name) -> dict:
    """A client certificate signed by the CA; its subject (RFC 4514) and DER sha256."""
    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write(os.path.join(out, f"{name}.pem"), cert.public_bytes(serialization.Encoding.PEM))
    write(os.path.join(out, f"{name}.key"), pem_key(key))
    der = cert.public_bytes(serialization.Encoding.DER)
    key_name = name.replace("-", "_")
    return {f"{key_name}_subject": cert.subject.rfc4514_string(), f"{key_name}_sha256": hashlib.sha256(der).hexdigest()}


def certificates(out: str) -> dict:
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, ca_name, ca = make_ca("streamscore test CA")
    write(os.path.join(out, "ca.pem"), ca.public_bytes(serialization.Encoding.PEM))
    # A subject with an escaped comma and several RDNs: its RFC 4514 form must be read alike.
    acme = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme, Inc."),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Fraud"),
            x509.NameAttribute(NameOID.COMMON_NAME, "scorer-1"),
        ]
    )
    facts = client_certificate(out, "client", acme, ca_key, ca_name)
    other = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "unlisted-client")])
    facts.update(client_certificate(out, "client-other", other, ca_key, ca_name))
    rogue_key, rogue_name, rogue = make_ca("rogue CA")
    write(os.path.join(out, "rogue-ca.pem"), rogue.public_bytes(serialization.Encoding.PEM))
    facts.update(client_certificate(out, "rogue-client", acme, rogue_key, rogue_name))
    for name, cn in (("server", "streamscore bridge"), ("server2", "streamscore bridge 2")):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        write(os.path.join(out, f"{name}.pem"), cert.public_bytes(serialization.Encoding.PEM))
        write(os.path.join(out, f"{name}.key"), pem_key(key))
    return facts


def main() -> None:
    out, issuer, audience = sys.argv[1:4]
    rsa1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec1 = ec.generate_private_key(ec.SECP256R1())
    ed1 = ed25519.Ed25519PrivateKey.generate()
    write(
        os.path.join(out, "jwks.json"),
        json.dumps({"keys": [public_jwk(rsa1, "rsa-1"), public_jwk(ec1, "ec-1"), public_jwk(ed1, "ed-1")]}).encode(),
    )
    write(
        os.path.join(out, "jwks-next.json"),
        json.dumps({"keys": [public_jwk(rsa2, "rsa-2"), public_jwk(ec1, "ec-1"), public_jwk(ed1, "ed-1")]}).encode(),
    )
    public_pem = rsa1.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write(os.path.join(out, "rsa-public.pem"), public_pem)
    facts = certificates(out)

    now = int(time.time())

    def claims(**over):
        base = {"iss": issuer, "aud": audience, "sub": "client-1", "tenant": "acme", "scope": "predict explain",
                "iat": now, "exp": now + 600}
        base.update(over)
        return {k: v for k, v in base.items() if v is not None}

    def sign(key, kid, payload):
        return jwt.encode(payload, key, algorithm=algorithm_of(key), headers={"kid": kid})

    def unsigned(header, payload, secret=None):
        message = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(payload).encode())
        if secret is None:
            return message + "."
        return message + "." + b64url(hmac.new(secret, message.encode(), hashlib.sha256).digest())

    tokens = {
        "rsa": sign(rsa1, "rsa-1", claims()),
        "ec": sign(ec1, "ec-1", claims(tenant="globex", scope=None, scp=["predict"])),
        "ed": sign(ed1, "ed-1", claims()),
        "no_kid": jwt.encode(claims(), ed1, algorithm="EdDSA"),
        "rsa_next": sign(rsa2, "rsa-2", claims()),
        # Past exp by more than the 60 s of skew; and within it (still good).
        "expired": sign(rsa1, "rsa-1", claims(exp=now - 120, iat=now - 720)),
        "expired_within_skew": sign(rsa1, "rsa-1", claims(exp=now - 20, iat=now - 620)),
        "no_exp": sign(rsa1, "rsa-1", claims(exp=None)),
        "other_audience": sign(rsa1, "rsa-1", claims(aud="someone-else")),
        "other_issuer": sign(rsa1, "rsa-1", claims(iss="https://evil.example")),
        "alg_none": unsigned({"alg": "none", "typ": "JWT", "kid": "rsa-1"}, claims()),
        "hs256_public_key": unsigned({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, claims(), public_pem),
        "tampered": sign(rsa1, "rsa-1", claims())[:-6] + "AAAAAA",
        "feedback_only": sign(rsa1, "rsa-1", claims(scope="feedback")),
        "predict_only": sign(rsa1, "rsa-1", claims(scope="predict")),
        "unlisted_tenant": sign(rsa1, "rsa-1", claims(tenant="initech")),
        "no_tenant": sign(rsa1, "rsa-1", claims(tenant=None)),
    }
    tokens.update(facts)
    print(json.dumps(tokens))


if __name__ == "__main__":
    main()
