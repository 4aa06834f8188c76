// Package conversation is the conversation service: the one chat thread per
// patient of each practice, per-user pin, mute and read state, and the archive
// sweeper.
//
// Data it owns (its own database): conversations (with needs reply,
// awaiting_reply_since, and the shared assignee), user_state (pin, mute,
// read watermark per user), message_index (a projection of delivery's
// messages: sequence number, side, time and rank within its side, for the
// unread count), staff (the staff users each
// practice has seen, with the name and role of their latest token: recorded on
// their calls, written only when new or changed), message_templates (reply
// templates per practice), outbox.
//
// Events it produces (stream CLINICCHAT_CONVERSATION): ConversationCreated,
// ConversationUpdated (new message, with its sequence number and side: the
// product's activity echo, on its own kind conversation.conversation.activity,
// which the audit does not read; archive; assignment: "conversation.assign"),
// ConversationUserStateChanged
// (pin/mute), ConversationRead (a participant's read watermark; its subject
// names the reader after the practice), Notification
// (one per recipient user of a new message, none for who muted the thread) and
// AccessRecorded (views and refused attempts).
//
// Events it consumes: delivery's MessageCreated (durable
// "conversation-projection", a batch per transaction in stream order: last
// message, unread counts, reactivation, notifications) and preferences'
// PatientUpserted (durable "conversation-patients": display names).
package conversation
