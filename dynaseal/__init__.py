"""Dynaseal core: config, tenants, dynamic keys, policy and the local launcher.

Services (`authz_service`, `issuer_api`, `log_shipper`, `callback_consumer`) import this
package; this package imports none of them.
"""

__version__ = "0.1.0"
