// The console's entry: its configuration, the session, and a router over the URL's hash.
import { can, loadConfig, needsSignIn, setToken, state } from './api.js';
import { errorBox, h, hashParams, main, show } from './ui.js';
import { signIn, signInPage, finishSignIn } from './signin.js';

const ROUTES = [
  [/^\/$/, 'studies', async (m, p) => (await import('./studies.js')).studies(p)],
  [/^\/study\/([^/]+)$/, 'studies', async (m, p) => (await import('./study.js')).study(decodeURIComponent(m[1]), p)],
  [/^\/upload$/, 'upload', async () => (await import('./upload.js')).upload()],
  [/^\/changes$/, 'changes', async (m, p) => (await import('./ops.js')).changes(p)],
  [/^\/operations$/, 'operations', async (m, p) => (await import('./ops.js')).operations(p)],
  [/^\/tags$/, 'tags', async () => (await import('./ops.js')).tags()],
  [/^\/health$/, 'health', async () => (await import('./ops.js')).health()],
  [/^\/signin$/, null, async () => signInPage()],
];

async function route() {
  const { path, params } = hashParams();
  for (const mod of ['./studies.js', './study.js']) {
    const loaded = await import(mod);
    if (loaded.release) loaded.release();
  }
  if (needsSignIn() && path !== '/health' && path !== '/signin') {
    signInPage();
    return;
  }
  for (const [pattern, section, page] of ROUTES) {
    const m = path.match(pattern);
    if (!m) continue;
    for (const a of document.querySelectorAll('nav a')) {
      if (a.dataset.section === section) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    try {
      await page(m, params);
    } catch (e) {
      show(h('h1', {}, 'Something went wrong'), errorBox(e));
    }
    return;
  }
  show(h('h1', {}, 'Not found'), h('p', {}, 'No such page in the console. ', h('a', { href: '#/' }, 'Studies')));
}

function session() {
  const box = document.getElementById('session');
  const auth = state.config.auth;
  const items = [h('span', { class: 'muted' }, `dicomhub ${state.config.version}`)];
  if (auth) {
    if (state.claims && !needsSignIn()) {
      const who = state.claims.preferred_username || state.claims.name || state.claims.sub || 'signed in';
      items.push(h('span', {}, who), h('button', { type: 'button', onclick: () => { setToken(null); session(); route(); } }, 'Sign out'));
    } else {
      items.push(h('button', { type: 'button', onclick: () => signIn() }, 'Sign in'));
    }
  }
  box.replaceChildren(...items);
  for (const a of document.querySelectorAll('nav a[data-needs]')) a.parentElement.hidden = !can(a.dataset.needs);
}

async function start() {
  // the skip link must not change the hash (the router's)
  document.getElementById('skip').addEventListener('click', (e) => {
    e.preventDefault();
    const heading = main().querySelector('h1');
    (heading || main()).focus();
  });
  try {
    await loadConfig();
  } catch (e) {
    show(h('h1', {}, 'The console cannot start'), errorBox(e));
    return;
  }
  let failed = null;
  try {
    await finishSignIn();
  } catch (e) {
    failed = e;
  }
  session();
  window.addEventListener('hashchange', route);
  window.addEventListener('dicomhub-session', () => { session(); route(); });
  await route();
  if (failed) main().prepend(errorBox(failed));
}

start();
