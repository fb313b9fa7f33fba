"""Revocation through a Bitstring Status List (W3C, v1.0).

Each credential gets a `credentialStatus` entry: a list and an index in it. Indexes are drawn
at random (so an index says nothing about when a credential was issued), and a unique
constraint on (list, index) makes a collision impossible; a drawn index already taken is drawn
again. Lists have CREDENTIAL_STATUS_LIST_SIZE entries (131,072, the specification's minimum,
so a verifier fetching the list learns nothing about which credential it checks), and one is
taken until half its entries are (noticed at the first draw that then hits a taken index), so
a free index is found in about two draws; then the next list is opened.

What the list says is derived from PostgreSQL: the bit of an index is set when the certificate
holding it is revoked. Every revocation moves the list's `revision` in the same transaction. The
signed status list credential is cached (Redis, shared by every host, else the process) under
the revision and the signing key it was made with, and served only while both are current: a
revocation committed on one host is what every host serves at its next request.
"""
from __future__ import annotations

import gzip
import json
import logging
import secrets
from datetime import datetime

import redis
from flask import current_app
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from models import Certificate, CredentialStatusList, db
from utils.pipeline import redis_client
from services.credentials import contexts, data_integrity, keys
from utils.helpers import utcnow

log = logging.getLogger("lms.credentials")

PURPOSE = "revocation"
MIN_SIZE = 131072  # Bitstring Status List v1.0: at least 16 KB of entries
FILL = 0.5         # a list takes new credentials until half its entries are allocated
DRAWS = 64         # random draws before a list counts as full whatever its count says
CACHE_KEY = "lms:credentials:status-list:{}"

_local: dict[int, tuple[int, str, str]] = {}  # list id -> (revision, key, body), without Redis


def list_url(list_id: int) -> str:
    return f"{current_app.config['PUBLIC_BASE_URL']}/api/v1/credentials/status/{list_id}"


def entry(certificate: Certificate) -> dict:
    """The credential's `credentialStatus` (BitstringStatusListEntry)."""
    url = list_url(certificate.status_list_id)
    return {
        "id": f"{url}#{certificate.status_list_index}",
        "type": "BitstringStatusListEntry",
        "statusPurpose": PURPOSE,
        "statusListIndex": str(certificate.status_list_index),
        "statusListCredential": url,
    }


# --- allocation -------------------------------------------------------------------------------

def _open_list() -> CredentialStatusList:
    found = db.session.scalar(select(CredentialStatusList).where(
        CredentialStatusList.purpose == PURPOSE, CredentialStatusList.full.is_(False))
        .order_by(CredentialStatusList.id).limit(1))
    if found is not None:
        return found
    size = current_app.config["CREDENTIAL_STATUS_LIST_SIZE"]
    created = CredentialStatusList(purpose=PURPOSE, size=size, full=False, revision=0,
                                   created_at=utcnow())
    db.session.add(created)
    db.session.flush()
    return created


def _allocated(status_list: CredentialStatusList) -> int:
    return db.session.scalar(select(func.count(Certificate.id)).where(
        Certificate.status_list_id == status_list.id)) or 0


def draw(certificate: Certificate) -> None:
    """Give a new (not yet inserted) certificate a random index in the open list; the
    unique constraint refuses it at the insert if it is taken (`taken`, then draw again)."""
    status_list = _open_list()
    certificate.status_list_id = status_list.id
    certificate.status_list_index = secrets.randbelow(status_list.size)


def taken(list_id: int, index: int) -> bool:
    return db.session.scalar(select(Certificate.id).where(
        Certificate.status_list_id == list_id, Certificate.status_list_index == index)) is not None


def collided(list_id: int) -> None:
    """A drawn index was taken: close the list if it has had its share."""
    status_list = db.session.get(CredentialStatusList, list_id)
    if _allocated(status_list) >= status_list.size * FILL:
        status_list.full = True
        db.session.flush()
        log.info("status list %s is full; opening the next", status_list.id)


def assign(certificate: Certificate) -> None:
    """Give a flushed certificate a random free index (no-op when it has one)."""
    if certificate.status_list_id is not None:
        return
    while True:
        status_list = _open_list()
        for _ in range(DRAWS):
            index = secrets.randbelow(status_list.size)
            try:
                with db.session.begin_nested():
                    db.session.execute(update(Certificate).where(
                        Certificate.id == certificate.id).values(
                        status_list_id=status_list.id, status_list_index=index))
            except IntegrityError:  # taken: draw again, unless the list has had its share
                if _allocated(status_list) >= status_list.size * FILL:
                    break
                continue
            certificate.status_list_id, certificate.status_list_index = status_list.id, index
            return
        status_list.full = True
        db.session.flush()
        log.info("status list %s is full; opening the next", status_list.id)


def record_revocation(certificate: Certificate) -> None:
    """In the revoking transaction: the list's revision moves, so every cached copy of it is
    stale from the commit on (the row lock also orders concurrent revocations)."""
    if certificate.status_list_id is None:
        return
    db.session.execute(update(CredentialStatusList).where(
        CredentialStatusList.id == certificate.status_list_id).values(
        revision=CredentialStatusList.revision + 1))


# --- the bitstring ----------------------------------------------------------------------------

def encode(size: int, set_bits) -> str:
    """multibase base64url (no padding) of the GZIP-compressed bitstring; index 0 is the
    left-most bit of the first byte."""
    bits = bytearray(size // 8 + (1 if size % 8 else 0))
    for index in set_bits:
        bits[index // 8] |= 0x80 >> (index % 8)
    return keys.multibase_b64url(gzip.compress(bytes(bits), mtime=0))


def bit_is_set(encoded_list: str, index: int) -> bool | None:
    """The bit at `index`, or None if the list cannot be read or is too short."""
    try:
        bits = gzip.decompress(keys.from_multibase_b64url(encoded_list))
    except (ValueError, OSError, EOFError):
        return None
    if not 0 <= index < len(bits) * 8:
        return None
    return bool(bits[index // 8] & (0x80 >> (index % 8)))


# --- the status list credential ---------------------------------------------------------------

def build(status_list: CredentialStatusList, now: datetime | None = None) -> dict:
    """The signed BitstringStatusListCredential of the list as the database has it now."""
    revoked = db.session.scalars(select(Certificate.status_list_index).where(
        Certificate.status_list_id == status_list.id, Certificate.status == "revoked"))
    url = list_url(status_list.id)
    now = now or utcnow()
    credential = {
        "@context": [contexts.VC_V2],
        "id": url,
        "type": ["VerifiableCredential", "BitstringStatusListCredential"],
        "issuer": keys.issuer_did(),
        "validFrom": data_integrity.timestamp(now),
        "credentialSubject": {
            "id": f"{url}#list",
            "type": "BitstringStatusList",
            "statusPurpose": status_list.purpose,
            "encodedList": encode(status_list.size, revoked),
            "ttl": current_app.config["CREDENTIAL_STATUS_CACHE_SECONDS"] * 1000,
        },
    }
    key = keys.credential_key()
    keys.record_credential_key(key)
    return data_integrity.add_proof(credential, key, now)


def published(list_id: int) -> str | None:
    """The status list credential (JSON text) as it should be served now, or None for no
    such list. Read from the cache when its revision and key are current, else built, signed
    and cached."""
    status_list = db.session.get(CredentialStatusList, list_id)
    if status_list is None:
        return None
    # The cache entry must be of this list (ids can come back after a database is emptied),
    # at this revision, signed with the key signing now.
    key = f"{keys.credential_key().multibase}:{status_list.created_at.isoformat()}"
    client = redis_client.get()
    cache_key = CACHE_KEY.format(list_id)
    cached = None
    if client is not None:
        try:
            raw = client.get(cache_key)
            cached = json.loads(raw) if raw else None
        except (redis.RedisError, ValueError) as exc:
            log.warning("status list cache unavailable: %s", exc)
    else:
        local = _local.get(list_id)
        cached = {"revision": local[0], "key": local[1], "body": local[2]} if local else None
    if (cached and cached.get("revision") == status_list.revision
            and cached.get("key") == key and cached.get("body")):
        return cached["body"]
    body = json.dumps(build(status_list), ensure_ascii=False, separators=(",", ":"))
    entry_ = {"revision": status_list.revision, "key": key, "body": body}
    if client is not None:
        try:
            # A day at most: a list nobody revokes in is re-signed daily (a fresh validFrom).
            client.set(cache_key, json.dumps(entry_), ex=86400)
        except redis.RedisError as exc:
            log.warning("status list not cached: %s", exc)
    else:
        _local[list_id] = (status_list.revision, key, body)
    return body
