// Package attachment is the attachment service: the bytes of the files
// attached to messages, streamed in both directions.
//
// Data it owns: the blob directory (--blob-dir: one file per attachment,
// mode 0600, written to a temporary file and fsynced before it is renamed
// into place), and its own database: attachments (metadata; the file name
// is PHI), attachment_links (which messages carry which attachment, and
// whether they are sensitive) and outbox.
//
// An upload is accepted from a participant of the conversation (checked with
// the conversation service's ResolveConversation, as the caller). It is
// refused with ATTACHMENT_TOO_LARGE at the first byte over 26,214,400, and
// with UNSUPPORTED_FILE_TYPE unless its bytes are an image (PNG, JPEG, GIF,
// WebP, HEIC/HEIF), a PDF or a document (DOCX, XLSX, PPTX, ODT/ODS/ODP, DOC,
// XLS, PPT, RTF, or UTF-8 text named .txt or .csv) that agrees with the
// file name's extension and the declared Content-Type. The file is never held
// in memory, and a refused or interrupted upload leaves nothing behind.
//
// A download is streamed to participants in 64 KiB frames, each sent only
// once the next read succeeded, so the last one leaves only after the whole
// file matched the size and SHA-256 recorded at upload. A patient who has
// not signed in within the step-up window may not open an attachment of a
// sensitive message someone else sent (STEP_UP_REQUIRED); an attachment
// that no message is known to carry yet is waited for briefly and then
// treated as sensitive.
//
// Events it produces (stream CLINICCHAT_ATTACHMENT): AttachmentUploaded
// (action attachment.upload) and AccessRecorded (attachment.view,
// attachment.download, and every refused attempt, outcome DENIED), all
// through the outbox.
//
// Events it consumes: delivery's MessageCreated (durable "attachment-links":
// the message links; replays are harmless).
//
// Logs carry ids only, never file names. Metrics are the gateway's.
package attachment
