// clinicchat web client: staff Chat (and, for the practice admin, the Audit
// log and the reply Templates) and the patient Inbox (and their
// Communication preferences).
// Plain JavaScript modules, no build step; served by the gateway at "/".
// Pages are chosen by the URL fragment: "#audit", "#templates",
// "#preferences", else Chat.

import { api, onUnauthorized } from './api.js';
import { AuditView } from './audit.js';
import { ChatView } from './chat.js';
import { LiveEvents } from './events.js';
import { forgetNames, learnName } from './people.js';
import { PreferencesView } from './preferences.js';
import { session } from './session.js';
import { devSignInView, portalSignInView } from './signin.js';
import { TemplatesView, forgetTemplates } from './templates.js';
import { h, icon, clear, roleLabel, closeMenu } from './ui.js';

const root = document.getElementById('root');

const app = {
  devMode: false,
  archiveAfterSeconds: 365 * 86400,
  page: 'chat',
  view: null,
  live: null,
  main: null,
  nav: null,
};

async function boot() {
  session.restore();
  try {
    const cfg = await api.clientConfig();
    app.devMode = !!cfg.devTokens;
    if (Number(cfg.archiveAfterSeconds) > 0) app.archiveAfterSeconds = Number(cfg.archiveAfterSeconds);
  } catch {
    app.devMode = false; // an older gateway, or unreachable: the portal sign-in
  }
  onUnauthorized(() => signOut('Your session has ended. Sign in again.'));
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible' && app.view) app.view.onVisible?.();
  });
  window.addEventListener('hashchange', () => {
    if (new URLSearchParams(location.hash.slice(1)).get('token')) {
      stopApp();
      session.restore();
      render();
    } else if (app.main) {
      showPage(pageFromHash());
    }
  });
  render();
}

/** pageFromHash is the page the fragment asks for, if this user has it. */
function pageFromHash() {
  const want = location.hash.replace(/^#/, '');
  if (want === 'audit' && session.role === 'practice_admin') return 'audit';
  if (want === 'templates' && session.role === 'practice_admin') return 'templates';
  if (want === 'preferences' && session.isPatient) return 'preferences';
  return 'chat';
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

// The pages of each role: [page, label, fragment].
function pagesFor() {
  if (session.isPatient) return [['chat', 'Inbox', '#'], ['preferences', 'Preferences', '#preferences']];
  const pages = [['chat', 'Chat', '#']];
  if (session.role === 'practice_admin') pages.push(['audit', 'Audit log', '#audit'], ['templates', 'Templates', '#templates']);
  return pages;
}

function topBar() {
  app.liveEl = h('span', { class: 'live-status', role: 'status', dataset: { state: 'connecting' } }, 'Connecting…');
  app.nav = h('nav', { class: 'topnav', 'aria-label': 'Main' },
    pagesFor().map(([page, label, href]) => h('a', {
      href, class: 'nav-link', dataset: { page },
      onclick: (e) => {
        // Chat again from Chat: back to the list (closes the open thread).
        if (page === 'chat' && app.page === 'chat') { e.preventDefault(); app.view?.back?.(); }
      },
    }, label)));
  return h('header', { class: 'topbar' },
    h('div', { class: 'brand' },
      h('span', { class: 'logo', 'aria-hidden': 'true' }, icon('chat')),
      h('span', { class: 'brand-name' }, 'clinicchat'),
      session.practice ? h('span', { class: 'practice' }, session.practice) : null),
    app.nav,
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

const TITLES = {
  chat: '', audit: 'Audit log — clinicchat', templates: 'Reply templates — clinicchat', preferences: 'Communication preferences — clinicchat',
};

/** showPage swaps the page under the top bar; the event stream stays open. */
function showPage(page) {
  if (app.view && app.page === page) return;
  closeMenu({ restoreFocus: false });
  if (app.view) app.view.destroy();
  for (const d of document.querySelectorAll('dialog')) d.remove();
  app.page = page;
  let view;
  if (page === 'audit') view = new AuditView();
  else if (page === 'templates') view = new TemplatesView();
  else if (page === 'preferences') view = new PreferencesView();
  else view = new ChatView({ staff: session.isStaff, devMode: app.devMode, archiveAfterSeconds: app.archiveAfterSeconds, reauthenticate });
  app.view = view;
  clear(app.main);
  app.main.append(view.el);
  for (const a of app.nav.querySelectorAll('.nav-link')) {
    if (a.dataset.page === page) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  if (TITLES[page]) document.title = TITLES[page];
  view.start();
  if (page !== 'chat') view.el.querySelector('h1')?.setAttribute('tabindex', '-1');
  if (page !== 'chat') view.el.querySelector('h1')?.focus();
}

function startApp() {
  learnName(session.principal, session.claims?.name);
  app.main = h('main', { id: 'main', class: 'main' });
  root.append(topBar(), app.main);
  showPage(pageFromHash());
  app.live = new LiveEvents({
    onEvent: (type, payload) => app.view?.onEvent?.(type, payload),
    onReload: () => app.view?.reload?.(),
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
  app.main = null;
  for (const d of document.querySelectorAll('dialog')) d.remove();
}

function signOut(notice) {
  stopApp();
  session.clear();
  forgetNames();
  forgetTemplates();
  if (location.hash) history.replaceState(null, '', location.pathname + location.search);
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
