// Signing in when the API's authentication is on: OpenID Connect authorization code flow with
// PKCE (RFC 7636) in the browser, as a public client (no secret), with the same issuer as the
// API; or, when no client is configured for the console, a token pasted by the user.
import { setToken, state } from './api.js';
import { errorBox, h, show } from './ui.js';

const PENDING = 'dicomhub.console.signin';

function base64url(bytes) {
  return btoa(String.fromCharCode(...new Uint8Array(bytes))).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function random(n = 32) {
  return base64url(crypto.getRandomValues(new Uint8Array(n)));
}

/** The page's own address: where the issuer sends the browser back (the redirect URI). */
export function redirectUri() {
  return location.origin + location.pathname;
}

async function discovery() {
  const issuer = state.config.auth.issuer.replace(/\/$/, '');
  const r = await fetch(`${issuer}/.well-known/openid-configuration`);
  if (!r.ok) throw new Error(`the issuer's discovery document answered ${r.status}`);
  const doc = await r.json();
  if (!doc.authorization_endpoint || !doc.token_endpoint) throw new Error('the issuer names no authorization or token endpoint');
  return doc;
}

/** Go to the issuer's sign-in page (or, without a client id, to the page asking for a token). */
export async function signIn() {
  const auth = state.config.auth;
  if (!auth.clientId) {
    location.hash = '#/signin';
    return;
  }
  if (!crypto.subtle) {
    show(h('h1', {}, 'Sign in'), errorBox(new Error('signing in needs a secure page: open the console over HTTPS (or on localhost)')));
    return;
  }
  try {
    const doc = await discovery();
    const verifier = random(48);
    const challenge = base64url(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier)));
    const pending = { verifier, state: random(16), hash: location.hash === '#/signin' ? '#/' : location.hash || '#/', token: doc.token_endpoint };
    sessionStorage.setItem(PENDING, JSON.stringify(pending));
    const url = new URL(doc.authorization_endpoint);
    const params = {
      response_type: 'code', client_id: auth.clientId, redirect_uri: redirectUri(), scope: auth.scopes || 'openid',
      state: pending.state, code_challenge: challenge, code_challenge_method: 'S256',
    };
    if (auth.audience) params.audience = auth.audience; // asked by some issuers (Auth0), ignored by others
    for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
    location.assign(url.toString());
  } catch (e) {
    show(h('h1', {}, 'Sign in'), errorBox(new Error(`cannot reach the issuer ${auth.issuer}: ${e.message}`)));
  }
}

/** Back from the issuer (?code=&state= or ?error=): trade the code for a token. */
export async function finishSignIn() {
  const query = new URLSearchParams(location.search);
  if (!state.config.auth || !(query.has('code') || query.has('error')) || !query.has('state')) return;
  const pending = JSON.parse(sessionStorage.getItem(PENDING) || 'null');
  sessionStorage.removeItem(PENDING);
  const clean = () => history.replaceState(null, '', redirectUri() + ((pending && pending.hash) || '#/'));
  if (!pending || pending.state !== query.get('state')) {
    clean();
    throw new Error('the sign-in answer does not belong to a sign-in of this page (state mismatch): sign in again');
  }
  if (query.has('error')) {
    clean();
    throw new Error(`the issuer refused the sign-in: ${query.get('error')} ${query.get('error_description') || ''}`);
  }
  const body = new URLSearchParams({
    grant_type: 'authorization_code', code: query.get('code'), redirect_uri: redirectUri(),
    client_id: state.config.auth.clientId, code_verifier: pending.verifier,
  });
  const r = await fetch(pending.token, { method: 'POST', body, headers: { Accept: 'application/json' } });
  const answer = await r.json().catch(() => ({}));
  clean();
  if (!r.ok || !answer.access_token) {
    throw new Error(`the issuer gave no token: ${answer.error || r.status} ${answer.error_description || ''}`);
  }
  setToken(answer.access_token);
}

export function signInPage() {
  const auth = state.config.auth;
  if (auth.clientId) {
    show(
      h('h1', {}, 'Sign in'),
      h('p', {}, 'Authentication is on: sign in with ', h('code', {}, auth.issuer), ' to use the console.'),
      h('p', {}, h('button', { class: 'primary', type: 'button', id: 'sign-in', onclick: () => signIn() }, 'Sign in')));
    return;
  }
  const text = h('textarea', { id: 'token', name: 'token', rows: 6, spellcheck: false, autocomplete: 'off' });
  show(
    h('h1', {}, 'Sign in'),
    h('p', {}, 'Authentication is on: every request of this console to the API needs a bearer token issued by ',
      h('code', {}, auth.issuer), ' for the audience ', h('code', {}, auth.audience), '.'),
    h('p', { class: 'warn', id: 'no-client' },
      'The console cannot get a token by itself: no OpenID Connect client is configured for it ',
      '(--console-client-id). Paste an access token below (it is kept in this tab only, until it expires or you sign out).'),
    h('form', { class: 'panel', onsubmit: (e) => {
      e.preventDefault();
      const token = text.value.trim();
      if (token.split('.').length !== 3) {
        text.setCustomValidity('an access token is a JWT: three parts separated by dots');
        text.reportValidity();
        return;
      }
      setToken(token);
      location.hash = '#/';
      window.dispatchEvent(new Event('dicomhub-session'));
    } },
    h('label', { for: 'token' }, 'Access token (JWT)'), text,
    h('p', {}, h('button', { class: 'primary', type: 'submit' }, 'Use this token'))));
  text.addEventListener('input', () => text.setCustomValidity(''));
}
