// The message composer: Enter sends, Shift+Enter starts a new line; the
// paperclip attaches files; for staff, "/" offers /appt, /invoice and /rx
// (a picker of the patient's records), then the practice's reply templates
// by title (inserted with their placeholders filled in, for editing before
// sending), and the lock marks a message sensitive. Every send carries a fresh requestId; a retry of the same
// content after a network error reuses it, so it is never sent twice.

import { api, ApiError, NetworkError, MAX_UPLOAD_BYTES, TOO_LARGE_MESSAGE, newRequestId } from './api.js';
import { ARTIFACT_KINDS, artifactCard } from './messages.js';
import { session } from './session.js';
import { expandTemplate, templates } from './templates.js';
import { h, icon, clear, formatBytes } from './ui.js';

const MAX_TEXT = 10000;
const MAX_ATTACHMENTS = 10;

const COMMANDS = Object.entries(ARTIFACT_KINDS).map(([type, k]) => ({
  type, command: k.command, label: k.label, hint: 'Attach ' + k.what, optId: type,
}));

/** squash is a title as the "/" word matches it: lower case, no spaces. */
function squash(s) { return String(s).toLowerCase().replace(/\s+/g, ''); }

let uid = 0;

export class Composer {
  /**
   * opts: {conversation, patient, patientName, staff, onSent(message), onError(message)}
   */
  constructor(opts) {
    this.opts = opts;
    this.id = 'composer-' + (++uid);
    this.attachments = []; // {id, file, state: 'uploading'|'done'|'error', name?, error?}
    this.artifact = null;
    this.sensitive = false;
    this.sending = false;
    this.pending = null; // {key, requestId} of a send that may be retried
    this.slash = null; // {start, end, options, active}
    this.trayError = ''; // 'failed' | 'uploading' while the error shown is about the attachments
    this.templates = []; // the practice's reply templates (staff)
    this.el = this.render();
    if (opts.staff) this.loadTemplates();
  }

  /** loadTemplates fetches the practice's templates for the "/" menu. */
  async loadTemplates() {
    this.templatesAt = Date.now();
    try {
      const list = await templates();
      if (list === this.templates) return;
      this.templates = list;
      if (this.slash) this.updateSlash();
    } catch (err) {
      console.debug('templates', err.message); // the shortcuts still work
    }
  }

  /** expand fills a template's placeholders for this thread and this user. */
  expand(text) {
    return expandTemplate(text, {
      patientName: this.opts.patientName || '', staffName: session.displayName, practiceName: session.practice,
    });
  }

  render() {
    const staff = this.opts.staff;
    this.textarea = h('textarea', {
      id: this.id + '-text', class: 'composer-input', rows: '1', maxlength: String(MAX_TEXT),
      placeholder: staff ? 'Type a message — / for shortcuts' : 'Write a reply',
      'aria-describedby': this.id + '-hint',
      autocomplete: 'off',
      onkeydown: (e) => this.onKeyDown(e),
      // The Enter that chose a template must not also type a new line (a
      // browser that sends the key's character apart from its keydown).
      onbeforeinput: (e) => {
        if (this.swallowEnter && (e.inputType === 'insertLineBreak' || e.inputType === 'insertParagraph')) e.preventDefault();
      },
      onkeyup: (e) => { if (e.key === 'Enter') this.swallowEnter = false; },
      oninput: () => { this.autosize(); this.updateSlash(); },
      onblur: () => setTimeout(() => { if (!this.el.contains(document.activeElement)) this.closeSlash(); }, 150),
    });
    if (staff) {
      this.textarea.setAttribute('role', 'combobox');
      this.textarea.setAttribute('aria-autocomplete', 'list');
      this.textarea.setAttribute('aria-expanded', 'false');
      this.textarea.setAttribute('aria-controls', this.id + '-slash');
    }
    this.fileInput = h('input', {
      type: 'file', multiple: true, class: 'visually-hidden', tabindex: '-1', 'aria-hidden': 'true',
      accept: 'image/*,application/pdf,.pdf,.doc,.docx,.odt,.rtf,.txt,.xls,.xlsx,.ods,.csv,.ppt,.pptx,.odp',
      onchange: () => { this.addFiles([...this.fileInput.files]); this.fileInput.value = ''; },
    });
    this.attachBtn = h('button', {
      type: 'button', class: 'icon-btn', 'aria-label': 'Attach files', title: 'Attach an image, PDF or document (up to 25 MB)',
      onclick: () => this.fileInput.click(),
    }, icon('paperclip'));
    this.lockBtn = staff ? h('button', {
      type: 'button', class: 'icon-btn lock-toggle', 'aria-pressed': 'false', 'aria-label': 'Mark sensitive',
      title: 'Mark sensitive: the patient must sign in again to view it',
      onclick: () => this.setSensitive(!this.sensitive),
    }, icon('unlock')) : null;
    this.sendBtn = h('button', { type: 'submit', class: 'send-btn', 'aria-label': 'Send' }, icon('send'));
    this.tray = h('div', { class: 'composer-tray', 'aria-live': 'polite' });
    this.slashList = staff ? h('ul', {
      id: this.id + '-slash', class: 'slash-menu', role: 'listbox', 'aria-label': 'Shortcuts', hidden: true,
    }) : null;
    this.errorEl = h('div', { class: 'composer-error', role: 'alert' });
    this.sensitiveNote = h('p', { class: 'sensitive-note', hidden: true }, icon('lock'),
      'Sensitive: the patient must sign in again to view this message. Previews and notifications never show it.');
    const form = h('form', {
      class: 'composer', 'aria-label': 'Write a message',
      onsubmit: (e) => { e.preventDefault(); this.send(); },
    },
    this.errorEl,
    this.tray,
    this.sensitiveNote,
    this.slashList,
    h('div', { class: 'composer-row' },
      this.attachBtn,
      this.lockBtn,
      h('label', { for: this.id + '-text', class: 'visually-hidden' },
        'Message to ' + (this.opts.patientName || 'the practice')),
      this.textarea,
      this.sendBtn),
    h('p', { id: this.id + '-hint', class: 'composer-hint' },
      'Enter to send · Shift+Enter for a new line' + (staff ? ' · / for shortcuts' : '')),
    this.fileInput);
    return form;
  }

  focus() { this.textarea.focus(); }

  autosize() {
    const t = this.textarea;
    t.style.height = 'auto';
    t.style.height = Math.min(t.scrollHeight + 2, 200) + 'px';
  }

  setSensitive(on) {
    this.sensitive = on;
    if (!this.lockBtn) return;
    this.lockBtn.setAttribute('aria-pressed', String(on));
    this.lockBtn.replaceChildren(icon(on ? 'lock' : 'unlock'));
    this.lockBtn.classList.toggle('on', on);
    this.sensitiveNote.hidden = !on;
  }

  // ---- keyboard ----------------------------------------------------------

  onKeyDown(e) {
    this.swallowEnter = false;
    if (e.isComposing || e.keyCode === 229) return;
    if (this.slash) {
      const n = this.slash.options.length;
      if (e.key === 'ArrowDown' && n) { e.preventDefault(); this.setActive((this.slash.active + 1) % n); return; }
      if (e.key === 'ArrowUp' && n) { e.preventDefault(); this.setActive((this.slash.active - 1 + n) % n); return; }
      if ((e.key === 'Enter' || e.key === 'Tab') && !e.shiftKey && n) {
        e.preventDefault();
        this.swallowEnter = e.key === 'Enter' && !!this.slash.options[this.slash.active].template;
        this.chooseCommand(this.slash.options[this.slash.active]);
        return;
      }
      if (e.key === 'Escape') { e.preventDefault(); this.closeSlash(); return; }
    }
    if (e.key === 'Enter' && !e.shiftKey && !e.altKey && !e.ctrlKey && !e.metaKey) {
      e.preventDefault();
      this.send();
    }
  }

  // ---- slash shortcuts (staff) --------------------------------------------

  updateSlash() {
    if (!this.opts.staff) return;
    const t = this.textarea;
    const before = t.value.slice(0, t.selectionStart);
    const m = /(^|\s)(\/[^\s/]*)$/.exec(before);
    if (!m || t.selectionStart !== t.selectionEnd) { this.closeSlash(); return; }
    const word = m[2].toLowerCase();
    if (Date.now() - (this.templatesAt || 0) > 60000) this.loadTemplates(); // asked again once a minute old
    // The shortcuts first, then the templates whose title holds the word.
    const options = [
      ...COMMANDS.filter((c) => c.command.startsWith(word)),
      ...this.templates.filter((tp) => squash(tp.title).includes(squash(word.slice(1))))
        .map((tp) => ({ template: tp, optId: 'tpl-' + this.templates.indexOf(tp) })),
    ];
    if (!options.length) { this.closeSlash(); return; }
    const start = t.selectionStart - m[2].length;
    const prevActive = this.slash ? this.slash.options[this.slash.active] : null;
    let active = prevActive ? options.findIndex((o) => o.optId === prevActive.optId) : 0;
    if (active < 0) active = 0;
    this.slash = { start, end: t.selectionStart, options, active };
    clear(this.slashList);
    options.forEach((c, i) => {
      const attrs = {
        id: this.id + '-opt-' + c.optId, role: 'option', class: ['slash-option', c.template ? 'slash-template' : ''],
        'aria-selected': String(i === active),
        dataset: c.template ? { template: c.template.name } : { command: c.command },
        onmousedown: (e) => { e.preventDefault(); this.chooseCommand(c); },
      };
      this.slashList.append(c.template
        ? h('li', attrs, h('span', { class: 'slash-title' }, c.template.title),
          h('span', { class: 'slash-hint' }, this.expand(c.template.text)))
        : h('li', attrs, h('span', { class: 'slash-cmd' }, c.command), h('span', { class: 'slash-hint' }, c.hint)));
    });
    this.slashList.hidden = false;
    t.setAttribute('aria-expanded', 'true');
    t.setAttribute('aria-activedescendant', this.id + '-opt-' + options[active].optId);
  }

  setActive(i) {
    this.slash.active = i;
    [...this.slashList.children].forEach((li, j) => li.setAttribute('aria-selected', String(j === i)));
    this.textarea.setAttribute('aria-activedescendant', this.id + '-opt-' + this.slash.options[i].optId);
    this.slashList.children[i]?.scrollIntoView({ block: 'nearest' });
  }

  closeSlash() {
    if (!this.slashList) return;
    this.slash = null;
    this.slashList.hidden = true;
    this.textarea.setAttribute('aria-expanded', 'false');
    this.textarea.removeAttribute('aria-activedescendant');
  }

  chooseCommand(c) {
    const { start, end } = this.slash;
    const t = this.textarea;
    if (c.template) {
      // The expanded text replaces the "/" word, for editing before it is sent.
      const text = this.expand(c.template.text).slice(0, MAX_TEXT - (t.value.length - (end - start)));
      t.value = t.value.slice(0, start) + text + t.value.slice(end);
      t.setSelectionRange(start + text.length, start + text.length);
      this.closeSlash();
      this.autosize();
      this.focus();
      return;
    }
    t.value = t.value.slice(0, start) + t.value.slice(end);
    t.setSelectionRange(start, start);
    this.closeSlash();
    this.autosize();
    this.pickArtifact(c.type);
  }

  async pickArtifact(type) {
    const kind = ARTIFACT_KINDS[type];
    const list = h('ul', { class: 'picker-list', role: 'list' }, h('li', { class: 'muted' }, 'Loading…'));
    const status = h('p', { class: 'picker-status', role: 'status' });
    const dialog = h('dialog', { class: 'dialog picker', 'aria-labelledby': this.id + '-picker-title' },
      h('div', { class: 'dialog-head' },
        // Focus starts on the title: the Enter that chose the shortcut must
        // not land on a button of the dialog.
        h('h2', { id: this.id + '-picker-title', tabindex: '-1', autofocus: true }, 'Attach ' + kind.what),
        h('button', { type: 'button', class: 'icon-btn', 'aria-label': 'Close', onclick: () => dialog.close() }, icon('close'))),
      h('p', { class: 'muted dialog-sub' }, 'For ' + (this.opts.patientName || 'this patient') + '. The patient sees a preview card.'),
      status, list);
    dialog.addEventListener('close', () => {
      dialog.remove();
      // Focus the box afresh: the focus the dialog restores on closing can
      // leave the text box unable to take typing in Chromium.
      this.textarea.blur();
      this.focus();
    });
    document.body.append(dialog);
    dialog.showModal();
    try {
      const res = await api.artifacts(this.opts.patient, type);
      const items = res.artifacts || [];
      clear(list);
      if (!items.length) {
        list.append(h('li', { class: 'muted empty' }, 'No recent ' + kind.label.toLowerCase() + 's for this patient.'));
      }
      for (const a of items) {
        list.append(h('li', null, h('button', {
          type: 'button', class: 'picker-item', onclick: () => { this.setArtifact(a); dialog.close(); },
        }, artifactCard(a))));
      }
      const first = list.querySelector('button');
      if (first) first.focus();
    } catch (err) {
      clear(list);
      status.textContent = err.message;
      status.classList.add('error-text');
    }
  }

  setArtifact(a) {
    this.artifact = a;
    this.renderTray();
  }

  // ---- attachments ---------------------------------------------------------

  addFiles(files) {
    this.showError('');
    for (const file of files) {
      if (this.attachments.length >= MAX_ATTACHMENTS) {
        this.showError('A message can carry at most 10 attachments.');
        break;
      }
      const item = { id: ++uid, file, state: 'uploading' };
      this.attachments.push(item);
      if (file.size > MAX_UPLOAD_BYTES) {
        item.state = 'error';
        item.error = TOO_LARGE_MESSAGE;
        continue;
      }
      api.upload(this.opts.conversation, file).then((att) => {
        item.state = 'done';
        item.name = att.name;
      }, (err) => {
        item.state = 'error';
        item.error = err instanceof NetworkError ? 'Upload failed: cannot reach the server. Remove it and try again.' : err.message;
      }).finally(() => this.renderTray());
    }
    this.renderTray();
  }

  removeAttachment(item) {
    this.attachments = this.attachments.filter((x) => x !== item);
    this.renderTray();
    this.focus();
  }

  renderTray() {
    // An error about the attachments goes once they are fixed.
    if ((this.trayError === 'failed' && !this.attachments.some((a) => a.state === 'error')) ||
      (this.trayError === 'uploading' && !this.attachments.some((a) => a.state === 'uploading'))) {
      this.showError('');
    }
    clear(this.tray);
    for (const item of this.attachments) {
      const state = item.state === 'uploading' ? 'Uploading…' : item.state === 'error' ? '' : formatBytes(item.file.size);
      this.tray.append(h('div', { class: ['chip', 'chip-' + item.state] },
        icon(item.state === 'error' ? 'close' : 'file'),
        h('span', { class: 'chip-name' }, item.file.name || 'file'),
        state ? h('span', { class: 'chip-state' }, state) : null,
        item.error ? h('span', { class: 'chip-msg', role: 'alert' }, item.error) : null,
        h('button', {
          type: 'button', class: 'chip-remove', 'aria-label': 'Remove ' + (item.file.name || 'file'),
          onclick: () => this.removeAttachment(item),
        }, icon('close'))));
    }
    if (this.artifact) {
      this.tray.append(h('div', { class: 'tray-artifact' }, artifactCard(this.artifact, {
        extra: h('button', {
          type: 'button', class: 'chip-remove', 'aria-label': 'Remove ' + (ARTIFACT_KINDS[this.artifact.type]?.label || 'card'),
          onclick: () => { this.artifact = null; this.renderTray(); this.focus(); },
        }, icon('close')),
      })));
    }
  }

  // ---- sending -------------------------------------------------------------

  showError(text, retry, trayError = '') {
    this.trayError = text ? trayError : '';
    clear(this.errorEl);
    if (!text) return;
    this.errorEl.append(h('span', null, text));
    if (retry) {
      this.errorEl.append(h('button', { type: 'button', class: 'btn btn-secondary btn-small', onclick: retry }, 'Retry'));
    }
  }

  reset() {
    this.textarea.value = '';
    this.attachments = [];
    this.artifact = null;
    this.setSensitive(false);
    this.pending = null;
    this.renderTray();
    this.autosize();
  }

  async send() {
    if (this.sending) return;
    this.closeSlash();
    const text = this.textarea.value.trim();
    if (this.attachments.some((a) => a.state === 'uploading')) {
      this.showError('Wait for the attachments to finish uploading.', null, 'uploading');
      return;
    }
    if (this.attachments.some((a) => a.state === 'error')) {
      this.showError('Remove the attachments that failed before sending.', null, 'failed');
      return;
    }
    const attachments = this.attachments.map((a) => a.name);
    if (!text && !attachments.length && !this.artifact) return;
    if (text.length > MAX_TEXT) {
      this.showError('A message can be at most 10,000 characters.');
      return;
    }
    const body = { text, sensitive: this.sensitive, attachments };
    if (this.artifact) body.artifact = { type: this.artifact.type, ref: this.artifact.ref };
    const key = JSON.stringify(body);
    if (!this.pending || this.pending.key !== key) this.pending = { key, requestId: newRequestId() };
    body.requestId = this.pending.requestId;

    this.sending = true;
    this.el.setAttribute('aria-busy', 'true');
    this.textarea.readOnly = true;
    this.sendBtn.disabled = true;
    this.showError('');
    try {
      const msg = await api.sendMessage(this.opts.conversation, body);
      this.reset();
      this.opts.onSent(msg);
    } catch (err) {
      const retryable = err instanceof NetworkError ||
        (err instanceof ApiError && (err.httpStatus >= 500 || err.httpStatus === 429));
      if (retryable) {
        this.showError('Not sent: ' + (err instanceof NetworkError ? 'cannot reach the server.' : err.message),
          () => this.send());
      } else {
        this.pending = null;
        this.showError(err.message || 'The message was not sent.');
      }
    } finally {
      this.sending = false;
      this.el.removeAttribute('aria-busy');
      this.textarea.readOnly = false;
      this.sendBtn.disabled = false;
      if (!this.errorEl.querySelector('button')) this.focus();
    }
  }
}
