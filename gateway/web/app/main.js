// clinicchat web client: staff Chat and the patient Inbox.
// Plain JavaScript modules, no build step; served by the gateway at "/".

import { api, onUnauthorized } from './api.js';
import { ChatView } from './chat.js';
import { LiveEvents } from './events.js';
import { session } from './session.js';
import { devSignInView, portalSignInView } from './signin.js';
import { h, icon, clear, roleLabel, closeMenu } from './ui.js';

const root = document.getElementById('root');

const app = {
  devMode: false,
  view: null,
  live: null,
};

async function boot() {
  session.restore();
  app.devMode = await api.devTokenProbe();
  onUnauthorized(() => signOut('Your session has ended. Sign in again.'));
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible' && app.view) app.view.onVisible();
  });
  window.addEventListener('hashchange', () => {
    if (new URLSearchParams(location.hash.slice(1)).get('token')) {
      stopApp();
      session.restore();
      render();
    }
  });
  render();
}

function render(notice) {
  closeMenu({ restoreFocus: false });
  clear(root);
  if (!session.signedIn) {
    document.title = 'Sign in — clinicchat';
    const view = app.devMode
      ? devSignInView({ notice, onToken: (token, req) => { if (session.set(token, req)) render(); } })
      : portalSignInView({ notice });
    root.append(view);
    root.querySelector('select, input, button')?.focus();
    return;
  }
  if (!session.isStaff && !session.isPatient) {
    root.append(h('main', { id: 'main', class: 'signin' }, h('div', { class: 'signin-card' },
      h('h1', null, 'No web client for this role'),
      h('p', null, 'Practice systems use the gRPC API. Sign in as a staff member or a patient.'),
      h('button', { type: 'button', class: 'btn btn-secondary', onclick: () => signOut() }, 'Sign out'))));
    return;
  }
  startApp();
}

function topBar() {
  const staff = session.isStaff;
  app.liveEl = h('span', { class: 'live-status', role: 'status', dataset: { state: 'connecting' } }, 'Connecting…');
  return h('header', { class: 'topbar' },
    h('div', { class: 'brand' },
      h('span', { class: 'logo', 'aria-hidden': 'true' }, icon('chat')),
      h('span', { class: 'brand-name' }, 'clinicchat'),
      session.practice ? h('span', { class: 'practice' }, session.practice) : null),
    h('nav', { class: 'topnav', 'aria-label': 'Main' },
      h('a', { href: '/', class: 'nav-link', 'aria-current': 'page', onclick: (e) => { e.preventDefault(); app.view?.back(); } },
        staff ? 'Chat' : 'Inbox')),
    h('div', { class: 'topbar-end' },
      app.liveEl,
      h('span', { class: 'user' },
        h('span', { class: 'user-name' }, session.displayName),
        h('span', { class: 'user-role' }, roleLabel(session.role))),
      h('button', { type: 'button', class: 'btn btn-ghost signout', 'aria-label': 'Sign out', onclick: () => signOut() },
        icon('signout'), h('span', { class: 'signout-label' }, 'Sign out'))));
}

function setLiveStatus(state) {
  if (!app.liveEl) return;
  app.liveEl.dataset.state = state;
  app.liveEl.textContent = state === 'live' ? 'Live' : state === 'reconnecting' ? 'Reconnecting…' : 'Connecting…';
}

function startApp() {
  const view = new ChatView({ staff: session.isStaff, devMode: app.devMode, reauthenticate });
  app.view = view;
  const main = h('main', { id: 'main', class: 'main' }, view.el);
  root.append(topBar(), main);
  view.start();
  app.live = new LiveEvents({
    onEvent: (type, payload) => app.view === view && view.onEvent(type, payload),
    onReload: () => app.view === view && view.reload(),
    onStatus: setLiveStatus,
    onUnauthorized: () => signOut('Your session has ended. Sign in again.'),
  });
  app.live.start();
}

function stopApp() {
  if (app.live) app.live.stop();
  app.live = null;
  if (app.view) app.view.destroy();
  app.view = null;
  for (const d of document.querySelectorAll('dialog')) d.remove();
}

function signOut(notice) {
  stopApp();
  session.clear();
  render(notice);
}

/**
 * reauthenticate is the step-up a patient needs to view a sensitive
 * message: a fresh sign-in. Dev mode gets a new token for the same user;
 * production would send the patient through the identity provider.
 */
async function reauthenticate() {
  const req = session.devSignIn || { subject: session.subject, role: session.role, practice: session.practice, name: session.claims?.name || '' };
  if (!app.devMode) throw new Error('Sign in again through your patient portal to view it.');
  const res = await api.devToken({ ...req, authAgeSeconds: 0 });
  if (!session.set(res.token, req)) throw new Error('Could not sign in again.');
  // The event stream verifies the token once: reconnect with the new one.
  app.live?.restart();
}

boot();
