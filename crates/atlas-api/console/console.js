// The Atlas console: one page, drawn with DOM calls (never innerHTML: every value shown is
// data), talking to the public API with the key or admin token its user signed in with.
// The secret lives in this tab's sessionStorage only (gone when the tab closes; never in a
// URL, a cookie or localStorage) and expires after 30 idle minutes.
'use strict';

(() => {
  const SESSION = 'atlas.console.session';
  const IDLE_MS = 30 * 60 * 1000;
  const LIVE_MS = 5000;
  const PAGE = 50;
  const MAX_RAW_POINTS = 20000;
  const RANGES = [
    ['1h', 3600e3], ['6h', 6 * 3600e3], ['24h', 86400e3], ['7d', 7 * 86400e3],
    ['30d', 30 * 86400e3], ['365d', 365 * 86400e3],
  ];
  const NUMERIC = new Set(['integer', 'decimal']);

  const $ = (id) => document.getElementById(id);
  let session = loadSession();
  let cleanups = [];
  let renderSeq = 0;

  // ---- elements -------------------------------------------------------------------------

  /** An element with attributes (`on*` functions become listeners) and children. */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (k === 'dataset') Object.assign(el.dataset, v);
      else if (v === true) el.setAttribute(k, '');
      else el.setAttribute(k, String(v));
    }
    for (const c of children.flat(Infinity)) {
      if (c === undefined || c === null || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  function show(...nodes) {
    const main = $('main');
    main.replaceChildren(...nodes.flat());
  }

  function flash(message, kind) {
    const f = $('flash');
    if (!message) { f.hidden = true; f.textContent = ''; return; }
    f.hidden = false;
    f.className = kind === 'info' ? 'info' : '';
    f.textContent = message;
  }

  const fmtTime = (ms) => (ms === undefined || ms === null ? '' : new Date(ms).toISOString().replace('T', ' ').replace('Z', ' UTC'));
  const fmtValue = (v) => (v !== null && typeof v === 'object' ? JSON.stringify(v) : String(v));

  // ---- session --------------------------------------------------------------------------

  function loadSession() {
    try {
      const s = JSON.parse(sessionStorage.getItem(SESSION) || 'null');
      return s && typeof s.secret === 'string' && s.secret ? s : null;
    } catch (_) {
      return null;
    }
  }

  function saveSession() {
    sessionStorage.setItem(SESSION, JSON.stringify(session));
  }

  function endSession(message) {
    session = null;
    sessionStorage.removeItem(SESSION);
    if (location.hash !== '#/signin') history.replaceState(null, '', '#/signin');
    render(message);
  }

  function sessionLive() {
    // The tab's storage is the truth (a reload or another script may have ended it).
    session = loadSession();
    if (!session) return false;
    if (Date.now() > session.expires) {
      endSession('Your session expired. Sign in again.');
      return false;
    }
    return true;
  }

  // ---- the API --------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      const e = (body && body.error) || {};
      super(e.message || `HTTP ${status}`);
      this.status = status;
      this.code = e.code || '';
      this.field = e.field || '';
    }
    /** "message (field)" for the page. */
    get text() {
      return this.field ? `${this.message} (${this.field})` : this.message;
    }
  }

  /** Calls the API as the signed-in user; a refused key ends the session. */
  async function api(method, path, body, secret) {
    const token = secret || (sessionLive() ? session.secret : null);
    if (!token) throw new ApiError(401, { error: { message: 'not signed in' } });
    if (!secret) {
      session.expires = Date.now() + IDLE_MS;
      saveSession();
    }
    const init = { method, headers: { Authorization: `Bearer ${token}`, Accept: 'application/json' }, cache: 'no-store' };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, { error: { message: `the server cannot be reached (${e.message})` } });
    }
    const text = await resp.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    if (!resp.ok) {
      const err = new ApiError(resp.status, data);
      if (resp.status === 401 && !secret) endSession(`Signed out: the server refused your ${session && session.kind === 'admin' ? 'admin token' : 'key'} (${err.message}).`);
      throw err;
    }
    return data;
  }

  const qs = (params) => {
    const u = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') u.set(k, v);
    const s = u.toString();
    return s ? `?${s}` : '';
  };

  // ---- routing --------------------------------------------------------------------------

  function route() {
    const raw = location.hash.replace(/^#/, '') || '/';
    const [path, query] = raw.split('?');
    return { parts: path.split('/').filter(Boolean), params: new URLSearchParams(query || '') };
  }

  function go(hash) {
    if (location.hash === hash) render(); else location.hash = hash;
  }

  function nav() {
    const n = $('nav');
    const links = !session ? [] : session.kind === 'admin'
      ? [['#/admin/tenants', 'Tenants'], ['#/admin/attributes', 'Attributes'], ['#/admin/health', 'Health']]
      : [['#/fleet', 'Fleet'], ['#/ingest', 'Ingest']];
    const here = location.hash.split('?')[0];
    n.replaceChildren(...links.map(([href, label]) => h('a', { href, class: here.startsWith(href) ? 'active' : null }, label)));
    $('who').textContent = session ? session.label : '';
    $('signout').hidden = !session;
  }

  async function render(message) {
    const seq = ++renderSeq;
    for (const c of cleanups) c();
    cleanups = [];
    flash(message || '');
    const r = route();
    if (r.parts[0] !== 'signin') {
      const had = loadSession() !== null;
      if (!sessionLive()) {
        // An expired session was ended (and its sign-in page drawn with why) by sessionLive.
        if (!had) {
          history.replaceState(null, '', '#/signin');
          nav();
          signIn(message);
        }
        return;
      }
    }
    if (r.parts[0] === 'signin' || !session) {
      nav();
      return signIn(message);
    }
    nav();
    try {
      if (session.kind === 'admin') {
        if (r.parts[0] !== 'admin') return go('#/admin/tenants');
        if (r.parts[1] === 'tenants' && r.parts[2]) await tenantPage(Number(r.parts[2]), seq);
        else if (r.parts[1] === 'attributes') await attributesPage(seq);
        else if (r.parts[1] === 'health') await healthPage(seq);
        else await tenantsPage(r.params, seq);
      } else {
        if (r.parts[0] === 'entity' && r.parts[1]) await entityPage(Number(r.parts[1]), r.params, seq);
        else if (r.parts[0] === 'ingest') await ingestPage(seq);
        else if (r.parts[0] === 'fleet') await fleetPage(r.params, seq);
        else return go('#/fleet');
      }
    } catch (e) {
      if (seq !== renderSeq) return;
      if (e instanceof ApiError && e.status === 401) return;
      show(h('div', { class: 'panel error' }, e instanceof ApiError ? e.text : String(e)));
    }
  }

  // ---- sign in --------------------------------------------------------------------------

  function signIn(message) {
    flash('');
    const err = h('p', { id: 'signin-error', class: 'error', role: 'alert' }, message || '');
    const kind = h('select', { id: 'signin-kind', name: 'kind' },
      h('option', { value: 'tenant' }, 'Tenant API key'),
      h('option', { value: 'admin' }, 'Admin token'));
    const secret = h('input', { id: 'signin-secret', type: 'password', name: 'secret', autocomplete: 'off', required: true });
    const button = h('button', { id: 'signin-submit', class: 'primary', type: 'submit' }, 'Sign in');
    const form = h('form', {
      id: 'signin',
      onsubmit: async (ev) => {
        ev.preventDefault();
        const value = secret.value.trim();
        if (!value) { err.textContent = 'Enter a key or token.'; return; }
        button.disabled = true;
        err.textContent = '';
        try {
          let label;
          if (kind.value === 'admin') {
            await api('GET', '/v1/admin/tenants?limit=1', undefined, value);
            label = 'admin';
          } else {
            const me = await api('GET', '/v1/me', undefined, value);
            label = `tenant ${me.tenant_name}`;
          }
          session = { kind: kind.value, secret: value, label, expires: Date.now() + IDLE_MS };
          saveSession();
          secret.value = '';
          go(kind.value === 'admin' ? '#/admin/tenants' : '#/fleet');
        } catch (e) {
          const what = kind.value === 'admin' ? 'admin token' : 'key';
          err.textContent = e.status === 401
            ? `This ${what} was refused: it is wrong or has been revoked. (${e.message})`
            : e.status === 403 ? `This ${what} cannot sign in: ${e.message}` : `Sign-in failed: ${e.text}`;
        } finally {
          button.disabled = false;
        }
      },
    },
    h('label', null, 'Sign in with', kind),
    h('label', null, 'Key or token', secret),
    button, err);
    show(h('div', { class: 'panel signin' }, h('h1', null, 'Atlas console'), form,
      h('p', { class: 'muted' }, 'The key stays in this browser tab only and is forgotten when the tab closes or after 30 idle minutes.')));
    secret.focus();
  }

  // ---- fleet ----------------------------------------------------------------------------

  /** `a=1, b=x` or a JSON object → the `contains` object (values parsed as JSON when they are). */
  function parseContains(text) {
    const t = text.trim();
    if (!t) return undefined;
    if (t.startsWith('{')) {
      const v = JSON.parse(t);
      if (typeof v !== 'object' || Array.isArray(v) || v === null) throw new Error('contains: a JSON object');
      return v;
    }
    const out = {};
    for (const pair of t.split(',')) {
      const i = pair.indexOf('=');
      if (i < 1) throw new Error(`contains: "${pair.trim()}" is not name=value`);
      const k = pair.slice(0, i).trim();
      const raw = pair.slice(i + 1).trim();
      let v;
      try { v = JSON.parse(raw); } catch (_) { v = raw; }
      out[k] = v;
    }
    return out;
  }

  async function fleetPage(params, seq) {
    const type = params.get('type') || '';
    const contains = params.get('contains') || '';
    const hasKey = params.get('has_key') || '';
    const cursor = params.get('cursor') || '';
    const back = params.get('back') || '';
    const live = params.get('live') === '1';

    const typeIn = h('input', { id: 'f-type', type: 'text', value: type, placeholder: 'any', size: 12 });
    const containsIn = h('input', { id: 'f-contains', type: 'text', value: contains, placeholder: 'status="ok", priority=3', size: 28 });
    const hasKeyIn = h('input', { id: 'f-has-key', type: 'text', value: hasKey, placeholder: 'alarm', size: 12 });
    const liveIn = h('input', { id: 'f-live', type: 'checkbox', checked: live });
    const formErr = h('span', { id: 'f-error', class: 'error' });
    const filters = () => ({ type: typeIn.value.trim(), contains: containsIn.value.trim(), has_key: hasKeyIn.value.trim(), live: liveIn.checked ? '1' : '' });
    const form = h('form', {
      class: 'row panel', id: 'fleet-filter',
      onsubmit: (ev) => {
        ev.preventDefault();
        try { parseContains(containsIn.value); } catch (e) { formErr.textContent = e.message; return; }
        go(`#/fleet${qs(filters())}`);
      },
    },
    h('label', null, 'Type', typeIn),
    h('label', null, 'Hot attributes contain', containsIn),
    h('label', null, 'Has hot attribute', hasKeyIn),
    h('button', { class: 'primary', type: 'submit', id: 'f-apply' }, 'Search'),
    h('label', { class: 'inline' }, liveIn, 'Live refresh'),
    formErr);
    liveIn.addEventListener('change', () => go(`#/fleet${qs({ ...filters(), cursor, back })}`));

    const table = h('table', { id: 'fleet' });
    const pager = h('div', { class: 'pager' });
    const status = h('span', { class: 'muted', id: 'fleet-status' });
    // Entities by type: the tenant's types (the first 100), each a link to its fleet.
    const types = h('nav', { class: 'row', id: 'fleet-types' });
    show(h('h1', null, 'Fleet'), form, types, table, pager, status);
    api('GET', '/v1/entity-types?limit=100').then((page) => {
      if (seq !== renderSeq) return;
      const link = (t, label) => h('a', { href: `#/fleet${qs({ type: t, contains, has_key: hasKey })}`, class: t === type ? 'current' : '', dataset: { type: t } }, label);
      types.replaceChildren(h('span', { class: 'muted' }, 'Types:'), link('', 'all'),
        ...page.items.map((t) => link(t, t)), page.next_cursor ? h('span', { class: 'muted' }, '… (type a name to filter by another)') : '');
    }).catch(() => {});

    const load = async () => {
      let items; let next;
      const search = contains || hasKey;
      if (search) {
        let body;
        try { body = { contains: parseContains(contains) }; } catch (e) { formErr.textContent = e.message; return; }
        if (hasKey) body.has_key = hasKey;
        if (type) body.entity_type = type;
        body.limit = PAGE;
        if (cursor) body.cursor = cursor;
        const page = await api('POST', '/v1/entities/search', body);
        items = page.items.map((x) => ({ entity_id: x.entity_id, entity_type: x.entity_type, hot: x.attributes }));
        next = page.next_cursor;
      } else {
        const page = await api('GET', `/v1/entities${qs({ entity_type: type, limit: PAGE, cursor })}`);
        items = page.items.map((x) => ({ entity_id: x.entity_id, entity_type: x.entity_type, hot: x.hot_attrs, updated: x.updated_at }));
        next = page.next_cursor;
      }
      if (seq !== renderSeq) return;
      table.replaceChildren(
        h('thead', null, h('tr', null, h('th', null, 'Entity'), h('th', null, 'Type'), h('th', null, 'Hot attributes'))),
        h('tbody', null, items.map((e) => h('tr', { dataset: { entity: e.entity_id } },
          h('td', null, h('a', { href: `#/entity/${e.entity_id}`, class: 'entity-link' }, `#${e.entity_id}`)),
          h('td', null, e.entity_type),
          h('td', null, Object.entries(e.hot || {}).map(([k, v]) => h('span', { class: 'badge' }, `${k}: ${fmtValue(v)}`)))))));
      const base = { type, contains, has_key: hasKey, live: live ? '1' : '' };
      pager.replaceChildren(
        h('button', { id: 'page-first', type: 'button', disabled: !cursor, onclick: () => go(`#/fleet${qs(base)}`) }, 'First page'),
        h('button', { id: 'page-back', type: 'button', disabled: !cursor, onclick: () => history.back() }, 'Previous'),
        h('button', { id: 'page-next', type: 'button', disabled: !next, onclick: () => go(`#/fleet${qs({ ...base, cursor: next, back: cursor })}`) }, 'Next page'));
      status.textContent = `${items.length} shown${next ? ', more on the next page' : ''}${live ? ` · refreshed ${new Date().toLocaleTimeString()}` : ''}`;
      table.dataset.rows = String(items.length);
    };
    await load();
    if (live) {
      const t = setInterval(() => { load().catch((e) => { status.textContent = e.text || String(e); }); }, LIVE_MS);
      cleanups.push(() => clearInterval(t));
    }
  }

  // ---- entity ---------------------------------------------------------------------------

  async function entityPage(id, params, seq) {
    const [entity, hot, catalogue] = await Promise.all([
      api('GET', `/v1/entities/${id}`),
      api('GET', `/v1/entities/${id}/attributes`),
      api('GET', '/v1/attributes'),
    ]);
    if (seq !== renderSeq) return;
    const attrs = catalogue.items;
    const latest = await mapLimit(attrs, 8, (a) => api('GET', `/v1/entities/${id}/latest${qs({ attribute: a.attribute_name })}`)
      .then((l) => ({ a, l: l.latest })).catch(() => ({ a, l: null })));
    if (seq !== renderSeq) return;
    const withValues = latest.filter((x) => x.l);

    const hotRows = Object.entries(hot.attributes || {}).map(([k, v]) => h('tr', null,
      h('td', null, k), h('td', null, fmtValue(v)), h('td', { class: 'num' }, fmtTime(hot.ts[k]))));
    const latestRows = withValues.map(({ a, l }) => h('tr', null,
      h('td', null, a.attribute_name), h('td', { class: 'muted' }, a.data_type), h('td', null, fmtValue(l.value)), h('td', { class: 'num' }, fmtTime(l.ts))));

    const rangeName = params.get('range') || '24h';
    const from = Number(params.get('from')) || 0;
    const to = Number(params.get('to')) || 0;
    const rangeSel = h('select', {
      id: 'range',
      onchange: () => go(`#/entity/${id}${qs({ range: rangeSel.value })}`),
    }, RANGES.map(([n]) => h('option', { value: n, selected: n === rangeName && !from }, `last ${n}`)),
    from ? h('option', { value: 'zoom', selected: true }, 'zoomed') : null);
    const asTable = h('input', { id: 'as-table', type: 'checkbox' });
    const charts = h('div', { id: 'charts' });

    show(
      h('h1', null, `Entity #${entity.entity_id} `, h('span', { class: 'muted' }, entity.entity_type)),
      h('div', { class: 'grid' },
        h('div', { class: 'panel' }, h('h2', null, 'Hot attributes'),
          hotRows.length ? h('table', { id: 'hot' }, h('tbody', null, hotRows)) : h('p', { class: 'muted' }, 'none')),
        propertiesPanel(entity)),
      h('div', { class: 'panel' }, h('h2', null, 'Latest value of every attribute'),
        latestRows.length ? h('table', { id: 'latest' }, h('thead', null, h('tr', null, h('th', null, 'Attribute'), h('th', null, 'Type'), h('th', null, 'Value'), h('th', null, 'Time'))), h('tbody', null, latestRows))
          : h('p', { class: 'muted' }, 'no values yet')),
      h('div', { class: 'panel' }, h('h2', null, 'Charts'),
        h('div', { class: 'row' }, h('label', null, 'Range', rangeSel), h('label', { class: 'inline' }, asTable, 'Table view'),
          from ? h('button', { type: 'button', id: 'zoom-reset', onclick: () => go(`#/entity/${id}${qs({ range: rangeName === 'zoom' ? '24h' : rangeName })}`) }, 'Reset zoom') : null,
          h('span', { class: 'muted' }, 'Drag across a chart to zoom.')),
        charts));

    const now = Date.now();
    const span = (RANGES.find(([n]) => n === rangeName) || RANGES[2])[1];
    const win = from && to > from ? [from, to] : [now - span, now];
    const numeric = withValues.filter(({ a }) => NUMERIC.has(a.data_type)).map(({ a }) => a);
    if (!numeric.length) charts.append(h('p', { class: 'muted' }, 'No numeric attribute has values.'));
    const drawn = [];
    for (const a of numeric) {
      const box = h('div', { class: 'chart', dataset: { attribute: a.attribute_name } });
      charts.append(box);
      drawn.push(chartFor(id, a, win, box, asTable, seq, (f, t) => go(`#/entity/${id}${qs({ range: 'zoom', from: Math.round(f), to: Math.round(t) })}`)));
    }
    asTable.addEventListener('change', () => { for (const d of drawn) d.then((c) => c && c.toggle(asTable.checked)); });
    await Promise.all(drawn);
  }

  async function mapLimit(items, limit, f) {
    const out = new Array(items.length);
    let next = 0;
    const worker = async () => { while (next < items.length) { const i = next++; out[i] = await f(items[i]); } };
    await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
    return out;
  }

  function propertiesPanel(entity) {
    let version = entity.version;
    const text = h('textarea', { id: 'props', spellcheck: 'false' });
    text.value = JSON.stringify(entity.cold_attrs, null, 2);
    const msg = h('p', { id: 'props-msg', role: 'status' });
    const ver = h('span', { class: 'muted', id: 'props-version' }, `version ${version}`);
    const save = h('button', {
      id: 'props-save', class: 'primary', type: 'button',
      onclick: async () => {
        let cold;
        try { cold = JSON.parse(text.value); } catch (e) { msg.className = 'error'; msg.textContent = `Not JSON: ${e.message}`; return; }
        if (typeof cold !== 'object' || cold === null || Array.isArray(cold)) { msg.className = 'error'; msg.textContent = 'Properties must be a JSON object.'; return; }
        save.disabled = true;
        try {
          const e = await api('PATCH', `/v1/entities/${entity.entity_id}`, { cold_attrs: cold, version });
          version = e.version;
          ver.textContent = `version ${version}`;
          text.value = JSON.stringify(e.cold_attrs, null, 2);
          msg.className = 'ok';
          msg.textContent = `Saved (version ${version}).`;
        } catch (e) {
          msg.className = 'error';
          msg.textContent = e.status === 409
            ? `Not saved: someone changed this entity since you opened it (${e.message}). Reload to see their change.`
            : `Not saved: ${e.text}`;
        } finally {
          save.disabled = false;
        }
      },
    }, 'Save properties');
    return h('div', { class: 'panel' }, h('h2', null, 'Properties ', ver), text, h('div', { class: 'row' }, save), msg);
  }

  const UNIT_MS = { w: 7 * 86400e3, d: 86400e3, h: 3600e3, m: 60e3, s: 1e3, ms: 1 };
  function widthMs(w) {
    const m = /^(\d+)(ms|w|d|h|m|s)$/.exec(String(w));
    return m ? Number(m[1]) * UNIT_MS[m[2]] : Number(w) || 0;
  }

  /** Raw values when the window holds at most MAX_RAW_POINTS, else min/avg/max buckets. */
  async function chartData(id, a, [from, to]) {
    if (to - from <= 31 * 86400e3) {
      const points = [];
      let cursor = '';
      for (;;) {
        const page = await api('GET', `/v1/entities/${id}/series${qs({ attribute: a.attribute_name, from, to, limit: 1000, cursor })}`);
        for (const p of page.items) points.push([p.ts, Number(p.value)]);
        if (!page.next_cursor) return { kind: 'raw', points };
        if (points.length >= MAX_RAW_POINTS) break;
        cursor = page.next_cursor;
      }
    }
    const q = (func) => api('POST', '/v1/query', { attributes: [a.attribute_name], entity_ids: [id], from, to, fn: func, max_points: 500 });
    const [avg, min, max] = await Promise.all([q('avg'), q('min'), q('max')]);
    const s = (r) => (r.series[0] ? r.series[0].points : []);
    const lo = new Map(s(min).map((p) => [p.ts, Number(p.value)]));
    const hi = new Map(s(max).map((p) => [p.ts, Number(p.value)]));
    return {
      kind: 'buckets',
      bucket: avg.bucket,
      bucketMs: widthMs(avg.bucket),
      points: s(avg).map((p) => [p.ts, Number(p.value), lo.get(p.ts), hi.get(p.ts), p.count]),
    };
  }

  async function chartFor(id, a, win, box, asTable, seq, zoom) {
    const caption = h('div', { class: 'caption' }, `${a.attribute_name}: loading…`);
    box.append(h('h2', null, a.attribute_name), caption);
    let data;
    try {
      data = await chartData(id, a, win);
    } catch (e) {
      if (e.status !== 401) caption.textContent = `${a.attribute_name}: ${e.text || e}`;
      return null;
    }
    if (seq !== renderSeq) return null;
    const canvas = h('canvas', { width: 1000, height: 240, dataset: { attribute: a.attribute_name } });
    const table = h('div', { class: 'chart-table', hidden: true });
    box.append(canvas, table);
    const t0 = performance.now();
    drawChart(canvas, data, win);
    const ms = performance.now() - t0;
    canvas.dataset.points = String(data.points.length);
    canvas.dataset.kind = data.kind;
    canvas.dataset.renderMs = ms.toFixed(1);
    caption.textContent = data.kind === 'raw'
      ? `${data.points.length} values · drawn in ${ms.toFixed(1)} ms`
      : `${data.points.length} buckets of ${data.bucket} (line: average; band: min–max) · drawn in ${ms.toFixed(1)} ms`;
    attachZoom(canvas, win, zoom);
    const toggle = (on) => {
      table.hidden = !on;
      canvas.hidden = on;
      if (on && !table.firstChild) table.append(pointsTable(data));
    };
    toggle(asTable.checked);
    return { toggle };
  }

  function pointsTable(data) {
    const rows = data.points.slice(0, 2000);
    const head = data.kind === 'raw' ? ['Time', 'Value'] : ['Bucket start', 'Average', 'Min', 'Max', 'Values'];
    return h('div', null,
      data.points.length > rows.length ? h('p', { class: 'muted' }, `First ${rows.length} of ${data.points.length} rows.`) : null,
      h('table', { class: 'points' }, h('thead', null, h('tr', null, head.map((x) => h('th', null, x)))),
        h('tbody', null, rows.map((p) => h('tr', null, h('td', { class: 'num' }, fmtTime(p[0])), p.slice(1).map((v) => h('td', { class: 'num' }, v === undefined ? '' : String(v))))))));
  }

  function drawChart(canvas, data, [from, to]) {
    const ctx = canvas.getContext('2d');
    const W = canvas.width; const H = canvas.height;
    const L = 60; const R = 10; const T = 10; const B = 24;
    ctx.clearRect(0, 0, W, H);
    ctx.font = '11px system-ui, sans-serif';
    ctx.fillStyle = '#6b7385';
    const pts = data.points;
    if (!pts.length) { ctx.fillText('no values in this range', L + 10, H / 2); return; }
    let lo = Infinity; let hi = -Infinity;
    for (const p of pts) {
      const a = p[2] !== undefined ? p[2] : p[1]; const b = p[3] !== undefined ? p[3] : p[1];
      if (a < lo) lo = a; if (b > hi) hi = b;
    }
    if (lo === hi) { lo -= 1; hi += 1; }
    const x = (t) => L + ((t - from) / (to - from)) * (W - L - R);
    const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
    ctx.strokeStyle = '#dde1e8';
    ctx.beginPath();
    for (let i = 0; i <= 4; i++) {
      const v = lo + ((hi - lo) * i) / 4;
      const yy = Math.round(y(v)) + 0.5;
      ctx.moveTo(L, yy); ctx.lineTo(W - R, yy);
      ctx.fillText(Number(v.toPrecision(4)).toString(), 4, yy + 4);
    }
    ctx.stroke();
    for (let i = 0; i <= 4; i++) {
      const t = from + ((to - from) * i) / 4;
      const label = new Date(t).toISOString().slice(to - from > 2 * 86400e3 ? 0 : 11, to - from > 2 * 86400e3 ? 10 : 16);
      ctx.fillText(label, Math.min(x(t), W - R - 60), H - 6);
    }
    const half = data.bucketMs ? data.bucketMs / 2 : 0;
    if (data.kind === 'buckets') {
      ctx.fillStyle = 'rgba(31,111,235,0.18)';
      ctx.beginPath();
      pts.forEach((p, i) => { const xx = x(p[0] + half); if (i) ctx.lineTo(xx, y(p[3])); else ctx.moveTo(xx, y(p[3])); });
      for (let i = pts.length - 1; i >= 0; i--) ctx.lineTo(x(pts[i][0] + half), y(pts[i][2]));
      ctx.closePath();
      ctx.fill();
    }
    ctx.strokeStyle = '#1f6feb';
    ctx.lineWidth = 1.25;
    ctx.beginPath();
    pts.forEach((p, i) => { const xx = x(p[0] + half); const yy = y(p[1]); if (i) ctx.lineTo(xx, yy); else ctx.moveTo(xx, yy); });
    ctx.stroke();
  }

  function attachZoom(canvas, [from, to], zoom) {
    let start = null;
    const at = (ev) => {
      const r = canvas.getBoundingClientRect();
      const px = ((ev.clientX - r.left) / r.width) * canvas.width;
      const frac = Math.min(1, Math.max(0, (px - 60) / (canvas.width - 70)));
      return from + frac * (to - from);
    };
    canvas.addEventListener('mousedown', (ev) => { start = at(ev); });
    canvas.addEventListener('mouseup', (ev) => {
      if (start === null) return;
      const end = at(ev);
      const [a, b] = start < end ? [start, end] : [end, start];
      start = null;
      if (b - a > 1000) zoom(a, b);
    });
  }

  // ---- ingest ---------------------------------------------------------------------------

  // The last hour's figures of GET /v1/ingest-stats (summed over every server): the rate of
  // the last full minute, refusals by reason, latency, and the newest minutes.
  function ingestFigures(st) {
    const full = Math.floor(Date.now() / 60000) * 60000 - 60000;
    const last = st.per_minute.find((m) => Date.parse(m.minute) === full);
    const lat = (l) => (l ? `mean ${l.mean_ms} ms · p50 ≤ ${l.p50_ms} ms · p99 ≤ ${l.p99_ms} ms` : 'no requests');
    const reasons = Object.entries(st.refused).sort((a, b) => b[1] - a[1]);
    return [
      h('h2', null, `Last ${st.minutes} minutes, all servers`),
      h('div', { class: 'kv' },
        h('span', null, 'Values stored per second (last full minute)'), h('strong', { id: 'ingest-rate' }, ((last ? last.stored : 0) / 60).toFixed(1)),
        h('span', null, 'Values stored'), h('span', { id: 'ingest-stored' }, String(st.stored)),
        h('span', null, 'Requests acknowledged'), h('span', null, String(st.requests)),
        h('span', null, 'Latency of acknowledged requests'), h('span', { id: 'ingest-latency' }, lat(st.latency))),
      h('h3', null, 'Values refused, by reason'),
      reasons.length
        ? h('table', { id: 'ingest-refused' },
          h('thead', null, h('tr', null, h('th', null, 'Reason'), h('th', null, 'Values'))),
          h('tbody', null, reasons.map(([r, n]) => h('tr', null, h('td', null, r), h('td', { class: 'num' }, String(n))))))
        : h('p', { class: 'muted', id: 'ingest-refused-none' }, 'none'),
      h('h3', null, 'Newest minutes'),
      h('table', { id: 'ingest-minutes' },
        h('thead', null, h('tr', null, ['Minute', 'Stored', 'Refused', 'Requests', 'p99 ≤ ms'].map((x) => h('th', null, x)))),
        h('tbody', null, st.per_minute.slice(-10).reverse().map((m) => h('tr', null,
          h('td', { class: 'num' }, fmtTime(Date.parse(m.minute))),
          h('td', { class: 'num' }, String(m.stored)),
          h('td', { class: 'num' }, String(Object.values(m.refused).reduce((a, b) => a + b, 0))),
          h('td', { class: 'num' }, String(m.requests)),
          h('td', { class: 'num' }, m.latency ? String(m.latency.p99_ms) : ''))))),
    ];
  }

  async function ingestPage(seq) {
    const figures = h('div', { class: 'panel', id: 'ingest-figures' });
    const box = h('div', { class: 'panel', id: 'ingest' });
    const letters = h('div', { class: 'panel', id: 'dead' });
    show(h('h1', null, 'Ingest'), figures, box, letters);
    const load = async () => {
      const [me, st] = await Promise.all([
        api('GET', '/v1/me'),
        api('GET', '/v1/ingest-stats?minutes=60').catch((e) => { if (e.status === 503) return null; throw e; }),
      ]);
      if (seq !== renderSeq) return;
      figures.replaceChildren(...(st ? ingestFigures(st)
        : [h('p', { class: 'muted', id: 'ingest-figures-none' }, 'Ingest figures are unavailable: the server keeps them in Redis, which is not answering.')]));
      const today = me.usage.values_today;
      const lim = (v) => (v === null || v === undefined || v === 0 ? 'no limit' : String(v));
      box.replaceChildren(h('h2', null, 'Usage and quotas'), h('div', { class: 'kv' },
        h('span', null, 'Values charged today (UTC)'), h('span', { id: 'ingest-today' }, today === null ? 'unknown (Redis unavailable)'
          : (me.limits.max_values_per_day ? String(today) : 'not counted (no daily quota)')),
        h('span', null, 'Daily quota'), h('span', null, lim(me.limits.max_values_per_day)),
        h('span', null, 'Values stored'), h('span', null, String(me.usage.stored_values)),
        h('span', null, 'Stored-values quota'), h('span', null, lim(me.limits.max_stored_values)),
        h('span', null, 'Entities'), h('span', null, `${me.usage.entities} of ${lim(me.limits.max_entities)}`)),
      h('p', { class: 'muted' }, `Refreshed every ${LIVE_MS / 1000} s.`));
      const dead = await api('GET', '/v1/dead-letters?limit=20');
      if (seq !== renderSeq) return;
      letters.replaceChildren(h('h2', null, 'Dead letters (newest 20): readings acknowledged but not stored'),
        dead.items.length
          ? h('table', { id: 'dead-letters' },
            h('thead', null, h('tr', null, ['Failed', 'Entity', 'Attribute', 'Value', 'Event time', 'Reason'].map((x) => h('th', null, x)))),
            h('tbody', null, dead.items.map((d) => h('tr', null,
              h('td', { class: 'num' }, fmtTime(Date.parse(d.failed_at))),
              h('td', null, d.entity_id === null ? '' : h('a', { href: `#/entity/${d.entity_id}` }, `#${d.entity_id}`)),
              h('td', null, d.attribute || ''), h('td', null, d.value === null ? '' : d.value),
              h('td', { class: 'num' }, d.ingested_at ? fmtTime(Date.parse(d.ingested_at)) : ''),
              h('td', null, d.reason)))))
          : h('p', { class: 'muted', id: 'dead-letters-none' }, 'none'));
    };
    await load();
    const t = setInterval(() => { load().catch(() => {}); }, LIVE_MS);
    cleanups.push(() => clearInterval(t));
  }

  // ---- admin ----------------------------------------------------------------------------

  async function tenantsPage(params, seq) {
    const cursor = params.get('cursor') || '';
    const page = await api('GET', `/v1/admin/tenants${qs({ limit: PAGE, cursor })}`);
    if (seq !== renderSeq) return;
    const name = h('input', { id: 'new-tenant', type: 'text', placeholder: 'tenant name', required: true });
    const msg = h('span', { id: 'tenant-msg', class: 'error' });
    const form = h('form', {
      class: 'row panel',
      onsubmit: async (ev) => {
        ev.preventDefault();
        try {
          const t = await api('POST', '/v1/admin/tenants', { tenant_name: name.value.trim() });
          go(`#/admin/tenants/${t.tenant_id}`);
        } catch (e) { msg.textContent = e.text; }
      },
    }, h('label', null, 'New tenant', name), h('button', { class: 'primary', type: 'submit', id: 'create-tenant' }, 'Create'), msg);
    const rows = page.items.map((t) => h('tr', { dataset: { tenant: t.tenant_id } },
      h('td', null, h('a', { href: `#/admin/tenants/${t.tenant_id}` }, t.tenant_name)),
      h('td', { class: 'num' }, String(t.tenant_id)),
      h('td', null, t.is_active ? 'active' : h('span', { class: 'error' }, 'deactivated')),
      h('td', null, h('button', {
        type: 'button', class: 'toggle-tenant',
        onclick: async () => {
          try { await api('POST', `/v1/admin/tenants/${t.tenant_id}/${t.is_active ? 'deactivate' : 'activate'}`); render(); } catch (e) { msg.textContent = e.text; }
        },
      }, t.is_active ? 'Deactivate' : 'Activate'))));
    show(h('h1', null, 'Tenants'), form,
      h('table', { id: 'tenants' }, h('thead', null, h('tr', null, ['Name', 'Id', 'State', ''].map((x) => h('th', null, x)))), h('tbody', null, rows)),
      h('div', { class: 'pager' },
        h('button', { type: 'button', disabled: !cursor, onclick: () => history.back() }, 'Previous'),
        h('button', { type: 'button', disabled: !page.next_cursor, onclick: () => go(`#/admin/tenants${qs({ cursor: page.next_cursor })}`) }, 'Next page')));
  }

  async function tenantPage(id, seq) {
    const [tenant, keys] = await Promise.all([api('GET', `/v1/admin/tenants/${id}`), api('GET', `/v1/admin/tenants/${id}/keys`)]);
    if (seq !== renderSeq) return;
    const name = h('input', { id: 'key-name', type: 'text', placeholder: 'key name', required: true });
    const out = h('div', { id: 'key-out' });
    const form = h('form', {
      class: 'row',
      onsubmit: async (ev) => {
        ev.preventDefault();
        try {
          const k = await api('POST', `/v1/admin/tenants/${id}/keys`, { name: name.value.trim() });
          await tenantPage(id, seq);
          $('key-out').replaceChildren(h('p', null, 'The new key, shown this once — copy it now:'), h('div', { class: 'secret', id: 'new-key' }, k.secret));
        } catch (e) { out.replaceChildren(h('p', { class: 'error' }, e.text)); }
      },
    }, h('label', null, 'Issue a key', name), h('button', { class: 'primary', type: 'submit', id: 'issue-key' }, 'Issue'));
    const rows = keys.items.map((k) => h('tr', { dataset: { key: k.key_id } },
      h('td', null, k.name), h('td', null, h('code', null, `${k.prefix}…`)), h('td', { class: 'num' }, fmtTime(Date.parse(k.created_at))),
      h('td', null, k.revoked_at ? h('span', { class: 'error' }, `revoked ${fmtTime(Date.parse(k.revoked_at))}`) : h('button', {
        type: 'button', class: 'revoke-key',
        onclick: async () => {
          try { await api('DELETE', `/v1/admin/tenants/${id}/keys/${k.key_id}`); await tenantPage(id, seq); } catch (e) { out.replaceChildren(h('p', { class: 'error' }, e.text)); }
        },
      }, 'Revoke'))));
    show(h('p', null, h('a', { href: '#/admin/tenants' }, '← Tenants')),
      h('h1', null, `Tenant ${tenant.tenant_name} `, h('span', { class: 'muted' }, `#${tenant.tenant_id} · ${tenant.is_active ? 'active' : 'deactivated'}`)),
      h('div', { class: 'panel' }, h('h2', null, 'API keys'), form, out,
        h('table', { id: 'keys' }, h('thead', null, h('tr', null, ['Name', 'Prefix', 'Created', ''].map((x) => h('th', null, x)))), h('tbody', null, rows))));
  }

  async function attributesPage(seq) {
    const list = await api('GET', '/v1/admin/attributes');
    if (seq !== renderSeq) return;
    const msg = h('p', { id: 'attr-msg', role: 'status' });
    const name = h('input', { id: 'attr-name', type: 'text', required: true, placeholder: 'temperature' });
    const type = h('select', { id: 'attr-type' }, ['decimal', 'integer', 'string', 'boolean', 'date', 'timestamp', 'json'].map((t) => h('option', { value: t }, t)));
    const hot = h('input', { id: 'attr-hot', type: 'checkbox' });
    const indexed = h('input', { id: 'attr-indexed', type: 'checkbox' });
    const form = h('form', {
      class: 'row panel',
      onsubmit: async (ev) => {
        ev.preventDefault();
        try {
          await api('POST', '/v1/admin/attributes', { attribute_name: name.value.trim(), data_type: type.value, is_hot: hot.checked, is_indexed: indexed.checked });
          await attributesPage(seq);
          $('attr-msg').className = 'ok';
          $('attr-msg').textContent = `Defined ${name.value.trim()}.`;
        } catch (e) { msg.className = 'error'; msg.textContent = e.text; }
      },
    }, h('label', null, 'Name', name), h('label', null, 'Type', type), h('label', { class: 'inline' }, hot, 'hot'), h('label', { class: 'inline' }, indexed, 'indexed'),
    h('button', { class: 'primary', type: 'submit', id: 'define-attr' }, 'Define'));
    const rows = list.items.map((a) => {
      const flip = h('button', {
        type: 'button', class: 'flip-hot',
        onclick: async () => {
          flip.disabled = true;
          msg.className = 'muted';
          msg.textContent = a.is_hot ? `Removing ${a.attribute_name} from every entity's hot attributes…` : `Backfilling ${a.attribute_name} into every entity's hot attributes…`;
          const t0 = performance.now();
          // Making it hot backfills batch by batch: show the server's progress report (any
          // report newer than the one there was before) while the change runs.
          const backfill = `/v1/admin/attributes/${a.attribute_id}/backfill`;
          const report = () => api('GET', backfill).catch(() => null);
          const before = a.is_hot ? null : await report();
          let polling = !a.is_hot;
          const poll = async () => {
            while (polling) {
              await new Promise((r) => setTimeout(r, 500));
              const r = polling ? await report() : null;
              if (!polling || !r || (before && r.started_at === before.started_at)) continue;
              const pct = r.entities_total ? Math.floor((100 * r.entities_done) / r.entities_total) : 100;
              msg.textContent = `Backfilling ${a.attribute_name}: ${r.entities_done} of ${r.entities_total} entities (${pct} %), ${r.projections_changed} projections changed…`;
            }
          };
          const polled = poll();
          try {
            await api('PATCH', `/v1/admin/attributes/${a.attribute_id}`, { is_hot: !a.is_hot });
            polling = false;
            await polled;
            const done = a.is_hot ? null : await report();
            await attributesPage(seq);
            $('attr-msg').className = 'ok';
            const counts = done && done.state === 'done' ? `: ${done.entities_done} entities looked at, ${done.projections_changed} projections changed` : '';
            $('attr-msg').textContent = `${a.attribute_name} is ${a.is_hot ? 'no longer' : 'now'} hot (projection re-derived in ${((performance.now() - t0) / 1000).toFixed(1)} s${counts}).`;
          } catch (e) { polling = false; msg.className = 'error'; msg.textContent = e.text; flip.disabled = false; }
        },
      }, a.is_hot ? 'Make cold' : 'Make hot');
      return h('tr', { dataset: { attribute: a.attribute_name } },
        h('td', null, a.attribute_name), h('td', { class: 'num' }, String(a.attribute_id)), h('td', null, a.data_type),
        h('td', null, a.is_hot ? 'hot' : ''), h('td', null, a.is_indexed ? 'indexed' : ''), h('td', null, flip));
    });
    show(h('h1', null, 'Attributes'), form, msg,
      h('table', { id: 'attributes' }, h('thead', null, h('tr', null, ['Name', 'Id', 'Type', 'Hot', 'Indexed', ''].map((x) => h('th', null, x)))), h('tbody', null, rows)));
  }

  async function healthPage(seq) {
    const box = h('div', { id: 'health' });
    show(h('h1', null, 'Cluster health'), box);
    const load = async () => {
      const s = await api('GET', '/v1/admin/status');
      if (seq !== renderSeq) return;
      const up = (x) => (x && x.state === 'up' ? h('span', { class: 'ok' }, 'up') : h('span', { class: 'error' }, x ? x.state || 'down' : 'unknown'));
      const firing = (s.alerts || []).filter((a) => a.firing);
      box.replaceChildren(
        h('div', { class: 'grid' },
          h('div', { class: 'panel' }, h('h2', null, 'Databases'), h('div', { class: 'kv' },
            h('span', null, 'primary'), up(s.primary),
            (s.replicas || []).flatMap((r, i) => [h('span', null, `replica ${i + 1}`), h('span', null, up(r), r.lag_s === null || r.lag_s === undefined ? '' : ` · lag ${Number(r.lag_s).toFixed(2)} s`)]))),
          h('div', { class: 'panel' }, h('h2', null, 'Redis'), h('div', { class: 'kv' },
            h('span', null, 'state'), up(s.redis),
            h('span', null, 'hit rate'), h('span', null, s.redis && s.redis.hit_rate !== undefined && s.redis.hit_rate !== null ? `${(s.redis.hit_rate * 100).toFixed(1)} %` : '—'))),
          h('div', { class: 'panel' }, h('h2', null, 'Staging'), h('div', { class: 'kv' },
            h('span', null, 'backlog rows'), h('span', { id: 'staging-rows' }, s.staging ? String(s.staging.rows) : '—'),
            h('span', null, 'oldest'), h('span', null, s.staging && s.staging.oldest_age_s !== null ? `${s.staging.oldest_age_s} s` : '—'))),
          h('div', { class: 'panel' }, h('h2', null, 'Partitions'), h('div', { class: 'kv' },
            h('span', null, 'time partitions'), h('span', null, s.partitions ? String(s.partitions.time_partitions) : '—'),
            h('span', null, 'covered until'), h('span', null, s.partitions && s.partitions.covered_until ? s.partitions.covered_until.slice(0, 10) : '—'))),
          h('div', { class: 'panel' }, h('h2', null, 'CDC'), h('div', { class: 'kv' },
            h('span', null, 'slot'), h('span', null, s.cdc && s.cdc.slot && s.cdc.slot.exists ? `${s.cdc.slot_name} · ${s.cdc.slot.active ? 'active' : 'inactive'} · retains ${s.cdc.slot.retained_wal_bytes} B of WAL` : 'no slot')))),
        h('div', { class: 'panel' }, h('h2', null, `Alerts firing: ${firing.length}`),
          h('table', { id: 'alerts' }, h('tbody', null, (s.alerts || []).map((a) => h('tr', null,
            h('td', null, a.alert), h('td', null, a.firing ? h('span', { class: 'error' }, 'firing') : h('span', { class: 'ok' }, 'ok')), h('td', null, a.message))))))
      );
    };
    await load();
    const t = setInterval(() => { load().catch(() => {}); }, LIVE_MS * 2);
    cleanups.push(() => clearInterval(t));
  }

  // ---- start ----------------------------------------------------------------------------

  window.addEventListener('hashchange', () => render());
  $('signout').addEventListener('click', () => endSession('Signed out.'));
  // Idle expiry while the page sits open.
  setInterval(() => { if (session) sessionLive(); }, 10000);
  render();
})();
