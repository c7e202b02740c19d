"""A tenant's content rules: where each endpoint's text is, the built-in rules, their RE2 sets compiled at load."""
