"""The local launcher and the `dynaseal` command: runs the stack, renders Envoy's config, probes."""
