"""Open Badges 3.0 credentials end to end: issued with every certificate, validated against
the OB 3.0 JSON Schema, verified (signature, issuer key, dates, status list), tampered with one
character anywhere (never valid), revoked (the status bit, on every host), keys rotated and
withdrawn, status indexes allocated at random without collisions, the signed PDF checked with
pyHanko's own validator, and the public routes and pages.

Certificates are issued through the API (tests/test_certificates.py's helpers); the ORM and the
services are used for setup and for reading what the database holds."""
from __future__ import annotations

import copy
import gzip
import hashlib
import io
import json
import time
from pathlib import Path

import jsonschema
import pytest
from asn1crypto import pem
from asn1crypto import x509 as asn1_x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.validation import validate_pdf_signature
from pyhanko.sign.validation.status import SignatureCoverageLevel
from pyhanko_certvalidator import ValidationContext
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from app import create_app
from models import Certificate, CredentialStatusList, SigningKey, User, db
from services import certificate_service
from services.credentials import data_integrity, keys, pdf_signing, verification
from tests.test_certificates import (  # noqa: F401 (fixtures)
    actor,
    actor_in,
    admin,
    build_course,
    certificate_of,
    complete_course,
    course,
    error,
    instructor,
    ok,
    student,
)
from utils.helpers import utcnow

API = "/api/v1"
SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "services" / "credentials" / "schema"
                     / "ob_v3p0_achievementcredential.schema.json").read_text())


# --- helpers ----------------------------------------------------------------------------------

def issue_for(app, client, who, course_) -> Certificate:
    complete_course(client, who, course_)
    row = certificate_of(app, who.id, course_.id)
    assert row is not None and row.credential_json, "issued without its credential"
    return row


def credential_of(row: Certificate) -> dict:
    return json.loads(row.credential_json)


def verify(app, credential) -> verification.Verdict:
    with app.app_context():
        return verification.verify(credential)


def verify_api(client, body, ip="192.0.2.50"):
    return client.post(f"{API}/credentials/verify", json=body,
                       environ_base={"REMOTE_ADDR": ip})


def status_list_of(client, credential: dict) -> dict:
    url = credential["credentialStatus"]["statusListCredential"]
    response = client.get(url.split("127.0.0.1:5000", 1)[1])
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/ld+json"
    return json.loads(response.data)


def bit(status_credential: dict, index: int) -> bool:
    data = gzip.decompress(keys.from_multibase_b64url(
        status_credential["credentialSubject"]["encodedList"]))
    return bool(data[index // 8] & (0x80 >> (index % 8)))


def revoke(client, admin_, certificate_id: int):
    return ok(client.put(f"{API}/admin/certificates/{certificate_id}/revoke",
                         json={"reason": "refund issued"}, headers=admin_.headers))


def one_character_changes(value, path=()):
    """(path, mutated copy maker) for every string and every key in a JSON document: each
    change alters exactly one character."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield path + (("key", key),)
            yield from one_character_changes(item, path + (key,))
    elif isinstance(value, list):
        for position, item in enumerate(value):
            yield from one_character_changes(item, path + (position,))
    elif isinstance(value, str):
        yield path


def mutate(document: dict, path) -> dict:
    changed = copy.deepcopy(document)
    parent = changed
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]

    def flip(text: str) -> str:
        position = len(text) // 2
        char = text[position] if text else "a"
        replacement = "X" if char != "X" else "Y"
        return text[:position] + replacement + text[position + 1:] if text else replacement

    if isinstance(last, tuple):  # rename a key
        key = last[1]
        parent[flip(key)] = parent.pop(key)
    else:
        parent[last] = flip(parent[last])
    return changed


# --- issuance ---------------------------------------------------------------------------------

def test_every_certificate_is_issued_with_a_signed_open_badge(app, client, student, course):
    row = issue_for(app, client, student, course)
    credential = credential_of(row)

    jsonschema.validate(credential, SCHEMA, format_checker=jsonschema.FormatChecker())
    assert credential["@context"] == ["https://www.w3.org/ns/credentials/v2",
                                      "https://purl.imsglobal.org/spec/ob/v3p0/context-3.0.3.json"]
    assert credential["type"] == ["VerifiableCredential", "OpenBadgeCredential"]
    assert credential["id"] == f"http://127.0.0.1:5000/api/v1/credentials/{row.certificate_number}"
    issuer = credential["issuer"]
    assert issuer["id"] == "did:web:127.0.0.1%3A5000"
    assert issuer["type"] == ["Profile"] and issuer["name"] == app.config["APP_NAME"]
    assert issuer["url"] == "http://127.0.0.1:5000"
    assert issuer["image"]["type"] == "Image"
    assert issuer["image"]["id"].startswith("data:image/svg+xml;base64,")
    assert credential["validFrom"] == row.issued_at.strftime("%Y-%m-%dT%H:%M:%SZ")

    subject = credential["credentialSubject"]
    assert subject["licenseNumber"] == row.certificate_number
    (identity,) = subject["identifier"]
    assert identity["type"] == "IdentityObject" and identity["hashed"] is True
    assert identity["identityType"] == "emailAddress" and len(identity["salt"]) == 32
    with app.app_context():
        email = db.session.get(User, student.id).email
    assert identity["identityHash"] == "sha256$" + hashlib.sha256(
        (email + identity["salt"]).encode()).hexdigest()
    text = json.dumps(credential)
    assert email not in text  # the address itself is never published
    assert "Alan Turing" in credential["description"]

    achievement = subject["achievement"]
    assert achievement["name"] == course.title and achievement["type"] == ["Achievement"]
    assert achievement["achievementType"] == "CertificateOfCompletion"
    assert course.title in achievement["criteria"]["narrative"]
    assert achievement["creator"]["name"] == "Ada Lovelace"
    assert achievement["creator"]["id"].startswith("urn:uuid:")

    status = credential["credentialStatus"]
    assert status["type"] == "BitstringStatusListEntry" and status["statusPurpose"] == "revocation"
    assert status["statusListIndex"] == str(row.status_list_index)
    assert status["statusListCredential"].endswith(f"/api/v1/credentials/status/{row.status_list_id}")
    assert status["id"] == f"{status['statusListCredential']}#{row.status_list_index}"

    proof = credential["proof"]
    assert proof["type"] == "DataIntegrityProof" and proof["cryptosuite"] == "eddsa-rdfc-2022"
    assert proof["proofPurpose"] == "assertionMethod"
    with app.app_context():
        assert proof["verificationMethod"] == f"did:web:127.0.0.1%3A5000#{keys.credential_key().multibase}"
        recorded = db.session.scalars(select(SigningKey.purpose)).all()
    assert sorted(recorded) == ["credential", "pdf"]

    verdict = verify(app, credential)
    assert (verdict.result, verdict.valid) == ("valid", True), verdict.checks
    assert verdict.checks == {"signature": "valid", "issuer": "did:web:127.0.0.1%3A5000",
                              "dates": "within validity", "status": "not revoked"}


def test_the_certificate_api_lists_and_serves_the_credential(app, client, actor, admin, student,
                                                             course):
    row = issue_for(app, client, student, course)
    listed = ok(client.get(f"{API}/certificates", headers=student.headers))["certificates"][0]
    assert listed["credential_url"] == f"/api/v1/credentials/{row.certificate_number}"
    assert listed["credential_download_url"] == f"/api/v1/certificates/{row.id}/credential"
    assert listed["pdf_signed"] is True

    one = ok(client.get(f"{API}/certificates/{row.id}", headers=student.headers))["certificate"]
    assert one["credential"] == credential_of(row)

    for who in (student, admin):
        response = client.get(listed["credential_download_url"], headers=who.headers)
        assert response.status_code == 200 and response.mimetype == "application/ld+json"
        assert f'{row.certificate_number}.json' in response.headers["Content-Disposition"]
        assert response.data.decode() == row.credential_json
        assert response.headers["Cache-Control"] == "private, no-store"
    error(client.get(listed["credential_download_url"], headers=actor("student").headers), 404)
    error(client.get(listed["credential_download_url"]), 401)

    public = client.get(listed["credential_url"], environ_base={"REMOTE_ADDR": "192.0.2.61"})
    assert public.status_code == 200 and public.mimetype == "application/ld+json"
    assert public.headers["Access-Control-Allow-Origin"] == "*"
    assert json.loads(public.data) == credential_of(row)
    error(client.get(f"{API}/credentials/AIFA-1-1-0000000000"), 404)

    facts = ok(client.get(f"{API}/certificates/verify/{row.certificate_number}"))
    assert facts["credential_url"].endswith(listed["credential_url"])
    assert facts["issuer_did"] == "did:web:127.0.0.1%3A5000" and facts["pdf_signed"] is True


def test_a_certificate_from_before_credentials_gets_one_on_first_request(app, client, student,
                                                                         course):
    row = issue_for(app, client, student, course)
    with app.app_context():
        db.session.execute(update(Certificate).values(credential_json=None, status_list_id=None,
                                                      status_list_index=None))
        db.session.commit()
    body = ok(client.get(f"{API}/certificates/{row.id}", headers=student.headers))["certificate"]
    again = certificate_of(app, student.id, course.id)
    assert again.credential_json and again.status_list_index is not None
    assert body["credential"] == credential_of(again)
    assert verify(app, body["credential"]).result == "valid"


# --- the issuer: did:web ----------------------------------------------------------------------

@pytest.mark.parametrize("base, did", [
    ("https://academy.example.com", "did:web:academy.example.com"),
    ("http://127.0.0.1:5000", "did:web:127.0.0.1%3A5000"),
    ("https://Example.COM:8443/lms/", "did:web:example.com%3A8443:lms"),
    ("https://example.com/a/b", "did:web:example.com:a:b"),
])
def test_the_did_is_derived_from_the_public_base_url(base, did):
    assert keys.did_web(base) == did


def test_the_did_document_publishes_the_signing_key(app, client):
    for path in ("/.well-known/did.json", "/did.json"):
        response = client.get(path)
        assert response.status_code == 200 and response.mimetype == "application/did+json"
        document = json.loads(response.data)
        with app.app_context():
            multibase = keys.credential_key().multibase
        assert document["id"] == "did:web:127.0.0.1%3A5000"
        assert document["@context"] == ["https://www.w3.org/ns/did/v1",
                                        "https://w3id.org/security/multikey/v1"]
        assert document["verificationMethod"] == [{
            "id": f"did:web:127.0.0.1%3A5000#{multibase}", "type": "Multikey",
            "controller": "did:web:127.0.0.1%3A5000", "publicKeyMultibase": multibase}]
        assert document["assertionMethod"] == [f"did:web:127.0.0.1%3A5000#{multibase}"]
        assert multibase.startswith("z6Mk")  # an Ed25519 Multikey


# --- tampering --------------------------------------------------------------------------------

def test_one_changed_character_anywhere_makes_it_invalid(app, client, student, course):
    credential = credential_of(issue_for(app, client, student, course))
    paths = list(one_character_changes(credential))
    assert len(paths) > 60
    outcomes = {}
    with app.app_context():
        for path in paths:
            verdict = verification.verify(mutate(credential, path))
            assert not verdict.valid, path
            outcomes[verdict.result] = outcomes.get(verdict.result, 0) + 1
        assert verification.verify(credential).valid  # the original still is
    # The proof's own fields name another key or suite; everything else breaks the signature.
    assert set(outcomes) <= {"tampered", "unknown_issuer", "malformed"}, outcomes
    assert outcomes["tampered"] > outcomes.get("unknown_issuer", 0)


def test_the_verify_api_says_what_it_found(app, client, student, course):
    credential = credential_of(issue_for(app, client, student, course))
    body = ok(verify_api(client, credential))
    assert (body["valid"], body["result"]) == (True, "valid")
    assert body["message"].startswith("Valid:") and app.config["APP_NAME"] in body["message"]
    assert body["credential"]["certificate_number"] == credential["credentialSubject"]["licenseNumber"]
    assert ok(verify_api(client, {"credential": credential}))["result"] == "valid"

    tampered = copy.deepcopy(credential)
    tampered["credentialSubject"]["achievement"]["name"] += "!"
    body = ok(verify_api(client, tampered))
    assert (body["valid"], body["result"]) == (False, "tampered")
    assert body["message"].startswith("Tampered:")

    upload = client.post(f"{API}/credentials/verify", data={
        "file": (io.BytesIO(json.dumps(credential).encode()), "badge.json")},
        content_type="multipart/form-data", environ_base={"REMOTE_ADDR": "192.0.2.51"})
    assert ok(upload)["result"] == "valid"

    for junk, result in (({"hello": "world"}, "malformed"), ([1, 2], "malformed")):
        body = ok(verify_api(client, junk))
        assert (body["valid"], body["result"]) == (False, result)
        assert body["message"].startswith("Not a credential")
    error(client.post(f"{API}/credentials/verify", data=b"", content_type="application/json"),
          422, "validation_error")


def test_a_credential_signed_by_another_key_is_an_unknown_issuer(app, client, student, course):
    credential = credential_of(issue_for(app, client, student, course))
    stranger = keys.CredentialKey(ed25519.Ed25519PrivateKey.generate(), "")
    stranger = keys.CredentialKey(stranger.private_key,
                                  keys.public_key_multibase(stranger.private_key.public_key()))
    with app.test_request_context():
        unsigned = {k: v for k, v in credential.items() if k != "proof"}
        forged = data_integrity.add_proof(unsigned, stranger, certificate_of(
            app, student.id, course.id).issued_at)
    body = ok(verify_api(client, forged))
    assert (body["valid"], body["result"]) == (False, "unknown_issuer")
    assert body["message"].startswith("Unknown issuer:")
    no_proof = ok(verify_api(client, {k: v for k, v in credential.items() if k != "proof"}))
    assert no_proof["result"] == "unknown_issuer"


def test_dates_outside_validity_are_refused(app, client, student, course):
    credential = credential_of(issue_for(app, client, student, course))
    with app.test_request_context():
        key = keys.credential_key()
        unsigned = {k: v for k, v in credential.items() if k != "proof"}
        later = dict(unsigned, validFrom="2999-01-01T00:00:00Z")
        over = dict(unsigned, validUntil="2001-01-01T00:00:00Z")
        results = [verification.verify(data_integrity.add_proof(doc, key, utcnow())).result
                   for doc in (later, over)]
    assert results == ["not_yet_valid", "expired"]


# --- revocation -------------------------------------------------------------------------------

def test_revoking_sets_the_status_bit_and_verification_says_revoked(app, client, actor, admin,
                                                                   student, course):
    row = issue_for(app, client, student, course)
    other = issue_for(app, client, actor("student"), course)
    credential = credential_of(row)
    index = int(credential["credentialStatus"]["statusListIndex"])
    before = status_list_of(client, credential)
    assert bit(before, index) is False

    revoke(client, admin, row.id)
    after = status_list_of(client, credential)
    assert bit(after, index) is True
    assert bit(after, other.status_list_index) is False
    assert after["credentialSubject"]["encodedList"] != before["credentialSubject"]["encodedList"]
    with app.app_context():
        assert db.session.get(CredentialStatusList, row.status_list_id).revision == 1
        assert data_integrity.verify_proof(after, keys.credential_public_key).value == "valid"

    body = ok(verify_api(client, credential))
    assert (body["valid"], body["result"]) == (False, "revoked")
    assert body["message"].startswith("Revoked:")
    assert body["checks"]["signature"] == "valid" and body["checks"]["status"] == "revoked"
    assert verify(app, credential_of(other)).result == "valid"


def test_a_refund_revocation_sets_the_bit_too(app, client, student, course):
    row = issue_for(app, client, student, course)
    with app.app_context():
        certificate_service.revoke_for_enrollment(student.id, course.id, "refund approved")
        db.session.commit()
    assert bit(status_list_of(client, credential_of(row)), row.status_list_index) is True
    assert verify(app, credential_of(row)).result == "revoked"


def test_a_revocation_is_served_by_every_host(postgres_app):
    """Two app instances on one PostgreSQL database (and one Redis when configured): the list
    one host has cached is replaced on the other as soon as the revocation commits there."""
    host_a = postgres_app
    client = host_a.test_client()
    owner = actor_in(host_a, "instructor", 1)
    admin_ = actor_in(host_a, "admin", 2)
    learner = actor_in(host_a, "student", 3)
    built = build_course(client, owner, "Two Hosts Course", lessons=1)
    row = issue_for(host_a, client, learner, built)
    host_b = create_app("testing", overrides={
        "SQLALCHEMY_DATABASE_URI": host_a.config["SQLALCHEMY_DATABASE_URI"],
        "UPLOAD_FOLDER": host_a.config["UPLOAD_FOLDER"]})
    second = host_b.test_client()
    credential = credential_of(row)
    try:
        assert bit(status_list_of(second, credential), row.status_list_index) is False  # cached
        revoke(client, admin_, row.id)
        assert bit(status_list_of(second, credential), row.status_list_index) is True
        with host_b.app_context():
            assert verification.verify(credential).result == "revoked"
    finally:
        with host_b.app_context():
            db.session.remove()
            db.engine.dispose()


def test_status_list_is_at_least_the_minimum_size_and_public(app, client, student, course):
    credential = credential_of(issue_for(app, client, student, course))
    listed = status_list_of(client, credential)
    data = gzip.decompress(keys.from_multibase_b64url(listed["credentialSubject"]["encodedList"]))
    assert len(data) * 8 == app.config["CREDENTIAL_STATUS_LIST_SIZE"] >= 131072
    assert listed["type"] == ["VerifiableCredential", "BitstringStatusListCredential"]
    assert listed["issuer"] == credential["issuer"]["id"]
    assert listed["credentialSubject"]["statusPurpose"] == "revocation"
    response = client.get(credential["credentialStatus"]["statusListCredential"].split(
        "127.0.0.1:5000", 1)[1])
    assert response.headers["Cache-Control"] == "public, max-age=60"
    error(client.get(f"{API}/credentials/status/999999"), 404)


# --- status indexes ---------------------------------------------------------------------------

def test_indexes_are_random_unique_and_lists_fill_to_half(app, client, actor, course):
    app.config["CREDENTIAL_STATUS_LIST_SIZE"] = 16
    try:
        # 17: more than a list can hold, so a second list is certain to open.
        rows = [issue_for(app, client, actor("student"), course) for _ in range(17)]
    finally:
        app.config["CREDENTIAL_STATUS_LIST_SIZE"] = 131072
    pairs = [(r.status_list_id, r.status_list_index) for r in rows]
    assert len(set(pairs)) == 17
    with app.app_context():
        lists = db.session.scalars(select(CredentialStatusList).order_by(
            CredentialStatusList.id)).all()
        per_list = dict(db.session.execute(select(Certificate.status_list_id, func.count())
                                           .group_by(Certificate.status_list_id)).all())
    assert len(lists) >= 2 and all(l.size == 16 for l in lists)
    # A list is closed at the first collision once half of it is taken.
    assert lists[0].full is True and 8 <= per_list[lists[0].id] < 16, per_list
    assert sum(per_list.values()) == 17
    first = [index for list_id, index in pairs if list_id == lists[0].id]
    assert first != sorted(first) or len(set(first)) < len(first) or first[0] != 0


def test_the_database_refuses_two_credentials_on_one_bit(app, client, actor, course):
    a = issue_for(app, client, actor("student"), course)
    b = issue_for(app, client, actor("student"), course)
    with app.app_context():
        with pytest.raises(IntegrityError):
            db.session.execute(update(Certificate).where(Certificate.id == b.id).values(
                status_list_id=a.status_list_id, status_list_index=a.status_list_index))
            db.session.flush()
        db.session.rollback()


def test_issuance_order_is_not_visible_in_the_indexes(app, client, actor, course):
    indexes = [issue_for(app, client, actor("student"), course).status_list_index
               for _ in range(8)]
    assert indexes != sorted(indexes)  # 1 chance in 40,320 of failing by luck
    assert max(indexes) > 8


# --- key rotation -----------------------------------------------------------------------------

def _pem(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def test_rotated_keys_keep_old_credentials_verifying_until_withdrawn(app, client, actor, admin,
                                                                    course):
    old = issue_for(app, client, actor("student"), course)
    with app.app_context():
        old_key = keys.credential_key().multibase
    previous = app.config["CREDENTIAL_SIGNING_KEY"]
    app.config["CREDENTIAL_SIGNING_KEY"] = _pem(ed25519.Ed25519PrivateKey.generate())
    try:
        new = issue_for(app, client, actor("student"), course)
        with app.app_context():
            new_key = keys.credential_key().multibase
        assert new_key != old_key
        assert credential_of(new)["proof"]["verificationMethod"].endswith(new_key)
        assert credential_of(old)["proof"]["verificationMethod"].endswith(old_key)

        document = json.loads(client.get("/.well-known/did.json").data)
        listed = [m["publicKeyMultibase"] for m in document["verificationMethod"]]
        assert listed == [old_key, new_key]
        assert len(document["assertionMethod"]) == 2
        assert verify(app, credential_of(old)).result == "valid"
        assert verify(app, credential_of(new)).result == "valid"
        # The status list is signed again with the new key.
        listed_status = status_list_of(client, credential_of(old))
        assert listed_status["proof"]["verificationMethod"].endswith(new_key)

        with app.app_context():
            keys.withdraw(old_key)
            db.session.commit()
        document = json.loads(client.get("/.well-known/did.json").data)
        assert [m["publicKeyMultibase"] for m in document["verificationMethod"]] == [new_key]
        body = ok(verify_api(client, credential_of(old)))
        assert body["result"] == "unknown_issuer"
        assert verify(app, credential_of(new)).result == "valid"
    finally:
        app.config["CREDENTIAL_SIGNING_KEY"] = previous


# --- the signed PDF ---------------------------------------------------------------------------

def _pdf(client, who, row) -> bytes:
    response = client.get(f"{API}/certificates/{row.id}/download", headers=who.headers)
    assert response.status_code == 200
    return response.data


def test_the_pdf_is_signed_by_the_academy_and_carries_the_credential(app, client, student,
                                                                     course):
    row = issue_for(app, client, student, course)
    data = _pdf(client, student, row)
    with open(app.config["PDF_SIGNING_CERT"], "rb") as handle:
        _, _, der = pem.unarmor(handle.read())
    academy = asn1_x509.Certificate.load(der)

    reader = PdfFileReader(io.BytesIO(data))
    (signature,) = reader.embedded_signatures
    status = validate_pdf_signature(signature, ValidationContext(trust_roots=[academy]))
    assert status.intact and status.valid and status.trusted
    assert status.coverage == SignatureCoverageLevel.ENTIRE_FILE
    assert status.signing_cert.sha256 == academy.sha256
    assert signature.sig_object["/SubFilter"] == "/ETSI.CAdES.detached"  # PAdES

    names = reader.root["/Names"]["/EmbeddedFiles"]["/Names"]
    assert str(names[0]) == f"{row.certificate_number}.credential.json"
    attached = names[1].get_object()["/EF"]["/F"].get_object().data
    assert attached.decode() == row.credential_json


def test_the_verify_page_checks_a_signed_pdf_by_its_signature(app, client, actor, student,
                                                              course):
    row = issue_for(app, client, student, course)
    other = issue_for(app, client, actor("student"), course)
    pdf = _pdf(client, student, row)

    def page(number, data, ip):
        response = client.post(f"/verify/{number}", environ_base={"REMOTE_ADDR": ip},
                               data={"file": (io.BytesIO(data), "c.pdf", "application/pdf")},
                               content_type="multipart/form-data")
        assert response.status_code == 200
        return response.get_data(as_text=True)

    html = page(row.certificate_number, pdf, "192.0.2.71")
    assert "The uploaded file is the issued certificate." in html
    assert "It carries the signature of" in html
    # Another genuine certificate is not this one.
    html = page(row.certificate_number, stored_pdf(app, other), "192.0.2.72")
    assert "NOT the issued certificate" in html
    # A byte appended after the signature: the signature no longer covers the file.
    html = page(row.certificate_number, pdf + b"\n% appended\n", "192.0.2.73")
    assert "NOT the issued certificate" in html and "Tampered:" in html


def stored_pdf(app, row) -> bytes:
    return (Path(app.config["UPLOAD_FOLDER"]) / row.file_path).read_bytes()


def test_an_unsigned_pdf_from_before_signing_still_verifies_by_its_hash(app, client, student,
                                                                        course):
    row = issue_for(app, client, student, course)
    with app.app_context():
        certificate = db.session.get(Certificate, row.id)
        certificate.pdf_signed_at = None
        certificate_service.store_pdf(certificate, signed=False)  # as issued before signing
        db.session.commit()
        legacy = Path(app.config["UPLOAD_FOLDER"]) / certificate.file_path
        data, digest = legacy.read_bytes(), certificate.sha256
    assert b"/ByteRange" not in data and hashlib.sha256(data).hexdigest() == digest
    response = client.post(f"/verify/{row.certificate_number}",
                           data={"file": (io.BytesIO(data), "c.pdf", "application/pdf")},
                           content_type="multipart/form-data")
    html = response.get_data(as_text=True)
    assert "The uploaded file is the issued certificate." in html
    assert "unsigned PDF from before" in html
    # Downloads serve that same file; a lost one comes back unsigned, byte for byte.
    legacy.unlink()
    again = client.get(f"{API}/certificates/{row.id}/download",
                       headers=student.headers).data
    assert again == data


# --- the public check page --------------------------------------------------------------------

def test_the_check_page_takes_a_pasted_credential_or_an_uploaded_pdf(app, client, student,
                                                                     course):
    row = issue_for(app, client, student, course)
    page = client.get("/verify/")
    assert page.status_code == 200 and "Check a credential" in page.get_data(as_text=True)
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]

    def submit(ip, **data):
        response = client.post("/verify/", data=data, content_type="multipart/form-data",
                               environ_base={"REMOTE_ADDR": ip})
        assert response.status_code == 200
        return response.get_data(as_text=True)

    html = submit("192.0.2.81", credential=row.credential_json)
    assert "Valid:" in html and row.certificate_number in html
    html = submit("192.0.2.82", credential=row.credential_json.replace("Alan", "Alam"))
    assert "Tampered:" in html and ">Valid<" not in html
    html = submit("192.0.2.83", file=(io.BytesIO(_pdf(client, student, row)), "c.pdf"))
    assert "Valid:" in html
    html = submit("192.0.2.84", credential="<script>alert(1)</script>")
    assert "Not a credential" in html and "<script>alert(1)" not in html


# --- configuration ----------------------------------------------------------------------------

def test_a_bad_key_setting_stops_the_start_with_one_clear_error(app):
    with pytest.raises(keys.KeyConfigError) as excinfo:
        create_app("testing", overrides={"CREDENTIAL_SIGNING_KEY": "/nonexistent/key.pem"})
    assert "CREDENTIAL_SIGNING_KEY" in str(excinfo.value)
    with pytest.raises(keys.KeyConfigError) as excinfo:
        create_app("testing", overrides={"CREDENTIAL_SIGNING_KEY": app.config["PDF_SIGNING_KEY"]})
    assert "Ed25519" in str(excinfo.value)


def test_the_cli_backfills_lists_and_withdraws_keys(app, client, runner, student, course):
    row = issue_for(app, client, student, course)
    with app.app_context():
        db.session.execute(update(Certificate).values(credential_json=None, status_list_id=None,
                                                      status_list_index=None))
        db.session.commit()
        multibase = keys.credential_key().multibase
    result = runner.invoke(args=["credentials", "backfill"])
    assert result.exit_code == 0 and "Credentials signed: 1" in result.output, result.output
    again = certificate_of(app, student.id, course.id)
    assert again.credential_json and verify(app, credential_of(again)).result == "valid"

    listed = runner.invoke(args=["credentials", "keys"])
    assert f"credential {multibase}" in listed.output and "published" in listed.output
    result = runner.invoke(args=["credentials", "withdraw-key", multibase])
    assert result.exit_code == 0, result.output
    assert verify(app, credential_of(again)).result == "unknown_issuer"
    assert "withdrawn" in runner.invoke(args=["credentials", "keys"]).output
    assert runner.invoke(args=["credentials", "withdraw-key", "zNope"]).exit_code != 0
    assert row.id == again.id


def test_signing_the_same_pdf_later_gives_the_same_bytes(app, client, student, course):
    """Determinism does not depend on the clock: the document's dates are the signing time."""
    row = issue_for(app, client, student, course)
    with app.app_context():
        certificate = db.session.get(Certificate, row.id)
        rendered = certificate_service.render_pdf(certificate)
        options = dict(attachment_name="n.credential.json", attachment=b"{}",
                       signed_at=certificate.pdf_signed_at, signer_name="Academy",
                       key=keys.pdf_key())
        first = pdf_signing.sign(rendered, **options)
        time.sleep(1.1)
        assert pdf_signing.sign(rendered, **options) == first
