-- The sender's display name at send time (staff: their token's name claim;
-- the patient: their directory display name, PHI).
ALTER TABLE messages ADD COLUMN sender_display_name TEXT NOT NULL DEFAULT '';
