// Shared by the listing page and the streams dashboard: the token the tab
// keeps (sessionStorage, sent as Authorization: Bearer) and sizes written as
// the server writes them. Loaded before either page's own script.
'use strict';

window.streamsvcUI = (() => {
  const TOKEN_KEY = 'streamsvc.token';

  function getToken() {
    try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch { return ''; }
  }
  function setToken(token) {
    try {
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch { /* storage disabled: the token just does not stick */ }
  }

  // As the server's listing: bytes below 1 KiB as they are, then one decimal.
  function humanSize(bytes) {
    if (!(bytes >= 1024)) return `${Number(bytes) || 0} B`;
    const units = ['KiB', 'MiB', 'GiB', 'TiB'];
    let value = bytes / 1024, unit = 0;
    while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
    return `${value.toFixed(1)} ${units[unit]}`;
  }

  // The token form of either page: Save keeps the typed token, Forget drops
  // it; then changed() (which redraws, reconnects...).
  function wireTokenForm(form, input, forget, changed) {
    if (form && input) {
      form.addEventListener('submit', (event) => {
        event.preventDefault();
        const token = input.value.trim();
        if (!token) { input.focus(); return; }
        setToken(token);
        input.value = '';
        changed();
      });
    }
    if (forget) {
      forget.addEventListener('click', () => {
        setToken('');
        if (input) input.value = '';
        changed();
      });
    }
  }

  return {getToken, setToken, humanSize, wireTokenForm};
})();
