// Names of the practice's staff, for display. The audit log and a
// message's sender carry user ids ("users/dr-lee"). Names are learned from
// what this tab has seen: GET /v1/staff (the assign dialog, the audit log),
// the senderDisplayName of messages it showed and the signed-in user's own
// token. Kept for the tab's session (sessionStorage), at most 500.
// A staff member never seen here is shown by their user id.

const KEY = 'clinicchat.staffNames';
const MAX = 500;

let names = null;

function load() {
  if (!names) {
    try {
      names = new Map(Object.entries(JSON.parse(sessionStorage.getItem(KEY) || '{}')));
    } catch {
      names = new Map();
    }
  }
  return names;
}

/** learnName remembers a staff member's display name. */
export function learnName(principal, name) {
  if (!String(principal || '').startsWith('users/') || !name) return;
  const m = load();
  if (m.get(principal) === name) return;
  m.delete(principal);
  m.set(principal, name);
  while (m.size > MAX) m.delete(m.keys().next().value);
  try { sessionStorage.setItem(KEY, JSON.stringify(Object.fromEntries(m))); } catch { /* storage unavailable */ }
}

/** staffName is the learned name of "users/…", or ''. */
export function staffName(principal) {
  return load().get(principal) || '';
}

/** knownStaff lists [principal, name] pairs learned so far. */
export function knownStaff() {
  return [...load()];
}

/** forgetNames drops what was learned (on sign-out). */
export function forgetNames() {
  names = new Map();
  try { sessionStorage.removeItem(KEY); } catch { /* storage unavailable */ }
}
