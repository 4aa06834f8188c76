// Small DOM helpers, icons and formatting. Text always goes in as text
// nodes (never as HTML), so nothing from the API can inject markup.

/**
 * h builds an element: h('button', {class: 'x', onclick: fn, 'aria-label': 'y'}, 'text', child).
 * Attributes starting with "on" become listeners; false/null/undefined are skipped;
 * true sets an empty attribute. Children may be strings, nodes, arrays or null.
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  if (!attrs) return;
  for (const [k, v] of Object.entries(attrs)) {
    if (v === false || v === null || v === undefined) continue;
    if (k.startsWith('on') && typeof v === 'function') {
      el.addEventListener(k.slice(2), v);
    } else if (k === 'class') {
      el.className = Array.isArray(v) ? v.filter(Boolean).join(' ') : v;
    } else if (k === 'dataset') {
      Object.assign(el.dataset, v);
    } else if (k === 'value') {
      el.value = v;
    } else if (v === true) {
      el.setAttribute(k, '');
    } else {
      el.setAttribute(k, String(v));
    }
  }
}

export function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

const SVG = 'http://www.w3.org/2000/svg';

// Icon paths (24×24, stroke-based, in the spirit of common open icon sets).
const ICONS = {
  paperclip: ['M21.4 11.1 12.2 20.3a6 6 0 0 1-8.5-8.5l9.2-9.2a4 4 0 0 1 5.7 5.7l-9.2 9.2a2 2 0 0 1-2.8-2.8l8.5-8.5'],
  lock: ['M6 11h12v10H6z', 'M8 11V7a4 4 0 0 1 8 0v4'],
  unlock: ['M6 11h12v10H6z', 'M8 11V7a4 4 0 0 1 7.8-1.2'],
  send: ['M4 12 20 4l-4 16-4-7z', 'M12 13l8-9'],
  pin: ['M9 4h6l-1 6 4 4H6l4-4z', 'M12 14v7'],
  mute: ['M18 8a6 6 0 0 0-9.3-5', 'M6.3 6.3A6 6 0 0 0 6 8c0 7-3 9-3 9h14', 'M13.7 21a2 2 0 0 1-3.4 0', 'M3 3l18 18'],
  bell: ['M18 8a6 6 0 0 0-12 0c0 7-3 9-3 9h18s-3-2-3-9', 'M13.7 21a2 2 0 0 1-3.4 0'],
  search: ['M11 4a7 7 0 1 0 0 14 7 7 0 0 0 0-14z', 'M21 21l-5-5'],
  plus: ['M12 5v14', 'M5 12h14'],
  back: ['M15 18l-6-6 6-6'],
  more: ['M5 12h.01', 'M12 12h.01', 'M19 12h.01'],
  file: ['M14 3H6v18h12V7z', 'M14 3v4h4'],
  close: ['M6 6l12 12', 'M18 6 6 18'],
  check: ['M5 12l5 5 9-10'],
  checks: ['M2 12l5 5 9-10', 'M12 16l1 1 9-10'],
  clock: ['M12 3a9 9 0 1 0 0 18 9 9 0 0 0 0-18z', 'M12 7v5l3 2'],
  calendar: ['M4 6h16v15H4z', 'M4 10h16', 'M8 3v4', 'M16 3v4'],
  receipt: ['M6 3h12v18l-3-2-3 2-3-2-3 2z', 'M9 8h6', 'M9 12h6'],
  pill: ['M10.5 3.5a5 5 0 0 1 7 7l-7 7a5 5 0 0 1-7-7z', 'M7 10l7 7'],
  signout: ['M15 4h4v16h-4', 'M10 16l4-4-4-4', 'M14 12H3'],
  archive: ['M3 4h18v4H3z', 'M5 8v12h14V8', 'M10 12h4'],
  chat: ['M4 5h16v11H9l-5 4z'],
  download: ['M12 4v12', 'M7 11l5 5 5-5', 'M5 20h14'],
  shield: ['M12 3l8 3v6c0 5-3.5 8-8 9-4.5-1-8-4-8-9V6z', 'M9 12l2 2 4-4'],
  settings: ['M4 7h10', 'M18 7h2', 'M4 17h4', 'M12 17h8', 'M16 5v4', 'M10 15v4'],
  alert: ['M12 3 2 20h20z', 'M12 10v4', 'M12 17h.01'],
  refresh: ['M20 11a8 8 0 1 0-2.3 5.7', 'M20 4v7h-7'],
  user: ['M12 4a4 4 0 1 0 0 8 4 4 0 0 0 0-8z', 'M4 21a8 8 0 0 1 16 0'],
};

/** icon returns a decorative SVG icon (hidden from assistive technology). */
export function icon(name, cls = '') {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('focusable', 'false');
  svg.setAttribute('class', 'icon' + (cls ? ' ' + cls : ''));
  for (const d of ICONS[name] || []) {
    const p = document.createElementNS(SVG, 'path');
    p.setAttribute('d', d);
    svg.append(p);
  }
  return svg;
}

// ---- formatting ----------------------------------------------------------

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: 'numeric', minute: '2-digit' });
const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: 'short', day: 'numeric', month: 'short' });
const dayYearFmt = new Intl.DateTimeFormat(undefined, { day: 'numeric', month: 'short', year: 'numeric' });
const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });

function startOfDay(d) { return new Date(d.getFullYear(), d.getMonth(), d.getDate()).getTime(); }

export function parseTime(s) {
  if (!s) return null;
  const d = new Date(s);
  return isNaN(d.getTime()) ? null : d;
}

/** shortTime: "9:05 AM" today, "Mon 3 Nov" this year, "3 Nov 2024" before. */
export function shortTime(s) {
  const d = parseTime(s);
  if (!d) return '';
  const now = new Date();
  if (startOfDay(d) === startOfDay(now)) return timeFmt.format(d);
  if (d.getFullYear() === now.getFullYear()) return dayFmt.format(d);
  return dayYearFmt.format(d);
}

export function clockTime(s) {
  const d = parseTime(s);
  return d ? timeFmt.format(d) : '';
}

export function fullTime(s) {
  const d = parseTime(s);
  return d ? fullFmt.format(d) : '';
}

/** dayLabel: "Today", "Yesterday", or the date, for day separators. */
export function dayLabel(s) {
  const d = parseTime(s);
  if (!d) return '';
  const today = startOfDay(new Date());
  const day = startOfDay(d);
  if (day === today) return 'Today';
  if (day === today - 86400000) return 'Yesterday';
  return new Intl.DateTimeFormat(undefined, { weekday: 'long', day: 'numeric', month: 'long', year: 'numeric' }).format(d);
}

export function dayKey(s) {
  const d = parseTime(s);
  return d ? startOfDay(d) : 0;
}

/** formatDate renders a YYYY-MM-DD date (no time zone shift). */
export function formatDate(ymd) {
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(ymd || '');
  if (!m) return ymd || '';
  const d = new Date(Number(m[1]), Number(m[2]) - 1, Number(m[3]));
  return dayYearFmt.format(d);
}

export function formatBytes(n) {
  n = Number(n) || 0;
  if (n < 1024) return n + ' B';
  if (n < 1024 * 1024) return (n / 1024).toFixed(n < 10240 ? 1 : 0) + ' KB';
  return (n / 1048576).toFixed(1) + ' MB';
}

const ROLE_LABELS = {
  dentist: 'Dentist', hygienist: 'Hygienist', assistant: 'Assistant', front_desk: 'Front desk',
  practice_admin: 'Practice admin', patient: 'Patient', system: 'Practice system',
};
export function roleLabel(role) { return ROLE_LABELS[role] || role || ''; }

/** periodLabel names a duration in seconds: "12 months", "30 days", "2 hours". */
export function periodLabel(seconds) {
  const s = Number(seconds) || 0;
  const plural = (n, unit) => n + ' ' + unit + (n === 1 ? '' : 's');
  const days = s / 86400;
  if (days >= 365 && days % 365 === 0) return plural(days / 365 * 12, 'month');
  if (days >= 30 && days % 30 === 0) return plural(days / 30, 'month');
  if (days >= 1 && Number.isInteger(days)) return plural(days, 'day');
  const hours = s / 3600;
  if (hours >= 1 && Number.isInteger(hours)) return plural(hours, 'hour');
  return plural(Math.max(1, Math.round(s / 60)), 'minute');
}

export function initials(name) {
  const parts = String(name || '?').trim().split(/\s+/).filter(Boolean);
  const s = parts.length > 1 ? parts[0][0] + parts[parts.length - 1][0] : (parts[0] || '?').slice(0, 2);
  return s.toUpperCase();
}

// ---- toasts ---------------------------------------------------------------

export function toast(text, { timeout = 4000 } = {}) {
  const host = document.getElementById('toasts');
  if (!host) return;
  const t = h('div', { class: 'toast' }, text);
  host.append(t);
  setTimeout(() => t.remove(), timeout);
}

// ---- menus ---------------------------------------------------------------

let openMenu = null;

/** closeMenu closes the open context menu, if any. */
export function closeMenu({ restoreFocus = true } = {}) {
  if (!openMenu) return;
  const { el, returnTo, cleanup } = openMenu;
  openMenu = null;
  cleanup();
  el.remove();
  if (restoreFocus && returnTo && returnTo.isConnected) returnTo.focus();
}

/**
 * showMenu opens a menu of items [{label, icon, onSelect, id?}] at (x, y), with
 * arrow-key navigation; Escape or a click elsewhere closes it.
 */
export function showMenu({ x, y, items, label, returnTo }) {
  closeMenu({ restoreFocus: false });
  const buttons = items.map((it) => h('button', {
    type: 'button', role: 'menuitem', class: 'menu-item', tabindex: '-1', dataset: it.id ? { action: it.id } : null,
    onclick: () => { closeMenu(); it.onSelect(); },
  }, it.icon ? icon(it.icon) : null, h('span', null, it.label)));
  const el = h('div', { class: 'menu', role: 'menu', 'aria-label': label }, buttons);
  document.body.append(el);
  const rect = el.getBoundingClientRect();
  const left = Math.max(8, Math.min(x, window.innerWidth - rect.width - 8));
  const top = Math.max(8, Math.min(y, window.innerHeight - rect.height - 8));
  el.style.left = left + 'px';
  el.style.top = top + 'px';
  const onKey = (e) => {
    const i = buttons.indexOf(document.activeElement);
    if (e.key === 'Escape') { e.preventDefault(); closeMenu(); }
    else if (e.key === 'ArrowDown') { e.preventDefault(); buttons[(i + 1) % buttons.length].focus(); }
    else if (e.key === 'ArrowUp') { e.preventDefault(); buttons[(i - 1 + buttons.length) % buttons.length].focus(); }
    else if (e.key === 'Home') { e.preventDefault(); buttons[0].focus(); }
    else if (e.key === 'End') { e.preventDefault(); buttons[buttons.length - 1].focus(); }
    else if (e.key === 'Tab') { closeMenu(); }
  };
  const onDown = (e) => { if (!el.contains(e.target)) closeMenu({ restoreFocus: false }); };
  const onScroll = () => closeMenu({ restoreFocus: false });
  el.addEventListener('keydown', onKey);
  document.addEventListener('mousedown', onDown, true);
  window.addEventListener('resize', onScroll);
  openMenu = {
    el, returnTo,
    cleanup: () => {
      document.removeEventListener('mousedown', onDown, true);
      window.removeEventListener('resize', onScroll);
    },
  };
  buttons[0].focus();
  return el;
}
