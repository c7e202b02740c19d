"""Dynamic keys: minting, claims, verification keys, tenants, DPoP proofs, child keys."""
