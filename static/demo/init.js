// Starts the SDK on a demo page and wires its buttons, so the pages carry no inline script
// (they are served with a Content-Security-Policy that allows only scripts from the server).
// <script src="/demo/init.js" data-page="/article/…"> names the page; a button with
// data-conversion="name" data-value="6" reports that conversion when clicked.
(function () {
  var me = document.currentScript;
  var opts = { banner: true };
  if (me && me.dataset.page) opts.page = me.dataset.page;
  trimtab.init(opts);
  document.addEventListener('click', function (e) {
    var el = e.target.closest && e.target.closest('[data-conversion]');
    if (el) trimtab.conversion(el.dataset.conversion, Number(el.dataset.value || 0), el);
  });
})();
