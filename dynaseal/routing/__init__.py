"""Which upstream serves a request: the route table built from the config, credentials, the model span."""
