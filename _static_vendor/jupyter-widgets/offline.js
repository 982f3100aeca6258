/* Two adjustments so that ipywidgets' saved state renders in this book without a network
   (see _static_vendor/README.md). Loaded after require.js and before embed-amd.js. */
(function () {
  // 1. The widget manager finds its own files (icon fonts) through requirejs's baseUrl, which
  //    defaults to the page's folder; point it at the book's _static folder instead.
  var src = document.currentScript && document.currentScript.src;
  if (src && window.require && window.require.config) {
    window.require.config({ baseUrl: src.replace(/jupyter-widgets\/offline\.js(\?.*)?$/, "") });
  }
  // 2. The manager typesets widget labels with MathJax 2's API (MathJax.Hub.Queue); the book
  //    loads MathJax 3. Map the one call it makes onto MathJax 3, once MathJax has loaded
  //    (this listener runs before the manager's own "load" listener, registered after it).
  window.addEventListener("load", function () {
    var mj = window.MathJax;
    if (mj && !mj.Hub) {
      mj.Hub = {
        Queue: function (job) {
          var el = Array.isArray(job) ? job[2] : null;
          if (el && mj.typesetPromise) {
            mj.typesetPromise([el]).catch(function () {});
          }
        },
      };
    }
  });
})();
