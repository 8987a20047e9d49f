// Building the page: elements from plain calls (no innerHTML of data: a patient's name is text).
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k in el && typeof v !== 'string') el[k] = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

let fieldId = 0;
/** A labelled form control. */
export function field(label, attrs = {}, tag = 'input', ...children) {
  const id = attrs.id || `f${++fieldId}`;
  return h('label', { for: id }, label, h(tag, { ...attrs, id }, ...children));
}

export function main() {
  return document.getElementById('main');
}

/** Replace the page's content; focus moves to the new heading for keyboard and screen-reader users. */
export function show(...children) {
  const m = main();
  m.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  const heading = m.querySelector('h1');
  if (heading) {
    heading.tabIndex = -1;
    heading.focus({ preventScroll: true });
  }
}

export function say(message, error = false) {
  const box = document.getElementById('status');
  const p = h('p', { class: error ? 'error' : '' }, message);
  box.append(p);
  setTimeout(() => p.remove(), error ? 9000 : 4000);
}

export function errorBox(e) {
  return h('div', { class: 'error-box', role: 'alert' }, e.message || String(e));
}

/** Ask to confirm ``text`` (a modal dialog, Cancel focused); true when confirmed. */
export function confirm(title, text, action = 'Delete') {
  const dialog = document.getElementById('confirm');
  document.getElementById('confirm-title').textContent = title;
  document.getElementById('confirm-text').textContent = text;
  document.getElementById('confirm-ok').textContent = action;
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
    dialog.returnValue = 'cancel';
    dialog.showModal();
    document.getElementById('confirm-cancel').focus();
  });
}

export function table(headers, rows, attrs = {}) {
  return h('table', attrs,
    h('thead', {}, h('tr', {}, headers.map((x) => h('th', { scope: 'col' }, x)))),
    h('tbody', {}, rows));
}

export function hashParams() {
  const hash = location.hash.replace(/^#/, '');
  const [path, query] = hash.split('?');
  return { path: path || '/', params: new URLSearchParams(query || '') };
}

export function go(path, params) {
  const q = params ? new URLSearchParams(Object.entries(params).filter(([, v]) => v !== '' && v != null)).toString() : '';
  location.hash = '#' + path + (q ? '?' + q : '');
}

export function size(bytes) {
  return bytes < 1048576 ? `${(bytes / 1024).toFixed(1)} KB` : `${(bytes / 1048576).toFixed(1)} MB`;
}
