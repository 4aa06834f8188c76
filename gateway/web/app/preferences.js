// The patient's Communication preferences: one switch, "Chat messages from
// my practice" (GET and PATCH /v1/patients/{p}/communicationPreferences).
// A change takes effect at once: the practice's next send sees it.

import { api } from './api.js';
import { session } from './session.js';
import { h, icon, fullTime } from './ui.js';

export class PreferencesView {
  constructor() {
    this.patient = 'patients/' + session.subject;
    this.prefs = null;
    this.busy = false;
    this.el = this.render();
  }

  render() {
    this.switchEl = h('button', {
      type: 'button', id: 'chat-opt-in', class: 'switch', role: 'switch', 'aria-checked': 'false',
      'aria-labelledby': 'chat-opt-in-label', 'aria-describedby': 'chat-opt-in-desc', disabled: true,
      onclick: () => this.toggle(),
    }, h('span', { class: 'switch-thumb', 'aria-hidden': 'true' }));
    this.desc = h('p', { id: 'chat-opt-in-desc', class: 'setting-desc' }, 'Loading…');
    this.status = h('p', { class: 'setting-status', role: 'status' });
    return h('div', { class: 'page' },
      h('div', { class: 'page-inner narrow' },
        h('a', { href: '#', class: 'back-link' }, icon('back'), 'Back to Inbox'),
        h('h1', { class: 'page-title' }, 'Communication preferences'),
        h('p', { class: 'muted page-lead' }, 'Choose how your dental practice may contact you.'),
        h('section', { class: 'card setting', 'aria-labelledby': 'chat-opt-in-label' },
          h('div', { class: 'setting-text' },
            h('h2', { id: 'chat-opt-in-label', class: 'setting-label' }, 'Chat messages from my practice'),
            this.desc),
          this.switchEl),
        this.status));
  }

  show() {
    const on = !!this.prefs?.chatOptIn;
    this.switchEl.setAttribute('aria-checked', String(on));
    this.switchEl.disabled = this.busy || !this.prefs;
    this.desc.textContent = on
      ? 'On: your practice can send you secure messages here, and you can reply to them in your Inbox.'
      : 'Off: your practice cannot message you by chat, and you cannot send them chat messages. They will contact you another way.';
  }

  async start() {
    try {
      this.prefs = await api.getPreferences(this.patient);
      this.show();
    } catch (err) {
      this.desc.textContent = err.message;
    }
  }

  async toggle() {
    if (this.busy || !this.prefs) return;
    const want = !this.prefs.chatOptIn;
    this.busy = true;
    this.switchEl.setAttribute('aria-busy', 'true');
    this.show();
    this.status.textContent = '';
    this.status.classList.remove('error-text');
    try {
      this.prefs = await api.updatePreferences(this.patient, { chatOptIn: want });
      this.status.textContent = (this.prefs.chatOptIn ? 'Chat messages turned on' : 'Chat messages turned off') +
        (this.prefs.updateTime ? ' · ' + fullTime(this.prefs.updateTime) : '');
    } catch (err) {
      this.status.textContent = err.message;
      this.status.classList.add('error-text');
    } finally {
      this.busy = false;
      this.switchEl.removeAttribute('aria-busy');
      this.show();
      this.switchEl.focus();
    }
  }

  destroy() {}
}
