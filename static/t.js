/* Stitcher tracking script (served minified by rjsmin at GET /t.js; comments are stripped).

Async loader snippet; calls made before the script has loaded are queued in stitcher.q and replayed in order:

<script>window.stitcher=window.stitcher||function(){(stitcher.q=stitcher.q||[]).push(arguments)};</script><script async src="http://HOST/t.js"></script>

API:
  stitcher('event', name, props)   record a custom event (props: a plain object)
  stitcher('page')                 record a page_view now (also automatic on load and SPA navigation)
  stitcher('consent', true|false)  grant / withdraw consent (see data-consent-required); every open tab
                                   follows at once, and a withdrawal asks the collector (POST <endpoint>/forget)
                                   to expire its visitor cookie
  stitcher('reset')                forget the visitor: the next batch starts a new one (e.g. on logout)
  stitcher('flush')                send queued events now, ignoring any retry backoff
  stitcher('identify', {externalCustomerId, signature})
                                   link this visitor to a logged-in customer: the signature is HMAC-SHA256
                                   (hex) of the ID, made by the site's backend (POST <endpoint>/identify)

Script tag attributes:
  data-endpoint            where to POST batches; default: the script's origin + "/t"
  data-consent-required    store and send nothing until stitcher('consent', true); events wait in memory
                           (the newest 500)

Delivery: each event is one localStorage key ("stitcher.e.<uuid>"; memory when storage is unavailable), so
the tabs of a site share the queue and no tab's write can erase another's; an event stays until a 2xx
answers for it, so a reload or a later visit resends what an outage kept back. One tab sends at a time (a
Web Lock, else a lease in localStorage), whatever every tab queued. The visitor id is made (UUID) by the
first tab that sends and shared by all; the collector keeps its cookie's id first and echoes it back.
Every event has a UUID and the collector stores an id once, so a resend is harmless. Batches leave ~1 s
after the oldest queued event (a backlog already waiting goes at once), at once when 10 wait, and by sendBeacon (without it, a keepalive fetch) when the page
is hidden or unloaded. 5xx,
429, network errors and timeouts (5 s) are retried with exponential backoff and jitter, never sooner than
Retry-After (seconds or HTTP date; kept in localStorage, so it holds across navigations and tabs); any
other 4xx drops the batch for good.
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
  // the JSON of load time: a page that replaces JSON later (a late polyfill) does not reach the script
  const { stringify: JS, parse: JP } = JSON;
  // JSON that a toJSON on Array.prototype (Prototype.js 1.6) or Object.prototype cannot turn into strings:
  // set aside while it serialises and put back (a primitive's toJSON is never called)
  const P = [Object, Array].map(c => c.prototype);
  const J = (...a) => {
    const t = P.filter(p => p.hasOwnProperty('toJSON')).map(p => [p, p.toJSON, Reflect.deleteProperty(p, 'toJSON')]);
    try { return JS(...a) } finally { t.forEach(([p, f, d]) => d && (p.toJSON = f)) }
  };
  // f, guarded: what the page calls or a timer runs never throws into the page
  const G = f => (...a) => { try { return f(...a) } catch (e) {} };
  // UTF-8 bytes of the JSON, counted without Blob or TextEncoder, which a page may have replaced (the text is
  // well-formed: a surrogate pair is 4 bytes, 2 per unit)
  const size = x => (x = J(x)).length + x.replace(/[\0-\x7f]/g, '').length + x.replace(/[\0-\u07ff\ud800-\udfff]/g, '').length;

  // storage: localStorage under "stitcher.*"; a key that cannot be written there lives in M instead
  // (private mode, quota exceeded, storage disabled)
  const M = Object.create(null); // a polluted Object.prototype cannot show through
  try { L = w.localStorage; L.getItem('stitcher.') } catch (e) { L = 0 }
  // a storage that starts throwing after load (quota, privacy mode): memory from then on
  const get = k => { try { return k in M ? M[k] : L ? L.getItem('stitcher.' + k) : null } catch (e) { L = 0; return null } };
  const set = (k, v) => {
    delete M[k];
    get(k); // a throwing getItem turns to memory before the write, or the value would be out of reach
    try { v == null ? L.removeItem('stitcher.' + k) : L.setItem('stitcher.' + k, v) }
    catch (e) { if (v != null) M[k] = '' + v }
  };

  // consent: 1 granted, 0 withdrawn (stored so an opt-out sticks), null pending (memory only)
  let ok = get('c');
  ok = ok == 1 ? 1 : ok == 0 ? 0 : CR ? null : 1;
  let pend = []; // events waiting for consent

  // the persistent queue: one key per event ("stitcher.e.<id>"), so a tab only ever adds or removes whole
  // keys and never rewrites what another tab wrote; oldest first, events older than 7 days are dropped
  const rq = () => {
    const q = [];
    new Set([...Object.keys(M), ...L ? Object.keys(L).map(k => k.slice(9)) : []]).forEach(k => {
      if (k.indexOf('e.')) return;
      try { const e = JP(get(k)); e.ts > now() - 6048e5 ? q.push(e) : set(k) } catch (x) {}
    });
    // events recorded before a reset go first (sent later, the collector would take them for the new
    // visitor), then fresh ones; events that failed without an answer go behind the others
    return q.sort((a, b) => !a.v - !b.v || (a.n | 0) - (b.n | 0) || a.ts - b.ts);
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
  const T = uuid(); // this tab

  // the collector rejects strings over 2 KiB: cut URLs (ASCII) and titles (≤ 3 bytes per UTF-16 unit)
  // well-formed text: a cut never splits a surrogate pair and a lone surrogate becomes U+FFFD (the collector
  // refuses a body that is not valid UTF-8)
  const str = (s, n) => ((s += '').length > n ? s.slice(0, n).replace(/[\ud800-\udbff]$/, '') : s)
    .replace(/[\ud800-\udbff][\udc00-\udfff]|[\ud800-\udfff]/g, m => m[1] ? m : '\ufffd'); // no lookbehind: Safari < 16.4 cannot parse one
  let lt = 0; // the last ts of this tab: strictly increasing, so the queue keeps this tab's order
  const ev = (t, p, r) => {
    const e = {
      id: uuid(), type: str(t, 128), ts: lt = Math.max(now(), lt + 1), url: str(location.href, 2e3),
      // a snapshot: later changes by the caller do not leak in, and a cycle throws here, not in a flush
      props: p && typeof p == 'object' && !Array.isArray(p) ? JP(J(p, (k, v) => typeof v == 'string' ? str(v) : v)) : {}
    };
    if (r != null) { e.ref = str(r, 2e3); e.title = str(d.title, 680) }
    add(e);
  };

  const add = e => {
    // over the collector's 64 KiB body limit on its own: it could never be delivered
    if (size(e) > 6e4) return;
    if (ok) {
      set('e.' + e.id, J(e));
      // bounds: 500 events, ~256 KB (UTF-8); the oldest go first
      let n = 0;
      rq().reverse().forEach((e, i) => (n += size(e)) > 256e3 || i > 499 ? set('e.' + e.id) : 0);
      kick();
    } else if (ok == null && pend.push(e) > 500) pend.shift(); // the newest 500, as in the queue
  };

  // --- sending ---
  let tm = 0, due = 0; // the flush timer and when it fires
  let fails = 0; // consecutive failures, for the backoff
  const wait = () => +get('w') || 0; // no automatic send before this time (shared by the tabs, kept)
  const inf = new Set(); // ids in flight from this tab
  const bc = new Set(); // ids sent by beacon from this page; resent by fetch only, to learn they landed

  const later = ms => {
    const t = Math.max(now() + ms, wait());
    if (tm && due <= t) return;
    clearTimeout(tm);
    due = t;
    tm = setTimeout(() => { tm = 0; now() < wait() ? later(0) : flush() }, t - now());
  };
  // ~1 s after the oldest event (what is already waiting goes now), at once when 10 wait
  const kick = () => { const q = rq(); q[0] && later(q[9] ? 0 : q[0].ts + 1e3 - now()) };

  // one tab sends at a time: a Web Lock where there is one, else a lease in localStorage (taken over once
  // it has expired); another tab waiting to send tries again in a second
  const lock = f => {
    const N = L && navigator.locks; // a queue in memory is this tab's alone
    if (N) return N.request('stitcher', { ifAvailable: true }, l => l ? f() : later(1e3));
    let l = [];
    try { l = JP(get('l')) || l } catch (e) {}
    if (l[0] != T && l[1] > now()) return later(1e3);
    set('l', J([T, now() + 1e4]));
    return f().finally(() => set('l'));
  };

  // oldest events first, ≤ 100 and ≤ 60000 bytes of events per request (the collector takes 64 KiB)
  const batch = skip => {
    const b = [];
    let n = 0;
    for (const e of rq()) {
      if (skip.has(e.id)) continue;
      const l = size(e) + 1;
      // an event that failed without an answer is retried alone (never with fresh events), so one bad event
      // costs no other; one request carries one visitor's events (those recorded before a reset go first,
      // under the old id)
      if (b.length > 99 || b.length && (n + l > 6e4 || b[0].n || e.n || e.v != b[0].v)) break;
      b.push(e);
      n += l;
    }
    return b;
  };
  // the visitor id: the first tab that needs one makes it, every tab uses it
  const vid = () => get('vid') || (set('vid', uuid()), get('vid'));
  // a reset: "rs" is 1 until the collector has taken the new id, then the time it did; requests say "reset"
  // (with the new id) for 30 s more, so a late answer to an older request cannot restore the old cookie
  const rsv = b => {
    const r = get('rs');
    return b[0].v ? [b[0].v] : [vid(), r == 1 || r > now() - 3e4 ? r : set('rs')];
  };
  // v and n are the script's own bookkeeping, not sent
  const body = (b, v, r, x = { sent_at: now(), events: b.map(({ v, n, ...e }) => e) }) => J({ vid: v, reset: r ? true : undefined, ...x });

  // a string body goes as text/plain: no CORS preflight
  const post = (x, p = '', s) => fetch(EP + p, { method: 'POST', body: x, keepalive: true, credentials: 'include', signal: s });
  const flush = G(() => ok == 1 && !inf.size && lock(() => send().catch(() => inf.clear())));
  const send = async () => {
    const b = batch(inf);
    if (ok != 1 || !b.length) return;
    const [v, r] = rsv(b);
    b.forEach(e => inf.add(e.id));
    let delay = 0, p = 0;
    try {
      // a timeout of our own: AbortSignal.timeout is missing before Safari 16 / Chrome 103
      const c = new AbortController();
      setTimeout(() => c.abort(), 5e3);
      const x = await (p = post(body(b, v, r), '', c.signal));
      const s = x.status;
      if (s < 300 || s < 500 && s != 429) {
        // delivered, or refused for good (a 4xx would fail the same way forever)
        b.forEach(e => set('e.' + e.id));
        fails = 0;
        set('w');
        const h = x.headers.get('X-Stitcher-Visitor');
        // unless a reset or a withdrawal (in any tab) changed the id meanwhile, take the collector's
        if (s < 300 && h && get('vid') == v) r ? r == 1 && h == v && set('rs', now()) : set('vid', h);
      } else {
        const a = x.headers.get('Retry-After');
        delay = a * 1e3 || Date.parse(a) - now() || 1;
      }
    } catch (e) {
      // no readable answer (network error, timeout, a refusal without CORS headers): 5 tries while online;
      // not when the page's fetch threw before sending. The stored copy is counted: a reset meanwhile marked it
      delay = 1;
      if (p && navigator.onLine !== false) b.forEach(({ id }) => { const k = 'e.' + id, e = JP(get(k)); e && set(k, (e.n = (e.n | 0) + 1) > 4 ? null : J(e)) });
    }
    inf.clear();
    if (delay) {
      // exponential backoff with jitter (0.5-1 × 1 s, 2 s, 4 s ... 60 s), never sooner than Retry-After
      delay = Math.max(delay, Math.min(6e4, 1e3 * 2 ** fails) * (1 + Math.random()) / 2);
      fails++;
      // shared with the other tabs and the pagehide beacon, unless this page's own fetch threw
      if (ok == 1 && p) set('w', now() + delay);
      later(delay);
    } else kick();
  };

  // the page is going away (or may be discarded while hidden): hand what is queued to the browser
  // (a string body goes as text/plain; without sendBeacon, a keepalive fetch, which outlives the page too;
  // a throwing sendBeacon leaves the events queued)
  const beacon = () => {
    try {
      if (ok != 1 || now() < wait()) return;
      const N = navigator;
      let b, x;
      while ((b = batch(new Set([...inf, ...bc]))).length &&
        (x = body(b, ...rsv(b)), N.sendBeacon ? N.sendBeacon(EP, x) : post(x).catch(() => 0)))
        b.forEach(e => bc.add(e.id));
    } catch (e) {}
  };

  // --- page views ---
  // URL of the last page_view; a fragment counts only as a hash route ("#/pricing", "#!/pricing"), an anchor
  // jump is not a page view
  let lu;
  const Q = u => u.replace(/\?[^#]*/, '');
  // m: the history method that navigated; f: stitcher('page'), which always records one
  const pv = G((m, f) => {
    const u = location.href.replace(/#(?![/!]).*/, '');
    // an anchor jump on a hash route (#/faq, then #answer) stays on that route
    if (!f && lu && location.hash && !lu.indexOf(u + '#')) return;
    // the same URL, or a replaceState that only changes the query (e.g. strips utm_ parameters): same page
    if (!f && (u == lu || m == 'replaceState' && lu && Q(u) == Q(lu))) return lu = u;
    const r = lu ? lu : d.referrer; // after an SPA navigation the referrer is the previous route
    lu = u;
    ev('page_view', 0, r);
  });
  const nav = m => setTimeout(() => pv(m)); // let the router set the new title first
  ['pushState', 'replaceState'].forEach(m => {
    const o = history[m];
    // a frozen history: only popstate is seen
    try { history[m] = function () { const x = o.apply(this, arguments); nav(m); return x } } catch (e) {}
  });
  w.addEventListener('popstate', nav);
  w.addEventListener('pagehide', beacon);
  d.addEventListener('visibilitychange', () => d.visibilityState == 'hidden' && beacon());

  // --- the public function ---
  const C = {
    event: (n, p) => n && ev(n, p),
    page: () => pv(0, 1),
    flush: () => { set('w'); fails = 0; flush() },
    reset: () => {
      // what is queued still belongs to the old visitor: it is sent first, under the old id (an id made now if
      // none was stored yet: the collector's cookie, where the browser has one, then takes it over)
      const o = ok == 1 && vid();
      o && rq().forEach(e => e.v || set('e.' + e.id, J((e.v = o, e))));
      set('vid');
      if (ok) set('rs', 1);
    },
    // a login the site's backend vouches for: o.signature is its HMAC of o.externalCustomerId (POST <endpoint>/identify)
    // (only these two fields are sent: the collector refuses an email or phone from a browser)
    identify: o => ok == 1 && post(body(0, ...rsv([0]), { externalCustomerId: o.externalCustomerId, signature: o.signature }), '/identify').catch(() => 0),
    // h: heard from another tab, which has already told the others and the collector
    consent: (y, h) => {
      if (y) {
        if (ok === 0) set('rs', 1); // granted again after a withdrawal: start a new visitor
        ok = 1;
        set('c', 1);
        pend.forEach(add);
      } else {
        ok = 0;
        rq().forEach(e => set('e.' + e.id));
        ['vid', 'rs', 'w'].forEach(k => set(k));
        set('c', 0);
      }
      pend = [];
      if (!h) {
        B && B.postMessage(y);
        // ask the collector to expire its HttpOnly visitor cookie (last: the page's fetch may throw)
        y || post('', '/forget').catch(() => 0);
      }
    }
  };
  // consent withdrawn or granted in another tab applies here at once
  const B = w.BroadcastChannel && new BroadcastChannel('stitcher');
  if (B) B.onmessage = m => S('consent', m.data, 1);
  w.addEventListener('storage', e => e.key == 'stitcher.c' && ok !== +e.newValue && e.newValue && S('consent', +e.newValue, 1));
  const q = w.stitcher && w.stitcher.q || [];
  const S = w.stitcher = function (c) {
    // the host page never sees an exception from the tracker
    try { C[c] && C[c].apply(0, [].slice.call(arguments, 1)) } catch (e) {}
  };
  S.ok = 1;

  // consent and reset calls made before load apply before the automatic page_view, the rest after it; a
  // stitcher('page') made before load is that page_view, not a second one
  q.forEach(a => { /^(consent|reset)$/.test(a[0]) || pv(); a[0] == 'page' || S.apply(0, a) });
  pv();
  kick(); // events an earlier page left in the queue
})(window, document);
