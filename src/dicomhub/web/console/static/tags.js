// An instance's metadata (DICOM JSON, PS3.18 F.2) as a readable tag table.
import { json } from './api.js';
import { errorBox, field, h } from './ui.js';

let dictionary = null;

export async function names() {
  if (!dictionary) {
    const r = await fetch(new URL('console/dictionary.json', document.baseURI));
    dictionary = r.ok ? await r.json() : {};
  }
  return dictionary;
}

export function tagName(tag) {
  return `(${tag.slice(0, 4)},${tag.slice(4)})`;
}

export function keyword(tag, dict) {
  const entry = dict[tag.toUpperCase()];
  if (entry) return entry[1];
  if (Number.parseInt(tag.slice(0, 4), 16) % 2) return tag.slice(4, 6) === '00' ? 'Private Creator' : '(private)';
  if (tag.endsWith('0000')) return 'Group Length';
  return '';
}

const MAX = 240;

function shown(element) {
  if (element.BulkDataURI) return h('span', { class: 'muted' }, 'bulk data: ', h('code', {}, element.BulkDataURI));
  if (element.InlineBinary) return h('span', { class: 'muted' }, `binary, ${Math.floor(element.InlineBinary.length * 3 / 4)} bytes`);
  const v = element.Value || [];
  const parts = v.map((x) => (x && typeof x === 'object' ? ['Alphabetic', 'Ideographic', 'Phonetic'].map((k) => x[k]).filter(Boolean).join('=') : String(x)));
  const all = parts.join('\\');
  return all.length > MAX ? `${all.slice(0, MAX)}… (${all.length} characters)` : all;
}

function rows(ds, dict, depth, out) {
  for (const tag of Object.keys(ds).sort()) {
    const element = ds[tag];
    const indent = '>'.repeat(depth);
    out.push(h('tr', { 'data-tag': tag },
      h('td', {}, indent + tagName(tag)),
      h('td', {}, keyword(tag, dict)),
      h('td', {}, element.vr || ''),
      h('td', { class: 'value' }, element.vr === 'SQ' ? `${(element.Value || []).length} item(s)` : shown(element))));
    if (element.vr === 'SQ') {
      (element.Value || []).forEach((item, n) => {
        out.push(h('tr', { class: 'item' }, h('td', { colspan: 4 }, `${'>'.repeat(depth + 1)} item ${n + 1}`)));
        rows(item || {}, dict, depth + 1, out);
      });
    }
  }
  return out;
}

/** Fill ``box`` with the metadata of the instance at API ``path``. */
export async function metadataTable(box, path) {
  box.replaceChildren(h('h2', {}, 'Metadata'), h('p', { class: 'muted' }, 'Loading…'));
  try {
    const [found, dict] = await Promise.all([json(`${path}/metadata`), names()]);
    const body = rows((found && found[0]) || {}, dict, 0, []);
    const filter = h('input', { type: 'search', placeholder: 'tag, keyword or value', autocomplete: 'off' });
    filter.addEventListener('input', () => {
      const q = filter.value.toLowerCase();
      for (const tr of body) tr.hidden = q && !tr.textContent.toLowerCase().includes(q);
    });
    box.replaceChildren(
      h('h2', { tabindex: -1 }, `Metadata of ${path.split('/').pop()}`),
      h('div', { class: 'buttons' }, field('Filter', filter)),
      h('table', { class: 'tags', 'aria-label': 'Metadata' },
        h('thead', {}, h('tr', {}, ['Tag', 'Keyword', 'VR', 'Value'].map((x) => h('th', { scope: 'col' }, x)))),
        h('tbody', {}, body)));
    box.querySelector('h2').focus();
  } catch (e) {
    box.replaceChildren(h('h2', {}, 'Metadata'), errorBox(e));
  }
}
