// Rendering of messages, attachments and artifact preview cards.

import { api } from './api.js';
import { learnName } from './people.js';
import { session } from './session.js';
import { h, icon, clockTime, fullTime, formatDate, formatBytes, roleLabel } from './ui.js';

export const STATUS_RANK = { STATUS_UNSPECIFIED: 0, SENT: 1, DELIVERED: 2, READ: 3 };
const STATUS_LABEL = { SENT: 'Sent', DELIVERED: 'Delivered', READ: 'Read' };

export const ARTIFACT_KINDS = {
  APPOINTMENT: { label: 'Appointment', icon: 'calendar', command: '/appt', what: 'a recent appointment' },
  INVOICE: { label: 'Invoice', icon: 'receipt', command: '/invoice', what: 'an invoice' },
  PRESCRIPTION: { label: 'Prescription', icon: 'pill', command: '/rx', what: 'a prescription' },
};

/** seqOf orders messages within a thread. */
export function seqOf(m) {
  const n = Number(m.seq);
  if (Number.isFinite(n) && n > 0) return n;
  const tail = Number(String(m.name || '').split('/').pop());
  return Number.isFinite(tail) ? tail : 0;
}

/** isFromPractice: staff (or a practice system) sent it. */
export function isFromPractice(m) {
  return !String(m.sender || '').startsWith('patients/');
}

/** BlobCache fetches attachments with the Authorization header, once each. */
export class BlobCache {
  constructor() { this.urls = new Map(); }
  get(attachment) {
    let p = this.urls.get(attachment);
    if (!p) {
      p = api.download(attachment).then((res) => res.blob()).then((b) => URL.createObjectURL(b));
      p.catch(() => this.urls.delete(attachment));
      this.urls.set(attachment, p);
    }
    return p;
  }
  clear() {
    for (const p of this.urls.values()) p.then((u) => URL.revokeObjectURL(u), () => {});
    this.urls.clear();
  }
}

/** artifactCard renders an artifact preview (title, subtitle, date, amount). */
export function artifactCard(artifact, { extra } = {}) {
  const kind = ARTIFACT_KINDS[artifact.type] || { label: 'Record', icon: 'file' };
  const p = artifact.preview || {};
  const meta = [p.date ? formatDate(p.date) : '', p.amount || ''].filter(Boolean);
  return h('div', { class: 'artifact-card', dataset: { type: artifact.type || '' } },
    h('span', { class: 'artifact-icon' }, icon(kind.icon)),
    h('div', { class: 'artifact-body' },
      h('p', { class: 'artifact-kind' }, kind.label),
      h('p', { class: 'artifact-title' }, p.title || artifact.ref || ''),
      p.subtitle ? h('p', { class: 'artifact-sub' }, p.subtitle) : null,
      meta.length ? h('p', { class: 'artifact-meta' }, meta.join(' · ')) : null),
    extra || null);
}

function attachmentView(a, blobs) {
  const name = a.filename || 'attachment';
  const size = formatBytes(a.sizeBytes);
  if (String(a.contentType || '').startsWith('image/')) {
    const img = h('img', { alt: name, class: 'attachment-img', decoding: 'async' });
    const fig = h('figure', { class: 'attachment-image loading' }, img,
      h('figcaption', null, downloadLink(a, blobs, name), h('span', { class: 'muted' }, ' · ' + size)));
    blobs.get(a.attachment).then((url) => {
      img.src = url;
      fig.classList.remove('loading');
    }, () => {
      fig.classList.remove('loading');
      fig.classList.add('failed');
      img.alt = name + ' (could not be loaded)';
    });
    return fig;
  }
  return h('div', { class: 'attachment-file' },
    icon('file'),
    h('div', null, downloadLink(a, blobs, name), h('span', { class: 'muted attachment-size' }, size)));
}

function downloadLink(a, blobs, name) {
  const link = h('a', {
    href: '/v1/' + a.attachment + ':download', download: name, class: 'attachment-link',
    onclick: async (e) => {
      e.preventDefault();
      link.setAttribute('aria-busy', 'true');
      try {
        const url = await blobs.get(a.attachment);
        const tmp = h('a', { href: url, download: name, class: 'visually-hidden' });
        document.body.append(tmp);
        tmp.click();
        tmp.remove();
      } catch (err) {
        link.after(h('span', { class: 'inline-error', role: 'alert' }, ' ' + err.message));
      } finally {
        link.removeAttribute('aria-busy');
      }
    },
  }, name);
  return link;
}

/**
 * messageElement renders one message. ctx: {blobs, patientName, onUnlock,
 * canUnlockHere}. The practice side and the patient side sit on opposite
 * sides; the viewer's own side shows Sent / Delivered / Read.
 */
export function messageElement(m, ctx) {
  const practice = isFromPractice(m);
  const mine = session.isPatient ? !practice : practice;
  const own = m.sender === session.principal;
  learnName(m.sender, m.senderDisplayName);
  let who;
  if (own) who = 'You';
  else if (practice) {
    // "Dr. Lee · Dentist"; a sender whose token had no name: the role alone
    // for a patient, the user id for colleagues.
    const name = m.senderDisplayName || (session.isPatient ? '' : String(m.sender || '').replace(/^users\//, ''));
    const role = roleLabel(m.senderRole);
    who = [name, role].filter(Boolean).join(' · ') || 'Your practice';
  } else {
    who = ctx.patientName || 'Patient';
  }

  const body = h('div', { class: 'bubble' });
  if (m.locked) {
    body.classList.add('locked');
    body.append(h('div', { class: 'locked-note' },
      icon('lock'),
      h('div', null,
        h('p', { class: 'locked-title' }, 'Sensitive message — sign in again to view'),
        ctx.canUnlockHere
          ? h('button', { type: 'button', class: 'btn btn-secondary btn-small unlock-btn', onclick: ctx.onUnlock },
            'Sign in again to view')
          : h('p', { class: 'muted' }, 'Sign in again through your practice’s patient portal, then open this conversation.'))));
  } else {
    if (m.text) body.append(h('p', { class: 'text' }, m.text));
    const atts = m.attachments || [];
    if (atts.length) body.append(h('div', { class: 'attachments' }, atts.map((a) => attachmentView(a, ctx.blobs))));
    if (m.artifact && m.artifact.type) body.append(artifactCard(m.artifact));
  }

  const meta = h('div', { class: 'msg-meta' },
    h('span', { class: 'sender' }, who),
    h('time', { datetime: m.createTime || '', title: fullTime(m.createTime) }, clockTime(m.createTime)),
    m.sensitive ? h('span', { class: 'sensitive-tag', title: 'Marked sensitive: the patient must have signed in recently to view it' },
      icon('lock'), 'Sensitive') : null,
    mine && STATUS_LABEL[m.status]
      ? h('span', { class: 'status', dataset: { status: m.status }, title: statusTitle(m) },
        icon(m.status === 'SENT' ? 'check' : 'checks'), STATUS_LABEL[m.status])
      : null);

  return h('li', {
    class: ['msg', mine ? 'mine' : 'theirs'], dataset: { name: m.name, seq: String(seqOf(m)) },
  }, h('div', { class: 'msg-inner' }, body, meta));
}

function statusTitle(m) {
  if (m.status === 'READ') return 'Read ' + fullTime(m.readTime);
  if (m.status === 'DELIVERED') return 'Delivered ' + fullTime(m.deliverTime);
  return 'Sent ' + fullTime(m.createTime);
}
