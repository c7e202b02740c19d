"""The usage recorder: a consumer group of its own on the usage topic, writing every request into the usage store."""
