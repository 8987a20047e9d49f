// The study list: a QIDO-RS search of studies (the server filters, sorts and pages).
import { formatDate, imageUrl, json, pool, state, text, value } from './api.js';
import { errorBox, field, go, h, show } from './ui.js';

const FIELDS = ['PatientName', 'PatientID', 'from', 'to', 'ModalitiesInStudy', 'AccessionNumber'];
const SIZES = [25, 50, 100];
const MODALITIES = ['CR', 'CT', 'DX', 'MG', 'MR', 'NM', 'OT', 'PT', 'RF', 'SC', 'SR', 'US', 'XA'];
const INCLUDE = 'StudyDescription,ModalitiesInStudy,NumberOfStudyRelatedSeries,NumberOfStudyRelatedInstances';
let thumbnails = []; // object URLs of the page shown, released when it is left
let loading = null;

export function release() {
  thumbnails.forEach((u) => URL.revokeObjectURL(u));
  thumbnails = [];
  if (loading) loading.abort();
}

/** QIDO parameters for the form's values. */
export function qido(form) {
  const q = {};
  const name = (form.PatientName || '').trim();
  if (name) {
    if (/[*?]/.test(name)) q.PatientName = name;
    else {
      q.PatientName = name; // each word matches the start of a name part, in any case
      q.fuzzymatching = 'true';
    }
  }
  for (const key of ['PatientID', 'AccessionNumber', 'ModalitiesInStudy']) {
    const v = (form[key] || '').trim();
    if (v) q[key] = key === 'ModalitiesInStudy' ? v.toUpperCase() : v; // modalities are upper case
  }
  const from = (form.from || '').replace(/-/g, '');
  const to = (form.to || '').replace(/-/g, '');
  if (from || to) q.StudyDate = from === to ? from : `${from}-${to}`;
  return q;
}

export async function studies(params) {
  release();
  const form = Object.fromEntries(FIELDS.map((k) => [k, params.get(k) || '']));
  const limit = SIZES.includes(Number(params.get('limit'))) ? Number(params.get('limit')) : SIZES[0];
  const offset = Math.max(0, Number.parseInt(params.get('offset') || '0', 10) || 0);
  const results = h('div', { id: 'results', 'aria-live': 'polite' }, h('p', { class: 'muted' }, 'Searching…'));
  const search = h('form', { class: 'search panel', role: 'search', 'aria-label': 'Search studies',
    onsubmit: (e) => {
      e.preventDefault();
      const data = Object.fromEntries(new FormData(e.target));
      go('/', { ...data, offset: 0 });
    } },
    field('Patient name', { name: 'PatientName', value: form.PatientName, autocomplete: 'off', placeholder: 'e.g. smith jo' }),
    field('Patient ID', { name: 'PatientID', value: form.PatientID, autocomplete: 'off' }),
    field('Study date from', { name: 'from', type: 'date', value: form.from }),
    field('Study date to', { name: 'to', type: 'date', value: form.to }),
    field('Modality', { name: 'ModalitiesInStudy', value: form.ModalitiesInStudy, list: 'modalities', autocomplete: 'off', placeholder: 'any' }),
    h('datalist', { id: 'modalities' }, MODALITIES.map((m) => h('option', { value: m }))),
    field('Accession number', { name: 'AccessionNumber', value: form.AccessionNumber, autocomplete: 'off' }),
    field('Per page', { name: 'limit' }, 'select', SIZES.map((n) => h('option', { value: n, selected: n === limit }, n))),
    h('div', { class: 'buttons' },
      h('button', { class: 'primary', type: 'submit' }, 'Search'),
      h('button', { type: 'button', onclick: () => go('/', {}) }, 'Clear')));
  show(h('h1', {}, 'Studies'), search, results);
  const q = qido(form);
  loading = new AbortController();
  const signal = loading.signal;
  try {
    const [found, count] = await Promise.all([
      json('studies', { params: { ...q, includefield: INCLUDE, orderby: '-StudyDate', limit, offset }, signal }),
      json('studies/count', { params: q, signal }).catch(() => null),
    ]);
    results.replaceChildren(...list(found || [], offset, limit, count && count.count, form));
    const tasks = [...results.querySelectorAll('td.thumb[data-study]')].map((cell) => async () => {
      const url = await imageUrl(`studies/${cell.dataset.study}/thumbnail`, {}, 'image/jpeg', signal);
      if (!url) return;
      thumbnails.push(url);
      cell.firstChild.replaceWith(h('img', { src: url, alt: '' }));
    });
    pool(tasks, 4);
  } catch (e) {
    if (e.name !== 'AbortError') results.replaceChildren(errorBox(e));
  }
}

function list(found, offset, limit, total, form) {
  if (!found.length) {
    return [h('p', {}, offset ? 'No more studies.' : 'No study matches.')];
  }
  const viewer = state.config.viewer;
  const rows = found.map((ds) => {
    const uid = value(ds, '0020000D');
    const name = text(ds, '00100010') || '(no name)';
    return h('tr', {},
      h('td', { class: 'thumb', 'data-study': uid }, h('span', { class: 'none' })),
      h('td', {}, h('a', { href: `#/study/${encodeURIComponent(uid)}`, class: 'study-link' }, name)),
      h('td', {}, text(ds, '00100020')),
      h('td', {}, formatDate(text(ds, '00080020'))),
      h('td', {}, (ds['00080061'] && ds['00080061'].Value || []).join(', ')),
      h('td', {}, text(ds, '00080050')),
      h('td', {}, text(ds, '00081030')),
      h('td', {}, `${text(ds, '00201206')} / ${text(ds, '00201208')}`),
      viewer ? h('td', {}, h('a', { href: viewer + encodeURIComponent(uid), target: '_blank', rel: 'noopener' }, 'OHIF')) : null);
  });
  const headers = ['', 'Patient', 'Patient ID', 'Study date', 'Modalities', 'Accession', 'Description', 'Series / instances'];
  if (viewer) headers.push('Viewer');
  const last = offset + found.length;
  const of = typeof total === 'number' ? ` of ${total}` : '';
  const more = typeof total === 'number' ? last < total : found.length === limit;
  const pager = h('nav', { class: 'pager', 'aria-label': 'Pages of studies' },
    h('button', { type: 'button', disabled: offset === 0, onclick: () => go('/', { ...form, limit, offset: Math.max(0, offset - limit) }) }, '← Previous'),
    h('span', { id: 'shown' }, `Studies ${offset + 1}–${last}${of}`),
    h('button', { type: 'button', disabled: !more, onclick: () => go('/', { ...form, limit, offset: offset + limit }) }, 'Next →'));
  return [pager, h('table', { class: 'studies', 'aria-label': 'Studies found' },
    h('thead', {}, h('tr', {}, headers.map((x, i) => h('th', { scope: 'col' }, i === 0 ? h('span', { class: 'skip' }, 'Thumbnail') : x)))),
    h('tbody', {}, rows))];
}
