-- The W3C trace context of the transaction that wrote the event (NULL when
-- tracing is off); the relay publishes it as the NATS "traceparent" header.
ALTER TABLE outbox ADD COLUMN traceparent TEXT;
