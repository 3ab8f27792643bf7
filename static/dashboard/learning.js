// trimtab operator dashboard: the Learning page (bandit slots and served models). Plain JS, no
// build step.
//
// Loaded after app.js, which owns the admin token, the login and the header nav; this file only
// gets `window.trimtabDashboard` (an API helper that sends the token, the shared formatters and a
// way to register pages). Server data is only ever inserted as text (textContent), never as HTML.
//
//  - Bandits: GET /v1/bandits (every slot's state, arms and groups, plus refused definition
//    files) every 5 s while the page is open. A slot in fallback (its guardrail tripped) shows
//    the reason and a "Resume" button that POSTs /v1/bandits/{slot}/reset.
//  - Models: GET /v1/models on the same tick (a 404 means the server has no model serving: the
//    section says so and the rest of the page keeps working). The selected model's model card
//    and its reliability (calibration) chart are shown below the table.
(function () {
  'use strict';

  var D = window.trimtabDashboard;
  if (!D) { console.error('learning.js: app.js did not load'); return; }

  var EVERY_MS = 5000;
  var NOTE_MS = 120000;     // how long "guardrail reset" stays on the card
  var C = D.colors.base;
  var PALETTE = D.colors.variants;
  var CONTROL_COLOR = '#8a96a6';
  var GOOD = '#3fb950', WARN = '#d6a23a';
  var DASH = '—';

  // ---------------------------------------------------------------- helpers
  // DOM helpers are app.js's (text only, never innerHTML).
  var $ = D.dom.$, el = D.dom.el, append = D.dom.append, clear = D.dom.clear;
  var isNum = D.val.isNum, num = D.val.num, arr = D.val.arr, obj = D.val.obj;
  function plural(n, word) { return D.fmt.int(n) + ' ' + word + (n === 1 ? '' : 's'); }

  var fmtPct = D.fmt.pct, fmtSignedPct = D.fmt.signedPct;
  function fmtMetric(x, dp) { return isNum(x) ? x.toFixed(dp === undefined ? 3 : dp).replace('-', '−') : DASH; }
  function fmtDuration(ms) {
    if (!isNum(ms)) return DASH;
    if (ms < 1000) return Math.round(ms) + ' ms';
    var s = ms / 1000;
    if (s < 60) return (Number.isInteger(s) ? s : s.toFixed(1)) + ' s';
    var m = s / 60;
    if (m < 60) return (Number.isInteger(m) ? m : m.toFixed(1)) + ' min';
    var h = m / 60;
    if (h < 48) return (Number.isInteger(h) ? h : h.toFixed(1)) + ' h';
    return (h / 24).toFixed(h % 24 ? 1 : 0) + ' d';
  }
  function pad2(n) { return (n < 10 ? '0' : '') + n; }
  function fmtDate(v) {
    var d = new Date(v);
    if (isNaN(d.getTime())) return DASH;
    return d.getFullYear() + '-' + pad2(d.getMonth() + 1) + '-' + pad2(d.getDate()) + ' ' + pad2(d.getHours()) + ':' + pad2(d.getMinutes());
  }
  var badge = D.dom.badge;
  function chip(box, k, v, title) {
    var c = el('span', 'meta-chip');
    append(c, el('span', 'k', k), ' ', el('span', 'mono', v));
    if (title) c.title = title;
    box.appendChild(c);
    return c;
  }

  // uPlot charts that follow their box's width: app.js's.
  var Chart = D.chart.Chart, axis = D.chart.axis;

  // ================================================================= state
  var L = {
    active: false,
    timer: null,
    busy: false,
    seq: 0,
    bandits: null,          // last GET /v1/bandits body
    banditSig: '',
    models: null,           // last models list (null: unknown / unavailable)
    modelsSig: '',
    modelsStatus: 0,        // last HTTP status of GET /v1/models
    sel: null,              // selected model name
    resetting: {},          // slot → true while its reset POST is in flight
    resetNote: {},          // slot → {ok, text, at} after a reset
    states: null,           // slot → state at the last render (to announce changes)
    gen: 0,                 // bumped by a reset: bandit answers asked for before it are stale
    calib: null
  };

  function show() {
    L.active = true;
    if (!L.calib) L.calib = new Chart($('calib-chart'), 260);
    tick();
  }
  function hide() {
    L.active = false;
    clearTimeout(L.timer);
  }
  function reset() {
    hide();
    L.seq++;
    L.busy = false;
    L.bandits = null; L.banditSig = '';
    L.models = null; L.modelsSig = ''; L.modelsStatus = 0;
    L.sel = null; L.resetting = {}; L.resetNote = {}; L.states = null;
    $('learn-announce').textContent = '';
    if (L.calib) L.calib.destroy();
    clear($('bandit-cards'));
    clear($('bandit-problems'));
    $('bandit-problems').hidden = true;
    clear($('models'));
    $('models').appendChild(el('div', 'empty-note', 'Loading…'));
    $('model-detail').hidden = true;
    $('model-card').hidden = true;
    $('learn-error').hidden = true;
  }
  function schedule() {
    clearTimeout(L.timer);
    if (!L.active || !$('learn-live').checked) return;
    L.timer = setTimeout(tick, EVERY_MS);
  }

  // One refresh: bandits and models in parallel; each renders on its own.
  function tick() {
    if (!L.active) return;
    if (L.busy) { schedule(); return; }
    L.busy = true;
    var seq = L.seq;
    var gen = L.gen;
    var bandits = D.api('/v1/bandits').then(function (res) {
      if (seq !== L.seq || gen !== L.gen) return;
      if (res.status === 200 && res.body) {
        $('learn-error').hidden = true;
        L.bandits = res.body;
        renderBandits(res.body);
        $('learn-updated').textContent = 'updated ' + D.fmt.time(Date.now());
      } else {
        showError('Could not read the bandits (' + res.status + '): ' + D.errMessage(res, 'unexpected answer'));
      }
    }, function () {
      if (seq === L.seq) showError('Cannot reach the server.');
    });
    var models = D.api('/v1/models').then(function (res) {
      if (seq !== L.seq) return;
      L.modelsStatus = res.status;
      if (res.status === 200 && res.body) renderModels(arr(res.body.models));
      else if (res.status === 404) renderModelsUnavailable();
      else renderModelsError('Could not read the models (' + res.status + '): ' + D.errMessage(res, 'unexpected answer'));
    }, function () {
      if (seq === L.seq) renderModelsError('Cannot reach the server.');
    });
    Promise.all([bandits, models]).catch(function (e) { console.warn(e); }).then(function () {
      if (seq !== L.seq) return;
      L.busy = false;
      schedule();
    });
  }

  function showError(text) {
    var b = $('learn-error');
    b.textContent = text + (L.bandits ? ' Showing the last state.' : '');
    b.hidden = false;
  }

  // ================================================================= bandits
  function renderBandits(body) {
    var list = arr(body.bandits).filter(function (b) { return b && typeof b === 'object'; });
    var problems = arr(body.problems);
    announce(list);
    // A successful reset's note is shown for a while, and never once the slot fell back again.
    list.forEach(function (b) {
      var n = L.resetNote[b.slot];
      if (n && n.ok && (b.state === 'fallback' || Date.now() - n.at > NOTE_MS)) delete L.resetNote[b.slot];
    });
    var sig = JSON.stringify([list, problems, L.resetting, L.resetNote]);
    if (sig === L.banditSig) return;
    L.banditSig = sig;
    renderProblems(problems);

    var sub = [];
    if (list.length) sub.push(plural(list.length, 'slot'));
    var fb = list.filter(function (b) { return b.state === 'fallback'; }).length;
    if (fb) sub.push(fb + ' in fallback');
    $('bandit-sub').textContent = sub.length ? '· ' + sub.join(' · ') : '';

    var box = $('bandit-cards');
    // Keep the keyboard focus on a Resume button across re-renders.
    var focused = document.activeElement && box.contains(document.activeElement) ? document.activeElement.dataset.slot : null;
    clear(box);
    if (!list.length) {
      var empty = el('div', 'panel bandit-empty');
      empty.appendChild(el('div', 'empty-note', 'No bandit slots. Define one with PUT /v1/bandits/{slot} or a file in bandits/.'));
      box.appendChild(empty);
      return;
    }
    list.forEach(function (b) { box.appendChild(banditCard(b)); });
    if (focused) {
      var again = box.querySelector('.bandit-resume[data-slot="' + CSS.escape(focused) + '"]');
      if (again) again.focus();
    }
  }

  // State changes (fallback, back to learning) go to a polite live region, once each; the cards
  // themselves are re-rendered on every change and are not live regions.
  function announce(list) {
    var now = {};
    var said = [];
    list.forEach(function (b) {
      var slot = String(b.slot || '');
      now[slot] = String(b.state || '');
      var was = L.states ? L.states[slot] : undefined;
      if (L.states && was !== now[slot]) {
        said.push(now[slot] === 'fallback' ? 'Bandit ' + slot + ' fell back to its control: ' + String(b.fallback_reason || 'guardrail')
          : 'Bandit ' + slot + ' is ' + now[slot] + '.');
      }
    });
    L.states = now;
    if (said.length) $('learn-announce').textContent = said.join(' ');
  }

  // Refused definition files: prominent, with the field path (as on the Experiments page).
  function renderProblems(problems) {
    var pbox = $('bandit-problems');
    clear(pbox);
    pbox.hidden = !problems.length;
    if (!problems.length) return;
    var head = el('div', 'problems-head');
    append(head, el('span', 'problems-icon', '!'),
      el('b', null, problems.length + ' bandit definition' + (problems.length === 1 ? ' was' : 's were') + ' refused'),
      el('span', 'muted small', ' · a slot whose file broke keeps its last good definition; fix the file and it reloads'));
    pbox.appendChild(head);
    problems.forEach(function (p) {
      var row = el('div', 'problem');
      row.dataset.problem = String(p.id || p.file || '');
      var file = String(p.file || p.id || '?');
      var loc = el('span', 'loc', file.split('/').pop());
      loc.title = file;
      append(row, loc);
      if (p.path) append(row, el('span', 'problem-path', String(p.path)));
      append(row, el('span', 'problem-msg', String(p.error || 'invalid definition')));
      pbox.appendChild(row);
    });
  }

  var STATE_KIND = { learning: 'active', fallback: 'compile_error', paused: 'disabled', starting: 'other' };
  var STATE_TEXT = {
    learning: 'the policy chooses and learns from every closed decision',
    fallback: 'the guardrail tripped: everyone gets the control until it is reset',
    paused: 'disabled in the definition: everyone gets the control, nothing is learned',
    starting: 'waiting for the learner to publish the policy'
  };

  function banditCard(b) {
    var slot = String(b.slot || '');
    var state = STATE_KIND[b.state] ? String(b.state) : 'starting';
    var control = String(b.control || '');
    var arms = arr(b.arms);
    var def = obj(b.definition);
    var card = el('article', 'bandit-card state-' + state);
    card.dataset.slot = slot;
    card.dataset.state = state;
    card.setAttribute('aria-label', 'bandit slot ' + slot);

    // Head: slot, state, policy and version.
    var top = el('div', 'bandit-top');
    var name = el('div', 'bandit-name');
    append(name, el('span', 'mono', slot), badge(state, STATE_KIND[state]));
    name.lastChild.classList.add('bandit-state');
    name.lastChild.title = STATE_TEXT[state];
    var pol = el('div', 'bandit-policy');
    append(pol, el('span', 'mono', String(b.policy || DASH)), el('span', 'muted', ' · v'), el('b', 'bandit-version', D.fmt.int(num(b.version))));
    pol.title = 'policy ' + (b.policy || '?') + ', version ' + num(b.version) + ' (rewards absorbed)';
    append(top, name, pol);
    card.appendChild(top);

    // Fallback: the reason and the way out.
    if (state === 'fallback') {
      var fbox = el('div', 'bandit-fallback');
      var txt = el('div', 'bandit-fallback-text');
      append(txt, el('b', null, 'Fallback: everyone gets ' + (control || 'the control') + '. '),
        el('span', 'bandit-reason', String(b.fallback_reason || 'the guardrail tripped')));
      var btn = el('button', 'btn btn-small btn-danger bandit-resume', L.resetting[slot] ? 'Resuming…' : 'Resume (reset guardrail)');
      btn.type = 'button';
      btn.dataset.slot = slot;
      btn.disabled = !!L.resetting[slot];
      btn.title = 'POST /v1/bandits/' + slot + '/reset: leave fallback; the guardrail compares only decisions from now on';
      btn.addEventListener('click', function () { resume(slot); });
      append(fbox, txt, btn);
      card.appendChild(fbox);
    }
    var note = L.resetNote[slot];
    if (note) {
      card.appendChild(el('div', 'bandit-note ' + (note.ok ? 'ok' : 'err'), note.text));
    }

    // Meta: reward, window, holdout, pending, guardrail.
    var meta = el('div', 'exp-meta bandit-meta');
    chip(meta, 'reward', String(b.reward || DASH));
    chip(meta, 'window', fmtDuration(num(b.window_ms)), 'attribution window: a decision without a reward by then is learned as 0');
    chip(meta, 'holdout', fmtPct(num(b.holdout)), 'share of users who always get the control (the baseline)');
    var pend = chip(meta, 'pending', D.fmt.int(num(b.pending)), 'decisions whose attribution window is still open');
    pend.classList.add('bandit-pending');
    pend.dataset.value = String(num(b.pending));
    var g = obj(def.guardrail);
    if (def.guardrail) {
      chip(meta, 'guardrail', String(g.metric || 'click') + ' −' + fmtPct(num(g.max_drop), 0) + ' · n≥' + D.fmt.int(num(g.min_samples)),
        'falls back to the control when the bandit\'s ' + (g.metric || 'click') + ' rate is below the holdout\'s by more than ' +
        fmtPct(num(g.max_drop), 0) + ' (one-sided test at α = ' + (isNum(g.alpha) ? g.alpha : 0.05) + ', at least ' + num(g.min_samples) + ' decisions per group)');
    } else {
      chip(meta, 'guardrail', 'none');
    }
    card.appendChild(meta);

    // Arms: share of decisions and reward rate.
    var total = arms.reduce(function (t, a) { return t + num(a.chosen); }, 0);
    var maxRate = arms.reduce(function (m, a) { return isNum(a.reward_rate) ? Math.max(m, a.reward_rate) : m; }, 0);
    var order = arms.map(function (a) { return String(a.variant); }).filter(function (v) { return v !== control; });
    var colorOf = function (v) { return v === control ? CONTROL_COLOR : PALETTE[Math.max(0, order.indexOf(v)) % PALETTE.length]; };
    var armsBox = el('div', 'bandit-arms');
    armsBox.setAttribute('role', 'table');
    armsBox.setAttribute('aria-label', 'arms of ' + slot);
    var hr = el('div', 'arm-row arm-head');
    hr.setAttribute('role', 'row');
    ['Arm', 'Chosen · share of ' + D.fmt.int(total) + ' decisions', 'Reward rate (' + (b.reward || 'reward') + ') · rewarded / closed'].forEach(function (h, i) {
      var c = el('div', i === 0 ? 'arm-h' : 'arm-h arm-h-wide', h);
      c.setAttribute('role', 'columnheader');
      hr.appendChild(c);
    });
    armsBox.appendChild(hr);
    if (!arms.length) armsBox.appendChild(el('div', 'empty-note', 'No arms.'));
    arms.forEach(function (a) {
      var v = String(a.variant);
      var row = el('div', 'arm-row');
      row.setAttribute('role', 'row');
      row.dataset.arm = v;
      row.dataset.chosen = String(num(a.chosen));
      row.dataset.closed = String(num(a.closed));
      row.dataset.rewarded = String(num(a.rewarded));
      if (v === control) row.classList.add('is-control');
      var lab = el('div', 'arm-label');
      lab.setAttribute('role', 'cell');
      var sw = el('span', 'sw-arm');
      sw.style.background = colorOf(v);
      append(lab, sw, el('span', 'arm-variant', v));
      lab.title = v;
      if (v === control) lab.appendChild(el('span', 'tag', 'control'));
      // Share of decisions.
      var share = total > 0 ? num(a.chosen) / total : 0;
      var c1 = el('div', 'arm-bar');
      c1.setAttribute('role', 'cell');
      var t1 = el('div', 'bar-track');
      var f1 = el('div', 'bar-fill');
      f1.style.width = (share * 100).toFixed(1) + '%';
      f1.style.background = colorOf(v);
      t1.appendChild(f1);
      var v1 = el('div', 'bar-val');
      append(v1, el('span', 'arm-chosen', D.fmt.int(num(a.chosen))), el('span', 'pct', total > 0 ? fmtPct(share) : DASH));
      append(c1, t1, v1);
      // Reward rate.
      var rate = isNum(a.reward_rate) ? a.reward_rate : null;
      var c2 = el('div', 'arm-bar');
      c2.setAttribute('role', 'cell');
      var t2 = el('div', 'bar-track bar-track-rate');
      var f2 = el('div', 'bar-fill');
      f2.style.width = rate === null || maxRate <= 0 ? '0' : (rate / maxRate * 100).toFixed(1) + '%';
      f2.style.background = GOOD;
      if (rate === null) f2.style.minWidth = '0';
      t2.appendChild(f2);
      var v2 = el('div', 'bar-val');
      append(v2, el('span', 'arm-rate', rate === null ? DASH : fmtPct(rate)),
        el('span', 'pct', D.fmt.int(num(a.rewarded)) + ' / ' + D.fmt.int(num(a.closed))));
      c2.title = rate === null ? 'no closed decision yet' : D.fmt.int(num(a.rewarded)) + ' of ' + D.fmt.int(num(a.closed)) + ' closed decisions rewarded';
      append(c2, t2, v2);
      append(row, lab, c1, c2);
      armsBox.appendChild(row);
    });
    card.appendChild(armsBox);

    // Bandit vs holdout (and fallback) over closed decisions, and the lift.
    var groups = obj(b.groups);
    var gbox = el('div', 'bandit-groups');
    var tile = function (key, label, hint) {
      var gg = obj(groups[key]);
      var t = el('div', 'group-tile group-' + key);
      t.dataset.group = key;
      t.dataset.decisions = String(num(gg.decisions));
      append(t, el('div', 'group-label', label),
        el('div', 'group-rate', fmtPct(isNum(gg.reward_rate) ? gg.reward_rate : null)),
        el('div', 'group-sub', plural(num(gg.decisions), 'closed decision')));
      t.title = hint;
      return t;
    };
    gbox.appendChild(tile('bandit', 'Bandit', 'users the policy chose for: ' + (b.reward || 'reward') + ' rate over closed decisions'));
    gbox.appendChild(tile('holdout', 'Holdout', 'users who always get the control: the baseline'));
    if (num(obj(groups.fallback).decisions) > 0 || state === 'fallback') {
      gbox.appendChild(tile('fallback', 'Fallback', 'decisions served the control while in fallback'));
    }
    var lift = isNum(b.lift_vs_holdout) ? b.lift_vs_holdout : null;
    var lt = el('div', 'group-tile group-lift ' + (lift === null ? '' : lift > 0 ? 'up' : lift < 0 ? 'down' : ''));
    lt.dataset.lift = lift === null ? '' : String(lift);
    append(lt, el('div', 'group-label', 'Lift vs holdout'),
      el('div', 'group-rate', lift === null ? DASH : fmtSignedPct(lift)),
      el('div', 'group-sub', lift === null ? 'needs closed decisions in both groups' : 'bandit rate ÷ holdout rate − 1'));
    gbox.appendChild(lt);
    card.appendChild(gbox);
    return card;
  }

  function resume(slot) {
    if (L.resetting[slot]) return;
    L.resetting[slot] = true;
    L.gen++;
    delete L.resetNote[slot];
    if (L.bandits) renderBandits(L.bandits);
    var seq = L.seq;
    D.api('/v1/bandits/' + encodeURIComponent(slot) + '/reset', 'POST').then(function (res) {
      if (seq !== L.seq) return;
      delete L.resetting[slot];
      L.gen++;
      if (res.status === 200) {
        L.resetNote[slot] = { ok: true, at: Date.now(), text: 'Guardrail reset ' + D.fmt.time(Date.now()) + ': learning again; the guardrail compares only decisions from now on.' };
        // The answer is the slot's new status: show it at once.
        if (L.bandits && res.body && res.body.slot === slot) {
          L.bandits = Object.assign({}, L.bandits, {
            bandits: arr(L.bandits.bandits).map(function (b) { return b && b.slot === slot ? res.body : b; })
          });
        }
      } else {
        L.resetNote[slot] = { ok: false, at: Date.now(), text: 'Reset refused (' + res.status + '): ' + D.errMessage(res, 'unexpected answer') };
      }
    }, function () {
      if (seq !== L.seq) return;
      delete L.resetting[slot];
      L.resetNote[slot] = { ok: false, at: Date.now(), text: 'Reset failed: cannot reach the server.' };
    }).then(function () {
      if (seq !== L.seq) return;
      if (L.bandits) renderBandits(L.bandits);
      // Then a full refresh (now, or after the one in flight).
      if (!L.busy) { clearTimeout(L.timer); tick(); }
    });
  }

  // ================================================================= models
  function renderModelsUnavailable() {
    if (L.modelsSig === '404') return;
    L.modelsSig = '404';
    L.models = null;
    $('models-sub').textContent = '';
    var box = $('models');
    clear(box);
    var n = el('div', 'empty-note models-empty', 'No models yet: this server does not serve models (GET /v1/models is not available).');
    n.dataset.state = 'unavailable';
    box.appendChild(n);
    $('model-detail').hidden = true;
    $('model-card').hidden = true;
    if (L.calib) L.calib.destroy();
  }

  function renderModelsError(text) {
    if (L.models) return; // keep the last table
    L.modelsSig = '';
    var box = $('models');
    clear(box);
    box.appendChild(el('div', 'insp-error', text));
  }

  function renderModels(list) {
    list = list.filter(function (m) { return m && typeof m === 'object'; });
    L.models = list;
    if (L.sel && !list.some(function (m) { return String(m.name) === L.sel; })) L.sel = null;
    if (!L.sel && list.length) {
      var withCal = list.find(function (m) { return arr(obj(m.card).calibration).length; });
      L.sel = String((withCal || list[0]).name);
    }
    var sig = JSON.stringify([list, L.sel]);
    if (sig === L.modelsSig) return;
    L.modelsSig = sig;
    var serving = list.filter(function (m) { return m.status === 'serving'; }).length;
    $('models-sub').textContent = list.length ? '· ' + plural(list.length, 'model') + ' · ' + serving + ' serving' : '';
    var box = $('models');
    clear(box);
    if (!list.length) {
      var n = el('div', 'empty-note models-empty', 'No models yet. A bandit slot with train_model = true trains a click model on its log once it has enough data.');
      n.dataset.state = 'empty';
      box.appendChild(n);
      $('model-detail').hidden = true;
      $('model-card').hidden = true;
      if (L.calib) L.calib.destroy();
      return;
    }
    var t = el('table', 'table models-table');
    t.id = 'models-table';
    var thead = el('thead');
    var hr = el('tr');
    [['Model'], ['Slot'], ['Version', 1], ['Status'], ['AUC', 1, 'area under the ROC curve (test rows)'], ['PR-AUC', 1, 'area under the precision-recall curve'],
      ['Log-loss', 1, 'lower is better'], ['ECE', 1, 'expected calibration error: lower is better'], ['Rows', 1, 'training rows (positives)'],
      ['Created'], ['Last training']].forEach(function (h) {
      var th = el('th', h[1] ? 'num' : null, h[0]);
      if (h[2]) th.title = h[2];
      th.scope = 'col';
      hr.appendChild(th);
    });
    thead.appendChild(hr);
    var tb = el('tbody');
    tb.id = 'models-body';
    list.forEach(function (m) {
      var name = String(m.name || '?');
      var card = obj(m.card), metrics = obj(card.metrics), data = obj(card.data);
      var tr = el('tr', 'model-row');
      tr.dataset.model = name;
      tr.dataset.status = String(m.status || '');
      if (name === L.sel) tr.classList.add('sel');
      var nc = el('td');
      var b = el('button', 'model-link', name);
      b.type = 'button';
      b.setAttribute('aria-pressed', name === L.sel ? 'true' : 'false');
      b.title = 'Show the model card and reliability chart of ' + name;
      b.addEventListener('click', function () { selectModel(name); });
      append(nc, b, m.kind ? el('span', 'tag', String(m.kind)) : null);
      var st = el('td');
      var ok = m.status === 'serving';
      st.appendChild(badge(String(m.status || 'unknown'), ok ? 'active' : m.status === 'error' ? 'compile_error' : 'other'));
      if (m.error) {
        var e = obj(m.error);
        st.appendChild(el('div', 'rule-err', (e.code ? e.code + ': ' : '') + (e.message || '')));
      }
      var lt = obj(m.last_training);
      var ltc = el('td', 'model-training');
      if (m.last_training) {
        var oc = String(lt.outcome || '?');
        var kind = oc === 'promoted' ? 'active' : oc === 'failed' ? 'compile_error' : oc === 'kept' ? 'other' : 'disabled';
        append(ltc, badge(oc, kind), el('span', 'muted small', ' ' + (lt.at_ms ? D.fmt.ago(num(lt.at_ms)) : '')));
        if (lt.reason) ltc.appendChild(el('div', 'model-reason', String(lt.reason)));
        if (lt.at_ms) ltc.title = new Date(num(lt.at_ms)).toISOString();
      } else {
        ltc.appendChild(el('span', 'muted', DASH));
      }
      var created = el('td', 'mono model-created', card.created ? fmtDate(card.created) : DASH);
      if (card.created) created.title = String(card.created);
      var rows = el('td', 'num');
      append(rows, el('div', 'v', isNum(data.rows) ? D.fmt.int(data.rows) : DASH));
      if (isNum(data.positives)) rows.appendChild(el('div', 'ci', D.fmt.int(data.positives) + ' pos.'));
      append(tr, nc, el('td', 'mono', m.slot ? String(m.slot) : DASH), el('td', 'num', isNum(m.version) ? 'v' + m.version : DASH), st,
        el('td', 'num', fmtMetric(metrics.auc)), el('td', 'num', fmtMetric(metrics.pr_auc)), el('td', 'num', fmtMetric(metrics.logloss)),
        el('td', 'num', fmtMetric(metrics.ece)), rows, created, ltc);
      tb.appendChild(tr);
    });
    box.appendChild(append(t, thead, tb));
    renderSelected();
  }

  function selectModel(name) {
    if (name === L.sel) return;
    L.sel = name;
    document.querySelectorAll('#models-body tr.model-row').forEach(function (tr) {
      var on = tr.dataset.model === name;
      tr.classList.toggle('sel', on);
      var b = tr.querySelector('.model-link');
      if (b) b.setAttribute('aria-pressed', on ? 'true' : 'false');
    });
    L.modelsSig = JSON.stringify([L.models, L.sel]);
    renderSelected();
  }

  function renderSelected() {
    var m = (L.models || []).find(function (x) { return String(x.name) === L.sel; });
    $('model-detail').hidden = !m;
    $('model-card').hidden = !m;
    if (!m) { if (L.calib) L.calib.destroy(); return; }
    renderCard(m);
    renderCalibration(m);
  }

  function renderCard(m) {
    var card = obj(m.card), metrics = obj(card.metrics), data = obj(card.data);
    $('card-sub').textContent = '· ' + String(m.name) + (isNum(m.version) ? ' v' + m.version : '');
    var box = $('card-body');
    clear(box);
    var dl = el('dl', 'kv kv-card');
    [['kind', m.kind], ['slot', m.slot], ['status', m.status], ['created', card.created ? fmtDate(card.created) : ''],
      ['rows', isNum(data.rows) ? D.fmt.int(data.rows) : ''], ['positives', isNum(data.positives) ? D.fmt.int(data.positives) : ''],
      ['test rows', isNum(data.test_rows) ? D.fmt.int(data.test_rows) : ''],
      ['base rate', isNum(data.rows) && isNum(data.positives) && data.rows > 0 ? fmtPct(data.positives / data.rows) : ''],
      ['AUC', fmtMetric(metrics.auc)], ['PR-AUC', fmtMetric(metrics.pr_auc)], ['log-loss', fmtMetric(metrics.logloss)],
      ['ECE', fmtMetric(metrics.ece)], ['MAE', fmtMetric(metrics.mae)]].forEach(function (p) {
      var d = el('div');
      var v = p[1] === undefined || p[1] === null || p[1] === '' ? DASH : String(p[1]);
      var dd = el('dd', null, v);
      dd.title = v;
      append(d, el('dt', null, p[0]), dd);
      dl.appendChild(d);
    });
    box.appendChild(dl);
    if (m.error) {
      var e = obj(m.error);
      var what = m.status === 'serving' ? 'Refused (v' + m.version + ' keeps serving): ' : 'Not serving: ';
      box.appendChild(el('div', 'banner banner-err', what + (e.code ? e.code + ': ' : '') + (e.message || 'error')));
    }
    var lt = m.last_training ? obj(m.last_training) : null;
    var line = el('div', 'model-last muted small');
    if (lt) {
      append(line, 'Last training ' + (lt.at_ms ? fmtDate(num(lt.at_ms)) + ' (' + D.fmt.ago(num(lt.at_ms)) + ')' : '') + ': ',
        el('b', null, String(lt.outcome || '?')), lt.reason ? ' · ' + String(lt.reason) : '');
    } else {
      line.textContent = 'No training run recorded since the server started.';
    }
    box.appendChild(line);
  }

  // Reliability diagram: observed positive rate vs mean predicted probability per bin, with the
  // diagonal of perfect calibration. Points are sized by their bin's share of rows.
  function renderCalibration(m) {
    var bins = arr(obj(m.card).calibration).filter(function (b) { return b && isNum(b.mean_predicted) && isNum(b.observed_rate) && num(b.count) > 0; })
      .sort(function (a, b) { return a.mean_predicted - b.mean_predicted; });
    var ece = obj(obj(m.card).metrics).ece;
    $('calib-sub').textContent = '· ' + String(m.name) + (bins.length ? ' · ' + plural(bins.length, 'bin') : '');
    var legendBox = $('calib-legend');
    clear(legendBox);
    if (!bins.length) {
      L.calib.note(arr(obj(m.card).calibration).length ? 'The calibration bins are empty.' : 'This model\'s card has no calibration bins.');
      return;
    }
    var total = bins.reduce(function (t, b) { return t + num(b.count); }, 0);
    var items = [
      { label: 'observed', color: C.accent, dot: true, value: D.fmt.int(total) + ' rows' },
      { label: 'perfect', color: C.muted, dash: true },
      { label: 'ECE', color: WARN, value: fmtMetric(ece) }
    ];
    items.forEach(function (it) {
      var span = el('span');
      var sw = el('span', 'sw' + (it.dot ? ' sw-dot' : '') + (it.dash ? ' sw-dash sw-dash-muted' : ''));
      if (!it.dash) sw.style.background = it.color;
      append(span, sw, it.label);
      if (it.value !== undefined) append(span, ' ', el('b', null, it.value));
      legendBox.appendChild(span);
    });
    // x: 0, the bins' mean predictions, 1 (the diagonal spans the square).
    var xs = [0].concat(bins.map(function (b) { return b.mean_predicted; }), [1]);
    var obs = [null].concat(bins.map(function (b) { return b.observed_rate; }), [null]);
    var diag = xs.slice();
    var sizes = bins.map(function (b) { return 5 + 9 * Math.sqrt(num(b.count) / (total || 1)); });
    var sig = 'calib|' + L.sel + '|' + bins.length;
    L.calib.set(sig, function () {
      return {
        padding: [10, 14, 0, 0],
        legend: { show: false },
        cursor: { drag: { x: false, y: false }, points: { size: 7 } },
        scales: { x: { time: false, range: [0, 1] }, y: { range: [0, 1] } },
        axes: [
          axis({ label: 'mean predicted probability', labelSize: 18, labelFont: '11px system-ui, sans-serif', values: function (u, v) { return v.map(function (x) { return fmtPct(x, 0); }); } }),
          axis({ label: 'observed rate', labelSize: 18, labelFont: '11px system-ui, sans-serif', size: 48, values: function (u, v) { return v.map(function (x) { return fmtPct(x, 0); }); } })
        ],
        series: [
          {},
          { label: 'perfect', stroke: C.muted, width: 1, dash: [5, 4], points: { show: false } },
          {
            label: 'observed', stroke: C.accent, width: 1.8, spanGaps: true,
            points: {
              show: true, fill: C.accent, stroke: C.accent,
              size: 8
            }
          }
        ],
        hooks: {
          // Bins sized by their rows: drawn over the line.
          draw: [function (u) {
            var ctx = u.ctx;
            var dpr = window.devicePixelRatio || 1;
            ctx.save();
            bins.forEach(function (b, i) {
              var cx = u.valToPos(b.mean_predicted, 'x', true), cy = u.valToPos(b.observed_rate, 'y', true);
              ctx.beginPath();
              ctx.arc(cx, cy, sizes[i] * dpr / 2 + 2 * dpr, 0, 2 * Math.PI);
              ctx.fillStyle = 'rgba(76,154,255,0.22)';
              ctx.fill();
            });
            ctx.restore();
          }]
        }
      };
    }, [xs, diag, obs]);
  }

  // ================================================================= wiring
  function init() {
    $('learn-live').addEventListener('change', function () {
      if ($('learn-live').checked && L.active) tick(); else clearTimeout(L.timer);
    });
    D.register('learning', { show: show, hide: hide, reset: reset });
  }

  init();
})();
