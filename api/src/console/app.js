// surge operator console: plain ES modules, no dependencies, served from the binary.
// Talks to the same origin's /v1 API with the Bearer token kept in sessionStorage.
// Every text the user reads comes from i18n.js (zh-CN / en).

import { DICTS, LANGS, code, initialLang, lang, missed, missingKeys, setLang, t, translatePage } from './i18n.js';

const $ = (sel, root = document) => root.querySelector(sel);

// ------------------------------------------------------------------ small helpers

/** Build an element: h('td', {class: 'num'}, 'text', childNode, ...). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** Replace an element's children, skipping null/false and flattening arrays. */
function fill(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

const SVG_NS = 'http://www.w3.org/2000/svg';
function s(tag, attrs = {}, text) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

const money = (minor) => (Number(minor || 0) / 100).toFixed(2);

/** An instant for people, in the browser's time zone or in `timeZone` (IANA). */
function when(iso, timeZone) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const opts = { year: 'numeric', month: 'short', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit' };
  try {
    return d.toLocaleString(lang(), timeZone ? { ...opts, timeZone } : opts);
  } catch {
    return d.toLocaleString(lang(), opts); // a zone this browser does not know
  }
}
const clock = (iso) => {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? '' : d.toLocaleTimeString(lang(), { hour12: false });
};

/** `2026-11-30T18:05:00` (a datetime-local value) for an instant, in local time. */
function toLocalInput(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

// The codes the API speaks; their names live in i18n.js under the same prefix.
const CODES = {
  status: ['reserved', 'confirmed', 'picking', 'packed', 'shipped', 'delivered', 'completed', 'expired', 'cancelled', 'returned'],
  payment: ['unpaid', 'paid', 'partially_refunded', 'refund_due', 'refunded'],
  reason: ['customer_request', 'out_of_stock', 'payment_failed', 'fraud_suspected', 'system_error', 'other'],
  hold: ['review', 'address_check', 'fraud_check', 'customer_request', 'other'],
  kind: ['intercepted', 'refused', 'customer_return'],
  ledgerKind: ['charge', 'refund', 'reversal'],
  group: ['day', 'hour', 'sku', 'customer', 'reason', 'channel'],
};
const STOREFRONT_REASONS = ['customer_request', 'payment_failed'];
const ADDRESS_FIELDS = ['name', 'phone', 'province', 'city', 'district', 'line1', 'postal_code'];

/** Fill every `<select data-codes=prefix>` with the translated codes, keeping its value. */
function fillCodeSelects() {
  for (const sel of document.querySelectorAll('select[data-codes]')) {
    const value = sel.value;
    const opts = CODES[sel.dataset.codes].map((c) => h('option', { value: c, text: code(sel.dataset.codes, c) }));
    fill(sel, sel.dataset.any ? h('option', { value: '', text: t('msg.any') }) : null, opts);
    sel.value = value;
    if (sel.selectedIndex < 0) sel.selectedIndex = 0;
  }
}

// ------------------------------------------------------------------ auth and API

const store = {
  get token() { return sessionStorage.getItem('surge.token') || ''; },
  set token(v) { v ? sessionStorage.setItem('surge.token', v) : sessionStorage.removeItem('surge.token'); },
  get actor() { return sessionStorage.getItem('surge.actor') || ''; },
  set actor(v) { v ? sessionStorage.setItem('surge.actor', v) : sessionStorage.removeItem('surge.actor'); },
};

/**
 * An API failure in plain words: the translated title of a known problem code, then
 * the problem document's `detail` as the server gave it.
 */
class ApiError extends Error {
  constructor(status, problem) {
    const p = problem || {};
    const known = p.code && `problem.${p.code}` in DICTS[lang()];
    const detail = p.detail || (known ? '' : p.title) || '';
    let msg;
    if (known) msg = detail ? t('msg.titleDetail', { title: t(`problem.${p.code}`), detail }) : t(`problem.${p.code}`);
    else msg = detail || t('msg.answered', { status });
    super(msg);
    this.status = status;
    this.code = p.code || '';
    this.problem = p;
  }
}

function headers(extra = {}) {
  const hd = { Accept: 'application/json', ...extra };
  if (store.token) hd.Authorization = `Bearer ${store.token}`;
  if (store.actor) hd['X-Actor'] = store.actor;
  return hd;
}

/** 128 random bits in hex (crypto.randomUUID needs a secure context; this does not). */
function newIdempotencyKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return [...bytes].map((b) => b.toString(16).padStart(2, '0')).join('');
}

/** The Idempotency-Key of `request` (any JSON value) in `keys`: made the first time
 * it is sent, the same for each resend of the same request. */
function keyFor(keys, request) {
  const k = JSON.stringify(request);
  if (!keys.has(k)) keys.set(k, newIdempotencyKey());
  return keys.get(k);
}

/** Forget `request`'s key: it was answered, so sending it again is a new request. */
function forgetKey(keys, request) {
  keys.delete(JSON.stringify(request));
}

async function api(method, path, body, { quiet401 = false, idempotencyKey = '' } = {}) {
  let res;
  const extra = body === undefined ? {} : { 'Content-Type': 'application/json' };
  if (idempotencyKey) extra['Idempotency-Key'] = idempotencyKey;
  try {
    res = await fetch(path, {
      method,
      headers: headers(extra),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, { detail: t('msg.unreachable', { msg: e.message }) });
  }
  const text = await res.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = { detail: text.slice(0, 300) }; }
  }
  if (!res.ok) {
    const err = new ApiError(res.status, data);
    if (res.status === 401 && !quiet401) needToken(store.token ? () => t('auth.refused', { msg: err.message }) : () => t('auth.requires'));
    throw err;
  }
  return data;
}

/**
 * Download what a GET answers (an export) under `name`: a plain link cannot send the
 * Authorization header, so the file is fetched and handed to the browser as a blob.
 */
async function download(path, name) {
  let res;
  try {
    res = await fetch(path, { headers: headers({ Accept: 'text/csv' }) });
  } catch (e) {
    throw new ApiError(0, { detail: t('msg.unreachable', { msg: e.message }) });
  }
  if (!res.ok) {
    let problem = null;
    try { problem = await res.json(); } catch { /* not JSON */ }
    throw new ApiError(res.status, problem);
  }
  const url = URL.createObjectURL(await res.blob());
  const a = h('a', { href: url, download: name, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
  notice(t('orders.exported', { file: name }));
}

const access = {
  role: null, // 'admin' | 'operator' | 'viewer' | 'storefront' | null (no valid token)
  open: false, // no token needed
  get canRead() { return ['viewer', 'operator', 'admin'].includes(this.role); },
  get canStorefront() { return ['storefront', 'operator', 'admin'].includes(this.role); },
  get canOperate() { return ['operator', 'admin'].includes(this.role); },
};

/**
 * The API has no "who am I" endpoint, so the role is inferred with harmless probes:
 * a read that only readers may do, then a stock adjustment and a SKU definition with
 * bodies no SKU can take (no `delta`; a negative `on_hand`). Auth is checked before
 * the body, so a role that may not answers 403 and a role that may answers 400 for
 * the body: nothing changes either way, whatever SKUs exist. Only such a refusal
 * says the role may: an answer that says nothing of the role (the server
 * unreachable, a 5xx) fails the check rather than passing it.
 */
async function probeRole() {
  const allowed = async (method, path, body) => {
    try {
      await api(method, path, body, { quiet401: true });
      return true;
    } catch (e) {
      if (e.status === 401) throw e;
      if (e.status === 403) return false;
      // Only the server's refusal of the body says the role may (a proxy's 404 or
      // 405 says nothing of it).
      if (e.status === 400 && e.code === 'validation_failed') return true;
      throw e;
    }
  };
  try {
    const reader = await allowed('GET', '/v1/stats?top=1');
    if (!reader) return 'storefront';
    const probe = '/v1/skus/' + encodeURIComponent('console-role-probe');
    if (!(await allowed('POST', `${probe}/adjustments`, {}))) return 'viewer';
    if (!(await allowed('PUT', probe, { on_hand: -1 }))) return 'operator';
    return 'admin';
  } catch (e) {
    if (e.status === 401) return null;
    throw e;
  }
}

let accessChecked = false;
let accessRetry = null; // the timer of the next check after one that failed

/** Milliseconds between checks of the token's role while they fail. */
const ACCESS_RETRY_MS = 3000;

async function refreshAccess() {
  clearTimeout(accessRetry);
  accessRetry = null;
  accessChecked = false;
  $('#role').textContent = t('auth.checking');
  let role;
  try {
    role = await probeRole();
  } catch (e) {
    // Unknown is no access: the last role known may be another token's, and the
    // server may be anyone's to answer later. Checked again until it answers.
    access.role = null;
    access.open = false;
    document.body.dataset.role = 'none';
    $('#role').textContent = t('auth.unknown');
    showError(e);
    accessRetry = setTimeout(async () => {
      await refreshAccess();
      if (access.role) {
        live.restart();
        route();
      }
    }, ACCESS_RETRY_MS);
    return;
  }
  access.role = role;
  access.open = role === 'admin' && !store.token;
  accessChecked = true;
  document.body.dataset.role = role || 'none';
  renderRole();
  if (!role) needToken(store.token ? () => t('auth.notKnown') : () => t('auth.requires'));
}

function renderRole() {
  const roleEl = $('#role');
  if (accessChecked) {
    const role = access.role;
    roleEl.replaceChildren();
    if (!role) {
      roleEl.append(t('auth.noValid'), h('b', { text: t('auth.noAccess') }));
    } else {
      roleEl.append(access.open ? t('auth.open') : t('auth.role'),
        h('b', { id: 'role-name', 'data-testid': 'role-name', 'data-role': role, text: code('role', role) }),
        `: ${t(`roleText.${role}`)}.`);
      roleEl.title = t('auth.inferred');
    }
  }
  $('#token-toggle').textContent = store.token ? t('auth.changeToken') : t('auth.token');
}

let tokenWhy = null; // the token form's explanation, a function so that it can be re-translated
function needToken(why) {
  const form = $('#token-form');
  tokenWhy = why;
  $('#token-why').textContent = t('auth.whyPaste', { why: why() });
  if (form.hidden) {
    form.hidden = false;
    $('#token-toggle').setAttribute('aria-expanded', 'true');
    $('#token-input').focus();
  }
}

function setupAuth() {
  const form = $('#token-form');
  $('#actor-input').value = store.actor;
  $('#token-toggle').addEventListener('click', () => {
    form.hidden = !form.hidden;
    $('#token-toggle').setAttribute('aria-expanded', String(!form.hidden));
    if (!form.hidden) $('#token-input').focus();
  });
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const token = $('#token-input').value.trim();
    const actor = $('#actor-input').value.trim();
    if (actor && !/^[!-~]+$/.test(actor)) {
      showError(t('auth.nameBad'));
      return;
    }
    if (token) store.token = token;
    store.actor = actor;
    $('#token-input').value = '';
    hideError();
    await refreshAccess();
    if (access.role) {
      form.hidden = true;
      $('#token-toggle').setAttribute('aria-expanded', 'false');
      live.restart();
      route();
      notice(t('auth.using', { role: code('role', access.role) }));
    }
  });
  $('#token-clear').addEventListener('click', async () => {
    store.token = '';
    $('#token-input').value = '';
    await refreshAccess();
    live.restart();
    route();
  });
}

// ------------------------------------------------------------------ language

function setupLanguage() {
  const sel = $('#lang-select');
  fill(sel, LANGS.map(([value, name]) => h('option', { value, lang: value, text: name })));
  sel.value = lang();
  sel.addEventListener('change', () => {
    setLang(sel.value, { remember: true });
    applyLanguage();
  });
}

/** Put every text on screen into the current language: the static page, then the views. */
function applyLanguage() {
  $('#notice').hidden = true; // a passing message, in the old language
  translatePage();
  fillCodeSelects();
  $('#lang-select').value = lang();
  renderRole();
  if (tokenWhy !== null) $('#token-why').textContent = t('auth.whyPaste', { why: tokenWhy() });
  live.renderState();
  renderTicker();
  drawCancels(lastCancels);
  drawRates();
  // The order on screen is redrawn at once from what is known; the route reloads it.
  if (current && !$('#view-order').hidden && $('#view-order').dataset.orderId === current.id) renderOrder(current);
  route({ keepMessages: true });
}

// The browser test checks the dictionaries through this.
window.surgeI18n = {
  missingKeys,
  missed: () => [...missed],
  lang,
};

// ------------------------------------------------------------------ messages

function showError(err) {
  // A missing or refused token is explained by the token form itself.
  if (err && err.status === 401 && !$('#token-form').hidden) return;
  const msg = typeof err === 'string' ? err : err.message;
  $('#error-text').textContent = msg;
  $('#error').hidden = false;
}
function hideError() { $('#error').hidden = true; }
let noticeTimer;
function notice(msg) {
  const el = $('#notice');
  el.textContent = msg;
  el.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { el.hidden = true; }, 6000);
}

// ------------------------------------------------------------------ routing

const VIEWS = { orders: 'nav-orders', order: 'nav-orders', stock: 'nav-stock', ledger: 'nav-ledger', stats: 'nav-stats' };

function route({ keepMessages = false } = {}) {
  const hash = location.hash || '#/orders';
  const [path, query = ''] = hash.slice(1).split('?');
  const parts = path.split('/').filter(Boolean);
  let view = parts[0] in VIEWS ? parts[0] : 'orders';
  if (view === 'order' && !parts[1]) view = 'orders';
  for (const v of document.querySelectorAll('.view')) v.hidden = true;
  for (const a of document.querySelectorAll('.top nav a')) a.removeAttribute('aria-current');
  if (!keepMessages) {
    hideError();
    $('#notice').hidden = true;
  }
  $(`#view-${view}`).hidden = false;
  $(`#${VIEWS[view]}`).setAttribute('aria-current', 'page');
  const params = new URLSearchParams(query);
  if (view === 'order') {
    $('#view-order').dataset.orderId = decodeURIComponent(parts[1]);
    showOrder(decodeURIComponent(parts[1]), { focus: !keepMessages });
  }
  else if (view === 'stock') loadStock();
  else if (view === 'ledger') { fillForm($('#ledger-search'), params); loadLedger(params); }
  else if (view === 'stats') showStats(params);
  else { fillForm($('#order-search'), params); searchOrders(params); }
}

/** Set a search form's fields from URL parameters (instants shown in local time). */
function fillForm(form, params) {
  for (const input of form.elements) {
    if (!input.name) continue;
    const v = params.get(input.name) || '';
    if (input.type === 'checkbox') input.checked = v === 'true';
    else if (input.type === 'datetime-local') input.value = v ? toLocalInput(v) : '';
    else input.value = v;
    if (input.tagName === 'SELECT' && input.selectedIndex < 0) input.selectedIndex = 0;
  }
}

/** The URL parameters a search form stands for (instants as RFC 3339 UTC). */
function formParams(form) {
  const params = new URLSearchParams();
  for (const input of form.elements) {
    if (!input.name) continue;
    if (input.type === 'checkbox') {
      if (input.checked) params.set(input.name, 'true');
      continue;
    }
    let v = input.value.trim();
    if (!v) continue;
    if (input.type === 'datetime-local') v = new Date(v).toISOString();
    params.set(input.name, v);
  }
  return params;
}

function go(target) {
  if (location.hash === target) route();
  else location.hash = target;
}

// ------------------------------------------------------------------ orders list

const ordersState = { params: new URLSearchParams(), next: null, seq: 0 };

function setupSearch() {
  const form = $('#order-search');
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const params = formParams(form);
    go(`#/orders${params.toString() ? '?' + params : ''}`);
  });
  form.addEventListener('reset', () => setTimeout(() => { location.hash = '#/orders'; }, 0));
  $('#orders-more').addEventListener('click', () => {
    if (ordersState.next) searchOrders(ordersState.params, ordersState.next);
  });
  $('#orders-export').addEventListener('click', async () => {
    try {
      await download($('#orders-export').dataset.url, 'orders.csv');
    } catch (e) {
      showError(e);
    }
  });
}

/** The export of what the list shows: same filters, with a BOM so that Excel reads UTF-8. */
function exportUrl(params) {
  const q = new URLSearchParams(params);
  q.set('bom', 'true');
  return `/v1/orders/export.csv?${q}`;
}

function statusBadges(o) {
  return [
    h('span', { class: `badge s-${o.status}`, 'data-status': o.status, text: code('status', o.status) }),
    o.hold ? h('span', { class: 'badge held', 'data-testid': 'held-badge', text: t('orders.held'), title: code('hold', o.hold.reason) }) : null,
    o.delayed_since ? h('span', { class: 'badge delayed', 'data-testid': 'delayed-badge', text: t('orders.delayed'), title: t('orders.delayedTitle', { at: when(o.delayed_since) }) }) : null,
  ];
}

function orderRow(o) {
  return h('tr', { dataset: { orderId: o.id, orderNo: o.order_no, status: o.status, delayed: o.delayed_since ? 'true' : 'false' } },
    h('td', {}, h('a', { href: `#/order/${encodeURIComponent(o.id)}`, class: 'order-link', 'data-testid': 'order-link' }, o.order_no)),
    h('td', { text: o.customer_id }),
    h('td', { class: 'badges' }, statusBadges(o)),
    h('td', {}, h('span', { class: `badge p-${o.payment.status}`, 'data-payment': o.payment.status, text: code('payment', o.payment.status) })),
    h('td', { text: o.channel || '' }),
    h('td', { class: 'num', text: money(o.total) }),
    h('td', { text: when(o.created_at) }));
}

const ORDER_COLS = 7;

async function searchOrders(params, cursor) {
  const tbody = $('#orders-table tbody');
  const summary = $('#orders-summary');
  const seq = ++ordersState.seq;
  ordersState.params = params;
  $('#orders-export').dataset.url = exportUrl(params);
  $('#orders-export').hidden = !access.canRead;
  if (!cursor) {
    tbody.replaceChildren(h('tr', {}, h('td', { colspan: ORDER_COLS, class: 'empty', text: t('msg.loading') })));
    $('#orders-more').hidden = true;
  }
  try {
    const orderNo = params.get('order_no');
    let items;
    let next = null;
    if (orderNo && !access.canRead) {
      // A storefront may not list: it looks one order up by its exact number.
      try {
        items = [await api('GET', `/v1/orders/by-no/${encodeURIComponent(orderNo)}`)];
      } catch (e) {
        if (e.status !== 404) throw e;
        items = [];
      }
      // The other filters still apply to the one order found.
      items = items.filter((o) => matches(o, params));
    } else {
      if (access.role === 'storefront') {
        if (seq !== ordersState.seq) return;
        tbody.replaceChildren(h('tr', {}, h('td', { colspan: ORDER_COLS, class: 'empty', text: t('orders.storefrontNoList') })));
        summary.textContent = '';
        return;
      }
      const q = new URLSearchParams(params);
      q.set('limit', '25');
      if (cursor) q.set('cursor', cursor);
      const page = await api('GET', `/v1/orders?${q}`);
      items = page.items;
      next = page.next_cursor;
    }
    if (seq !== ordersState.seq) return;
    if (!cursor) tbody.replaceChildren();
    for (const o of items) tbody.append(orderRow(o));
    const shown = tbody.querySelectorAll('tr[data-order-id]').length;
    const none = !orderNo ? t('orders.none') : t(access.canRead ? 'orders.nonePrefix' : 'orders.noneNumbered', { no: orderNo });
    if (!shown) tbody.replaceChildren(h('tr', {}, h('td', { colspan: ORDER_COLS, class: 'empty', text: none })));
    ordersState.next = next;
    $('#orders-more').hidden = !next;
    summary.textContent = shown ? t(next ? 'orders.shownMore' : 'orders.shown', { n: shown }) : '';
  } catch (e) {
    if (seq !== ordersState.seq) return;
    if (!cursor) tbody.replaceChildren(h('tr', {}, h('td', { colspan: ORDER_COLS, class: 'empty', text: t('orders.loadFailed') })));
    showError(e);
  }
}

function matches(o, p) {
  if (p.get('customer_id') && o.customer_id !== p.get('customer_id')) return false;
  if (p.get('status') && o.status !== p.get('status')) return false;
  if (p.get('payment_status') && o.payment.status !== p.get('payment_status')) return false;
  if (p.get('channel') && o.channel !== p.get('channel')) return false;
  if (p.get('delayed') === 'true' && !o.delayed_since) return false;
  if (p.get('on_hold') === 'true' && !o.hold) return false;
  if (p.get('sku') && !o.lines.some((l) => l.sku === p.get('sku'))) return false;
  const at = Date.parse(o.created_at);
  if (p.get('created_from') && at < Date.parse(p.get('created_from'))) return false;
  if (p.get('created_to') && at > Date.parse(p.get('created_to'))) return false;
  return true;
}

// ------------------------------------------------------------------ one order

let current = null; // the order on screen
let orderSeq = 0; // only the newest load of an order may render

async function showOrder(id, { focus = true, onlyIfChanged = false } = {}) {
  const body = $('#order-body');
  const seq = ++orderSeq;
  if (!current || current.id !== id) {
    $('#order-no').textContent = '';
    body.replaceChildren(h('p', { class: 'muted', text: t('msg.loading') }));
  }
  try {
    const o = await api('GET', `/v1/orders/${encodeURIComponent(id)}`);
    if (seq !== orderSeq) return;
    // A refresh that brings nothing new leaves the page (and the button under the
    // pointer) alone.
    if (onlyIfChanged && current && renderedLang === lang() && JSON.stringify(current) === JSON.stringify(o)) return;
    renderOrder(o);
    if (focus) $('#order-h').focus();
  } catch (e) {
    if (seq !== orderSeq) return;
    current = null;
    body.replaceChildren(h('p', { class: 'error-inline', text: t('order.loadFailed', { id, msg: e.message }) }));
    showError(e);
  }
}

// The buttons an order offers are exactly its `actions` (what the server allows now),
// filtered by what this token's role may do. The console repeats no order rule.
const ACTION_BUTTONS = {
  pay: { role: 'canStorefront', primary: true, label: (o) => t('act.pay', { amount: money(o.total) }) },
  pick: { role: 'canOperate', primary: true },
  pack: { role: 'canOperate', primary: true },
  ship: { role: 'canOperate', primary: true },
  deliver: { role: 'canOperate', primary: true },
  complete: { role: 'canOperate', primary: true },
  modify: { role: 'canStorefront' },
  hold: { role: 'canOperate' },
  release_hold: { role: 'canOperate' },
  return: { role: 'canOperate' },
  refund: { role: 'canOperate' },
  cancel: { role: 'canStorefront', danger: true },
};
// Plain moves along the graph: the action and the status it asks for.
const MOVES = { pick: 'picking', pack: 'packed', ship: 'shipped', deliver: 'delivered', complete: 'completed' };

function actionsFor(o) {
  return (o.actions || []).filter((name) => ACTION_BUTTONS[name] && access[ACTION_BUTTONS[name].role]);
}

/** Why the order offers no cancel (or nothing at all): words, not rules. */
function whyNot(o) {
  const due = o.payment.status === 'refund_due';
  switch (o.status) {
    case 'shipped': return t('order.whyShipped');
    case 'delivered': return t('order.whyDelivered');
    case 'completed': return t('order.whyCompleted');
    case 'cancelled': return t(due ? 'order.whyCancelledDue' : 'order.whyCancelled');
    case 'expired': return t('order.whyExpired');
    case 'returned': return t(due ? 'order.whyReturnedDue' : 'order.whyReturned');
    default: return o.hold ? t('order.whyHeld') : '';
  }
}

function actorText(x) {
  return x.on_behalf_of ? t('msg.onBehalfOf', { actor: x.actor, who: x.on_behalf_of }) : x.actor;
}

let renderedLang = ''; // the language the order on screen was drawn in

function renderOrder(o) {
  current = o;
  renderedLang = lang();
  $('#order-no').textContent = o.order_no;
  const view = $('#view-order');
  view.dataset.orderId = o.id;
  view.dataset.status = o.status;
  const p = o.payment;
  const v11money = p.paid_amount !== undefined;

  const facts = h('dl', { class: 'facts' },
    fact(t('order.status'), h('span', { class: 'badges' },
      h('span', { id: 'order-status', 'data-testid': 'order-status', 'data-status': o.status, class: `badge s-${o.status}`, text: code('status', o.status) }),
      o.hold ? h('span', { class: 'badge held', text: t('orders.held') }) : null,
      o.delayed_since ? h('span', { id: 'order-delayed', class: 'badge delayed', 'data-testid': 'delayed-badge', text: t('orders.delayed'), title: t('orders.delayedTitle', { at: when(o.delayed_since) }) }) : null)),
    fact(t('order.payment'), h('span', { id: 'order-payment', 'data-testid': 'order-payment', 'data-payment': p.status, class: `badge p-${p.status}`, text: code('payment', p.status) })),
    fact(t('order.total'), h('span', { id: 'order-total', 'data-testid': 'order-total', text: money(o.total) })),
    v11money && p.paid_amount ? fact(t('order.paidAmount'), h('span', { id: 'order-paid-amount', text: money(p.paid_amount) })) : null,
    v11money && p.refunded_amount ? fact(t('order.refundedAmount'), h('span', { id: 'order-refunded-amount', text: money(p.refunded_amount) })) : null,
    v11money && p.refund_due_amount ? fact(t('order.refundDueAmount'), h('span', { id: 'order-refund-due-amount', text: money(p.refund_due_amount) })) : null,
    fact(t('order.customer'), o.customer_id),
    o.channel ? fact(t('order.channel'), h('span', { id: 'order-channel', text: o.channel })) : null,
    fact(t('order.id'), o.id),
    fact(t('order.created'), when(o.created_at)),
    o.status === 'reserved' && p.due_at ? fact(t('order.payBy'), when(p.due_at)) : null,
    p.paid_at ? fact(t('order.paid'), p.payment_ref ? t('order.paidRef', { at: when(p.paid_at), ref: p.payment_ref }) : when(p.paid_at)) : null,
    p.refund_ref ? fact(t('order.refundRef'), p.refund_ref) : null,
    o.tracking_no ? fact(t('order.tracking'), h('span', { id: 'order-tracking', text: o.tracking_no })) : null,
    o.delayed_since ? fact(t('order.delayedSince'), when(o.delayed_since)) : null,
    o.note ? fact(t('order.note'), h('span', { id: 'order-note', text: o.note })) : null,
  );

  const hold = o.hold ? h('section', { class: 'banner hold-banner', id: 'order-hold', 'data-testid': 'order-hold', 'aria-label': t('order.holdSection') },
    h('p', {}, h('strong', { text: t('order.holdTitle') }), h('span', { id: 'hold-reason', 'data-reason': o.hold.reason, text: code('hold', o.hold.reason) })),
    o.hold.note ? h('p', {}, t('order.notePrefix'), h('span', { id: 'hold-note', text: o.hold.note })) : null,
    h('p', { class: 'muted small', id: 'hold-actor', text: t('msg.by', { actor: actorText(o.hold), at: when(o.hold.at) }) })) : null;

  const cancellation = o.cancellation ? h('section', { class: 'banner cancellation', id: 'order-cancellation', 'data-testid': 'order-cancellation', 'aria-label': t('order.cancellation') },
    h('p', {}, h('strong', { text: t('order.cancelled') }), h('span', { id: 'cancel-reason', 'data-testid': 'cancel-reason', 'data-reason': o.cancellation.reason, text: code('reason', o.cancellation.reason) })),
    o.cancellation.note ? h('p', {}, t('order.notePrefix'), h('span', { id: 'cancel-note', 'data-testid': 'cancel-note', text: o.cancellation.note })) : null,
    h('p', { class: 'muted small', text: t('msg.by', { actor: actorText(o.cancellation), at: when(o.cancellation.at) }) })) : null;

  const ret = o.returned;
  const returned = ret ? h('section', { class: 'banner cancellation', id: 'order-returned', 'aria-label': t('order.returnSection') },
    h('p', {}, h('strong', { text: t('order.returnedTitle') }), ret.restock ? t('order.restocked') : t('order.notRestocked')),
    ret.kind ? h('p', {}, t('order.kindPrefix'), h('span', { id: 'return-kind', 'data-kind': ret.kind, text: code('kind', ret.kind) })) : null,
    ret.reason ? h('p', { text: `${t('order.reasonPrefix')}${ret.reason}` }) : null,
    ret.note ? h('p', { text: `${t('order.notePrefix')}${ret.note}` }) : null) : null;

  const acts = actionsFor(o);
  const why = whyNot(o);
  const actions = h('section', { class: 'actions', id: 'order-actions', 'data-testid': 'order-actions', 'aria-label': t('order.actions') },
    acts.map((name) => {
      const b = ACTION_BUTTONS[name];
      return h('button', {
        type: 'button', id: `action-${name}`, 'data-testid': `action-${name}`, 'data-action': name,
        class: b.danger ? 'danger' : (b.primary ? 'primary' : ''),
        onclick: (ev) => startAction(name, ev.currentTarget),
      }, b.label ? b.label(o) : t(`act.${name}`));
    }),
    !acts.length && !why ? h('p', { class: 'muted', text: access.role ? t('order.mayNot', { role: code('role', access.role) }) : t('order.readOnly') }) : null,
    why ? h('p', { class: 'why', id: 'order-why', 'data-testid': 'order-why', text: why }) : null);

  const lines = h('table', { id: 'order-lines', 'data-testid': 'order-lines' },
    h('caption', { class: 'sr-only', text: t('order.linesCaption') }),
    h('thead', {}, h('tr', {}, h('th', { scope: 'col', text: t('stock.sku') }), h('th', { scope: 'col', class: 'num', text: t('order.qty') }), h('th', { scope: 'col', class: 'num', text: t('order.unitPrice') }), h('th', { scope: 'col', class: 'num', text: t('order.lineTotal') }))),
    h('tbody', {}, o.lines.map((l) => h('tr', { dataset: { sku: l.sku, qty: l.qty } },
      h('td', {}, h('a', { href: `#/orders?sku=${encodeURIComponent(l.sku)}`, text: l.sku })),
      h('td', { class: 'num', text: l.qty }),
      h('td', { class: 'num', text: money(l.unit_price) }),
      h('td', { class: 'num', text: money(l.qty * l.unit_price) })))),
    h('tfoot', {}, h('tr', {}, h('th', { scope: 'row', colspan: 3, class: 'num', text: t('order.total') }), h('td', { class: 'num', text: money(o.total) }))));

  const addr = o.shipping_address || {};
  const addrParts = ADDRESS_FIELDS.filter((f) => addr[f]);
  const address = o.shipping_address !== undefined ? h('section', { 'aria-labelledby': 'address-h', class: 'address' },
    h('h2', { id: 'address-h', text: t('order.address') }),
    addrParts.length ? h('dl', { id: 'order-address', 'data-testid': 'order-address', class: 'addr' },
      addrParts.map((f) => h('div', { dataset: { field: f } }, h('dt', { text: t(`addr.${f}`) }), h('dd', { text: addr[f] }))))
      : h('p', { class: 'muted', id: 'order-address', text: t('order.noAddress') })) : null;

  const history = h('ol', { class: 'timeline', id: 'order-history', 'data-testid': 'order-history' },
    o.history.map((e) => h('li', { class: `s-${e.status}`, dataset: { status: e.status } },
      h('span', { class: `badge s-${e.status}`, text: code('status', e.status) }), ' ',
      h('span', { class: 'when', text: `${when(e.at)} · ${actorText(e)}` }),
      e.note ? h('p', { class: 'note', text: e.note }) : null)));

  fill($('#order-body'), facts, hold, cancellation, returned, actions,
    h('div', { class: 'order-cols' },
      h('div', {},
        h('section', { 'aria-labelledby': 'lines-h' }, h('h2', { id: 'lines-h', text: t('order.lines') }), h('div', { class: 'scroll' }, lines)),
        address),
      h('section', { 'aria-labelledby': 'history-h' }, h('h2', { id: 'history-h', text: t('order.history') }), history)));
}

function fact(label, value) {
  return h('div', {}, h('dt', { text: label }), h('dd', {}, value));
}

// ------------------------------------------------------------------ order actions

let returnFocus = null;
let pendingAction = null;

/** A labelled field for the action dialog. */
function field(parent, id, label, input) {
  parent.append(h('label', { for: id, text: label }), input);
  return input;
}

function codeSelect(id, prefix, codes, { choose = false, selected = '' } = {}) {
  return h('select', { id, required: choose || undefined },
    choose ? h('option', { value: '', text: t('dlg.chooseReason') }) : null,
    codes.map((c) => h('option', { value: c, selected: c === selected || undefined, text: code(prefix, c) })));
}

const val = (id) => $(`#${id}`).value.trim();

function startAction(action, button) {
  returnFocus = button;
  hideError();
  if (action === 'cancel') return openCancel();
  const o = current;
  const fields = $('#action-fields');
  fields.replaceChildren();
  const path = `/v1/orders/${encodeURIComponent(o.id)}`;
  let title; let text = ''; let confirm; let request;
  switch (action) {
    case 'pay':
      title = t('dlg.payTitle', { no: o.order_no });
      text = t('dlg.payText', { amount: money(o.total) });
      field(fields, 'f-payment-ref', t('dlg.payRef'), h('input', { id: 'f-payment-ref', maxlength: 256 }));
      confirm = t('dlg.payConfirm');
      request = () => api('POST', `${path}/pay`, { amount: o.total, payment_ref: val('f-payment-ref') });
      break;
    case 'ship':
      title = t('dlg.shipTitle', { no: o.order_no });
      text = t('dlg.shipText');
      field(fields, 'f-tracking', t('dlg.tracking'), h('input', { id: 'f-tracking', required: true, maxlength: 256, 'data-testid': 'tracking-input' }));
      field(fields, 'f-note', t('dlg.noteOptional'), h('input', { id: 'f-note', maxlength: 256 }));
      confirm = t('dlg.shipConfirm');
      request = () => api('POST', `${path}/transitions`, { to: 'shipped', tracking_no: val('f-tracking'), note: val('f-note') });
      break;
    case 'hold':
      title = t('dlg.holdTitle', { no: o.order_no });
      text = t('dlg.holdText');
      field(fields, 'f-hold-reason', t('dlg.reason'), codeSelect('f-hold-reason', 'hold', CODES.hold, { choose: true }));
      field(fields, 'f-note', t('dlg.noteOptional'), h('input', { id: 'f-note', maxlength: 256 }));
      confirm = t('dlg.holdConfirm');
      request = () => api('POST', `${path}/hold`, { reason: val('f-hold-reason'), note: val('f-note') });
      break;
    case 'release_hold':
      title = t('dlg.releaseTitle', { no: o.order_no });
      field(fields, 'f-note', t('dlg.noteOptional'), h('input', { id: 'f-note', maxlength: 256 }));
      confirm = t('dlg.releaseConfirm');
      request = () => api('POST', `${path}/release-hold`, { note: val('f-note') });
      break;
    case 'return': {
      title = t('dlg.returnTitle', { no: o.order_no });
      text = o.payment.status === 'unpaid' ? '' : t('dlg.returnPaid');
      // Every kind is offered; the server decides which one the status allows.
      const kinds = h('select', { id: 'f-kind', 'data-testid': 'return-kind' },
        CODES.kind.map((k) => h('option', { value: k, selected: (o.status === 'shipped') === (k === 'intercepted') || undefined, text: t('dlg.kindOption', { kind: code('kind', k), hint: t(`kindHint.${k}`) }) })));
      field(fields, 'f-kind', t('dlg.returnKind'), kinds);
      field(fields, 'f-restock', t('dlg.restock'), h('select', { id: 'f-restock' }, h('option', { value: 'true', text: t('dlg.restockYes') }), h('option', { value: 'false', text: t('dlg.restockNo') })));
      field(fields, 'f-reason', t('dlg.reason'), h('input', { id: 'f-reason', maxlength: 256 }));
      field(fields, 'f-note', t('dlg.noteOptional'), h('input', { id: 'f-note', maxlength: 256 }));
      confirm = t('dlg.returnConfirm');
      request = () => {
        const body = { restock: val('f-restock') === 'true', reason: val('f-reason'), note: val('f-note') };
        // `customer_return` is the contract's default: a v1 server knows no `kind`.
        if (val('f-kind') !== 'customer_return') body.kind = val('f-kind');
        return api('POST', `${path}/return`, body);
      };
      break;
    }
    case 'refund': {
      const p = o.payment;
      title = t('dlg.refundTitle', { no: o.order_no });
      if (p.paid_amount === undefined) {
        // A v1 server: the refund is the whole amount due, nothing to choose.
        text = t('dlg.refundText', { paid: money(p.amount), refunded: money(0), due: money(p.amount), max: money(p.amount) });
        field(fields, 'f-refund-ref', t('dlg.refundRef'), h('input', { id: 'f-refund-ref', maxlength: 256 }));
        request = () => api('POST', `${path}/refund`, { refund_ref: val('f-refund-ref') });
      } else {
        const max = p.paid_amount - p.refunded_amount;
        // One Idempotency-Key per dialog and request body: confirming the same refund
        // again after a lost answer cannot refund twice.
        const keys = new Map();
        text = t('dlg.refundText', { paid: money(p.paid_amount), refunded: money(p.refunded_amount), due: money(p.refund_due_amount), max: money(max) });
        field(fields, 'f-refund-amount', t('dlg.refundAmount'), h('input', {
          id: 'f-refund-amount', type: 'number', min: '0.01', step: '0.01', max: money(max), required: true, 'data-testid': 'refund-amount',
          // What is due, if anything; a goodwill refund's amount is typed (prefilled
          // with everything refundable, one Enter paid it all back).
          value: p.refund_due_amount > 0 ? money(p.refund_due_amount) : '',
        }));
        field(fields, 'f-reason', t('dlg.reason'), h('input', { id: 'f-reason', maxlength: 256 }));
        field(fields, 'f-refund-ref', t('dlg.refundRef'), h('input', { id: 'f-refund-ref', maxlength: 256 }));
        request = () => {
          const amount = Math.round(Number(val('f-refund-amount')) * 100);
          if (!Number.isInteger(amount) || amount <= 0 || amount > max) throw new Error(t('dlg.refundBad', { max: money(max) }));
          const body = { amount, reason: val('f-reason'), refund_ref: val('f-refund-ref') };
          return api('POST', `${path}/refunds`, body, { idempotencyKey: keyFor(keys, body) });
        };
      }
      confirm = t('dlg.refundConfirm');
      break;
    }
    case 'modify':
      ({ title, text, confirm, request } = modifyDialog(o, fields, path));
      break;
    default: { // pick, pack, deliver, complete: a plain move, with an optional note
      const to = MOVES[action];
      title = t('dlg.moveTitle', { no: o.order_no, from: code('status', o.status), to: code('status', to) });
      field(fields, 'f-note', t('dlg.noteOptional'), h('input', { id: 'f-note', maxlength: 256 }));
      confirm = t('dlg.moveConfirm', { to: code('status', to) });
      request = () => api('POST', `${path}/transitions`, { to, note: val('f-note') });
    }
  }
  $('#action-dialog-h').textContent = title;
  $('#action-dialog-text').textContent = text;
  $('#action-confirm').textContent = confirm;
  $('#action-confirm').dataset.action = action;
  $('#action-error').hidden = true;
  pendingAction = { request, action };
  $('#action-dialog').showModal();
  const first = fields.querySelector('input, select');
  (first || $('#action-confirm')).focus();
}

/** The modify dialog: the lines (editable, removable, addable), the address, a note, a reason. */
function modifyDialog(o, fields, path) {
  const paid = o.payment.status !== 'unpaid';
  const rows = h('div', { id: 'm-lines', class: 'm-lines', 'data-testid': 'modify-lines' });
  const lineRow = (l) => {
    const row = h('div', { class: 'm-line', dataset: { original: l.sku ? 'true' : 'false' } },
      h('input', { class: 'm-sku', value: l.sku || '', required: true, maxlength: 64, list: 'sku-list', spellcheck: 'false', 'aria-label': t('stock.sku'), placeholder: t('stock.sku') }),
      h('input', { class: 'm-qty', type: 'number', min: 1, step: 1, value: l.qty || 1, required: true, 'aria-label': t('order.qty'), title: t('order.qty') }),
      h('input', { class: 'm-price', type: 'number', min: 0, step: '0.01', value: money(l.unit_price || 0), required: true, 'aria-label': t('order.unitPrice'), title: t('order.unitPrice') }),
      h('button', { type: 'button', class: 'link m-remove', text: t('dlg.removeLine'), onclick: () => { row.remove(); relabel(); } }));
    return row;
  };
  const relabel = () => [...rows.children].forEach((r, i) => r.querySelector('.m-remove').setAttribute('aria-label', t('dlg.removeLineLabel', { n: i + 1 })));
  const head = h('div', { class: 'm-line m-head', 'aria-hidden': 'true' },
    h('span', { text: t('stock.sku') }), h('span', { text: t('order.qty') }), h('span', { text: t('order.unitPrice') }), h('span'));
  rows.append(...o.lines.map(lineRow));
  relabel();
  fields.append(h('p', { class: 'label', text: t('order.lines') }), head, rows,
    h('button', { type: 'button', id: 'm-add', class: 'link', text: t('dlg.addLine'), onclick: () => { rows.append(lineRow({})); relabel(); rows.lastElementChild.querySelector('input').focus(); } }));
  const addr = o.shipping_address || {};
  const fs = h('fieldset', { class: 'addr-edit' }, h('legend', { text: t('order.address') }));
  for (const f of ADDRESS_FIELDS) field(fs.appendChild(h('div')), `m-addr-${f}`, t(`addr.${f}`), h('input', { id: `m-addr-${f}`, value: addr[f] || '', maxlength: 200 }));
  fields.append(fs);
  const reasons = access.role === 'storefront' ? STOREFRONT_REASONS : CODES.reason;
  field(fields, 'm-reason', t('dlg.modifyReason'), codeSelect('m-reason', 'reason', reasons, { choose: true }));
  $('#m-reason').required = false;
  field(fields, 'f-note', t('dlg.noteOptional'), h('input', { id: 'f-note', maxlength: 256 }));

  const request = () => {
    const lines = [...rows.children].map((r) => ({
      sku: r.querySelector('.m-sku').value.trim(),
      qty: Number(r.querySelector('.m-qty').value),
      unit_price: Math.round(Number(r.querySelector('.m-price').value) * 100),
    }));
    if (!lines.length) throw new Error(t('dlg.modifyNoLines'));
    if (lines.some((l) => !l.sku || !Number.isInteger(l.qty) || l.qty < 1 || !Number.isInteger(l.unit_price) || l.unit_price < 0)) throw new Error(t('dlg.modifyBadLine'));
    const body = {};
    const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
    if (!same(lines, o.lines.map((l) => ({ sku: l.sku, qty: l.qty, unit_price: l.unit_price })))) body.lines = lines;
    const address = {};
    for (const f of ADDRESS_FIELDS) if (val(`m-addr-${f}`)) address[f] = val(`m-addr-${f}`);
    const before = {};
    for (const f of ADDRESS_FIELDS) if (addr[f]) before[f] = addr[f];
    if (!same(address, before)) body.shipping_address = address;
    if (val('f-note')) body.note = val('f-note');
    // Reduced: some SKU has fewer units than before (removed lines included).
    const units = (ls) => ls.reduce((m, l) => m.set(l.sku, (m.get(l.sku) || 0) + l.qty), new Map());
    const after = units(lines);
    const reduced = body.lines && [...units(o.lines)].some(([sku, q]) => (after.get(sku) || 0) < q);
    if (val('m-reason')) body.reason = val('m-reason');
    else if (reduced) {
      $('#m-reason').focus();
      throw new Error(t('dlg.modifyNeedReason'));
    }
    if (!body.lines && !body.shipping_address && !body.note) throw new Error(t('dlg.modifyNothing'));
    return api('PATCH', path, body);
  };
  return {
    title: t('dlg.modifyTitle', { no: o.order_no }),
    text: paid ? `${t('dlg.modifyText')} ${t('dlg.modifyPaid')}` : t('dlg.modifyText'),
    confirm: t('dlg.modifyConfirm'),
    request,
  };
}

function setupDialogs() {
  const actionDlg = $('#action-dialog');
  $('#action-abort').addEventListener('click', () => actionDlg.close());
  $('#action-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (!pendingAction) return;
    const btn = $('#action-confirm');
    btn.disabled = true;
    try {
      const o = await pendingAction.request();
      actionDlg.close();
      renderOrder(o);
      notice(actionNotice(pendingAction.action, o));
      $('#order-h').focus();
    } catch (e) {
      $('#action-error').textContent = e.message;
      $('#action-error').hidden = false;
      refreshAfterRefusal(e);
    } finally {
      btn.disabled = false;
    }
  });
  actionDlg.addEventListener('close', restoreFocus);

  const cancelDlg = $('#cancel-dialog');
  $('#cancel-abort').addEventListener('click', () => cancelDlg.close());
  $('#cancel-form').addEventListener('submit', submitCancel);
  cancelDlg.addEventListener('close', restoreFocus);
}

/**
 * A refusal for the order's state (409) means the page is out of date (another
 * operator moved the order on): show the order as it is now behind the dialog,
 * whose message stays up, so the buttons are its actions again.
 */
function refreshAfterRefusal(e) {
  if (e.status === 409 && current) showOrder(current.id, { focus: false, onlyIfChanged: true });
}

/** What the console says once an action went through. */
function actionNotice(action, o) {
  const no = o.order_no;
  switch (action) {
    case 'modify': return t('order.saved', { no });
    case 'hold': return t('order.heldNotice', { no, reason: o.hold ? code('hold', o.hold.reason) : '' });
    case 'release_hold': return t('order.releasedNotice', { no });
    case 'refund': return t('order.refundedNotice', { no, refunded: money(o.payment.refunded_amount), due: money(o.payment.refund_due_amount) });
    default: return t(o.payment.status === 'refund_due' ? 'order.nowStatusDue' : 'order.nowStatus', { no, status: code('status', o.status) });
  }
}

function restoreFocus() {
  const target = returnFocus && document.contains(returnFocus) ? returnFocus : $('#order-h');
  target.focus();
  returnFocus = null;
}

function openCancel() {
  const o = current;
  const select = $('#cancel-reason-select');
  const reasons = access.role === 'storefront' ? STOREFRONT_REASONS : CODES.reason;
  fill(select, h('option', { value: '', text: t('dlg.chooseReason') }),
    reasons.map((r) => h('option', { value: r, text: code('reason', r) })));
  $('#cancel-note-input').value = '';
  $('#cancel-dialog-no').textContent = o.order_no;
  $('#cancel-error').hidden = true;
  const held = o.status === 'reserved';
  const p = o.payment;
  const refundable = p.paid_amount !== undefined ? p.paid_amount - p.refunded_amount - p.refund_due_amount : (p.status === 'paid' ? o.total : 0);
  fill($('#cancel-stock'),
    h('p', { text: held ? t('cancel.released') : t('cancel.back') }),
    h('ul', { id: 'cancel-stock-lines' }, o.lines.map((l) => h('li', { 'data-sku': l.sku, text: `${l.qty} × ${l.sku}` }))),
    refundable > 0 ? h('p', { text: t('cancel.refundDue', { amount: money(refundable) }) }) : null);
  $('#cancel-dialog').showModal();
  select.focus();
}

async function submitCancel(ev) {
  ev.preventDefault();
  const reason = $('#cancel-reason-select').value;
  const err = $('#cancel-error');
  if (!reason) {
    err.textContent = t('cancel.chooseReason');
    err.hidden = false;
    $('#cancel-reason-select').focus();
    return;
  }
  const btn = $('#cancel-confirm');
  btn.disabled = true;
  try {
    const o = await api('POST', `/v1/orders/${encodeURIComponent(current.id)}/cancel`, { reason, note: $('#cancel-note-input').value.trim() });
    returnFocus = null;
    $('#cancel-dialog').close();
    renderOrder(o);
    notice(t('cancel.done', { no: o.order_no, reason: code('reason', reason), lines: o.lines.map((l) => `${l.qty} × ${l.sku}`).join(', ') }));
    $('#order-h').focus();
  } catch (e) {
    err.textContent = e.code === 'order_shipped' ? t('cancel.shippedHint', { msg: e.message }) : e.message;
    err.hidden = false;
    refreshAfterRefusal(e);
  } finally {
    btn.disabled = false;
  }
}

// ------------------------------------------------------------------ stock

const stockState = { next: null, seq: 0, loaded: false };
const STOCK_COLS = 9;

/** A datetime-local value (local time, milliseconds when there are any) for an instant. */
function toLocalInputMs(iso) {
  const base = toLocalInput(iso);
  const ms = new Date(iso).getMilliseconds();
  return base && ms ? `${base}.${String(ms).padStart(3, '0')}` : base;
}

/** The instant a datetime-local value names (browser time zone), RFC 3339 UTC; '' -> null. */
function fromLocalInput(value) {
  if (!value) return null;
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) throw new Error(t('sale.badTime', { value }));
  return d.toISOString();
}

/** Where the sale stands by this browser's clock: 'before', 'open' or 'after'. */
function saleState(k) {
  const now = Date.now();
  if (k.sale_starts_at && now < new Date(k.sale_starts_at).getTime()) return 'before';
  if (k.sale_ends_at && now >= new Date(k.sale_ends_at).getTime()) return 'after';
  return 'open';
}

function saleWindowCell(k) {
  if (!k.sale_starts_at && !k.sale_ends_at) return h('td', { class: 'sale-window', dataset: { state: 'open' }, text: t('sale.always') });
  const state = saleState(k);
  return h('td', { class: 'sale-window', dataset: { state } },
    h('span', { class: 'sale-from', title: k.sale_starts_at || '', text: k.sale_starts_at ? when(k.sale_starts_at) : t('sale.openSide') }),
    ' – ',
    h('span', { class: 'sale-to', title: k.sale_ends_at || '', text: k.sale_ends_at ? when(k.sale_ends_at) : t('sale.openSide') }),
    ' ', h('span', { class: `badge sale-${state}`, text: t(`sale.state.${state}`) }));
}

function stockClass(k) {
  if (k.available === 0) return 'out-of-stock';
  if (k.available <= k.low_stock_threshold) return 'low-stock';
  return '';
}

function stockRow(k) {
  const cls = stockClass(k);
  return h('tr', { class: cls || null, dataset: { sku: k.sku }, 'data-testid': `sku-row-${k.sku}` },
    h('td', {}, h('a', { href: `#/orders?sku=${encodeURIComponent(k.sku)}`, title: t('stock.ordersWith'), text: k.sku })),
    h('td', { text: k.name }),
    h('td', { class: 'num', text: k.on_hand }),
    h('td', { class: 'num', text: k.reserved }),
    h('td', { class: 'num' }, cls ? h('span', { class: 'sr-only', text: cls === 'out-of-stock' ? t('stock.srOut') : t('stock.srLow') }) : null, String(k.available)),
    h('td', { class: 'num', text: k.low_stock_threshold }),
    h('td', { class: 'num sale-limit', dataset: { limit: k.purchase_limit_per_customer || 0 }, text: k.purchase_limit_per_customer ? String(k.purchase_limit_per_customer) : t('sale.noLimit') }),
    saleWindowCell(k),
    h('td', { class: 'actions' },
      access.canOperate ? h('button', { type: 'button', class: 'link', 'aria-label': t('stock.adjustSku', { sku: k.sku }), onclick: () => prefillAdjust(k.sku) }, t('stock.adjust')) : null,
      access.role === 'admin' ? [' ', h('button', { type: 'button', class: 'link sale-edit', 'aria-label': t('sale.editSku', { sku: k.sku }), onclick: () => prefillSale(k) }, t('sale.edit'))] : null,
      access.canRead ? [' ', h('button', { type: 'button', class: 'link buyer-open', 'aria-label': t('buyer.forSku', { sku: k.sku }), onclick: () => prefillBuyer(k.sku) }, t('buyer.open'))] : null));
}

async function loadStock(cursor) {
  const tbody = $('#stock-table tbody');
  const seq = ++stockState.seq;
  const denied = $('#adjust-denied');
  denied.hidden = access.canOperate;
  denied.textContent = access.canOperate ? '' : t('stock.denied', { role: access.role ? code('role', access.role) : t('stock.missingRole') });
  $('#adjust-submit').disabled = !access.canOperate;
  const saleDenied = $('#sale-denied');
  const isAdmin = access.role === 'admin';
  saleDenied.hidden = isAdmin;
  saleDenied.textContent = isAdmin ? '' : t('sale.denied', { role: access.role ? code('role', access.role) : t('stock.missingRole') });
  $('#sale-submit').disabled = !isAdmin;
  $('#buyer-submit').disabled = !access.canRead;
  if (!cursor && !stockState.loaded) tbody.replaceChildren(h('tr', {}, h('td', { colspan: STOCK_COLS, class: 'empty', text: t('msg.loading') })));
  try {
    const rows = [];
    let next = null;
    // A refresh reloads as many pages as were shown.
    let c = cursor || '';
    const pages = cursor ? 1 : Math.max(1, stockState.pages || 1);
    for (let i = 0; i < pages; i++) {
      const page = await api('GET', `/v1/skus?limit=100${c ? `&cursor=${encodeURIComponent(c)}` : ''}`);
      rows.push(...page.items);
      next = page.next_cursor;
      if (!next) break;
      c = next;
    }
    if (seq !== stockState.seq) return;
    if (!cursor) { tbody.replaceChildren(); stockState.pages = 1; } else stockState.pages += 1;
    for (const k of rows) tbody.append(stockRow(k));
    if (!tbody.children.length) tbody.append(h('tr', {}, h('td', { colspan: STOCK_COLS, class: 'empty', text: t('stock.none') })));
    const list = $('#sku-list');
    list.replaceChildren(...[...tbody.querySelectorAll('tr[data-sku]')].map((tr) => h('option', { value: tr.dataset.sku })));
    stockState.next = next;
    stockState.loaded = true;
    $('#skus-more').hidden = !next;
  } catch (e) {
    if (seq !== stockState.seq) return;
    if (!stockState.loaded) tbody.replaceChildren(h('tr', {}, h('td', { colspan: STOCK_COLS, class: 'empty', text: t('stock.loadFailed') })));
    showError(e);
  }
}

function prefillAdjust(sku) {
  $('#adjust-sku').value = sku;
  $('#adjust-delta').focus();
}

/** Put a SKU's current rules into the rules form. */
function fillSale(k) {
  $('#sale-sku').value = k.sku;
  $('#sale-limit').value = String(k.purchase_limit_per_customer || 0);
  $('#sale-starts').value = k.sale_starts_at ? toLocalInputMs(k.sale_starts_at) : '';
  $('#sale-ends').value = k.sale_ends_at ? toLocalInputMs(k.sale_ends_at) : '';
  $('#sale-form').dataset.loaded = k.sku;
}

function prefillSale(k) {
  saleLoadSeq += 1; // what the row shows wins over a load still on its way
  fillSale(k);
  $('#sale-result').textContent = '';
  $('#sale-limit').focus();
}

function prefillBuyer(sku) {
  $('#buyer-sku').value = sku;
  $('#buyer-customer').focus();
}

/** A SKU's rules in words, for the confirmation line. */
function saleSummary(k) {
  if (!k.sale_starts_at && !k.sale_ends_at) {
    return t('sale.savedAlways', { sku: k.sku, limit: k.purchase_limit_per_customer ? String(k.purchase_limit_per_customer) : t('sale.noLimit') });
  }
  return t('sale.saved', {
    sku: k.sku,
    limit: k.purchase_limit_per_customer ? String(k.purchase_limit_per_customer) : t('sale.noLimit'),
    from: k.sale_starts_at ? when(k.sale_starts_at) : t('sale.openSide'),
    to: k.sale_ends_at ? when(k.sale_ends_at) : t('sale.openSide'),
  });
}

let saleLoadSeq = 0;

/** Load a SKU's current rules into the form; an older load answering late is ignored. */
async function loadSale(sku) {
  const seq = ++saleLoadSeq;
  const k = await api('GET', `/v1/skus/${encodeURIComponent(sku)}`);
  if (seq === saleLoadSeq) fillSale(k);
}

function setupSale() {
  const out = $('#sale-result');
  const fail = (msg) => { out.textContent = msg; out.className = 'error-inline'; };
  // Typing a SKU loads its current rules, so saving never clears what was not shown.
  $('#sale-sku').addEventListener('change', async () => {
    const sku = $('#sale-sku').value.trim();
    if (!sku || $('#sale-form').dataset.loaded === sku) return;
    delete $('#sale-form').dataset.loaded;
    try {
      await loadSale(sku);
    } catch (e) {
      fail(t('sale.notLoaded', { msg: e.message }));
    }
  });
  $('#sale-starts-clear').addEventListener('click', () => { $('#sale-starts').value = ''; });
  $('#sale-ends-clear').addEventListener('click', () => { $('#sale-ends').value = ''; });
  $('#sale-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    out.className = '';
    const sku = $('#sale-sku').value.trim();
    if ($('#sale-form').dataset.loaded !== sku) {
      // The form shows another SKU's rules (or none): load these first, save next time.
      try {
        await loadSale(sku);
        return fail(t('sale.loadedCheck', { sku }));
      } catch (e) {
        return fail(t('sale.notLoaded', { msg: e.message }));
      }
    }
    const limit = Number($('#sale-limit').value);
    if (!Number.isInteger(limit) || limit < 0) return fail(t('sale.badLimit'));
    let starts;
    let ends;
    try {
      starts = fromLocalInput($('#sale-starts').value);
      ends = fromLocalInput($('#sale-ends').value);
    } catch (e) {
      return fail(e.message);
    }
    const btn = $('#sale-submit');
    btn.disabled = true;
    try {
      // PUT keeps on_hand when it is omitted (the sale moves it: never write back a
      // level read earlier); name and threshold are sent as they are now.
      const cur = await api('GET', `/v1/skus/${encodeURIComponent(sku)}`);
      const k = await api('PUT', `/v1/skus/${encodeURIComponent(sku)}`, {
        name: cur.name,
        low_stock_threshold: cur.low_stock_threshold,
        purchase_limit_per_customer: limit,
        sale_starts_at: starts,
        sale_ends_at: ends,
      });
      saleLoadSeq += 1;
      fillSale(k);
      out.textContent = saleSummary(k);
      out.className = 'ok';
      const row = $(`#stock-table tr[data-sku="${CSS.escape(k.sku)}"]`);
      if (row) row.replaceWith(stockRow(k));
      else loadStock();
    } catch (e) {
      fail(t('sale.notSaved', { msg: e.message }));
    } finally {
      btn.disabled = access.role !== 'admin';
    }
  });
}

function setupBuyer() {
  $('#buyer-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const sku = $('#buyer-sku').value.trim();
    const customer = $('#buyer-customer').value.trim();
    const out = $('#buyer-result');
    out.className = '';
    delete out.dataset.counted;
    try {
      const v = await api('GET', `/v1/skus/${encodeURIComponent(sku)}/customers/${encodeURIComponent(customer)}`);
      out.dataset.counted = String(v.counted);
      out.dataset.limit = String(v.limit);
      out.textContent = v.limit
        ? t('buyer.counted', { customer: v.customer_id, sku: v.sku, counted: v.counted, limit: v.limit, left: Math.max(0, v.limit - v.counted) })
        : t('buyer.noLimit', { customer: v.customer_id, sku: v.sku });
      out.className = 'ok';
    } catch (e) {
      out.textContent = t('buyer.failed', { msg: e.message });
      out.className = 'error-inline';
    }
  });
}

/** An adjustment on its way, and the key of each adjustment sent and not yet applied. */
let adjustInFlight = false;
const adjustKeys = new Map();

function setupStock() {
  setupSale();
  setupBuyer();
  $('#skus-more').addEventListener('click', () => stockState.next && loadStock(stockState.next));
  $('#adjust-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const sku = $('#adjust-sku').value.trim();
    const delta = Number($('#adjust-delta').value);
    const reason = $('#adjust-reason').value;
    const out = $('#adjust-result');
    out.className = '';
    if (!Number.isInteger(delta) || delta === 0) {
      out.textContent = t('stock.wholeNumber');
      out.className = 'error-inline';
      return;
    }
    if (reason === 'inbound' && delta < 0) {
      out.textContent = t('stock.inboundAdds');
      out.className = 'error-inline';
      return;
    }
    // One adjustment at a time: a second click or Enter while one is on its way is
    // dropped (it used to apply the delta twice), and the same adjustment sent again
    // (a lost answer, then Apply) carries the same Idempotency-Key, so it is applied
    // once. A new adjustment (the form is cleared once one is applied) gets a new key.
    if (adjustInFlight) return;
    const body = { delta, reason, note: $('#adjust-note').value.trim() };
    const sent = [sku, body];
    const key = keyFor(adjustKeys, sent);
    const btn = $('#adjust-submit');
    adjustInFlight = true;
    btn.disabled = true;
    try {
      const k = await api('POST', `/v1/skus/${encodeURIComponent(sku)}/adjustments`, body, { idempotencyKey: key });
      adjustKeys.clear();
      out.textContent = t('stock.applied', { sku: k.sku, delta: `${delta > 0 ? '+' : ''}${delta}`, reason: code('stockReason', reason), on_hand: k.on_hand, available: k.available });
      out.className = 'ok';
      $('#adjust-delta').value = '';
      $('#adjust-note').value = '';
      const row = $(`#stock-table tr[data-sku="${CSS.escape(k.sku)}"]`);
      if (row) row.replaceWith(stockRow(k));
      else loadStock();
    } catch (e) {
      // A refusal is an answer (the engine remembers a keyed one): the same form
      // sent again, after the stock changed, is a new request with a new key. Only
      // an answer that never came (no connection, a 5xx) keeps the key for a retry.
      if (e.status >= 400 && e.status < 500) forgetKey(adjustKeys, sent);
      out.textContent = t('stock.notApplied', { msg: e.message });
      out.className = 'error-inline';
    } finally {
      adjustInFlight = false;
      btn.disabled = !access.canOperate;
    }
  });
}

// ------------------------------------------------------------------ ledger

const ledgerState = { params: new URLSearchParams(), next: null, seq: 0, sums: {} };
const LEDGER_COLS = 8;

function setupLedger() {
  const form = $('#ledger-search');
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const params = formParams(form);
    go(`#/ledger${params.toString() ? '?' + params : ''}`);
  });
  $('#ledger-more').addEventListener('click', () => ledgerState.next && loadLedger(ledgerState.params, ledgerState.next));
  $('#ledger-export').addEventListener('click', async () => {
    try {
      await download($('#ledger-export').dataset.url, 'ledger.csv');
    } catch (e) {
      showError(e);
    }
  });
}

function ledgerRow(e) {
  return h('tr', { dataset: { seq: e.seq, kind: e.kind, orderId: e.order_id } },
    h('td', { class: 'num', text: e.seq }),
    h('td', { text: when(e.at) }),
    h('td', {}, h('a', { href: `#/order/${encodeURIComponent(e.order_id)}`, text: e.order_id })),
    h('td', { text: e.order_no }),
    h('td', {}, h('span', { class: `badge k-${e.kind}`, text: code('ledgerKind', e.kind) })),
    h('td', { class: 'num', text: money(e.amount) }),
    h('td', { text: e.ref || '' }),
    h('td', { text: actorText(e) }));
}

async function loadLedger(params, cursor) {
  const tbody = $('#ledger-table tbody');
  const seq = ++ledgerState.seq;
  ledgerState.params = params;
  $('#ledger-export').dataset.url = `/v1/ledger/export.csv${params.toString() ? '?' + params : ''}`;
  if (!cursor) {
    tbody.replaceChildren(h('tr', {}, h('td', { colspan: LEDGER_COLS, class: 'empty', text: t('msg.loading') })));
    $('#ledger-more').hidden = true;
    ledgerState.sums = {};
  }
  try {
    const q = new URLSearchParams(params);
    q.set('limit', '100');
    if (cursor) q.set('cursor', cursor);
    const page = await api('GET', `/v1/ledger?${q}`);
    if (seq !== ledgerState.seq) return;
    if (!cursor) tbody.replaceChildren();
    for (const e of page.items) {
      tbody.append(ledgerRow(e));
      ledgerState.sums[e.kind] = (ledgerState.sums[e.kind] || 0) + e.amount;
    }
    const shown = tbody.querySelectorAll('tr[data-seq]').length;
    if (!shown) tbody.replaceChildren(h('tr', {}, h('td', { colspan: LEDGER_COLS, class: 'empty', text: t('ledger.none') })));
    ledgerState.next = page.next_cursor;
    $('#ledger-more').hidden = !page.next_cursor;
    const sums = ledgerState.sums;
    $('#ledger-summary').textContent = shown ? `${t('ledger.shown', { n: shown })} ${t('ledger.sums', { charge: money(sums.charge), refund: money(sums.refund), reversal: money(sums.reversal) })}` : '';
  } catch (e) {
    if (seq !== ledgerState.seq) return;
    if (!cursor) tbody.replaceChildren(h('tr', {}, h('td', { colspan: LEDGER_COLS, class: 'empty', text: t('ledger.loadFailed') })));
    showError(e);
  }
}

// ------------------------------------------------------------------ reports (stats)

const statsState = { seq: 0, data: null };
const STATS_COLS = 7;

function browserTz() {
  let tz = '';
  try { tz = Intl.DateTimeFormat().resolvedOptions().timeZone; } catch { /* no Intl zone data */ }
  return tz && tz !== 'Etc/Unknown' ? tz : 'UTC';
}

function setupStats() {
  const form = $('#stats-form');
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    go(`#/stats?${formParams(form)}`);
  });
  $('#st-metric').addEventListener('change', () => {
    const params = formParams(form);
    history.replaceState(null, '', `#/stats?${params}`);
    if (statsState.data) drawStats(statsState.data, params.get('metric'));
  });
}

/** The report for the window in the URL; without one, the last 7 days by day. */
function showStats(params) {
  if (!params.get('from')) {
    const from = new Date(Date.now() - 7 * 24 * 3600 * 1000);
    from.setMinutes(0, 0, 0);
    params.set('from', from.toISOString());
    if (!params.get('group_by')) params.set('group_by', 'day');
    if (!params.get('tz')) params.set('tz', browserTz());
  }
  fillForm($('#stats-form'), params);
  loadReport(params);
}

async function loadReport(params) {
  const seq = ++statsState.seq;
  const tbody = $('#stats-table tbody');
  tbody.replaceChildren(h('tr', {}, h('td', { colspan: STATS_COLS, class: 'empty', text: t('msg.loading') })));
  const q = new URLSearchParams();
  for (const k of ['from', 'to', 'group_by', 'tz']) if (params.get(k)) q.set(k, params.get(k));
  try {
    const st = await api('GET', `/v1/stats?${q}`);
    if (seq !== statsState.seq) return;
    // A server before v1.1 ignores the window and answers its totals.
    if (!Array.isArray(st.groups)) throw new Error(t('stats.unsupported'));
    statsState.data = st;
    // By reason a group holds only that reason's cancellations, and the rate is
    // over every order of the window: say so ("4 orders, 4 cancelled, 0.1 %"
    // read as a contradiction under "Cancel rate").
    const rateHead = $('#stats-rate-h');
    rateHead.dataset.i18n = st.group_by === 'reason' ? 'stats.rateOfAll' : 'stats.rate';
    rateHead.textContent = t(rateHead.dataset.i18n);
    const groups = st.groups || [];
    const keyText = (g) => {
      if (g.key === '' || g.key === null || g.key === undefined) return t('stats.noValue');
      return st.group_by === 'reason' ? code('reason', g.key) : String(g.key);
    };
    fill(tbody, groups.map((g) => h('tr', { dataset: { key: g.key } },
      h('th', { scope: 'row', text: keyText(g) }),
      h('td', { class: 'num', text: g.orders }),
      h('td', { class: 'num', text: g.cancelled }),
      h('td', { class: 'num', text: pct(g.cancellation_rate) }),
      h('td', { class: 'num', text: money(g.paid_amount) }),
      h('td', { class: 'num', text: money(g.refunded_amount) }),
      h('td', { class: 'num', text: g.units_sold }))));
    if (!groups.length) tbody.append(h('tr', {}, h('td', { colspan: STATS_COLS, class: 'empty', text: t('stats.none') })));
    $('#stats-summary').textContent = t('stats.window', { from: when(st.from, st.tz), to: when(st.to, st.tz), tz: st.tz, n: groups.length });
    drawStats(st, params.get('metric') || 'orders');
  } catch (e) {
    if (seq !== statsState.seq) return;
    statsState.data = null;
    tbody.replaceChildren(h('tr', {}, h('td', { colspan: STATS_COLS, class: 'empty', text: t('stats.loadFailed') })));
    $('#stats-summary').textContent = '';
    $('#stats-chart').replaceChildren();
    $('#stats-chart').toggleAttribute('hidden', true);
    showError(e);
  }
}

/** `cancellation_rate` is a fraction (cancelled / orders). */
function pct(rate) {
  return `${(Number(rate || 0) * 100).toFixed(1)}%`;
}

const METRIC_LABEL = { orders: 'stats.orders', paid_amount: 'stats.paid', units_sold: 'stats.units', cancelled: 'stats.cancelled', refunded_amount: 'stats.refunded' };
const STATS_BARS_MAX = 200;

/** A horizontal bar per group (inline SVG): label, bar scaled to the largest, value. */
function drawStats(st, metric) {
  const m = METRIC_LABEL[metric] ? metric : 'orders';
  const isMoney = m.endsWith('_amount');
  const groups = (st.groups || []).slice(0, STATS_BARS_MAX);
  const svg = $('#stats-chart');
  const W = 600; const rowH = 22; const labelW = 150; const valueW = 80;
  const max = Math.max(1, ...groups.map((g) => Number(g[m] || 0)));
  const kids = [];
  groups.forEach((g, i) => {
    const n = Number(g[m] || 0);
    const y = i * rowH + 4;
    const label = st.group_by === 'reason' ? code('reason', g.key) : (g.key === '' ? t('stats.noValue') : String(g.key));
    kids.push(s('text', { class: 'lbl', x: 4, y: y + 13 }, label.length > 22 ? `${label.slice(0, 21)}…` : label));
    kids.push(s('rect', { class: 'bar-bg', x: labelW, y: y + 2, width: W - labelW - valueW, height: 14, rx: 2 }));
    kids.push(s('rect', { class: 'bar stat-bar', x: labelW, y: y + 2, width: Math.max(n ? 2 : 0, ((W - labelW - valueW) * n) / max), height: 14, rx: 2, 'data-key': g.key, 'data-value': n }));
    kids.push(s('text', { class: 'lbl', x: W - valueW + 6, y: y + 13 }, isMoney ? money(n) : String(n)));
  });
  svg.setAttribute('viewBox', `0 0 ${W} ${Math.max(1, groups.length) * rowH + 8}`);
  svg.replaceChildren(...kids);
  svg.setAttribute('aria-label', t('stats.chartLabel', { metric: t(METRIC_LABEL[m]), group: code('group', st.group_by) }));
  svg.toggleAttribute('hidden', !groups.length);
}

// ------------------------------------------------------------------ live panel

const BIN_S = 5; // seconds per chart point
const WINDOW_S = 300; // five minutes
const RATE_S = 10; // the headline rates average over this many seconds

const live = {
  ctrl: null,
  after: 0,
  seconds: new Map(), // unix second -> {orders, reservations}
  retryMs: 1000,
  running: false,
  state: 'connecting', // the key of the pill's text
  note: '', // the ticker's placeholder when there is no feed

  setState(state, cls = '') {
    this.state = state;
    const el = $('#live-state');
    el.className = `pill ${cls}`.trim();
    el.dataset.state = state;
    this.renderState();
  },

  renderState() {
    $('#live-state').textContent = t(`live.${this.state}`);
  },

  restart() {
    if (this.ctrl) this.ctrl.abort();
    this.ctrl = null;
    this.running = false;
    this.start();
  },

  async start() {
    if (this.running) return;
    if (!access.canRead) {
      this.setState('noAccess', 'off');
      tickerEvents.length = 0;
      this.note = access.role ? ['live.tokenMayNot', { role: code('role', access.role) }] : ['live.needsToken', {}];
      renderTicker();
      return;
    }
    this.note = '';
    renderTicker();
    this.running = true;
    if (!this.after) {
      // Start a little before the head of the feed so the chart and ticker have context.
      const last = await lastSeq();
      this.after = Math.max(0, last - 300);
    }
    this.connect();
  },

  async connect() {
    const ctrl = new AbortController();
    this.ctrl = ctrl;
    try {
      const res = await fetch(`/v1/events?after=${this.after}`, {
        headers: headers({ Accept: 'text/event-stream' }),
        signal: ctrl.signal,
      });
      if (!res.ok) {
        let problem = null;
        try { problem = await res.json(); } catch { /* not JSON */ }
        throw new ApiError(res.status, problem);
      }
      this.setState('live', 'on');
      this.retryMs = 1000;
      await readSse(res.body, (ev) => this.onEvent(ev));
      throw new Error('the stream ended');
    } catch (e) {
      if (ctrl.signal.aborted) return;
      $('#live-state').title = e.message;
      if (e.status === 401 || e.status === 403) {
        this.running = false;
        this.setState('noAccess', 'off');
        return;
      }
      this.setState('reconnecting', 'off');
      setTimeout(() => { if (this.ctrl === ctrl) this.connect(); }, this.retryMs);
      this.retryMs = Math.min(this.retryMs * 2, 10000);
    }
  },

  onEvent(ev) {
    let e;
    try { e = JSON.parse(ev.data); } catch { return; }
    if (typeof e.seq === 'number') this.after = Math.max(this.after, e.seq);
    const sec = Math.floor(Date.parse(e.at) / 1000);
    if (e.type === 'order.created' || e.type === 'reservation.held') {
      const b = this.seconds.get(sec) || { orders: 0, reservations: 0 };
      if (e.type === 'order.created') b.orders += 1; else b.reservations += 1;
      this.seconds.set(sec, b);
    }
    if (e.type === 'order.cancelled') scheduleStats(300);
    ticker(e);
    onLiveEvent(e);
  },
};

/**
 * The newest event's seq: from `/metrics`, or, where it is not reachable (a proxy
 * that does not expose it), by bisection over the feed with one-event pages (about
 * 2 log2(seq) small reads). Starting from 0 instead replayed the whole feed kept
 * (up to 1,000,000 events) before the panel went live.
 */
async function lastSeq() {
  try {
    const res = await fetch('/metrics');
    const text = await res.text();
    const m = res.ok && text.match(/^surge_events_last_seq\s+(\d+)/m);
    if (m) return Number(m[1]);
  } catch { /* not reachable: ask the feed */ }
  const after = async (seq) => (await api('GET', `/v1/events?after=${seq}&limit=1`)).events.length > 0;
  try {
    if (!(await after(0))) return 0;
    let low = 0; // an event after `low` exists...
    let high = 1; // ...and (once found) none after `high`: the newest is in (low, high]
    while (await after(high)) {
      low = high;
      high *= 2;
      if (high > Number.MAX_SAFE_INTEGER) return low;
    }
    while (high - low > 1) {
      const mid = Math.floor((low + high) / 2);
      if (await after(mid)) low = mid; else high = mid;
    }
    return high;
  } catch {
    return 0;
  }
}

/** Parse a text/event-stream body (fetch lets us send the Authorization header). */
async function readSse(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  let data = []; let type = ''; let id = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let nl;
    while ((nl = buf.search(/\r\n|\n|\r/)) >= 0) {
      const line = buf.slice(0, nl);
      const sep = buf[nl] === '\r' && buf[nl + 1] === '\n' ? 2 : 1;
      if (buf[nl] === '\r' && nl + 1 === buf.length) break; // maybe a \r\n split across chunks
      buf = buf.slice(nl + sep);
      if (line === '') {
        if (data.length) onEvent({ data: data.join('\n'), type: type || 'message', id });
        data = []; type = '';
        continue;
      }
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const name = colon < 0 ? line : line.slice(0, colon);
      let v = colon < 0 ? '' : line.slice(colon + 1);
      if (v.startsWith(' ')) v = v.slice(1);
      if (name === 'data') data.push(v);
      else if (name === 'event') type = v;
      else if (name === 'id') id = v;
    }
  }
}

function describe(e) {
  const ref = e.order_no || e.order_id || e.reservation_id || e.sku || '';
  switch (e.type) {
    case 'order.created': return t('live.created', { no: e.order_no, customer: e.customer_id, total: money(e.total) });
    case 'order.paid': return t('live.paid', { id: e.order_no || e.order_id, amount: money(e.amount) });
    case 'order.status_changed': return `${e.order_no || e.order_id} ${code('status', e.from)} → ${code('status', e.to)}`;
    case 'order.cancelled': return `${e.order_no || e.order_id}: ${code('reason', e.reason)}`;
    case 'order.held': return `${e.order_no || e.order_id}: ${code('hold', e.reason)}`;
    case 'order.refunded': return t('live.refunded', { id: e.order_no || e.order_id, amount: money(e.amount) });
    case 'reservation.held': return `${e.reservation_id}: ${(e.lines || []).map((l) => `${l.qty}×${l.sku}`).join(', ')}`;
    case 'stock.adjusted': return t('live.adjusted', { sku: e.sku, delta: `${e.delta > 0 ? '+' : ''}${e.delta}`, reason: code('stockReason', e.reason), n: e.available });
    case 'stock.restored': return t('live.restored', { sku: e.sku, qty: e.qty, n: e.available });
    case 'order.returned': return e.kind ? `${e.order_no || e.order_id}: ${code('kind', e.kind)}` : ref;
    case 'stock.low': return t('live.left', { sku: e.sku, n: e.available, threshold: e.threshold });
    case 'sku.defined': return t('live.onHand', { sku: e.sku, n: e.on_hand });
    default: return ref;
  }
}

const TICKER_MAX = 40;
const tickerEvents = []; // newest first, kept to re-render in another language

function ticker(e) {
  tickerEvents.unshift(e);
  if (tickerEvents.length > TICKER_MAX) tickerEvents.length = TICKER_MAX;
  const list = $('#ticker');
  if (list.firstElementChild && !list.firstElementChild.dataset.seq) list.replaceChildren();
  list.prepend(tickerItem(e));
  while (list.children.length > TICKER_MAX) list.lastElementChild.remove();
}

function tickerItem(e) {
  const d = describe(e);
  return h('li', { dataset: { seq: e.seq, type: e.type } },
    h('span', { class: 't', text: clock(e.at) }),
    h('span', { class: `ty ${e.type}`, text: code('event', e.type) }),
    h('span', { class: 'd', text: d, title: d }));
}

function renderTicker() {
  const list = $('#ticker');
  if (live.note) fill(list, h('li', { class: 'muted', text: t(live.note[0], live.note[1]) }));
  else fill(list, tickerEvents.map(tickerItem));
}

function drawRates() {
  const now = Math.floor(Date.now() / 1000);
  const start = now - WINDOW_S;
  for (const sec of live.seconds.keys()) if (sec < start - BIN_S) live.seconds.delete(sec);
  const bins = WINDOW_S / BIN_S;
  const orders = new Array(bins).fill(0);
  const res = new Array(bins).fill(0);
  let seenO = 0; let seenR = 0; let recentO = 0; let recentR = 0;
  for (const [sec, b] of live.seconds) {
    const tt = Math.min(sec, now); // a server clock ahead of ours: count it as now
    if (tt < start) continue;
    const i = Math.min(bins - 1, Math.floor((tt - start) / BIN_S));
    orders[i] += b.orders; res[i] += b.reservations;
    seenO += b.orders; seenR += b.reservations;
    if (tt > now - RATE_S) { recentO += b.orders; recentR += b.reservations; }
  }
  $('#orders-seen').textContent = seenO;
  $('#reservations-seen').textContent = seenR;
  $('#rate-orders').textContent = fmtRate(recentO / RATE_S);
  $('#rate-reservations').textContent = fmtRate(recentR / RATE_S);
  const rO = orders.map((n) => n / BIN_S);
  const rR = res.map((n) => n / BIN_S);
  const max = niceMax(Math.max(0.2, ...rO, ...rR));
  const W = 300; const H = 110; const left = 28; const top = 6; const bottom = 16;
  const ph = H - top - bottom; const pw = W - left - 4;
  const x = (i) => left + (i + 0.5) * (pw / bins);
  const y = (v) => top + ph - (v / max) * ph;
  const svg = $('#rate-chart');
  const kids = [];
  for (const f of [0, 0.5, 1]) {
    kids.push(s('line', { class: 'grid', x1: left, x2: W - 4, y1: y(max * f), y2: y(max * f) }));
    kids.push(s('text', { x: left - 3, y: y(max * f) + 3, 'text-anchor': 'end' }, fmtRate(max * f)));
  }
  kids.push(s('text', { x: left, y: H - 4 }, t('live.minus5')));
  kids.push(s('text', { x: W - 4, y: H - 4, 'text-anchor': 'end' }, t('live.now')));
  const pts = (arr) => arr.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
  kids.push(s('polyline', { class: 'l-res', points: pts(rR) }));
  kids.push(s('polyline', { class: 'l-orders', points: pts(rO), 'data-testid': 'orders-line' }));
  svg.replaceChildren(...kids);
  svg.setAttribute('aria-label', t('live.ratesLabel', { o: fmtRate(recentO / RATE_S), r: fmtRate(recentR / RATE_S) }));
}

function fmtRate(v) {
  if (v === 0) return '0';
  if (v < 10) return v.toFixed(1);
  return Math.round(v).toLocaleString(lang());
}

function niceMax(v) {
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

let lastCancels = {};
function drawCancels(byReason) {
  lastCancels = byReason;
  const svg = $('#cancel-chart');
  const reasons = CODES.reason;
  const max = Math.max(1, ...reasons.map((r) => byReason[r] || 0));
  const rowH = 24; const labelW = 112; const W = 300;
  const kids = [];
  reasons.forEach((r, i) => {
    const n = byReason[r] || 0;
    const yy = i * rowH + 4;
    const bw = ((W - labelW - 40) * n) / max;
    kids.push(s('text', { class: 'lbl', x: 4, y: yy + 13 }, code('reason', r)));
    kids.push(s('rect', { class: 'bar-bg', x: labelW, y: yy + 2, width: W - labelW - 40, height: 14, rx: 2 }));
    kids.push(s('rect', { class: 'bar', x: labelW, y: yy + 2, width: Math.max(n ? 2 : 0, bw), height: 14, rx: 2, 'data-reason': r, 'data-count': n }));
    kids.push(s('text', { class: 'lbl', x: W - 34, y: yy + 13 }, String(n)));
  });
  svg.setAttribute('viewBox', `0 0 ${W} ${reasons.length * rowH + 4}`);
  svg.replaceChildren(...kids);
  const total = reasons.reduce((a, r) => a + (byReason[r] || 0), 0);
  $('#cancel-total').textContent = t('live.cancelTotal', { n: total });
  svg.setAttribute('aria-label', t('live.cancelsLabel', { list: reasons.map((r) => `${code('reason', r)} ${byReason[r] || 0}`).join(', ') }));
}

let statsTimer = null;
function scheduleStats(ms) {
  clearTimeout(statsTimer);
  statsTimer = setTimeout(loadStats, ms);
}

async function loadStats() {
  if (access.canRead) {
    try {
      const st = await api('GET', '/v1/stats?top=5', undefined, { quiet401: true });
      drawCancels(st.cancellations_by_reason || {});
    } catch { /* the live panel shows what it has; errors surface elsewhere */ }
  } else {
    drawCancels({});
  }
  scheduleStats(5000);
}

async function loadQueue() {
  try {
    const text = await (await fetch('/metrics')).text();
    const depth = text.match(/^surge_engine_queue_depth\s+(\d+)/m);
    const cap = text.match(/^surge_engine_queue_capacity\s+(\d+)/m);
    const el = $('#queue-depth');
    el.textContent = depth ? Number(depth[1]).toLocaleString(lang()) : '–';
    el.title = cap ? t('live.queueOf', { cap: Number(cap[1]).toLocaleString(lang()) }) : '';
  } catch {
    $('#queue-depth').textContent = '–';
  }
}

// Keep the screen in step with what happens elsewhere.
let stockRefresh = null;
function onLiveEvent(e) {
  if (current && e.order_id === current.id && !$('#view-order').hidden
    && !$('#cancel-dialog').open && !$('#action-dialog').open) {
    const id = current.id;
    clearTimeout(onLiveEvent.t);
    // Only if that order is still the one on screen by then.
    onLiveEvent.t = setTimeout(() => {
      if (current && current.id === id && $('#view-order').dataset.orderId === id && !$('#view-order').hidden) showOrder(id, { focus: false, onlyIfChanged: true });
    }, 200);
  }
  if (!$('#view-stock').hidden && (e.type.startsWith('stock.') || e.type.startsWith('reservation.') || e.type === 'order.cancelled' || e.type === 'sku.defined')) {
    clearTimeout(stockRefresh);
    stockRefresh = setTimeout(() => loadStock(), 500);
  }
}

// ------------------------------------------------------------------ start

async function main() {
  setLang(initialLang());
  translatePage();
  fillCodeSelects();
  setupLanguage();
  setupAuth();
  setupSearch();
  setupDialogs();
  setupStock();
  setupLedger();
  setupStats();
  $('#error-close').addEventListener('click', hideError);
  window.addEventListener('hashchange', () => route());
  live.setState('connecting');
  drawCancels({});
  drawRates();
  await refreshAccess();
  route();
  live.start();
  loadStats();
  loadQueue();
  setInterval(loadQueue, 2000);
  setInterval(drawRates, 1000);
  document.body.dataset.ready = 'true';
}

window.addEventListener('error', (ev) => showError(t('msg.broken', { msg: ev.message })));
window.addEventListener('unhandledrejection', (ev) => showError(t('msg.brokenAsync', { msg: ev.reason && ev.reason.message ? ev.reason.message : ev.reason })));
main();
