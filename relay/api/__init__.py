"""The REST API: one module per resource, all declared through :mod:`relay.api.routing`."""
