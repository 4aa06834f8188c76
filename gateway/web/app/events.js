// Live updates from GET /v1/events (Server-Sent Events), read with fetch()
// and a ReadableStream because EventSource cannot send the Authorization
// header. Reconnects after a drop with Last-Event-ID (exponential backoff
// with jitter), so nothing is missed; after "event: reset", or whenever it
// connects without a cursor, it asks the views to reload what they show.

import { session } from './session.js';

const MIN_BACKOFF_MS = 500;
const MAX_BACKOFF_MS = 30000;
// The server sends a keep-alive comment every 15 seconds: a stream silent
// for this long is dead (a half-open connection after a network change).
const SILENCE_MS = 45000;

/**
 * parseSSE feeds decoded text to an incremental Server-Sent Events parser
 * (the WHATWG algorithm: fields event, data, id; comments; CR, LF or CRLF
 * line ends). It calls onEvent({type, data, id}) for each dispatched event
 * and onId(id) whenever the last event id changes, even for id-only blocks.
 */
export function createSSEParser(onEvent, onId) {
  let buf = '';
  let type = '';
  let data = '';
  let hasData = false;
  let lastId = null;
  let pendingCR = false;

  function line(l) {
    if (l === '') {
      if (lastId !== null) onId(lastId);
      if (hasData) {
        onEvent({ type: type || 'message', data: data.endsWith('\n') ? data.slice(0, -1) : data, id: lastId });
      }
      type = ''; data = ''; hasData = false;
      return;
    }
    if (l[0] === ':') return; // comment (keep-alive)
    const i = l.indexOf(':');
    const field = i < 0 ? l : l.slice(0, i);
    let value = i < 0 ? '' : l.slice(i + 1);
    if (value[0] === ' ') value = value.slice(1);
    switch (field) {
      case 'event': type = value; break;
      case 'data': data += value + '\n'; hasData = true; break;
      case 'id': if (!value.includes('\0')) lastId = value; break;
      default: break; // retry and unknown fields are ignored
    }
  }

  return function feed(chunk) {
    buf += chunk;
    let start = 0;
    for (let i = 0; i < buf.length; i++) {
      const c = buf[i];
      if (c === '\n' && pendingCR) { pendingCR = false; start = i + 1; continue; }
      pendingCR = false;
      if (c === '\r' || c === '\n') {
        line(buf.slice(start, i));
        start = i + 1;
        if (c === '\r') pendingCR = true;
      }
    }
    buf = buf.slice(start);
  };
}

/**
 * LiveEvents keeps one event stream open for the signed-in user.
 *   onEvent(type, payload)  message.created, message.updated, conversation.updated
 *   onReload()              the views should reload (a reset, or no cursor to resume)
 *   onStatus(state)         'connecting' | 'live' | 'reconnecting'
 *   onUnauthorized()        the token was refused (401)
 */
export class LiveEvents {
  constructor({ onEvent, onReload, onStatus, onUnauthorized }) {
    this.onEvent = onEvent;
    this.onReload = onReload;
    this.onStatus = onStatus || (() => {});
    this.onUnauthorized = onUnauthorized || (() => {});
    this.lastEventId = null;
    this.controller = null;
    this.running = false;
    this.wake = null;
  }

  start() {
    if (this.running) return;
    this.running = true;
    // When the browser goes offline the connection is gone or soon will be:
    // drop it now and reconnect (with the cursor) once back online.
    this.onOffline = () => { if (this.controller) this.controller.abort(); };
    window.addEventListener('offline', this.onOffline);
    this.loop();
  }

  stop() {
    this.running = false;
    window.removeEventListener('offline', this.onOffline);
    if (this.controller) this.controller.abort();
    if (this.wake) this.wake();
  }

  /** restart reconnects at once (after a new token), resuming from the cursor. */
  restart() {
    if (!this.running) { this.start(); return; }
    if (this.controller) this.controller.abort();
    if (this.wake) this.wake();
  }

  async loop() {
    let backoff = MIN_BACKOFF_MS;
    this.onStatus('connecting');
    while (this.running) {
      const controller = new AbortController();
      this.controller = controller;
      try {
        const headers = { Accept: 'text/event-stream', Authorization: 'Bearer ' + session.token };
        const resumed = this.lastEventId !== null;
        if (resumed) headers['Last-Event-ID'] = this.lastEventId;
        const res = await fetch('/v1/events', {
          headers, signal: controller.signal, cache: 'no-store', credentials: 'omit',
        });
        if (res.status === 401) {
          this.running = false;
          this.onUnauthorized();
          return;
        }
        if (res.status === 400 && resumed) {
          // The cursor is not one this server knows: start afresh.
          this.lastEventId = null;
          continue;
        }
        if (!res.ok || !res.body) throw new Error('event stream: HTTP ' + res.status);
        // The subscription is live once the headers are here.
        backoff = MIN_BACKOFF_MS;
        this.onStatus('live');
        if (!resumed) this.onReload();
        await this.read(res.body, controller);
      } catch (err) {
        if (!this.running) return;
        if (err && err.name !== 'AbortError') console.debug('event stream dropped', err);
      }
      if (!this.running) return;
      this.onStatus('reconnecting');
      if (controller.signal.aborted && navigator.onLine !== false) {
        // restart(), a reset or a silent stream: reconnect at once.
        continue;
      }
      const delay = Math.min(backoff, MAX_BACKOFF_MS) * (0.75 + Math.random() * 0.5);
      backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
      await new Promise((resolve) => {
        const t = setTimeout(resolve, delay);
        this.wake = () => { clearTimeout(t); resolve(); };
        // Reconnect at once when the browser comes back online.
        window.addEventListener('online', this.wake, { once: true });
      });
      if (this.wake) window.removeEventListener('online', this.wake);
      this.wake = null;
    }
  }

  async read(body, controller) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let reset = false;
    const feed = createSSEParser((ev) => {
      if (ev.type === 'reset') {
        // The cursor is too old or we fell behind: reload, and resume from now.
        reset = true;
        this.lastEventId = null;
        return;
      }
      let payload = null;
      try { payload = JSON.parse(ev.data); } catch { return; }
      try {
        this.onEvent(ev.type, payload);
      } catch (err) {
        console.error('applying event', ev.type, err);
      }
    }, (id) => {
      if (!reset) this.lastEventId = id;
    });
    let silence = setTimeout(() => controller.abort(), SILENCE_MS);
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        clearTimeout(silence);
        silence = setTimeout(() => controller.abort(), SILENCE_MS);
        feed(value);
        if (reset) {
          controller.abort();
          break;
        }
      }
    } finally {
      clearTimeout(silence);
      reader.releaseLock?.();
    }
    if (reset) {
      this.lastEventId = null;
    }
  }
}
