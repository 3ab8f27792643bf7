/*! trimtab consent banner. Loaded by trimtab.js on demand (init({banner: true | {text, accept,
 * analytics, reject}})) only while consent is pending. Built from text nodes only. */
globalThis.trimtabBanner = (o, choose) => {
  const doc = document;
  if (doc.getElementById('trimtab-banner')) return;
  const box = doc.createElement('div'), p = doc.createElement('p'), row = doc.createElement('div');
  box.id = 'trimtab-banner';
  box.setAttribute('role', 'dialog');
  box.setAttribute('aria-label', 'Privacy choices');
  box.style.cssText = 'position:fixed;left:16px;right:16px;bottom:16px;z-index:2147483000;max-width:620px;margin:0 auto;'
    + 'background:#16181d;color:#f4f4f5;padding:18px 20px;border-radius:14px;font:15px/1.5 system-ui,sans-serif;'
    + 'box-shadow:0 12px 40px rgba(0,0,0,.35)';
  p.style.margin = '0 0 12px';
  p.textContent = o.text || 'May we measure how you read this page (scrolling, pointer, time on sections) to adapt it '
    + 'to you while you read? Nothing is collected unless you agree.';
  row.style.cssText = 'display:flex;gap:8px;flex-wrap:wrap;justify-content:flex-end';
  for (const [key, text, analytics, personalization] of [
    ['none', o.reject || 'No thanks', false, false],
    ['analytics', o.analytics || 'Measure only', true, false],
    ['all', o.accept || 'Accept', true, true],
  ]) {
    const b = doc.createElement('button');
    b.type = 'button';
    b.textContent = text;
    b.setAttribute('data-trimtab-consent', key);
    b.style.cssText = 'font:inherit;padding:8px 16px;border-radius:8px;cursor:pointer;border:1px solid #52525b;'
      + (key === 'all' ? 'background:#f4f4f5;color:#16181d;font-weight:600' : 'background:transparent;color:#f4f4f5');
    b.onclick = () => choose({ analytics, personalization });
    row.append(b);
  }
  box.append(p, row);
  doc.body.append(box);
};
