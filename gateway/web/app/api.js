// HTTP/JSON client for the clinicchat API (SPEC.md section 3).
// Every call carries the session's bearer token; errors become ApiError
// (the API answered) or NetworkError (it could not be reached).

import { session } from './session.js';

/** The API answered with an error (a google.rpc.Status body). */
export class ApiError extends Error {
  constructor(httpStatus, body) {
    const reason = reasonOf(body);
    super(messageFor(httpStatus, reason, body && body.message));
    this.name = 'ApiError';
    this.httpStatus = httpStatus;
    this.reason = reason;
  }
}

/** The request never got an answer (offline, server down, connection cut). */
export class NetworkError extends Error {
  constructor(cause) {
    super('Cannot reach the server. Check your connection and try again.');
    this.name = 'NetworkError';
    this.cause = cause;
  }
}

/** Largest attachment the API accepts (25 MiB). */
export const MAX_UPLOAD_BYTES = 26214400;

export const TOO_LARGE_MESSAGE = 'File over 25 MB — compress and retry';

function reasonOf(body) {
  for (const d of (body && body.details) || []) {
    if (d && d.reason) return d.reason;
  }
  return '';
}

function messageFor(httpStatus, reason, apiMessage) {
  if (httpStatus === 413 || reason === 'ATTACHMENT_TOO_LARGE') return TOO_LARGE_MESSAGE;
  if (httpStatus === 415 || reason === 'UNSUPPORTED_FILE_TYPE') {
    return apiMessage || 'This type of file cannot be attached: attach an image, a PDF or a document.';
  }
  if (apiMessage) return apiMessage;
  if (httpStatus === 401) return 'Your session has ended. Sign in again.';
  if (httpStatus === 403) return 'You are not allowed to do that.';
  if (httpStatus === 404) return 'Not found.';
  if (httpStatus === 429) return 'Too many requests. Wait a moment and try again.';
  if (httpStatus >= 500) return 'Something went wrong on our side. Try again.';
  return 'The request failed (HTTP ' + httpStatus + ').';
}

/** Listeners told when the API says the token is no longer valid. */
const unauthorizedListeners = new Set();
export function onUnauthorized(fn) {
  unauthorizedListeners.add(fn);
  return () => unauthorizedListeners.delete(fn);
}

/**
 * request sends one API call. body: a plain object (sent as JSON), a Blob
 * (sent raw with its type) or undefined. Resolves with the parsed JSON
 * answer (or the Response itself with {raw:true}).
 */
export async function request(method, path, { body, query, signal, raw = false, auth = true } = {}) {
  let url = path;
  if (query) {
    const qs = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) {
      if (v !== undefined && v !== null && v !== '') qs.set(k, String(v));
    }
    const s = qs.toString();
    if (s) url += (url.includes('?') ? '&' : '?') + s;
  }
  const headers = { Accept: 'application/json' };
  const token = session.token;
  if (auth && token) headers.Authorization = 'Bearer ' + token;
  let payload;
  if (body instanceof Blob) {
    payload = body;
    headers['Content-Type'] = body.type || 'application/octet-stream';
  } else if (body !== undefined) {
    payload = JSON.stringify(body);
    headers['Content-Type'] = 'application/json';
  }
  let res;
  try {
    res = await fetch(url, { method, headers, body: payload, signal, cache: 'no-store', credentials: 'omit' });
  } catch (err) {
    if (err && err.name === 'AbortError') throw err;
    throw new NetworkError(err);
  }
  if (!res.ok) {
    let data = null;
    try { data = await res.json(); } catch { /* not JSON */ }
    const err = new ApiError(res.status, data);
    if (res.status === 401 && auth && token && token === session.token) {
      for (const fn of unauthorizedListeners) fn(err);
    }
    throw err;
  }
  if (raw) return res;
  const text = await res.text();
  return text ? JSON.parse(text) : {};
}

/** v1 is the "/v1/" + resource name path. */
export function v1(name) {
  return '/v1/' + name.split('/').map(encodeURIComponent).join('/');
}

export const api = {
  /** clientConfig: {devTokens, archiveAfterSeconds}; needs no token. */
  clientConfig: () => request('GET', '/v1/clientConfig', { auth: false }),
  devToken: (req) => request('POST', '/v1/dev/tokens', { body: req, auth: false }),

  listConversations: ({ query, archived, awaitingReply, assignee, pageToken, pageSize = 100 } = {}) =>
    request('GET', '/v1/conversations', {
      query: { query, archived: archived ? 'true' : '', awaitingReply: awaitingReply ? 'true' : '', assignee, pageToken, pageSize },
    }),
  getConversation: (name) => request('GET', v1(name)),
  createConversation: (patient) => request('POST', '/v1/conversations', { body: { patient } }),
  conversationAction: (name, action) => request('POST', v1(name) + ':' + action, { body: {} }),
  markRead: (name, upTo) => request('POST', v1(name) + ':markRead', { body: upTo ? { upTo } : {} }),
  /** assign: assignee "users/u", or '' to unassign. */
  assign: (name, assignee) => request('POST', v1(name) + ':assign', { body: { assignee } }),
  /** exportConversation: the thread as a PDF (the Response, for its blob). */
  exportConversation: (name) => request('GET', v1(name) + ':export', { raw: true }),
  listStaff: ({ pageToken, pageSize = 1000 } = {}) => request('GET', '/v1/staff', { query: { pageToken, pageSize } }),

  listTemplates: () => request('GET', '/v1/messageTemplates', { query: { pageSize: 200 } }),
  createTemplate: (t) => request('POST', '/v1/messageTemplates', { body: { title: t.title, text: t.text } }),
  updateTemplate: (name, t) => request('PATCH', v1(name), { body: { title: t.title, text: t.text } }),
  deleteTemplate: (name) => request('DELETE', v1(name)),

  listMessages: (conversation, { pageToken, pageSize = 50 } = {}) =>
    request('GET', v1(conversation) + '/messages', { query: { pageToken, pageSize } }),
  sendMessage: (conversation, body, signal) =>
    request('POST', v1(conversation) + '/messages', { body, signal }),

  searchPatients: (query, signal) =>
    request('GET', '/v1/patients', { query: { query, includeIneligible: 'true', pageSize: 25 }, signal }),
  artifacts: (patient, type) => request('GET', v1(patient) + '/artifacts', { query: { type } }),

  upload: (conversation, file) => request('POST', '/v1/attachments', {
    query: { conversation, filename: file.name || 'file' }, body: file,
  }),
  download: (attachment) => request('GET', v1(attachment) + ':download', { raw: true }),

  listPatients: ({ pageToken, pageSize = 100 } = {}) =>
    request('GET', '/v1/patients', { query: { includeIneligible: 'true', pageToken, pageSize } }),
  getPreferences: (patient) => request('GET', v1(patient) + '/communicationPreferences'),
  updatePreferences: (patient, prefs) => request('PATCH', v1(patient) + '/communicationPreferences', { body: prefs }),

  listAuditEvents: ({ filter, pageToken, pageSize = 50 } = {}) =>
    request('GET', '/v1/auditEvents', { query: { filter, pageToken, pageSize } }),
  verifyAudit: () => request('GET', '/v1/auditEvents:verify'),
  auditCheckpoint: () => request('GET', '/v1/auditEvents:checkpoint'),
  exportAudit: (filter) => request('GET', '/v1/auditEvents:export', { query: { filter }, raw: true }),
};

/**
 * allPages collects a list call's pages (at most maxPages of them), e.g.
 * allPages((t) => api.listPatients({pageToken: t}), 'patients').
 */
export async function allPages(call, field, maxPages = 20) {
  const out = [];
  let token = '';
  for (let i = 0; i < maxPages; i++) {
    const res = await call(token);
    out.push(...(res[field] || []));
    token = res.nextPageToken || '';
    if (!token) break;
  }
  return out;
}

/** saveFile offers blob to the user as a download named filename. */
export function saveFile(blob, filename) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = filename;
  a.className = 'visually-hidden';
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

/** newRequestId is a fresh idempotency key for a send. */
export function newRequestId() {
  if (globalThis.crypto && typeof crypto.randomUUID === 'function') return crypto.randomUUID();
  // Non-secure contexts lack randomUUID: build a version 4 UUID by hand.
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
