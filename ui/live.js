// The live page: polls GET /admin/status (documented in the README, "Status") and renders it. Plain browser
// JavaScript, no build step and no dependency. Every value is written as text (textContent), never as HTML: route
// names, refusal messages and config values come from outside.
'use strict';

/** Poll period, ms: a call shows at the next poll, within a second plus the read (the README promises 2 s). */
const POLL_MS = 1000;
/** sessionStorage key: the token lives as long as the tab, never in localStorage or a cookie. */
const TOKEN_KEY = 'fusebox-admin-token';

const $ = (id) => document.getElementById(id);

/** An element with attributes and children (strings become text nodes). */
const h = (tag, attrs = {}, ...children) => {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  el.append(...children.flat().filter((c) => c !== null && c !== undefined).map((c) => (typeof c === 'string' ? c : c instanceof Node ? c : String(c))));
  return el;
};

const fmt = {
  ms: (x) => (x === null || x === undefined ? '–' : x < 10 ? `${x.toFixed(1)} ms` : `${Math.round(x)} ms`),
  pct: (x) => (x === null || x === undefined ? '–' : `${x} %`),
  usd: (x) => (x === null || x === undefined ? '–' : `$${x.toFixed(4)}`),
  num: (x) => (x === null || x === undefined ? '–' : String(x)),
  seconds: (ms) => `${(ms / 1000).toFixed(1)} s`,
  time: (iso) => (iso ? new Date(iso).toLocaleTimeString() : '–'),
  duration: (s) => (s < 120 ? `${s} s` : s < 7200 ? `${Math.floor(s / 60)} min` : `${Math.floor(s / 3600)} h`),
};

/** "spent / cap" or just "spent" when uncapped. */
const against = (spent, cap, show) => (cap === null ? show(spent) : `${show(spent)} / ${show(cap)}`);

/** Breaker states in words (the tile's colour repeats them, never replaces them). */
const BREAKER_WORDS = {
  closed: 'closed',
  open: 'open',
  half_open: 'half-open (probing)',
  forced_open: 'forced open',
  forced_closed: 'forced closed',
};

// ---- Rendering ----

/**
 * Keyed update of a list: existing children are kept (a button keeps its focus across polls), new ones made,
 * gone ones removed, order follows `items`.
 */
const reconcile = (container, items, keyOf, create, update) => {
  const old = new Map([...container.children].map((el) => [el.dataset.key, el]));
  const kept = items.map((item) => {
    const key = keyOf(item);
    let el = old.get(key);
    old.delete(key);
    if (!el) {
      el = create(item);
      el.dataset.key = key;
    }
    update(el, item);
    return el;
  });
  for (const el of old.values()) el.remove();
  kept.forEach((el, i) => {
    if (container.children[i] !== el) container.insertBefore(el, container.children[i] ?? null);
  });
};

const fillRows = (table, rows) => $(table).tBodies[0].replaceChildren(...rows);

const emptyRow = (cols, text) => h('tr', {}, h('td', { colspan: cols, class: 'empty' }, text));

const renderHeader = (doc) => {
  $('agent').textContent = `· ${doc.agent}`;
  document.title = `Fusebox · ${doc.agent}${doc.problems.length ? ` · ${doc.problems.length} problem${doc.problems.length === 1 ? '' : 's'}` : ''}`;
  $('summary').textContent = `${doc.ready ? 'Ready' : 'Not ready'} · up ${fmt.duration(doc.uptimeSeconds)} · updated ${fmt.time(doc.generatedAt)}`;
  $('summary').className = doc.ready ? 'ready' : 'not-ready';
  $('window-seconds').textContent = String(doc.windowSeconds);
};

const renderProblems = (doc) => {
  const list = $('problems');
  if (doc.problems.length === 0) list.replaceChildren(h('li', { class: 'ok' }, 'None: nothing stops calls now.'));
  else list.replaceChildren(...doc.problems.map((p) => h('li', { class: 'problem', 'data-kind': p.kind }, p.message)));
};

const retryLeft = (r) => {
  if (!r.retries.enabled) return 'retries off';
  return r.retries.budgets.map((b) => `${b.available} (${b.upstream})`).join(', ') + (r.retries.budgetExhausted ? ` · ${r.retries.budgetExhausted} refused` : '');
};

const renderRoutes = (doc) => {
  if (doc.routes.length === 0) return fillRows('routes', [emptyRow(9, 'No routes configured.')]);
  fillRows(
    'routes',
    doc.routes.map((r) =>
      h(
        'tr',
        { 'data-route': r.name },
        h('th', { scope: 'row' }, r.name, h('span', { class: 'sub' }, ` ${r.provider} → ${r.upstream}`)),
        h('td', { 'data-field': 'calls' }, String(r.traffic.calls)),
        h('td', {}, String(r.traffic.callsPerSecond)),
        h('td', { 'data-field': 'errors', class: r.traffic.errors > 0 ? 'bad' : '' }, `${r.traffic.errors} (${fmt.pct(r.traffic.errorRatePercent)})`),
        h('td', {}, fmt.ms(r.latency.p50Ms)),
        h('td', {}, fmt.ms(r.latency.p99Ms)),
        h('td', {}, String(r.inflight)),
        h('td', {}, String(r.retries.retried)),
        h('td', {}, retryLeft(r)),
      ),
    ),
  );
};

const ACTION_WORDS = { open: 'Force open', close: 'Force closed', reset: 'Reset' };

const breakerAction = (action, b) =>
  h(
    'button',
    {
      type: 'button',
      'aria-label': `${ACTION_WORDS[action]} breaker ${b.key} of route ${b.route}`,
      onclick: () => adminPost(`/admin/breakers/${action}`, { route: b.route, key: b.key }, `${ACTION_WORDS[action].toLowerCase()} breaker "${b.key}" of route "${b.route}"`),
    },
    ACTION_WORDS[action],
  );

const renderBreakers = (doc) => {
  const all = doc.routes.flatMap((r) => r.breakers);
  const list = $('breakers');
  if (all.length === 0) {
    list.replaceChildren(h('li', { class: 'empty', 'data-key': '' }, 'No breaker yet: a route, model or tool gets one on its first call.'));
    return;
  }
  reconcile(
    list,
    all,
    (b) => `${b.route}\u0000${b.key}`,
    (b) =>
      h(
        'li',
        { class: 'tile', 'data-route': b.route, 'data-breaker': b.key },
        h('h3', {}, b.key, b.key === b.route ? null : h('span', { class: 'sub' }, ` route ${b.route}`)),
        h('p', { class: 'state' }),
        h('p', { class: 'detail' }),
        h('div', { class: 'buttons' }, breakerAction('open', b), breakerAction('close', b), breakerAction('reset', b)),
      ),
    (el, b) => {
      el.dataset.state = b.state;
      el.className = `tile state-${b.state}`;
      el.querySelector('.state').textContent = BREAKER_WORDS[b.state] ?? b.state;
      const probe = b.msUntilProbe === null ? '' : ` · next probe in ${fmt.seconds(b.msUntilProbe)}`;
      const last = b.lastFailure ? ` · last failure: ${b.lastFailure}` : '';
      el.querySelector('.detail').textContent = `${b.failures} of ${b.calls} calls failed (${b.errorRatePercent} %) · ${b.consecutiveFailures} in a row${probe}${last}`;
    },
  );
};

const renderBudgets = (doc) => {
  const b = doc.budgets;
  $('budget-store').textContent = `Store: ${b.store}${b.storeAvailable ? '' : ' (unreachable)'}${b.error ? ` · ${b.error}` : ''}`;
  $('budget-store').className = b.storeAvailable && !b.error ? 'hint' : 'hint bad';
  if (b.scopes.length === 0) fillRows('budgets', [emptyRow(8, b.error ? 'The store could not be read.' : 'No caps configured.')]);
  else
    fillRows(
      'budgets',
      b.scopes.map((s) =>
        h(
          'tr',
          { class: s.exhausted ? 'exhausted' : '' },
          h('th', { scope: 'row' }, `${s.scope} ${s.id}`),
          h('td', {}, `${s.window} (${s.windowId})`),
          h('td', {}, against(s.spentUsd, s.limitUsd, fmt.usd)),
          h('td', {}, against(s.spentTokens, s.limitTokens, fmt.num)),
          h('td', {}, against(s.calls, s.limitCalls, fmt.num)),
          h('td', {}, `${fmt.usd(s.inFlightUsd)} · ${s.inFlightTokens} tokens · ${s.inFlightCalls} calls`),
          h('td', {}, s.usedPercent === null ? 'uncapped' : `${s.usedPercent} %${s.exhausted ? ' (spent)' : ''}`),
          h('td', {}, s.resetsAt ? new Date(s.resetsAt).toLocaleString() : '–'),
        ),
      ),
    );
  const kills = $('kills');
  if (b.kills.length === 0) {
    kills.replaceChildren(h('li', { class: 'empty', 'data-key': '' }, 'None set.'));
    return;
  }
  reconcile(
    kills,
    b.kills,
    (k) => `${k.kind}\u0000${k.id ?? ''}`,
    (k) => {
      const what = k.kind === 'global' ? 'global' : `${k.kind} "${k.id}"`;
      return h(
        'li',
        { class: 'kill' },
        h('span', {}),
        ' ',
        h('button', { type: 'button', onclick: () => adminPost('/admin/kill/lift', k.kind === 'global' ? { target: 'global' } : { target: k.kind, id: k.id }, `lift the kill switch on ${what}`) }, `Lift kill switch on ${what}`),
      );
    },
    (el, k) => {
      el.firstChild.textContent = `${k.kind === 'global' ? 'global' : `${k.kind} ${k.id}`}: ${k.reason} (since ${fmt.time(k.at)})`;
    },
  );
};

const renderSlos = (doc) => {
  const rows = doc.routes.flatMap((r) =>
    r.slo === null
      ? []
      : Object.entries(r.slo.slos).map(([kind, s]) =>
          h(
            'tr',
            { class: r.slo.exhausted ? 'exhausted' : '' },
            h('th', { scope: 'row' }, r.name),
            h('td', {}, kind),
            h('td', {}, `${s.objectivePercent} %`),
            h('td', {}, s.budgetRemaining === null ? '–' : `${(s.budgetRemaining * 100).toFixed(1)} %`),
            h('td', {}, Object.entries(s.burnRates).map(([w, x]) => `${w}: ${x === null ? '–' : x.toFixed(2)}`).join(' · ')),
            h('td', {}, r.slo.action === r.slo.configuredAction ? r.slo.action : `${r.slo.action} (configured: ${r.slo.configuredAction})`),
          ),
        ),
  );
  fillRows('slos', rows.length ? rows : [emptyRow(6, 'No route has SLOs.')]);
};

const renderRefusals = (doc) => {
  $('refusals-total').textContent = `${doc.refusals.total} since start; the last ${doc.refusals.recent.length} below.`;
  const rows = doc.refusals.recent.map((r) =>
    h(
      'tr',
      {},
      h('td', {}, fmt.time(r.at)),
      h('td', {}, h('code', {}, r.code)),
      h('td', {}, String(r.status)),
      h('td', {}, r.route ?? '–'),
      h('td', {}, r.mode ?? '–'),
      h('td', {}, r.message),
    ),
  );
  fillRows('refusals', rows.length ? rows : [emptyRow(6, 'None yet.')]);
};

let shownConfig = '';
const renderConfig = (doc) => {
  const text = JSON.stringify(doc.config, null, 2);
  // Rewritten only on change: a reader's text selection survives the polls.
  if (text !== shownConfig) $('config').textContent = shownConfig = text;
};

const render = (doc) => {
  renderHeader(doc);
  renderProblems(doc);
  renderRoutes(doc);
  renderBreakers(doc);
  renderBudgets(doc);
  renderSlos(doc);
  renderRefusals(doc);
  renderConfig(doc);
};

// ---- Polling ----

let timer;
let polling = false;
/** A poll was asked for (the tab shown again, an admin call answered) while one was in flight: run it right after. */
let again = false;
/** Polls finished, shown as <html data-polls>: what a test waits on instead of time. */
let polls = 0;

const setConnection = (text) => {
  $('connection').textContent = text;
  $('connection').hidden = text === '';
};

const poll = async () => {
  clearTimeout(timer);
  if (polling) {
    again = true;
    return;
  }
  polling = true;
  try {
    const res = await fetch('/admin/status', { cache: 'no-store' });
    if (!res.ok) throw new Error(`GET /admin/status answered ${res.status}`);
    render(await res.json());
    setConnection('');
  } catch (err) {
    setConnection(`Cannot read the sidecar's status: ${err.message}. Retrying…`);
  } finally {
    polling = false;
    // A hidden tab stops polling; visibilitychange starts it again.
    if (document.hidden) again = false;
    else if (again) {
      again = false;
      void poll();
    } else timer = setTimeout(poll, POLL_MS);
    document.documentElement.dataset.polls = String(++polls);
  }
};

document.addEventListener('visibilitychange', () => {
  if (!document.hidden) void poll();
});

// ---- State-changing calls (admin token) ----

const showResult = (text, ok) => {
  const el = $('action-result');
  el.textContent = text;
  el.className = `action-result ${ok ? 'ok' : 'bad'}`;
  el.hidden = false;
};

/**
 * Ask for the token in a modal dialog (prefilled with the tab's token, if any); resolves to the token ('' allowed:
 * sent without one) or null (cancelled).
 */
const askToken = (why, prefill) =>
  new Promise((resolve) => {
    const dialog = $('token-dialog');
    const form = $('token-form');
    $('token-why').textContent = `To ${why}, Fusebox needs the admin token.`;
    $('token-input').value = prefill ?? '';
    const done = (value) => {
      form.removeEventListener('submit', onSubmit);
      dialog.removeEventListener('cancel', onCancel);
      dialog.close();
      resolve(value);
    };
    const onSubmit = (e) => {
      // Closed by hand, not by method="dialog", so the page's CSP needs no form-action.
      e.preventDefault();
      done(e.submitter?.value === 'cancel' ? null : $('token-input').value);
    };
    const onCancel = (e) => {
      e.preventDefault();
      done(null);
    };
    form.addEventListener('submit', onSubmit);
    dialog.addEventListener('cancel', onCancel);
    dialog.showModal();
  });

/**
 * POST to the admin API with the bearer token; shows what the API answered, its error code and message included.
 * `confirm`: ask even when the tab holds the token (a kill switch stops calls: one stray click must not do it).
 */
const adminPost = async (path, body, why, { confirm = false } = {}) => {
  let token = sessionStorage.getItem(TOKEN_KEY);
  if (token === null || confirm) {
    token = await askToken(why, token);
    if (token === null) return;
  }
  const headers = { 'content-type': 'application/json' };
  if (token !== '') headers.authorization = `Bearer ${token}`;
  let res;
  let answer;
  try {
    res = await fetch(path, { method: 'POST', headers, body: JSON.stringify(body) });
    answer = await res.json().catch(() => ({}));
  } catch (err) {
    showResult(`Could not ${why}: ${err.message}`, false);
    return;
  }
  if (res.status === 401 || res.status === 403) sessionStorage.removeItem(TOKEN_KEY);
  else if (token !== '') sessionStorage.setItem(TOKEN_KEY, token);
  if (res.ok) showResult(`Done: ${why}.`, true);
  else showResult(`Could not ${why}: ${res.status} ${answer.code ?? ''} ${answer.message ?? ''}`.trim(), false);
  void poll();
};

const killReason = 'set from the live page';
$('kill-agent').addEventListener('click', () => adminPost('/admin/kill', { target: 'agent', reason: killReason }, 'set the kill switch on this agent', { confirm: true }));
$('kill-global').addEventListener('click', () => adminPost('/admin/kill', { target: 'global', reason: killReason }, 'set the kill switch on every agent', { confirm: true }));

void poll();
