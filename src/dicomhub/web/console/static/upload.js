// Upload: files and folders (dropped or picked) sent to STOW-RS as multipart/related, one
// file a request (so each gets its own outcome), a few at a time, with progress.
import { apiUrl, authHeaders } from './api.js';
import { h, show, size } from './ui.js';

const AT_ONCE = 3;
const REASONS = {
  272: 'not a readable DICOM file, or it could not be stored',
  42752: 'out of resources (no space left)',
  43264: 'invalid or missing required attributes',
  45070: 'already stored',
};

/** Every file under the dropped items (folders read recursively), with its path. */
async function dropped(items) {
  const out = [];
  const entries = [];
  for (const item of [...items].filter((i) => i.kind === 'file')) {
    const entry = item.webkitGetAsEntry && item.webkitGetAsEntry();
    if (entry) entries.push(entry);
    else if (item.getAsFile()) out.push({ file: item.getAsFile(), path: item.getAsFile().name });
  }
  const walk = async (entry) => {
    if (entry.isFile) {
      const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
      out.push({ file, path: entry.fullPath.replace(/^\//, '') });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
        if (!batch.length) break;
        for (const child of batch) await walk(child);
      }
    }
  };
  for (const entry of entries) await walk(entry);
  return out;
}

function picked(list) {
  return [...list].map((file) => ({ file, path: file.webkitRelativePath || file.name }));
}

/** What one file's STOW response says: [kind (ok, warn, bad), text, study UID]. */
export function outcome(status, body) {
  let doc = null;
  try {
    doc = JSON.parse(body);
  } catch {}
  const item = (tag) => doc && doc[tag] && doc[tag].Value && doc[tag].Value[0];
  const stored = item('00081199');
  const retrieve = String((stored && stored['00081190'] && stored['00081190'].Value[0]) || ''); // the instance's
  const study = decodeURIComponent((retrieve.match(/\/studies\/([^/?]+)/) || [])[1] || '');
  const failed = item('00081198');
  if (failed) {
    const code = failed['00081197'] && failed['00081197'].Value[0];
    const comment = failed['00000902'] && failed['00000902'].Value[0];
    const reason = REASONS[code] || `failure ${code}`;
    return [code === 45070 ? 'warn' : 'bad', comment ? `${reason}: ${comment}` : reason, study];
  }
  if (stored && status < 300) {
    const warning = stored['00081196'];
    return warning ? ['warn', `stored, with warning ${warning.Value[0]}`, study] : ['ok', 'stored', study];
  }
  const detail = (doc && (doc.detail || doc.title)) || body.slice(0, 200) || `HTTP ${status}`;
  return ['bad', `refused (${status}): ${detail}`];
}

function send(file, onProgress) {
  const boundary = `dicomhub-console-${crypto.randomUUID()}`;
  const body = new Blob([
    `--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`, file, `\r\n--${boundary}--\r\n`,
  ]);
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', apiUrl('studies'));
    const headers = authHeaders({
      'Content-Type': `multipart/related; type="application/dicom"; boundary=${boundary}`,
      Accept: 'application/dicom+json',
    });
    for (const [k, v] of Object.entries(headers)) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => onProgress(e.loaded);
    xhr.onload = () => resolve(outcome(xhr.status, xhr.responseText || ''));
    xhr.onerror = () => resolve(['bad', 'the server cannot be reached']);
    xhr.send(body);
  });
}

export async function upload() {
  const bar = h('progress', { max: 1, value: 0, id: 'upload-progress', 'aria-label': 'Upload progress' });
  const summary = h('p', { id: 'upload-summary', role: 'status' });
  const studies = h('ul', { id: 'upload-studies', class: 'inline' });
  const results = h('tbody', {});
  const files = h('input', { type: 'file', multiple: true, id: 'upload-files' });
  const folder = h('input', { type: 'file', multiple: true, webkitdirectory: true, id: 'upload-folder' });
  const zone = h('div', { class: 'drop', id: 'drop' },
    h('p', {}, h('strong', {}, 'Drop DICOM files or folders here')),
    h('p', { class: 'buttons centred' },
      h('label', { for: 'upload-files' }, 'Choose files', files),
      h('label', { for: 'upload-folder' }, 'or a folder', folder)));
  let busy = false;

  async function run(items) {
    if (busy || !items.length) return;
    busy = true;
    const total = items.reduce((n, i) => n + i.file.size, 0) || 1;
    const sent = new Array(items.length).fill(0);
    const counts = { ok: 0, warn: 0, bad: 0 };
    bar.max = total;
    bar.value = 0;
    results.replaceChildren();
    studies.replaceChildren();
    const seen = new Set();
    const started = performance.now();
    const tell = (done) => {
      const seconds = (performance.now() - started) / 1000;
      summary.textContent = `${done} of ${items.length} file(s), ${size(sent.reduce((a, b) => a + b, 0))} of ${size(total)}` +
        ` · stored ${counts.ok}, already stored or with warnings ${counts.warn}, refused ${counts.bad}` +
        (done === items.length ? ` · done in ${seconds.toFixed(1)} s` : '');
    };
    let next = 0, done = 0;
    const worker = async () => {
      while (next < items.length) {
        const n = next++;
        const { file, path } = items[n];
        const [kind, what, study] = await send(file, (loaded) => {
          sent[n] = loaded;
          bar.value = sent.reduce((a, b) => a + b, 0);
        });
        sent[n] = file.size;
        counts[kind]++;
        if (study && !seen.has(study)) {
          seen.add(study);
          studies.append(h('li', {}, h('a', { href: `#/study/${encodeURIComponent(study)}` }, `Study ${study}`)));
        }
        done++;
        results.append(h('tr', { class: `outcome-${kind}` }, h('td', {}, path), h('td', { class: 'nowrap' }, size(file.size)),
          h('td', { class: kind }, what)));
        tell(done);
      }
    };
    tell(0);
    await Promise.all(Array.from({ length: Math.min(AT_ONCE, items.length) }, worker));
    bar.value = total;
    busy = false;
  }

  // the picker is emptied once read, so the same files can be picked again
  files.addEventListener('change', () => { const chosen = picked(files.files); files.value = ''; run(chosen); });
  folder.addEventListener('change', () => { const chosen = picked(folder.files); folder.value = ''; run(chosen); });
  zone.addEventListener('dragover', (e) => { e.preventDefault(); zone.classList.add('over'); });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', async (e) => {
    e.preventDefault();
    zone.classList.remove('over');
    run(await dropped(e.dataTransfer.items));
  });
  show(h('h1', {}, 'Upload'),
    h('p', {}, 'Files are stored with STOW-RS, one request a file; files that are not DICOM are refused and listed.'),
    zone, h('h2', {}, 'Progress'), bar, summary, studies,
    h('table', { 'aria-label': 'Files sent' },
      h('thead', {}, h('tr', {}, ['File', 'Size', 'Outcome'].map((x) => h('th', { scope: 'col' }, x)))), results));
}
