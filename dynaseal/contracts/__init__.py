"""What crosses a process boundary, defined once: usage record, Lua control keys, callback bodies, error codes."""
