// Package delivery is the delivery service: messages and their receipts.
//
// Data it owns (its own database): messages (never deleted; text and extras
// are PHI), conversation_seq (each thread's message counter, on PostgreSQL;
// SQLite takes the next seq from the thread's last message), outbox.
//
// A send is idempotent on (sender, requestId); it is refused with
// CHAT_OPTED_OUT or NO_PORTAL_ACCOUNT by the patient's current preferences,
// read from the preferences service on every send. Receipts are watermarks:
// a status only rises (SENT → DELIVERED → READ), so replays are harmless.
//
// Events it produces (stream CLINICCHAT_DELIVERY): MessageCreated,
// MessageUpdated (status: the receipts' echoes, actor system, on their own
// kind delivery.message.status, which the audit does not read; one per
// receipt advance, carrying every message it changed, in bounded chunks),
// AccessRecorded (views, unlocks, refused attempts).
//
// Events it consumes: conversation's ConversationRead (durable
// "delivery-receipts": a read watermark turns the other side's messages READ).
package delivery
