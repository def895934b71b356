/* Stitcher tracking script (served minified by rjsmin at GET /t.js; comments are stripped).

Async loader snippet; calls made before the script has loaded are queued in stitcher.q and replayed in order:

<script>window.stitcher=window.stitcher||function(){(stitcher.q=stitcher.q||[]).push(arguments)};</script><script async src="http://HOST/t.js"></script>

API:
  stitcher('event', name, props)   record a custom event (props: a plain object)
  stitcher('page')                 record a page_view now (also automatic on load and SPA navigation)
  stitcher('consent', true|false)  grant / withdraw consent (see data-consent-required)
  stitcher('reset')                forget the visitor: the next batch starts a new one (e.g. on logout)
  stitcher('flush')                send queued events now, ignoring any retry backoff

Script tag attributes:
  data-endpoint            where to POST batches; default: the script's origin + "/t"
  data-consent-required    store and send nothing until stitcher('consent', true); events wait in memory

Delivery: events go to a queue in localStorage (memory when that is unavailable) and stay there until a 2xx
answers for them, so a reload or a later visit resends what an outage kept back; every event has a UUID and
the collector stores an id once, so a resend is harmless. Batches leave ~1 s after the first event, at once
when 10 wait, and by sendBeacon when the page is hidden or unloaded. 5xx, 429 and network errors are retried
with exponential backoff and jitter, never sooner than Retry-After; any other 4xx drops the batch for good.
*/
(function (w, d, L) {
  'use strict';
  // loaded twice: keep the first instance
  if (w.stitcher && w.stitcher.ok) return;

  // document.currentScript is only set while the script first runs, so read the config now
  const cs = d.currentScript || d.querySelector('script[src*="t.js"]') || 0;
  const EP = cs && cs.getAttribute('data-endpoint') || (cs.src ? new URL(cs.src).origin : '') + '/t';
  const CR = cs && cs.hasAttribute('data-consent-required');
  const now = Date.now;
  const size = x => new Blob([JSON.stringify(x)]).size; // UTF-8 bytes

  // storage: localStorage under "stitcher.*"; a key that cannot be written there lives in M instead
  // (private mode, quota exceeded, storage disabled)
  const M = {};
  try { L = w.localStorage; L.getItem('stitcher.') } catch (e) { L = 0 }
  const get = k => k in M ? M[k] : L ? L.getItem('stitcher.' + k) : null;
  const set = (k, v) => {
    delete M[k];
    try { v == null ? L.removeItem('stitcher.' + k) : L.setItem('stitcher.' + k, v) }
    catch (e) { if (v != null) M[k] = '' + v }
  };

  // consent: 1 granted, 0 withdrawn (stored so an opt-out sticks), null pending (memory only)
  let ok = get('c');
  ok = ok == 1 ? 1 : ok == 0 ? 0 : CR ? null : 1;
  let pend = []; // events waiting for consent
  let rs = get('rs'); // a reset is pending: the next batch asks the collector for a new visitor
  let gen = 0; // bumped by reset/withdrawal, so a late answer cannot restore the old visitor id

  // the persistent queue, read and written whole each time so tabs of one site share it
  const rq = () => {
    try { const q = JSON.parse(get('q')); return Array.isArray(q) ? q : [] } catch (e) { return [] }
  };
  // bounds: 7 days, 500 events, ~256 KB; the oldest go first
  const wq = q => {
    const old = now() - 6048e5;
    q = q.filter(e => e.ts > old).slice(-500);
    let s = JSON.stringify(q);
    while (s.length > 256e3) s = JSON.stringify(q = q.slice(q.length / 10 + 1 | 0));
    set('q', q.length ? s : null);
  };

  const uuid = () => {
    const c = w.crypto;
    if (c.randomUUID) return c.randomUUID(); // secure contexts only
    const b = c.getRandomValues(new Uint8Array(16));
    b[6] = b[6] & 15 | 64; // version 4
    b[8] = b[8] & 63 | 128; // RFC 4122 variant
    return [].map.call(b, x => (x + 256).toString(16).slice(1)).join('')
      .replace(/(.{8})(.{4})(.{4})(.{4})/, '$1-$2-$3-$4-');
  };

  // the collector rejects strings over 2 KiB: cut URLs (ASCII) and titles (≤ 3 bytes per UTF-16 unit)
  const ev = (t, p, r) => {
    const e = {
      id: uuid(), type: ('' + t).slice(0, 128), ts: now(), url: location.href.slice(0, 2e3),
      // a snapshot: later changes by the caller do not leak in, and a cycle throws here, not in a flush
      props: p && typeof p == 'object' && !Array.isArray(p) ? JSON.parse(JSON.stringify(p)) : {}
    };
    if (r != null) { e.ref = r.slice(0, 2e3); e.title = d.title.slice(0, 680) }
    add(e);
  };

  const add = e => {
    // over the collector's 64 KiB body limit on its own: it could never be delivered
    if (size(e) > 6e4) return;
    if (ok) { const q = rq(); q.push(e); wq(q); kick() }
    else if (ok == null && pend.length < 500) pend.push(e);
  };

  // --- sending ---
  let tm = 0, due = 0; // the flush timer and when it fires
  let wait = 0; // backoff: no automatic send before this time
  let fails = 0; // consecutive failures, for the backoff
  const inf = new Set(); // ids in flight in this tab (one request at a time)
  const bc = new Set(); // ids sent by beacon from this page; resent by fetch only, to learn they landed

  const later = ms => {
    const t = Math.max(now() + ms, wait);
    if (tm && due <= t) return;
    clearTimeout(tm);
    due = t;
    tm = setTimeout(() => { tm = 0; now() < wait ? later(0) : flush() }, t - now());
  };
  const kick = () => { const n = rq().length; n && later(n < 10 ? 1e3 : 0) };

  // oldest events first, ≤ 100 and ≤ 60000 bytes of events per request (the collector takes 64 KiB)
  const batch = skip => {
    const b = [];
    let n = 0;
    for (const e of rq()) {
      if (skip.has(e.id)) continue;
      const l = size(e) + 1;
      if (b.length > 99 || b.length && n + l > 6e4) break;
      b.push(e);
      n += l;
    }
    return b;
  };
  const body = (b, r) => JSON.stringify({ vid: get('vid') || undefined, reset: r ? true : undefined, sent_at: now(), events: b });
  const drop = b => { const ids = new Set(b.map(e => e.id)); wq(rq().filter(e => !ids.has(e.id))) };

  const flush = async () => {
    if (ok != 1 || inf.size) return;
    const b = batch(inf);
    if (!b.length) return;
    const g = gen, r = rs;
    b.forEach(e => inf.add(e.id));
    let delay = 0;
    try {
      const x = await fetch(EP, {
        method: 'POST', body: body(b, r), headers: { 'Content-Type': 'text/plain' },
        keepalive: true, credentials: 'include'
      });
      const s = x.status;
      if (s < 300 || s < 500 && s != 429) {
        // delivered, or refused for good (a 4xx would fail the same way forever)
        drop(b);
        fails = 0;
        const v = x.headers.get('X-Stitcher-Visitor');
        if (s < 300 && g == gen) {
          if (v) set('vid', v);
          if (r) set('rs', rs = null);
        }
      } else delay = x.headers.get('Retry-After') * 1e3 || 1;
    } catch (e) { delay = 1 }
    inf.clear();
    if (delay) {
      // exponential backoff with jitter (0.5-1 × 1 s, 2 s, 4 s ... 60 s), never sooner than Retry-After
      delay = Math.max(delay, Math.min(6e4, 1e3 * 2 ** fails) * (1 + Math.random()) / 2);
      fails++;
      wait = now() + delay;
      later(0);
    } else kick();
  };

  // the page is going away (or may be discarded while hidden): hand what is queued to the browser
  const beacon = () => {
    // while the first request of a new visitor is in flight, a second one would be given a second id
    if (ok != 1 || now() < wait || inf.size && (rs || !get('vid'))) return;
    let b;
    while ((b = batch(new Set([...inf, ...bc]))).length) {
      const r = rs;
      if (!navigator.sendBeacon(EP, new Blob([body(b, r)], { type: 'text/plain' }))) break;
      b.forEach(e => bc.add(e.id));
      // one reset request only; its answer sets the new cookie that the next page sends
      if (r) { set('rs', rs = null); break }
    }
  };

  // --- page views ---
  let lu; // URL of the last page_view, without the fragment: anchor jumps are not page views
  const pv = () => {
    const u = location.href.replace(/#.*/, '');
    if (u == lu) return;
    const r = lu ? lu : d.referrer; // after an SPA navigation the referrer is the previous route
    lu = u;
    ev('page_view', 0, r);
  };
  const nav = () => setTimeout(pv); // let the router set the new title first
  ['pushState', 'replaceState'].forEach(m => {
    const o = history[m];
    history[m] = function () { const x = o.apply(this, arguments); nav(); return x };
  });
  w.addEventListener('popstate', nav);
  w.addEventListener('pagehide', beacon);
  d.addEventListener('visibilitychange', () => d.visibilityState == 'hidden' && beacon());

  // --- the public function ---
  const C = {
    event: (n, p) => n && ev(n, p),
    page: pv,
    flush: () => { wait = fails = 0; flush() },
    reset: () => {
      gen++;
      pend = [];
      set('q');
      set('vid');
      rs = 1;
      if (ok) set('rs', 1);
    },
    consent: y => {
      if (y) {
        if (ok === 0) rs = 1; // granted again after a withdrawal: start a new visitor
        ok = 1;
        set('c', 1);
        if (rs) set('rs', 1);
        pend.forEach(add);
      } else {
        gen++;
        ok = 0;
        ['q', 'vid', 'rs'].forEach(k => set(k));
        set('c', 0);
      }
      pend = [];
    }
  };
  const q = w.stitcher && w.stitcher.q || [];
  const S = w.stitcher = function (c) {
    // the host page never sees an exception from the tracker
    try { C[c] && C[c].apply(0, [].slice.call(arguments, 1)) } catch (e) {}
  };
  S.ok = 1;

  // consent and reset calls made before load apply before the automatic page_view; the rest after it
  q.forEach(a => { /^(consent|reset)$/.test(a[0]) || pv(); S.apply(0, a) });
  pv();
  kick(); // events an earlier page left in the queue
})(window, document);
