"""After the request: the access-log record, usage events, Kafka plumbing, signed callbacks."""
