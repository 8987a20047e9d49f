// Signing in when the API's authentication is on.
import { setToken, state } from './api.js';
import { field, h, show } from './ui.js';

export async function signIn() {
  location.hash = '#/signin';
}

/** Nothing to finish unless the page is the issuer's redirect back (see signInPage). */
export async function finishSignIn() {}

export function signInPage() {
  const auth = state.config.auth;
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
