// The Chat page (staff) and the Inbox (patients): a sidebar of
// conversations and the open thread. Staff also search, start new
// conversations, see archived threads, filter to the threads that need a
// reply (with how long the patient has waited) or are assigned to them, and
// from the thread's menu (or a right-click on a thread) pin, mute, assign
// the thread to a colleague and export it as a PDF for the patient's chart.

import { api, ApiError, allPages, saveFile } from './api.js';
import { Composer } from './composer.js';
import { BlobCache, STATUS_RANK, isFromPractice, messageElement, seqOf } from './messages.js';
import { learnName } from './people.js';
import { session } from './session.js';
import {
  h, icon, clear, shortTime, dayLabel, dayKey, formatDate, initials, periodLabel, roleLabel, showMenu, toast,
} from './ui.js';

const PAGE_SIZE = 50;

function byListOrder(a, b) {
  if (!!a.pinned !== !!b.pinned) return a.pinned ? -1 : 1;
  const ta = Date.parse(a.lastMessageTime || a.createTime || 0) || 0;
  const tb = Date.parse(b.lastMessageTime || b.createTime || 0) || 0;
  if (ta !== tb) return tb - ta;
  return a.name < b.name ? -1 : 1;
}

// Longest-waiting first, as the API lists ?awaitingReply=true.
function byWaiting(a, b) {
  const ta = Date.parse(a.awaitingReplySince || 0) || 0;
  const tb = Date.parse(b.awaitingReplySince || 0) || 0;
  if (ta !== tb) return ta - tb;
  return a.name < b.name ? -1 : 1;
}

/** waitedLabel says how long a patient has waited: "waiting 5 min", "waiting 2 h", "waiting 3 d". */
export function waitedLabel(since, now = Date.now()) {
  const t = Date.parse(since || '');
  if (!t) return '';
  const min = Math.max(0, Math.floor((now - t) / 60000));
  if (min < 1) return 'waiting < 1 min';
  if (min < 60) return 'waiting ' + min + ' min';
  const hours = Math.floor(min / 60);
  if (hours < 48) return 'waiting ' + hours + ' h';
  return 'waiting ' + Math.floor(hours / 24) + ' d';
}

// The sidebar's filters (staff): [key, label].
const FILTERS = [['all', 'All'], ['needs-reply', 'Needs reply'], ['mine', 'Assigned to me']];

function parentOf(messageName) {
  const i = String(messageName).indexOf('/messages/');
  return i > 0 ? messageName.slice(0, i) : '';
}

export class ChatView {
  /** opts: {staff: boolean, devMode: boolean, archiveAfterSeconds: number, reauthenticate(): Promise} */
  constructor(opts) {
    this.opts = opts;
    this.staff = opts.staff;
    this.tab = 'active';
    this.filter = 'all'; // 'all' | 'needs-reply' | 'mine'
    this.query = '';
    this.conversations = [];
    this.current = null; // {conv, items: Map, nextPageToken, composer, ...}
    this.listSeq = 0;
    this.blobs = new BlobCache();
    this.el = this.render();
  }

  // ---- layout ----------------------------------------------------------------

  render() {
    const title = this.staff ? 'Chat' : 'Inbox';
    this.list = h('ul', {
      class: 'thread-list', 'aria-label': 'Conversations',
      onkeydown: (e) => this.onListKey(e),
    });
    this.listStatus = h('p', { class: 'list-status', role: 'status' });
    const head = h('div', { class: 'sidebar-head' }, h('h1', { class: 'page-title' }, title));
    const side = h('aside', { class: 'sidebar', 'aria-label': 'Conversations' }, head);
    if (!this.staff) {
      // The patient's communication preferences, from the Inbox; and, while
      // chat is off, what that means and how to turn it back on.
      side.append(h('a', { href: '#preferences', class: 'prefs-link' }, icon('settings'), 'Communication preferences'));
      this.optOutNotice = h('div', { class: 'optout-notice', role: 'status', hidden: true });
      side.append(this.optOutNotice);
    }
    if (this.staff) {
      head.append(h('button', {
        type: 'button', class: 'btn btn-primary new-conv', onclick: () => this.newConversation(),
      }, icon('plus'), 'New conversation'));
      this.searchInput = h('input', {
        type: 'search', id: 'conv-search', class: 'search-input', placeholder: 'Search by patient name',
        autocomplete: 'off', spellcheck: 'false',
        oninput: () => {
          clearTimeout(this.searchTimer);
          this.searchTimer = setTimeout(() => { this.query = this.searchInput.value.trim(); this.loadList(); }, 200);
        },
      });
      this.tabs = {
        active: h('button', { type: 'button', role: 'tab', id: 'tab-active', 'aria-selected': 'true', 'aria-controls': 'thread-list-panel', onclick: () => this.setTab('active') }, 'Active'),
        archived: h('button', { type: 'button', role: 'tab', id: 'tab-archived', 'aria-selected': 'false', tabindex: '-1', 'aria-controls': 'thread-list-panel', onclick: () => this.setTab('archived') }, 'Archived'),
      };
      const tablist = h('div', { class: 'tabs', role: 'tablist', 'aria-label': 'Which conversations', onkeydown: (e) => this.onTabKey(e) },
        this.tabs.active, this.tabs.archived);
      this.filterBtns = Object.fromEntries(FILTERS.map(([key, label]) => [key, h('button', {
        type: 'button', id: 'filter-' + key, class: 'filter-chip', 'aria-pressed': String(key === this.filter),
        onclick: () => this.setFilter(key),
      }, label)]));
      side.append(
        h('div', { class: 'search', role: 'search' },
          h('label', { for: 'conv-search', class: 'visually-hidden' }, 'Search conversations by patient name'),
          icon('search', 'search-icon'), this.searchInput),
        h('div', { class: 'filters', role: 'group', 'aria-label': 'Show' }, Object.values(this.filterBtns)),
        tablist);
    }
    side.append(h('div', { id: 'thread-list-panel', class: 'thread-list-panel', role: this.staff ? 'tabpanel' : null, 'aria-labelledby': this.staff ? 'tab-active' : null },
      this.listStatus, this.list));
    this.side = side;
    this.pane = h('section', { class: 'thread-pane', 'aria-label': 'Conversation' });
    this.renderEmptyPane();
    return h('div', { class: 'layout' }, side, this.pane);
  }

  renderEmptyPane() {
    clear(this.pane);
    this.pane.append(h('div', { class: 'empty-pane' },
      h('div', { class: 'empty-art' }, icon('chat')),
      h('h2', null, this.staff ? 'Select a conversation' : 'Your messages'),
      h('p', { class: 'muted' }, this.staff
        ? 'Choose a patient on the left, or start a new conversation.'
        : 'Messages from your dental practice appear here. Choose a conversation to read and reply.')));
    this.el?.classList.remove('thread-open');
  }

  /** onListKey moves between threads with the arrow keys, Home and End. */
  onListKey(e) {
    const items = [...this.list.querySelectorAll('.thread')];
    const i = items.indexOf(document.activeElement);
    if (i < 0 || e.altKey || e.ctrlKey || e.metaKey) return;
    const to = { ArrowDown: i + 1, ArrowUp: i - 1, Home: 0, End: items.length - 1 }[e.key];
    if (to === undefined || to < 0 || to >= items.length) return;
    e.preventDefault();
    items[to].focus();
  }

  onTabKey(e) {
    if (e.key !== 'ArrowLeft' && e.key !== 'ArrowRight') return;
    e.preventDefault();
    const next = this.tab === 'active' ? 'archived' : 'active';
    this.setTab(next);
    this.tabs[next].focus();
  }

  setFilter(key) {
    if (this.filter === key) return;
    this.filter = key;
    for (const [k, b] of Object.entries(this.filterBtns)) b.setAttribute('aria-pressed', String(k === key));
    this.conversations = [];
    clear(this.list);
    this.loadList();
  }

  /** inView says whether a conversation belongs in the list as filtered now. */
  inView(c) {
    if (!this.staff) return true;
    if ((c.state === 'ARCHIVED') !== (this.tab === 'archived')) return false;
    if (this.filter === 'needs-reply') return !!c.awaitingReplySince;
    if (this.filter === 'mine') return c.assignee === session.principal;
    return true;
  }

  sortList() {
    this.conversations.sort(this.staff && this.filter === 'needs-reply' ? byWaiting : byListOrder);
  }

  setTab(tab) {
    if (this.tab === tab) return;
    this.tab = tab;
    for (const [k, b] of Object.entries(this.tabs)) {
      b.setAttribute('aria-selected', String(k === tab));
      b.tabIndex = k === tab ? 0 : -1;
    }
    this.list.parentElement.setAttribute('aria-labelledby', 'tab-' + tab);
    this.loadList();
  }

  // ---- the conversation list -----------------------------------------------

  async loadList() {
    const seq = ++this.listSeq;
    this.listStatus.textContent = this.conversations.length ? '' : 'Loading conversations…';
    try {
      let list;
      if (this.staff) {
        const res = await api.listConversations({
          query: this.query, archived: this.tab === 'archived',
          awaitingReply: this.filter === 'needs-reply', assignee: this.filter === 'mine' ? session.principal : '',
        });
        list = res.conversations || [];
      } else {
        // A patient's Inbox keeps their thread even once it is archived.
        const [active, archived] = await Promise.all([
          api.listConversations({}), api.listConversations({ archived: true })]);
        list = [...(active.conversations || []), ...(archived.conversations || [])];
      }
      if (seq !== this.listSeq) return;
      this.conversations = list.slice();
      this.sortList();
      this.renderList();
    } catch (err) {
      if (seq !== this.listSeq) return;
      this.listStatus.textContent = err.message;
    }
  }

  renderList() {
    const focusedName = document.activeElement?.closest?.('.thread')?.dataset.name;
    clear(this.list);
    if (!this.conversations.length) {
      this.listStatus.textContent = this.query
        ? 'No conversation with a patient named “' + this.query + '”' + (this.filter === 'all' ? '.' : ' here.')
        : this.staff && this.filter === 'needs-reply' ? 'No patient is waiting for a reply.'
        : this.staff && this.filter === 'mine' ? 'No conversation is assigned to you.'
        : this.tab === 'archived'
          ? 'No archived conversations. Threads are archived after ' +
            periodLabel(this.opts.archiveAfterSeconds || 365 * 86400) + ' without messages.'
          : this.staff ? 'No conversations yet. Start one with New conversation.' : 'No messages yet. Your practice will message you here.';
    } else {
      this.listStatus.textContent = '';
    }
    for (const c of this.conversations) this.list.append(this.threadItem(c));
    this.tickWaiting();
    if (focusedName) this.list.querySelector(`.thread[data-name="${CSS.escape(focusedName)}"]`)?.focus();
    this.updateTitle();
  }

  threadItem(c) {
    const name = this.staff ? (c.patientDisplayName || c.patient) : 'Your dental practice';
    const current = this.current && this.current.conv.name === c.name;
    const unread = Number(c.unreadCount) || 0;
    const flags = [];
    if (c.pinned) flags.push(h('span', { class: 'flag', title: 'Pinned' }, icon('pin'), h('span', { class: 'visually-hidden' }, 'Pinned')));
    if (c.muted) flags.push(h('span', { class: 'flag', title: 'Muted' }, icon('mute'), h('span', { class: 'visually-hidden' }, 'Muted')));
    // Staff see who owns the thread and how long the patient has waited.
    const tags = [];
    if (this.staff && c.awaitingReplySince) {
      tags.push(h('span', { class: 'tag tag-waiting', dataset: { since: c.awaitingReplySince } },
        icon('clock'), h('span', { class: 'waited' }, waitedLabel(c.awaitingReplySince))));
    }
    if (this.staff && c.assignee) {
      tags.push(h('span', { class: 'tag tag-assignee', title: 'Assigned to ' + this.assigneeName(c) },
        h('span', { class: 'visually-hidden' }, 'Assigned to '), this.assigneeName(c)));
    }
    const btn = h('button', {
      type: 'button', class: ['thread', unread ? 'unread' : '', c.pinned ? 'pinned' : ''],
      dataset: { name: c.name },
      'aria-current': current ? 'true' : null,
      onclick: () => this.open(c),
      oncontextmenu: this.staff ? (e) => this.threadMenu(e, c, btn) : null,
    },
    h('span', { class: 'avatar', 'aria-hidden': 'true' }, initials(name)),
    h('span', { class: 'thread-main' },
      h('span', { class: 'thread-top' },
        h('span', { class: 'thread-name' }, name),
        flags,
        h('time', { class: 'thread-time', datetime: c.lastMessageTime || '' }, shortTime(c.lastMessageTime))),
      h('span', { class: 'thread-bottom' },
        h('span', { class: 'thread-preview' }, c.lastMessagePreview || (c.state === 'ARCHIVED' ? 'Archived' : 'No messages yet')),
        unread ? h('span', { class: 'badge', 'aria-label': unread + ' unread' }, String(unread)) : null),
      tags.length ? h('span', { class: 'thread-tags' }, tags) : null));
    return h('li', null, btn);
  }

  assigneeName(c) {
    if (c.assignee === session.principal) return 'you';
    return c.assigneeDisplayName || String(c.assignee).replace(/^users\//, '');
  }

  /** tickWaiting refreshes the "waiting …" labels, and again each minute while shown. */
  tickWaiting() {
    clearTimeout(this.waitTimer);
    const labels = this.list.querySelectorAll('.tag-waiting');
    for (const el of labels) el.querySelector('.waited').textContent = waitedLabel(el.dataset.since);
    if (labels.length) this.waitTimer = setTimeout(() => this.tickWaiting(), 30000);
  }

  threadMenu(e, c, btn) {
    e.preventDefault();
    let x = e.clientX, y = e.clientY;
    if (!x && !y) { // opened from the keyboard (context-menu key, Shift+F10)
      const r = btn.getBoundingClientRect();
      x = r.left + 24; y = r.bottom - 4;
    }
    this.openActions(c, { x, y, returnTo: btn });
  }

  /** openActions shows a thread's menu; from: 'head' (the open thread's ⋯ button) or 'list'. */
  openActions(c, { x, y, returnTo, from = 'list' }) {
    const who = c.patientDisplayName || 'this conversation';
    showMenu({
      x, y, returnTo, label: 'Actions for ' + who,
      items: [
        { id: 'pin', label: c.pinned ? 'Unpin' : 'Pin to top', icon: 'pin', onSelect: () => this.act(c, c.pinned ? 'unpin' : 'pin') },
        { id: 'mute', label: c.muted ? 'Unmute' : 'Mute notifications', icon: c.muted ? 'bell' : 'mute', onSelect: () => this.act(c, c.muted ? 'unmute' : 'mute') },
        { id: 'assign', label: 'Assign…', icon: 'user', onSelect: () => this.assignDialog(c, returnTo, from) },
        { id: 'export', label: 'Export PDF', icon: 'download', onSelect: () => this.exportPDF(c) },
      ],
    });
  }

  // ---- assignment and export (staff) -----------------------------------------

  /**
   * assignDialog offers the practice's staff (GET /v1/staff: everyone the
   * practice has seen signed in, by name) and, when assigned, Unassign.
   */
  assignDialog(c, returnTo, from) {
    const who = c.patientDisplayName || 'this conversation';
    const list = h('ul', { class: 'staff-list', 'aria-label': 'Staff' }, h('li', { class: 'muted' }, 'Loading staff…'));
    const status = h('p', { class: 'picker-status', role: 'status' });
    const current = h('p', { class: 'muted dialog-sub assign-current' },
      c.assignee ? 'Assigned to ' + this.assigneeName(c) + '.' : 'Not assigned.');
    const unassign = h('button', {
      type: 'button', class: 'btn btn-secondary btn-small', id: 'assign-clear', hidden: !c.assignee,
      onclick: () => this.assign(c, '', dialog, status),
    }, 'Unassign');
    const dialog = h('dialog', { class: 'dialog assign-dialog', 'aria-labelledby': 'assign-title' },
      h('div', { class: 'dialog-head' },
        h('h2', { id: 'assign-title', tabindex: '-1', autofocus: true }, 'Assign ' + who),
        h('button', { type: 'button', class: 'icon-btn', 'aria-label': 'Close', onclick: () => dialog.close() }, icon('close'))),
      current,
      h('div', { class: 'dialog-sub assign-actions' }, unassign),
      status, list);
    // Focus goes back where the menu was opened; the assignment may have
    // drawn that button or thread again meanwhile.
    dialog.addEventListener('close', () => {
      dialog.remove();
      const back = returnTo?.isConnected ? returnTo : from === 'head'
        ? this.pane.querySelector('.thread-head [aria-haspopup="menu"]')
        : this.list.querySelector(`.thread[data-name="${CSS.escape(c.name)}"]`);
      back?.focus();
    });
    document.body.append(dialog);
    dialog.showModal();
    (async () => {
      try {
        const staff = await allPages((t) => api.listStaff({ pageToken: t }), 'staff');
        clear(list);
        if (!staff.length) list.append(h('li', { class: 'muted empty' }, 'No staff yet.'));
        for (const m of staff) {
          learnName(m.name, m.displayName);
          const mine = m.name === c.assignee;
          list.append(h('li', null, h('button', {
            type: 'button', class: 'patient staff-option', dataset: { name: m.name }, 'aria-pressed': String(mine),
            onclick: () => this.assign(c, m.name, dialog, status),
          },
          h('span', { class: 'avatar', 'aria-hidden': 'true' }, initials(m.displayName)),
          h('span', { class: 'patient-main' },
            h('span', { class: 'patient-name' }, m.displayName || m.name,
              m.name === session.principal ? ' (you)' : ''),
            h('span', { class: 'patient-desc' }, roleLabel(m.role), mine ? ' · assigned now' : '')))));
        }
        (list.querySelector('[aria-pressed="true"]') || list.querySelector('button'))?.focus();
      } catch (err) {
        clear(list);
        status.textContent = err.message;
        status.classList.add('error-text');
      }
    })();
  }

  async assign(c, assignee, dialog, status) {
    status.classList.remove('error-text');
    status.textContent = assignee ? 'Assigning…' : 'Unassigning…';
    try {
      const updated = await api.assign(c.name, assignee);
      dialog.close();
      this.applyConversation(updated);
      const who = updated.patientDisplayName || 'Conversation';
      toast(assignee ? who + ' assigned to ' + this.assigneeName(updated) : who + ' unassigned');
    } catch (err) {
      status.textContent = err.message;
      status.classList.add('error-text');
    }
  }

  /** exportPDF downloads the thread as a PDF for the patient's chart (audited). */
  async exportPDF(c) {
    toast('Preparing the PDF…');
    try {
      const res = await api.exportConversation(c.name);
      const blob = await res.blob();
      const m = /filename="([^"]+)"/.exec(res.headers.get('Content-Disposition') || '');
      saveFile(blob, m ? m[1] : 'conversation.pdf');
      toast('Exported the conversation with ' + (c.patientDisplayName || 'the patient') + ' as a PDF');
    } catch (err) {
      toast(err.message);
    }
  }

  async act(c, action) {
    try {
      const updated = await api.conversationAction(c.name, action);
      this.applyConversation(updated);
      const who = updated.patientDisplayName || 'Conversation';
      toast({ pin: who + ' pinned to the top', unpin: who + ' unpinned', mute: who + ' muted', unmute: who + ' unmuted' }[action]);
    } catch (err) {
      toast(err.message);
    }
  }

  /** applyConversation merges a conversation (from an answer or an event). */
  applyConversation(c) {
    const i = this.conversations.findIndex((x) => x.name === c.name);
    const inTab = this.inView(c);
    const prev = i >= 0 ? this.conversations[i] : null;
    if (i >= 0) {
      if (inTab) this.conversations[i] = c;
      else this.conversations.splice(i, 1);
    } else if (inTab) {
      if (this.query) { this.scheduleListReload(); } else { this.conversations.push(c); }
    }
    this.sortList();
    this.renderList();
    if (this.current && this.current.conv.name === c.name) {
      this.current.conv = c;
      this.renderThreadHead();
    }
    this.notify(prev, c);
  }

  scheduleListReload() {
    clearTimeout(this.reloadTimer);
    this.reloadTimer = setTimeout(() => this.loadList(), 300);
  }

  notify(prev, c) {
    const before = prev ? Number(prev.unreadCount) || 0 : 0;
    const now = Number(c.unreadCount) || 0;
    if (now <= before || c.muted) return;
    if (this.current && this.current.conv.name === c.name && document.visibilityState === 'visible') return;
    toast(this.staff ? 'New message from ' + (c.patientDisplayName || 'a patient') : 'New message from your dental practice');
  }

  updateTitle() {
    const unread = this.conversations.filter((c) => !c.muted).reduce((n, c) => n + (Number(c.unreadCount) || 0), 0);
    document.title = (unread ? '(' + unread + ') ' : '') + (this.staff ? 'Chat' : 'Inbox') + ' — clinicchat';
  }

  // ---- new conversation (staff) ---------------------------------------------

  newConversation() {
    const input = h('input', {
      type: 'search', id: 'patient-search', class: 'search-input', autocomplete: 'off', spellcheck: 'false',
      placeholder: 'Patient name',
      oninput: () => { clearTimeout(timer); timer = setTimeout(() => { timer = null; search(); }, 200); },
      onkeydown: async (e) => {
        // Enter starts the conversation with the first patient who can chat.
        if (e.key !== 'Enter' || e.isComposing) return;
        e.preventDefault();
        if (timer) { clearTimeout(timer); timer = null; await search(); }
        results.querySelector('.patient:not(:disabled)')?.click();
      },
    });
    const results = h('ul', { class: 'patient-results', 'aria-label': 'Patients' });
    const status = h('p', { class: 'picker-status', role: 'status' });
    const dialog = h('dialog', { class: 'dialog new-conv-dialog', 'aria-labelledby': 'new-conv-title' },
      h('div', { class: 'dialog-head' },
        h('h2', { id: 'new-conv-title' }, 'New conversation'),
        h('button', { type: 'button', class: 'icon-btn', 'aria-label': 'Close', onclick: () => dialog.close() }, icon('close'))),
      h('div', { class: 'search' },
        h('label', { for: 'patient-search', class: 'field-label' }, 'Search for a patient'),
        h('div', { class: 'search-field' }, icon('search', 'search-icon'), input)),
      status, results);
    let timer;
    let ctrl = null;
    const search = async () => {
      if (ctrl) ctrl.abort();
      ctrl = new AbortController();
      const mine = ctrl;
      status.textContent = 'Searching…';
      try {
        const res = await api.searchPatients(input.value.trim(), mine.signal);
        if (mine !== ctrl) return;
        const patients = res.patients || [];
        clear(results);
        status.textContent = patients.length ? patients.length + (patients.length === 1 ? ' patient' : ' patients') : 'No patient matches “' + input.value.trim() + '”.';
        for (const p of patients) results.append(this.patientItem(p, dialog));
      } catch (err) {
        if (err.name === 'AbortError') return;
        status.textContent = err.message;
      }
    };
    dialog.addEventListener('close', () => { dialog.remove(); });
    document.body.append(dialog);
    dialog.showModal();
    input.focus();
    search();
  }

  patientItem(p, dialog) {
    const reason = p.chatEligible ? '' : p.ineligibleReason === 'NO_PORTAL_ACCOUNT'
      ? 'No portal account — offer SMS instead'
      : p.ineligibleReason === 'CHAT_OPTED_OUT' ? 'Opted out of chat — offer SMS instead' : 'Cannot chat — offer SMS instead';
    const dob = p.dateOfBirth ? 'Born ' + formatDate(p.dateOfBirth) : '';
    const descId = 'pdesc-' + String(p.name).replace(/[^a-z0-9]/gi, '-');
    const btn = h('button', {
      type: 'button', class: ['patient', p.chatEligible ? '' : 'ineligible'],
      dataset: { name: p.name },
      'aria-describedby': descId,
      disabled: !p.chatEligible,
      onclick: async () => {
        btn.setAttribute('aria-busy', 'true');
        try {
          const conv = await api.createConversation(p.name);
          dialog.close();
          if (this.tab !== 'active') this.setTab('active');
          this.applyConversation(conv);
          this.open(conv);
        } catch (err) {
          btn.removeAttribute('aria-busy');
          dialog.querySelector('.picker-status').textContent = err.message;
        }
      },
    },
    h('span', { class: 'avatar', 'aria-hidden': 'true' }, initials(p.displayName)),
    h('span', { class: 'patient-main' },
      h('span', { class: 'patient-name' }, p.displayName),
      h('span', { id: descId, class: 'patient-desc' },
        dob, p.externalId ? h('span', { class: 'muted' }, ' · ' + p.externalId) : null,
        reason ? h('span', { class: 'ineligible-reason' }, reason) : null)));
    return h('li', null, btn);
  }

  // ---- the open thread ----------------------------------------------------------

  async open(c) {
    if (this.current && this.current.conv.name === c.name) {
      this.current.composer.focus();
      this.markRead();
      return;
    }
    this.closeThread();
    const cur = {
      conv: c, items: new Map(), nextPageToken: '', seq: 0,
    };
    this.current = cur;
    this.el.classList.add('thread-open');
    for (const b of this.list.querySelectorAll('.thread')) {
      if (b.dataset.name === c.name) b.setAttribute('aria-current', 'true'); else b.removeAttribute('aria-current');
    }
    clear(this.pane);
    cur.head = h('header', { class: 'thread-head' });
    cur.olderBtn = h('button', { type: 'button', class: 'btn btn-secondary btn-small load-older', hidden: true, onclick: () => this.loadOlder() }, 'Load older messages');
    cur.listEl = h('ol', { class: 'messages', 'aria-label': 'Messages' });
    cur.status = h('p', { class: 'thread-status', role: 'status' }, 'Loading messages…');
    // Announced as they arrive, but not the history loaded on opening.
    cur.scroller = h('div', { class: 'scroller', role: 'log', 'aria-live': 'off', 'aria-relevant': 'additions', tabindex: '0', 'aria-label': 'Messages' },
      h('div', { class: 'older' }, cur.olderBtn), cur.status, cur.listEl);
    cur.composer = new Composer({
      conversation: c.name, patient: c.patient, patientName: c.patientDisplayName, staff: this.staff,
      onSent: (m) => { this.upsert(m); this.scrollToBottom(); },
    });
    this.pane.append(cur.head, cur.scroller, cur.composer.el);
    this.renderThreadHead();
    await this.loadNewest(cur);
    if (this.current !== cur) return;
    cur.scroller.setAttribute('aria-live', 'polite');
    this.scrollToBottom();
    cur.composer.focus();
    this.markRead();
  }

  closeThread() {
    if (!this.current) return;
    this.current = null;
    this.blobs.clear();
  }

  back() {
    const was = this.current?.conv.name;
    this.closeThread();
    this.renderEmptyPane();
    for (const b of this.list.querySelectorAll('.thread[aria-current]')) b.removeAttribute('aria-current');
    const items = [...this.list.querySelectorAll('.thread')];
    (items.find((b) => b.dataset.name === was) || items[0])?.focus();
  }

  renderThreadHead() {
    const cur = this.current;
    const c = cur.conv;
    // Drawn again on every change of the thread: keep the focus on the same button.
    const focused = cur.head.contains(document.activeElement) ? document.activeElement.getAttribute('aria-label') : null;
    clear(cur.head);
    const name = this.staff ? (c.patientDisplayName || c.patient) : 'Your dental practice';
    const sub = [];
    if (this.staff) {
      if (c.state === 'ARCHIVED') sub.push('Archived — a new message reactivates it');
      if (c.assignee) sub.push('Assigned to ' + this.assigneeName(c));
      if (c.awaitingReplySince) sub.push(waitedLabel(c.awaitingReplySince).replace(/^waiting/, 'Waiting'));
      if (c.pinned) sub.push('Pinned');
      if (c.muted) sub.push('Muted');
    } else {
      sub.push('Secure messages with your care team');
    }
    cur.head.append(
      h('button', { type: 'button', class: 'icon-btn back-btn', 'aria-label': 'Back to conversations', onclick: () => this.back() }, icon('back')),
      h('span', { class: 'avatar', 'aria-hidden': 'true' }, initials(name)),
      h('div', { class: 'thread-title' },
        h('h2', null, name),
        sub.length ? h('p', { class: 'muted thread-sub' }, sub.join(' · ')) : null));
    if (this.staff) {
      const more = h('button', {
        type: 'button', class: 'icon-btn', 'aria-label': 'Conversation actions', 'aria-haspopup': 'menu',
        onclick: () => {
          const r = more.getBoundingClientRect();
          this.openActions(cur.conv, { x: r.right - 200, y: r.bottom + 4, returnTo: more, from: 'head' });
        },
      }, icon('more', 'icon-more'));
      cur.head.append(more);
    }
    if (focused) cur.head.querySelector(`[aria-label="${CSS.escape(focused)}"]`)?.focus();
  }

  async loadNewest(cur) {
    try {
      const res = await api.listMessages(cur.conv.name, { pageSize: PAGE_SIZE });
      if (this.current !== cur) return;
      cur.status.textContent = '';
      if (!cur.loadedOnce) {
        cur.loadedOnce = true;
        cur.nextPageToken = res.nextPageToken || '';
        cur.olderBtn.hidden = !cur.nextPageToken;
      }
      for (const m of res.messages || []) this.upsert(m, { quiet: true });
      if (!cur.items.size) cur.status.textContent = this.staff ? 'No messages yet. Say hello below.' : 'No messages yet.';
    } catch (err) {
      if (this.current !== cur) return;
      cur.status.textContent = err.message;
    }
  }

  async loadOlder() {
    const cur = this.current;
    if (!cur || !cur.nextPageToken) return;
    cur.olderBtn.disabled = true;
    const before = cur.scroller.scrollHeight - cur.scroller.scrollTop;
    try {
      const res = await api.listMessages(cur.conv.name, { pageToken: cur.nextPageToken, pageSize: PAGE_SIZE });
      if (this.current !== cur) return;
      for (const m of res.messages || []) this.upsert(m, { quiet: true });
      cur.nextPageToken = res.nextPageToken || '';
      cur.olderBtn.hidden = !cur.nextPageToken;
      cur.scroller.scrollTop = cur.scroller.scrollHeight - before;
    } catch (err) {
      toast(err.message);
    } finally {
      cur.olderBtn.disabled = false;
    }
  }

  /** upsert adds or replaces a message of the open thread, in order. */
  upsert(m, { quiet = false } = {}) {
    const cur = this.current;
    if (!cur || parentOf(m.name) !== cur.conv.name) return;
    const old = cur.items.get(m.name);
    if (old) {
      // Receipts only move forward; an older copy must not undo one.
      if ((STATUS_RANK[old.msg.status] || 0) > (STATUS_RANK[m.status] || 0)) {
        m = { ...m, status: old.msg.status, deliverTime: old.msg.deliverTime, readTime: old.msg.readTime };
      }
      if (old.msg.status === m.status && old.msg.locked === m.locked && old.msg.text === m.text &&
        (old.msg.attachments || []).length === (m.attachments || []).length) {
        old.msg = m;
        return;
      }
    }
    const nearBottom = this.nearBottom();
    const el = messageElement(m, {
      blobs: this.blobs, patientName: cur.conv.patientDisplayName,
      canUnlockHere: this.opts.devMode, onUnlock: () => this.unlock(),
    });
    if (old) {
      old.el.replaceWith(el);
    } else {
      const seq = seqOf(m);
      let after = null;
      for (const li of cur.listEl.children) {
        if (Number(li.dataset.seq) > seq) { after = li; break; }
      }
      cur.listEl.insertBefore(el, after);
      cur.status.textContent = '';
    }
    cur.items.set(m.name, { msg: m, el });
    this.daySeparators();
    if (!quiet && !old && nearBottom) this.scrollToBottom();
  }

  daySeparators() {
    let prev = null;
    for (const li of this.current.listEl.children) {
      const m = this.current.items.get(li.dataset.name)?.msg;
      if (!m) continue;
      const key = dayKey(m.createTime);
      const sep = li.querySelector(':scope > .day-sep');
      if (key !== prev) {
        if (!sep) li.prepend(h('div', { class: 'day-sep' }, h('span', null, dayLabel(m.createTime))));
      } else if (sep) {
        sep.remove();
      }
      prev = key;
    }
  }

  nearBottom() {
    const s = this.current?.scroller;
    return !s || s.scrollHeight - s.scrollTop - s.clientHeight < 80;
  }

  scrollToBottom() {
    const s = this.current?.scroller;
    if (s) s.scrollTop = s.scrollHeight;
  }

  async markRead() {
    const cur = this.current;
    if (!cur) return;
    try {
      const conv = await api.markRead(cur.conv.name);
      if (conv && conv.name) this.applyConversation(conv);
    } catch (err) {
      if (!(err instanceof ApiError)) return;
      console.debug('markRead', err.message);
    }
  }

  /** unlock signs in again (step-up) and reloads the thread. */
  async unlock() {
    try {
      await this.opts.reauthenticate();
    } catch (err) {
      toast(err.message);
      return;
    }
    const cur = this.current;
    if (!cur) return;
    this.blobs.clear();
    await this.loadNewest(cur);
    toast('Signed in again');
  }

  // ---- live events -------------------------------------------------------------

  onEvent(type, payload) {
    if (type === 'conversation.updated' && payload.conversation) {
      this.applyConversation(payload.conversation);
    } else if ((type === 'message.created' || type === 'message.updated') && payload.message) {
      const m = payload.message;
      const cur = this.current;
      if (!cur || parentOf(m.name) !== cur.conv.name) return;
      this.upsert(m);
      const fromOtherSide = session.isPatient ? isFromPractice(m) : !isFromPractice(m);
      if (type === 'message.created' && fromOtherSide && document.visibilityState === 'visible') {
        clearTimeout(this.readTimer);
        this.readTimer = setTimeout(() => this.markRead(), 150);
      }
    }
  }

  /** reload refreshes what is shown (after a reset or a fresh connection). */
  reload() {
    this.loadList();
    if (this.current) this.loadNewest(this.current);
  }

  onVisible() {
    const c = this.current && this.conversations.find((x) => x.name === this.current.conv.name);
    if (c && Number(c.unreadCount) > 0) this.markRead();
  }

  start() {
    this.loadList();
    if (!this.staff) this.loadOptIn();
  }

  /** loadOptIn shows, while the patient has chat turned off, what it means. */
  async loadOptIn() {
    try {
      const prefs = await api.getPreferences('patients/' + session.subject);
      const off = !prefs.chatOptIn;
      clear(this.optOutNotice);
      this.optOutNotice.hidden = !off;
      if (off) {
        this.optOutNotice.append(
          h('p', { class: 'optout-title' }, icon('alert'), 'Chat messages are turned off'),
          h('p', null, 'Your practice cannot message you by chat. To turn chat back on, open ',
            h('a', { href: '#preferences' }, 'Communication preferences'),
            ' and switch on “Chat messages from my practice”.'));
      }
    } catch (err) {
      console.debug('communication preferences', err.message);
    }
  }

  destroy() {
    this.closeThread();
    clearTimeout(this.searchTimer);
    clearTimeout(this.reloadTimer);
    clearTimeout(this.readTimer);
    clearTimeout(this.waitTimer);
  }
}
