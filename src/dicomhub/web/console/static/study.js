// A study: its series and instances, a preview from the rendered routes, an instance's
// metadata as a tag table, download and delete.
import { can, download, everything, formatDate, imageUrl, json, pool, request, state, text, value, values } from './api.js';
import { confirm, errorBox, go, h, say, show, size, table } from './ui.js';
import { metadataTable } from './tags.js';

// Window presets: center,width of the rendered route's window parameter (PS3.18 8.3.5.1.3),
// in the instance's rescaled units (Hounsfield units for CT). "As stored": the instance's own;
// "Custom": a center, a width and a VOI LUT function (linear, linear-exact, sigmoid).
export const PRESETS = [
  ['default', 'As stored', null],
  ['brain', 'Brain (40/80)', '40,80'],
  ['soft', 'Soft tissue (40/400)', '40,400'],
  ['lung', 'Lung (-600/1500)', '-600,1500'],
  ['bone', 'Bone (400/1800)', '400,1800'],
  ['custom', 'Custom…', 'custom'],
];
let urls = [];
let preview = null; // the request of the image on screen

export function release() {
  urls.forEach((u) => URL.revokeObjectURL(u));
  urls = [];
  if (preview) preview.abort();
}

function remember(url) {
  if (url) urls.push(url);
  return url;
}

const byNumber = (tag) => (a, b) => (Number(value(a, tag)) || 0) - (Number(value(b, tag)) || 0);

export async function study(uid, params) {
  release();
  show(h('h1', {}, 'Study'), h('p', { class: 'muted' }, 'Loading…'));
  let found, series;
  try {
    [found, series] = await Promise.all([
      json('studies', { params: { StudyInstanceUID: uid, includefield: 'StudyDescription,ModalitiesInStudy,NumberOfStudyRelatedInstances' } }),
      everything(`studies/${uid}/series`, { includefield: 'SeriesDescription,NumberOfSeriesRelatedInstances' }),
    ]);
  } catch (e) {
    show(h('h1', {}, 'Study'), errorBox(e));
    return;
  }
  if (!found || !found.length) {
    show(h('h1', {}, 'Study not found'), h('p', {}, `No study ${uid} is stored. `, h('a', { href: '#/' }, 'Back to the studies')));
    return;
  }
  const ds = found[0];
  series = (series || []).sort(byNumber('00200011'));
  const chosen = series.find((s) => value(s, '0020000E') === params.get('series')) || series[0];
  const viewer = state.config.viewer;
  const head = h('div', { class: 'study-head' },
    h('h1', {}, text(ds, '00100010') || '(no name)'),
    h('dl', {},
      ...[['Patient ID', text(ds, '00100020')], ['Study date', formatDate(text(ds, '00080020'))],
        ['Accession', text(ds, '00080050')], ['Description', text(ds, '00081030')],
        ['Modalities', values(ds, '00080061').join(', ')], ['Study UID', uid]]
        .map(([k, v]) => [h('div', {}, h('dt', {}, k), h('dd', {}, v || '—'))])),
    h('div', { class: 'buttons' },
      viewer ? h('a', { href: viewer + encodeURIComponent(uid), target: '_blank', rel: 'noopener', id: 'ohif' }, 'Open in OHIF') : null,
      h('button', { type: 'button', onclick: () => save(`studies/${uid}`, 'application/zip', `study-${uid}.zip`) }, 'Download ZIP'),
      can('delete') ? h('button', { type: 'button', class: 'danger', id: 'delete-study', onclick: () => removeStudy(uid, ds) }, 'Delete study') : null));
  const seriesList = h('ul', { class: 'series-list', 'aria-label': 'Series' }, series.map((s) => {
    const suid = value(s, '0020000E');
    const cell = h('span', { class: 'none' });
    const button = h('button', { type: 'button', 'aria-pressed': String(s === chosen), 'data-series': suid,
      onclick: () => go(`/study/${encodeURIComponent(uid)}`, { series: suid }) },
    cell, h('span', {}, `${text(s, '00200011') || '?'} · ${text(s, '00080060')} ${text(s, '0008103E')}`,
      h('br'), h('small', { class: 'muted' }, `${text(s, '00201209')} instance(s)`)));
    return h('li', {}, button);
  }));
  const pane = h('section', { 'aria-label': 'Series' }, h('p', { class: 'muted' }, 'Loading the series…'));
  show(h('p', {}, h('a', { href: '#/' }, '← Studies')), head, h('div', { class: 'layout' }, h('aside', {}, seriesList), pane));
  pool(series.map((s) => async () => {
    const suid = value(s, '0020000E');
    const url = remember(await imageUrl(`studies/${uid}/series/${suid}/thumbnail`));
    const cell = seriesList.querySelector(`[data-series="${CSS.escape(suid)}"] .none`);
    if (url && cell) cell.replaceWith(h('img', { src: url, alt: '' }));
  }), 3);
  if (chosen) await seriesPane(pane, uid, chosen, params);
  else pane.replaceChildren(h('p', {}, 'This study has no series.'));
}

async function seriesPane(pane, uid, s, params) {
  const suid = value(s, '0020000E');
  const base = `studies/${uid}/series/${suid}`;
  let instances;
  try {
    instances = await everything(`${base}/instances`, { includefield: 'NumberOfFrames,InstanceNumber,Rows,Columns' });
  } catch (e) {
    pane.replaceChildren(errorBox(e));
    return;
  }
  instances = (instances || []).sort(byNumber('00200013'));
  const at = { index: Math.max(0, instances.findIndex((i) => value(i, '00080018') === params.get('sop'))), frame: 1 };
  const frames = (i) => Number(value(i, '00280008')) || 1;
  const img = h('img', { id: 'preview', alt: '' });
  const overlay = h('div', { class: 'overlay', 'aria-hidden': 'true' });
  const screen = h('div', { class: 'viewer', tabindex: 0, role: 'img', id: 'viewport',
    'aria-label': 'Image preview: arrow up and down for the previous and next instance, left and right for frames' }, img, overlay);
  const instanceSlider = h('input', { type: 'range', min: 1, max: instances.length, value: at.index + 1, id: 'instance-slider' });
  const frameSlider = h('input', { type: 'range', min: 1, max: 1, value: 1, id: 'frame-slider' });
  const frameField = h('label', { for: 'frame-slider' }, 'Frame', frameSlider);
  const presets = h('select', { id: 'window' }, PRESETS.map(([k, label]) => h('option', { value: k }, label)));
  const center = h('input', { type: 'number', id: 'wc', value: 40, step: 'any' });
  const width = h('input', { type: 'number', id: 'ww', value: 400, min: 1, step: 'any' });
  const shape = h('select', { id: 'wf' }, [['linear', 'Linear'], ['linear-exact', 'Linear exact'], ['sigmoid', 'Sigmoid']]
    .map(([k, label]) => h('option', { value: k }, label)));
  const custom = h('span', { class: 'buttons', hidden: true, id: 'custom-window' },
    h('label', { for: 'wc' }, 'Center', center), h('label', { for: 'ww' }, 'Width', width),
    h('label', { for: 'wf' }, 'Function', shape));
  const meta = h('section', { 'aria-label': 'Metadata', id: 'metadata' });

  function windowParam() {
    const preset = PRESETS.find(([k]) => k === presets.value);
    if (!preset || !preset[2]) return undefined;
    if (preset[2] === 'custom') {
      const c = Number(center.value), w = Number(width.value);
      return Number.isFinite(c) && Number.isFinite(w) && w >= 1 ? `${c},${w},${shape.value}` : undefined;
    }
    return preset[2];
  }

  async function draw() {
    const inst = instances[at.index];
    if (!inst) return;
    const sop = value(inst, '00080018');
    const n = frames(inst);
    at.frame = Math.min(Math.max(1, at.frame), n);
    instanceSlider.value = at.index + 1;
    frameSlider.max = n;
    frameSlider.value = at.frame;
    frameField.hidden = n < 2;
    overlay.textContent = `Instance ${at.index + 1} of ${instances.length}` + (n > 1 ? ` · frame ${at.frame} of ${n}` : '');
    if (preview) preview.abort();
    preview = new AbortController();
    const path = `${base}/instances/${sop}/frames/${at.frame}/rendered`;
    try {
      const url = await imageUrl(path, { window: windowParam(), quality: 90 }, 'image/jpeg', preview.signal);
      if (url) {
        const old = img.src;
        img.src = remember(url);
        img.alt = `Instance ${at.index + 1}, frame ${at.frame}`;
        img.dataset.sop = sop;
        img.dataset.frame = at.frame;
        await img.decode().catch(() => {});
        if (old.startsWith('blob:')) { URL.revokeObjectURL(old); urls = urls.filter((u) => u !== old); }
      } else {
        img.removeAttribute('src');
        img.alt = 'This instance has no image to show';
        overlay.textContent += ' · no image';
      }
    } catch (e) {
      if (e.name !== 'AbortError') say(e.message, true);
    }
  }

  function move(instanceStep, frameStep) {
    if (instanceStep) {
      at.index = Math.min(instances.length - 1, Math.max(0, at.index + instanceStep));
      at.frame = 1;
    }
    if (frameStep) at.frame += frameStep;
    draw();
  }

  instanceSlider.addEventListener('input', () => { at.index = Number(instanceSlider.value) - 1; at.frame = 1; draw(); });
  frameSlider.addEventListener('input', () => { at.frame = Number(frameSlider.value); draw(); });
  presets.addEventListener('change', () => { custom.hidden = presets.value !== 'custom'; draw(); });
  center.addEventListener('change', draw);
  width.addEventListener('change', draw);
  shape.addEventListener('change', draw);
  screen.addEventListener('keydown', (e) => {
    const steps = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1], PageUp: [-1, 0], PageDown: [1, 0] }[e.key];
    if (!steps) return;
    e.preventDefault();
    move(...steps);
  });
  screen.addEventListener('wheel', (e) => {
    e.preventDefault();
    const n = frames(instances[at.index]);
    if (n > 1 && !e.shiftKey) move(0, Math.sign(e.deltaY));
    else move(Math.sign(e.deltaY), 0);
  }, { passive: false });

  const rows = instances.map((inst, i) => {
    const sop = value(inst, '00080018');
    const path = `${base}/instances/${sop}`;
    return h('tr', { 'data-sop': sop },
      h('td', {}, text(inst, '00200013')),
      h('td', {}, h('code', {}, sop)),
      h('td', {}, frames(inst)),
      h('td', {}, h('div', { class: 'buttons' },
        h('button', { type: 'button', onclick: () => { at.index = i; at.frame = 1; draw(); screen.focus(); } }, 'View'),
        h('button', { type: 'button', class: 'show-metadata', onclick: () => metadataTable(meta, path) }, 'Metadata'),
        h('button', { type: 'button', class: 'download', onclick: () => save(path, 'application/dicom; transfer-syntax=*', `${sop}.dcm`) }, 'Download'),
        can('delete') ? h('button', { type: 'button', class: 'danger delete-instance', onclick: () => removeInstance(uid, suid, sop) }, 'Delete') : null)));
  });
  pane.replaceChildren(
    h('h2', {}, `Series ${text(s, '00200011')} · ${text(s, '00080060')} ${text(s, '0008103E')}`),
    h('div', { class: 'controls' },
      h('button', { type: 'button', onclick: () => move(-1, 0), 'aria-label': 'Previous instance' }, '▲'),
      h('label', { for: 'instance-slider' }, 'Instance', instanceSlider),
      h('button', { type: 'button', onclick: () => move(1, 0), 'aria-label': 'Next instance' }, '▼'),
      frameField,
      h('label', { for: 'window' }, 'Window', presets), custom,
      can('delete') ? h('button', { type: 'button', class: 'danger', id: 'delete-series', onclick: () => removeSeries(uid, suid) }, 'Delete series') : null),
    screen,
    h('h2', {}, 'Instances'),
    table(['Number', 'SOP Instance UID', 'Frames', 'Actions'], rows, { class: 'instances' }),
    meta);
  if (instances.length) await draw();
}

async function save(path, accept, name) {
  say(`Downloading ${name}…`);
  try {
    const bytes = await download(path, accept, name);
    say(`Downloaded ${name} (${size(bytes)})`);
  } catch (e) {
    say(e.message, true);
  }
}

async function remove(path, what) {
  try {
    await request(path, { method: 'DELETE' });
    say(`${what} deleted`);
    return true;
  } catch (e) {
    say(e.message, true);
    return false;
  }
}

async function removeStudy(uid, ds) {
  const name = text(ds, '00100010') || '(no name)';
  if (!(await confirm('Delete this study?', `The study of ${name} (${text(ds, '00100020')}), ${text(ds, '00201208')} instance(s), will be deleted from the archive. This cannot be undone.`, 'Delete study'))) return;
  if (await remove(`studies/${uid}`, 'The study')) go('/', {});
}

async function removeSeries(uid, suid) {
  if (!(await confirm('Delete this series?', `Series ${suid} and all its instances will be deleted. This cannot be undone.`, 'Delete series'))) return;
  if (await remove(`studies/${uid}/series/${suid}`, 'The series')) go(`/study/${encodeURIComponent(uid)}`, {});
}

async function removeInstance(uid, suid, sop) {
  if (!(await confirm('Delete this instance?', `Instance ${sop} will be deleted. This cannot be undone.`, 'Delete instance'))) return;
  if (await remove(`studies/${uid}/series/${suid}/instances/${sop}`, 'The instance')) {
    go(`/study/${encodeURIComponent(uid)}`, { series: suid, n: Date.now() });
  }
}
