// The practice admin's Audit log (GET /v1/auditEvents and its :verify,
// :checkpoint and :export methods; practice_admin only — the API answers
// 403 to anyone else). Newest first, a page at a time, filtered with the
// API's filter grammar. Rows are written for a person: ids are resolved to
// names here, in the browser, for display only — the log holds no PHI.
//   patients:       GET /v1/patients (the practice's directory)
//   conversations:  GET /v1/conversations (active and archived)
//   staff:          GET /v1/staff (everyone the practice has seen signed
//                   in), and what this tab has learned (people.js);
//                   otherwise the user id.

import { api, allPages, saveFile } from './api.js';
import { knownStaff, learnName, staffName } from './people.js';
import { session } from './session.js';
import { h, icon, clear, fullTime, roleLabel } from './ui.js';

const PAGE_SIZE = 50;

// Actions, with how a row says them: [label for the filter, verb phrase].
const ACTIONS = {
  'conversation.create': ['Started a conversation', 'started'],
  'message.list': ['Opened a conversation', 'opened'],
  'conversation.view': ['Looked up a conversation', 'looked up'],
  'message.view': ['Opened a message', 'opened a message in'],
  'message.send': ['Sent a message', 'sent a message in'],
  'message.unlock': ['Unlocked a sensitive message', 'unlocked a sensitive message in'],
  'message.deliver': ['Received a message', 'received a message in'],
  'conversation.read': ['Marked a conversation read', 'read'],
  'conversation.pin': ['Pinned a conversation', 'pinned'],
  'conversation.unpin': ['Unpinned a conversation', 'unpinned'],
  'conversation.mute': ['Muted a conversation', 'muted'],
  'conversation.unmute': ['Unmuted a conversation', 'unmuted'],
  'conversation.archive': ['Archived a conversation', 'archived'],
  'conversation.export': ['Exported a conversation as PDF', 'exported as a PDF'],
  'conversation.assign': ['Assigned a conversation', 'assigned'],
  'template.create': ['Added a reply template', 'added'],
  'template.update': ['Changed a reply template', 'changed'],
  'template.delete': ['Deleted a reply template', 'deleted'],
  'attachment.upload': ['Uploaded a file', 'uploaded a file to'],
  'attachment.download': ['Downloaded a file', 'downloaded a file from'],
  'attachment.view': ['Looked up a file', 'looked up a file in'],
  'preferences.view': ['Viewed communication preferences', 'viewed'],
  'preferences.update': ['Changed communication preferences', 'changed'],
  'patient.view': ['Opened a patient record', 'opened'],
  'patient.upsert': ['Updated a patient record', 'updated'],
  'patient.search': ['Searched patients', 'searched'],
};

/** quote makes a filter string literal. */
function quote(v) {
  return '"' + String(v).replace(/\\/g, '\\\\').replace(/"/g, '\\"') + '"';
}

/** localDayStart is the RFC 3339 UTC time of local midnight of a YYYY-MM-DD date, plus days. */
function localDayStart(ymd, plusDays = 0) {
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(ymd || '');
  if (!m) return '';
  return new Date(Number(m[1]), Number(m[2]) - 1, Number(m[3]) + plusDays).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/** buildFilter joins the chosen filters with AND (SPEC.md section 3). */
export function buildFilter({ actor, action, resource, outcome, from, to }) {
  const parts = [];
  if (actor) parts.push('actor=' + quote(actor));
  if (action) parts.push('action=' + quote(action));
  if (resource) parts.push('resource=' + quote(resource));
  if (outcome) parts.push('outcome=' + quote(outcome));
  if (from) parts.push('time>=' + quote(localDayStart(from)));
  if (to) parts.push('time<' + quote(localDayStart(to, 1)));
  return parts.join(' AND ');
}

export class AuditView {
  constructor() {
    this.patients = new Map(); // "patients/p" → display name
    this.conversations = new Map(); // "conversations/c" → "patients/p"
    this.actorsSeen = new Set();
    this.filter = '';
    this.tokens = ['']; // page tokens of the pages shown so far (back navigation)
    this.page = 0;
    this.seq = 0;
    this.el = this.render();
  }

  // ---- names ---------------------------------------------------------------

  patientName(p) { return this.patients.get(p) || p.replace(/^patients\//, 'patient '); }

  actorName(actor) {
    if (actor === 'system') return 'clinicchat';
    if (actor === session.principal) return session.displayName;
    if (actor.startsWith('patients/')) return this.patientName(actor);
    return staffName(actor) || actor.replace(/^users\//, '');
  }

  /** object says what a resource is, from the actor's point of view. */
  object(ev) {
    const r = ev.resource || '';
    const parts = r.split('/');
    if (parts[0] === 'conversations' && parts[1]) {
      const patient = this.conversations.get('conversations/' + parts[1]);
      if (patient && patient === ev.actor) return 'their conversation with the practice';
      return 'the conversation with ' + (patient ? this.patientName(patient) : 'a patient (' + parts[1] + ')');
    }
    if (parts[0] === 'patients' && parts[1]) {
      const p = 'patients/' + parts[1];
      const own = p === ev.actor;
      if (parts[2] === 'communicationPreferences') {
        return own ? 'their communication preferences' : 'the communication preferences of ' + this.patientName(p);
      }
      return own ? 'their patient record' : 'the record of ' + this.patientName(p);
    }
    if (r === 'patients' || r === '') return 'the patient list';
    if (parts[0] === 'attachments') return 'a conversation (file ' + (parts[1] || '') + ')';
    if (parts[0] === 'messageTemplates') return parts[1] ? 'a reply template (' + parts[1] + ')' : 'the reply templates';
    return r;
  }

  /** sentence is the row as a person reads it: "Dr. Lee opened the conversation with Alice Johnson". */
  sentence(ev) {
    const who = this.actorName(ev.actor || '');
    const a = ACTIONS[ev.action];
    const obj = this.object(ev);
    let text;
    if (ev.action === 'conversation.export') text = who + ' exported ' + obj + ' as a PDF';
    else if (ev.action === 'patient.search') text = who + ' searched ' + obj;
    else if (a) text = who + ' ' + a[1] + ' ' + obj;
    else text = who + ' — ' + ev.action + ' — ' + obj;
    return ev.outcome === 'DENIED' ? text + ' (refused)' : text;
  }

  async loadDirectory() {
    const [patients, active, archived, staff] = await Promise.all([
      allPages((t) => api.listPatients({ pageToken: t }), 'patients'),
      allPages((t) => api.listConversations({ pageToken: t }), 'conversations'),
      allPages((t) => api.listConversations({ archived: true, pageToken: t }), 'conversations'),
      allPages((t) => api.listStaff({ pageToken: t }), 'staff').catch(() => []),
    ]);
    for (const m of staff) learnName(m.name, m.displayName);
    for (const p of patients) this.patients.set(p.name, p.displayName);
    for (const c of [...active, ...archived]) {
      this.conversations.set(c.name, c.patient);
      if (c.patientDisplayName && !this.patients.has(c.patient)) this.patients.set(c.patient, c.patientDisplayName);
    }
    this.fillSelects();
  }

  // ---- layout ----------------------------------------------------------------

  render() {
    const sel = (id, label, first) => {
      const s = h('select', { id, class: 'input' }, h('option', { value: '' }, first));
      return [s, h('div', { class: 'field' }, h('label', { for: id, class: 'field-label' }, label), s)];
    };
    let f;
    [this.actorSel, f] = sel('audit-actor', 'Who', 'Anyone');
    const actorField = f;
    [this.actionSel, f] = sel('audit-action', 'Action', 'Any action');
    const actionField = f;
    for (const [k, [label]] of Object.entries(ACTIONS)) this.actionSel.append(h('option', { value: k }, label));
    [this.resourceSel, f] = sel('audit-resource', 'Patient or conversation', 'Any');
    const resourceField = f;
    [this.outcomeSel, f] = sel('audit-outcome', 'Outcome', 'Any outcome');
    const outcomeField = f;
    this.outcomeSel.append(h('option', { value: 'ALLOWED' }, 'Allowed'), h('option', { value: 'DENIED' }, 'Refused'));
    this.fromInput = h('input', { type: 'date', id: 'audit-from', class: 'input' });
    this.toInput = h('input', { type: 'date', id: 'audit-to', class: 'input' });
    this.fillSelects();

    this.filterText = h('code', { class: 'filter-text' });
    const form = h('form', {
      class: 'card audit-filters', 'aria-label': 'Filter the audit log',
      onsubmit: (e) => { e.preventDefault(); this.apply(); },
    },
    h('div', { class: 'filter-grid' },
      actorField, actionField, resourceField, outcomeField,
      h('div', { class: 'field' }, h('label', { for: 'audit-from', class: 'field-label' }, 'From'), this.fromInput),
      h('div', { class: 'field' }, h('label', { for: 'audit-to', class: 'field-label' }, 'To (inclusive)'), this.toInput)),
    h('div', { class: 'filter-actions' },
      h('button', { type: 'submit', class: 'btn btn-primary', id: 'audit-apply' }, 'Apply filters'),
      h('button', { type: 'button', class: 'btn btn-ghost', id: 'audit-clear', onclick: () => this.clearFilters() }, 'Clear'),
      h('span', { class: 'filter-shown' }, this.filterText)));

    this.verifyOut = h('div', { class: 'verify-result', role: 'status', 'aria-live': 'polite' });
    this.toolStatus = h('p', { class: 'tool-status', role: 'status' });
    const tools = h('div', { class: 'audit-tools' },
      h('button', { type: 'button', class: 'btn btn-secondary', id: 'audit-verify', onclick: () => this.verify() },
        icon('shield'), 'Verify integrity'),
      h('button', { type: 'button', class: 'btn btn-secondary', id: 'audit-checkpoint', onclick: () => this.downloadCheckpoint() },
        icon('download'), 'Download checkpoint'),
      h('button', { type: 'button', class: 'btn btn-secondary', id: 'audit-export', onclick: () => this.exportLog() },
        icon('download'), 'Export (NDJSON)'));

    this.listStatus = h('p', { class: 'list-status', role: 'status' });
    this.rows = h('tbody');
    this.table = h('table', { class: 'audit-table' },
      h('caption', { class: 'visually-hidden' }, 'Audit events, newest first'),
      h('thead', null, h('tr', null,
        h('th', { scope: 'col', class: 'col-time' }, 'When'),
        h('th', { scope: 'col' }, 'What happened'),
        h('th', { scope: 'col', class: 'col-outcome' }, 'Outcome'))),
      this.rows);
    this.newerBtn = h('button', { type: 'button', class: 'btn btn-secondary btn-small', id: 'audit-newer', onclick: () => this.go(this.page - 1) }, 'Newer');
    this.olderBtn = h('button', { type: 'button', class: 'btn btn-secondary btn-small', id: 'audit-older', onclick: () => this.go(this.page + 1) }, 'Older');
    this.pageLabel = h('span', { class: 'muted page-label' });
    return h('div', { class: 'page' },
      h('div', { class: 'page-inner' },
        h('div', { class: 'page-head' },
          h('div', null,
            h('h1', { class: 'page-title' }, 'Audit log'),
            h('p', { class: 'muted page-lead' }, 'Every action in the practice’s chat, and every refused attempt, in a tamper-evident log. Newest first.')),
          tools),
        this.verifyOut,
        this.toolStatus,
        form,
        h('div', { class: 'card table-card' }, this.listStatus, this.table,
          h('div', { class: 'pager' }, this.newerBtn, this.pageLabel, this.olderBtn)),
        h('p', { class: 'muted footnote' },
          'Names are shown for reading only; the log itself records ids. Staff appear by the name of their latest sign-in, or by their user id when it carried none.')));
  }

  fillSelects() {
    const keep = (s) => s.value;
    const actor = keep(this.actorSel);
    const resource = keep(this.resourceSel);
    // Who: staff learned so far (and any actor seen in the log), then patients.
    const staff = new Map(knownStaff());
    staff.set(session.principal, session.displayName);
    for (const a of this.actorsSeen) if (a.startsWith('users/') && !staff.has(a)) staff.set(a, '');
    const byName = (a, b) => a[1].localeCompare(b[1]);
    clear(this.actorSel);
    this.actorSel.append(h('option', { value: '' }, 'Anyone'),
      h('optgroup', { label: 'Staff' }, [...staff].map(([p, n]) => [p, n || p.replace(/^users\//, '')]).sort(byName)
        .map(([p, n]) => h('option', { value: p }, n))),
      h('optgroup', { label: 'Patients' }, [...this.patients].sort(byName).map(([p, n]) => h('option', { value: p }, n))),
      h('option', { value: 'system' }, 'clinicchat (automatic)'));
    this.actorSel.value = actor;
    clear(this.resourceSel);
    const convs = [...this.conversations].map(([c, p]) => [c, this.patientName(p)]).sort(byName);
    this.resourceSel.append(h('option', { value: '' }, 'Any'),
      h('optgroup', { label: 'Conversation with' }, convs.map(([c, n]) => h('option', { value: c }, n))),
      h('optgroup', { label: 'Patient record and preferences of' },
        [...this.patients].sort(byName).map(([p, n]) => h('option', { value: p }, n))));
    this.resourceSel.value = resource;
  }

  // ---- listing -----------------------------------------------------------------

  currentFilter() {
    return buildFilter({
      actor: this.actorSel.value, action: this.actionSel.value, resource: this.resourceSel.value,
      outcome: this.outcomeSel.value, from: this.fromInput.value, to: this.toInput.value,
    });
  }

  apply() {
    if (this.fromInput.value && this.toInput.value && this.fromInput.value > this.toInput.value) {
      this.listStatus.textContent = 'The “From” date is after the “To” date.';
      return;
    }
    this.filter = this.currentFilter();
    this.tokens = [''];
    this.go(0);
  }

  clearFilters() {
    for (const s of [this.actorSel, this.actionSel, this.resourceSel, this.outcomeSel, this.fromInput, this.toInput]) s.value = '';
    this.apply();
  }

  async go(page) {
    if (page < 0 || page >= this.tokens.length) return;
    const seq = ++this.seq;
    this.filterText.textContent = this.filter ? 'filter: ' + this.filter : '';
    this.listStatus.textContent = 'Loading…';
    this.el.querySelector('.table-card')?.setAttribute('aria-busy', 'true');
    try {
      const res = await api.listAuditEvents({ filter: this.filter, pageToken: this.tokens[page], pageSize: PAGE_SIZE });
      if (seq !== this.seq) return;
      this.page = page;
      this.tokens.length = page + 1;
      if (res.nextPageToken) this.tokens.push(res.nextPageToken);
      this.show(res.auditEvents || []);
    } catch (err) {
      if (seq !== this.seq) return;
      clear(this.rows);
      this.listStatus.textContent = err.message;
    } finally {
      if (seq === this.seq) this.el.querySelector('.table-card')?.removeAttribute('aria-busy');
    }
  }

  show(events) {
    this.lastEvents = events;
    let newActor = false;
    for (const ev of events) {
      if (ev.actor && !this.actorsSeen.has(ev.actor)) { this.actorsSeen.add(ev.actor); newActor = true; }
    }
    if (newActor) this.fillSelects();
    clear(this.rows);
    this.listStatus.textContent = events.length ? '' : (this.filter ? 'No audit events match these filters.' : 'The audit log is empty.');
    this.table.hidden = !events.length;
    for (const ev of events) {
      const denied = ev.outcome === 'DENIED';
      const tech = [ev.action, ev.resource, roleLabel(ev.actorRole), '#' + (ev.index ?? 0)].filter(Boolean).join(' · ');
      // The service checks every listed event against the signed log:
      // TAMPERED is a row changed after it was logged.
      const tampered = ev.integrity === 'TAMPERED';
      const integrity = ev.integrity || 'INTEGRITY_UNSPECIFIED';
      this.rows.append(h('tr', {
        class: [denied ? 'denied' : '', tampered ? 'tampered' : ''].filter(Boolean).join(' '),
        dataset: { index: String(ev.index ?? 0), action: ev.action || '', integrity },
      },
        h('td', { class: 'col-time' }, h('time', { datetime: ev.time || '' }, fullTime(ev.time))),
        h('td', null,
          tampered ? h('p', { class: 'audit-tampered', role: 'note' }, icon('alert'),
            'Altered after it was logged: this event no longer matches the signed audit log, so do not rely on it. Run Verify integrity and report it to whoever runs clinicchat for your practice.') : null,
          h('p', { class: 'audit-sentence' }, this.sentence(ev)),
          h('p', { class: 'audit-tech' }, tech, ev.detail ? ' · ' + ev.detail : '',
            integrity === 'UNVERIFIED' ? h('span', { class: 'audit-unsealed', title: 'Not yet in a signed checkpoint: it is sealed within a minute or so.' }, ' · not yet sealed') : null)),
        h('td', { class: 'col-outcome' },
          h('span', { class: ['outcome', denied ? 'outcome-denied' : 'outcome-allowed'] }, denied ? 'Refused' : 'Allowed'))));
    }
    this.newerBtn.disabled = this.page === 0;
    this.olderBtn.disabled = this.page + 1 >= this.tokens.length;
    this.pageLabel.textContent = 'Page ' + (this.page + 1);
  }

  // ---- integrity, checkpoint, export --------------------------------------------

  async verify() {
    const btn = this.el.querySelector('#audit-verify');
    btn.disabled = true;
    clear(this.verifyOut);
    this.verifyOut.className = 'verify-result';
    this.verifyOut.append(h('p', null, 'Checking every event against the log’s hash tree…'));
    try {
      const v = await api.verifyAudit();
      clear(this.verifyOut);
      const facts = h('dl', { class: 'facts' },
        h('dt', null, 'Events checked'), h('dd', { class: 'v-checked' }, String(v.checked ?? 0)),
        h('dt', null, 'Tree size'), h('dd', { class: 'v-size' }, String(v.treeSize ?? 0)),
        h('dt', null, 'Root hash'), h('dd', { class: 'v-root hash' }, v.rootHash || '—'));
      if (v.valid) {
        this.verifyOut.classList.add('verify-ok');
        this.verifyOut.append(h('p', { class: 'verify-title' }, icon('shield'), 'The audit log is intact'), facts);
      } else {
        this.verifyOut.classList.add('verify-bad');
        this.verifyOut.append(
          h('p', { class: 'verify-title' }, icon('alert'),
            'The audit log does not verify: the first bad event is #' + (v.firstBadIndex ?? 0)),
          v.reason ? h('p', null, v.reason) : null, facts);
      }
    } catch (err) {
      clear(this.verifyOut);
      this.verifyOut.classList.add('verify-bad');
      this.verifyOut.append(h('p', null, err.message));
    } finally {
      btn.disabled = false;
    }
  }

  async downloadCheckpoint() {
    this.toolStatus.textContent = '';
    try {
      const cp = await api.auditCheckpoint();
      const blob = new Blob([JSON.stringify(cp, null, 2) + '\n'], { type: 'application/json' });
      saveFile(blob, 'audit-checkpoint-' + session.practice + '-' + (cp.treeSize ?? 0) + '.json');
      this.toolStatus.textContent = 'Checkpoint downloaded (tree size ' + (cp.treeSize ?? 0) + '). Keep it outside clinicchat: a later Verify can prove the log still contains it.';
    } catch (err) {
      this.toolStatus.textContent = err.message;
    }
  }

  async exportLog() {
    this.toolStatus.textContent = '';
    try {
      const res = await api.exportAudit(this.filter);
      const blob = await res.blob();
      const day = new Date().toISOString().slice(0, 10);
      saveFile(blob, 'audit-log-' + session.practice + '-' + day + '.ndjson');
      this.toolStatus.textContent = 'Exported ' + (this.filter ? 'the filtered' : 'the whole') + ' audit log as NDJSON (one event per line, oldest first).';
    } catch (err) {
      this.toolStatus.textContent = err.message;
    }
  }

  async start() {
    this.go(0);
    try {
      await this.loadDirectory();
      // Rows shown before the names arrived: write them again.
      if (this.lastEvents) this.show(this.lastEvents);
    } catch (err) {
      console.debug('audit directory', err.message);
    }
  }

  destroy() { this.seq++; }
}
