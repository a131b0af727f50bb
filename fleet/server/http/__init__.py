"""The HTTP side: REST API, live feed (WebSocket) and web UI, served by Quart-Trio.

Modules, lowest first (each imports only from the ones before it):

* ``feed`` (the publish/subscribe hub, no HTTP) and ``openapi`` (the API's document, plain data);
* ``common``: what every route shares: ``Services``, ``ApiError``, JSON bodies and responses,
  query and path arguments, pumping a feed subscription into a WebSocket;
* ``policy``: who may do what: the access rule of every route, and the tag scope that
  narrows what a user sees and targets;
* ``auth``: who is calling: an API token as a bearer header, or the UI's session cookie;
* ``routes_ui``, ``routes_session`` (login, logout, me), ``routes_accounts`` (users, tokens),
  ``routes_audit``, ``routes_vps``, ``routes_scripts``, ``routes_batches``: one module per noun,
  each with a ``register(app, services)``;
* ``app``: ``create_app``: the app, its middleware (authentication, security headers) and the one
  error format.
"""
