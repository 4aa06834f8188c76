// Reply templates (GET/POST /v1/messageTemplates, PATCH/DELETE
// /v1/messageTemplates/{t}): staff insert them from the composer's "/"
// menu, the practice admin writes them on the Templates page. The server
// stores the text with its placeholders; the client expands them from what
// it already knows (the open thread's patient, the signed-in user, the
// practice) before the text goes into the composer for editing.

import { api } from './api.js';
import { session } from './session.js';
import { h, icon, clear, fullTime } from './ui.js';

const MAX_TITLE = 100;
const MAX_TEXT = 2000;

/** PLACEHOLDERS are the ones the server accepts, with what each becomes. */
export const PLACEHOLDERS = [
  ['{patient.firstName}', 'the patient’s first name'],
  ['{patient.displayName}', 'the patient’s full name'],
  ['{staff.displayName}', 'your name'],
  ['{practice.name}', 'the practice'],
];

/**
 * expandTemplate fills a template's placeholders: vars {patientName,
 * staffName, practiceName}. The first name is the first word of the
 * patient's display name.
 */
export function expandTemplate(text, { patientName = '', staffName = '', practiceName = '' } = {}) {
  const values = {
    '{patient.firstName}': String(patientName).trim().split(/\s+/)[0] || '',
    '{patient.displayName}': patientName,
    '{staff.displayName}': staffName,
    '{practice.name}': practiceName,
  };
  return String(text).replace(/\{(patient\.firstName|patient\.displayName|staff\.displayName|practice\.name)\}/g,
    (m) => values[m]);
}

// The practice's templates, shared by every composer of the page; asked
// again when older than a minute, so an admin's change shows up soon.
let cache = null; // {at, promise}
const CACHE_MS = 60000;

/** templates resolves to the practice's templates, by title. */
export function templates() {
  if (!cache || Date.now() - cache.at > CACHE_MS) {
    const promise = api.listTemplates().then((res) => res.messageTemplates || []);
    cache = { at: Date.now(), promise };
    promise.catch(() => { if (cache && cache.promise === promise) cache = null; });
  }
  return cache.promise;
}

/** forgetTemplates drops the cache (after a change, or on sign-out). */
export function forgetTemplates() { cache = null; }

/** The practice admin's Templates page. */
export class TemplatesView {
  constructor() {
    this.items = [];
    this.editing = null; // the template being edited, or null for a new one
    this.el = this.render();
  }

  render() {
    this.titleInput = h('input', {
      id: 'tpl-title', class: 'input', maxlength: String(MAX_TITLE), autocomplete: 'off', required: true,
      'aria-describedby': 'tpl-title-hint',
    });
    this.textInput = h('textarea', {
      id: 'tpl-text', class: 'input tpl-text', rows: '5', maxlength: String(MAX_TEXT), required: true,
      'aria-describedby': 'tpl-text-hint',
      oninput: () => this.updateCount(),
    });
    this.count = h('span', { class: 'muted tpl-count', 'aria-live': 'off' });
    this.formError = h('div', { class: 'form-error', id: 'tpl-error', role: 'alert' });
    this.formTitle = h('h2', { id: 'tpl-form-title', tabindex: '-1' }, 'New template');
    this.saveBtn = h('button', { type: 'submit', class: 'btn btn-primary', id: 'tpl-save' }, 'Add template');
    this.cancelBtn = h('button', { type: 'button', class: 'btn btn-ghost', id: 'tpl-cancel', hidden: true, onclick: () => this.edit(null) }, 'Cancel');
    const chips = PLACEHOLDERS.map(([p, what]) => h('button', {
      type: 'button', class: 'btn btn-secondary btn-small placeholder-btn', title: 'Insert ' + what,
      'aria-label': 'Insert ' + p + ' (' + what + ')',
      onclick: () => this.insertPlaceholder(p),
    }, p));
    this.form = h('form', {
      class: 'card tpl-form', 'aria-labelledby': 'tpl-form-title', novalidate: true,
      onsubmit: (e) => { e.preventDefault(); this.save(); },
    },
    this.formTitle,
    h('div', { class: 'field' },
      h('label', { for: 'tpl-title', class: 'field-label' }, 'Title'),
      this.titleInput,
      h('span', { id: 'tpl-title-hint', class: 'field-hint' }, 'What staff pick from the “/” menu, e.g. “Recall reminder”.')),
    h('div', { class: 'field' },
      h('label', { for: 'tpl-text', class: 'field-label' }, 'Text'),
      this.textInput,
      h('span', { id: 'tpl-text-hint', class: 'field-hint' },
        'Up to 2,000 characters. Placeholders are filled in when staff insert the template: ',
        PLACEHOLDERS.map(([p, what], i) => [i ? ', ' : '', h('code', null, p), ' (' + what + ')']), '.')),
    h('div', { class: 'placeholder-row', role: 'group', 'aria-label': 'Insert a placeholder' }, chips, this.count),
    this.formError,
    h('div', { class: 'filter-actions' }, this.saveBtn, this.cancelBtn));

    this.listStatus = h('p', { class: 'list-status', role: 'status' });
    this.list = h('ul', { class: 'tpl-list', 'aria-label': 'Templates' });
    return h('div', { class: 'page' },
      h('div', { class: 'page-inner narrow' },
        h('div', { class: 'page-head' },
          h('div', null,
            h('h1', { class: 'page-title' }, 'Reply templates'),
            h('p', { class: 'muted page-lead' },
              'Replies your staff insert in Chat by typing “/” and choosing a title; they can edit the text before sending.'))),
        this.form,
        h('div', { class: 'card tpl-card' }, this.listStatus, this.list)));
  }

  updateCount() {
    this.count.textContent = this.textInput.value.length + ' / 2,000';
  }

  insertPlaceholder(p) {
    const t = this.textInput;
    const start = t.selectionStart ?? t.value.length;
    const end = t.selectionEnd ?? start;
    t.value = t.value.slice(0, start) + p + t.value.slice(end);
    t.focus();
    t.setSelectionRange(start + p.length, start + p.length);
    this.updateCount();
  }

  async load() {
    this.listStatus.textContent = this.items.length ? '' : 'Loading templates…';
    try {
      const res = await api.listTemplates();
      this.items = res.messageTemplates || [];
      this.renderList();
    } catch (err) {
      this.listStatus.textContent = err.message;
    }
  }

  renderList() {
    clear(this.list);
    this.listStatus.textContent = this.items.length ? '' : 'No templates yet. Add the first one above.';
    for (const t of this.items) this.list.append(this.item(t));
  }

  item(t) {
    const actions = h('div', { class: 'tpl-actions' },
      h('button', { type: 'button', class: 'btn btn-secondary btn-small tpl-edit', 'aria-label': 'Edit ' + t.title, onclick: () => this.edit(t) }, 'Edit'),
      h('button', { type: 'button', class: 'btn btn-ghost btn-small tpl-delete', 'aria-label': 'Delete ' + t.title, onclick: () => confirmDelete() }, 'Delete'));
    const li = h('li', { class: 'tpl-item', dataset: { name: t.name } },
      h('div', { class: 'tpl-main' },
        h('h3', { class: 'tpl-item-title' }, t.title),
        h('p', { class: 'tpl-item-text' }, t.text),
        t.updateTime ? h('p', { class: 'muted tpl-item-time' }, 'Changed ', h('time', { datetime: t.updateTime }, fullTime(t.updateTime))) : null),
      actions);
    const confirmDelete = () => {
      const status = h('span', { class: 'tpl-confirm-text', role: 'alert' }, 'Delete “' + t.title + '”?');
      const yes = h('button', {
        type: 'button', class: 'btn btn-danger btn-small tpl-confirm-delete',
        onclick: async () => {
          yes.disabled = true;
          try {
            await api.deleteTemplate(t.name);
            forgetTemplates();
            if (this.editing && this.editing.name === t.name) this.edit(null);
            this.items = this.items.filter((x) => x.name !== t.name);
            this.renderList();
            this.listStatus.textContent = 'Deleted “' + t.title + '”.';
            this.titleInput.focus();
          } catch (err) {
            yes.disabled = false;
            status.textContent = err.message;
          }
        },
      }, 'Delete');
      const no = h('button', { type: 'button', class: 'btn btn-ghost btn-small', onclick: () => li.replaceWith(this.item(t)) }, 'Keep');
      actions.replaceChildren(status, yes, no);
      no.focus();
    };
    return li;
  }

  edit(t) {
    this.editing = t;
    this.formError.textContent = '';
    this.titleInput.value = t ? t.title : '';
    this.textInput.value = t ? t.text : '';
    this.formTitle.textContent = t ? 'Edit “' + t.title + '”' : 'New template';
    this.saveBtn.textContent = t ? 'Save changes' : 'Add template';
    this.cancelBtn.hidden = !t;
    this.updateCount();
    this.titleInput.focus();
  }

  async save() {
    const title = this.titleInput.value.trim();
    const text = this.textInput.value.trim();
    this.formError.textContent = '';
    if (!title || !text) {
      this.formError.textContent = 'A template needs a title and a text.';
      (title ? this.textInput : this.titleInput).focus();
      return;
    }
    this.saveBtn.disabled = true;
    this.form.setAttribute('aria-busy', 'true');
    try {
      const saved = this.editing
        ? await api.updateTemplate(this.editing.name, { title, text })
        : await api.createTemplate({ title, text });
      forgetTemplates();
      const i = this.items.findIndex((x) => x.name === saved.name);
      if (i >= 0) this.items[i] = saved; else this.items.push(saved);
      this.items.sort((a, b) => a.title.localeCompare(b.title) || (a.name < b.name ? -1 : 1));
      this.renderList();
      this.listStatus.textContent = (this.editing ? 'Saved “' : 'Added “') + saved.title + '”.';
      this.edit(null);
    } catch (err) {
      // The server's reason, e.g. an unknown placeholder it names.
      this.formError.replaceChildren(icon('alert'), h('span', null, err.message));
    } finally {
      this.saveBtn.disabled = false;
      this.form.removeAttribute('aria-busy');
    }
  }

  start() {
    document.title = 'Reply templates — clinicchat';
    this.updateCount();
    this.load();
    if (session.role !== 'practice_admin') this.listStatus.textContent = 'Only the practice admin manages templates.';
  }

  destroy() {}
}
