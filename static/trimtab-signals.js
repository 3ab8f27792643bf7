/*! trimtab-signals.js (MIT): loaded by trimtab.js after consent */
((g) => {
  if (g.trimtabSignals) return;

  // init({signals: {…}}) overrides these
  const SIG = {
    rageClicks: 3, rageMs: 1000, ragePx: 30, deadMs: 1000, hesitateMs: 1500, idleMs: 2000,
    reversals: 4, reversalMs: 6000, reversalPx: 40, quickBackMs: 10000, engageMs: 15000, exitMs: 5000,
    readMs: 5000, readWords: 30,
  };
  const INTERACTIVE = 'a[href],button,input,select,textarea,label,summary,details,video,audio,[role=button],[role=link],'
    + '[role=checkbox],[role=tab],[role=menuitem],[onclick],[contenteditable],[tabindex],[data-trimtab-slot],[data-trimtab-track]';
  const CTA = '[data-trimtab-cta],button,[role=button],input[type=submit],a[href]';
  const TEXT = 'p,li,h1,h2,h3,h4,h5,h6,blockquote,pre,td,dd,figcaption';
  const IGNORE = '[data-trimtab-ignore]'; // not content, e.g. a debug panel
  const LEFT = 'trimtab.left'; // sessionStorage

  // Rage click: the rageClicks-th click within rageMs and ragePx of a burst's first
  function rage(c = SIG) {
    let first = null, count = 0;
    return (x, y, t) => {
      if (first && t - first.t <= c.rageMs && Math.hypot(x - first.x, y - first.y) <= c.ragePx) count++;
      else (first = { x, y, t }), (count = 1);
      return count === c.rageClicks && { count, duration_ms: t - first.t };
    };
  }

  // Excessive scroll: `reversals` direction changes, each after ≥ reversalPx, within reversalMs
  function reversals(c = SIG) {
    let times = [], last, dir = 0, legStart;
    return (y, t) => {
      const d = last == null ? 0 : Math.sign(y - last);
      if (d && d !== dir) {
        if (dir && Math.abs(last - legStart) >= c.reversalPx) times.push(t);
        dir = d;
        legStart = last;
      }
      last = y;
      times = times.filter((at) => t - at <= c.reversalMs);
      if (times.length < c.reversals) return false;
      const n = times.length;
      times = [];
      return n;
    };
  }

  // Reading: words read (scrolled past) per minute, once ≥ readMs and ≥ readWords since the first
  function reading(c = SIG) {
    let words = 0, since;
    return (passed, t) => {
      const ms = t - since;
      const wpm = ms >= c.readMs && words >= c.readWords && Math.min(1e4, Math.round(((words * 6e4) / ms) * 10) / 10);
      if (wpm) words = 0;
      if (passed) {
        if (!words) since = t;
        words += passed;
      }
      return wpm;
    };
  }

  // Engagement: time with input in the 5 s before
  function engaged() {
    let total = 0, since = 0, lastInput = -1e9;
    return (t, input, hidden) => {
      total += Math.max(0, Math.min(t, lastInput + 5000) - Math.max(since, lastInput));
      since = t;
      if (input) {
        lastInput = t;
        return 0;
      }
      if (hidden) lastInput = -1e9;
      const ms = Math.min(total, 60000);
      total = 0;
      return ms;
    };
  }

  // Motion: RMS of the acceleration less gravity, per 2 s, if changed
  const rms = (s) => Math.sqrt(s.reduce((a, x) => a + x * x, 0) / s.length);
  const motionState = (r) => (r < 0.5 ? 'still' : r < 4 ? 'walking' : 'shaking');
  function motion() {
    let samples = [], since, gravity, last;
    return (e, t, tilt) => {
      let a = e.acceleration;
      const withGravity = a?.x == null;
      if (withGravity) a = e.accelerationIncludingGravity;
      if (a?.x == null) return;
      let v = [a.x, a.y, a.z];
      if (withGravity) { // minus its running mean
        gravity = gravity?.map((u, i) => u + (v[i] - u) / 10) || v;
        v = v.map((x, i) => x - gravity[i]);
      }
      samples.push(Math.hypot(...v));
      if (t - (since ??= t) < 2000) return;
      const n = samples.length, state = motionState(rms(samples));
      samples = [];
      since = t;
      const changed = state !== last?.state || Math.abs((tilt ?? 999) - (last.tilt ?? 999)) >= 15;
      return n > 4 && changed && (last = { state, tilt });
    };
  }

  // Quick back: back within 30 s from another page shown < quickBackMs
  const quickBack = (left, path, t, back, c = SIG) =>
    back && left && t - left.at <= 30000 && left.path !== path && left.shown_ms < c.quickBackMs ? left.shown_ms : null;

  const hesitated = { hover: new WeakSet(), idle: new WeakSet() }, read = new WeakSet();

  // ctx: see signals() in trimtab.js
  function start(ctx) {
    const c = { ...SIG, ...ctx.options }, { emit, name, now, hidden, on, store } = ctx, doc = g.document;
    let changes = 0; // anything answering a click

    // ---- Hesitation: hovering for hesitateMs, or still over a CTA for idleMs; once per element ----
    let hovered = null, hoverTimer, idleTimer;
    const hesitation = (el, via, since) => {
      if (!el.matches(':hover') || hesitated[via].has(el)) return;
      hesitated[via].add(el);
      emit('hesitation', { duration_ms: now() - since, via }, name(el), true);
    };
    on(doc, 'pointermove', (e) => {
      const t = now(), el = (e.pointerType !== 'touch' && e.target.closest(INTERACTIVE + ',[data-trimtab-cta]')) || null;
      if (el !== hovered) {
        clearTimeout(hoverTimer);
        hovered = el;
        hoverTimer = el && setTimeout(hesitation, c.hesitateMs, el, 'hover', t);
      }
      clearTimeout(idleTimer);
      const cta = el && e.target.closest(CTA);
      idleTimer = cta && setTimeout(hesitation, c.idleMs, cta, 'idle', t);
    });

    // ---- Clicks ----
    let lastClick = null, deadTimer;
    const burst = rage(c);
    const pageChange = new MutationObserver((records) => {
      if (records.some((r) => !r.target.parentElement?.closest(IGNORE))) changes++, pageChange.disconnect();
    });
    on(doc, 'click', (e) => {
      const click = ++changes, el = e.target, t = now();
      clearTimeout(deadTimer);
      if (!el.closest) return;
      const target = name(el), r = e.detail && burst(e.clientX, e.clientY, t); // detail 0: by keyboard
      if (r) emit('rage_click', r, target, true);
      lastClick = { t, target };
      if (hovered?.contains(el)) clearTimeout(hoverTimer);
      clearTimeout(idleTimer);
      // Dead click: not interactive, then no change for deadMs
      if (e.button || el.closest(INTERACTIVE) || getComputedStyle(el).cursor === 'pointer') return;
      pageChange.observe(doc.documentElement, { childList: true, subtree: true, attributes: true, characterData: true });
      deadTimer = setTimeout(() => {
        if (click !== changes) return;
        pageChange.disconnect();
        if (getSelection()?.isCollapsed !== false) emit('dead_click', {}, target);
      }, c.deadMs);
    }, true);
    // Error click: an error within deadMs of a click
    const onError = () => {
      if (!lastClick || now() - lastClick.t > c.deadMs) return;
      changes++;
      emit('error_click', {}, lastClick.target, true);
      lastClick = null;
    };
    on(g, 'error', onError);
    on(g, 'unhandledrejection', onError);

    // ---- Engagement: every engageMs and when hidden ----
    let pointerType;
    const engagement = engaged();
    const reportEngagement = (hid) => {
      const ms = engagement(now(), false, hid);
      if (ms) emit('engagement', { duration_ms: ms }, 0, hid);
    };
    const every = setInterval(reportEngagement, c.engageMs);
    for (const type of 'pointermove pointerdown keydown scroll touchstart wheel'.split(' ')) {
      on(g, type, (e) => {
        pointerType = e.pointerType || pointerType;
        engagement(now(), true);
      }, true);
    }

    // ---- Exit intent: out at the top, a flick down, hidden; once per exitMs ----
    const lastExit = {};
    const exitIntent = (via, t = now()) => {
      if (t - lastExit[via] < c.exitMs) return;
      lastExit[via] = t;
      emit('exit_intent', { via }, 0, true);
    };
    on(doc, 'mouseout', (e) => {
      if (!e.relatedTarget && e.clientY <= 0 && pointerType !== 'touch') exitIntent('top');
    });
    let touch = null;
    on(doc, 'touchstart', (e) => (touch = { y: e.touches[0].clientY, t: now() }));
    on(doc, 'touchend', (e) => {
      if (touch && e.changedTouches[0].clientY - touch.y >= 100 && now() - touch.t <= 300) exitIntent('flick');
    });

    // ---- Scrolling; reading: words of text blocks scrolled past the top (read) ----
    const scrollReversals = reversals(c), readingSpeed = reading(c);
    let blocks = null; // not yet read
    const layout = new MutationObserver(() => (blocks = null));
    layout.observe(doc.body, { childList: true, subtree: true });
    function wordsRead() {
      let words = 0;
      blocks ||= [...doc.querySelectorAll(TEXT)].filter((el) => !read.has(el) && !el.closest(IGNORE)).slice(0, 400);
      blocks = blocks.filter((el) => {
        const box = el.getBoundingClientRect();
        if (box.bottom > 0 || !box.height) return true;
        const n = el.textContent.trim().split(/\s+/).length;
        if (n > 2) words += n;
        read.add(el);
        return false;
      });
      return words;
    }
    function scroll(t) {
      changes++;
      const count = scrollReversals(g.scrollY, t);
      if (count) emit('excessive_scroll', { count }, 0, true);
      const wpm = readingSpeed(wordsRead(), t);
      if (wpm) emit('reading', { wpm });
    }

    // ---- Quick back: visible time, stored when left ----
    let shownMs = 0, visibleSince = hidden() ? 0 : now() - (g.performance.now() | 0);
    on(doc, 'visibilitychange', () => hidden() || (visibleSince = now()));
    const checkQuickBack = (back) => {
      let left = null;
      try { left = JSON.parse(store.get(LEFT)); } catch {}
      const ms = quickBack(left, location.pathname, now(), back, c);
      if (ms == null) return;
      store.del(LEFT);
      emit('quick_back', { duration_ms: ms }, 0, true);
    };

    // ---- Device motion ----
    if (g.DeviceMotionEvent) {
      let allowed = true, tilt;
      ctx.motion?.then((ok) => (allowed = ok)); // iOS
      const windows = motion();
      on(g, 'deviceorientation', (e) => {
        if (e.beta != null) tilt = Math.min(180, Math.round(Math.abs(e.beta)));
      });
      on(g, 'devicemotion', (e) => {
        const m = allowed && windows(e, now(), tilt);
        if (m) emit('motion', m);
      });
    }

    function hide(t, pagehide) {
      if (pagehide) {
        reportEngagement(true);
        changes++;
        store.set(LEFT, JSON.stringify({ path: location.pathname, at: t, shown_ms: shownMs + (visibleSince && t - visibleSince) }));
      } else {
        exitIntent('hidden', t);
        reportEngagement(true);
        shownMs += visibleSince && t - visibleSince;
        visibleSince = 0;
      }
    }
    function show(persisted) { // from the back/forward cache
      if (!persisted) return;
      shownMs = 0;
      visibleSince = now();
      checkQuickBack(true);
    }
    function stop() {
      [deadTimer, hoverTimer, idleTimer].forEach(clearTimeout);
      clearInterval(every);
      pageChange.disconnect();
      layout.disconnect();
    }

    checkQuickBack(ctx.back);
    scroll(now());
    return { scroll, hide, show, stop };
  }

  g.trimtabSignals = { start, SIG, rage, reversals, reading, engaged, rms, motionState, motion, quickBack };
})(globalThis);
