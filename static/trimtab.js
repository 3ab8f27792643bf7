/*! trimtab.js: browser SDK of trimtab. MIT. Nothing is collected before consent; variants are the
 * page's own <template>s, params go in as text only. */
((g) => {
  if (g.trimtab?._internal) return;
  const doc = g.document, nav = g.navigator || {}, loc = g.location || {};

  // ---- Pure parts (no DOM; tested in Node via _internal) ----

  const backoff = (n, base = 500, cap = 3e4, rnd = Math.random) => {
    const d = Math.min(cap, base * 2 ** Math.min(n, 20));
    return Math.round(d / 2 + (rnd() * d) / 2);
  };

  class Queue {
    constructor(max = 1000, tries = 8) { Object.assign(this, { max, tries, pending: [], inflight: new Map(), dropped: 0 }); }
    push(ev) {
      if (this.pending.push(ev) + this.inflight.size > this.max) this.pending.shift(), this.dropped++;
    }
    take(n, maxBytes, at, via) {
      const out = [];
      for (let bytes = 0, ev; (ev = this.pending[0]) && out.length < n; out.push(this.pending.shift())) {
        if ((bytes += JSON.stringify(ev).length) > maxBytes && out.length) break;
        ev._n = (ev._n || 0) + 1;
        this.inflight.set(ev.id, { ev, at, via });
      }
      return out;
    }
    ack(ids) { return ids.filter((id) => this.inflight.delete(id)).length; }
    drop(ids) { this.dropped += this.ack(ids); }
    retry(ids) {
      const back = ids.map((id) => this.inflight.get(id)?.ev).filter((ev) => ev && this.ack([ev.id]));
      this.pending.unshift(...back.filter((ev) => ev._n < this.tries));
      this.dropped += back.filter((ev) => ev._n >= this.tries).length;
    }
    ids(pred = () => 1) { return [...this.inflight].filter(([, f]) => pred(f)).map(([id]) => id); }
  }

  const sendSplit = (evs, send) =>
    evs.length > 100 || (evs.length && !send(evs))
      ? evs.length > 1 ? [evs.slice(0, evs.length >> 1), evs.slice(evs.length >> 1)].flatMap((c) => sendSplit(c, send)) : evs
      : [];

  const httpOutcome = (s) =>
    s >= 200 && s < 300 ? 'ack' : s === 401 ? 'reauth' : !s || s === 408 || s === 429 || s >= 500 ? 'retry' : 'drop';
  const wsOutcome = (c) =>
    /^(overloaded|unavailable|internal|storage_unavailable)$/.test(c) ? 'retry'
      : /^(token_expired|invalid_token|unauthorized)$/.test(c) ? 'reauth' : 'drop';

  const bucket = (rate, burst, tokens = burst, t = 0) => (now) => {
    tokens = Math.min(burst, tokens + ((now - (t || now)) * rate) / 1000);
    t = now;
    return tokens >= 1 && tokens--;
  };

  // Consent: pending | denied | granted, stored (refusal too); GPC/DNT: denied
  class Consent {
    constructor(store, signal) {
      this.store = store;
      const s = parse(store.get('trimtab.consent'));
      this.put(/^(granted|denied)$/.test(s?.state) ? s : { state: signal ? 'denied' : 'pending' });
    }
    put({ state, analytics, personalization }) {
      this.state = state;
      this.analytics = state === 'granted' && !!analytics;
      this.personalization = this.analytics && !!personalization;
    }
    set(c = {}) {
      this.put({ ...c, state: c.analytics ? 'granted' : 'denied' });
      this.store.set('trimtab.consent', JSON.stringify({ ...this.get(), ts: Date.now() }));
    }
    reset() { this.store.del('trimtab.consent'); this.put({ state: 'pending' }); }
    get() { return { state: this.state, analytics: this.analytics, personalization: this.personalization }; }
  }

  const mile = (d) => (d >= 25) + (d >= 50) + (d >= 75) + (d >= 90);
  const scrollDepth = (top, viewH, docH) => (docH > viewH ? r1(Math.max(0, Math.min(100, ((top + viewH) * 100) / docH))) : 100);

  class Mouse {
    constructor(t) { this.t0 = t; this.path = this.moving = 0; }
    add(x, y, t, l = this.last) {
      if (l && t - l.t < 50) return;
      if (l) (this.path += Math.hypot(x - l.x, y - l.y)), (this.moving += t - l.t < 250 ? t - l.t : 0);
      this.last = { x, y, t };
    }
    summary(t) {
      const { path, moving, t0 } = this;
      Object.assign(this, new Mouse(t));
      return path >= 1 && { speed: Math.round((path * 1000) / Math.max(moving, 50)), path_px: Math.round(path), idle_ms: Math.max(0, Math.round(t - t0 - moving)) };
    }
  }

  const deviceClass = (ua) => (/iPad|Tablet|Android(?!.*Mobi)/i.test(ua) ? 'tablet' : /Mobi|iPhone/.test(ua) ? 'mobile' : 'desktop');
  const BROWSERS = [['edge', 'Edg/'], ['firefox', 'Firefox'], ['chrome', 'Chrom'], ['safari', 'Safari']];
  const browserFamily = (ua) => BROWSERS.find(([, s]) => ua.includes(s))?.[0] || 'other';

  const clip = (s, n = 256) => {
    s = String(s).replace(/[\0-\x1f\x7f-\x9f]/g, ' ');
    while (new TextEncoder().encode(s).length > n) s = s.slice(0, (s.length * 0.9) | 0);
    return s;
  };
  const r1 = (x) => Math.round(x * 10) / 10;
  const parse = (s) => { try { return JSON.parse(s); } catch { return null; } };
  const uuid = () => g.crypto.randomUUID?.() ?? [...g.crypto.getRandomValues(new Uint8Array(16))].map((x) => x.toString(16)).join('-');
  const storage = (s, mem = {}) => ({
    get: (k) => { try { return s.getItem(k) ?? mem[k]; } catch { return mem[k]; } },
    set: (k, v) => { mem[k] = v; try { s.setItem(k, v); } catch {} },
    del: (k) => { delete mem[k]; try { s.removeItem(k); } catch {} },
  });

  // ---- Browser part ----

  const script = doc?.currentScript, queue = new Queue(), subs = {}, hovers = new Map(), dwells = new Map(), inView = new Set();
  const sc = { max: 0, sent: -1, at: 0, b: bucket(4, 4) }, limit = bucket(30, 150);
  let opts = {}, store, consent, inited, running, domReady, base, ident, identP, session, adjusted = {};
  let ws, wsReady, wsFails = 0, flushTimer, flushAt = 0, holdUntil = 0, httpBusy, fails = 0, mouse, io, ticker, ticks = 0;
  let offs = [], seen = new WeakSet(), sess, sigs, sigScript, motionOk;

  const now = () => Date.now();
  const $$ = (sel, root = doc) => [...root.querySelectorAll(sel)];
  const attr = (el, n) => el.getAttribute('data-trimtab-' + n);
  const near = (el, n, x = el.closest?.(`[data-trimtab-${n}]`)) => x && attr(x, n);
  const setAttr = (el, n, v) => (v == null ? el.removeAttribute('data-trimtab-' + n) : el.setAttribute('data-trimtab-' + n, v));
  const hidden = () => doc.visibilityState === 'hidden';
  const fire = (type, data) => subs[type]?.forEach((f) => f(data));
  const on = (t, type, fn, capture = false) => {
    const o = { passive: true, capture };
    t.addEventListener(type, fn, o);
    offs.push(() => t.removeEventListener(type, fn, o));
  };
  const ensure = () => {
    if (store) return;
    const keep = (s) => { try { return storage(g[s]); } catch { return storage(); } };
    store = keep('localStorage');
    sess = keep('sessionStorage');
    consent = new Consent(store, opts.respectSignals !== false && (nav.globalPrivacyControl === true || nav.doNotTrack === '1'));
  };

  function init(o = {}) {
    if (inited) return api;
    inited = true;
    opts = o;
    store = null;
    ensure();
    base = (o.endpoint || (script?.src ? new URL(script.src).origin : loc.origin)).replace(/\/$/, '');
    if (o.token) ident = { user: o.user, token: o.token, exp: o.expires_at || 0, own: 1 };
    if (consent.state === 'granted') begin();
    if (doc) {
      const ready = () => { domReady = 1; running ? startDom() : banner(); };
      doc.readyState === 'loading' ? doc.addEventListener('DOMContentLoaded', ready) : ready();
    }
    return api;
  }

  function begin() {
    running = true;
    const t = now(), saved = parse(store.get('trimtab.id')), s = parse(store.get('trimtab.session'));
    if (ident?.own) store.set('trimtab.id', JSON.stringify(ident));
    else if (saved?.exp > t / 1000 + 60) ident = saved;
    session = s && t - s.last < 18e5 ? s : { id: uuid(), last: t }; // new after 30 min idle
    if (doc) {
      const css = doc.createElement('style');
      css.textContent = '.trimtab-deciding [data-trimtab-decide]:not([data-trimtab-done]){visibility:hidden}'
        + '[data-trimtab-slot]{transition:opacity .3s}.trimtab-in{opacity:0}';
      doc.head.append(css);
      if (consent.personalization && !domReady) { // before first paint only
        doc.documentElement.classList.add('trimtab-deciding');
        setTimeout(reveal, Math.min(opts.decideTimeout || 800, 950)); // hard limit < 1 s
      }
    }
    emit('page_view', { path: page(), title: doc?.title ? clip(doc.title) : undefined });
    getIdent().then(() => { connect(); schedule(0); });
    if (domReady) startDom();
  }

  function stop() {
    running = false;
    offs.forEach((f) => f());
    offs = [];
    sigs?.stop();
    sigs = null;
    io = io?.disconnect();
    clearInterval(ticker);
    ticker = 0;
    [hovers, dwells, inView, queue.inflight, queue.pending = []].forEach((m) => m.clear?.());
    seen = new WeakSet();
    closeWs();
    ['trimtab.id', 'trimtab.session'].forEach(store.del);
    sess.del('trimtab.left');
    if (!ident?.own) ident = null;
    reveal();
  }

  const page = () => clip(opts.page || loc.pathname);
  const context = (t) => {
    const d = new Date(t), ua = nav.userAgent || '', w = g.innerWidth | 0;
    return {
      page: page(), device: deviceClass(ua), browser: browserFamily(ua), viewport_w: w,
      viewport_h: g.innerHeight | 0, hour: d.getHours(), tz_offset_min: -d.getTimezoneOffset(), language: nav.language || undefined,
    };
  };

  function emit(type, props = {}, target, fast) {
    const t = now();
    if (!running || !limit(t)) return;
    if (t - session.last > 5000) store.set('trimtab.session', JSON.stringify(Object.assign(session, { last: t })));
    const ev = { id: uuid(), type, session: session.id, ts: t, props, context: context(t), consent: { analytics: true, personalization: consent.personalization } };
    if (target) ev.target = clip(target, 64);
    queue.push(ev);
    schedule(fast || /click|conversion/.test(type) ? 0 : 200);
  }

  // ---- Transport: WebSocket, else HTTP; sendBeacon when hidden ----

  function schedule(ms) {
    if (flushTimer && flushAt <= now() + ms) return;
    clearTimeout(flushTimer);
    flushAt = now() + ms;
    flushTimer = setTimeout(flush, ms);
  }
  function flush() {
    flushTimer = 0;
    if (!running || !ident) return;
    const t = now();
    queue.retry(queue.ids((f) => t - f.at > 1e4)); // no ack in 10 s: resend, same ids
    if (queue.inflight.size) schedule(1e4);
    if (!queue.pending.length) return;
    if (t < holdUntil) return schedule(holdUntil - t);
    if (wsReady) while (queue.pending.length) ws.send(JSON.stringify({ type: 'events', events: queue.take(100, 2e5, t, 'ws').map(wire) }));
    else if (!ws || wsFails > 1) post();
  }
  const wire = ({ _n, ...ev }) => ev;
  const ids = (evs) => evs.map((e) => e.id);

  async function request(method, path, body, auth) {
    const headers = {}, s = body && JSON.stringify(body);
    if (s) headers['content-type'] = 'application/json';
    if (auth) headers.authorization = 'Bearer ' + auth;
    try {
      const r = await fetch(base + path, { method, headers, body: s, keepalive: s?.length < 6e4 });
      return { status: r.status, body: parse(await r.text()), retry: +r.headers.get('retry-after') };
    } catch {
      return { status: 0 };
    }
  }

  async function post() {
    if (httpBusy || !ident) return;
    const b = ids(queue.take(100, 6e4, now(), 'http'));
    if (!b.length) return;
    httpBusy = true;
    const r = await request('POST', '/v1/events', { events: b.map((id) => wire(queue.inflight.get(id).ev)) }, ident.token);
    httpBusy = false;
    const what = httpOutcome(r.status);
    if (what === 'ack') return queue.ack(b), (fails = 0), schedule(0);
    if (what === 'drop') return queue.drop(b);
    queue.retry(b);
    what === 'reauth' ? renew() : hold(r.retry * 1000);
  }
  function hold(ms) {
    holdUntil = now() + (ms || backoff(fails++, 1000));
    schedule(holdUntil - now());
  }

  // Hidden/leaving: unacked events by sendBeacon
  function beacon() {
    if (!running || !ident) return;
    const evs = [...queue.inflight.values()].map((f) => f.ev).concat(queue.take(1e9, 1e12, now(), 'beacon'));
    sendSplit(evs, (c) => nav.sendBeacon?.(base + '/v1/events', new Blob([JSON.stringify({ token: ident.token, events: c.map(wire) })], { type: 'text/plain' })));
  }

  function getIdent(old = ident) {
    if (old && (!old.exp || old.exp > now() / 1000 + 30)) return Promise.resolve(old);
    if (old?.own) return Promise.resolve(); // site renews its own
    return (identP ||= request('POST', '/v1/anonymous', old ? { user: old.user, token: old.token } : {}).then(({ body: d }) => {
      identP = null;
      if (!d?.token && old) return getIdent(null);
      if (d?.token && running) store.set('trimtab.id', JSON.stringify((ident = { user: d.user, token: d.token, exp: d.expires_at })));
      return ident;
    }, () => (identP = null)));
  }
  function renew() {
    if (ident?.own) return;
    const old = ident;
    ident = null;
    store.del('trimtab.id');
    closeWs();
    getIdent(old).then((i) => i && (connect(), schedule(0)));
  }

  function connect() {
    if (ws || !running || !ident || !g.WebSocket) return;
    const s = (ws = new WebSocket(base.replace(/^http/, 'ws') + '/v1/ws'));
    s.onopen = () => s.send(JSON.stringify({ type: 'auth', token: ident.token }));
    s.onmessage = (m) => ws === s && onMessage(parse(m.data) || {});
    s.onclose = (e) => {
      if (ws !== s) return;
      ws = wsReady = null;
      queue.retry(queue.ids((f) => f.via === 'ws'));
      if (!running) return;
      if (e.code === 1008) return renew(); // auth problem: new token
      setTimeout(connect, backoff(wsFails++, 1000));
      schedule(0);
    };
  }
  function closeWs() {
    const s = ws;
    ws = wsReady = null;
    s?.close(1000);
  }
  function onMessage(d) {
    if (d.type === 'ready') (wsReady = true), (wsFails = 0), schedule(0);
    else if (d.type === 'ack') queue.ack(d.ids || []);
    else if (d.type === 'adjust') receive(d);
    else if (d.type === 'error') {
      const what = wsOutcome(d.code), i = d.ids || [];
      if (what === 'drop') return queue.drop(i);
      queue.retry(i);
      what === 'reauth' ? renew() : hold();
    }
  }

  // ---- Adjustments ----

  function reveal(slot) {
    if (!doc) return;
    $$('[data-trimtab-decide]').forEach((el) => (!slot || attr(el, 'slot') === slot) && setAttr(el, 'done', ''));
    if (!slot) doc.documentElement.classList.remove('trimtab-deciding');
  }
  const slotEls = (slot) => $$('[data-trimtab-slot]').filter((el) => attr(el, 'slot') === slot);
  const templates = (el) => $$('template[data-trimtab-variant]', el);

  function receive(a) {
    if (!a?.variant || !running || !consent.personalization) return;
    adjusted[a.slot] = a;
    if (domReady) slotEls(a.slot).forEach((el) => show(el, a));
    fire('adjust', a);
  }

  // A variant: a clone of its template, params as text only
  function show(el, a) {
    const tpl = templates(el).find((t) => attr(t, 'variant') === a.variant), id = a.decision?.id, p = a.params || {};
    if (attr(el, 'variant') === a.variant || (!tpl && a.variant !== 'default')) return;
    const st = (el._trimtab ||= { orig: [...el.childNodes].filter((n) => n.nodeName !== 'TEMPLATE'), cur: [] });
    el.style.minHeight = el.offsetHeight + 'px'; // no collapse while swapping
    (st.cur.length ? st.cur : st.orig).forEach((n) => n.remove());
    const frag = tpl ? tpl.content.cloneNode(true) : doc.createDocumentFragment();
    $$('[data-trimtab-param]', frag).forEach((n) => Object.hasOwn(p, attr(n, 'param')) && (n.textContent = String(p[attr(n, 'param')])));
    if (!tpl) frag.append(...st.orig);
    st.cur = tpl ? [...frag.childNodes] : [];
    el.classList.add('trimtab-in');
    el.prepend(frag);
    setAttr(el, 'variant', a.variant);
    setAttr(el, 'decision', id);
    setAttr(el, 'done', '');
    requestAnimationFrame(() => requestAnimationFrame(() => el.classList.remove('trimtab-in')));
    setTimeout(() => (el.style.minHeight = ''), 400);
    if (id) io?.observe(el);
  }

  async function decide(slot, candidates) {
    let d = null;
    if (running && consent.personalization && (await getIdent())) {
      const all = slotEls(slot).flatMap((el) => templates(el).map((t) => attr(t, 'variant')));
      const r = await request('POST', '/v1/decide', { slot, candidates: candidates || [...new Set(['default', ...all])] }, ident.token);
      if (r.status === 200 && !adjusted[slot]) receive((d = r.body)); // unless pushed meanwhile
    }
    reveal(slot);
    return d;
  }

  // ---- Tracking in the page ----

  async function startDom() {
    if (!running || offs.length) return;
    for (const s in adjusted) slotEls(s).forEach((el) => show(el, adjusted[s])); // arrived before the DOM
    on(g, 'scroll', onScroll, true);
    on(g, 'resize', onScroll);
    on(g, 'load', onScroll);
    on(doc, 'pointerover', onOver);
    on(doc, 'pointerout', onOut);
    on(doc, 'pointermove', (e) => e.pointerType !== 'touch' && mouse.add(e.clientX, e.clientY, now()));
    on(doc, 'click', onClick, true);
    on(doc, 'visibilitychange', onVisibility);
    on(g, 'pagehide', onPageHide);
    on(g, 'pageshow', (e) => {
      if (e.persisted) emit('page_view', { path: page() }), connect();
      sigs?.show(e.persisted);
    });
    io = new IntersectionObserver(onView, { threshold: [0, 0.25, 0.5, 0.75, 1] });
    const mo = new MutationObserver(() => (sc.scan ||= requestAnimationFrame(scan)));
    mo.observe(doc.body, { childList: true, subtree: true });
    offs.push(() => mo.disconnect());
    scan();
    mouse = new Mouse(now());
    const timer = setInterval(() => { const s = mouse.summary(now()); s && emit('mouse', s); }, 5000);
    offs.push(() => clearInterval(timer));
    signals();
    onScroll();
    const slots = [...new Set($$('[data-trimtab-decide]').map((el) => attr(el, 'slot')))].filter((s) => !adjusted[s]);
    if (!slots.length) return reveal();
    if (await getIdent()) await post(); // context first: rules may use it
    slots.forEach((s) => decide(s));
  }

  function scan() {
    sc.scan = 0;
    $$('[data-trimtab-track],[data-trimtab-decision]').forEach((el) => io && !seen.has(el) && (seen.add(el), io.observe(el)));
  }

  function start(map, kind, el, t, delay) {
    if (map.has(el)) return;
    const s = { t0: t, timer: setTimeout(() => (s.on = 1) && emit(kind, { phase: 'start', duration_ms: 0 }, attr(el, 'track')), delay) };
    map.set(el, s);
    ticker ||= setInterval(tick, 500);
  }
  function end(map, kind, el, t) {
    const s = map.get(el);
    map.delete(el);
    clearTimeout(s?.timer);
    if (s?.on) emit(kind, { phase: 'end', duration_ms: t - s.t0 }, attr(el, 'track'));
  }
  // Heartbeats: hovers every 500 ms, dwells every 2 s
  function tick() {
    const beat = (kind) => (s, el) => s.on && emit(kind, { phase: 'heartbeat', duration_ms: now() - s.t0 }, attr(el, 'track'));
    hovers.forEach(beat('hover'));
    if (++ticks % 4 === 0) dwells.forEach(beat('dwell'));
  }
  function endAll(t) {
    hovers.forEach((s, el) => end(hovers, 'hover', el, t));
    dwells.forEach((s, el) => end(dwells, 'dwell', el, t));
  }

  function onOver(e) {
    if (e.pointerType === 'touch') return;
    for (let el = e.target.closest?.('[data-trimtab-track]'); el; el = el.parentElement?.closest('[data-trimtab-track]')) start(hovers, 'hover', el, now(), 120);
  }
  function onOut(e) {
    hovers.forEach((s, el) => !el.contains(e.relatedTarget) && end(hovers, 'hover', el, now()));
  }
  // Dwell: tracked element ≥ 50% in view; impression: adjusted slot seen
  function onView(entries) {
    for (const e of entries) {
      const el = e.target, id = attr(el, 'decision');
      const ok = e.isIntersecting && (e.intersectionRatio >= 0.5 || e.intersectionRect.height >= e.rootBounds?.height / 2);
      if (attr(el, 'track')) {
        if (ok) inView.add(el), hidden() || start(dwells, 'dwell', el, now(), 0);
        else inView.delete(el), end(dwells, 'dwell', el, now());
      }
      if (ok && id && el._trimtabSeen !== id) {
        el._trimtabSeen = id;
        emit('impression', { slot: clip(attr(el, 'slot')), variant: clip(attr(el, 'variant')), decision: clip(id) });
      }
    }
  }
  function onClick(e) {
    const t = e.target, id = near(t, 'decision'), target = near(t, 'track') || near(t, 'slot');
    if (target || t.closest?.('a,button')) emit('click', id ? { decision: clip(id) } : {}, target);
  }

  function onScroll() { sc.raf ||= running && requestAnimationFrame(measure); }
  function measure() {
    const el = doc.documentElement, t = now();
    sc.raf = 0;
    sc.depth = scrollDepth(g.scrollY, g.innerHeight, Math.max(el.scrollHeight, doc.body.scrollHeight));
    sc.max = Math.max(sc.max, sc.depth);
    clearTimeout(sc.idle);
    sc.idle = setTimeout(sendScroll, 300);
    // milestones (25/50/75/90%) go out at once, 4/s at most; other progress every 250 ms
    const m = mile(sc.depth) > mile(sc.sent) && sc.b(t);
    if (m || (Math.abs(sc.depth - sc.sent) >= 5 && t - sc.at >= 250)) sendScroll(m);
    sigs?.scroll(t);
  }
  function sendScroll(fast) {
    const t = now(), v = sc.sent < 0 ? 0 : ((sc.depth - sc.sent) * 1000) / Math.max(t - sc.at, 1);
    if (Math.abs(sc.depth - sc.sent) < 0.5) return;
    Object.assign(sc, { sent: sc.depth, at: t });
    emit('scroll', { depth: sc.depth, max_depth: sc.max, velocity: r1(v) }, 0, fast);
  }

  // The signals' hide hook first: the hidden exit intent and the last engagement go in the beacon
  function onVisibility() {
    const t = now(), visible = !hidden();
    if (!visible) sigs?.hide(t, false);
    emit('visibility', { visible });
    if (visible) inView.forEach((el) => start(dwells, 'dwell', el, t, 0)), connect(), schedule(0);
    else endAll(t), beacon();
  }
  function onPageHide() {
    sigs?.hide(now(), true);
    if (!hidden()) endAll(now()), emit('visibility', { visible: false });
    beacon();
    closeWs(); // else no back/forward cache
  }

  // ---- Behavioural signals: trimtab-signals.js, loaded once tracking starts (after consent) ----

  // A signal's target: the tracked element's name, else the slot's, else tag#id
  const name = (el) => near(el, 'track') || near(el, 'slot') || (el.localName + (el.id && '#' + el.id)).toLowerCase();

  // Hooks (sigs): scroll(t), hide(t, pagehide) before a beacon, show(persisted), stop(); its
  // listeners go through `on`
  function signals() {
    if (opts.signals === false || sigs || !running || !offs.length) return;
    if (!g.trimtabSignals) {
      if (!sigScript) {
        sigScript = doc.createElement('script');
        sigScript.src = base + '/trimtab-signals.js';
        sigScript.onload = signals;
        doc.head.append(sigScript);
      }
      return;
    }
    sigs = g.trimtabSignals.start({
      options: opts.signals,
      emit: (kind, props, target, fast) => emit('signal', { kind, ...props }, target, fast),
      name, now, hidden, on, store: sess,
      back: g.performance?.getEntriesByType('navigation')[0]?.type === 'back_forward',
      motion: motionOk,
    });
  }

  // ---- Consent and the API ----

  function banner() {
    if (!opts.banner || consent.state !== 'pending') return;
    if (g.trimtabBanner) return g.trimtabBanner(opts.banner === true ? {} : opts.banner, setConsent);
    const s = doc.createElement('script');
    s.src = base + '/trimtab-banner.js';
    s.onload = banner;
    doc.head.append(s);
  }

  function setConsent(c) {
    ensure();
    if (!c) return consent.get();
    const was = running;
    consent.set(c);
    // iOS: motion access for the signals (motionOk: a promise of yes/no), asked within the click
    if (c.analytics && inited && opts.signals !== false) motionOk = g.DeviceMotionEvent?.requestPermission?.().then((s) => s === 'granted', () => false);
    doc?.getElementById('trimtab-banner')?.remove();
    if (consent.state !== 'granted') was && stop();
    else if (was) emit('custom', { name: 'consent', personalization: consent.personalization });
    else if (inited) begin(), consent.personalization || reveal();
    fire('consent', consent.get());
    return consent.get();
  }

  function conversion(name, value, where) {
    const p = {}, id = where?.closest('[data-trimtab-decision]')?.getAttribute('data-trimtab-decision');
    if (name) p.name = clip(name);
    if (Number.isFinite(value)) p.value = value;
    if (id) p.decision = id;
    emit('conversion', p);
  }
  async function me() {
    const r = running && (await getIdent()) && (await request('GET', '/v1/me', null, ident.token));
    return r?.status === 200 ? r.body : null;
  }
  async function forget() {
    const i = running && (await getIdent());
    stop(); // nothing is sent after the erasure
    const r = i ? await request('DELETE', '/v1/me', null, i.token) : { status: 200 };
    consent.reset();
    adjusted = {};
    fire('consent', consent.get());
    banner();
    return r.status < 300;
  }

  const api = (g.trimtab = {
    version: '1.0.0',
    init,
    consent: setConsent,
    decide,
    apply: receive,
    conversion,
    me,
    forget,
    flush: () => schedule(0),
    on: (type, fn) => ((subs[type] ||= []).push(fn), () => (subs[type] = subs[type].filter((f) => f !== fn))),
    _internal: { Queue, Consent, Mouse, bucket, backoff, sendSplit, httpOutcome, wsOutcome, scrollDepth, deviceClass, browserFamily, clip, uuid, storage },
  });
})(globalThis);
