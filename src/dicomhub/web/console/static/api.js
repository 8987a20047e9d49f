// The console's one way to the server: its DICOMweb API, with the bearer token when
// authentication is on. Nothing here knows of pages.
export const state = { config: null, token: null, claims: null, actions: null };
const TOKEN_KEY = 'dicomhub.console.token';

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail || `HTTP ${status}`);
    this.status = status;
  }
}

export async function loadConfig() {
  const r = await fetch(new URL('console/config.json', document.baseURI));
  state.config = await r.json();
  setToken(sessionStorage.getItem(TOKEN_KEY));
  return state.config;
}

/** Keep ``token`` (a JWT) for this tab; null forgets it. */
export function setToken(token) {
  state.token = token || null;
  state.claims = token ? decodeClaims(token) : null;
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
  state.actions = actionsOf(state.claims);
}

function decodeClaims(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const text = new TextDecoder().decode(Uint8Array.from(atob(part), (c) => c.charCodeAt(0)));
    return JSON.parse(text);
  } catch {
    return null;
  }
}

function actionsOf(claims) {
  const auth = state.config && state.config.auth;
  if (!auth) return null; // authentication off: everything is allowed
  if (!claims) return new Set();
  let value = claims;
  for (const part of auth.rolesClaim.split('.')) value = value && typeof value === 'object' ? value[part] : undefined;
  const names = typeof value === 'string' ? value.split(/\s+/) : Array.isArray(value) ? value : [];
  const out = new Set();
  for (const name of names) for (const action of auth.roles[name] || []) out.add(action);
  return out;
}

/** Whether the user may do ``action`` (read, write, delete, manageExtendedQueryTags, ...): a
 * hint to hide what would be refused; the API decides. */
export function can(action) {
  return state.actions === null || state.actions.has(action);
}

export function needsSignIn() {
  if (!state.config.auth) return false;
  if (!state.claims) return true;
  return typeof state.claims.exp === 'number' && state.claims.exp * 1000 < Date.now();
}

/** The URL of ``path`` under the API root (``v2/``), with query ``params``. */
export function apiUrl(path, params) {
  const url = new URL(state.config.api + path, document.baseURI);
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== '') url.searchParams.append(k, v);
  }
  return url.toString();
}

export function authHeaders(headers = {}) {
  return state.token ? { ...headers, Authorization: `Bearer ${state.token}` } : headers;
}

/** fetch() of an API ``path`` (or an absolute URL); an ApiError with the problem's detail
 * unless it succeeds. */
export async function request(path, { params, method = 'GET', headers = {}, body, accept, signal } = {}) {
  const url = /^https?:/.test(path) ? path : apiUrl(path, params);
  const h = authHeaders(headers);
  if (accept) h.Accept = accept;
  let r;
  try {
    r = await fetch(url, { method, headers: h, body, signal });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, `the server cannot be reached (${e.message})`);
  }
  if (!r.ok && r.status !== 304) {
    let detail = '';
    try {
      const text = await r.text();
      try {
        const doc = JSON.parse(text);
        detail = doc.detail || doc.title || text;
      } catch {
        detail = text;
      }
    } catch {}
    if (r.status === 401) detail = `sign in needed: ${detail}`;
    throw new ApiError(r.status, `${r.status} ${r.statusText}: ${detail}`.slice(0, 400));
  }
  return r;
}

export async function json(path, options = {}) {
  const r = await request(path, { accept: 'application/dicom+json, application/json', ...options });
  if (r.status === 204) return null;
  const text = await r.text();
  return text ? JSON.parse(text) : null;
}

/** An object URL of the image at API ``path`` (fetched with the token: <img src> cannot send
 * one); null when there is none (404, or nothing to render). */
export async function imageUrl(path, params, accept = 'image/jpeg', signal) {
  try {
    const r = await request(path, { params, accept, signal });
    return URL.createObjectURL(await r.blob());
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    if (e.status === 404 || e.status === 406 || e.status === 400) return null;
    throw e;
  }
}

/** Save what API ``path`` answers for ``accept`` as a file named ``name``. */
export async function download(path, accept, name) {
  const r = await request(path, { accept });
  const blob = await r.blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
  return blob.size;
}

// DICOM JSON (PS3.18 F.2) helpers
export function value(ds, tag) {
  const e = ds && ds[tag];
  return e && e.Value && e.Value.length ? e.Value[0] : undefined;
}

export function values(ds, tag) {
  const e = ds && ds[tag];
  return (e && e.Value) || [];
}

export function text(ds, tag) {
  const v = value(ds, tag);
  if (v === undefined || v === null) return '';
  if (typeof v === 'object') return personName(v);
  return String(v);
}

export function personName(v) {
  if (!v) return '';
  const name = v.Alphabetic || v.Ideographic || v.Phonetic || '';
  return name.replace(/\^+$/, '').replace(/\^/g, ', ').replace(/(, )+$/, '');
}

export function formatDate(d) {
  return /^\d{8}$/.test(d || '') ? `${d.slice(0, 4)}-${d.slice(4, 6)}-${d.slice(6, 8)}` : d || '';
}

/** Run ``tasks`` (functions returning promises), at most ``n`` at a time. */
export async function pool(tasks, n) {
  let next = 0;
  const worker = async () => {
    while (next < tasks.length) {
      const task = tasks[next++];
      try {
        await task();
      } catch (e) {
        if (e.name !== 'AbortError') console.warn(e);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(n, tasks.length) }, worker));
}

/** Every result of a QIDO search at ``path``, page after page (a study's series, a series'
 * instances: the server answers 100 unless asked for more, at most its --qido-max-limit). */
export async function everything(path, params = {}, options = {}) {
  const out = [];
  for (let offset = 0; out.length < 1000000;) {
    const page = (await json(path, { ...options, params: { ...params, limit: 1000, offset } })) || [];
    if (!page.length) break;
    out.push(...page);
    offset += page.length;
  }
  return out;
}
