-- Reply templates: practice_admin writes them, staff use them.
CREATE TABLE message_templates (
  practice TEXT NOT NULL,
  id TEXT NOT NULL,
  title TEXT NOT NULL,
  text TEXT NOT NULL,
  update_time BIGINT NOT NULL,
  PRIMARY KEY (practice, id)
);
