// Sign-in. In dev mode (the all-in-one's POST /v1/dev/tokens exists) pick a
// demo user and a practice; in production the token comes from the
// practice portal or identity provider in the URL fragment (#token=…).

import { api } from './api.js';
import { STAFF_ROLES } from './session.js';
import { h, icon, roleLabel } from './ui.js';

// The demo practice's users (README, "The demo practice"; the seed in
// cmd/clinicchat/allinone/seed.go). Their tokens carry these names.
const DEMO_STAFF = [
  { subject: 'dr-lee', role: 'dentist', name: 'Dr. Lee' },
  { subject: 'hana', role: 'hygienist', name: 'Hana Kim' },
  { subject: 'sam', role: 'assistant', name: 'Sam Rivera' },
  { subject: 'fiona', role: 'front_desk', name: 'Fiona Walsh' },
  { subject: 'adam', role: 'practice_admin', name: 'Adam Novak' },
];
const DEMO_PATIENTS = [
  { subject: 'alice', name: 'Alice Johnson' },
  { subject: 'jose', name: 'José García' },
  { subject: 'emma', name: 'Emma Wilson' },
  { subject: 'john-smith-1', name: 'John Smith (born 1970)' },
  { subject: 'john-smith-2', name: 'John Smith (born 1998)' },
  { subject: 'carol', name: 'Carol Davis' },
];

function brand() {
  return h('div', { class: 'signin-brand' },
    h('span', { class: 'logo', 'aria-hidden': 'true' }, icon('chat')),
    h('span', null, 'clinicchat'));
}

/** devSignIn renders the dev-mode form; onToken(token, request) on success. */
export function devSignInView({ onToken, notice }) {
  const select = h('select', { id: 'signin-user', name: 'user', class: 'input' },
    h('optgroup', { label: 'Practice staff' },
      DEMO_STAFF.map((u) => h('option', { value: 'staff:' + u.subject }, u.name + ' — ' + roleLabel(u.role)))),
    h('optgroup', { label: 'Patients' },
      DEMO_PATIENTS.map((u) => h('option', { value: 'patient:' + u.subject }, u.name))),
    h('optgroup', { label: 'Other' }, h('option', { value: 'other' }, 'Someone else…')));
  const subject = h('input', { id: 'signin-subject', class: 'input', autocomplete: 'off', spellcheck: 'false', placeholder: 'e.g. dr-patel' });
  const role = h('select', { id: 'signin-role', class: 'input' },
    [...STAFF_ROLES, 'patient'].map((r) => h('option', { value: r }, roleLabel(r))));
  const other = h('div', { class: 'signin-other', hidden: true },
    h('div', { class: 'field' }, h('label', { for: 'signin-subject', class: 'field-label' }, 'User id'), subject),
    h('div', { class: 'field' }, h('label', { for: 'signin-role', class: 'field-label' }, 'Role'), role));
  select.addEventListener('change', () => { other.hidden = select.value !== 'other'; });
  const practice = h('input', { id: 'signin-practice', class: 'input', value: 'demo', autocomplete: 'off', spellcheck: 'false', required: true });
  const error = h('p', { class: 'form-error', role: 'alert' });
  const submit = h('button', { type: 'submit', class: 'btn btn-primary btn-block', id: 'signin-submit' }, 'Sign in');

  const form = h('form', {
    class: 'signin-form', 'aria-labelledby': 'signin-title',
    onsubmit: async (e) => {
      e.preventDefault();
      error.textContent = '';
      let req;
      const v = select.value;
      if (v === 'other') {
        req = { subject: subject.value.trim(), role: role.value, name: subject.value.trim() };
      } else {
        const [kind, sub] = v.split(':');
        const u = kind === 'staff' ? DEMO_STAFF.find((x) => x.subject === sub) : DEMO_PATIENTS.find((x) => x.subject === sub);
        req = { subject: sub, role: kind === 'staff' ? u.role : 'patient', name: u.name.replace(/ \(born \d+\)$/, '') };
      }
      req.practice = practice.value.trim();
      req.authAgeSeconds = 0;
      if (!req.subject) { error.textContent = 'Enter a user id.'; subject.focus(); return; }
      if (!req.practice) { error.textContent = 'Enter a practice id.'; practice.focus(); return; }
      submit.disabled = true;
      try {
        const res = await api.devToken(req);
        onToken(res.token, req);
      } catch (err) {
        error.textContent = err.message;
        submit.disabled = false;
      }
    },
  },
  h('div', { class: 'field' }, h('label', { for: 'signin-user', class: 'field-label' }, 'Sign in as'), select),
  other,
  h('div', { class: 'field' },
    h('label', { for: 'signin-practice', class: 'field-label' }, 'Practice'),
    practice,
    h('p', { class: 'field-hint' }, 'The demo practice is “demo”. Any other id starts empty.')),
  error,
  submit);

  return h('main', { id: 'main', class: 'signin' },
    h('div', { class: 'signin-card' },
      brand(),
      h('h1', { id: 'signin-title' }, 'Sign in'),
      h('p', { class: 'muted' }, 'Development mode: choose a demo user. In production, staff and patients arrive signed in from the practice portal.'),
      notice ? h('p', { class: 'notice', role: 'status' }, notice) : null,
      form));
}

/** portalSignInView is what production shows without a token. */
export function portalSignInView({ notice }) {
  return h('main', { id: 'main', class: 'signin' },
    h('div', { class: 'signin-card' },
      brand(),
      h('h1', null, 'Sign in through your portal'),
      notice ? h('p', { class: 'notice', role: 'status' }, notice) : null,
      h('p', null, 'Open Chat from your practice’s portal (staff) or Inbox from your patient portal. You will arrive here signed in.'),
      h('p', { class: 'muted' }, 'For your security, closing this tab signs you out.')));
}
