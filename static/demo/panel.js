// Demo side panel: what trimtab detected about this visitor (GET /v1/me, polled every second)
// and why the page changed (each adjustment received, with the rule that asked for it).
// Built with textContent only. Needs trimtab.js loaded and trimtab.init() called first. Marked
// data-trimtab-ignore: its updates are no change of the page, its text no reading, for the signals.
(() => {
  const t = globalThis.trimtab;
  const el = (tag, attrs = {}, ...kids) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) k === 'text' ? (e.textContent = v) : e.setAttribute(k, v);
    e.append(...kids);
    return e;
  };
  const fmtMs = (ms) => (ms >= 1000 ? (ms / 1000).toFixed(1) + ' s' : Math.round(ms || 0) + ' ms');
  const changes = []; // adjustments received on this page
  // An ongoing hover or stay in view: a number of ms, or {started_ms, last_seen_ms} (server clock).
  const ongoing = (ms, o) => (typeof ms === 'number' ? ms : o ? Math.max(o.last_seen_ms - o.started_ms, Date.now() - o.started_ms, 0) : 0);
  const direction = (d) => (typeof d === 'string' ? d : d > 0 ? 'down' : d < 0 ? 'up' : 'none');

  const panel = el('aside', { class: 'tt-panel', 'aria-label': 'What trimtab sees', id: 'tt-panel', 'data-trimtab-ignore': '' });
  const toggle = el('button', { class: 'tt-toggle', type: 'button', text: 'What trimtab sees ▲' });
  toggle.onclick = () => panel.classList.toggle('open');
  const body = el('div');
  panel.append(toggle, el('h2', { text: 'What trimtab sees' }),
    el('p', { class: 'sub', text: 'Live view of this visitor, as the engine holds it, and why the page changed.' }), body);
  document.body.append(panel);

  function section(title, ...kids) {
    return [el('h3', { text: title }), ...kids];
  }

  function consentBlock() {
    const c = t.consent();
    const pill = el('span', { class: 'pill ' + c.state, 'data-testid': 'consent-state', text: c.state });
    const detail = c.state === 'granted'
      ? `analytics ✓ · personalization ${c.personalization ? '✓' : '✗'}`
      : c.state === 'denied' ? 'nothing is collected or sent' : 'waiting for your choice: nothing is collected';
    const actions = el('div', { class: 'actions' });
    const btn = (text, fn, id) => {
      const b = el('button', { type: 'button', text, 'data-testid': id });
      b.onclick = fn;
      actions.append(b);
    };
    if (c.state !== 'granted') btn('Allow', () => t.consent({ analytics: true, personalization: true }), 'allow');
    if (c.state === 'granted') {
      btn('Withdraw consent', () => t.consent({ analytics: false, personalization: false }), 'withdraw');
      btn('Forget me', () => t.forget().then(render), 'forget');
    }
    return section('Consent', el('div', {}, pill, ' ', el('span', { class: 'muted', text: detail })), actions);
  }

  function scrollBlock(s = {}) {
    const depth = s.depth || 0, max = s.max_depth || 0;
    const bar = el('div', { class: 'bar' }, el('i', { class: 'max', style: `width:${max}%` }), el('i', { style: `width:${depth}%` }), el('span', { class: 'mark', title: '75%: the article offer rule' }));
    return section('Scroll', bar, el('div', { class: 'kv' },
      el('span', { class: 'muted', text: 'depth' }), el('span', { 'data-testid': 'scroll-depth', text: `${depth.toFixed(1)} %` }),
      el('span', { class: 'muted', text: 'max depth' }), el('span', { 'data-testid': 'scroll-max', text: `${max.toFixed(1)} %` }),
      el('span', { class: 'muted', text: 'velocity' }), el('span', { text: `${(s.velocity || 0).toFixed(1)} %/s${direction(s.direction) !== 'none' ? ' · ' + direction(s.direction) : ''}` })));
  }

  // Behavioural signals of this session: the two scores always, the counters once non-zero.
  function signalsBlock(g = {}) {
    const kv = el('div', { class: 'kv', 'data-testid': 'signals' });
    const add = (k, v, id, cls = '') => kv.append(el('span', { class: 'muted', text: k }), el('span', { class: cls, 'data-testid': 'signal-' + id, text: v }));
    const pct = (x) => `${Math.round((x || 0) * 100)} %`;
    add('frustration', pct(g.frustration), 'frustration', g.frustration >= 0.5 ? 'live' : '');
    add('intent', pct(g.intent), 'intent');
    const count = (k, label, more) => g[k] > 0 && add(label, String(g[k]) + (more ? ` · ${more}` : ''), k);
    count('rage_clicks', 'rage clicks');
    count('dead_clicks', 'dead clicks');
    count('error_clicks', 'error clicks');
    count('hesitations', 'hesitations', g.hesitation_ms > 0 && fmtMs(g.hesitation_ms));
    count('exit_intents', 'exit intents', g.exit_via);
    count('excessive_scrolls', 'scroll reversals');
    count('quick_backs', 'quick backs');
    if (g.engaged_ms > 0) add('engaged', fmtMs(g.engaged_ms), 'engaged_ms');
    if (g.reading_wpm > 0) add('reading', `${Math.round(g.reading_wpm)} wpm`, 'reading_wpm');
    if (g.motion) add('motion', g.motion + (g.tilt > 0 ? ` · tilt ${Math.round(g.tilt)}°` : ''), 'motion');
    return section('Signals', kv);
  }

  function targetsBlock(targets = {}) {
    const rows = Object.entries(targets).sort((a, b) => (b[1].hover_ms || 0) - (a[1].hover_ms || 0));
    if (!rows.length) return section('Attention per element', el('p', { class: 'muted', text: 'Hover or look at a marked element.' }));
    const tb = el('tbody');
    for (const [name, v] of rows) {
      const hover = (v.hover_ms || 0) + ongoing(v.hovering_ms, v.hovering);
      const inView = (v.dwell_ms || 0) + ongoing(v.in_view_ms, v.in_view);
      tb.append(el('tr', { 'data-testid': 'target-' + name },
        el('td', { text: name }),
        el('td', { class: 'num' + (v.hovering ? ' live' : ''), 'data-testid': 'hover-' + name, text: fmtMs(hover) }),
        el('td', { class: 'num', text: fmtMs(inView) }),
        el('td', { class: 'num', text: String(v.clicks || 0) })));
    }
    return section('Attention per element', el('table', {}, el('thead', {}, el('tr', {},
      el('th', { text: 'element' }), el('th', { class: 'num', text: 'hover' }), el('th', { class: 'num', text: 'in view' }), el('th', { class: 'num', text: 'clicks' }))), tb));
  }

  function sequenceBlock(seq = []) {
    const box = el('div', { class: 'seq', 'data-testid': 'sequence' });
    for (const s of seq.slice(-14)) box.append(el('span', { text: s }));
    return section('Interaction sequence (latest last)', seq.length ? box : el('p', { class: 'muted', text: '—' }));
  }

  function contextBlock(c = {}, mouse = {}) {
    const kv = el('div', { class: 'kv' });
    const add = (k, v) => v !== undefined && v !== '' && kv.append(el('span', { class: 'muted', text: k }), el('span', { text: String(v) }));
    add('device', c.device); add('browser', c.browser);
    add('viewport', c.viewport_w ? `${c.viewport_w}×${c.viewport_h}` : undefined);
    add('local hour', c.hour); add('language', c.language);
    add('mouse', mouse.speed !== undefined ? `${Math.round(mouse.speed)} px/s · ${Math.round(mouse.path_px || 0)} px` : undefined);
    return section('Context', kv);
  }

  function whyBlock() {
    if (!changes.length) return section('Why the page changed', el('p', { class: 'muted', 'data-testid': 'why-empty', text: 'No adjustment yet. Read on, or linger on the product photo.' }));
    const ul = el('ul', { class: 'why', 'data-testid': 'why' });
    for (const a of changes.slice().reverse()) {
      const d = a.decision || {};
      const params = Object.entries(a.params || {}).map(([k, v]) => `${k}: “${v}”`).join(', ');
      ul.append(el('li', {},
        el('div', {}, el('b', { text: `${a.slot} → ${a.variant}` }), el('span', { class: 'muted', text: ` · ${a.at}` })),
        el('div', { text: d.rule ? `rule ${d.rule}` : d.source === 'default' ? 'first paint: no rule applies, page default kept' : `source ${d.source || 'engine'}` }),
        params ? el('code', { text: params }) : ''));
    }
    return section('Why the page changed', ul);
  }

  let last = null;
  function render() {
    const st = last?.state || {};
    body.replaceChildren(...consentBlock(), ...whyBlock(), ...scrollBlock(st.scroll), ...signalsBlock(st.signals), ...targetsBlock(st.targets),
      ...sequenceBlock(st.sequence), ...contextBlock(st.context, st.mouse));
  }

  t.on('adjust', (a) => {
    changes.push({ ...a, at: new Date().toLocaleTimeString() });
    render();
  });
  t.on('consent', () => { last = null; render(); });

  let busy = false;
  setInterval(async () => {
    if (busy || document.visibilityState === 'hidden' || t.consent().state !== 'granted') return;
    busy = true;
    try {
      last = (await t.me()) || last;
      render();
    } finally {
      busy = false;
    }
  }, 1000);
  render();
})();
