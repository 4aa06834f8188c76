// Package preferences is the preferences service: the patient directory of
// each practice and each patient's communication preferences. It decides who
// staff may chat with — a patient is chat-eligible when they have a portal
// account and have opted in to chat — and the conversation and delivery
// services ask it (GetPatient, with the caller's token) before every new
// conversation and send.
//
// Data it owns (its own database, SQLite or PostgreSQL):
//   - patients: per practice, the directory entry (id = portal subject,
//     external_id unique per practice, display name, date of birth, portal
//     account) kept by practice systems with UpsertPatient, and the patient's
//     own chat_opt_in (off until the patient turns it on);
//   - patient_prefixes: the word-prefix search index of the names, written in
//     the same transaction as the patient;
//   - outbox: events not yet published.
//
// Events it produces (stream CLINICCHAT_PREFERENCES, through the outbox, with
// Nats-Msg-Id = event id):
//   - clinicchat.preferences.patient.upserted (PatientUpserted, action
//     patient.upsert) when an upsert changes an entry; an upsert that changes
//     nothing publishes nothing. Carries PHI (the patient);
//   - clinicchat.preferences.preferences.changed (PreferencesChanged, action
//     preferences.update) when a patient changes their chat opt-in;
//   - clinicchat.preferences.access.recorded (AccessRecorded, outcome DENIED)
//     for every refused attempt: a patient asking for another patient's entry
//     or preferences, staff changing a patient's preferences, a patient
//     searching the directory, an upsert by a role that may not.
//
// It consumes no events. A change governs the very next request: reads go to
// the database, or on SQLite (where this process is the only writer) to a
// cache of patients that every write invalidates before it returns. The
// standalone binary also leases GetPatient answers to its callers
// (--read-lease, 250 ms): they may keep one that long, counted from before
// they asked, and every patient write returns only that long after its
// commit, so no caller holds an answer older than an acknowledged write
// (the delivery service's per-send check: delivery's LeasedPreferences).
// A write that creates a patient (no answer about them existed) or changes
// nothing more than a lease after the last change does not wait.
package preferences
