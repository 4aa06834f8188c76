// The signed-in session: a bearer token kept in sessionStorage (it ends
// with the browser tab), and the claims read from it for display. The
// server verifies the token on every call; nothing here trusts the claims.

const KEY = 'clinicchat.token';
const DEV_KEY = 'clinicchat.devSignIn';

export const STAFF_ROLES = ['dentist', 'hygienist', 'assistant', 'front_desk', 'practice_admin'];

function decodeClaims(token) {
  try {
    const part = token.split('.')[1];
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '=');
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return null;
  }
}

function load(key) {
  try { return sessionStorage.getItem(key); } catch { return null; }
}

function store(key, value) {
  try {
    if (value === null) sessionStorage.removeItem(key);
    else sessionStorage.setItem(key, value);
  } catch { /* storage unavailable: the session lasts until reload */ }
}

class Session {
  constructor() {
    this.token = null;
    this.claims = null;
    // devSignIn is what the dev sign-in asked for, to sign in again
    // (step-up) as the same user.
    this.devSignIn = null;
  }

  /** restore reads a token handed over in the URL fragment, or the stored one. */
  restore() {
    const hash = new URLSearchParams(location.hash.replace(/^#/, ''));
    const fromPortal = hash.get('token');
    if (fromPortal) {
      // Take the token out of the address bar and history at once.
      hash.delete('token');
      const rest = hash.toString();
      history.replaceState(null, '', location.pathname + location.search + (rest ? '#' + rest : ''));
      this.set(fromPortal, null);
      return;
    }
    const t = load(KEY);
    if (t) {
      let dev = null;
      try { dev = JSON.parse(load(DEV_KEY) || 'null'); } catch { dev = null; }
      this.set(t, dev);
    }
  }

  set(token, devSignIn) {
    const claims = decodeClaims(token);
    if (!claims || !claims.sub || !claims.role) {
      this.clear();
      return false;
    }
    if (claims.exp && claims.exp * 1000 <= Date.now()) {
      this.clear();
      return false;
    }
    this.token = token;
    this.claims = claims;
    this.devSignIn = devSignIn;
    store(KEY, token);
    store(DEV_KEY, devSignIn ? JSON.stringify(devSignIn) : null);
    return true;
  }

  clear() {
    this.token = null;
    this.claims = null;
    this.devSignIn = null;
    store(KEY, null);
    store(DEV_KEY, null);
  }

  get signedIn() { return !!this.token; }
  get role() { return this.claims ? this.claims.role : ''; }
  get subject() { return this.claims ? this.claims.sub : ''; }
  get practice() { return this.claims ? this.claims.practice : ''; }
  get displayName() { return (this.claims && this.claims.name) || this.subject; }
  get isPatient() { return this.role === 'patient'; }
  get isStaff() { return STAFF_ROLES.includes(this.role); }
  /** principal is the sender name of this user's messages. */
  get principal() { return (this.isPatient ? 'patients/' : 'users/') + this.subject; }
}

export const session = new Session();
