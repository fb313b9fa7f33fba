"""Verifiable certificates: every certificate as an Open Badges 3.0 credential (W3C Verifiable
Credentials 2.0) signed with a Data Integrity proof (eddsa-rdfc-2022) by the academy's did:web
key, revocable through a Bitstring Status List, and a PAdES-signed PDF that carries it.

- contexts.py: the JSON-LD contexts, bundled, and RDF canonicalization over them (offline)
- keys.py: the signing keys, their public registry (signing_keys), the DID document
- data_integrity.py: adding and checking an eddsa-rdfc-2022 proof
- status_list.py: status indexes, the signed status list credential, revocation
- openbadge.py: the credential of a certificate
- pdf_signing.py: the attached credential and the PAdES signature of the PDF
- verification.py: what a verifier concludes (valid, revoked, tampered, unknown issuer, ...)
"""
