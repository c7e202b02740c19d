"""Generated protobuf code for the project's own messages: edit `protos/`, run `protos/generate.py`."""

from dynaseal.pb.usage_event_pb2 import UsageEvent

__all__ = ["UsageEvent"]
