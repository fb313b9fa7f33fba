"""Verification by an implementation we did not write: the Digital Bazaar JavaScript stack
(@digitalbazaar/vc, eddsa-rdfc-2022-cryptosuite, vc-bitstring-status-list; pinned in
tests/js/credentials/package-lock.json, installed by `make js-deps`) verifies credentials this
app issued, offline, with the context packages' own copies of the contexts, our DID document
and our status list: a valid one, a tampered one and a revoked one.

Skips where node or the installed packages are missing, except under CI=true."""
from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from services.credentials import contexts
from tests.conftest import CI
from tests.test_certificates import actor, admin, course, instructor, ok, student  # noqa: F401
from tests.test_credentials import credential_of, issue_for, revoke

PACKAGE = Path(__file__).resolve().parent / "js" / "credentials"


def node() -> str:
    executable = shutil.which("node")
    if executable and (PACKAGE / "node_modules" / "@digitalbazaar" / "vc").is_dir():
        return executable
    message = "node or the verifier's npm packages are missing (make js-deps)"
    if CI:
        pytest.fail(f"{message}, and CI=true forbids skipping")
    pytest.skip(message)


def run_verifier(tmp_path: Path, payload: dict) -> list[dict]:
    source = tmp_path / "input.json"
    source.write_text(json.dumps(payload))
    result = subprocess.run([node(), "verify.mjs", str(source)], cwd=PACKAGE,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_digital_bazaar_verifies_our_credentials(tmp_path, app, client, actor, admin, course):
    node()
    kept = credential_of(issue_for(app, client, actor("student"), course))
    lost = issue_for(app, client, actor("student"), course)
    tampered = copy.deepcopy(kept)
    tampered["credentialSubject"]["achievement"]["name"] += "."
    revoke(client, admin, lost.id)

    status_url = kept["credentialStatus"]["statusListCredential"]
    status = json.loads(client.get(status_url.split("127.0.0.1:5000", 1)[1]).data)
    did_document = json.loads(client.get("/.well-known/did.json").data)
    exported = tmp_path / "contexts"
    exported.mkdir()
    results = run_verifier(tmp_path, {
        "credentials": [kept, tampered, credential_of(lost), status],
        "didDocument": did_document,
        "statusLists": {status_url: status},
        "exportContexts": {"folder": str(exported), "files": contexts.FILES},
    })

    valid, broken, revoked, status_list = results
    assert valid == {"verified": True, "revoked": False, "errors": []}, valid
    assert broken["verified"] is False
    assert any("signature" in e.lower() for e in broken["errors"]), broken
    assert revoked["verified"] is True and revoked["revoked"] is True, revoked
    # The status list credential is itself a credential their verifier accepts.
    assert status_list["verified"] is True and status_list["revoked"] is None, status_list

    # The contexts we canonicalize with are the ones their packages ship.
    for url, name in contexts.FILES.items():
        theirs = json.loads((exported / name).read_text())
        assert theirs == contexts.bundled(url), name
