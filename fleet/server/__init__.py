"""Fleet's server: REST API, live feed, agent RPC, batch supervisor and store."""
