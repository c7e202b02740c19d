"""issuer_api: the seed-compatible business backend — login, dynamic key minting, revocation, callbacks.

Run with `python -m issuer_api [--config PATH]`; build in-process with `issuer_api.app.create_app(cfg)`.
"""
