// Operations pages: the change feed, long-running operations, extended query tags, health.
import { can, json, request, state } from './api.js';
import { confirm, errorBox, field, go, h, say, show, table } from './ui.js';
import { keyword, names } from './tags.js';

const FEED_PAGE = 50;
const FINISHED = new Set(['completed', 'failed']);

function when(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

function studyLink(uid) {
  return uid ? h('a', { href: `#/study/${encodeURIComponent(uid)}` }, h('code', {}, uid)) : '';
}

/** The change feed, newest first, FEED_PAGE entries a page (v2: positions from the oldest). */
export async function changes(params) {
  const page = Math.max(0, Number.parseInt(params.get('page') || '0', 10) || 0);
  const body = h('div', { 'aria-live': 'polite' }, h('p', { class: 'muted' }, 'Loading…'));
  show(h('h1', {}, 'Change feed'),
    h('p', {}, 'Every change to the archive, in the order it was made (', h('code', {}, 'GET /v2/changefeed'), ').'), body);
  try {
    const latest = await json('changefeed/latest', { params: { includeMetadata: 'false' } });
    if (!latest) {
      body.replaceChildren(h('p', {}, 'No change yet.'));
      return;
    }
    const end = latest.sequence - page * FEED_PAGE; // entries up to this position, newest first
    const offset = Math.max(0, end - FEED_PAGE);
    const limit = Math.max(1, end - offset);
    const entries = end > 0 ? await json('changefeed', { params: { offset, limit, includeMetadata: 'false' } }) : [];
    const rows = (entries || []).reverse().map((e) => h('tr', {},
      h('td', {}, e.sequence), h('td', { class: 'nowrap' }, when(e.timestamp)),
      h('td', {}, h('span', { class: `badge ${e.action === 'delete' ? 'bad' : 'ok'}` }, e.action)),
      h('td', {}, e.state), h('td', {}, studyLink(e.studyInstanceUid)),
      h('td', {}, h('code', {}, e.seriesInstanceUid)), h('td', {}, h('code', {}, e.sopInstanceUid))));
    body.replaceChildren(
      h('nav', { class: 'pager', 'aria-label': 'Pages of the change feed' },
        h('button', { type: 'button', disabled: page === 0, onclick: () => go('/changes', { page: page - 1 }) }, '← Newer'),
        h('span', {}, `Latest sequence ${latest.sequence}; page ${page + 1}`),
        h('button', { type: 'button', disabled: offset === 0, onclick: () => go('/changes', { page: page + 1 }) }, 'Older →')),
      rows.length ? table(['Sequence', 'Time', 'Action', 'State', 'Study', 'Series', 'Instance'], rows, { class: 'feed' })
        : h('p', {}, 'No entries on this page.'));
  } catch (e) {
    body.replaceChildren(errorBox(e));
  }
}

function operationCard(op) {
  const done = op.status === 'completed';
  const failed = op.status === 'failed';
  return h('div', { class: 'panel operation', 'data-operation': op.operationId },
    h('h2', {}, `${op.type} `, h('span', { class: `badge ${failed ? 'bad' : done ? 'ok' : ''}` }, op.status)),
    h('p', {}, h('code', {}, op.operationId)),
    h('progress', { max: 100, value: op.percentComplete || 0, 'aria-label': 'Percent complete' }),
    h('p', { class: 'muted' }, `${op.percentComplete || 0}% · created ${when(op.createdTime)} · updated ${when(op.lastUpdatedTime)}`),
    op.errors && op.errors.length ? h('ul', { class: 'bad' }, op.errors.map((e) => h('li', {}, typeof e === 'string' ? e : JSON.stringify(e)))) : null,
    op.results ? h('pre', {}, JSON.stringify(op.results, null, 1)) : null);
}

/** Operations: one by its id, and those the extended query tags being added wait for. */
export async function operations(params) {
  const id = params.get('id') || '';
  const box = h('div', { class: 'cards', 'aria-live': 'polite' });
  const form = h('form', { class: 'panel search', onsubmit: (e) => {
    e.preventDefault();
    go('/operations', { id: new FormData(e.target).get('id').trim() });
  } },
  field('Operation id', { name: 'id', value: id, autocomplete: 'off', pattern: '[A-Za-z0-9_.\\-]{1,128}' }),
  h('div', { class: 'buttons' }, h('button', { class: 'primary', type: 'submit' }, 'Look up')));
  const running = h('div', { class: 'cards', 'aria-live': 'polite' }, h('p', { class: 'muted' }, 'Loading…'));
  const jobs = can('admin') ? h('div', { id: 'jobs', 'aria-live': 'polite' }, h('p', { class: 'muted' }, 'Loading…')) : null;
  show(h('h1', {}, 'Operations'),
    h('p', {}, 'Long-running operations (extended query tag indexing, export, bulk update) are followed by their id (',
      h('code', {}, 'GET /v2/operations/{id}'), '): the request that started one answers it.'),
    form, box,
    jobs ? [h('h2', {}, 'Background jobs by type'), jobs] : null,
    h('h2', {}, 'Operations of the extended query tags being added'), running);
  const hash = location.hash; // polling stops once the page is left
  if (jobs) {
    const poll = async () => {
      if (location.hash !== hash) return;
      if (await jobQueue(jobs)) setTimeout(poll, 5000);
    };
    poll();
  }
  if (id) {
    const follow = async () => {
      if (location.hash !== hash) return; // the page was left
      try {
        const op = await json(`operations/${encodeURIComponent(id)}`);
        box.replaceChildren(operationCard(op));
        if (!FINISHED.has(op.status)) setTimeout(follow, 1000); // followed until it ends
      } catch (e) {
        box.replaceChildren(errorBox(e));
      }
    };
    await follow();
  }
  const tagOperations = async () => {
    if (location.hash !== hash) return; // the page was left
    try {
      const tags = (await json('extendedquerytags', { params: { limit: 200 } })) || [];
      const ids = [...new Set(tags.filter((t) => t.operation && t.operation.id !== id).map((t) => t.operation.id))];
      const ops = await Promise.all(ids.map((op) => json(`operations/${encodeURIComponent(op)}`).catch(() => null)));
      const shown = ops.filter((op) => op && !FINISHED.has(op.status));
      running.replaceChildren(...(shown.length ? shown.map(operationCard) : [h('p', {}, 'None in progress.')]));
      if (shown.length) setTimeout(tagOperations, 2000); // until they end
    } catch (e) {
      running.replaceChildren(errorBox(e));
    }
  };
  await tagOperations();
}

/** The values of a Prometheus text exposition's gauges ``names``, by their type label. */
export function gauges(exposition, names) {
  const out = {};
  for (const line of exposition.split('\n')) {
    const m = line.match(/^(\w+)\{[^}]*type="([^"]*)"[^}]*\}\s+(\S+)/);
    if (!m || !names.includes(m[1])) continue;
    (out[m[2]] = out[m[2]] || {})[m[1]] = Number(m[3]);
  }
  return out;
}

/** Jobs waiting and running by type (/metrics, the admin action: read from the index); false
 * when they cannot be read. */
async function jobQueue(box) {
  const names = ['dicomhub_job_queue_depth', 'dicomhub_jobs_running', 'dicomhub_job_queue_oldest_age_seconds'];
  try {
    const r = await request(new URL('metrics', document.baseURI).href, { accept: 'text/plain' });
    const found = gauges(await r.text(), names);
    const types = Object.keys(found).sort();
    box.replaceChildren(types.length
      ? table(['Type', 'Waiting', 'Running', 'Oldest waiting'], types.map((t) => h('tr', { 'data-type': t },
        h('td', {}, t), h('td', {}, found[t][names[0]] ?? 0), h('td', {}, found[t][names[1]] ?? 0),
        h('td', {}, found[t][names[0]] ? `${Math.round(found[t][names[2]] || 0)} s` : '—'))), { class: 'jobs' })
      : h('p', {}, 'No job waiting or running.'));
    return true;
  } catch (e) {
    box.replaceChildren(errorBox(e));
    return false;
  }
}

/** Extended query tags: listed, added (an operation indexes what is stored), removed. */
export async function tags() {
  const list = h('div', { 'aria-live': 'polite' }, h('p', { class: 'muted' }, 'Loading…'));
  const manage = can('manageExtendedQueryTags');
  const form = manage ? h('form', { class: 'panel search', id: 'add-tag', onsubmit: async (e) => {
    e.preventDefault();
    const data = Object.fromEntries(new FormData(e.target));
    const tag = { path: data.path.trim(), level: data.level };
    if (data.vr.trim()) tag.vr = data.vr.trim().toUpperCase();
    if (data.privateCreator.trim()) tag.privateCreator = data.privateCreator.trim();
    try {
      const r = await request('extendedquerytags', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify([tag]) });
      const op = await r.json();
      say(`Adding ${tag.path}: operation ${op.id}`);
      go('/operations', { id: op.id });
    } catch (err) {
      say(err.message, true);
    }
  } },
  field('Tag (path or keyword)', { name: 'path', required: true, placeholder: 'e.g. 00101002 or ManufacturerModelName', autocomplete: 'off' }),
  field('VR (optional)', { name: 'vr', maxlength: 2, autocomplete: 'off' }),
  field('Level', { name: 'level' }, 'select', ['Study', 'Series', 'Instance'].map((l) => h('option', { value: l }, l))),
  field('Private creator', { name: 'privateCreator', autocomplete: 'off' }),
  h('div', { class: 'buttons' }, h('button', { class: 'primary', type: 'submit' }, 'Add tag'))) : null;
  show(h('h1', {}, 'Extended query tags'),
    h('p', {}, 'Attributes beyond the standard matching keys that searches may use, once indexed.'),
    list, manage ? h('h2', {}, 'Add a tag') : null, form);
  try {
    const [found, dict] = await Promise.all([json('extendedquerytags', { params: { limit: 200 } }), names()]);
    const rows = (found || []).map((t) => h('tr', { 'data-tag': t.path },
      h('td', {}, h('code', {}, t.path), ' ', /^[0-9A-Fa-f]{8}$/.test(t.path) ? keyword(t.path, dict) : ''), h('td', {}, t.vr), h('td', {}, t.level), h('td', {}, t.status),
      h('td', {}, t.queryStatus), h('td', {}, t.errors ? t.errors.count : 0),
      h('td', {}, t.operation ? h('a', { href: `#/operations?id=${encodeURIComponent(t.operation.id)}` }, 'operation') : ''),
      h('td', {}, manage ? h('button', { type: 'button', class: 'danger', onclick: async () => {
        if (!(await confirm('Remove this tag?', `Searches by ${t.path} stop working and its index is dropped.`, 'Remove tag'))) return;
        try {
          await request(`extendedquerytags/${encodeURIComponent(t.path)}`, { method: 'DELETE' });
          say(`${t.path} removed`);
          tags();
        } catch (err) {
          say(err.message, true);
        }
      } }, 'Remove') : '')));
    list.replaceChildren(rows.length
      ? table(['Path', 'VR', 'Level', 'Status', 'Query status', 'Errors', '', ''], rows, { class: 'extended-tags' })
      : h('p', {}, 'No extended query tag.'));
  } catch (e) {
    list.replaceChildren(errorBox(e));
  }
}

/** The server's health (/health/check: open, even with authentication on). */
export async function health() {
  const box = h('div', { 'aria-live': 'polite' }, h('p', { class: 'muted' }, 'Checking…'));
  show(h('h1', {}, 'Server health'), box);
  let doc;
  try {
    const r = await fetch(new URL('health/check', document.baseURI), { headers: { Accept: 'application/json' } });
    doc = await r.json();
  } catch (e) {
    box.replaceChildren(errorBox(new Error(`the server cannot be reached (${e.message})`)));
    return;
  }
  const healthy = doc.overallStatus === 'Healthy';
  box.replaceChildren(
    h('p', { id: 'overall' }, 'Overall: ', h('span', { class: `badge ${healthy ? 'ok' : 'bad'}` }, doc.overallStatus)),
    table(['Dependency', 'Status', 'Description'], (doc.details || []).map((d) => h('tr', {},
      h('td', {}, d.name), h('td', {}, h('span', { class: `badge ${d.status === 'Healthy' ? 'ok' : 'bad'}` }, d.status)),
      h('td', {}, d.description)))),
    h('h2', {}, 'This server'),
    h('ul', {},
      h('li', {}, `dicomhub ${state.config.version}`),
      h('li', {}, 'DICOMweb root: ', h('code', {}, new URL(state.config.api, document.baseURI).href)),
      h('li', {}, 'API description: ', h('a', { href: `${state.config.api}api.json` }, 'OpenAPI (JSON)')),
      h('li', {}, 'Authentication: ', state.config.auth ? `on (issuer ${state.config.auth.issuer})` : 'off'),
      state.config.viewer ? h('li', {}, 'Viewer: ', h('a', { href: 'viewer' }, 'OHIF')) : null));
}
