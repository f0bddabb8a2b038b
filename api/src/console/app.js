// surge operator console: plain ES module, no dependencies, served from the binary.
// Talks to the same origin's /v1 API with the Bearer token kept in sessionStorage.

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

const money = (minor) => (Number(minor) / 100).toFixed(2);
const plural = (n, one, many = one + 's') => `${n} ${n === 1 ? one : many}`;

function when(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return d.toLocaleString(undefined, {
    year: 'numeric', month: 'short', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit',
  });
}
const clock = (iso) => {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? '' : d.toLocaleTimeString(undefined, { hour12: false });
};

const REASONS = {
  customer_request: 'Customer request',
  out_of_stock: 'Out of stock',
  payment_failed: 'Payment failed',
  fraud_suspected: 'Fraud suspected',
  system_error: 'System error',
  other: 'Other',
};
const STOREFRONT_REASONS = ['customer_request', 'payment_failed'];

// ------------------------------------------------------------------ auth and API

const store = {
  get token() { return sessionStorage.getItem('surge.token') || ''; },
  set token(v) { v ? sessionStorage.setItem('surge.token', v) : sessionStorage.removeItem('surge.token'); },
  get actor() { return sessionStorage.getItem('surge.actor') || ''; },
  set actor(v) { v ? sessionStorage.setItem('surge.actor', v) : sessionStorage.removeItem('surge.actor'); },
};

/** An API failure, with the problem document's `detail` in plain words. */
class ApiError extends Error {
  constructor(status, problem) {
    const detail = (problem && (problem.detail || problem.title)) || `the server answered ${status}`;
    super(detail);
    this.status = status;
    this.code = (problem && problem.code) || '';
    this.problem = problem || {};
  }
}

function headers(extra = {}) {
  const hd = { Accept: 'application/json', ...extra };
  if (store.token) hd.Authorization = `Bearer ${store.token}`;
  if (store.actor) hd['X-Actor'] = store.actor;
  return hd;
}

async function api(method, path, body, { quiet401 = false } = {}) {
  let res;
  try {
    res = await fetch(path, {
      method,
      headers: headers(body === undefined ? {} : { 'Content-Type': 'application/json' }),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, { detail: `cannot reach the server (${e.message}). Is surge running?` });
  }
  const text = await res.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = { detail: text.slice(0, 300) }; }
  }
  if (!res.ok) {
    const err = new ApiError(res.status, data);
    if (res.status === 401 && !quiet401) needToken(store.token ? `The server refused this token (${err.message}).` : 'This server requires a token.');
    throw err;
  }
  return data;
}

const access = {
  role: null, // 'admin' | 'operator' | 'viewer' | 'storefront' | null (no valid token)
  open: false, // no token needed
  get canRead() { return ['viewer', 'operator', 'admin'].includes(this.role); },
  get canStorefront() { return ['storefront', 'operator', 'admin'].includes(this.role); },
  get canOperate() { return ['operator', 'admin'].includes(this.role); },
};

const ROLE_TEXT = {
  admin: 'can do everything: all reads, every order action, stock adjustments, SKU definitions',
  operator: 'can read everything, move orders along, cancel with any reason, return, refund and adjust stock',
  viewer: 'can only read: search orders, see stock and the live feed; no actions',
  storefront: 'can look orders up by number, pay them and cancel them (customer request or payment failed); no lists, stock changes or live feed',
};

/**
 * The API has no "who am I" endpoint, so the role is inferred with harmless probes:
 * a read that only readers may do, then a stock adjustment and a SKU definition with
 * an empty (invalid) body. Auth is checked before the body, so a role that may not
 * answers 403 and a role that may answers 400 for the body: nothing changes either way.
 */
async function probeRole() {
  const allowed = async (method, path, body) => {
    try {
      await api(method, path, body, { quiet401: true });
      return true;
    } catch (e) {
      if (e.status === 401) throw e;
      return e.status !== 403;
    }
  };
  try {
    const reader = await allowed('GET', '/v1/stats?top=1');
    if (!reader) return 'storefront';
    const probe = '/v1/skus/' + encodeURIComponent('console-role-probe');
    if (!(await allowed('POST', `${probe}/adjustments`, {}))) return 'viewer';
    if (!(await allowed('PUT', probe, {}))) return 'operator';
    return 'admin';
  } catch (e) {
    if (e.status === 401) return null;
    throw e;
  }
}

async function refreshAccess() {
  const roleEl = $('#role');
  roleEl.textContent = 'Checking access…';
  let role;
  try {
    role = await probeRole();
  } catch (e) {
    roleEl.textContent = 'Access unknown';
    showError(e);
    return;
  }
  access.role = role;
  access.open = role === 'admin' && !store.token;
  document.body.dataset.role = role || 'none';
  roleEl.replaceChildren();
  if (!role) {
    roleEl.append('No valid token: ', h('b', { text: 'no access' }));
    needToken(store.token ? 'This token is not known to the server.' : 'This server requires a token.');
  } else {
    const who = access.open ? 'Open server (no tokens configured), acting as ' : 'Token role: ';
    roleEl.append(who, h('b', { id: 'role-name', 'data-testid': 'role-name', text: role }), `: ${ROLE_TEXT[role]}.`);
    roleEl.title = 'Inferred from what the server allows this token to do.';
  }
  $('#token-toggle').textContent = store.token ? 'Change token' : 'Token';
}

function needToken(why) {
  const form = $('#token-form');
  $('#token-why').textContent = `${why} Paste a token; it is kept in this tab's session storage only.`;
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
      showError('Your name must be printable characters without spaces.');
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
      notice(`Using ${access.role === 'operator' || access.role === 'admin' ? 'an' : 'a'} ${access.role} token.`);
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

// ------------------------------------------------------------------ messages

function showError(err) {
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

function route() {
  const hash = location.hash || '#/orders';
  const [path, query = ''] = hash.slice(1).split('?');
  const parts = path.split('/').filter(Boolean);
  for (const v of document.querySelectorAll('.view')) v.hidden = true;
  for (const a of document.querySelectorAll('.top nav a')) a.removeAttribute('aria-current');
  hideError();
  $('#notice').hidden = true;
  if (parts[0] === 'order' && parts[1]) {
    $('#view-order').hidden = false;
    $('#nav-orders').setAttribute('aria-current', 'page');
    showOrder(decodeURIComponent(parts[1]));
  } else if (parts[0] === 'stock') {
    $('#view-stock').hidden = false;
    $('#nav-stock').setAttribute('aria-current', 'page');
    loadStock();
  } else {
    $('#view-orders').hidden = false;
    $('#nav-orders').setAttribute('aria-current', 'page');
    const params = new URLSearchParams(query);
    fillSearch(params);
    searchOrders(params);
  }
}

// ------------------------------------------------------------------ orders list

const SEARCH_FIELDS = ['order_no', 'customer_id', 'status', 'sku', 'created_from', 'created_to'];

function fillSearch(params) {
  const form = $('#order-search');
  for (const f of SEARCH_FIELDS) {
    const input = form.elements[f];
    const v = params.get(f) || '';
    if (input.type === 'datetime-local') input.value = v ? toLocalInput(v) : '';
    else input.value = v;
  }
}

function toLocalInput(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function setupSearch() {
  const form = $('#order-search');
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const params = new URLSearchParams();
    for (const f of SEARCH_FIELDS) {
      const input = form.elements[f];
      let v = input.value.trim();
      if (!v) continue;
      if (input.type === 'datetime-local') v = new Date(v).toISOString();
      params.set(f, v);
    }
    const target = `#/orders${params.toString() ? '?' + params : ''}`;
    if (location.hash === target) route();
    else location.hash = target;
  });
  form.addEventListener('reset', () => setTimeout(() => { location.hash = '#/orders'; }, 0));
  $('#orders-more').addEventListener('click', () => {
    if (ordersState.next) searchOrders(ordersState.params, ordersState.next);
  });
}

const ordersState = { params: null, next: null, seq: 0 };

function orderRow(o) {
  return h('tr', { dataset: { orderId: o.id, orderNo: o.order_no, status: o.status } },
    h('td', {}, h('a', { href: `#/order/${encodeURIComponent(o.id)}`, class: 'order-link', 'data-testid': 'order-link' }, o.order_no)),
    h('td', { text: o.customer_id }),
    h('td', {}, h('span', { class: `badge s-${o.status}`, text: o.status })),
    h('td', {}, h('span', { class: `badge p-${o.payment.status}`, text: o.payment.status.replace('_', ' ') })),
    h('td', { class: 'num', text: money(o.total) }),
    h('td', { text: when(o.created_at) }));
}

async function searchOrders(params, cursor) {
  const tbody = $('#orders-table tbody');
  const summary = $('#orders-summary');
  const seq = ++ordersState.seq;
  ordersState.params = params;
  if (!cursor) {
    tbody.replaceChildren(h('tr', {}, h('td', { colspan: 6, class: 'empty', text: 'Loading…' })));
    $('#orders-more').hidden = true;
  }
  try {
    const orderNo = params.get('order_no');
    let items;
    let next = null;
    if (orderNo) {
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
        tbody.replaceChildren(h('tr', {}, h('td', { colspan: 6, class: 'empty', text: 'A storefront token may not list orders: look one up by its order number.' })));
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
    if (!shown) tbody.replaceChildren(h('tr', {}, h('td', { colspan: 6, class: 'empty', text: orderNo ? `No order numbered “${orderNo}”.` : 'No orders match.' })));
    ordersState.next = next;
    $('#orders-more').hidden = !next;
    summary.textContent = shown ? `${plural(shown, 'order')} shown, newest first${next ? '; more below' : ''}.` : '';
  } catch (e) {
    if (seq !== ordersState.seq) return;
    if (!cursor) tbody.replaceChildren(h('tr', {}, h('td', { colspan: 6, class: 'empty', text: 'Could not load orders.' })));
    showError(e);
  }
}

function matches(o, p) {
  if (p.get('customer_id') && o.customer_id !== p.get('customer_id')) return false;
  if (p.get('status') && o.status !== p.get('status')) return false;
  if (p.get('sku') && !o.lines.some((l) => l.sku === p.get('sku'))) return false;
  const t = Date.parse(o.created_at);
  if (p.get('created_from') && t < Date.parse(p.get('created_from'))) return false;
  if (p.get('created_to') && t > Date.parse(p.get('created_to'))) return false;
  return true;
}

// ------------------------------------------------------------------ one order

let current = null; // the order on screen

async function showOrder(id, { focus = true } = {}) {
  const body = $('#order-body');
  if (!current || current.id !== id) {
    $('#order-no').textContent = '';
    body.replaceChildren(h('p', { class: 'muted', text: 'Loading…' }));
  }
  try {
    const o = await api('GET', `/v1/orders/${encodeURIComponent(id)}`);
    renderOrder(o);
    if (focus) $('#order-h').focus();
  } catch (e) {
    current = null;
    body.replaceChildren(h('p', { class: 'error-inline', text: `Could not load order ${id}: ${e.message}` }));
    showError(e);
  }
}

// The buttons an order offers: what the server says is allowed now (`o.actions`, read
// off the engine's transition table), filtered by what this token's role may do.
// The console does not repeat the order rules.
const ACTION_BUTTONS = [
  { name: 'pay', role: 'canStorefront', action: 'pay', label: (o) => `Take payment (${money(o.total)})` },
  { name: 'pick', role: 'canOperate', action: 'picking', label: () => 'Start picking' },
  { name: 'pack', role: 'canOperate', action: 'packed', label: () => 'Mark packed' },
  { name: 'ship', role: 'canOperate', action: 'shipped', label: () => 'Ship…' },
  { name: 'deliver', role: 'canOperate', action: 'delivered', label: () => 'Mark delivered' },
  { name: 'complete', role: 'canOperate', action: 'completed', label: () => 'Complete' },
  { name: 'return', role: 'canOperate', action: 'return', label: () => 'Return…' },
  { name: 'refund', role: 'canOperate', action: 'refund', label: (o) => `Refund ${money(o.payment.amount || o.total)}…` },
  { name: 'cancel', role: 'canStorefront', action: 'cancel', label: () => 'Cancel order…', danger: true },
];

function actionsFor(o) {
  const allowed = new Set(o.actions || []);
  return ACTION_BUTTONS
    .filter((b) => allowed.has(b.name) && access[b.role])
    .map((b) => ({ action: b.action, label: b.label(o), danger: b.danger }));
}

function whyNot(o) {
  const st = o.status;
  if (st === 'shipped') {
    return 'This order has shipped, so it can no longer be cancelled. Once it is delivered, use Return to take the units back (and refund the payment).';
  }
  if (st === 'delivered' || st === 'completed') {
    return `This order was ${st === 'delivered' ? 'delivered' : 'completed'} after shipping, so it cannot be cancelled: return it instead.`;
  }
  if (st === 'cancelled') return o.payment.status === 'refund_due' ? 'This order is cancelled; its payment is due for a refund.' : 'This order is cancelled: no further steps.';
  if (st === 'expired') return 'Payment did not arrive in time and the hold expired: no further steps.';
  if (st === 'returned') return o.payment.status === 'refund_due' ? 'Returned: the payment is due for a refund.' : 'Returned: no further steps.';
  return '';
}

function renderOrder(o) {
  current = o;
  $('#order-no').textContent = o.order_no;
  const view = $('#view-order');
  view.dataset.orderId = o.id;
  view.dataset.status = o.status;

  const facts = h('dl', { class: 'facts' },
    fact('Status', h('span', { id: 'order-status', 'data-testid': 'order-status', class: `badge s-${o.status}`, text: o.status })),
    fact('Payment', h('span', { id: 'order-payment', 'data-testid': 'order-payment', class: `badge p-${o.payment.status}`, text: o.payment.status.replace('_', ' ') })),
    fact('Total', h('span', { id: 'order-total', 'data-testid': 'order-total', text: money(o.total) })),
    fact('Customer', o.customer_id),
    fact('Order id', o.id),
    fact('Created', when(o.created_at)),
    o.status === 'reserved' ? fact('Pay by', when(o.payment.due_at)) : null,
    o.payment.paid_at ? fact('Paid', `${when(o.payment.paid_at)}${o.payment.payment_ref ? ` (ref ${o.payment.payment_ref})` : ''}`) : null,
    o.payment.refund_ref ? fact('Refund ref', o.payment.refund_ref) : null,
    o.tracking_no ? fact('Tracking', h('span', { id: 'order-tracking', text: o.tracking_no })) : null,
  );

  const cancellation = o.cancellation ? h('section', { class: 'cancellation', id: 'order-cancellation', 'data-testid': 'order-cancellation', 'aria-label': 'Cancellation' },
    h('p', {}, h('strong', { text: 'Cancelled: ' }), h('span', { id: 'cancel-reason', 'data-testid': 'cancel-reason', 'data-reason': o.cancellation.reason, text: REASONS[o.cancellation.reason] || o.cancellation.reason })),
    o.cancellation.note ? h('p', {}, 'Note: ', h('span', { id: 'cancel-note', 'data-testid': 'cancel-note', text: o.cancellation.note })) : null,
    h('p', { class: 'muted small', text: `by ${o.cancellation.actor}${o.cancellation.on_behalf_of ? ` for ${o.cancellation.on_behalf_of}` : ''}, ${when(o.cancellation.at)}` })) : null;

  const returned = o.returned ? h('section', { class: 'cancellation', id: 'order-returned', 'aria-label': 'Return' },
    h('p', {}, h('strong', { text: 'Returned' }), o.returned.restock ? ' — units restocked' : ' — units not restocked'),
    o.returned.reason ? h('p', { text: `Reason: ${o.returned.reason}` }) : null,
    o.returned.note ? h('p', { text: `Note: ${o.returned.note}` }) : null) : null;

  const acts = actionsFor(o);
  const why = whyNot(o);
  const actions = h('section', { class: 'actions', id: 'order-actions', 'data-testid': 'order-actions', 'aria-label': 'Actions' },
    acts.map((a) => h('button', {
      type: 'button', id: `action-${a.action}`, 'data-testid': `action-${a.action}`, 'data-action': a.action,
      class: a.danger ? 'danger' : (a.action === 'pay' || ['picking', 'packed', 'shipped', 'delivered', 'completed'].includes(a.action) ? 'primary' : ''),
      onclick: (ev) => startAction(a.action, ev.currentTarget),
    }, a.label)),
    !acts.length && !why ? h('p', { class: 'muted', text: access.role ? `Your ${access.role} token may not change this order.` : 'No token: read only.' }) : null,
    why ? h('p', { class: 'why', id: 'order-why', 'data-testid': 'order-why', text: why }) : null);

  const lines = h('table', { id: 'order-lines', 'data-testid': 'order-lines' },
    h('caption', { class: 'sr-only', text: 'Order lines' }),
    h('thead', {}, h('tr', {}, h('th', { scope: 'col', text: 'SKU' }), h('th', { scope: 'col', class: 'num', text: 'Qty' }), h('th', { scope: 'col', class: 'num', text: 'Unit price' }), h('th', { scope: 'col', class: 'num', text: 'Line total' }))),
    h('tbody', {}, o.lines.map((l) => h('tr', { dataset: { sku: l.sku } },
      h('td', {}, h('a', { href: `#/orders?sku=${encodeURIComponent(l.sku)}`, text: l.sku })),
      h('td', { class: 'num', text: l.qty }),
      h('td', { class: 'num', text: money(l.unit_price) }),
      h('td', { class: 'num', text: money(l.qty * l.unit_price) })))),
    h('tfoot', {}, h('tr', {}, h('th', { scope: 'row', colspan: 3, class: 'num', text: 'Total' }), h('td', { class: 'num', text: money(o.total) }))));

  const history = h('ol', { class: 'timeline', id: 'order-history', 'data-testid': 'order-history' },
    o.history.map((e) => h('li', { class: `s-${e.status}`, dataset: { status: e.status } },
      h('span', { class: `badge s-${e.status}`, text: e.status }), ' ',
      h('span', { class: 'when', text: `${when(e.at)} · ${e.actor}${e.on_behalf_of ? ` for ${e.on_behalf_of}` : ''}` }),
      e.note ? h('p', { class: 'note', text: e.note }) : null)));

  fill($('#order-body'), facts, cancellation, returned, actions,
    h('div', { class: 'order-cols' },
      h('section', { 'aria-labelledby': 'lines-h' }, h('h2', { id: 'lines-h', text: 'Lines' }), h('div', { class: 'scroll' }, lines)),
      h('section', { 'aria-labelledby': 'history-h' }, h('h2', { id: 'history-h', text: 'History' }), history)));
}

function fact(label, value) {
  return h('div', {}, h('dt', { text: label }), h('dd', {}, value));
}

// ------------------------------------------------------------------ order actions

let returnFocus = null;

function startAction(action, button) {
  returnFocus = button;
  hideError();
  if (action === 'cancel') return openCancel();
  const o = current;
  const fields = $('#action-fields');
  fields.replaceChildren();
  const field = (id, label, input) => fields.append(h('label', { for: id, text: label }), input);
  let title; let text = ''; let confirm; let request;
  switch (action) {
    case 'pay':
      title = `Take payment for ${o.order_no}`;
      text = `Records a payment of ${money(o.total)} (the order total). The held units leave stock.`;
      field('f-payment-ref', 'Payment reference', h('input', { id: 'f-payment-ref', maxlength: 256 }));
      confirm = 'Record payment';
      request = () => api('POST', `/v1/orders/${o.id}/pay`, { amount: o.total, payment_ref: $('#f-payment-ref').value.trim() });
      break;
    case 'shipped':
      title = `Ship ${o.order_no}`;
      text = 'After shipping the order can no longer be cancelled, only returned once delivered.';
      field('f-tracking', 'Tracking number', h('input', { id: 'f-tracking', required: true, maxlength: 256, 'data-testid': 'tracking-input' }));
      field('f-note', 'Note', h('input', { id: 'f-note', maxlength: 256 }));
      confirm = 'Mark shipped';
      request = () => api('POST', `/v1/orders/${o.id}/transitions`, { to: 'shipped', tracking_no: $('#f-tracking').value.trim(), note: $('#f-note').value.trim() });
      break;
    case 'return':
      title = `Return ${o.order_no}`;
      text = o.payment.status === 'paid' ? `The payment of ${money(o.total)} becomes due for a refund.` : '';
      field('f-restock', 'Put the units back in stock', h('select', { id: 'f-restock' }, h('option', { value: 'true', text: 'yes, restock' }), h('option', { value: 'false', text: 'no (damaged, lost)' })));
      field('f-reason', 'Reason', h('input', { id: 'f-reason', maxlength: 256 }));
      field('f-note', 'Note', h('input', { id: 'f-note', maxlength: 256 }));
      confirm = 'Record return';
      request = () => api('POST', `/v1/orders/${o.id}/return`, { restock: $('#f-restock').value === 'true', reason: $('#f-reason').value.trim(), note: $('#f-note').value.trim() });
      break;
    case 'refund':
      title = `Refund ${o.order_no}`;
      text = `Records that ${money(o.payment.amount || o.total)} was paid back.`;
      field('f-refund-ref', 'Refund reference', h('input', { id: 'f-refund-ref', maxlength: 256 }));
      confirm = 'Record refund';
      request = () => api('POST', `/v1/orders/${o.id}/refund`, { refund_ref: $('#f-refund-ref').value.trim() });
      break;
    default: // picking, packed, delivered, completed: a plain transition, with an optional note
      title = `${o.order_no}: ${o.status} → ${action}`;
      field('f-note', 'Note (optional)', h('input', { id: 'f-note', maxlength: 256 }));
      confirm = `Move to ${action}`;
      request = () => api('POST', `/v1/orders/${o.id}/transitions`, { to: action, note: $('#f-note').value.trim() });
  }
  $('#action-dialog-h').textContent = title;
  $('#action-dialog-text').textContent = text;
  $('#action-confirm').textContent = confirm;
  $('#action-error').hidden = true;
  pendingAction = { request, action };
  const dlg = $('#action-dialog');
  dlg.showModal();
  const first = fields.querySelector('input, select');
  (first || $('#action-confirm')).focus();
}

let pendingAction = null;

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
      notice(`Order ${o.order_no} is now ${o.status}${o.payment.status === 'refund_due' ? ' (refund due)' : ''}.`);
      $('#order-h').focus();
    } catch (e) {
      $('#action-error').textContent = e.message;
      $('#action-error').hidden = false;
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

function restoreFocus() {
  const target = returnFocus && document.contains(returnFocus) ? returnFocus : $('#order-h');
  target.focus();
  returnFocus = null;
}

function openCancel() {
  const o = current;
  const select = $('#cancel-reason-select');
  const reasons = access.role === 'storefront' ? STOREFRONT_REASONS : Object.keys(REASONS);
  fill(select, h('option', { value: '', text: 'Choose a reason…' }),
    reasons.map((r) => h('option', { value: r, text: REASONS[r] })));
  $('#cancel-note-input').value = '';
  $('#cancel-dialog-no').textContent = o.order_no;
  $('#cancel-error').hidden = true;
  const held = o.status === 'reserved';
  fill($('#cancel-stock'),
    h('p', { text: held ? 'These held units are released back to available stock:' : 'These units go back to stock (on hand and available):' }),
    h('ul', { id: 'cancel-stock-lines' }, o.lines.map((l) => h('li', { 'data-sku': l.sku, text: `${l.qty} × ${l.sku}` }))),
    o.payment.status === 'paid' ? h('p', { text: `The payment of ${money(o.total)} becomes due for a refund.` }) : null);
  $('#cancel-dialog').showModal();
  select.focus();
}

async function submitCancel(ev) {
  ev.preventDefault();
  const reason = $('#cancel-reason-select').value;
  const err = $('#cancel-error');
  if (!reason) {
    err.textContent = 'Choose a reason for the cancellation.';
    err.hidden = false;
    $('#cancel-reason-select').focus();
    return;
  }
  const btn = $('#cancel-confirm');
  btn.disabled = true;
  try {
    const o = await api('POST', `/v1/orders/${current.id}/cancel`, { reason, note: $('#cancel-note-input').value.trim() });
    returnFocus = null;
    $('#cancel-dialog').close();
    renderOrder(o);
    notice(`Order ${o.order_no} is cancelled (${REASONS[reason]}); ${o.lines.map((l) => `${l.qty} × ${l.sku}`).join(', ')} back in stock.`);
    $('#order-h').focus();
  } catch (e) {
    err.textContent = e.code === 'order_shipped' ? `${e.message} Return it once delivered instead.` : e.message;
    err.hidden = false;
  } finally {
    btn.disabled = false;
  }
}

// ------------------------------------------------------------------ stock

const stockState = { next: null, seq: 0, loaded: false };

function stockClass(k) {
  if (k.available === 0) return 'out-of-stock';
  if (k.available <= k.low_stock_threshold) return 'low-stock';
  return '';
}

function stockRow(k) {
  const cls = stockClass(k);
  return h('tr', { class: cls || null, dataset: { sku: k.sku }, 'data-testid': `sku-row-${k.sku}` },
    h('td', {}, h('a', { href: `#/orders?sku=${encodeURIComponent(k.sku)}`, title: 'Orders with this SKU', text: k.sku })),
    h('td', { text: k.name }),
    h('td', { class: 'num', text: k.on_hand }),
    h('td', { class: 'num', text: k.reserved }),
    h('td', { class: 'num' }, cls ? h('span', { class: 'sr-only', text: cls === 'out-of-stock' ? 'out of stock: ' : 'low stock: ' }) : null, String(k.available)),
    h('td', { class: 'num', text: k.low_stock_threshold }),
    h('td', {}, access.canOperate ? h('button', { type: 'button', class: 'link', 'aria-label': `Adjust ${k.sku}`, onclick: () => prefillAdjust(k.sku) }, 'Adjust') : null));
}

async function loadStock(cursor) {
  const tbody = $('#stock-table tbody');
  const seq = ++stockState.seq;
  const denied = $('#adjust-denied');
  denied.hidden = access.canOperate;
  denied.textContent = access.canOperate ? '' : `Your ${access.role || 'missing'} token may not adjust stock (operator or admin only).`;
  $('#adjust-submit').disabled = !access.canOperate;
  if (!cursor && !stockState.loaded) tbody.replaceChildren(h('tr', {}, h('td', { colspan: 7, class: 'empty', text: 'Loading…' })));
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
    if (!tbody.children.length) tbody.append(h('tr', {}, h('td', { colspan: 7, class: 'empty', text: 'No SKUs defined yet.' })));
    const list = $('#sku-list');
    list.replaceChildren(...[...tbody.querySelectorAll('tr[data-sku]')].map((tr) => h('option', { value: tr.dataset.sku })));
    stockState.next = next;
    stockState.loaded = true;
    $('#skus-more').hidden = !next;
  } catch (e) {
    if (seq !== stockState.seq) return;
    if (!stockState.loaded) tbody.replaceChildren(h('tr', {}, h('td', { colspan: 7, class: 'empty', text: 'Could not load stock.' })));
    showError(e);
  }
}

function prefillAdjust(sku) {
  $('#adjust-sku').value = sku;
  $('#adjust-delta').focus();
}

function setupStock() {
  $('#skus-more').addEventListener('click', () => stockState.next && loadStock(stockState.next));
  $('#adjust-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const sku = $('#adjust-sku').value.trim();
    const delta = Number($('#adjust-delta').value);
    const reason = $('#adjust-reason').value;
    const out = $('#adjust-result');
    out.className = '';
    if (!Number.isInteger(delta) || delta === 0) {
      out.textContent = 'Enter a whole number of units other than 0.';
      out.className = 'error-inline';
      return;
    }
    if (reason === 'inbound' && delta < 0) {
      out.textContent = 'Inbound adds units: use a correction to remove units.';
      out.className = 'error-inline';
      return;
    }
    try {
      const k = await api('POST', `/v1/skus/${encodeURIComponent(sku)}/adjustments`, { delta, reason, note: $('#adjust-note').value.trim() });
      out.textContent = `${k.sku}: ${delta > 0 ? '+' : ''}${delta} (${reason}); now ${k.on_hand} on hand, ${k.available} available.`;
      out.className = 'ok';
      $('#adjust-delta').value = '';
      $('#adjust-note').value = '';
      const row = $(`#stock-table tr[data-sku="${CSS.escape(k.sku)}"]`);
      if (row) row.replaceWith(stockRow(k));
      else loadStock();
    } catch (e) {
      out.textContent = `Not applied: ${e.message}`;
      out.className = 'error-inline';
    }
  });
}

// ------------------------------------------------------------------ live panel

const BIN_S = 5; // seconds per chart point
const WINDOW_S = 300; // five minutes
const RATE_S = 10; // the headline rates average over this many seconds

const live = {
  ctrl: null,
  after: 0,
  seconds: new Map(), // unix second -> {orders, reservations}
  cancels: {},
  retryMs: 1000,
  running: false,

  restart() {
    if (this.ctrl) this.ctrl.abort();
    this.ctrl = null;
    this.running = false;
    this.start();
  },

  async start() {
    if (this.running) return;
    const state = $('#live-state');
    if (!access.canRead) {
      state.textContent = 'no access';
      state.className = 'pill off';
      $('#ticker').replaceChildren(h('li', { class: 'muted', text: access.role ? `A ${access.role} token may not read the event feed.` : 'Needs a token to read the event feed.' }));
      return;
    }
    this.running = true;
    if (!this.after) {
      // Start a little before the head of the feed so the chart and ticker have context.
      const last = await lastSeq();
      this.after = Math.max(0, last - 300);
    }
    this.connect();
  },

  async connect() {
    const state = $('#live-state');
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
      state.textContent = 'live';
      state.className = 'pill on';
      this.retryMs = 1000;
      await readSse(res.body, (ev) => this.onEvent(ev));
      throw new Error('the stream ended');
    } catch (e) {
      if (ctrl.signal.aborted) return;
      state.textContent = 'reconnecting';
      state.className = 'pill off';
      state.title = e.message;
      if (e.status === 401 || e.status === 403) {
        this.running = false;
        state.textContent = 'no access';
        return;
      }
      setTimeout(() => { if (this.ctrl === ctrl) this.connect(); }, this.retryMs);
      this.retryMs = Math.min(this.retryMs * 2, 10000);
    }
  },

  onEvent(ev) {
    let e;
    try { e = JSON.parse(ev.data); } catch { return; }
    if (typeof e.seq === 'number') this.after = Math.max(this.after, e.seq);
    const t = Math.floor(Date.parse(e.at) / 1000);
    if (e.type === 'order.created' || e.type === 'reservation.held') {
      const b = this.seconds.get(t) || { orders: 0, reservations: 0 };
      if (e.type === 'order.created') b.orders += 1; else b.reservations += 1;
      this.seconds.set(t, b);
      chartsDirty = true;
    }
    if (e.type === 'order.cancelled') scheduleStats(300);
    ticker(e);
    onLiveEvent(e);
  },
};

async function lastSeq() {
  try {
    const res = await fetch('/metrics');
    const text = await res.text();
    const m = text.match(/^surge_events_last_seq\s+(\d+)/m);
    return m ? Number(m[1]) : 0;
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
      const field = colon < 0 ? line : line.slice(0, colon);
      let val = colon < 0 ? '' : line.slice(colon + 1);
      if (val.startsWith(' ')) val = val.slice(1);
      if (field === 'data') data.push(val);
      else if (field === 'event') type = val;
      else if (field === 'id') id = val;
    }
  }
}

function describe(e) {
  const ref = e.order_no || e.order_id || e.reservation_id || e.sku || '';
  switch (e.type) {
    case 'order.created': return `${e.order_no} for ${e.customer_id}, ${money(e.total)}`;
    case 'order.paid': return `${e.order_id} paid ${money(e.amount)}`;
    case 'order.status_changed': return `${e.order_id} ${e.from} → ${e.to}`;
    case 'order.cancelled': return `${e.order_id}: ${REASONS[e.reason] || e.reason}`;
    case 'order.refunded': return `${e.order_id} refunded ${money(e.amount)}`;
    case 'reservation.held': return `${e.reservation_id}: ${(e.lines || []).map((l) => `${l.qty}×${l.sku}`).join(', ')}`;
    case 'stock.adjusted': return `${e.sku} ${e.delta > 0 ? '+' : ''}${e.delta} (${e.reason}), ${e.available} available`;
    case 'stock.low': return `${e.sku}: ${e.available} left (threshold ${e.threshold})`;
    case 'sku.defined': return `${e.sku}: ${e.on_hand} on hand`;
    default: return ref;
  }
}

const TICKER_MAX = 40;
function ticker(e) {
  const list = $('#ticker');
  if (list.firstElementChild && !list.firstElementChild.dataset.seq) list.replaceChildren();
  list.prepend(h('li', { dataset: { seq: e.seq, type: e.type } },
    h('span', { class: 't', text: clock(e.at) }),
    h('span', { class: `ty ${e.type}`, text: e.type }),
    h('span', { class: 'd', text: describe(e), title: describe(e) })));
  while (list.children.length > TICKER_MAX) list.lastElementChild.remove();
}

let chartsDirty = true;

function drawRates() {
  const now = Math.floor(Date.now() / 1000);
  const start = now - WINDOW_S;
  for (const t of live.seconds.keys()) if (t < start - BIN_S) live.seconds.delete(t);
  const bins = WINDOW_S / BIN_S;
  const orders = new Array(bins).fill(0);
  const res = new Array(bins).fill(0);
  let seenO = 0; let seenR = 0; let recentO = 0; let recentR = 0;
  for (const [t, b] of live.seconds) {
    const tt = Math.min(t, now); // a server clock ahead of ours: count it as now
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
  kids.push(s('text', { x: left, y: H - 4 }, '−5 min'));
  kids.push(s('text', { x: W - 4, y: H - 4, 'text-anchor': 'end' }, 'now'));
  const pts = (arr) => arr.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
  kids.push(s('polyline', { class: 'l-res', points: pts(rR) }));
  kids.push(s('polyline', { class: 'l-orders', points: pts(rO), 'data-testid': 'orders-line' }));
  svg.replaceChildren(...kids);
  svg.setAttribute('aria-label', `orders ${fmtRate(recentO / RATE_S)} per second, reservations ${fmtRate(recentR / RATE_S)} per second`);
}

function fmtRate(v) {
  if (v === 0) return '0';
  if (v < 10) return v.toFixed(1);
  return Math.round(v).toLocaleString();
}

function niceMax(v) {
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function drawCancels(byReason) {
  const svg = $('#cancel-chart');
  const reasons = Object.keys(REASONS);
  const max = Math.max(1, ...reasons.map((r) => byReason[r] || 0));
  const rowH = 24; const labelW = 112; const W = 300;
  const kids = [];
  reasons.forEach((r, i) => {
    const n = byReason[r] || 0;
    const yy = i * rowH + 4;
    const bw = ((W - labelW - 40) * n) / max;
    kids.push(s('text', { class: 'lbl', x: 4, y: yy + 13 }, REASONS[r]));
    kids.push(s('rect', { class: 'bar-bg', x: labelW, y: yy + 2, width: W - labelW - 40, height: 14, rx: 2 }));
    kids.push(s('rect', { class: 'bar', x: labelW, y: yy + 2, width: Math.max(n ? 2 : 0, bw), height: 14, rx: 2, 'data-reason': r, 'data-count': n }));
    kids.push(s('text', { class: 'lbl', x: W - 34, y: yy + 13 }, String(n)));
  });
  svg.setAttribute('viewBox', `0 0 ${W} ${reasons.length * rowH + 4}`);
  svg.replaceChildren(...kids);
  const total = reasons.reduce((a, r) => a + (byReason[r] || 0), 0);
  $('#cancel-total').textContent = `(${total} in all)`;
  svg.setAttribute('aria-label', `cancellations by reason: ${reasons.map((r) => `${REASONS[r]} ${byReason[r] || 0}`).join(', ')}`);
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
    el.textContent = depth ? Number(depth[1]).toLocaleString() : '–';
    el.title = cap ? `of ${Number(cap[1]).toLocaleString()} commands` : '';
  } catch {
    $('#queue-depth').textContent = '–';
  }
}

// Keep the screen in step with what happens elsewhere.
let stockRefresh = null;
function onLiveEvent(e) {
  if (current && e.order_id === current.id && !$('#view-order').hidden
    && !$('#cancel-dialog').open && !$('#action-dialog').open) {
    clearTimeout(onLiveEvent.t);
    onLiveEvent.t = setTimeout(() => showOrder(current.id, { focus: false }), 200);
  }
  if (!$('#view-stock').hidden && (e.type.startsWith('stock.') || e.type.startsWith('reservation.') || e.type === 'order.cancelled' || e.type === 'sku.defined')) {
    clearTimeout(stockRefresh);
    stockRefresh = setTimeout(() => loadStock(), 500);
  }
}

// ------------------------------------------------------------------ start

async function main() {
  setupAuth();
  setupSearch();
  setupDialogs();
  setupStock();
  $('#error-close').addEventListener('click', hideError);
  window.addEventListener('hashchange', route);
  drawCancels({});
  drawRates();
  await refreshAccess();
  route();
  live.start();
  loadStats();
  loadQueue();
  setInterval(loadQueue, 2000);
  setInterval(() => { drawRates(); chartsDirty = false; }, 1000);
  document.body.dataset.ready = 'true';
}

window.addEventListener('error', (ev) => showError(`Something went wrong in the console: ${ev.message}`));
window.addEventListener('unhandledrejection', (ev) => showError(`Something went wrong: ${ev.reason && ev.reason.message ? ev.reason.message : ev.reason}`));
main();
