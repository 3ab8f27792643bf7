// trimtab operator dashboard. Plain JS, no build step, no framework.
//
// Data comes from two places:
//  - the live feed, WebSocket /v1/admin/live: {"type":"auth","token"} first, then the server sends
//    cumulative `stats` every second plus `event` / `adjust` messages as they happen. Rates are
//    computed here from deltas and the last 5 minutes are kept client-side at 1-s resolution;
//  - the admin HTTP API (Bearer token): /v1/rules (file names, last errors) and the user
//    inspector (/v1/admin/users/{key_hex}, /v1/users/{raw_id}).
//
// The header nav switches between pages (#live, #experiments, #segments, #learning). The
// Experiments and Segments pages live in insights.js, the Learning page (bandits, models) in
// learning.js; they register themselves through `window.trimtabDashboard` (an API helper and the
// shared formatters; never the token itself).
//
// The admin token lives in sessionStorage only (never in a URL, never in localStorage).
// Server data is only ever inserted as text (textContent), never as HTML.
(function () {
  'use strict';

  var TOKEN_KEY = 'trimtab.adminToken';
  var WINDOW_S = 300;        // chart window, seconds
  var TAIL_MAX = 200;        // rows kept in the live tail
  var INSPECT_EVERY_MS = 2000;
  var STALE_MS = 5000;       // no stats for this long ⇒ "stalled"
  var COLORS = {
    accent: '#4c9aff', violet: '#b28cff', red: '#f2645a', teal: '#38c7b4',
    muted: '#8a96a6', border: '#262f3b', grid: 'rgba(138,150,166,0.10)'
  };
  var VARIANT_COLORS = ['#4c9aff', '#b28cff', '#38c7b4', '#d6a23a', '#f28fb0', '#7ee081', '#f2645a', '#9fb3c8'];

  // ---------------------------------------------------------------- helpers
  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function append(parent) {
    for (var i = 1; i < arguments.length; i++) {
      var c = arguments[i];
      if (c === null || c === undefined || c === false) continue;
      parent.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
    }
    return parent;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
  var nf = new Intl.NumberFormat('en-US');
  var nf1 = new Intl.NumberFormat('en-US', { maximumFractionDigits: 1 });
  function fmtInt(n) { return n === null || n === undefined || isNaN(n) ? '—' : nf.format(Math.round(n)); }
  function fmtCompact(n) {
    if (n === null || n === undefined || isNaN(n)) return '—';
    var a = Math.abs(n);
    if (a >= 1e9) return nf1.format(n / 1e9) + 'B';
    if (a >= 1e6) return nf1.format(n / 1e6) + 'M';
    if (a >= 1e5) return nf1.format(n / 1e3) + 'k';
    return nf.format(Math.round(n));
  }
  function fmtRate(r) {
    if (r === null || r === undefined || isNaN(r)) return '—';
    if (r === 0) return '0';
    if (r < 10) return r.toFixed(1);
    return fmtCompact(r);
  }
  function fmtMs(ms) {
    if (ms === null || ms === undefined || isNaN(ms)) return '—';
    if (ms < 1000) return Math.round(ms) + ' ms';
    if (ms < 60000) return (ms / 1000).toFixed(1) + ' s';
    var m = Math.floor(ms / 60000);
    return m + 'm ' + Math.round((ms % 60000) / 1000) + 's';
  }
  function pad(n, w) { n = String(n); while (n.length < w) n = '0' + n; return n; }
  function fmtTime(ts, withMs) {
    var d = new Date(ts);
    if (isNaN(d.getTime())) return '—';
    var s = pad(d.getHours(), 2) + ':' + pad(d.getMinutes(), 2) + ':' + pad(d.getSeconds(), 2);
    return withMs ? s + '.' + pad(d.getMilliseconds(), 3) : s;
  }
  function fmtAgo(ts) {
    if (!ts) return '—';
    var s = Math.max(0, Math.round((Date.now() - ts) / 1000));
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.floor(s / 60) + ' min ago';
    if (s < 86400) return Math.floor(s / 3600) + ' h ago';
    return new Date(ts).toISOString().slice(0, 16).replace('T', ' ');
  }
  function sumValues(obj) {
    var t = 0;
    if (obj) for (var k in obj) if (Object.prototype.hasOwnProperty.call(obj, k)) t += Number(obj[k]) || 0;
    return t;
  }
  function shortKey(k) { k = String(k || ''); return k.length > 12 ? k.slice(0, 10) + '…' : k; }
  function num(x) { var n = Number(x); return isFinite(n) ? n : 0; }

  // ---------------------------------------------------------------- state
  var S = {
    token: null,
    ws: null,
    wsReady: false,
    backoff: 1000,
    reconnectTimer: null,
    staleTimer: null,
    lastStatsAt: 0,
    prev: null,                       // previous cumulative counters, for rates
    series: [[], [], [], []],         // x (s), events/s, adjustments/s, rejected/s
    peakEps: 0,
    rulesMeta: {},                    // name → fields only /v1/rules has (file, last_error, …)
    rulesMetaAt: 0,
    rulesSig: '',
    slotsSig: '',
    slotEls: {},
    adjSinceTick: 0,                  // adjust messages since the last stats (every decision, delivered or not)
    undelivered: {},                  // slot → adjustments decided with no open socket (since page load)
    paused: false,
    pending: [],                      // tail items received while paused (newest last)
    queue: [],                        // tail items waiting for the next frame (newest last)
    tailRows: 0,
    frame: 0,
    filter: 'all',
    selUser: null,                    // 32-hex key highlighted in the tail
    insp: null,                       // {kind:'key'|'raw', id}
    inspTimer: null,
    inspBusy: false,
    inspSeq: 0,
    chart: null,
    chartHover: null,
    tab: 'live',
    started: false
  };
  var TABS = ['live', 'experiments', 'segments', 'learning', 'lab'];
  var PAGES = {};                     // name → {show(), hide(), reset()} registered by insights.js / learning.js

  // ---------------------------------------------------------------- auth / login
  function showLogin(message) {
    $('app').hidden = true;
    $('login').hidden = false;
    var err = $('login-error');
    if (message) { err.textContent = message; err.hidden = false; } else { err.hidden = true; }
    var input = $('token-input');
    input.value = '';
    setTimeout(function () { input.focus(); }, 0);
  }

  function signOut(message) {
    try { sessionStorage.removeItem(TOKEN_KEY); } catch (e) { /* storage unavailable */ }
    S.token = null;
    S.started = false;
    stopFeed();
    stopInspector();
    Object.keys(PAGES).forEach(function (k) { try { PAGES[k].reset(); } catch (e) { console.error(e); } });
    showLogin(message);
  }

  function authHeaders() { return { 'Authorization': 'Bearer ' + S.token, 'Accept': 'application/json' }; }

  // Fetches JSON with the admin token. Resolves {status, body}; rejects on network errors only.
  function api(path, method) {
    return fetch(path, { method: method || 'GET', headers: authHeaders(), cache: 'no-store', credentials: 'omit' }).then(function (r) {
      return r.text().then(function (t) {
        var body = null;
        try { body = t ? JSON.parse(t) : null; } catch (e) { body = null; }
        return { status: r.status, body: body };
      });
    });
  }

  function errMessage(res, fallback) {
    return (res && res.body && res.body.error && res.body.error.message) || fallback;
  }

  function onLoginSubmit(ev) {
    ev.preventDefault();
    var token = $('token-input').value.trim();
    var err = $('login-error');
    if (!token) { err.textContent = 'Enter the admin token.'; err.hidden = false; return; }
    var btn = $('login-submit');
    btn.disabled = true;
    btn.textContent = 'Checking…';
    S.token = token;
    api('/v1/rules').then(function (res) {
      btn.disabled = false;
      btn.textContent = 'Sign in';
      if (res.status === 401 || res.status === 403) {
        S.token = null;
        err.textContent = 'Wrong admin token: the server refused it (' + res.status + ').';
        err.hidden = false;
        $('token-input').select();
        return;
      }
      if (res.status >= 500) {
        S.token = null;
        err.textContent = 'The server answered ' + res.status + ': ' + errMessage(res, 'try again');
        err.hidden = false;
        return;
      }
      try { sessionStorage.setItem(TOKEN_KEY, token); } catch (e) { /* kept in memory only */ }
      if (res.status === 200 && res.body) setRulesMeta(res.body);
      startApp();
    }, function () {
      btn.disabled = false;
      btn.textContent = 'Sign in';
      S.token = null;
      err.textContent = 'Cannot reach the server.';
      err.hidden = false;
    });
  }

  function startApp() {
    $('login').hidden = true;
    $('app').hidden = false;
    $('login-error').hidden = true;
    S.started = true;
    initChart();
    connect();
    refreshRulesMeta();
    refreshCluster();
    setInterval(refreshCluster, 3000);
    setTab(tabFromHash(), true);
  }

  // ---------------------------------------------------------------- cluster (cluster mode)
  // /readyz carries the node's view of the cluster: live nodes, every node's partitions. The
  // panel stays hidden on a lone node.
  var CLUSTER_COLORS = ['#4c9aff', '#3fb950', '#d6a23a', '#a371f7', '#f2645a', '#39c5cf', '#db61a2', '#8b949e'];
  function refreshCluster() {
    if (!S.started) return;
    fetch('/readyz', { cache: 'no-store', credentials: 'omit' }).then(function (r) { return r.json(); }).then(function (d) {
      var c = d && d.cluster;
      $('cluster-panel').hidden = !c;
      if (!c) return;
      var owners = obj(c.owners), names = Object.keys(owners).sort();
      var color = {}, ownerOf = {};
      names.forEach(function (n, i) {
        color[n] = CLUSTER_COLORS[i % CLUSTER_COLORS.length];
        arr(owners[n]).forEach(function (p) { ownerOf[p] = n; });
      });
      var mine = {};
      arr(c.partitions).forEach(function (p) { mine[p.partition] = p.read; });
      $('cluster-summary').textContent = 'this node ' + c.node + ' · ' + arr(c.nodes).length + ' live nodes · ' +
        Object.keys(mine).length + ' of ' + c.partition_count + ' partitions here' + (c.connected ? '' : ' · NATS disconnected');
      var legend = $('cluster-legend');
      clear(legend);
      names.forEach(function (n) {
        var item = el('span', 'legend-item', n + ' (' + arr(owners[n]).length + ')');
        item.style.color = color[n];
        legend.appendChild(item);
      });
      var grid = $('cluster-grid');
      clear(grid);
      for (var p = 0; p < c.partition_count; p++) {
        var owner = ownerOf[p];
        var cell = el('div', 'cluster-cell' + (p in mine ? ' mine' : '') + (owner ? '' : ' free'), String(p));
        cell.dataset.owner = owner || '';
        if (owner) { cell.style.background = color[owner] + '33'; cell.style.borderColor = color[owner]; }
        cell.title = 'partition ' + p + ': ' + (owner || 'no owner now') + (p in mine ? ' · read up to stream sequence ' + mine[p] : '');
        grid.appendChild(cell);
      }
    }, function () { /* the next refresh tries again */ });
  }

  // ---------------------------------------------------------------- pages (header nav)
  function tabFromHash() {
    var h = (location.hash || '').replace(/^#/, '').split('/')[0];
    return TABS.indexOf(h) >= 0 ? h : 'live';
  }

  function setTab(name, force) {
    if (TABS.indexOf(name) < 0) name = 'live';
    var prev = S.tab;
    if (prev === name && !force) return;
    S.tab = name;
    TABS.forEach(function (t) {
      $('page-' + t).hidden = t !== name;
      var b = document.querySelector('.nav-tab[data-tab="' + t + '"]');
      if (b) {
        b.classList.toggle('active', t === name);
        b.setAttribute('aria-selected', t === name ? 'true' : 'false');
      }
    });
    var want = '#' + name;
    if (name === 'live' && !location.hash) want = '';
    if (want && (location.hash || '').split('/')[0] !== want) history.replaceState(null, '', want);
    if (prev !== name && PAGES[prev]) { try { PAGES[prev].hide(); } catch (e) { console.error(e); } }
    if (PAGES[name] && S.started) { try { PAGES[name].show(); } catch (e) { console.error(e); } }
    if (name === 'live' && S.chart) {
      var box = $('chart');
      if (box.clientWidth > 0) S.chart.setSize({ width: box.clientWidth, height: 240 });
    }
  }

  // ---------------------------------------------------------------- shared with the pages
  // Value guards, percentage formatting, badges and a resizing uPlot wrapper, used by
  // insights.js and learning.js (one copy here, handed out through window.trimtabDashboard).
  function isNum(x) { return typeof x === 'number' && isFinite(x); }
  function arr(x) { return Array.isArray(x) ? x : []; }
  function obj(x) { return x && typeof x === 'object' && !Array.isArray(x) ? x : {}; }
  function fmtPct(x, dp) {
    if (!isNum(x)) return '—';
    var v = x * 100;
    var d = dp === undefined ? (Math.abs(v) >= 100 ? 0 : 1) : dp;
    return v.toFixed(d).replace('-', '−') + '%';
  }
  function fmtSignedPct(x, dp) { return isNum(x) ? (x > 0 ? '+' : '') + fmtPct(x, dp) : '—'; }
  function badge(text, kind) { return el('span', 'badge badge-' + kind, text); }

  var AXIS = {
    stroke: COLORS.muted,
    font: '11px system-ui, sans-serif',
    grid: { stroke: COLORS.grid, width: 1 },
    ticks: { stroke: COLORS.grid, width: 1, size: 4 }
  };
  function axis(extra) { return Object.assign({}, AXIS, extra || {}); }

  // A uPlot chart that follows its box's width (and is rebuilt when its shape changes).
  function Chart(box, height) {
    this.box = box;
    this.height = height;
    this.u = null;
    this.sig = '';
    var self = this;
    if (typeof ResizeObserver === 'function') {
      new ResizeObserver(function () {
        var w = box.clientWidth;
        if (self.u && w > 0 && Math.abs(w - self.u.width) > 1) self.u.setSize({ width: w, height: self.height });
      }).observe(box);
    }
  }
  Chart.prototype.set = function (sig, makeOpts, data) {
    if (typeof window.uPlot !== 'function') {
      if (!this.box.querySelector('.empty-note')) this.box.appendChild(el('div', 'empty-note', 'Chart library failed to load.'));
      return;
    }
    if (this.u && sig === this.sig) { this.u.setData(data); return; }
    this.destroy();
    this.sig = sig;
    var opts = makeOpts();
    opts.width = Math.max(280, this.box.clientWidth || 600);
    opts.height = this.height;
    this.u = new window.uPlot(opts, data, this.box);
  };
  Chart.prototype.destroy = function () {
    if (this.u) { this.u.destroy(); this.u = null; }
    this.sig = '';
    clear(this.box);
  };
  Chart.prototype.note = function (text) {
    this.destroy();
    this.box.appendChild(el('div', 'empty-note chart-note', text));
  };

  // What insights.js and learning.js may use: no token, only a helper that sends it.
  window.trimtabDashboard = {
    api: function (path, method) {
      if (!S.token) return Promise.reject(new Error('signed out'));
      return api(path, method).then(function (res) {
        if (res.status === 401 || res.status === 403) signOut('The admin token is no longer accepted.');
        return res;
      });
    },
    // A request with a body (JSON, or text for a rule's source).
    send: function (path, method, body, contentType) {
      if (!S.token) return Promise.reject(new Error('signed out'));
      var h = authHeaders();
      h['Content-Type'] = contentType || 'application/json';
      return fetch(path, { method: method, headers: h, body: body, cache: 'no-store', credentials: 'omit' }).then(function (r) {
        return r.text().then(function (t) {
          var b = null;
          try { b = t ? JSON.parse(t) : null; } catch (e) { b = null; }
          if (r.status === 401 || r.status === 403) signOut('The admin token is no longer accepted.');
          return { status: r.status, body: b };
        });
      });
    },
    // The users in the live tail (32-hex keys, newest first).
    recentUsers: function () {
      var seen = [];
      document.querySelectorAll('#tail-body button.user-link').forEach(function (b) {
        var k = b.dataset.user;
        if (k && seen.indexOf(k) < 0 && seen.length < 20) seen.push(k);
      });
      return seen;
    },
    errMessage: errMessage,
    register: function (name, page) {
      PAGES[name] = page;
      if (S.started && S.tab === name) page.show();
    },
    isActive: function (name) { return S.started && S.tab === name && !$('app').hidden; },
    fmt: { int: fmtInt, compact: fmtCompact, time: fmtTime, ago: fmtAgo, ms: fmtMs, pct: fmtPct, signedPct: fmtSignedPct },
    val: { isNum: isNum, num: num, arr: arr, obj: obj },
    dom: { $: $, el: el, append: append, clear: clear, badge: badge },
    chart: { Chart: Chart, axis: axis },
    colors: { base: COLORS, variants: VARIANT_COLORS }
  };

  // ---------------------------------------------------------------- live feed
  function setConn(kind, text) {
    var c = $('conn');
    c.className = 'pill pill-' + kind;
    $('conn-text').textContent = text;
  }

  function connect() {
    clearTimeout(S.reconnectTimer);
    if (!S.token) return;
    var proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    var ws;
    try { ws = new WebSocket(proto + '//' + location.host + '/v1/admin/live'); } catch (e) { scheduleReconnect(); return; }
    S.ws = ws;
    S.wsReady = false;
    setConn('wait', 'connecting');
    var authFailed = false;
    ws.onopen = function () { ws.send(JSON.stringify({ type: 'auth', token: S.token })); };
    ws.onmessage = function (m) {
      if (ws !== S.ws) return;
      var msg;
      try { msg = JSON.parse(m.data); } catch (e) { return; }
      switch (msg.type) {
        case 'ready':
          S.wsReady = true;
          S.backoff = 1000;
          setConn('live', 'live');
          break;
        case 'stats': onStats(msg); break;
        case 'event': onTail({ kind: 'event', m: msg }); break;
        case 'adjust':
          S.adjSinceTick++;
          if (msg.sockets === 0 && msg.slot !== undefined) {
            S.undelivered[msg.slot] = (S.undelivered[msg.slot] || 0) + 1;
          }
          onTail({ kind: 'adjust', m: msg });
          break;
        case 'lagged': onTail({ kind: 'lagged', m: { ts: Date.now(), skipped: num(msg.skipped) } }); break;
        case 'error':
          if (!S.wsReady || msg.code === 'unauthorized' || msg.code === 'forbidden') {
            authFailed = true;
          }
          console.warn('live feed error', msg.code, msg.message);
          break;
        default: break;
      }
    };
    ws.onclose = function (ev) {
      if (ws !== S.ws) return;
      S.ws = null;
      S.wsReady = false;
      if (!S.token) return;
      if (ev.code === 1008 || authFailed) {
        signOut('Wrong admin token: the live feed refused it.');
        return;
      }
      scheduleReconnect();
    };
    ws.onerror = function () { /* onclose follows */ };
  }

  function scheduleReconnect() {
    setConn('down', 'reconnecting');
    clearTimeout(S.reconnectTimer);
    var wait = S.backoff * (0.75 + Math.random() * 0.5);
    S.backoff = Math.min(S.backoff * 2, 15000);
    S.reconnectTimer = setTimeout(connect, wait);
  }

  function stopFeed() {
    clearTimeout(S.reconnectTimer);
    if (S.ws) { var ws = S.ws; S.ws = null; try { ws.close(1000, 'signed out'); } catch (e) { /* closed */ } }
    S.wsReady = false;
  }

  // ---------------------------------------------------------------- stats
  function onStats(s) {
    var ts = num(s.ts) || Date.now();
    var events = num(s.events_accepted);
    var rejected = sumValues(s.events_rejected);
    var adjList = Array.isArray(s.adjustments) ? s.adjustments : [];
    var adjTotal = 0;
    for (var i = 0; i < adjList.length; i++) adjTotal += num(adjList[i].pushed);
    var commit = s.commit || {};

    var eps = null, aps = null, rps = null, commitAvg = null;
    var p = S.prev;
    if (p && ts > p.ts) {
      var dt = (ts - p.ts) / 1000;
      // Counters are cumulative; one that went down means the server restarted: count from 0.
      var d = function (cur, old) { return cur >= old ? cur - old : cur; };
      eps = d(events, p.events) / dt;
      aps = S.adjSinceTick / dt;       // decided, from the feed (the server counts only pushed ones)
      var pushedRate = d(adjTotal, p.adj) / dt;
      rps = d(rejected, p.rej) / dt;
      var dc = d(num(commit.count), p.commitCount);
      if (dc > 0) commitAvg = (num(commit.sum_s) - (num(commit.count) >= p.commitCount ? p.commitSum : 0)) / dc * 1000;
    }
    S.adjSinceTick = 0;
    if (commitAvg === null && num(commit.count) > 0) commitAvg = num(commit.sum_s) / num(commit.count) * 1000;
    S.prev = { ts: ts, events: events, adj: adjTotal, rej: rejected, commitCount: num(commit.count), commitSum: num(commit.sum_s) };
    S.lastStatsAt = Date.now();
    if (S.wsReady) setConn('live', 'live');
    clearTimeout(S.staleTimer);
    S.staleTimer = setTimeout(function () { if (S.ws) setConn('wait', 'stalled'); }, STALE_MS);
    $('last-update').textContent = 'updated ' + fmtTime(ts);

    if (eps !== null) pushPoint(ts / 1000, eps, aps, rps);
    renderKpis(s, { events: events, rejected: rejected, adjTotal: adjTotal, eps: eps, aps: aps, pps: p ? pushedRate : null, commitAvg: commitAvg });
    renderRules(Array.isArray(s.rules) ? s.rules : []);
    renderSlots(adjList, s.capped || {});
    if (Date.now() - S.rulesMetaAt > 15000) refreshRulesMeta();
  }

  function pushPoint(x, eps, aps, rps) {
    var sr = S.series;
    sr[0].push(x); sr[1].push(eps); sr[2].push(aps); sr[3].push(rps);
    var cut = x - WINDOW_S;
    var n = 0;
    while (n < sr[0].length && sr[0][n] < cut) n++;
    if (n > 0) for (var i = 0; i < sr.length; i++) sr[i].splice(0, n);
    var peak = 0;
    for (var j = 0; j < sr[1].length; j++) if (sr[1][j] > peak) peak = sr[1][j];
    S.peakEps = peak;
    if (S.chart) S.chart.setData(sr);
    renderLegend();
  }

  function avgLast(arr, n) {
    var k = Math.min(n, arr.length);
    if (!k) return null;
    var t = 0;
    for (var i = arr.length - k; i < arr.length; i++) t += arr[i];
    return t / k;
  }

  function setKpi(name, value, title) {
    var v = document.querySelector('[data-kpi="' + name + '"]');
    v.textContent = value;
    if (title !== undefined) v.title = title;
  }
  function setSub(name, nodes) {
    var sub = document.querySelector('[data-sub="' + name + '"]');
    clear(sub);
    if (typeof nodes === 'string') { sub.textContent = nodes || '\u00a0'; return; }
    for (var i = 0; i < nodes.length; i++) sub.appendChild(nodes[i]);
    if (!nodes.length) sub.textContent = '\u00a0';
  }
  function breakdown(obj, limit, emptyText) {
    var keys = Object.keys(obj || {}).filter(function (k) { return num(obj[k]) > 0; });
    keys.sort(function (a, b) { return num(obj[b]) - num(obj[a]); });
    if (!keys.length) return emptyText;
    var out = [];
    keys.slice(0, limit).forEach(function (k) {
      var sp = el('span');
      append(sp, el('b', null, fmtCompact(num(obj[k]))), ' ' + k);
      out.push(sp);
    });
    if (keys.length > limit) out.push(el('span', null, '+' + (keys.length - limit) + ' more'));
    return out;
  }

  function renderKpis(s, c) {
    var eps = c.eps;
    var epsTile = $('kpi-eps');
    epsTile.dataset.value = eps === null ? '' : String(eps);
    setKpi('eps', fmtRate(eps));
    var avg = avgLast(S.series[1], 60);
    setSub('eps', 'avg 1m ' + fmtRate(avg) + ' · peak 5m ' + fmtRate(S.peakEps));

    setKpi('events', fmtCompact(c.events), fmtInt(c.events));
    $('kpi-events').dataset.value = String(c.events);
    setSub('events', 'dup ' + fmtCompact(num(s.events_duplicate)) +
      (c.commitAvg !== null ? ' · commit ' + (c.commitAvg < 10 ? c.commitAvg.toFixed(2) : Math.round(c.commitAvg)) + ' ms' : ''));

    setKpi('rejected', fmtCompact(c.rejected), fmtInt(c.rejected));
    $('kpi-rejected').dataset.value = String(c.rejected);
    var rej = breakdown(s.events_rejected, 3, 'no rejections');
    setSub('rejected', rej);
    $('kpi-rejected').classList.toggle('kpi-alert', c.rejected > 0);

    setKpi('ws', fmtInt(num(s.ws_sessions)));
    $('kpi-ws').dataset.value = String(num(s.ws_sessions));
    setSub('ws', 'users cached ' + fmtCompact(num(s.users_cached)));

    setKpi('adj', fmtCompact(c.adjTotal), fmtInt(c.adjTotal));
    $('kpi-adj').dataset.value = String(c.adjTotal);
    var slots = {};
    (s.adjustments || []).forEach(function (a) { slots[a.slot] = 1; });
    setSub('adj', 'pushed ' + fmtRate(c.pps) + '/s · decided ' + fmtRate(c.aps) + '/s · ' + Object.keys(slots).length + ' slot' + (Object.keys(slots).length === 1 ? '' : 's'));

    var capTotal = sumValues(s.capped);
    setKpi('capped', fmtCompact(capTotal), fmtInt(capTotal));
    $('kpi-capped').dataset.value = String(capTotal);
    setSub('capped', breakdown(s.capped, 3, 'no slot capped'));

    // Rage, dead and error clicks (behavioural signals); an error click means a page broke
    var sig = s.signals || {}, frus = {};
    ['rage_click', 'dead_click', 'error_click'].forEach(function (k) { frus[k.replace('_click', '')] = num(sig[k]); });
    var frusTotal = sumValues(frus);
    setKpi('frustration', fmtCompact(frusTotal), fmtInt(frusTotal));
    $('kpi-frustration').dataset.value = String(frusTotal);
    setSub('frustration', breakdown(frus, 3, 'none reported'));
    $('kpi-frustration').classList.toggle('kpi-alert', frus.error > 0);
  }

  // ---------------------------------------------------------------- chart (uPlot)
  function initChart() {
    if (S.chart) return;
    var box = $('chart');
    if (typeof window.uPlot !== 'function') {
      box.appendChild(el('div', 'empty-note', 'Chart library failed to load.'));
      return;
    }
    var fill = function (hex, a) {
      var n = parseInt(hex.slice(1), 16);
      return 'rgba(' + (n >> 16 & 255) + ',' + (n >> 8 & 255) + ',' + (n & 255) + ',' + a + ')';
    };
    var axis = {
      stroke: COLORS.muted,
      font: '11px system-ui, sans-serif',
      grid: { stroke: COLORS.grid, width: 1 },
      ticks: { stroke: COLORS.grid, width: 1, size: 4 }
    };
    var opts = {
      width: Math.max(300, box.clientWidth),
      height: 240,
      padding: [8, 8, 0, 0],
      legend: { show: false },
      cursor: { drag: { x: false, y: false }, points: { size: 6 } },
      scales: {
        x: {
          time: true,
          // The window grows from 1 min to 5 min as history accumulates.
          range: function (u, min, max) {
            var hi = max !== null && max !== undefined ? max : Date.now() / 1000;
            var span = min !== null && min !== undefined ? hi - min : 0;
            return [hi - Math.min(WINDOW_S, Math.max(60, span)), hi];
          }
        },
        y: { range: function (u, min, max) { return [0, Math.max(1, (max || 0) * 1.15)]; } }
      },
      axes: [
        Object.assign({}, axis, { space: 80, values: function (u, vals) { return vals.map(function (v) { return fmtTime(v * 1000); }); } }),
        Object.assign({}, axis, { size: 48, values: function (u, vals) { return vals.map(function (v) { return fmtRate(v); }); } })
      ],
      series: [
        {},
        { label: 'events/s', stroke: COLORS.accent, width: 1.6, fill: fill(COLORS.accent, 0.13), points: { show: false } },
        { label: 'adjustments/s', stroke: COLORS.violet, width: 1.6, fill: fill(COLORS.violet, 0.10), points: { show: false } },
        { label: 'rejected/s', stroke: COLORS.red, width: 1.2, dash: [4, 3], points: { show: false } }
      ],
      hooks: {
        setCursor: [function (u) {
          S.chartHover = u.cursor.idx === null || u.cursor.idx === undefined ? null : u.cursor.idx;
          renderLegend();
        }]
      }
    };
    S.chart = new window.uPlot(opts, S.series, box);
    if (typeof ResizeObserver === 'function') {
      new ResizeObserver(function () {
        var w = box.clientWidth;
        if (S.chart && w > 0 && Math.abs(w - S.chart.width) > 1) S.chart.setSize({ width: w, height: 240 });
      }).observe(box);
    }
    renderLegend();
  }

  function renderLegend() {
    var lg = $('chart-legend');
    var sr = S.series;
    var i = S.chartHover !== null && S.chartHover !== undefined ? S.chartHover : sr[0].length - 1;
    var items = [['events/s', COLORS.accent, sr[1][i]], ['adjustments/s', COLORS.violet, sr[2][i]], ['rejected/s', COLORS.red, sr[3][i]]];
    clear(lg);
    items.forEach(function (it) {
      var span = el('span');
      var sw = el('span', 'sw');
      sw.style.background = it[1];
      append(span, sw, it[0] + ' ', el('b', null, fmtRate(i >= 0 ? it[2] : null)));
      lg.appendChild(span);
    });
    if (S.chartHover !== null && S.chartHover !== undefined && sr[0][i]) {
      lg.appendChild(el('span', null, fmtTime(sr[0][i] * 1000)));
    }
  }

  // ---------------------------------------------------------------- rules
  function setRulesMeta(body) {
    var list = (body && Array.isArray(body.rules)) ? body.rules : [];
    var m = {};
    list.forEach(function (r) { if (r && r.name) m[r.name] = r; });
    S.rulesMeta = m;
    S.rulesMetaAt = Date.now();
  }

  function refreshRulesMeta() {
    if (!S.token) return;
    S.rulesMetaAt = Date.now();
    api('/v1/rules').then(function (res) {
      if (res.status === 401 || res.status === 403) { signOut('The admin token is no longer accepted.'); return; }
      if (res.status === 200) {
        setRulesMeta(res.body);
        // Before the first stats message, show what /v1/rules has.
        if (!S.rulesSig) renderRules(res.body.rules || []);
      }
    }, function () { /* the feed shows connectivity */ });
  }

  function renderRules(rules) {
    var merged = rules.map(function (r) {
      var meta = S.rulesMeta[r.name] || {};
      return {
        name: r.name,
        file: r.file || meta.file || '',
        state: r.state || meta.state || 'active',
        enabled: r.enabled !== undefined ? r.enabled : meta.enabled,
        runs: num(r.runs), failures: num(r.failures), adjustments: num(r.adjustments),
        disabled_reason: r.disabled_reason || null,
        compile_error: r.compile_error || null,
        last_error: r.last_error || meta.last_error || null
      };
    });
    merged.sort(function (a, b) { return a.name < b.name ? -1 : a.name > b.name ? 1 : 0; });
    var sig = JSON.stringify(merged);
    if (sig === S.rulesSig) return;
    S.rulesSig = sig;
    var body = $('rules-body');
    clear(body);
    var counts = { active: 0, compile_error: 0, disabled: 0 };
    if (!merged.length) {
      var tr0 = el('tr', 'empty');
      var td0 = el('td', null, 'No rules loaded (scripts/*.rhai).');
      td0.colSpan = 6;
      body.appendChild(append(tr0, td0));
    }
    merged.forEach(function (r) {
      counts[r.state] = (counts[r.state] || 0) + 1;
      var tr = el('tr');
      tr.dataset.rule = r.name;
      tr.dataset.state = r.state;
      var c1 = el('td');
      append(c1, el('div', 'rule-name', r.name), r.file ? el('div', 'rule-file', r.file) : null);
      var c2 = el('td');
      var label = r.state === 'compile_error' ? 'compile error' : r.state;
      var badgeCls = ['active', 'compile_error', 'disabled'].indexOf(r.state) >= 0 ? r.state : 'other';
      c2.appendChild(el('span', 'badge badge-' + badgeCls, label));
      if (r.state === 'compile_error') {
        c2.appendChild(el('div', 'rule-note', r.enabled ? 'previous version running' : 'not running'));
      }
      var c3 = el('td', 'num', fmtInt(r.runs));
      var c4 = el('td', 'num');
      c4.appendChild(document.createTextNode(fmtInt(r.failures)));
      if (r.runs > 0 && r.failures > 0) c4.appendChild(el('span', 'fail-rate', (100 * r.failures / r.runs).toFixed(1) + '%'));
      var c5 = el('td', 'num', fmtInt(r.adjustments));
      var c6 = el('td');
      if (r.compile_error) {
        var ce = el('div', 'rule-err');
        append(ce, el('span', 'loc', r.compile_error.location || r.file || r.name), ': ' + (r.compile_error.message || 'does not compile'));
        c6.appendChild(ce);
      }
      if (r.disabled_reason) c6.appendChild(el('div', 'rule-note', 'disabled: ' + r.disabled_reason));
      if (r.last_error && !r.compile_error) {
        var le = el('div', 'rule-err');
        append(le, el('span', 'loc', r.last_error.location || ''), ' ' + (r.last_error.message || ''));
        le.style.opacity = '0.8';
        c6.appendChild(le);
      }
      if (!c6.firstChild) c6.appendChild(el('span', 'muted', '—'));
      body.appendChild(append(tr, c1, c2, c3, c4, c5, c6));
    });
    var parts = [];
    parts.push(merged.length + ' loaded');
    if (counts.compile_error) parts.push(counts.compile_error + ' with compile errors');
    if (counts.disabled) parts.push(counts.disabled + ' disabled');
    $('rules-count').textContent = '· ' + parts.join(' · ');
  }

  // ---------------------------------------------------------------- slots × variants
  function renderSlots(adjList, capped) {
    var bySlot = {};
    adjList.forEach(function (a) {
      if (!a || a.slot === undefined) return;
      var s = bySlot[a.slot] || (bySlot[a.slot] = { total: 0, variants: [] });
      s.total += num(a.pushed);
      s.variants.push({ variant: String(a.variant), pushed: num(a.pushed) });
    });
    Object.keys(capped || {}).concat(Object.keys(S.undelivered)).forEach(function (slot) {
      if (!bySlot[slot]) bySlot[slot] = { total: 0, variants: [] };
    });
    var slots = Object.keys(bySlot).sort(function (a, b) { return bySlot[b].total - bySlot[a].total || (a < b ? -1 : 1); });
    slots.forEach(function (k) {
      bySlot[k].variants.sort(function (a, b) { return a.variant < b.variant ? -1 : a.variant > b.variant ? 1 : 0; });
    });
    var sig = slots.map(function (k) { return k + ':' + bySlot[k].variants.map(function (v) { return v.variant; }).join(','); }).join('|');
    var box = $('slots');
    if (sig !== S.slotsSig) {
      S.slotsSig = sig;
      S.slotEls = {};
      clear(box);
      if (!slots.length) { box.appendChild(el('div', 'empty-note', 'No adjustments pushed yet.')); return; }
      box.appendChild(el('div', 'slots-note', 'Pushed to open sockets, share within each slot (cumulative).'));
      slots.forEach(function (slot) {
        var wrap = el('div', 'slot');
        wrap.dataset.slot = slot;
        var head = el('div', 'slot-head');
        var meta = el('span', 'slot-meta');
        append(head, el('span', 'slot-name', slot), meta);
        wrap.appendChild(head);
        var rows = {};
        if (!bySlot[slot].variants.length) wrap.appendChild(el('div', 'slot-empty', 'nothing pushed yet'));
        bySlot[slot].variants.forEach(function (v, i) {
          var row = el('div', 'bar-row');
          row.dataset.variant = v.variant;
          var track = el('div', 'bar-track');
          var fillEl = el('div', 'bar-fill');
          fillEl.style.background = VARIANT_COLORS[i % VARIANT_COLORS.length];
          fillEl.style.width = '0%';
          track.appendChild(fillEl);
          var val = el('div', 'bar-val');
          var lab = el('div', 'bar-label', v.variant);
          lab.title = v.variant;
          append(row, lab, track, val);
          wrap.appendChild(row);
          rows[v.variant] = { fill: fillEl, val: val };
        });
        box.appendChild(wrap);
        S.slotEls[slot] = { meta: meta, rows: rows };
      });
    }
    slots.forEach(function (slot) {
      var s = bySlot[slot];
      var e = S.slotEls[slot];
      if (!e) return;
      clear(e.meta);
      e.meta.appendChild(document.createTextNode(fmtInt(s.total) + ' pushed'));
      var cap = num((capped || {})[slot]);
      if (cap > 0) append(e.meta, ' · ', el('span', 'cap', fmtInt(cap) + ' capped'));
      var und = num(S.undelivered[slot]);
      if (und > 0) {
        var u = el('span', 'und', fmtInt(und) + ' not delivered');
        u.title = 'decided while the user had no open socket (counted since this page was opened)';
        append(e.meta, ' · ', u);
      }
      s.variants.forEach(function (v) {
        var r = e.rows[v.variant];
        if (!r) return;
        var share = s.total > 0 ? v.pushed / s.total : 0;
        r.fill.style.width = (share * 100).toFixed(1) + '%';
        clear(r.val);
        append(r.val, fmtInt(v.pushed), el('span', 'pct', Math.round(share * 100) + '%'));
      });
    });
  }

  // ---------------------------------------------------------------- live tail
  function onTail(item) {
    if (S.paused) {
      S.pending.push(item);
      if (S.pending.length > TAIL_MAX) S.pending.splice(0, S.pending.length - TAIL_MAX);
      updatePauseButton();
      return;
    }
    S.queue.push(item);
    if (S.queue.length > TAIL_MAX) S.queue.splice(0, S.queue.length - TAIL_MAX);
    if (!S.frame) S.frame = requestAnimationFrame(flushTail);
  }

  function flushTail() {
    S.frame = 0;
    var items = S.queue;
    S.queue = [];
    if (!items.length) return;
    var body = $('tail-body');
    var frag = document.createDocumentFragment();
    for (var i = items.length - 1; i >= 0; i--) frag.appendChild(tailRow(items[i], items.length < 50));
    body.insertBefore(frag, body.firstChild);
    S.tailRows += items.length;
    while (S.tailRows > TAIL_MAX && body.lastChild) { body.removeChild(body.lastChild); S.tailRows--; }
    $('tail-empty').hidden = S.tailRows > 0;
    $('tail-count').textContent = '· last ' + S.tailRows;
  }

  function tailRow(item, fresh) {
    var m = item.m;
    var tr = el('tr', fresh ? 'fresh' : '');
    tr.dataset.kind = item.kind;
    tr.dataset.user = m.user || '';
    if (S.selUser && m.user === S.selUser) tr.classList.add('sel');
    var tdTime = el('td', 'time', fmtTime(num(m.ts) || Date.now(), true));
    var tdKind = el('td');
    var tdUser = el('td');
    var tdDetail = el('td', 'detail');
    var tdPage = el('td', 'page');
    if (m.user) {
      var b = el('button', 'user-link', shortKey(m.user));
      b.type = 'button';
      b.title = 'Inspect user ' + m.user;
      b.dataset.user = m.user;
      tdUser.appendChild(b);
    } else {
      tdUser.appendChild(el('span', 'muted', '—'));
    }
    if (item.kind === 'lagged') {
      tdKind.appendChild(el('span', 'kind kind-lagged', 'skipped'));
      tdDetail.appendChild(el('span', 'paused-note', fmtInt(m.skipped) + ' messages skipped: the feed outran this page'));
      clear(tdUser);
      tdUser.appendChild(el('span', 'muted', '—'));
      return append(tr, tdTime, tdKind, tdUser, tdDetail, tdPage);
    }
    if (item.kind === 'event') {
      var t = String(m.event || 'event');
      var known = ['scroll', 'click', 'conversion'].indexOf(t) >= 0 ? t : 'event';
      tdKind.appendChild(el('span', 'kind kind-' + known, t));
      if (m.target) tdDetail.appendChild(el('span', 'tgt', m.target));
      else tdDetail.appendChild(el('span', 'muted', '—'));
      if (m.session) append(tdDetail, el('span', 'muted small', '  session ' + shortKey(m.session)));
      tdPage.textContent = m.page || '';
      tdPage.title = m.page || '';
    } else {
      tdKind.appendChild(el('span', 'kind kind-adjust', 'adjust'));
      append(tdDetail, el('span', 'tgt', m.slot), el('span', 'arrow', '→'), el('span', 'tgt', m.variant));
      if (m.sockets !== undefined && m.sockets !== null) {
        append(tdDetail, num(m.sockets) > 0
          ? el('span', 'muted small', '  pushed to ' + num(m.sockets) + ' socket' + (num(m.sockets) === 1 ? '' : 's'))
          : el('span', 'muted small', '  no open socket'));
      }
      tdPage.textContent = m.rule ? 'rule ' + m.rule : '';
    }
    return append(tr, tdTime, tdKind, tdUser, tdDetail, tdPage);
  }

  function updatePauseButton() {
    var b = $('tail-pause');
    b.setAttribute('aria-pressed', S.paused ? 'true' : 'false');
    b.textContent = S.paused ? 'Resume' + (S.pending.length ? ' (+' + S.pending.length + ')' : '') : 'Pause';
  }

  function togglePause() {
    S.paused = !S.paused;
    if (!S.paused) {
      var p = S.pending;
      S.pending = [];
      for (var i = 0; i < p.length; i++) onTail(p[i]);
    }
    updatePauseButton();
  }

  function setFilter(f) {
    S.filter = f;
    var body = $('tail-body');
    body.classList.remove('f-event', 'f-adjust');
    if (f !== 'all') body.classList.add('f-' + f);
    document.querySelectorAll('.seg-btn[data-filter]').forEach(function (b) { b.classList.toggle('active', b.dataset.filter === f); });
  }

  function highlightUser(key) {
    S.selUser = key;
    document.querySelectorAll('#tail-body tr').forEach(function (tr) {
      tr.classList.toggle('sel', !!key && tr.dataset.user === key);
    });
  }

  // ---------------------------------------------------------------- inspector
  function stopInspector() {
    clearTimeout(S.inspTimer);
    S.insp = null;
  }

  function inspect(kind, id) {
    if (!id) return;
    S.insp = { kind: kind, id: id };
    S.inspSeq++;
    clearTimeout(S.inspTimer);
    highlightUser(kind === 'key' ? id : null);
    var box = $('insp');
    clear(box);
    box.appendChild(el('div', 'empty-note', 'Loading ' + (kind === 'key' ? shortKey(id) : id) + '…'));
    box.dataset.user = '';
    loadInspector(true);
  }

  function loadInspector(first) {
    var q = S.insp;
    if (!q || !S.token) return;
    if (S.inspBusy && !first) { scheduleInspector(); return; }
    var seq = S.inspSeq;
    S.inspBusy = true;
    var path = q.kind === 'key'
      ? '/v1/admin/users/' + encodeURIComponent(q.id)
      : '/v1/users/' + encodeURIComponent(q.id);
    api(path).then(function (res) {
      S.inspBusy = false;
      if (seq !== S.inspSeq) return;
      if (res.status === 401 || res.status === 403) { signOut('The admin token is no longer accepted.'); return; }
      if (res.status === 200 && res.body) renderInspector(q, res.body);
      else if (res.status === 404) renderInspectorError(q, 'No data is stored for this user' + (q.kind === 'raw' ? ' (or no such id).' : '.'));
      else renderInspectorError(q, 'Lookup failed (' + res.status + '): ' + errMessage(res, 'unexpected answer'));
      scheduleInspector();
    }, function () {
      S.inspBusy = false;
      if (seq !== S.inspSeq) return;
      renderInspectorError(q, 'Cannot reach the server.');
      scheduleInspector();
    });
  }

  function scheduleInspector() {
    clearTimeout(S.inspTimer);
    if (!S.insp || !$('insp-live').checked) return;
    S.inspTimer = setTimeout(function () { loadInspector(false); }, INSPECT_EVERY_MS);
  }

  function renderInspectorError(q, text) {
    var box = $('insp');
    clear(box);
    box.appendChild(el('div', 'insp-error', text));
  }

  function section(title, content) {
    var s = el('div', 'insp-section');
    s.appendChild(el('h3', null, title));
    if (content) s.appendChild(content);
    return s;
  }

  function kvGrid(pairs) {
    var dl = el('dl', 'kv');
    pairs.forEach(function (p) {
      var d = el('div');
      var dd = el('dd', null, p[1] === undefined || p[1] === null || p[1] === '' ? '—' : p[1]);
      dd.title = dd.textContent;
      append(d, el('dt', null, p[0]), dd);
      dl.appendChild(d);
    });
    return dl;
  }

  function miniTable(headers, rows) {
    var t = el('table', 'table mini');
    var thead = el('thead');
    var hr = el('tr');
    headers.forEach(function (h) {
      var th = el('th', h.num ? 'num' : null, h.label || h);
      hr.appendChild(th);
    });
    thead.appendChild(hr);
    var tb = el('tbody');
    rows.forEach(function (r) {
      var tr = el('tr');
      r.forEach(function (c, i) {
        var td = el('td', headers[i].num ? 'num' : null);
        if (c && c.nodeType) td.appendChild(c); else td.textContent = c === undefined || c === null ? '—' : String(c);
        tr.appendChild(td);
      });
      tb.appendChild(tr);
    });
    return append(t, thead, tb);
  }

  function propsSummary(ev) {
    var p = ev.props || {};
    var keys = Object.keys(p);
    if (!keys.length) return '';
    return keys.map(function (k) {
      var v = p[k];
      if (typeof v === 'number') v = Math.round(v * 100) / 100;
      else if (typeof v === 'object' && v !== null) v = JSON.stringify(v);
      return k + '=' + v;
    }).join(' ');
  }

  function renderInspector(q, data) {
    var box = $('insp');
    var keepScroll = box.scrollTop;
    var st = data.state || {};
    var sc = st.scroll || {};
    var ctx = st.context || {};
    var consent = st.consent || {};
    clear(box);
    box.dataset.user = data.user || q.id;

    // Header
    var head = el('div', 'insp-head');
    var left = el('div');
    left.appendChild(el('div', 'insp-user', data.user || q.id));
    var meta = [];
    if (q.kind === 'raw') meta.push('site id ' + q.id);
    else if (data.user && data.user !== q.id) meta.push('key ' + q.id);
    meta.push(fmtInt(num(st.events)) + ' events');
    meta.push(fmtInt(num(st.sessions)) + ' session' + (num(st.sessions) === 1 ? '' : 's'));
    if (st.last_seen_ms) meta.push('seen ' + fmtAgo(st.last_seen_ms));
    left.appendChild(el('div', 'insp-meta', meta.join(' · ')));
    if (st.page) left.appendChild(el('div', 'insp-meta mono', st.page));
    var flags = el('div', 'consent');
    [['analytics', consent.analytics], ['personalization', consent.personalization]].forEach(function (f) {
      flags.appendChild(el('span', 'flag ' + (f[1] ? 'on' : 'off'), (f[1] ? '✓ ' : '✕ ') + f[0]));
    });
    if (st.segment) flags.appendChild(el('span', 'flag', 'segment ' + st.segment));
    append(head, left, flags);
    box.appendChild(head);

    // Scroll
    var depth = num(sc.depth), maxDepth = num(sc.max_depth);
    var sr = el('div', 'scroll-row');
    var track = el('div', 'depth-track');
    var mx = el('div', 'depth-max'); mx.style.width = Math.min(100, maxDepth) + '%';
    var now = el('div', 'depth-now'); now.style.width = Math.min(100, depth) + '%';
    var mark = el('div', 'depth-mark'); mark.style.left = '75%'; mark.title = '75%';
    append(track, mx, now, mark);
    var stats = el('div', 'scroll-stats');
    var dB = el('b', null, nf1.format(depth) + '%');
    dB.dataset.field = 'depth';
    dB.dataset.value = String(depth);
    var mB = el('b', null, nf1.format(maxDepth) + '%');
    mB.dataset.field = 'max_depth';
    mB.dataset.value = String(maxDepth);
    var dir = (sc.direction === 'down' || num(sc.direction) > 0) ? '↓ down' : (sc.direction === 'up' || num(sc.direction) < 0) ? '↑ up' : '· still';
    append(stats, 'depth ', dB, ' · max ', mB, ' · ' + nf1.format(num(sc.velocity)) + ' %/s ' + dir);
    append(sr, track, stats);
    box.appendChild(section('Scroll', sr));

    // Behavioural signals of the session: the two scores, then every counter
    var sg = st.signals || {};
    var pct = function (v) { return Math.round(num(v) * 100) + '%'; };
    var sgGrid = kvGrid([
      ['frustration', pct(sg.frustration)],
      ['intent', pct(sg.intent)],
      ['rage clicks', fmtInt(num(sg.rage_clicks))],
      ['dead clicks', fmtInt(num(sg.dead_clicks))],
      ['error clicks', fmtInt(num(sg.error_clicks))],
      ['hesitations', fmtInt(num(sg.hesitations)) + (num(sg.hesitation_ms) ? ' · ' + nf1.format(num(sg.hesitation_ms) / 1000) + ' s' : '')],
      ['exit intents', fmtInt(num(sg.exit_intents)) + (sg.exit_via ? ' · ' + sg.exit_via : '')],
      ['excessive scrolls', fmtInt(num(sg.excessive_scrolls))],
      ['quick backs', fmtInt(num(sg.quick_backs))],
      ['engaged', nf1.format(num(sg.engaged_ms) / 1000) + ' s'],
      ['reading', num(sg.reading_wpm) ? Math.round(num(sg.reading_wpm)) + ' wpm' : ''],
      ['motion', sg.motion ? sg.motion + (num(sg.tilt) ? ' · tilt ' + Math.round(num(sg.tilt)) + '°' : '') : ''],
    ]);
    ['frustration', 'intent', 'rage_clicks', 'dead_clicks', 'error_clicks', 'hesitations', 'exit_intents',
      'excessive_scrolls', 'quick_backs', 'engaged_ms', 'reading_wpm', 'motion'].forEach(function (f, i) {
      var dd = sgGrid.children[i].querySelector('dd');
      dd.dataset.field = 'signals.' + f;
      dd.dataset.value = String(sg[f] === undefined ? '' : sg[f]);
    });
    box.appendChild(section('Signals (this session)', sgGrid));

    // Current adjustments
    var adj = st.adjustments || {};
    var adjKeys = Object.keys(adj);
    var adjBox = el('div', 'chips');
    if (!adjKeys.length) adjBox.appendChild(el('span', 'muted small', 'none'));
    adjKeys.forEach(function (slot) { adjBox.appendChild(el('span', 'chip chip-adj', slot + ' → ' + adj[slot])); });
    box.appendChild(section('Current adjustments', adjBox));

    // Sequence
    var seq = Array.isArray(st.sequence) ? st.sequence : [];
    var seqBox = el('div', 'chips');
    if (!seq.length) seqBox.appendChild(el('span', 'muted small', 'empty'));
    seq.forEach(function (s, i) {
      if (i) seqBox.appendChild(el('span', 'chip-seq-arrow', '›'));
      seqBox.appendChild(el('span', 'chip', typeof s === 'string' ? s : JSON.stringify(s)));
    });
    box.appendChild(section('Sequence (oldest → newest)', seqBox));

    // Context
    box.appendChild(section('Context', kvGrid([
      ['device', ctx.device], ['browser', ctx.browser],
      ['viewport', ctx.viewport_w || ctx.viewport_h ? num(ctx.viewport_w) + '×' + num(ctx.viewport_h) : ''],
      ['language', ctx.language],
      ['local hour', typeof ctx.hour === 'number' && ctx.hour >= 0 ? pad(ctx.hour, 2) + ':00' : ''],
      ['tz offset', ctx.tz_offset_min !== undefined && ctx.tz_offset_min !== null ? (num(ctx.tz_offset_min) >= 0 ? '+' : '') + num(ctx.tz_offset_min) + ' min' : ''],
      ['session', st.session ? shortKey(st.session) : ''],
      ['first seen', st.first_seen_ms ? fmtAgo(st.first_seen_ms) : '']
    ])));

    // Targets
    var targets = st.targets || {};
    var tnames = Object.keys(targets).sort(function (a, b) {
      var ta = targets[a] || {}, tb = targets[b] || {};
      return (num(tb.dwell_ms) + num(tb.hover_ms)) - (num(ta.dwell_ms) + num(ta.hover_ms));
    });
    if (tnames.length) {
      var trows = tnames.map(function (n) {
        var t = targets[n] || {};
        var name = el('span', 'mono', n);
        var cell = el('span');
        cell.appendChild(name);
        if (t.hovering || num(t.hovering_ms) > 0) cell.appendChild(el('span', 'flag on', 'hover'));
        if (t.in_view || num(t.in_view_ms) > 0) cell.appendChild(el('span', 'flag on', 'in view'));
        return [cell, fmtMs(num(t.hover_ms)) + ' ×' + num(t.hover_count), fmtMs(num(t.dwell_ms)) + ' ×' + num(t.dwell_count), fmtInt(num(t.clicks))];
      });
      box.appendChild(section('Targets', miniTable([{ label: 'target' }, { label: 'hover', num: true }, { label: 'dwell', num: true }, { label: 'clicks', num: true }], trows)));
    } else {
      box.appendChild(section('Targets', el('span', 'muted small', 'no hovers, dwells or clicks yet')));
    }

    // Decisions
    var decisions = Array.isArray(data.decisions) ? data.decisions.slice() : [];
    decisions.sort(function (a, b) { return num(b.ts) - num(a.ts); });
    if (decisions.length) {
      var drows = decisions.slice(0, 15).map(function (d) {
        return [fmtTime(num(d.ts)), d.slot, d.variant, d.source || '', d.rule || (d.experiment || '')];
      });
      box.appendChild(section('Decisions (' + decisions.length + ')', miniTable([{ label: 'time' }, { label: 'slot' }, { label: 'variant' }, { label: 'source' }, { label: 'rule' }], drows)));
    } else {
      box.appendChild(section('Decisions', el('span', 'muted small', 'none')));
    }

    // Recent events
    var events = Array.isArray(data.events) ? data.events.slice() : [];
    events.sort(function (a, b) { return num(b.ts) - num(a.ts) || num(b.seq) - num(a.seq); });
    if (events.length) {
      var erows = events.slice(0, 25).map(function (e) {
        return [fmtTime(num(e.ts)), e.type, e.target || '', propsSummary(e)];
      });
      box.appendChild(section('Recent events (' + events.length + ' stored)', miniTable([{ label: 'time' }, { label: 'type' }, { label: 'target' }, { label: 'props' }], erows)));
    }
    box.scrollTop = keepScroll;
  }

  // ---------------------------------------------------------------- wiring
  function init() {
    $('login-form').addEventListener('submit', onLoginSubmit);
    document.querySelectorAll('.nav-tab').forEach(function (b) {
      b.addEventListener('click', function () { setTab(b.dataset.tab); });
    });
    window.addEventListener('hashchange', function () { if (S.started) setTab(tabFromHash()); });
    $('logout').addEventListener('click', function () { signOut(); });
    $('tail-pause').addEventListener('click', togglePause);
    document.querySelectorAll('.seg-btn[data-filter]').forEach(function (b) {
      b.addEventListener('click', function () { setFilter(b.dataset.filter); });
    });
    $('tail-body').addEventListener('click', function (ev) {
      var b = ev.target.closest ? ev.target.closest('.user-link') : null;
      if (!b) return;
      $('insp-input').value = '';
      inspect('key', b.dataset.user);
    });
    $('insp-form').addEventListener('submit', function (ev) {
      ev.preventDefault();
      var id = $('insp-input').value.trim();
      if (id) inspect('raw', id);
    });
    $('insp-live').addEventListener('change', function () {
      if ($('insp-live').checked) loadInspector(false); else clearTimeout(S.inspTimer);
    });

    var saved = null;
    try { saved = sessionStorage.getItem(TOKEN_KEY); } catch (e) { saved = null; }
    if (saved) { S.token = saved; startApp(); } else { showLogin(); }
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
